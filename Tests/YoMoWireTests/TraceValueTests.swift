import NIOCore
import Testing
@testable import YoMoWire

/// Trace ids in metadata are held as numbers when canonical (see `StoredValue`);
/// these tests pin that this never shows: same strings, same bytes, same equality.
@Suite("Metadata trace values")
struct TraceValueTests {
    static let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
    static let spanID = "00f067aa0ba902b7"
    static let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    /// Every trace-key value form a peer might send: canonical ones (held as
    /// numbers) and near misses (held as text).
    static let values: [(key: String, value: String, isNumbers: Bool)] = [
        ("yomo-trace-id", traceID, true),
        ("yomo-trace-id", "00000000000000000000000000000000", true),
        ("yomo-trace-id", traceID.uppercased(), false),
        ("yomo-trace-id", String(traceID.dropLast()), false),
        ("yomo-trace-id", traceID + "0", false),
        ("yomo-trace-id", " " + String(traceID.dropFirst()), false),
        ("yomo-trace-id", "4bf92f3577b34da6a3ce929d0e0e473g", false),
        ("yomo-span-id", spanID, true),
        ("yomo-span-id", "ffffffffffffffff", true),
        ("yomo-span-id", spanID.uppercased(), false),
        ("yomo-span-id", "0f067aa0ba902b7", false),
        ("traceparent", traceparent, true),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff", true),
        ("traceparent", "00-00000000000000000000000000000000-0000000000000000-00", true),
        ("traceparent", "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false),
        ("traceparent", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", false),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A", false),
        ("traceparent", " " + traceparent.dropFirst(), false),
        ("traceparent", traceparent + "-extra", false),
        ("traceparent", "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", false),
        ("yomo-tid", traceID, false),
    ]

    @Test("decoded trace values read as the same strings and encode to the same bytes")
    func roundTrip() throws {
        for (key, value, isNumbers) in Self.values {
            var original = Metadata()
            original["yomo-source-id"] = "V1StGXR8_Z5jdHi6B-myT"
            original[key] = value
            let bytes = original.encoded()
            let decoded = try Metadata(decoding: bytes)
            #expect(decoded[key] == value)
            let entry = try #require(decoded.entries.first { $0.key == key })
            if case .text = entry.stored { #expect(!isNumbers, "\(key): \(value) should be held as numbers") }
            else { #expect(isNumbers, "\(key): \(value) should be held as text") }
            #expect(decoded.encoded() == bytes, "\(key): \(value)")
            #expect(decoded.encodedLength == bytes.readableBytes)
            #expect(decoded == original && original == decoded)
            #expect(decoded.hashValue == original.hashValue)
            #expect(decoded.dictionary == original.dictionary)
            #expect(Array(decoded.map { $0.value }) == Array(original.map { $0.value }))
        }
    }

    @Test("a yomo-trace-id after traceparent decodes to its own digits, equal to traceparent's or not, in either order")
    func traceIDBesideTraceparent() throws {
        let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
        var others = [traceID.replacingOccurrences(of: "36", with: "37"), "0" + traceID.dropFirst(), traceID.uppercased()]
        for position in [0, 15, 16, 31] {
            var digits = Array(traceID.utf8)
            digits[position] = digits[position] == UInt8(ascii: "a") ? UInt8(ascii: "b") : UInt8(ascii: "a")
            others.append(String(decoding: digits, as: UTF8.self))
        }
        for yomo in [traceID] + others {
            for traceparentFirst in [true, false] {
                var metadata = Metadata()
                let entries = [("traceparent", "00-\(traceID)-00f067aa0ba902b7-01"), ("yomo-trace-id", yomo)]
                for (key, value) in traceparentFirst ? entries : entries.reversed() { metadata[key] = value }
                let decoded = try Metadata(decoding: metadata.encoded())
                #expect(decoded["yomo-trace-id"] == yomo, "\(yomo), traceparent first: \(traceparentFirst)")
                #expect(decoded["traceparent"] == "00-\(traceID)-00f067aa0ba902b7-01")
                #expect(decoded.encoded() == metadata.encoded())
            }
        }
    }

    @Test("str8-encoded short values and fixstr-encoded ones both decode")
    func markers() throws {
        // Go encodes a 16-byte string as fixstr; a peer may use str8 for it: same value.
        var buffer = ByteBuffer(hex: "81")
        buffer.writeBytes([0xAC] + Array("yomo-span-id".utf8) + [0xD9, 16] + Array(Self.spanID.utf8))
        let decoded = try Metadata(decoding: buffer)
        #expect(decoded["yomo-span-id"] == Self.spanID)
        // Truncated: an error, as for any other string.
        var truncated = ByteBuffer(hex: "81")
        truncated.writeBytes([0xAC] + Array("yomo-span-id".utf8) + [0xB0] + Array(Self.spanID.utf8.dropLast()))
        #expect(throws: WireError.self) { try Metadata(decoding: truncated) }
    }

    @Test("values set as numbers equal, read and encode as the same values set as text")
    func setters() {
        var numbers = Metadata()
        numbers["yomo-tid"] = "t"
        numbers.setTrace(traceparent: TraceparentFields(traceIDHigh: 0x4bf9_2f35_77b3_4da6, traceIDLow: 0xa3ce_929d_0e0e_4736, spanID: 0x00f0_67aa_0ba9_02b7, flags: 1))
        numbers.setTrace(yomo: (0x4bf9_2f35_77b3_4da6, 0xa3ce_929d_0e0e_4736, 0x00f0_67aa_0ba9_02b7))
        var text = Metadata()
        text["yomo-tid"] = "t"
        text["traceparent"] = Self.traceparent
        text["yomo-trace-id"] = Self.traceID
        text["yomo-span-id"] = Self.spanID
        #expect(numbers == text)
        #expect(numbers.hashValue == text.hashValue)
        #expect(numbers.encoded() == text.encoded())
        #expect(numbers.encoded(sortedKeys: true) == text.encoded(sortedKeys: true))
        #expect(numbers["traceparent"] == Self.traceparent)
        guard case .fields(let fields) = numbers.traceparentValue, case .fields(let span) = numbers.yomoSpanIDValue,
              case .fields(let trace) = numbers.yomoTraceIDValue else {
            Issue.record("numbers not kept")
            return
        }
        #expect(fields.spanID == span && fields.traceIDHigh == trace.high && fields.traceIDLow == trace.low)
        // Replacing a text value with numbers keeps its place; other values differ.
        text.setTrace(yomo: (1, 2, 3))
        #expect(text["yomo-span-id"] == "0000000000000003")
        #expect(text["yomo-trace-id"] == "00000000000000010000000000000002")
        #expect(Array(text.map { $0.key }) == ["yomo-tid", "traceparent", "yomo-trace-id", "yomo-span-id"])
        #expect(text != numbers)
        // Text in a trace key is reported as text, not parsed again.
        var other = Metadata()
        other["traceparent"] = "garbage"
        guard case .text = other.traceparentValue, case .absent = other.yomoSpanIDValue else {
            Issue.record("text or absence misreported")
            return
        }
    }

    @Test("every byte at every position of a span id: numbers only for lowercase hex, with the right value")
    func everyByte() {
        let base = Array(Self.spanID.utf8)
        for position in 0..<16 {
            for byte in UInt8.min...UInt8.max {
                var digits = base
                digits[position] = byte
                let parsed = digits.withUnsafeBytes { StoredValue(.spanID, $0) }
                let isHex = (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
                guard case .spanID(let value)? = parsed else {
                    #expect(!isHex, "\(byte) at \(position) refused")
                    continue
                }
                #expect(isHex, "\(byte) at \(position) accepted")
                #expect(value == UInt64(String(decoding: digits, as: UTF8.self), radix: 16))
                #expect(StoredValue.spanID(value).string == String(decoding: digits, as: UTF8.self))
            }
        }
    }

    @Test("random trace values round-trip through bytes")
    func randomValues() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2_000 {
            var metadata = Metadata()
            metadata.setTrace(traceparent: TraceparentFields(
                traceIDHigh: generator.next(), traceIDLow: generator.next(), spanID: generator.next(), flags: UInt8.random(in: 0...255)))
            metadata.setTrace(yomo: (generator.next(), generator.next(), generator.next()))
            let bytes = metadata.encoded()
            let decoded = try Metadata(decoding: bytes)
            #expect(decoded == metadata)
            #expect(decoded.encoded() == bytes)
            // Read as text and set back as text: the same bytes.
            var text = Metadata()
            for (key, value) in decoded { text[key] = value }
            #expect(text.encoded() == bytes)
        }
    }
}

@Suite("ASCII check")
struct ASCIICheckTests {
    @Test("a byte of 0x80 or more at any position of any length up to 40 is found; all-ASCII passes")
    func everyPosition() {
        for length in 0...40 {
            let ascii = [UInt8]((0..<length).map { UInt8(truncatingIfNeeded: 32 + $0 * 7 % 95) })
            #expect(ascii.withUnsafeBytes { isASCII($0) }, "length \(length)")
            for position in 0..<length {
                for high: UInt8 in [0x80, 0xC3, 0xFF] {
                    var bytes = ascii
                    bytes[position] = high
                    #expect(!bytes.withUnsafeBytes { isASCII($0) }, "length \(length), 0x\(String(high, radix: 16)) at \(position)")
                }
            }
        }
    }
}
