import NIOCore
import Testing
@testable import YoMoQUIC

/// How small writes are queued for the loop (`SendShared.appendEncoded`).
@Suite("Send queue")
struct SendQueueTests {
    private func storageAddress(_ buffer: ByteBuffer) -> UInt? {
        buffer.withUnsafeReadableBytes { $0.baseAddress.map { UInt(bitPattern: $0) } }
    }

    private func frame(_ index: Int, length: Int) -> [UInt8] {
        (0..<length).map { UInt8(truncatingIfNeeded: index &* 31 &+ $0) }
    }

    @Test("a burst of small writes fills new buffers instead of growing (and copying) a queued one")
    func burstNeverCopies() {
        var shared = SendShared()
        var sent: [UInt8] = []
        var addresses: [UInt?] = []
        for index in 0..<400 {
            let bytes = frame(index, length: 1200)
            sent += bytes
            shared.appendEncoded(length: bytes.count) { $0.writeBytes(bytes) }
            // Every buffer queued before this write still holds its bytes where they were.
            let now = shared.pending.map(storageAddress)
            #expect(Array(now.prefix(addresses.count)) == addresses, "write \(index) moved a queued buffer")
            addresses = now
        }
        #expect(Array(shared.pending.map { Array($0.readableBytesView) }.joined()) == sent)
        // Doubling from one write's size to the limit: a handful of buffers, none beyond the limit.
        #expect(shared.pending.count < 20, "\(shared.pending.count) buffers for 480,000 bytes")
        #expect(shared.pending.allSatisfy { $0.capacity <= SendShared.coalescingLimit })
        let held = shared.pending.reduce(0) { $0 + $1.capacity }
        #expect(held < 2 * sent.count + SendShared.coalescingLimit, "\(held) bytes held for \(sent.count)")
    }

    @Test("a write into an empty queue takes a buffer of its own size")
    func loneWriteIsSizedToItsData() {
        var shared = SendShared()
        shared.appendEncoded(length: 100) { $0.writeBytes(frame(0, length: 100)) }
        #expect(shared.pending.count == 1)
        #expect(shared.pending[0].capacity < 256)
        // A big write is queued as it is, and the next small one starts a buffer of its own size.
        shared.append(ByteBuffer(bytes: frame(1, length: 8192)))
        shared.appendEncoded(length: 100) { $0.writeBytes(frame(2, length: 100)) }
        #expect(shared.pending.count == 3)
        #expect(shared.pending[2].capacity < 256)
    }
}
