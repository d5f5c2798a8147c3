import Synchronization

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

/// The shutdown deadline of both batch processors when `shutdown()` is called
/// without a timeout: `YOMO_TELEMETRY_SHUTDOWN_TIMEOUT` in milliseconds (≥ 0),
/// default 5000, so that a process stopped by Kubernetes (30 s grace) exits in
/// time whatever the collector does.
package func shutdownTimeoutSetting(_ environment: [String: String]) -> Duration {
    guard let value = parseInteger(environment["YOMO_TELEMETRY_SHUTDOWN_TIMEOUT"]), value >= 0 else {
        return .seconds(5)
    }
    return .milliseconds(value)
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
    /// Monotonic time at which the earliest shutdown gives up (`.max` before one).
    package private(set) var shutdownDeadline = UInt64.max
    /// The timeout that set `shutdownDeadline`, for the report.
    package private(set) var shutdownTimeout = Duration.zero
    /// Set once the export thread has finished; later requests return at once.
    package private(set) var stopped = false
    private var flushWaiters: [(generation: UInt64, id: UInt64, waiter: Waiter)] = []
    private var shutdownWaiters: [(id: UInt64, waiter: Waiter)] = []

    package init() {}

    /// A flush (or shutdown) the export thread has not served yet.
    package var isPending: Bool { flushRequested != flushCompleted || shutdownRequested }

    /// Registers a flush; false when already stopped (resume the waiter at once).
    package mutating func addFlush(_ waiter: Waiter, id: UInt64) -> Bool {
        guard !stopped else { return false }
        flushRequested += 1
        flushWaiters.append((flushRequested, id, waiter))
        return true
    }

    /// Registers a shutdown that gives up at `deadline` (monotonic); false when
    /// already stopped (resume the waiter at once).
    package mutating func addShutdown(_ waiter: Waiter, id: UInt64, deadline: UInt64, timeout: Duration) -> Bool {
        guard !stopped else { return false }
        shutdownRequested = true
        if deadline < shutdownDeadline {
            shutdownDeadline = deadline
            shutdownTimeout = timeout
        }
        shutdownWaiters.append((id, waiter))
        return true
    }

    /// Takes out waiter `id` if it is still waiting (its timeout passed before
    /// the export thread served it): to resume.
    package mutating func expire(_ id: UInt64) -> Waiter? {
        if let index = flushWaiters.firstIndex(where: { $0.id == id }) {
            return flushWaiters.remove(at: index).waiter
        }
        if let index = shutdownWaiters.firstIndex(where: { $0.id == id }) {
            return shutdownWaiters.remove(at: index).waiter
        }
        return nil
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
        let waiters = flushWaiters.map(\.waiter) + shutdownWaiters.map(\.waiter)
        flushWaiters.removeAll()
        shutdownWaiters.removeAll()
        return waiters
    }
}

/// What a shutdown could not export, reported in one line when the export
/// thread stops (rather than one error per failed batch).
package struct ShutdownLoss {
    package var count = 0
    /// The deadline passed before everything was tried.
    package var deadlineReached = false
    /// The last export failure's detail (collector URL and status or curl error).
    package var lastFailure: String?

    package init() {}

    /// E.g. "shutdown deadline (5 s) reached, 1200 spans not exported (collector http://…: HTTP 503)".
    package func message(noun: String, timeout: Duration) -> String {
        let what = deadlineReached ? "Shutdown deadline (\(Self.describe(timeout))) reached, " : "Shutdown: "
        return what + "\(count) \(noun) not exported (\(lastFailure ?? "no export attempted"))"
    }

    static func describe(_ timeout: Duration) -> String {
        let milliseconds = timeout.clampedNanoseconds / 1_000_000
        return milliseconds % 1000 == 0 ? "\(milliseconds / 1000) s" : "\(milliseconds) ms"
    }
}

private let waiterIDs = Atomic<UInt64>(0)

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

    /// Waits until the export thread serves the request that `register` adds
    /// (given the waiter and its id), or until `timeout` has passed: then
    /// `expire` (under the lock) takes the waiter back if it is still there.
    /// A timer thread rather than `Task.sleep`, so that a cancelled caller
    /// (a ServiceLifecycle service shutting down) still waits for the export.
    package func submit(
        timeout: Duration,
        _ register: (ExportRequests.Waiter, UInt64) -> Bool,
        expire: @escaping @Sendable (UInt64) -> ExportRequests.Waiter?
    ) async {
        let id = waiterIDs.add(1, ordering: .relaxed).newValue
        let timer = OneShotTimer()
        await withCheckedContinuation { (waiter: ExportRequests.Waiter) in
            submit(waiter) { register($0, id) }
            timer.start(at: monotonicNanoseconds(after: timeout)) { [self] in
                withLock { expire(id) }?.resume()
            }
        }
        timer.cancel()
    }
}

extension ConditionLock {
    /// A batch processor's shutdown: tells the exporter to abandon exports at
    /// the deadline, then submits the request that `register` adds (waiter, id,
    /// monotonic deadline) and waits for the export thread to serve it.
    package func submitShutdown(
        timeout: Duration, abandonExports: (Duration) -> Void,
        _ register: (ExportRequests.Waiter, UInt64, UInt64) -> Bool,
        expire: @escaping @Sendable (UInt64) -> ExportRequests.Waiter?
    ) async {
        // Before waiting: an export already in flight must also end in time.
        abandonExports(timeout)
        let deadline = monotonicNanoseconds(after: timeout)
        // The export thread answers within ~50 ms of the deadline; the grace
        // only matters for an exporter that ignores `abandonExports`.
        await submit(timeout: timeout + .milliseconds(500), { register($0, $1, deadline) }, expire: expire)
    }
}

/// Runs an action on its own thread at a monotonic time, unless cancelled first.
package final class OneShotTimer: @unchecked Sendable {
    private let lock = ConditionLock()
    private var cancelled = false

    package init() {}

    package func start(at deadline: UInt64, _ action: @escaping @Sendable () -> Void) {
        startThread { [self] in
            lock.lock()
            while !cancelled, monotonicNanoseconds() < deadline {
                lock.wait(untilMonotonicNanoseconds: deadline)
            }
            let fire = !cancelled
            lock.unlock()
            if fire { action() }
        }
    }

    package func cancel() {
        lock.withLock {
            cancelled = true
            lock.broadcast()
        }
    }
}
