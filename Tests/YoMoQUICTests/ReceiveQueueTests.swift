import NIOCore
import Testing
@testable import YoMoQUIC

/// How received stream data is queued for the reader (`RecvShared.append`).
@Suite("Receive queue")
struct ReceiveQueueTests {
    /// Address of the bytes a buffer stores: it changes when the storage is copied.
    private func storageAddress(_ buffer: ByteBuffer) -> UInt? {
        buffer.withUnsafeReadableBytes { $0.baseAddress.map { UInt(bitPattern: $0) } }
    }

    @Test("packets coalesce into one chunk in place, without copying what it holds")
    func coalescesInPlace() {
        var shared = RecvShared()
        var sent: [UInt8] = []
        var address: UInt?
        for packet in 0..<50 {
            let bytes = (0..<1200).map { UInt8(truncatingIfNeeded: packet &* 31 &+ $0) }
            sent += bytes
            bytes.withUnsafeBytes { shared.append($0) }
            #expect(shared.chunks.count == 1)
            // A copy-on-write per packet (what writing through CircularBuffer's
            // subscript did) would move the chunk's bytes each time.
            let now = storageAddress(shared.chunks.first!)
            if packet > 0 { #expect(now == address, "packet \(packet) copied the chunk") }
            address = now
        }
        #expect(Array(shared.chunks.first!.readableBytesView) == sent)
    }

    @Test("a packet that does not fit starts a new chunk; an empty one adds nothing")
    func startsNewChunk() {
        var shared = RecvShared()
        let big = [UInt8](repeating: 7, count: 65_000)
        big.withUnsafeBytes { shared.append($0) }
        [UInt8]().withUnsafeBytes { shared.append($0) }
        #expect(shared.chunks.count == 1)
        let packet = [UInt8](repeating: 9, count: 1200)
        packet.withUnsafeBytes { shared.append($0) }
        #expect(shared.chunks.count == 2)
        #expect(shared.chunks.map(\.readableBytes) == [65_000, 1200])
        // Bigger than a chunk: stored whole.
        let huge = [UInt8](repeating: 1, count: 100_000)
        huge.withUnsafeBytes { shared.append($0) }
        #expect(shared.chunks.map(\.readableBytes) == [65_000, 1200, 100_000])
    }
}
