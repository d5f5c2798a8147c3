public import Logging
public import YoMoTracing

/// Queues log records and exports them in batches from a dedicated thread, with
/// the OTel batch log record processor settings (`OTEL_BLRP_*`).
///
/// `emit` (the logging thread) only takes a lock and appends to a bounded
/// queue; when it is full the record is dropped and counted
/// (`droppedRecordCount`). A batch goes out when `maxExportBatchSize` records
/// are queued or `scheduleDelay` has passed; `forceFlush` and `shutdown`
/// export everything emitted before them, within `shutdownTimeout`.
///
/// Shutdown is bounded whatever the collector does: export timeouts and retry
/// waits are clipped to the time left, an export in flight at the deadline is
/// abandoned, and the records not exported are counted as dropped and
/// reported in one error line.
public final class BatchLogRecordProcessor: @unchecked Sendable {
    public struct Configuration: Sendable, Hashable {
        /// Longest wait between two exports. `OTEL_BLRP_SCHEDULE_DELAY`, default 1000 ms.
        public var scheduleDelay: Duration
        /// Records kept waiting for export; more are dropped. `OTEL_BLRP_MAX_QUEUE_SIZE`, default 2048.
        public var maxQueueSize: Int
        /// Records per export call. `OTEL_BLRP_MAX_EXPORT_BATCH_SIZE`, default 512.
        public var maxExportBatchSize: Int
        /// Time one export call may take, retries included. `OTEL_BLRP_EXPORT_TIMEOUT`, default 30000 ms.
        public var exportTimeout: Duration
        /// Longest time `shutdown()` and `forceFlush()` take, all exports included.
        /// `YOMO_TELEMETRY_SHUTDOWN_TIMEOUT`, default 5000 ms.
        public var shutdownTimeout: Duration

        public static let `default` = Configuration(environment: [:])

        /// Reads the `OTEL_BLRP_*` variables; malformed or out-of-range values keep the default.
        public init(environment: [String: String] = ProcessEnvironment.current) {
            (scheduleDelay, maxQueueSize, maxExportBatchSize, exportTimeout) = batchSettings(
                environment,
                names: ("OTEL_BLRP_SCHEDULE_DELAY", "OTEL_BLRP_MAX_QUEUE_SIZE", "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "OTEL_BLRP_EXPORT_TIMEOUT"),
                scheduleDelayMilliseconds: 1000)
            shutdownTimeout = shutdownTimeoutSetting(environment)
        }
    }

    public let configuration: Configuration
    private let exporter: any LogRecordExporter
    private let logger: Logger
    private let lock = ConditionLock()

    // Guarded by `lock`.
    private var queue: [OTLPLogRecord] = []
    private var dropped = 0
    private var droppedSinceLastLog = 0
    private var requests = ExportRequests()
    private var shutdownLoss = ShutdownLoss()

    /// Starts the export thread.
    /// - Parameter logger: for the processor's own warnings; must not route back
    ///   into this processor (give it a stderr handler).
    public init(exporter: any LogRecordExporter, configuration: Configuration = .default, logger: Logger) {
        var configuration = configuration
        configuration.maxQueueSize = max(configuration.maxQueueSize, 1)
        configuration.maxExportBatchSize = min(max(configuration.maxExportBatchSize, 1), configuration.maxQueueSize)
        self.configuration = configuration
        self.exporter = exporter
        var logger = logger
        logger[metadataKey: "component"] = "BatchLogRecordProcessor"
        self.logger = logger
        queue.reserveCapacity(configuration.maxQueueSize)
        startThread { [self] in exportLoop() }
    }

    /// Records never exported: dropped because the queue was full or the
    /// processor was shut down, lost in a failed export, or left when the
    /// shutdown deadline passed.
    public var droppedRecordCount: Int { lock.withLock { dropped } }

    public func emit(_ record: OTLPLogRecord) {
        lock.lock()
        defer { lock.unlock() }
        guard !requests.shutdownRequested, queue.count < configuration.maxQueueSize else {
            dropped += 1
            droppedSinceLastLog += 1
            return
        }
        queue.append(record)
        if queue.count == configuration.maxExportBatchSize { lock.broadcast() }
    }

    /// `forceFlush(timeout: configuration.shutdownTimeout)`.
    public func forceFlush() async {
        await forceFlush(timeout: configuration.shutdownTimeout)
    }

    /// Returns once every record emitted before the call has been exported (or
    /// its export failed), or after `timeout`; the export goes on.
    public func forceFlush(timeout: Duration) async {
        await lock.submit(timeout: timeout, { requests.addFlush($0, id: $1) }, expire: expire)
    }

