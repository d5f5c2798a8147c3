public import Logging
import Instrumentation
import YoMoTracing

/// A swift-log `LogHandler` that renders records as text, JSON lines or logfmt
/// (see `LogFormat`) and hands them to a `LogWriter`, which writes them off the
/// caller's thread and drops (and counts) what a slow sink cannot take.
///
/// Fields of a record, in this order, later sources winning on equal keys: the
/// logger's metadata (sorted by key), `trace_id` / `span_id` of the current
/// span (`traceCorrelation`), the metadata provider's, the call's own (these
/// two sorted in `.text`, in dictionary order otherwise), then
/// `error.message` / `error.type` for a logged error.
public struct YoMoLogHandler: LogHandler {
    public let label: String
    public let format: LogFormat
    public let writer: LogWriter
    public var logLevel: Logger.Level
    public var metadataProvider: Logger.MetadataProvider?

    /// Stamps `trace_id` / `span_id` of the current span (YoMoTracing's
    /// `ServiceContext.current?.spanContext`) on records written inside a span:
    /// the output of `Logger.MetadataProvider.yomoTracing` without building a
    /// dictionary and two strings per record (see docs/logging.md, Benchmark).
    /// Inside a span these ids win over `trace_id` / `span_id` from any other source.
    public var traceCorrelation: Bool

    /// Adds the emitting module, file and line to every record.
    public var includeSource: Bool {
        didSet { encodeBaseMetadata() }
    }

    public var metadata: Logger.Metadata {
        didSet { encodeBaseMetadata() }
    }

    // The logger's own metadata changes rarely and is on every record: it is
    // sorted and encoded once per change, not per record.
    private var baseFields: [(key: String, value: Logger.Metadata.Value)] = []
    /// `baseFields`' keys alone: scanning them copies no metadata values.
    private var baseKeys: [String] = []
    private var baseEncoded: [UInt8] = []
    private let colored: Bool

    /// - Parameters:
    ///   - colored: colour the level of `.text` records; default: when the sink is a terminal.
    public init(
        label: String,
        format: LogFormat = .text,
        writer: LogWriter = .standardError,
        logLevel: Logger.Level = .info,
        metadata: Logger.Metadata = [:],
        metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider,
        traceCorrelation: Bool = true,
        includeSource: Bool = false,
        colored: Bool? = nil
    ) {
        self.traceCorrelation = traceCorrelation
        self.label = label
        self.format = format
        self.writer = writer
        self.logLevel = logLevel
        self.metadataProvider = metadataProvider
        self.includeSource = includeSource
        self.metadata = metadata
        self.colored = format == .text && (colored ?? writer.sink.isTerminal)
        encodeBaseMetadata()
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    private var encoder: RecordEncoder {
        RecordEncoder(kind: format.kind, includeSource: includeSource, colored: colored)
    }

    private mutating func encodeBaseMetadata() {
        baseFields = metadata.sorted { $0.key < $1.key }
        baseKeys = baseFields.map(\.key)
        var encoded: [UInt8] = []
        let encoder = self.encoder
        for field in baseFields { encoder.appendField(field.key, field.value, &encoded) }
        baseEncoded = encoded
    }

    public func log(event: LogEvent) {
        writer.enqueue(encode(event, timeNanoseconds: wallClockNanoseconds()))
    }

    func encode(_ event: LogEvent, timeNanoseconds: UInt64) -> [UInt8] {
        let provided = metadataProvider?.get() ?? [:]
        let explicit = event.metadata ?? [:]
        let encoder = self.encoder
        var out: [UInt8] = []
        out.reserveCapacity(160 + baseEncoded.count)
        encoder.appendHeader(
            &out, timeNanoseconds: timeNanoseconds, level: event.level, label: label,
            message: event.message.description
        )
        var spanContext: SpanContext?
        if traceCorrelation, let current = ServiceContext.current?.spanContext, current.isValid {
            spanContext = current
        }
        let stamped = spanContext != nil
        // Key clashes are checked by comparing the few keys involved, not by
        // hashing: small-string comparison is far cheaper than SipHash.
        if !baseFields.isEmpty {
            let overridden = provided.keys.contains { baseKeys.contains($0) }
                || explicit.keys.contains { baseKeys.contains($0) }
                || (stamped && (baseKeys.contains(YoMoLogField.traceID) || baseKeys.contains(YoMoLogField.spanID)))
            if !overridden {
                out.append(contentsOf: baseEncoded)
            } else {
                for field in baseFields where provided[field.key] == nil && explicit[field.key] == nil
                    && !(stamped && isTraceKey(field.key)) {
                    encoder.appendField(field.key, field.value, &out)
                }
            }
        }
        if let spanContext {
            encoder.appendTraceFields(spanContext, &out)
        }
        // Humans get sorted fields; machines get them in dictionary order, cheaper.
        let sorted = format == .text
        forEach(provided, sorted: sorted) { key, value in
            if stamped && isTraceKey(key) { return }
            if explicit.isEmpty || !explicit.keys.contains(where: { $0 == key }) {
                encoder.appendField(key, value, &out)
            }
        }
        forEach(explicit, sorted: sorted) { key, value in
            if stamped && isTraceKey(key) { return }
            encoder.appendField(key, value, &out)
        }
        if let error = event.error {
            encoder.appendField("error.message", .string("\(error)"), &out)
            encoder.appendField("error.type", .string(String(reflecting: type(of: error))), &out)
        }
        if includeSource {
            encoder.appendSource(&out, source: event.source, file: event.file, line: event.line)
        }
        encoder.appendTrailer(&out)
        return out
    }
}

@inline(__always) private func isTraceKey(_ key: String) -> Bool {
    key == YoMoLogField.traceID || key == YoMoLogField.spanID
}

@inline(__always)
private func forEach(_ metadata: Logger.Metadata, sorted: Bool, _ body: (String, Logger.Metadata.Value) -> Void) {
    if metadata.isEmpty { return }
    if sorted && metadata.count > 1 {
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) { body(key, value) }
    } else {
        for (key, value) in metadata { body(key, value) }
    }
}
