import Foundation
import NIOCore
import YoMoWire

/// The golden vectors of `../shared/vectors/frames.json`, produced by the real Go
/// YoMo v1.22.3 encoder. A copy lives beside this file so a fresh clone has it;
/// `VectorFileTests` checks the copy still equals the shared original when present.
struct GoldenVectors: Sendable {
    struct Case: Sendable, CustomStringConvertible {
        var name: String
        var kind: String
        var fields: [String: JSONValue]
        var hex: String?
        var hexPrefix: String?
        var sha256: String?
        var encodedLength: Int
        var sortedKeys: Bool
        var description: String { "\(kind): \(name)" }
    }

    struct BadInput: Sendable, CustomStringConvertible {
        var name: String
        var hex: String
        var decodeAs: String
        var goError: String
        var decoded: [String: JSONValue]?
        var description: String { name }
    }

    var specVersion: String
    var cases: [Case]
    var invalid: [BadInput]
    var lenient: [BadInput]

    static let fileURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Vectors/frames.json")

    static let shared: GoldenVectors = {
        do {
            return try GoldenVectors(data: Data(contentsOf: fileURL))
        } catch {
            fatalError("cannot read golden vectors at \(fileURL.path): \(error)")
        }
    }()

    init(data: Data) throws {
        guard case .object(let root) = try JSONValue.parse(data) else { throw VectorError("root is not an object") }
        specVersion = root["spec_version"]?.string ?? ""
        cases = try (root["cases"]?.array ?? []).map { value in
            let object = try value.objectOrThrow()
            return Case(
                name: object["name"]?.string ?? "",
                kind: object["kind"]?.string ?? "",
                fields: object["fields"]?.object ?? [:],
                hex: object["hex"]?.string,
                hexPrefix: object["hex_prefix"]?.string,
                sha256: object["sha256"]?.string,
                encodedLength: object["encoded_len"]?.int ?? -1,
                sortedKeys: object["sorted_keys"]?.bool ?? false
            )
        }
        func badInputs(_ key: String) throws -> [BadInput] {
            try (root[key]?.array ?? []).map { value in
                let object = try value.objectOrThrow()
                return BadInput(
                    name: object["name"]?.string ?? "",
                    hex: object["hex"]?.string ?? "",
                    decodeAs: object["decode_as"]?.string ?? "",
                    goError: object["go_error"]?.string ?? "",
                    decoded: object["decoded"]?.object
                )
            }
        }
        invalid = try badInputs("invalid")
        lenient = try badInputs("lenient")
    }
}

struct VectorError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Just enough JSON to read the vectors without Codable boilerplate per kind.
enum JSONValue: Sendable, Equatable, Decodable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case null
    case array([JSONValue])
    case object([String: JSONValue])

    static func parse(_ data: Data) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: data)
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let bool = try? container.decode(Bool.self) {
            self = .bool(bool)
        } else if let number = try? container.decode(Double.self) {
            self = .number(number)
        } else if let string = try? container.decode(String.self) {
            self = .string(string)
        } else if let array = try? container.decode([JSONValue].self) {
            self = .array(array)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    var string: String? { if case .string(let value) = self { value } else { nil } }
    var int: Int? { if case .number(let value) = self { Int(exactly: value) } else { nil } }
    var bool: Bool? { if case .bool(let value) = self { value } else { nil } }
    var array: [JSONValue]? { if case .array(let value) = self { value } else { nil } }
    var object: [String: JSONValue]? { if case .object(let value) = self { value } else { nil } }

    func objectOrThrow() throws -> [String: JSONValue] {
        guard let object else { throw VectorError("expected a JSON object, got \(self)") }
        return object
    }
}

// MARK: - Helpers shared by the tests

extension ByteBuffer {
    init(hex: String) {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(hex.utf8.count / 2)
        var iterator = hex.utf8.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            bytes.append(UInt8(hexDigit(high) << 4 | hexDigit(low)))
        }
        self.init(bytes: bytes)
    }

    var hexString: String {
        readableBytesView.map { String(format: "%02x", $0) }.joined()
    }
}

private func hexDigit(_ character: UInt8) -> UInt8 {
    switch character {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): character - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): character - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): character - UInt8(ascii: "A") + 10
    default: fatalError("not a hex digit: \(character)")
    }
}

/// `payload[i] = i % 251`, the pattern of the large vectors.
func patternPayload(length: Int) -> ByteBuffer {
    // Written a period at a time: byte by byte, unoptimized, 1 MiB took a second.
    let period = (0..<251).map { UInt8($0) }
    var buffer = ByteBuffer()
    buffer.reserveCapacity(length)
    while buffer.writerIndex < length {
        buffer.writeBytes(period.prefix(length - buffer.writerIndex))
    }
    return buffer
}
