import Synchronization
public import Logging
public import YoMoTracing

/// Entry points for executables and examples. A library never calls
/// `bootstrap`: it accepts a `Logger` from its caller.
private let installedPipeline = Mutex<YoMoLogging.Installation?>(nil)

public enum YoMoLogging {
    /// Level and format of the SDK's handlers.
    public struct Configuration: Sendable, Hashable {
        /// `YOMO_LOG_LEVEL`: trace, debug, info, notice, warn|warning, error, critical. Default info.
        public var logLevel: Logger.Level
        /// `YOMO_LOG_FORMAT`: text, json, logfmt. Default text.
        public var format: LogFormat
        /// Adds module, file and line to every record. Default false.
        public var includeSource: Bool
        /// Unusable environment values that were ignored, for the executable to report.
        public var warnings: [String]

        public static var `default`: Configuration { Configuration(environment: [:]) }

        public init(logLevel: Logger.Level = .info, format: LogFormat = .text, includeSource: Bool = false) {
            self.logLevel = logLevel
            self.format = format
            self.includeSource = includeSource
            self.warnings = []
        }

        /// Reads `YOMO_LOG_LEVEL` and `YOMO_LOG_FORMAT`; unknown values keep the
        /// default and add a warning.
        public init(environment: [String: String] = ProcessEnvironment.current) {
            self.init(logLevel: .info)
            if let value = environment["YOMO_LOG_LEVEL"], !value.trimmingSpaces().isEmpty {
                if let level = YoMoLogging.parseLevel(value) {
                    logLevel = level
                } else {
                    warnings.append("YOMO_LOG_LEVEL=\(value) is not a log level; using info")
                }
            }
            if let value = environment["YOMO_LOG_FORMAT"], !value.trimmingSpaces().isEmpty {
                if let format = LogFormat(name: value) {
                    self.format = format
                } else {
                    warnings.append("YOMO_LOG_FORMAT=\(value) is not text, json or logfmt; using text")
                }
            }
        }
    }

    /// Parses a level name as `YOMO_LOG_LEVEL` accepts it (case-insensitive; `warn` = `warning`).
    public static func parseLevel(_ name: String) -> Logger.Level? {
        switch name.trimmingSpaces().lowercased() {
        case "trace": .trace
        case "debug": .debug
        case "info": .info
        case "notice": .notice
        case "warn", "warning": .warning
        case "error": .error
        case "critical": .critical
        default: nil
        }
    }

    /// A handler configured from `environment` (`YOMO_LOG_LEVEL`, `YOMO_LOG_FORMAT`),
    /// writing through `writer` (default: the process-wide stderr writer).
    /// With `traceCorrelation` (default) it stamps `trace_id` / `span_id` of the
    /// current span itself, so `metadataProvider` need not be `.yomoTracing`.
    public static func makeHandler(
        label: String,
        environment: [String: String] = ProcessEnvironment.current,
        writer: LogWriter = .standardError,
        metadataProvider: Logger.MetadataProvider? = nil,
        traceCorrelation: Bool = true
    ) -> YoMoLogHandler {
        makeHandler(
            label: label, configuration: Configuration(environment: environment),
            writer: writer, metadataProvider: metadataProvider, traceCorrelation: traceCorrelation
        )
    }

    public static func makeHandler(
        label: String,
        configuration: Configuration,
        writer: LogWriter = .standardError,
        metadataProvider: Logger.MetadataProvider? = nil,
        traceCorrelation: Bool = true
    ) -> YoMoLogHandler {
        YoMoLogHandler(
            label: label, format: configuration.format, writer: writer, logLevel: configuration.logLevel,
            metadataProvider: metadataProvider, traceCorrelation: traceCorrelation,
            includeSource: configuration.includeSource
        )
    }

    /// What `bootstrap` installed; call `shutdown()` before the process exits so
    /// queued records reach stderr and the OTLP collector.
    public struct Installation: Sendable {
        public let configuration: Configuration
        public let writer: LogWriter
        /// The OTLP log pipeline, when the environment asked for one.
        public let logProcessor: BatchLogRecordProcessor?

        /// Exports queued OTLP records and stops the exporter, then flushes the
        /// writer. The OTLP part gives up after the processor's
        /// `shutdownTimeout` (default 5 s, `YOMO_TELEMETRY_SHUTDOWN_TIMEOUT`)
        /// whatever the collector does, and reports what it could not export
        /// in one line, which this flush then writes out.
        public func shutdown() async {
            await logProcessor?.shutdown()
            writer.flush(timeout: .seconds(5))
        }

        /// Like `shutdown()`, with the OTLP export giving up after `timeout`, and
        /// the writer's flush after `timeout` more (a log reader that stalls
        /// held every exit 5 s).
        public func shutdown(timeout: Duration) async {
            await logProcessor?.shutdown(timeout: timeout)
            writer.flush(timeout: timeout)
        }
    }

