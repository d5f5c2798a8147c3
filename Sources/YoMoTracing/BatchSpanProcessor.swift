public import Logging
import Synchronization

/// Queues ended spans and exports them in batches from a dedicated thread.
///
/// `onEnd` (the data path) only takes a lock and appends to a bounded queue: it
/// never waits for the exporter. When the queue is full the span is dropped and
/// counted (`droppedSpanCount`, plus a warning per export round). A batch goes
/// out when `maxExportBatchSize` spans are queued or `scheduleDelay` has passed,
/// whichever comes first; `forceFlush` and `shutdown` export everything that
/// ended before them, within `shutdownTimeout`.
///
/// Shutdown is bounded whatever the collector does (answers 503, never
/// answers, refuses): each export's timeout and retry waits are clipped to
/// the time left, an export still in flight at the deadline is abandoned, and
/// what was not exported is counted as dropped and reported in one error line.
public final class BatchSpanProcessor: SpanProcessor, @unchecked Sendable {
    /// The OTel batch span processor settings (`OTEL_BSP_*`).
    public struct Configuration: Sendable, Hashable {
        /// Longest wait between two exports. `OTEL_BSP_SCHEDULE_DELAY`, default 5000 ms.
        public var scheduleDelay: Duration
        /// Spans kept waiting for export; more are dropped. `OTEL_BSP_MAX_QUEUE_SIZE`, default 2048.
        public var maxQueueSize: Int
        /// Spans per export call. `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512.
        public var maxExportBatchSize: Int
        /// Time one export call may take, retries included. `OTEL_BSP_EXPORT_TIMEOUT`, default 30000 ms.
        public var exportTimeout: Duration
        /// Longest time `shutdown()` and `forceFlush()` take, all exports included.
        /// `YOMO_TELEMETRY_SHUTDOWN_TIMEOUT`, default 5000 ms.
        public var shutdownTimeout: Duration

        public static let `default` = Configuration(environment: [:])

        /// Reads the `OTEL_BSP_*` variables; malformed or out-of-range values keep the default.
        public init(environment: [String: String] = ProcessEnvironment.current) {
            (scheduleDelay, maxQueueSize, maxExportBatchSize, exportTimeout) = batchSettings(
                environment,
                names: ("OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_BSP_EXPORT_TIMEOUT"),
                scheduleDelayMilliseconds: 5000)
            shutdownTimeout = shutdownTimeoutSetting(environment)
        }
    }

    public let configuration: Configuration
    private let exporter: any SpanExporter
    private let logger: Logger
    private let lock = ConditionLock()

    // Guarded by `lock`, which already keeps accesses apart: Swift's dynamic
    // exclusivity checks (a runtime call and a thread-local lookup per access,
    // about 240 instructions per `onEnd`) guard nothing here.
    @exclusivity(unchecked) private var queue: SpanRing
    @exclusivity(unchecked) private var dropped = 0
    @exclusivity(unchecked) private var exported = 0
    /// Told of every export call: its seconds and whether it failed (metrics).
    private let exportObservers = Mutex<[@Sendable (Double, Bool) -> Void]>([])
    @exclusivity(unchecked) private var failedExports = 0
    @exclusivity(unchecked) private var droppedSinceLastLog = 0
    @exclusivity(unchecked) private var requests = ExportRequests()
    @exclusivity(unchecked) private var shutdownLoss = ShutdownLoss()
    /// Exported spans whose memory producers free, a few per `onEnd`: memory
    /// then goes back to the allocator of the thread that allocated it, which
    /// avoids malloc-arena contention between the data path and the export thread.
    @exclusivity(unchecked) private var releasePending: [FinishedSpan] = []

    /// Starts the export thread.
    public init(exporter: any SpanExporter, configuration: Configuration = .default, logger: Logger) {
        var configuration = configuration
        configuration.maxQueueSize = max(configuration.maxQueueSize, 1)
        configuration.maxExportBatchSize = min(max(configuration.maxExportBatchSize, 1), configuration.maxQueueSize)
        self.configuration = configuration
        self.exporter = exporter
        var logger = logger
        logger[metadataKey: "component"] = "BatchSpanProcessor"
        self.logger = logger
        queue = SpanRing(capacity: configuration.maxQueueSize)
        startThread { [self] in exportLoop() }
    }

    /// Spans never exported, since creation: dropped because the queue was
    /// full, lost in a failed export, or left when the shutdown deadline passed.
    public var droppedSpanCount: Int { lock.withLock { dropped } }

    /// Calls `observer` after every export call with its duration in seconds and
    /// whether it failed (for the SDK's own metrics).
    package func observeExports(_ observer: @escaping @Sendable (Double, Bool) -> Void) {
        exportObservers.withLock { $0.append(observer) }
    }

    /// Spans the exporter took without an error, since creation.
    public var exportedSpanCount: Int { lock.withLock { exported } }

