public import Logging
import Instrumentation
import YoMoTracing

extension Logger.MetadataProvider {
    /// Adds `trace_id` (32 lowercase hex digits) and `span_id` (16) of the
    /// current span — the `SpanContext` that YoMoTracing keeps in
    /// `ServiceContext.current` inside `withSpan` and a stream function's
    /// handler — to every record; adds nothing outside a span.
    ///
    /// Pass it to `LoggingSystem.bootstrap(_:metadataProvider:)` (as
    /// `YoMoLogging.bootstrap` does) or to a `Logger(label:metadataProvider:)`.
    public static let yomoTracing = Logger.MetadataProvider {
        guard let spanContext = ServiceContext.current?.spanContext, spanContext.isValid else { return [:] }
        return [
            YoMoLogField.traceID: .string(spanContext.traceID.description),
            YoMoLogField.spanID: .string(spanContext.spanID.description),
        ]
    }
}
