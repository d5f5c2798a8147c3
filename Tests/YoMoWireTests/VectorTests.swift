import Foundation
import NIOCore
import Testing
import YoMoWire

@Suite("Golden vectors from the Go encoder")
struct VectorTests {
    static let vectors = GoldenVectors.shared

    @Test("the vector file is the shared one and is complete")
    func vectorFile() throws {
        #expect(Self.vectors.specVersion == "2024-01-03")
        #expect(Self.vectors.cases.count == 73)
        #expect(Self.vectors.invalid.count == 13)
        #expect(Self.vectors.lenient.count == 9)
        // When the shared original sits beside the project (as on the developers' and
        // CI's machines), the committed copy must not have drifted from it.
        let shared = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("shared/vectors/frames.json")
        if FileManager.default.fileExists(atPath: shared.path) {
            #expect(try Data(contentsOf: shared) == Data(contentsOf: GoldenVectors.fileURL))
        }
    }

    @Test("every frame case encodes to exactly the Go bytes", arguments: vectors.cases.filter { $0.kind != "metadata" })
    func encodesExactly(_ vector: GoldenVectors.Case) throws {
        let frame = try Self.frame(from: vector)
        var encoded = ByteBuffer()
        frame.encode(into: &encoded)
        #expect(encoded.readableBytes == vector.encodedLength)
        if case .data(let data) = frame {
            #expect(data.encodedLength == vector.encodedLength)
        }
        try Self.expectBytes(encoded, match: vector)
    }

    @Test("every frame case decodes back to its fields", arguments: vectors.cases.filter { $0.kind != "metadata" })
    func decodesToFields(_ vector: GoldenVectors.Case) throws {
        let expected = try Self.frame(from: vector)
        var wire = ByteBuffer()
        expected.encode(into: &wire)
        try Self.expectBytes(wire, match: vector)  // so decoding below reads the Go bytes
        let decoded = try Frame(decoding: wire)
        #expect(decoded == expected)
        #expect(decoded.type.description == vector.kind)
        if case .data(let data) = decoded, let metadataMap = vector.fields["metadata"]?.object {
            let metadata = try Metadata(decoding: data.metadata)
            #expect(metadata.dictionary == metadataMap.mapValues { $0.string ?? "" })
        }
    }

