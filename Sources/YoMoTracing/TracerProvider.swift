public import Logging
public import ServiceLifecycle
public import Tracing

/// Creates tracers and owns their span processors: the counterpart of the OTel
/// SDK's TracerProvider (and of the Go SDK's `trace.NewTracerProviderWithJaeger`).
///
/// A library never installs it globally; an executable passes it to the YoMo
/// components (or bootstraps `InstrumentationSystem` with one of its tracers).
/// Call `shutdown()` before exit (or run the provider as a ServiceLifecycle
/// `Service`) so every ended span is exported.
public final class TracerProvider: Sendable {
    public struct Configuration: Sendable {
        /// `service.name`; when nil, `OTEL_SERVICE_NAME` or `unknown_service:<process>`.
        public var serviceName: String?
        /// Extra resource attributes; they win over detected ones.
        public var resourceAttributes: SpanAttributes
        /// Default: from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (parent-based always-on).
        public var sampler: any Sampler
        public var spanLimits: SpanLimits
        /// `OTEL_SDK_DISABLED=true`: the provider is a no-op.
        public var isDisabled: Bool
        /// Which trace-context formats go into (and are read from) carriers.
        /// Default: from `OTEL_PROPAGATORS` (both W3C and the YoMo keys).
        public var propagation: TraceContextPropagator.Formats
        /// The environment the resource is detected from.
        public var environment: [String: String]
        var samplerWarning: String?
        var propagationWarning: String?

        public static var `default`: Configuration { Configuration() }

        public init(environment: [String: String] = ProcessEnvironment.current) {
            self.environment = environment
            serviceName = nil
            resourceAttributes = [:]
            (sampler, samplerWarning) = Samplers.fromEnvironment(environment)
            spanLimits = SpanLimits(environment: environment)
            (propagation, propagationWarning) = TraceContextPropagator.Formats.fromEnvironment(environment)
            isDisabled = environment["OTEL_SDK_DISABLED"]?.trimmingSpaces().lowercased() == "true"
        }
    }

    let shared: TracerShared?
    public let resource: Resource
    private let processors: [any SpanProcessor]

    public init(
        configuration: Configuration = .default,
        processors: [any SpanProcessor],
        logger: Logger = Logger(label: "swift-yomo.tracing")
    ) {
        resource = Resource.detect(
            serviceName: configuration.serviceName,
            attributes: configuration.resourceAttributes,
            environment: configuration.environment
        )
        if let warning = configuration.samplerWarning {
            logger.warning("Invalid sampler configuration", metadata: ["detail": "\(warning)"])
        }
        if let warning = configuration.propagationWarning {
            logger.warning("Invalid propagator configuration", metadata: ["detail": "\(warning)"])
        }
        // Disabled: no spans reach the processors, but `shutdown()` still stops them.
        shared = configuration.isDisabled ? nil : TracerShared(
            resource: resource, sampler: configuration.sampler,
            limits: configuration.spanLimits, processors: processors, propagation: configuration.propagation
        )
        self.processors = processors
    }

    private init(noop: Void) {
        shared = nil
        processors = []
        resource = Resource()
    }

    /// A provider whose tracers make no spans (they pass the parent's context through).
    public static let noop = TracerProvider(noop: ())

    /// False for `noop` and disabled providers.
    public var isEnabled: Bool { shared != nil }

    public func tracer(scope: InstrumentationScope) -> YoMoTracer {
        YoMoTracer(shared: shared, scope: scope)
    }

    public func tracer(_ name: String, version: String? = nil) -> YoMoTracer {
        tracer(scope: InstrumentationScope(name: name, version: version))
    }

    /// Spans the batch processors never exported: queue full, failed export,
    /// or left at the shutdown deadline.
    public var droppedSpanCount: Int {
        processors.reduce(0) { $0 + (($1 as? BatchSpanProcessor)?.droppedSpanCount ?? 0) }
    }

    /// Spans the batch processors' exporters took without an error.
    public var exportedSpanCount: Int {
        processors.reduce(0) { $0 + (($1 as? BatchSpanProcessor)?.exportedSpanCount ?? 0) }
    }

    /// Export calls of the batch processors that failed.
    public var failedExportCount: Int {
        processors.reduce(0) { $0 + (($1 as? BatchSpanProcessor)?.failedExportCount ?? 0) }
    }

    /// Every batch processor's export calls: seconds and whether it failed.
    package func observeExports(_ observer: @escaping @Sendable (Double, Bool) -> Void) {
        for case let processor as BatchSpanProcessor in processors { processor.observeExports(observer) }
    }

    /// Spans waiting in the batch processors' queues.
    public var queuedSpanCount: Int {
        processors.reduce(0) { $0 + (($1 as? BatchSpanProcessor)?.queuedSpanCount ?? 0) }
    }

    /// Returns once every span ended before the call has been exported (or its
    /// export failed), or once each processor's `shutdownTimeout` has passed
    /// (a `BatchSpanProcessor`'s, default 5 s).
    public func forceFlush() async {
        await forEachProcessor { await $0.forceFlush() }
    }

    /// Like `forceFlush()`, but returns after `timeout` at the latest.
    public func forceFlush(timeout: Duration) async {
        await forEachProcessor { await $0.forceFlush(timeout: timeout) }
    }