    /// `shutdown(timeout: configuration.shutdownTimeout)`.
    public func shutdown() async {
        await shutdown(timeout: configuration.shutdownTimeout)
    }

    /// Exports what is queued, then shuts the exporter down, giving up after
    /// `timeout`: records not exported by then are counted in
    /// `droppedRecordCount` and reported in one log line. Later records are
    /// dropped. Idempotent.
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
        let delay = configuration.scheduleDelay.clampedNanoseconds
        var deadline = monotonicNanoseconds() &+ delay
        var batch: [OTLPLogRecord] = []
        batch.reserveCapacity(configuration.maxQueueSize)

        lock.lock()
        while true {
            while queue.count < configuration.maxExportBatchSize, !requests.isPending,
                  monotonicNanoseconds() < deadline {
                lock.wait(untilMonotonicNanoseconds: deadline)
            }
            let flushTarget = requests.flushRequested
            let shuttingDown = requests.shutdownRequested
            let giveUpAt = shuttingDown ? requests.shutdownDeadline : .max
            swap(&queue, &batch)
            let droppedNow = droppedSinceLastLog
            droppedSinceLastLog = 0
            lock.unlock()

            if droppedNow > 0 {
                logger.warning("Dropped log records: export queue full", metadata: [
                    "dropped_count": "\(droppedNow)", "max_queue_size": "\(configuration.maxQueueSize)",
                ])
            }
            let outcome = exportAll(batch, giveUpAt: giveUpAt)
            batch.removeAll(keepingCapacity: true)
            deadline = monotonicNanoseconds() &+ delay

            lock.lock()
            dropped += outcome.lost
            // Also an export that began before the shutdown and was abandoned.
            if requests.shutdownRequested && outcome.lost > 0 {
                shutdownLoss.count += outcome.lost
                if !outcome.abandoned || shutdownLoss.lastFailure == nil {
                    shutdownLoss.lastFailure = outcome.failure ?? shutdownLoss.lastFailure
                }
                shutdownLoss.deadlineReached = shutdownLoss.deadlineReached || outcome.abandoned
                    || monotonicNanoseconds() >= requests.shutdownDeadline
            }
            let ready = requests.completeFlushes(upTo: flushTarget)
            if shuttingDown {
                let waiters = ready + requests.stop()
                let loss = shutdownLoss
                let timeout = requests.shutdownTimeout
                lock.unlock()
                exporter.shutdown()
                // Before resuming: the process may exit as soon as shutdown returns.
                if loss.count > 0 {
                    logger.error("\(loss.message(noun: "log records", timeout: timeout))", metadata: [
                        "dropped_log_records": "\(loss.count)",
                        "shutdown_timeout_ms": "\(timeout.clampedNanoseconds / 1_000_000)",
                    ])
                }
                for waiter in waiters { waiter.resume() }
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

    /// Exports in batches, each within the export timeout clipped to
    /// `giveUpAt` (monotonic; set during a shutdown, after which nothing is
    /// attempted). Returns the records not exported, the last failure, and
    /// whether the deadline cut the exports short.
    private func exportAll(_ records: [OTLPLogRecord], giveUpAt: UInt64) -> (lost: Int, failure: String?, abandoned: Bool) {
        var lost = 0
        var failure: String?
        var abandoned = false
        var start = 0
        while start < records.count {
            var timeout = configuration.exportTimeout
            if giveUpAt != .max {
                let now = monotonicNanoseconds()
                guard now < giveUpAt else {
                    lost += records.count - start
                    abandoned = true
                    break
                }
                timeout = min(timeout, .nanoseconds(Int64(clamping: giveUpAt - now)))
            }
            let end = min(start + configuration.maxExportBatchSize, records.count)
            let chunk = start == 0 && end == records.count ? records : Array(records[start..<end])
            do {
                try exporter.export(chunk, timeout: timeout)
            } catch {
                // The exporter has logged the failure (or, while shutting down,
                // left it to the report); the records are lost.
                logger.debug("Log export failed", metadata: ["error": "\(error)", "batch_size": "\(chunk.count)"])
                lost += chunk.count
                // A bare "deadline reached" says less than the collector's answer.
                if error != .abandoned || failure == nil {
                    failure = error.message.isEmpty ? "\(error)" : error.message
                }
                abandoned = abandoned || error == .abandoned
            }
            start = end
        }
        return (lost, failure, abandoned)
    }
}
