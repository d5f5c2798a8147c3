import NIOCore
import Testing

@testable import YoMoWire

/// A small seeded generator so every property run is reproducible from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum RandomFrames {
    static func string(_ rng: inout SplitMix64, maxLength: Int) -> String {
        let scalars: [Unicode.Scalar] = ["a", "Z", "0", "-", "_", ":", "é", "世", "🌍", " "]
        let length = Int.random(in: 0...maxLength, using: &rng)
        return String(String.UnicodeScalarView((0..<length).map { _ in scalars.randomElement(using: &rng)! }))
    }

    static func bytes(_ rng: inout SplitMix64, length: Int) -> ByteBuffer {
        // Eight bytes per draw: byte by byte, unoptimized, was most of these tests' time.
        var bytes: [UInt8] = []
        bytes.reserveCapacity(length + 8)
        while bytes.count < length { withUnsafeBytes(of: rng.next().littleEndian) { bytes.append(contentsOf: $0) } }
        return ByteBuffer(bytes: bytes.prefix(length))
    }

    static func metadata(_ rng: inout SplitMix64) -> Metadata {
        var metadata = Metadata()
        for _ in 0..<Int.random(in: 0...6, using: &rng) {
            metadata[string(&rng, maxLength: 20) + "k"] = string(&rng, maxLength: 40) + "v"
        }
        return metadata
    }

    static func frame(_ rng: inout SplitMix64) -> Frame {
        switch Int.random(in: 0..<10, using: &rng) {
        case 0..<5:
            let payloadLength = Bool.random(using: &rng) ? Int.random(in: 0...80, using: &rng) : Int.random(in: 0...9000, using: &rng)
            return .data(
                DataFrame(
                    tag: UInt32.random(in: 0...UInt32.max, using: &rng),
                    metadata: metadata(&rng),
                    payload: bytes(&rng, length: payloadLength)
                )
            )
        case 5, 6:
            return .handshake(
                HandshakeFrame(
                    name: string(&rng, maxLength: 30),
                    id: NanoID.generate(using: &rng) + "-\(Int.random(in: 0...99, using: &rng))",
                    clientType: [.source, .streamFunction, .upstreamZipper].randomElement(using: &rng)!,
                    observedTags: (0..<Int.random(in: 0...5, using: &rng)).map { _ in UInt32.random(in: 0...UInt32.max, using: &rng) },
                    authName: string(&rng, maxLength: 8),
                    authPayload: string(&rng, maxLength: 70),
                    version: "2024-01-03",
                    functionDefinition: Array(bytes(&rng, length: Int.random(in: 0...100, using: &rng)).readableBytesView),
                    wantedTarget: string(&rng, maxLength: 10),
                    wantsReceipts: Bool.random(using: &rng),
                    resumes: Bool.random(using: &rng) ? "" : string(&rng, maxLength: 24)
                )
            )
        case 7: return Bool.random(using: &rng) ? .handshakeAck : .receipt(ReceiptFrame(settledThrough: rng.next(), previousRoutedThrough: Bool.random(using: &rng) ? rng.next() : nil))
        case 8: return .rejected(RejectedFrame(message: string(&rng, maxLength: 100)))
        default:
            return Bool.random(using: &rng)
                ? .goaway(GoawayFrame(message: string(&rng, maxLength: 20)))
                : .connectTo(ConnectToFrame(endpoint: "127.0.0.1:\(Int.random(in: 1...65535, using: &rng))"))
        }
    }
}

@Suite("Round trips and streaming")
struct RoundTripTests {
    @Test("random frames survive encode and decode", arguments: 0..<8)
    func randomFrames(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        for _ in 0..<250 {
            let frame = RandomFrames.frame(&rng)
            let decoded = try Frame(decoding: frame.encoded())
            #expect(decoded == frame)
            if case .data(let data) = decoded {
                let original = try Metadata(decoding: data.metadata)
                #expect(try Metadata(decoding: original.encoded()) == original)
            }
        }
    }

