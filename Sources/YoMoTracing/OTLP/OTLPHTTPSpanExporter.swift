public import Logging
import Synchronization

/// Exports spans as OTLP/HTTP binary protobuf (`POST <endpoint>/v1/traces`,
/// `Content-Type: application/x-protobuf`), e.g. to Jaeger or an OTel collector.
/// Blocking: the batch processor calls it from its export thread.
public final class OTLPHTTPSpanExporter: SpanExporter {
    public let configuration: OTLPExporterConfiguration
    private let transport: OTLPHTTPTransport
    private let logger: Logger
    /// Reused by every request (exports come one at a time; the lock only
    /// satisfies `Sendable`): a steady export writes into warm memory.
    private let writer = Mutex(OTLPTraceWriter())

    /// Throws `.invalidConfiguration` when `configuration.validate()` does (a
    /// protocol other than `http/protobuf`, an unreadable certificate or key
    /// file), so that a setting that would fail every export fails here once.
    public init(
        configuration: OTLPExporterConfiguration = OTLPExporterConfiguration(signal: .traces),
        logger: Logger
    ) throws(TracingError) {
        try configuration.validate()
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "component"] = "OTLPHTTPSpanExporter"
        self.logger = logger
        transport = OTLPHTTPTransport(configuration: configuration, signalName: "spans", logger: logger)
    }

    /// - Parameter timeout: the caller's budget; the exporter's own timeout caps it.
    public func export(_ spans: [FinishedSpan], timeout: Duration) throws(TracingError) {
        guard !spans.isEmpty else { return }
        // Posted from the writer's buffer, so the lock is held through the
        // post: exports are one at a time anyway (the transport's lock), and
        // the transport never takes this one.
        let response = try writer.withLock { writer throws(TracingError) in
            try writer.withEncodedRequest(spans) { body throws(TracingError) in
                try transport.send(body, timeout: min(timeout, configuration.timeout), itemCount: spans.count)
            }
        }
        // A 2xx may still carry partial_success (OTLP spec "Partial Success").
        if let partial = OTLPTraceEncoding.partialSuccess(in: response) {
            logger.warning("OTLP export partially rejected", metadata: [
                "rejected_spans": "\(partial.rejected)",
                "error_message": "\(transport.redacting(partial.message))",
                "sent_spans": "\(spans.count)",
            ])
        }
    }

    public func shutdown() {
        transport.shutdown()
    }

    /// Clips request timeouts and retry waits to the deadline and drops a
    /// request still waiting for the collector then (within 50 ms).
    public func abandonExports(after timeout: Duration) {
        transport.abandon(atMonotonicNanoseconds: monotonicNanoseconds(after: timeout))
    }
}
