/// What the batch span processor and YoMoLogging's batch log record processor
/// share: their four OTel settings and the bookkeeping of `forceFlush` and
/// `shutdown` callers waiting for the export thread.

/// The four OTel batch-processor settings, read from the variables named in
/// `names` (whole names, so that a search for a variable finds its reader):
/// schedule delay and export timeout in milliseconds (≥ 0), queue and batch
/// size (> 0; the batch no larger than the queue, as the spec asks). Malformed
/// or out-of-range values keep the default.
package func batchSettings(
    _ environment: [String: String],
    names: (scheduleDelay: String, maxQueueSize: String, maxExportBatchSize: String, exportTimeout: String),
    scheduleDelayMilliseconds: Int
) -> (scheduleDelay: Duration, maxQueueSize: Int, maxExportBatchSize: Int, exportTimeout: Duration) {
    func milliseconds(_ name: String, _ fallback: Int) -> Duration {
        guard let value = parseInteger(environment[name]), value >= 0 else { return .milliseconds(fallback) }
        return .milliseconds(value)
    }
    func positive(_ name: String, _ fallback: Int) -> Int {
        guard let value = parseInteger(environment[name]), value > 0 else { return fallback }
        return value
    }
    let maxQueueSize = positive(names.maxQueueSize, 2048)
    return (
        milliseconds(names.scheduleDelay, scheduleDelayMilliseconds),
        maxQueueSize,
        min(positive(names.maxExportBatchSize, 512), maxQueueSize),
        milliseconds(names.exportTimeout, 30000)
    )
}

/// Flush and shutdown requests and their waiters. Lives under the processor's
/// lock; continuations it hands back are resumed after unlocking.
package struct ExportRequests {
    package typealias Waiter = CheckedContinuation<Void, Never>

    /// Flushes asked for so far; each waiter waits for its own number.
    package private(set) var flushRequested: UInt64 = 0
    /// The highest flush number whose records have been exported.
    package private(set) var flushCompleted: UInt64 = 0
    package private(set) var shutdownRequested = false
    /// Set once the export thread has finished; later requests return at once.
    package private(set) var stopped = false
    private var flushWaiters: [(generation: UInt64, waiter: Waiter)] = []
    private var shutdownWaiters: [Waiter] = []

    package init() {}

    /// A flush (or shutdown) the export thread has not served yet.
    package var isPending: Bool { flushRequested != flushCompleted || shutdownRequested }

    /// Registers a flush; false when already stopped (resume the waiter at once).
    package mutating func addFlush(_ waiter: Waiter) -> Bool {
        guard !stopped else { return false }
        flushRequested += 1
        flushWaiters.append((flushRequested, waiter))
        return true
    }

    /// Registers a shutdown; false when already stopped (resume the waiter at once).
    package mutating func addShutdown(_ waiter: Waiter) -> Bool {
        guard !stopped else { return false }
        shutdownRequested = true
        shutdownWaiters.append(waiter)
        return true
    }

    /// Flushes up to `generation` are done: their waiters, to resume.
    package mutating func completeFlushes(upTo generation: UInt64) -> [Waiter] {
        flushCompleted = generation
        var ready: [Waiter] = []
        flushWaiters.removeAll { entry in
            guard entry.generation <= generation else { return false }
            ready.append(entry.waiter)
            return true
        }
        return ready
    }

    /// The export thread ends: every remaining flush waiter, then the shutdown
    /// waiters, to resume once the exporter has shut down.
    package mutating func stop() -> [Waiter] {
        stopped = true
        let waiters = flushWaiters.map(\.waiter) + shutdownWaiters
        flushWaiters.removeAll()
        shutdownWaiters.removeAll()
        return waiters
    }
}

extension ConditionLock {
    /// Registers `waiter` with `register` under the lock and wakes the export
    /// thread; resumes it at once when `register` declines (processor stopped).
    package func submit(_ waiter: ExportRequests.Waiter, _ register: (ExportRequests.Waiter) -> Bool) {
        lock()
        let accepted = register(waiter)
        if accepted { broadcast() }
        unlock()
        if !accepted { waiter.resume() }
    }
}