    /// The OTLP/HTTP log pipeline the environment asks for, or nil: enabled by
    /// `OTEL_LOGS_EXPORTER=otlp`, or by `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT` when
    /// `OTEL_LOGS_EXPORTER` is unset; never with `OTEL_SDK_DISABLED=true` or
    /// `OTEL_LOGS_EXPORTER=none`. The generic `OTEL_EXPORTER_OTLP_ENDPOINT` alone
    /// does not enable it: it often points at Jaeger, which takes no logs.
    /// A setting that would make every export fail (see `BatchLogRecordProcessor.otlp`)
    /// gives nil and one error line through `writer`.
    /// - Parameter writer: where the pipeline reports its own failures (never to itself).
    public static func otlpProcessorFromEnvironment(
        serviceName: String? = nil,
        environment: [String: String] = ProcessEnvironment.current,
        writer: LogWriter = .standardError
    ) -> BatchLogRecordProcessor? {
        if environment["OTEL_SDK_DISABLED"]?.trimmingSpaces().lowercased() == "true" { return nil }
        let exporters = (environment["OTEL_LOGS_EXPORTER"] ?? "").lowercased()
            .split(separator: ",").map { $0.trimmingSpaces() }.filter { !$0.isEmpty }
        let endpoint = environment["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"]?.trimmingSpaces() ?? ""
        guard exporters.contains("otlp") || (exporters.isEmpty && !endpoint.isEmpty) else { return nil }
        let configuration = Configuration(environment: environment)
        let internalLogger = Logger(label: "swift-yomo.logging.otlp") { label in
            makeHandler(label: label, configuration: configuration, writer: writer, traceCorrelation: false)
        }
        do {
            return try BatchLogRecordProcessor.otlp(serviceName: serviceName, environment: environment, logger: internalLogger)
        } catch {
            // Made from the environment: the process logs on (to stderr)
            // rather than fail, and says once why nothing is exported.
            internalLogger.error("OTLP log export disabled: \(error.message)")
            return nil
        }
    }

    /// Installs the SDK's handlers as the process's logging backend: text, JSON
    /// or logfmt to stderr per `environment`, plus OTLP log export when the
    /// environment asks for it (see `otlpProcessorFromEnvironment`). Call once,
    /// from `main`, before creating loggers (swift-log allows one bootstrap per process).
    ///
    /// Trace correlation: with `traceCorrelation` (default) the SDK's handlers
    /// stamp `trace_id` / `span_id` of the current span themselves (cheaper than
    /// a metadata provider), and `additionalHandlers` get `.yomoTracing` merged
    /// into their provider.
    ///
    /// - Parameters:
    ///   - metadataProvider: the process-wide provider (`LoggingSystem.metadataProvider`).
    ///   - additionalHandlers: more destinations per logger label, given the
    ///     metadata provider to use; records go to all of them through swift-log's
    ///     `MultiplexLogHandler`.
    @discardableResult
    public static func bootstrap(
        serviceName: String? = nil,
        environment: [String: String] = ProcessEnvironment.current,
        writer: LogWriter = .standardError,
        metadataProvider: Logger.MetadataProvider? = nil,
        traceCorrelation: Bool = true,
        additionalHandlers: @escaping @Sendable (_ label: String, _ metadataProvider: Logger.MetadataProvider?) -> [any LogHandler] = { _, _ in [] }
    ) -> Installation {
        let configuration = Configuration(environment: environment)
        writer.dropNoticeFormat = configuration.format
        let processor = otlpProcessorFromEnvironment(serviceName: serviceName, environment: environment, writer: writer)
        LoggingSystem.bootstrap(
            handlerFactory(
                configuration: configuration, writer: writer, processor: processor,
                traceCorrelation: traceCorrelation, additionalHandlers: additionalHandlers
            ),
            metadataProvider: metadataProvider
        )
        if !configuration.warnings.isEmpty {
            let logger = Logger(label: "swift-yomo.logging")
            for warning in configuration.warnings { logger.warning("\(warning)") }
        }
        let installation = Installation(configuration: configuration, writer: writer, logProcessor: processor)
        installedPipeline.withLock { $0 = installation }
        return installation
    }

    /// What the last `bootstrap` installed, or nil: the components' metrics
    /// read its losses from it (`yomo.sdk.log.records.dropped`).
    public static var installed: Installation? { installedPipeline.withLock { $0 } }

    /// What `bootstrap` installs, separate so tests can run it (swift-log allows one bootstrap per process).
    static func handlerFactory(
        configuration: Configuration,
        writer: LogWriter,
        processor: BatchLogRecordProcessor?,
        traceCorrelation: Bool,
        additionalHandlers: @escaping @Sendable (String, Logger.MetadataProvider?) -> [any LogHandler]
    ) -> @Sendable (String, Logger.MetadataProvider?) -> any LogHandler {
        { label, provider in
            let primary = makeHandler(
                label: label, configuration: configuration, writer: writer,
                metadataProvider: provider, traceCorrelation: traceCorrelation
            )
            var othersProvider = provider
            if traceCorrelation {
                othersProvider = provider.map { .multiplex([.yomoTracing, $0]) ?? $0 } ?? .yomoTracing
            }
            var others = additionalHandlers(label, othersProvider)
            if let processor {
                // Reads the span from ServiceContext itself.
                others.append(OTLPLogHandler(
                    label: label, processor: processor, logLevel: configuration.logLevel, metadataProvider: provider
                ))
            }
            if others.isEmpty { return primary }
            // Each handler asks its provider itself; giving one to the multiplexer
            // too would run it twice per record.
            return MultiplexLogHandler([primary] + others)
        }
    }
}