    /// Export calls that failed (their spans are in `droppedSpanCount`).
    public var failedExportCount: Int { lock.withLock { failedExports } }

    /// Spans waiting for the export thread.
    public var queuedSpanCount: Int { lock.withLock { queue.count } }

    public func onEnd(_ span: FinishedSpan) {
        enqueue(span)
    }

    /// `onEnd` for a span handed over, not lent: it moves into the queue.
    func enqueue(_ span: consuming FinishedSpan) {
        guard span.storage.spanContext.traceFlags.contains(.sampled) else { return }
        lock.lock()
        guard !requests.shutdownRequested else {
            lock.unlock()
            return
        }
        if queue.append(consume span) {
            if queue.count == configuration.maxExportBatchSize { lock.signal() }
        } else {
            dropped += 1
            droppedSinceLastLog += 1
        }
        // Take (at most) two exported spans to free (see `releasePending`), and
        // free them after unlocking so other producers do not wait on it.
        let freed = (releasePending.popLast(), releasePending.popLast())
        lock.unlock()
        withExtendedLifetime(freed) {}
    }

    /// `forceFlush(timeout: configuration.shutdownTimeout)`.
    public func forceFlush() async {
        await forceFlush(timeout: configuration.shutdownTimeout)
    }

    /// Returns once every span ended before the call has been exported (or
    /// its export failed), or after `timeout`; spans not exported by then stay
    /// queued and their export goes on.
    public func forceFlush(timeout: Duration) async {
        await lock.submit(timeout: timeout, { requests.addFlush($0, id: $1) }, expire: expire)
    }

    /// `shutdown(timeout: configuration.shutdownTimeout)`.
    public func shutdown() async {
        await shutdown(timeout: configuration.shutdownTimeout)
    }

    /// Exports what is queued, then shuts the exporter down, giving up after
    /// `timeout`: spans not exported by then are counted in `droppedSpanCount`
    /// and reported in one log line. Later spans are ignored. Idempotent.
    public func shutdown(timeout: Duration) async {
        await lock.submitShutdown(timeout: timeout, abandonExports: exporter.abandonExports(after:), {
            requests.addShutdown($0, id: $1, deadline: $2, timeout: timeout)
        }, expire: expire)
    }

    /// Called under the lock by a waiter's timer.
    private var expire: @Sendable (UInt64) -> ExportRequests.Waiter? {
        { [self] id in requests.expire(id) }
    }

    private func exportLoop() {
        let delay = UInt64(configuration.scheduleDelay.components.seconds) * 1_000_000_000
            + UInt64(configuration.scheduleDelay.components.attoseconds / 1_000_000_000)
        var deadline = monotonicNanoseconds() + delay
        var batch: [FinishedSpan] = []
        batch.reserveCapacity(configuration.maxExportBatchSize)
        var drainRemaining = 0
        var drainTarget: UInt64 = 0

        lock.lock()
        while true {
            while queue.count < configuration.maxExportBatchSize, !requests.isPending,
                  monotonicNanoseconds() < deadline {
                lock.wait(untilMonotonicNanoseconds: deadline)
            }
            // A flush or shutdown exports what was queued when it was seen (not
            // what producers add meanwhile, or it might never end); otherwise one
            // batch per round.
            let shuttingDown = requests.shutdownRequested
            let giveUpAt = requests.shutdownDeadline
            let draining = requests.isPending
            if draining && drainRemaining == 0 {
                drainRemaining = queue.count
                drainTarget = requests.flushRequested
            }
            if shuttingDown && monotonicNanoseconds() >= giveUpAt {
                // The shutdown's time is up: attempt nothing more.
                let left = queue.removeAll()
                dropped += left
                shutdownLoss.count += left
                shutdownLoss.deadlineReached = true
                drainRemaining = 0
            } else {
                let before = queue.count
                queue.pop(upTo: configuration.maxExportBatchSize, into: &batch)
                drainRemaining = max(drainRemaining - (before - queue.count), 0)
            }
            let more = draining && drainRemaining > 0
            let flushTarget = draining ? drainTarget : requests.flushCompleted
            let droppedNow = droppedSinceLastLog
            droppedSinceLastLog = 0
            lock.unlock()

            if droppedNow > 0 {
                logger.warning("Dropped spans: export queue full", metadata: [
                    "dropped_count": "\(droppedNow)",
                    "max_queue_size": "\(configuration.maxQueueSize)",
                ])
            }
            let exportStart = monotonicNanoseconds()
            let failure = exportBatch(batch, giveUpAt: shuttingDown ? giveUpAt : .max)
            if !batch.isEmpty {
                let seconds = Double(monotonicNanoseconds() &- exportStart) / 1e9
                for observer in exportObservers.withLock({ $0 }) { observer(seconds, failure != nil) }
            }
            deadline = monotonicNanoseconds() + delay

            lock.lock()
            if failure == nil { exported += batch.count }
            if let failure {
                failedExports += 1
                dropped += batch.count
                // Also an export that began before the shutdown and was abandoned.
                if requests.shutdownRequested {
                    shutdownLoss.count += batch.count
                    // A bare "deadline reached" says less than the collector's answer.
                    if !failure.abandoned || shutdownLoss.lastFailure == nil {
                        shutdownLoss.lastFailure = failure.detail
                    }
                    if failure.abandoned || monotonicNanoseconds() >= requests.shutdownDeadline {
                        shutdownLoss.deadlineReached = true
                    }
                }
            }
            if releasePending.isEmpty {
                swap(&releasePending, &batch)
                batch.reserveCapacity(configuration.maxExportBatchSize)
            }
            // Producers have not kept up with freeing: free the rest here.
            if !batch.isEmpty {
                lock.unlock()
                batch.removeAll(keepingCapacity: true)
                lock.lock()
            }
            if more { continue }
            let ready = requests.completeFlushes(upTo: flushTarget)
            if shuttingDown {
                releasePending.removeAll()
                let waiters = ready + requests.stop()
                let loss = shutdownLoss
                let timeout = requests.shutdownTimeout
                lock.unlock()
                exporter.shutdown()
                // Before resuming: the process may exit as soon as shutdown returns.
                if loss.count > 0 {
                    logger.error("\(loss.message(noun: "spans", timeout: timeout))", metadata: [
                        "dropped_spans": "\(loss.count)",
                        "shutdown_timeout_ms": "\(timeout.clampedNanoseconds / 1_000_000)",
                    ])
                }
                for waiter in waiters { waiter.resume() }
                logger.debug("Shut down")
                return
            }
            if !ready.isEmpty {
                lock.unlock()
                exporter.forceFlush()
                for continuation in ready { continuation.resume() }
                lock.lock()
            }
        }
    }

