import Synchronization

/// A bounded FIFO between one producer and one consumer, with backpressure: `send`
/// waits while the queue is full, `next` waits while it is empty. Used to feed a
/// pipe handler in arrival order without dropping or buffering without bound.
///
/// Full means `capacity` elements, or elements weighing `maximumWeight` in all
/// (a pipe handler's frames, in bytes); one element is always let in when none
/// is queued, whatever it weighs.
final class AsyncQueue<Element: Sendable>: Sendable, AsyncSequence {
    private struct State {
        var items: [(element: Element, weight: Int)] = []
        var head = 0
        var weight = 0
        var finished = false
        /// Every element is let in, full or not (`letAllIn`).
        var unbounded = false
        /// Full at these limits instead (`allowReadAhead`).
        var readAhead: (count: Int, weight: Int)?
        var consumer: CheckedContinuation<Element?, Never>?
        var producers: [CheckedContinuation<Void, Never>] = []
        var count: Int { items.count - head }
    }

    private enum SendStep { case delivered(CheckedContinuation<Element?, Never>?), full, finished }
    private enum NextStep { case value(Element, CheckedContinuation<Void, Never>?), end, wait }

    private let capacity: Int
    private let maximumWeight: Int
    private let state = Mutex(State())

    init(capacity: Int, maximumWeight: Int? = nil) {
        precondition(capacity > 0 && (maximumWeight ?? 1) > 0)
        self.capacity = capacity
        self.maximumWeight = maximumWeight ?? .max
    }

    private func isFull(_ state: State) -> Bool {
        guard !state.unbounded else { return false }
        let (count, weight) = state.readAhead ?? (capacity, maximumWeight)
        return state.count >= count || state.weight >= weight
    }

    /// Lets every element in, full or not, waiting senders too, until
    /// `limitAgain()`: elements that are in memory already (a pipe handler's
    /// frames that an ended connection still held unread).
    func letAllIn() {
        let producers = state.withLock { state in
            state.unbounded = true
            defer { state.producers = [] }
            return state.producers
        }
        for producer in producers { producer.resume() }
    }

    /// Full again at `capacity` or `maximumWeight`.
    func limitAgain() { state.withLock { $0.unbounded = false; $0.readAhead = nil } }

    /// Full only once one more `capacity` or `maximumWeight` is queued
    /// beyond what is now (or beyond the limits, if less is), until
    /// `endReadAhead()` or `limitAgain()`.
    func allowReadAhead() {
        let producers = state.withLock { state in
            let (count, weight) = (Swift.max(state.count, capacity), Swift.max(state.weight, maximumWeight))
            state.readAhead = (count + capacity, weight.addingReportingOverflow(maximumWeight).overflow ? .max : weight + maximumWeight)
            defer { state.producers = [] }
            return state.producers
        }
        for producer in producers { producer.resume() }
    }

    func endReadAhead() { state.withLock { $0.readAhead = nil } }

    /// Enqueues `element`, waiting while the queue is full; `whenFull` runs
    /// before the first wait. Returns `false` if the queue was finished (the
    /// element is dropped: nobody will read it).
    @discardableResult
    func send(_ element: Element, weight: Int = 0, whenFull: () -> Void = {}) async -> Bool {
        var waited = false
        while true {
            let step: SendStep = state.withLock { state in
                if state.finished { return .finished }
                if let consumer = state.consumer {
                    state.consumer = nil
                    return .delivered(consumer)
                }
                guard !isFull(state) else { return .full }
                state.items.append((element, weight))
                state.weight += weight
                return .delivered(nil)
            }
            switch step {
            case .finished: return false
            case .delivered(let consumer?):
                consumer.resume(returning: element)
                return true
            case .delivered(nil): return true
            case .full:
                if !waited { whenFull() }
                waited = true
                await withCheckedContinuation { continuation in
                    let resumeNow = state.withLock { state -> Bool in
                        if state.finished || !isFull(state) { return true }
                        state.producers.append(continuation)
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            }
        }
    }

    /// No more elements: the consumer sees the end after the queued ones.
    func finish() {
        let (consumer, producers) = state.withLock { state in
            state.finished = true
            let consumer = state.count == 0 ? state.consumer : nil
            if consumer != nil { state.consumer = nil }
            defer { state.producers.removeAll() }
            return (consumer, state.producers)
        }
        consumer?.resume(returning: nil)
        for producer in producers { producer.resume() }
    }

    /// Nothing is queued (the consumer may be inside an element).
    var isEmpty: Bool { state.withLock { $0.count == 0 } }

    /// Elements queued.
    var count: Int { state.withLock { $0.count } }

    /// `finish()` was called: nothing more is taken.
    var isFinished: Bool { state.withLock { $0.finished } }

    /// What the queued elements weigh together.
    var queuedWeight: Int { state.withLock { $0.weight } }

    /// Finishes the queue and drops what it holds; returns what it held.
    func discardQueued() -> [Element] {
        let (dropped, producers) = state.withLock { state in
            state.finished = true
            let dropped = state.items[state.head...].map(\.element)
            (state.items, state.head, state.weight) = ([], 0, 0)
            defer { state.producers.removeAll() }
            return (dropped, state.producers)
        }
        for producer in producers { producer.resume() }
        return dropped
    }

    /// Removes the queued elements at the end that `picked` picks, back to
    /// the first one it does not (what the consumer gets stays in order),
    /// without finishing the queue; returns them, oldest first.
    func removeTrailing(where picked: (Element) -> Bool) -> [Element] {
        let (removed, producers) = state.withLock { state -> ([Element], [CheckedContinuation<Void, Never>]) in
            let queued = state.items[state.head...]
            let first = (queued.lastIndex { !picked($0.element) } ?? state.head - 1) + 1
            guard first < state.items.endIndex else { return ([], []) }
            let removed = state.items[first...]
            state.weight -= removed.reduce(0) { $0 + $1.weight }
            state.items.removeSubrange(first...)
            defer { state.producers.removeAll() }
            return (removed.map(\.element), state.producers)
        }
        for producer in producers { producer.resume() }
        return removed
    }

    /// Nothing queued, and the consumer waits for the next element.
    var consumerWaitsOnEmpty: Bool { state.withLock { $0.count == 0 && $0.consumer != nil } }

    func next() async -> Element? {
        await withCheckedContinuation { continuation in
            let step: NextStep = state.withLock { state in
                if state.count > 0 {
                    let (element, weight) = state.items[state.head]
                    state.head += 1
                    state.weight -= weight
                    if state.head > 64, state.head * 2 > state.items.count {
                        state.items.removeFirst(state.head)
                        state.head = 0
                    }
                    let producer = state.producers.isEmpty ? nil : state.producers.removeFirst()
                    return .value(element, producer)
                }
                if state.finished { return .end }
                state.consumer = continuation
                return .wait
            }
            switch step {
            case .value(let element, let producer):
                producer?.resume()
                continuation.resume(returning: element)
            case .end:
                continuation.resume(returning: nil)
            case .wait:
                break
            }
        }
    }

    struct AsyncIterator: AsyncIteratorProtocol {
        let queue: AsyncQueue
        func next() async -> Element? { await queue.next() }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(queue: self) }
}