    /// Feeds `stream` to a decoder in the given chunk sizes, as a transport would.
    static func decodeStream(_ stream: ByteBuffer, chunks: [Int]) throws -> [Frame] {
        var decoder = FrameDecoder()
        var received = ByteBuffer()
        var frames: [Frame] = []
        var remaining = stream
        for size in chunks {
            var chunk = remaining.readSlice(length: min(size, remaining.readableBytes))!
            received.writeBuffer(&chunk)
            while let frame = try decoder.decode(buffer: &received) { frames.append(frame) }
        }
        #expect(remaining.readableBytes == 0)
        #expect(try decoder.decodeLast(buffer: &received, seenEOF: true) == nil)
        return frames
    }

    static func randomStream(seed: UInt64, count: Int) -> ([Frame], ByteBuffer) {
        var rng = SplitMix64(seed: seed)
        let frames = (0..<count).map { _ in RandomFrames.frame(&rng) }
        var stream = ByteBuffer()
        for frame in frames { frame.encode(into: &stream) }
        return (frames, stream)
    }

    @Test("a stream fed one byte at a time yields every frame in order")
    func oneByteAtATime() throws {
        let (frames, stream) = Self.randomStream(seed: 42, count: 60)
        let decoded = try Self.decodeStream(stream, chunks: Array(repeating: 1, count: stream.readableBytes))
        #expect(decoded == frames)
    }

    @Test("a stream fed in random splits yields every frame in order", arguments: 100..<110)
    func randomSplits(seed: UInt64) throws {
        let (frames, stream) = Self.randomStream(seed: seed, count: 120)
        var rng = SplitMix64(seed: seed &* 31)
        var chunks: [Int] = []
        var total = 0
        while total < stream.readableBytes {
            let size = [1, 2, 3, 7, 64, 1000, 1350, 20_000].randomElement(using: &rng)!
            chunks.append(size)
            total += size
        }
        #expect(try Self.decodeStream(stream, chunks: chunks) == frames)
    }

    @Test("a stream in one piece yields every frame in order")
    func onePiece() throws {
        let (frames, stream) = Self.randomStream(seed: 7, count: 200)
        #expect(try Self.decodeStream(stream, chunks: [stream.readableBytes]) == frames)
    }

    @Test("lengths at the varint boundaries encode and decode", arguments: [
        (0, "00"), (63, "3f"), (64, "8040"), (100, "8064"), (128, "8100"),
        (8191, "bf7f"), (8192, "80c000"), (1_048_575, "bfff7f"), (1_048_576, "80c08000"),
        (134_217_727, "bfffff7f"), (134_217_728, "80c0808000"), (Int(Int32.max), "87ffffff7f"),
    ])
    func lengthBoundaries(length: Int, hex: String) throws {
        var buffer = ByteBuffer()
        Y3.writeLength(length, into: &buffer)
        #expect(buffer.hexString == hex)
        #expect(Y3.encodedSize(ofLength: length) == buffer.readableBytes)
        let read = try buffer.withUnsafeReadableBytesTyped { (bytes) throws(WireError) in try Y3.readLength(bytes, at: 0) }
        guard case .value(let value, let size) = read else {
            Issue.record("expected a value")
            return
        }
        #expect(value == length)
        #expect(size == buffer.readableBytes)
        // Every proper prefix of a varint asks for more data.
        for cut in 0..<buffer.readableBytes {
            let prefix = buffer.getSlice(at: 0, length: cut)!
            let partial = try prefix.withUnsafeReadableBytesTyped { (bytes) throws(WireError) in try Y3.readLength(bytes, at: 0) }
            guard case .needMoreData = partial else {
                Issue.record("prefix of \(cut) bytes decoded")
                return
            }
        }
    }

