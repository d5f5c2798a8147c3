internal import Logging
internal import Tracing
internal import YoMoTracing
internal import YoMoWire

/// Frame metadata as a trace-context carrier: the YoMo keys (`yomo-trace-id`,
/// `yomo-span-id`) for the Go side and W3C `traceparent` / `tracestate`.
struct MetadataInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout Metadata) { carrier[key] = value }
}

struct MetadataExtractor: Extractor {
    func extract(key: String, from carrier: Metadata) -> String? { carrier[key] }
}

/// The spans of the data path, as the last Go scheme that produced whole traces
/// names them (PROTOCOL.md, "Tracing in metadata"). Each starts as a child of
/// the frame's metadata and writes its own ids back before the frame goes on.
struct DataPathTracer: Sendable {
    let tracer: YoMoTracer

    static let disabled = DataPathTracer(tracer: TracerProvider.noop.tracer("YoMo"))

    /// The given provider, or one from the environment that the caller then owns
    /// (and must shut down). Its `service.name` is `OTEL_SERVICE_NAME` when set,
    /// else the client's (or zipper's) name.
    static func resolve(
        _ provider: TracerProvider?,
        serviceName: String,
        scope: String,
        environment: [String: String] = ProcessEnvironment.current
    ) -> (DataPathTracer, owned: TracerProvider?) {
        if let provider { return (DataPathTracer(tracer: provider.tracer(scope)), nil) }
        let nameFromEnvironment = environment["OTEL_SERVICE_NAME"].map { !$0.trimmingSpaces().isEmpty } ?? false
        let fromEnvironment = TracerProvider.fromEnvironment(
            serviceName: nameFromEnvironment ? nil : serviceName, environment: environment
        )
        return (DataPathTracer(tracer: fromEnvironment.tracer(scope)), fromEnvironment.isEnabled ? fromEnvironment : nil)
    }

    /// The source's span (scope "Source"), kind producer.
    func sourceSpan(name: String, tag: UInt32, length: Int, metadata: inout Metadata) -> YoMoSpan? {
        guard tracer.isEnabled else { return nil }
        let span = tracer.startSpan(name, context: ServiceContext.current ?? .topLevel, ofKind: .producer)
        span.setAttribute("send_data_tag", .int64(Int64(tag)))
        span.setAttribute("send_data_len", .int64(Int64(length)))
        inject(span, into: &metadata)
        return span
    }

    /// The zipper's span ("zipper endpoint", scope "Zipper").
    func zipperSpan(tag: UInt32, length: Int, metadata: inout Metadata) -> YoMoSpan? {
        guard tracer.isEnabled else { return nil }
        let span = tracer.startSpan("zipper endpoint", extractingParentFrom: metadata, using: MetadataExtractor(), ofKind: .internal)
        span.setAttribute("routing_data_tag", .int64(Int64(tag)))
        span.setAttribute("routing_data_len", .int64(Int64(length)))
        inject(span, into: &metadata)
        return span
    }

    /// The stream function's span (scope "StreamFunction", named after it), kind consumer.
    func functionSpan(name: String, handlerType: String, tag: UInt32, length: Int, metadata: inout Metadata) -> YoMoSpan? {
        guard tracer.isEnabled else { return nil }
        let span = tracer.startSpan(name, extractingParentFrom: metadata, using: MetadataExtractor(), ofKind: .consumer)
        span.setAttribute("sfn_handler_type", .string(handlerType))
        span.setAttribute("recv_data_tag", .int64(Int64(tag)))
        span.setAttribute("recv_data_len", .int64(Int64(length)))
        inject(span, into: &metadata)
        return span
    }

    /// Writes the span's ids straight from its span context: building
    /// `span.context` (a `ServiceContext`) just to read them back would cost
    /// a dictionary insert per frame.
    private func inject(_ span: YoMoSpan, into metadata: inout Metadata) {
        guard let spanContext = span.spanContext else { return }
        TraceContextPropagator().inject(spanContext, into: &metadata, using: MetadataInjector())
    }

    /// Writes the current task's trace context (if any) into outgoing metadata.
    func injectCurrent(into metadata: inout Metadata) {
        guard tracer.isEnabled, let context = ServiceContext.current else { return }
        tracer.inject(context, into: &metadata, using: MetadataInjector())
    }
}

extension YoMoSpan {
    /// Records a handler's error on its span: the error event and error status.
    func fail(_ error: any Error) {
        recordError(error)
        setStatus(SpanStatus(code: .error, message: "\(error)"))
    }
}

extension DataPathTracer {
    /// Runs synchronous `body` with the span as the current context, so that log
    /// records written in it (the data path's own, an error handler's) carry the
    /// frame's trace id.
    func withCurrent<T>(_ span: YoMoSpan?, _ body: () throws -> T) rethrows -> T {
        guard let span else { return try body() }
        return try ServiceContext.withValue(span.context, operation: body)
    }

    /// A debug record of one step of a frame's path, written under the step's
    /// span so it carries the frame's trace id. The level is checked first: with
    /// debug off this costs neither the context switch nor the metadata.
    func debug(
        _ logger: Logger,
        under span: YoMoSpan?,
        _ message: @autoclosure () -> Logger.Message,
        metadata: @autoclosure () -> Logger.Metadata
    ) {
        guard logger.logLevel <= .debug else { return }
        withCurrent(span) { logger.debug(message(), metadata: metadata()) }
    }

    /// Runs `body` with the span as the current context and this tracer as the
    /// task's tracer, so `withSpan` inside — ours, a library's, or the free
    /// function — makes children of the frame's span without any global
    /// bootstrap. Ends the span when `body` returns or throws.
    func run<T>(_ span: YoMoSpan?, _ body: () async throws -> T) async throws -> T {
        guard let span else { return try await body() }
        defer { span.end() }
        do {
            return try await withTracer(tracer) {
                try await ServiceContext.withValue(span.context) { try await body() }
            }
        } catch {
            span.fail(error)
            throw error
        }
    }
}