    /// Flushes, then shuts the processors and exporters down, within each
    /// processor's `shutdownTimeout` (a `BatchSpanProcessor`'s: default 5 s,
    /// `YOMO_TELEMETRY_SHUTDOWN_TIMEOUT`) whatever the collector does; spans not
    /// exported by then are counted in `droppedSpanCount` and reported in one
    /// log line. Spans started afterwards are non-recording. Idempotent.
    public func shutdown() async {
        shared?.isShutdown.store(true, ordering: .relaxed)
        await forEachProcessor { await $0.shutdown() }
    }

    /// Like `shutdown()`, but every processor gives up after `timeout`.
    public func shutdown(timeout: Duration) async {
        shared?.isShutdown.store(true, ordering: .relaxed)
        await forEachProcessor { await $0.shutdown(timeout: timeout) }
    }

    /// Side by side, so that the processors' deadlines run together rather than add up.
    private func forEachProcessor(_ body: @escaping @Sendable (any SpanProcessor) async -> Void) async {
        if processors.count == 1 { return await body(processors[0]) }
        await withTaskGroup(of: Void.self) { group in
            for processor in processors { group.addTask { await body(processor) } }
        }
    }
}

extension TracerProvider: Service {
    /// Waits for graceful shutdown (or cancellation), then shuts the provider down.
    /// List it first in a `ServiceGroup`: a group shuts its services down last
    /// to first, so the provider then flushes after the services that trace.
    public func run() async throws {
        try? await gracefulShutdown()
        await shutdown()
    }
}

extension TracerProvider {
    /// OTLP/HTTP protobuf export through a batch processor, configured from
    /// `environment` (`OTEL_EXPORTER_OTLP_*`, `OTEL_BSP_*`, sampler, limits, resource).
    ///
    /// A setting that would make every export fail (`OTEL_EXPORTER_OTLP_PROTOCOL`
    /// other than `http/protobuf`, an unreadable `…_CERTIFICATE`, `…_CLIENT_CERTIFICATE`
    /// or `…_CLIENT_KEY` file) is logged as one error line and gives `noop`:
    /// the process runs on untraced rather than fail, and nothing goes out in
    /// a protocol or over a connection the user did not ask for. Build an
    /// `OTLPHTTPSpanExporter` yourself to get the error thrown instead.
    public static func otlp(
        serviceName: String? = nil,
        environment: [String: String] = ProcessEnvironment.current,
        logger: Logger = Logger(label: "swift-yomo.tracing")
    ) -> TracerProvider {
        var configuration = Configuration(environment: environment)
        configuration.serviceName = serviceName
        if configuration.isDisabled { return .noop }
        let exporterConfiguration = OTLPExporterConfiguration(signal: .traces, environment: environment)
        for warning in exporterConfiguration.unusableSettings {
            logger.warning("OTLP exporter setting ignored: \(warning)")
        }
        let exporter: OTLPHTTPSpanExporter
        do {
            exporter = try OTLPHTTPSpanExporter(configuration: exporterConfiguration, logger: logger)
        } catch {
            logger.error("OTLP span export disabled: \(error.message)")
            return .noop
        }
        let processor = BatchSpanProcessor(
            exporter: exporter,
            configuration: BatchSpanProcessor.Configuration(environment: environment),
            logger: logger
        )
        return TracerProvider(configuration: configuration, processors: [processor], logger: logger)
    }

    /// The Go SDK's `trace.NewTracerProviderWithJaeger(serviceName)`: OTLP/HTTP to
    /// Jaeger at `OTEL_EXPORTER_OTLP_ENDPOINT` (default `http://localhost:4318`).
    public static func jaeger(
        serviceName: String,
        environment: [String: String] = ProcessEnvironment.current,
        logger: Logger = Logger(label: "swift-yomo.tracing")
    ) -> TracerProvider {
        otlp(serviceName: serviceName, environment: environment, logger: logger)
    }

    /// What the environment asks for, and nothing otherwise: `noop` unless
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set
    /// (then `otlp`), or `OTEL_TRACES_EXPORTER` is `otlp` or `console`.
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` always give `noop`.
    public static func fromEnvironment(
        serviceName: String? = nil,
        environment: [String: String] = ProcessEnvironment.current,
        logger: Logger = Logger(label: "swift-yomo.tracing")
    ) -> TracerProvider {
        var configuration = Configuration(environment: environment)
        configuration.serviceName = serviceName
        if configuration.isDisabled { return .noop }
        let exporterName = environment["OTEL_TRACES_EXPORTER"]?.trimmingSpaces().lowercased() ?? ""
        func isSet(_ key: String) -> Bool { !(environment[key]?.trimmingSpaces().isEmpty ?? true) }
        switch exporterName {
        case "none":
            return .noop
        case "console":
            return TracerProvider(
                configuration: configuration,
                processors: [SimpleSpanProcessor(exporter: ConsoleSpanExporter())],
                logger: logger
            )
        case "otlp":
            return otlp(serviceName: serviceName, environment: environment, logger: logger)
        default:
            if isSet("OTEL_EXPORTER_OTLP_ENDPOINT") || isSet("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                return otlp(serviceName: serviceName, environment: environment, logger: logger)
            }
            return .noop
        }
    }
}