    @Test("every metadata case decodes to its map and encodes to its bytes", arguments: vectors.cases.filter { $0.kind == "metadata" })
    func metadataCase(_ vector: GoldenVectors.Case) throws {
        let map = try #require(vector.fields["map"]?.object).mapValues { $0.string ?? "" }
        let bytes = ByteBuffer(hex: try #require(vector.hex))
        let decoded = try Metadata(decoding: bytes)
        #expect(decoded.dictionary == map)
        #expect(decoded.count == vector.fields["entries"]?.int)
        // Multi-key vectors were written with sorted keys; one key has one order anyway.
        let encoded = Metadata(map).encoded(sortedKeys: true)
        #expect(encoded.hexString == vector.hex)
        #expect(Metadata(map).encodedLength == vector.encodedLength)
    }

    @Test("every invalid input is rejected with an error that says what is wrong", arguments: vectors.invalid)
    func invalidInput(_ vector: GoldenVectors.BadInput) throws {
        let bytes = ByteBuffer(hex: vector.hex)
        let error = try #require(throws: WireError.self) { try Frame(decoding: bytes) }
        #expect(!error.message.isEmpty)
        #expect(error.description.contains(error.message))

        // Streamed, the same bytes either wait for more data or fail; at the end of
        // the stream a partial frame is an error too. Never a frame, never a crash.
        // (No bytes at all is a clean end of stream, not an error.)
        guard bytes.readableBytes > 0 else { return }
        var decoder = FrameDecoder()
        var stream = bytes
        var streamError: (any Error)?
        do {
            #expect(try decoder.decode(buffer: &stream) == nil)
            _ = try decoder.decodeLast(buffer: &stream, seenEOF: true)
        } catch {
            streamError = error
        }
        #expect(streamError is WireError, "\(vector.name): streaming must end in a WireError")
    }

    @Test("invalid inputs name the problem", arguments: [
        ("bf64010133030002026869", "negative length -28"),
        ("bf09010133030002056869", "claims 5 bytes but only 2 remain"),
        ("bf09010133030002646869", "negative length"),
        ("bf0101", "needs a tag and a length"),
        ("bf080100030002026869", "DataFrame tag is empty"),
        ("b10401000200", "client type is empty"),
        ("bf090101330300020268", "needs 11 bytes but only 10 are there"),
        ("bf80", "end inside the frame's tag and length"),
        ("", "no bytes"),
    ])
    func errorMessages(hex: String, expected: String) throws {
        let error = try #require(throws: WireError.self) { try Frame(decoding: ByteBuffer(hex: hex)) }
        #expect(error.message.contains(expected), "got: \(error.message)")
    }

    @Test("lenient inputs decode as Go decodes them", arguments: vectors.lenient)
    func lenientInput(_ vector: GoldenVectors.BadInput) throws {
        let decoded = try #require(vector.decoded)
        let frame = try Frame(decoding: ByteBuffer(hex: vector.hex))
        guard case .data(let data) = frame else {
            Issue.record("expected a DataFrame, got \(frame)")
            return
        }
        #expect(Int(data.tag) == decoded["tag"]?.int)
        #expect(data.payload.hexString == decoded["payload"]?.string)
        #expect(data.metadata.hexString == decoded["metadata_hex"]?.string)
    }

    // MARK: - Building frames from vector fields

    static func frame(from vector: GoldenVectors.Case) throws -> Frame {
        let fields = vector.fields
        func string(_ key: String) throws -> String {
            try #require(fields[key]?.string, "\(vector.name): missing \(key)")
        }
        switch vector.kind {
        case "DataFrame":
            let payload: ByteBuffer
            if let hex = fields["payload"]?.string {
                payload = ByteBuffer(hex: hex)
            } else {
                #expect(fields["payload_pattern"]?.string == "i%251")
                payload = patternPayload(length: try #require(fields["payload_len"]?.int))
            }
            #expect(payload.readableBytes == fields["payload_len"]?.int)
            return .data(
                DataFrame(
                    tag: UInt32(try #require(fields["tag"]?.int)),
                    metadata: ByteBuffer(hex: try string("metadata_hex")),
                    payload: payload
                )
            )
        case "HandshakeFrame":
            return .handshake(
                HandshakeFrame(
                    name: try string("name"),
                    id: try string("id"),
                    clientType: ClientType(rawValue: UInt8(try #require(fields["client_type"]?.int))),
                    observedTags: try #require(fields["observe_data_tags"]?.array).map { UInt32($0.int ?? -1) },
                    authName: try string("auth_name"),
                    authPayload: try string("auth_payload"),
                    version: try string("version"),
                    functionDefinition: Array(ByteBuffer(hex: try string("function_definition")).readableBytesView),
                    wantedTarget: try string("wanted_target")
                )
            )
        case "HandshakeAckFrame": return .handshakeAck
        case "RejectedFrame": return .rejected(RejectedFrame(message: try string("message")))
        case "GoawayFrame": return .goaway(GoawayFrame(message: try string("message")))
        case "ConnectToFrame": return .connectTo(ConnectToFrame(endpoint: try string("endpoint")))
        default: throw VectorError("unknown kind \(vector.kind)")
        }
    }

    static func expectBytes(_ encoded: ByteBuffer, match vector: GoldenVectors.Case) throws {
        if let hex = vector.hex {
            #expect(encoded.hexString == hex)
        } else {
            let prefix = try #require(vector.hexPrefix)
            #expect(encoded.getSlice(at: encoded.readerIndex, length: 16)?.hexString == prefix)
            #expect(SHA256.hex(of: Array(encoded.readableBytesView)) == vector.sha256)
        }
    }
}
