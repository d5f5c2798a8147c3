import Synchronization
internal import YoMoTracing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Moves encoded records from the logging threads to a `LogSink` without ever
/// making a logging thread wait for the sink.
///
/// Asynchronous (the default): `enqueue` copies the record into a bounded
/// buffer under a short lock and returns; a dedicated thread writes the buffer
/// to the sink in batches. When the buffer is full, or the sink throws, records
/// are dropped and counted in `droppedRecordCount` — a slow or broken sink
/// costs log lines, never throughput or a crash on the data path.
///
/// Synchronous (tests, tools): the record is written on the logging thread.
///
/// Share one writer between the handlers of all loggers of a process: each
/// asynchronous writer owns a thread.
public final class LogWriter: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// Records waiting for the writer thread; more are dropped. Default 8192.
        public var maxQueuedRecords: Int
        /// Bytes waiting for the writer thread; more are dropped. Default 8 MiB.
        public var maxQueuedBytes: Int
        /// Write on the logging thread instead of a writer thread.
        public var isSynchronous: Bool

        public init(maxQueuedRecords: Int = 8192, maxQueuedBytes: Int = 8 << 20, isSynchronous: Bool = false) {
            self.maxQueuedRecords = max(maxQueuedRecords, 1)
            self.maxQueuedBytes = max(maxQueuedBytes, 1)
            self.isSynchronous = isSynchronous
        }

        public static let `default` = Configuration()
        /// Writes on the caller's thread; a slow sink then slows the caller. For tests.
        public static let synchronous = Configuration(isSynchronous: true)
    }

    public let sink: any LogSink
    public let configuration: Configuration
    private let state: WriterState

    public init(sink: any LogSink, configuration: Configuration = .default) {
        self.sink = sink
        self.configuration = configuration
        state = WriterState(sink: sink, configuration: configuration)
        if !configuration.isSynchronous {
            let state = self.state
            startThread { state.run() }
        }
        registerForExitFlush(state)
    }

    deinit {
        unregisterForExitFlush(state)
        state.stop()
    }

    /// The process-wide writer to standard error (created on first use).
    public static let standardError = LogWriter(sink: FileDescriptorSink.standardError)
    /// The process-wide writer to standard output (created on first use).
    public static let standardOutput = LogWriter(sink: FileDescriptorSink.standardOutput)

    /// Records lost because the queue was full, the sink threw, or the writer was shut down.
    public var droppedRecordCount: Int { state.lock.withLock { state.dropped } }

    /// Whether a flush gave up and the sink has finished no write since: the
    /// exit's flush is then skipped rather than waited out.
    package var sinkIsStuck: Bool { state.sinkIsStuck }

    /// Sink writes that threw (each may have carried several records).
    public var failedWriteCount: Int { state.lock.withLock { state.failedWrites } }

    /// When set, the writer thread follows a write with a `WARN` record in this
    /// format, logger `swift-yomo.logging`, saying how many records were dropped
    /// since the last such notice (field `dropped_count`), so losses show up in
    /// the log itself. `YoMoLogging.bootstrap` sets it; nil (default) keeps only the counter.
    public var dropNoticeFormat: LogFormat? {
        get { state.lock.withLock { state.dropNoticeFormat } }
        set { state.lock.withLock { state.dropNoticeFormat = newValue } }
    }

    /// Hands one encoded record (ending in `\n`) to the sink. Never blocks on the sink
    /// unless the writer is synchronous.
    public func enqueue(_ record: [UInt8]) {
        state.enqueue(record)
    }

    /// Waits until every record enqueued before the call has been written (or
    /// dropped), at most `timeout`. Returns false on timeout, e.g. when the sink hangs.
    @discardableResult
    public func flush(timeout: Duration = .seconds(5)) -> Bool {
        state.flush(timeout: timeout)
    }

    /// Flushes, then stops the writer thread; later records are dropped and counted.
    @discardableResult
    public func shutdown(timeout: Duration = .seconds(5)) -> Bool {
        let flushed = state.flush(timeout: timeout)
        state.stop()
        return flushed
    }
}

final class WriterState: @unchecked Sendable {
    let lock = ConditionLock()
    private let sink: any LogSink
    private let configuration: LogWriter.Configuration

    // Guarded by `lock`.
    private var pending: [UInt8] = []
    private var pendingRecords = 0
    private var accepted: UInt64 = 0
    private var finished: UInt64 = 0
    var dropped = 0
    var dropNoticeFormat: LogFormat?
    private var droppedNoticed = 0
    var failedWrites = 0
    private var stopping = false
    /// True while the writer thread sleeps until a producer signals it.
    private var writerIdle = false
    private var flushWaiters = 0
    /// `finished` when a flush last gave up (a write finished since makes them differ).
    private var finishedWhenFlushGaveUp: UInt64?

    /// After a write, the writer thread lets records collect this long before
    /// writing again: under load producers then never make a wake-up syscall,
    /// and the sink sees one write per batch.
    private static let lingerNanoseconds: UInt64 = 2_000_000

    init(sink: any LogSink, configuration: LogWriter.Configuration) {
        self.sink = sink
        self.configuration = configuration
    }

