public import Logging
public import YoMoTracing
import Synchronization

/// Exports log records as OTLP/HTTP binary protobuf (`POST <endpoint>/v1/logs`,
/// `Content-Type: application/x-protobuf`) over YoMoTracing's libcurl transport:
/// the same retry policy (429/502/503/504 and connection failures, `Retry-After`,
/// backoff within the timeout), headers, compression and `OTEL_EXPORTER_OTLP_*`
/// handling as the span exporter.
public final class OTLPHTTPLogExporter: LogRecordExporter {
    public let configuration: OTLPExporterConfiguration
    public let resource: Resource
    private let transport: OTLPHTTPTransport
    private let logger: Logger
    /// Reused by every request, as in the span exporter (exports come one at a
    /// time; the lock only satisfies `Sendable`).
    private let arena = Mutex(ProtobufArena())

    /// - Parameters:
    ///   - configuration: default from `OTEL_EXPORTER_OTLP_LOGS_*` / `OTEL_EXPORTER_OTLP_*`.
    ///   - logger: for export failures; must not route back into this exporter.
    /// - Throws: `.invalidConfiguration` when `configuration.validate()` does
    ///   (a protocol other than `http/protobuf`, an unreadable certificate or key file).
    public init(
        configuration: OTLPExporterConfiguration = OTLPExporterConfiguration(signal: .logs),
        resource: Resource = .detect(),
        logger: Logger
    ) throws(LoggingError) {
        do {
            try configuration.validate()
        } catch {
            throw .invalidConfiguration(error.message)
        }
        self.configuration = configuration
        self.resource = resource
        var logger = logger
        logger[metadataKey: "component"] = "OTLPHTTPLogExporter"
        self.logger = logger
        transport = OTLPHTTPTransport(configuration: configuration, signalName: "log records", logger: logger)
    }

    public func export(_ records: [OTLPLogRecord], timeout: Duration) throws(LoggingError) {
        guard !records.isEmpty else { return }
        let body = arena.withLock { OTLPLogEncoding.encodeRequest(records, resource: resource, arena: $0) }
        let response: [UInt8]
        do {
            response = try transport.send(body, timeout: min(timeout, configuration.timeout), itemCount: records.count)
        } catch {
            if error == .shutdown { throw .shutdown(error.message) }
            if error == .abandoned { throw .abandoned(error.message) }
            if error == .tlsFailed { throw .tlsFailed(error.message) }
            throw .exportFailed(error.message)
        }
        // A 2xx may still carry partial_success (OTLP spec "Partial Success").
        if let partial = OTLPLogEncoding.partialSuccess(in: response) {
            logger.warning("OTLP log export partially rejected", metadata: [
                "rejected_log_records": "\(partial.rejected)",
                "error_message": "\(transport.redacting(partial.message))",
                "sent_log_records": "\(records.count)",
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
