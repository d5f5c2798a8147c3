import Testing

@testable import YoMo

@Suite("A pipe handler's queue")
struct AsyncQueueTests {
    @Test("removeTrailing takes the queued elements at the end that are all picked, weight and all: the consumer gets those before them, one picked among them included, and a sender waiting on the full queue is let in")
    func removeTrailing() async {
        let queue = AsyncQueue<Int>(capacity: 4, maximumWeight: 100)
        for value in 1...4 { #expect(await queue.send(value, weight: 10)) }
        // Full: the fifth waits.
        let fifth = Task { await queue.send(5, weight: 10) }
        #expect(queue.removeTrailing { $0 == 9 } == [], "none picked: nothing removed")
        #expect(queue.removeTrailing { $0 < 4 } == [], "the last not picked: nothing removed")
        #expect(queue.count == 4 && queue.queuedWeight == 40)
        #expect(queue.removeTrailing { $0 != 2 } == [3, 4], "1 is picked, but 2 after it is not")
        // The fifth may come in at once: the weight is read once it has.
        #expect(await fifth.value, "let in once there was room")
        #expect(queue.count == 3 && queue.queuedWeight == 30, "\(queue.count) queued, weighing \(queue.queuedWeight)")
        #expect(await queue.next() == 1)
        #expect(await queue.next() == 2)
        #expect(await queue.next() == 5)
        #expect(!queue.isFinished, "still open")
        queue.finish()
        #expect(await queue.next() == nil)
    }
}