    func enqueue(_ record: [UInt8]) {
        if configuration.isSynchronous {
            lock.lock()
            defer { lock.unlock() }
            guard !stopping else { dropped += 1; return }
            do {
                try record.withUnsafeBytes { try sink.write($0) }
            } catch {
                dropped += 1
                failedWrites += 1
            }
            return
        }
        lock.lock()
        defer { lock.unlock() }
        guard !stopping, pendingRecords < configuration.maxQueuedRecords,
              pending.count + record.count <= configuration.maxQueuedBytes else {
            dropped += 1
            return
        }
        pending.append(contentsOf: record)
        pendingRecords += 1
        accepted += 1
        if writerIdle {
            writerIdle = false
            lock.broadcast()
        } else if pendingRecords == configuration.maxQueuedRecords / 2 {
            // Cut a linger short before the queue fills.
            lock.broadcast()
        }
    }

    func flush(timeout: Duration) -> Bool {
        if configuration.isSynchronous { return true }
        let deadline = monotonicNanoseconds() &+ timeout.clampedNanoseconds
        lock.lock()
        defer { lock.unlock() }
        let target = accepted
        guard finished < target else { return true }
        // The writer skips its linger while someone waits.
        flushWaiters += 1
        lock.broadcast()
        defer { flushWaiters -= 1 }
        while finished < target {
            guard monotonicNanoseconds() < deadline else {
                finishedWhenFlushGaveUp = finished
                return false
            }
            lock.wait(untilMonotonicNanoseconds: deadline)
        }
        return true
    }

    /// Whether the flush at exit would only wait in vain: a flush already gave
    /// up and the sink has not finished a write since (a log reader that
    /// stalls). Waiting again would add its second to every exit.
    var sinkIsStuck: Bool {
        lock.withLock { !configuration.isSynchronous && finishedWhenFlushGaveUp == finished && accepted > finished }
    }

    /// The flush at exit: bounded, and skipped when the sink is stuck.
    func flushAtExit() {
        guard !sinkIsStuck else { return }
        _ = flush(timeout: .seconds(1))
    }

    func stop() {
        lock.withLock {
            stopping = true
            lock.broadcast()
        }
    }

    static func dropNotice(_ count: Int, format: LogFormat) -> [UInt8] {
        let encoder = RecordEncoder(kind: format.kind, includeSource: false, colored: false)
        var out: [UInt8] = []
        encoder.appendHeader(
            &out, timeNanoseconds: wallClockNanoseconds(), level: .warning, label: "swift-yomo.logging",
            message: "log records dropped: queue full or sink failing"
        )
        encoder.appendField("dropped_count", .stringConvertible(count), &out)
        encoder.appendTrailer(&out)
        return out
    }

    /// The writer thread: one `write` per batch of queued records.
    func run() {
        var batch: [UInt8] = []
        lock.lock()
        while true {
            while pendingRecords == 0 && !stopping {
                writerIdle = true
                lock.wait()
            }
            writerIdle = false
            if pendingRecords == 0 {
                lock.unlock()
                return
            }
            swap(&pending, &batch)
            let count = pendingRecords
            pendingRecords = 0
            lock.unlock()

            var failed = false
            do {
                try batch.withUnsafeBytes { try sink.write($0) }
            } catch {
                failed = true
            }
            // Keep the buffer for reuse unless one burst made it huge.
            if batch.capacity > 1 << 20 { batch = [] } else { batch.removeAll(keepingCapacity: true) }

            lock.lock()
            finished += UInt64(count)
            if failed {
                dropped += count
                failedWrites += 1
            }
            lock.broadcast()
            if let format = dropNoticeFormat, dropped > droppedNoticed, !failed {
                let count = dropped - droppedNoticed
                droppedNoticed = dropped
                lock.unlock()
                // Best effort: a notice that fails is not itself counted.
                let notice = Self.dropNotice(count, format: format)
                try? notice.withUnsafeBytes { try sink.write($0) }
                lock.lock()
            }
            // Linger even when the queue is empty right now: going idle would make the
            // next producer pay a wake-up syscall, record after record.
            if !stopping && flushWaiters == 0 {
                let deadline = monotonicNanoseconds() &+ Self.lingerNanoseconds
                while !stopping && flushWaiters == 0 && pendingRecords < configuration.maxQueuedRecords / 2,
                      monotonicNanoseconds() < deadline {
                    lock.wait(untilMonotonicNanoseconds: deadline)
                }
            }
        }
    }
}

// Records still queued when `main` returns would be lost: flush every live
// writer at exit (bounded, so a hung sink cannot hang the exit).
private let liveWriters = Mutex<[ObjectIdentifier: WriterState]>([:])
private let exitHookInstalled = Atomic<Bool>(false)

private func registerForExitFlush(_ state: WriterState) {
    liveWriters.withLock { $0[ObjectIdentifier(state)] = state }
    if exitHookInstalled.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged {
        atexit {
            let states = liveWriters.withLock { Array($0.values) }
            for state in states { state.flushAtExit() }
        }
    }
}

private func unregisterForExitFlush(_ state: WriterState) {
    _ = liveWriters.withLock { $0.removeValue(forKey: ObjectIdentifier(state)) }
}