    /// Exports within the export timeout, clipped to `giveUpAt` (monotonic)
    /// during a shutdown. Returns the failure (nil on success): its detail and
    /// whether the deadline cut it short.
    private func exportBatch(_ batch: [FinishedSpan], giveUpAt: UInt64) -> (detail: String, abandoned: Bool)? {
        guard !batch.isEmpty else { return nil }
        var timeout = configuration.exportTimeout
        if giveUpAt != .max {
            let now = monotonicNanoseconds()
            guard now < giveUpAt else { return ("shutdown deadline reached", true) }
            timeout = min(timeout, .nanoseconds(Int64(clamping: giveUpAt - now)))
        }
        do {
            try exporter.export(batch, timeout: timeout)
            return nil
        } catch {
            // The exporter has logged the failure already (or, while shutting
            // down, left it to the report).
            logger.debug("Export failed", metadata: ["error": "\(error)", "batch_size": "\(batch.count)"])
            return (error.message.isEmpty ? "\(error)" : error.message, error == .abandoned)
        }
    }
}

/// A fixed-capacity FIFO ring of spans: O(1) append on the data path, and the
/// export thread pops a batch without shifting the rest.
struct SpanRing {
    private var storage: [FinishedSpan?]
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        storage = Array(repeating: nil, count: capacity)
    }

    var capacity: Int { storage.count }
    var isEmpty: Bool { count == 0 }

    /// False when full.
    mutating func append(_ span: consuming FinishedSpan) -> Bool {
        guard count < storage.count else { return false }
        var index = head + count
        if index >= storage.count { index -= storage.count }
        storage[index] = span
        count += 1
        return true
    }

    /// Drops every queued span; returns how many.
    mutating func removeAll() -> Int {
        let removed = count
        var scratch: [FinishedSpan] = []
        pop(upTo: count, into: &scratch)
        return removed
    }

    mutating func pop(upTo limit: Int, into batch: inout [FinishedSpan]) {
        let taken = min(limit, count)
        for _ in 0..<taken {
            batch.append(storage[head].take()!)
            head += 1
            if head == storage.count { head = 0 }
        }
        count -= taken
    }
}

/// Hands each ended span straight to the exporter on the ending thread. For
/// tests and the console; production uses `BatchSpanProcessor`.
public final class SimpleSpanProcessor: SpanProcessor, @unchecked Sendable {
    private let exporter: any SpanExporter
    private let lock = ConditionLock()
    private var isShutdown = false
    private let timeout: Duration

    public init(exporter: any SpanExporter, exportTimeout: Duration = .seconds(30)) {
        self.exporter = exporter
        self.timeout = exportTimeout
    }

    public func onEnd(_ span: FinishedSpan) {
        guard span.context.isSampled else { return }
        lock.withLock {
            guard !isShutdown else { return }
            try? exporter.export([span], timeout: timeout)
        }
    }

    public func forceFlush() async {
        lock.withLock { exporter.forceFlush() }
    }

    public func shutdown() async {
        lock.withLock {
            guard !isShutdown else { return }
            isShutdown = true
            exporter.shutdown()
        }
    }
}
