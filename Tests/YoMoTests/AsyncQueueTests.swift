import Testing

@testable import YoMo

@Suite("A pipe handler's queue")
struct AsyncQueueTests {
    @Test("removeQueued takes the queued elements from the first one picked on, weight and all: the consumer gets those before it, and a sender waiting on the full queue is let in")
    func removeQueued() async {
        let queue = AsyncQueue<Int>(capacity: 4, maximumWeight: 100)
        for value in 1...4 { #expect(await queue.send(value, weight: 10)) }
        // Full: the fifth waits.
        let fifth = Task { await queue.send(5, weight: 10) }
        #expect(queue.removeQueued { $0 == 9 } == [], "none picked: nothing removed")
        #expect(queue.count == 4 && queue.queuedWeight == 40)
        #expect(queue.removeQueued { $0 >= 3 } == [3, 4])
        #expect(queue.queuedWeight == 20)
        #expect(await fifth.value, "let in once there was room")
        #expect(await queue.next() == 1)
        #expect(await queue.next() == 2)
        #expect(await queue.next() == 5)
        #expect(!queue.isFinished, "still open")
        queue.finish()
        #expect(await queue.next() == nil)
    }
}