    @Test("payloads whose frame length crosses a varint boundary round trip", arguments: [
        56, 57, 63, 64, 8183, 8184, 8191, 8192, 1_048_566, 1_048_567, 1_048_575, 1_048_576,
    ])
    func frameLengthBoundaries(payloadLength: Int) throws {
        let frame = Frame.data(DataFrame(tag: 0x33, metadata: ByteBuffer(), payload: patternPayload(length: payloadLength)))
        let encoded = frame.encoded()
        #expect(try Frame(decoding: encoded) == frame)
        // And streamed in pieces that split the header everywhere.
        let decoded = try Self.decodeStream(encoded, chunks: [1, 1, 1, 1, 1, 3, 4096] + Array(repeating: 65_536, count: 20))
        #expect(decoded == [frame])
    }

    @Test("a decoded payload shares the received bytes: no copy")
    func payloadIsNotCopied() throws {
        let frame = Frame.data(DataFrame(tag: 0x33, metadata: ["yomo-tid": "abc"], payload: patternPayload(length: 65_536)))
        let wire = frame.encoded()
        let decoded = try Frame(decoding: wire)
        guard case .data(let data) = decoded else {
            Issue.record("not a data frame")
            return
        }
        let wireRange = wire.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) ..< UInt(bitPattern: $0.baseAddress! + $0.count) }
        let payloadStart = data.payload.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
        #expect(wireRange.contains(payloadStart))
        #expect(data.payload == patternPayload(length: 65_536))
    }

    @Test("encodeHeader plus the payload bytes is the whole frame")
    func headerThenPayload() {
        let frame = DataFrame(tag: 0xE001, metadata: ["yomo-tid": "abc"], payload: patternPayload(length: 9000))
        var split = ByteBuffer()
        frame.encodeHeader(into: &split)
        split.writeImmutableBuffer(frame.payload)
        #expect(split == Frame.data(frame).encoded())
    }

    @Test("a frame over the maximum size fails as soon as its length is known")
    func maximumFrameSize() throws {
        var decoder = FrameDecoder(maximumFrameSize: 1024)
        let frame = Frame.data(DataFrame(tag: 1, payload: patternPayload(length: 2000)))
        var header = frame.encoded().getSlice(at: 0, length: 4)!
        let error = try #require(throws: WireError.self) { try decoder.decodeFrame(buffer: &header) }
        #expect(error.code == .frameTooLarge)
        #expect(error.message.contains("exceeds the maximum frame size of 1024 bytes"))
        // The default is 16 MiB: a header announcing 17 MiB fails without waiting for the body.
        var defaultDecoder = FrameDecoder()
        var huge = ByteBuffer()
        huge.writeInteger(UInt8(0xBF))
        Y3.writeLength(17 << 20, into: &huge)
        #expect(throws: WireError.self) { try defaultDecoder.decodeFrame(buffer: &huge) }
    }

    @Test("an unknown frame type fails at once")
    func unknownFrameType() throws {
        var decoder = FrameDecoder()
        var bytes = ByteBuffer(bytes: [0x81])
        let error = try #require(throws: WireError.self) { try decoder.decodeFrame(buffer: &bytes) }
        #expect(error.code == .unknownFrameType)
        #expect(error.message.contains("0x81"))
    }

    @Test("uint32 tags use Go's minimal two's-complement form", arguments: [
        (UInt32(0x33), "33"), (0x80, "0080"), (0xE001, "00e001"), (0xFFFF_FFFF, "ff"),
        (0x7FFF_FFFF, "7fffffff"), (0x8000_0000, "80000000"), (0, "00"), (0xFFFF_FF80, "80"),
    ])
    func uint32Encoding(value: UInt32, hex: String) throws {
        var buffer = ByteBuffer()
        Y3.writeUInt32(value, into: &buffer)
        #expect(buffer.hexString == hex)
        let decoded = try buffer.withUnsafeReadableBytesTyped { (bytes) throws(WireError) in try Y3.readUInt32(bytes, field: "tag") }
        #expect(decoded == value)
    }
}
