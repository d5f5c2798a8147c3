public import Logging
public import YoMoTracing

/// Queues log records and exports them in batches from a dedicated thread, with
/// the OTel batch log record processor settings (`OTEL_BLRP_*`).
///
/// `emit` (the logging thread) only takes a lock and appends to a bounded
/// queue; when it is full the record is dropped and counted
/// (`droppedRecordCount`). A batch goes out when `maxExportBatchSize` records
/// are queued or `scheduleDelay` has passed; `forceFlush` and `shutdown`
/// export everything emitted before them.
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

        public static let `default` = Configuration(environment: [:])

        /// Reads the `OTEL_BLRP_*` variables; malformed or out-of-range values keep the default.
        public init(environment: [String: String] = ProcessEnvironment.current) {
            (scheduleDelay, maxQueueSize, maxExportBatchSize, exportTimeout) = batchSettings(
                environment,
                names: ("OTEL_BLRP_SCHEDULE_DELAY", "OTEL_BLRP_MAX_QUEUE_SIZE", "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "OTEL_BLRP_EXPORT_TIMEOUT"),
                scheduleDelayMilliseconds: 1000)
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

    /// Records dropped because the queue was full or the processor was shut down.
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

    /// Returns once every record emitted before the call has been exported (or its export failed).
    public func forceFlush() async {
        await withCheckedContinuation { lock.submit($0) { requests.addFlush($0) } }
    }

    /// Exports what is queued, then shuts the exporter down; later records are dropped. Idempotent.
    public func shutdown() async {
        await withCheckedContinuation { lock.submit($0) { requests.addShutdown($0) } }
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
            swap(&queue, &batch)
            let droppedNow = droppedSinceLastLog
            droppedSinceLastLog = 0
            lock.unlock()

            if droppedNow > 0 {
                logger.warning("Dropped log records: export queue full", metadata: [
                    "dropped_count": "\(droppedNow)", "max_queue_size": "\(configuration.maxQueueSize)",
                ])
            }
            exportAll(batch)
            batch.removeAll(keepingCapacity: true)
            deadline = monotonicNanoseconds() &+ delay

            lock.lock()
            let ready = requests.completeFlushes(upTo: flushTarget)
            if shuttingDown {
                let waiters = ready + requests.stop()
                lock.unlock()
                exporter.shutdown()
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

    private func exportAll(_ records: [OTLPLogRecord]) {
        var start = 0
        while start < records.count {
            let end = min(start + configuration.maxExportBatchSize, records.count)
            let chunk = start == 0 && end == records.count ? records : Array(records[start..<end])
            do {
                try exporter.export(chunk, timeout: configuration.exportTimeout)
            } catch {
                // The exporter has logged the failure; the records are lost.
                logger.debug("Log export failed", metadata: ["error": "\(error)", "batch_size": "\(chunk.count)"])
            }
            start = end
        }
    }
}
