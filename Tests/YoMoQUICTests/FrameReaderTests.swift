import NIOCore
import Testing
import YoMoWire
@testable import YoMoQUIC

@Suite("Frame reader over QUIC")
struct FrameReaderTests {
    @Test("frame size from the y3 header matches the encoder at every length boundary")
    func frameSizeBoundaries() {
        for payloadSize in [0, 1, 40, 50, 60, 63, 64, 100, 8000, 8191, 8192, 65536, 1_048_575, 1_048_576, 3_000_000] {
            var payload = ByteBuffer()
            payload.writeRepeatingByte(7, count: payloadSize)
            let encoded = Frame.data(DataFrame(tag: 0x33, payload: payload)).encoded()
            #expect(FrameDecoder.frameSize(encoded) == encoded.readableBytes, "payload \(payloadSize)")
            // A cut header is "need more", never a wrong size.
            #expect(FrameDecoder.frameSize(encoded.getSlice(at: 0, length: 1)!) == nil)
        }
        #expect(FrameDecoder.frameSize(ByteBuffer(bytes: [0xBF, 0x7F])) == -1)
    }

    @Test("2,000 frames of random sizes (0 B to 300 KB) arrive exact and in order")
    func randomSizes() async throws {
        let server = try await EchoServer()
        let connection = try await QUICFrameConnection.connect(host: "127.0.0.1", port: server.port)
        var generator = SystemRandomNumberGenerator()
        let frames: [Frame] = (0..<2000).map { i in
            let size = i % 50 == 0 ? Int.random(in: 65_000...300_000, using: &generator) : Int.random(in: 0...9000, using: &generator)
            var payload = ByteBuffer()
            payload.writeRepeatingByte(UInt8(truncatingIfNeeded: i), count: size)
            return .data(DataFrame(tag: UInt32(i), payload: payload))
        }
        let writer = Task { for frame in frames { try await connection.write(frame) } }
        var received: [Frame] = []
        for try await frame in connection.frames {
            received.append(frame)
            if received.count == frames.count { break }
        }
        try await writer.value
        #expect(received.count == frames.count)
        #expect(received == frames)
        await connection.close()
        await server.stop()
    }
}
