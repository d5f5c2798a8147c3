public import Logging
public import YoMoTracing
import Synchronization

/// One log record as the OTLP logs exporter sends it
/// (https://opentelemetry.io/docs/specs/otel/logs/data-model/).
public struct OTLPLogRecord: Sendable {
    /// When the event happened (Unix nanoseconds).
    public var timeNanoseconds: UInt64
    /// When the SDK saw it; equal to `timeNanoseconds` for swift-log records.
    public var observedTimeNanoseconds: UInt64
    public var level: Logger.Level
    public var body: String
    /// The record's metadata; nested dictionaries and arrays stay nested (kvlist / array values).
    public var attributes: Logger.Metadata
    /// The span the record was written in, if any; fills `trace_id`, `span_id` and `flags`.
    public var spanContext: SpanContext?
    /// The logger's label.
    public var scope: InstrumentationScope

    public init(
        timeNanoseconds: UInt64,
        observedTimeNanoseconds: UInt64? = nil,
        level: Logger.Level,
        body: String,
        attributes: Logger.Metadata = [:],
        spanContext: SpanContext? = nil,
        scope: InstrumentationScope
    ) {
        self.timeNanoseconds = timeNanoseconds
        self.observedTimeNanoseconds = observedTimeNanoseconds ?? timeNanoseconds
        self.level = level
        self.body = body
        self.attributes = attributes
        self.spanContext = spanContext
        self.scope = scope
    }
}

/// Sends batches of log records somewhere. Blocking: the batch processor calls
/// it from its export thread.
public protocol LogRecordExporter: Sendable {
    /// - Parameter timeout: the most the call may take, retries included.
    func export(_ records: [OTLPLogRecord], timeout: Duration) throws(LoggingError)
    func forceFlush()
    func shutdown()
    /// As `SpanExporter.abandonExports(after:)`: the batch processor's shutdown
    /// gives up `timeout` from now, and so should an export in flight or started later.
    func abandonExports(after timeout: Duration)
}

extension LogRecordExporter {
    public func forceFlush() {}
    public func shutdown() {}
    /// Default: nothing; each export's `timeout` is then its only bound.
    public func abandonExports(after timeout: Duration) {}
}

/// Keeps exported records in memory, for tests.
public final class InMemoryLogRecordExporter: LogRecordExporter {
    private let storage = Mutex<[OTLPLogRecord]>([])

    public init() {}

    public func export(_ records: [OTLPLogRecord], timeout: Duration) throws(LoggingError) {
        storage.withLock { $0 += records }
    }

    public var records: [OTLPLogRecord] { storage.withLock { $0 } }
}

/// OTLP `SeverityNumber` of a swift-log level (https://opentelemetry.io/docs/specs/otel/logs/data-model/#field-severitynumber).
func severityNumber(_ level: Logger.Level) -> UInt32 {
    switch level {
    case .trace: 1       // TRACE
    case .debug: 5       // DEBUG
    case .info: 9        // INFO
    case .notice: 10     // INFO2
    case .warning: 13    // WARN
    case .error: 17      // ERROR
    case .critical: 21   // FATAL
    }
}
