public import Logging
import Instrumentation
public import YoMoTracing

/// A swift-log `LogHandler` that sends records to a `BatchLogRecordProcessor`
/// (e.g. with an `OTLPHTTPLogExporter`). The record's `trace_id` / `span_id`
/// come from the current span (`ServiceContext.current`), or else from
/// `trace_id` / `span_id` metadata; when they fill the record's fields they are
/// not repeated as attributes. Combine with a console handler through
/// swift-log's `MultiplexLogHandler` (or `YoMoLogging.bootstrap`).
public struct OTLPLogHandler: LogHandler {
    public let label: String
    public let processor: BatchLogRecordProcessor
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata
    public var metadataProvider: Logger.MetadataProvider?
    private let scope: InstrumentationScope

    public init(
        label: String,
        processor: BatchLogRecordProcessor,
        logLevel: Logger.Level = .info,
        metadataProvider: Logger.MetadataProvider? = LoggingSystem.metadataProvider
    ) {
        self.label = label
        self.processor = processor
        self.logLevel = logLevel
        self.metadata = [:]
        self.metadataProvider = metadataProvider
        self.scope = InstrumentationScope(name: label)
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var attributes = metadata
        if let provided = metadataProvider?.get(), !provided.isEmpty {
            attributes.merge(provided) { _, new in new }
        }
        if let explicit = event.metadata, !explicit.isEmpty {
            attributes.merge(explicit) { _, new in new }
        }
        if let error = event.error {
            attributes["exception.message"] = .string("\(error)")
            attributes["exception.type"] = .string(String(reflecting: type(of: error)))
        }
        var spanContext = ServiceContext.current?.spanContext
        if spanContext?.isValid != true {
            spanContext = Self.spanContext(from: attributes)
        }
        if let spanContext, spanContext.isValid {
            if case .string(let text)? = attributes[YoMoLogField.traceID], text == spanContext.traceID.description {
                attributes[YoMoLogField.traceID] = nil
            }
            if case .string(let text)? = attributes[YoMoLogField.spanID], text == spanContext.spanID.description {
                attributes[YoMoLogField.spanID] = nil
            }
        }
        let now = wallClockNanoseconds()
        processor.emit(OTLPLogRecord(
            timeNanoseconds: now, level: event.level, body: event.message.description,
            attributes: attributes, spanContext: spanContext, scope: scope
        ))
    }

    private static func spanContext(from attributes: Logger.Metadata) -> SpanContext? {
        guard case .string(let traceText)? = attributes[YoMoLogField.traceID],
              case .string(let spanText)? = attributes[YoMoLogField.spanID],
              let traceID = TraceID(hexString: traceText), let spanID = SpanID(hexString: spanText) else { return nil }
        return SpanContext(traceID: traceID, spanID: spanID)
    }
}

extension BatchLogRecordProcessor {
    /// OTLP/HTTP protobuf log export through a batch processor, configured from
    /// `environment` (`OTEL_EXPORTER_OTLP_LOGS_*` / `OTEL_EXPORTER_OTLP_*`,
    /// `OTEL_BLRP_*`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`).
    /// - Parameter logger: for export failures; must not route back into the processor.
    /// - Throws: `.invalidConfiguration` for a setting that would make every
    ///   export fail (`OTEL_EXPORTER_OTLP_[LOGS_]PROTOCOL` other than
    ///   `http/protobuf`, an unreadable certificate or key file).
    public static func otlp(
        serviceName: String? = nil,
        environment: [String: String] = ProcessEnvironment.current,
        logger: Logger
    ) throws(LoggingError) -> BatchLogRecordProcessor {
        let exporterConfiguration = OTLPExporterConfiguration(signal: .logs, environment: environment)
        for warning in exporterConfiguration.unusableSettings {
            logger.warning("OTLP exporter setting ignored: \(warning)")
        }
        let exporter = try OTLPHTTPLogExporter(
            configuration: exporterConfiguration,
            resource: .detect(serviceName: serviceName, environment: environment),
            logger: logger
        )
        return BatchLogRecordProcessor(
            exporter: exporter, configuration: Configuration(environment: environment), logger: logger
        )
    }
}
