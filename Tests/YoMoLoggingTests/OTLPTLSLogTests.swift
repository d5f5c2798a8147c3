import Foundation
import Logging
import Testing
@testable import YoMoLogging
import YoMoTracing

/// The tracing tests' certificates (`otlp_receiver.py --make-certificates`, certtool).
struct LogTestCertificates: Sendable {
    let directory: String
    var ca: String { directory + "/ca.pem" }
    var otherCA: String { directory + "/other-ca.pem" }
    var clientCertificate: String { directory + "/client.pem" }
    var clientKey: String { directory + "/client.key" }

    func receiverArguments(requireClientCertificate: Bool = false) -> [String] {
        ["--tls-cert", directory + "/server.pem", "--tls-key", directory + "/server.key"]
            + (requireClientCertificate ? ["--tls-client-ca", ca] : [])
    }

    static let shared: LogTestCertificates = {
        let directory = NSTemporaryDirectory() + "yomo-otlp-log-certs-\(getpid())"
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("YoMoTracingTests/otlp_receiver.py").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, "--make-certificates", directory]
        try! process.run()
        while process.isRunning { usleep(10_000) }
        precondition(process.terminationStatus == 0, "certtool (gnutls-bin) failed to make the test certificates")
        return LogTestCertificates(directory: directory)
    }()
}

/// Polls the receiver's output (another process) until `condition` holds.
private func waitFor(_ condition: () throws -> Bool) async throws -> Bool {
    for _ in 0..<500 {
        if try condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return try condition()
}

@Suite(.serialized) struct OTLPTLSLogTests {
    let certificates = LogTestCertificates.shared

    @Test func logsGoOverMutualTLSWithTheLogsVariablesOverridingTheGeneralOnes() async throws {
        let receiver = try await LogsReceiver(arguments: certificates.receiverArguments(requireClientCertificate: true))
        let sink = InMemoryLogSink()
        let environment = [
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://127.0.0.1:\(receiver.port)/v1/logs",
            // Alone, these would fail: wrong CA, no such files, gRPC.
            "OTEL_EXPORTER_OTLP_CERTIFICATE": certificates.otherCA,
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/nonexistent/client.pem",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/nonexistent/client.key",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE": certificates.ca,
            "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE": certificates.clientCertificate,
            "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY": certificates.clientKey,
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf",
        ]
        let processor = try #require(YoMoLogging.otlpProcessorFromEnvironment(
            environment: environment, writer: LogWriter(sink: sink, configuration: .synchronous)
        ), "\(sink.lines)")
        let logger = Logger(label: "tls") { OTLPLogHandler(label: $0, processor: processor, metadataProvider: nil) }
        logger.info("over mutual TLS")
        await processor.shutdown()
        #expect(try await waitFor { try receiver.records().contains { $0["body"] as? String == "over mutual TLS" } })
        #expect(try receiver.records().allSatisfy { $0["type"] == nil }, "no failed handshake")
        #expect(processor.droppedRecordCount == 0)
        #expect(sink.lines.isEmpty, "\(sink.lines)")
    }

    @Test func aWrongCAFailsOnceWithOneLineAndTheTokenStaysOut() async throws {
        let receiver = try await LogsReceiver(arguments: certificates.receiverArguments())
        let sink = InMemoryLogSink()
        let environment = [
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://127.0.0.1:\(receiver.port)/v1/logs",
            "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE": certificates.otherCA,
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cr3t-t0ken",
        ]
        let processor = try #require(YoMoLogging.otlpProcessorFromEnvironment(
            environment: environment, writer: LogWriter(sink: sink, configuration: .synchronous)
        ))
        let logger = Logger(label: "tls") { OTLPLogHandler(label: $0, processor: processor, metadataProvider: nil) }
        logger.info("never delivered")
        await processor.shutdown()
        let tlsErrors = { try receiver.records().filter { $0["type"] as? String == "tls_error" } }
        #expect(try await waitFor { try tlsErrors().count == 1 })
        #expect(try tlsErrors().count == 1, "one handshake: not retried")
        #expect(try receiver.records().allSatisfy { $0["body"] == nil })
        #expect(processor.droppedRecordCount == 1)
        let failures = sink.lines.filter { $0.contains("TLS failure") }
        #expect(failures.count == 1, "\(sink.lines)")
        #expect(failures.first?.contains("the collector's certificate did not verify against \(certificates.otherCA)") == true)
        #expect(failures.first?.contains("not retrying") == true)
        #expect(!sink.text.contains("s3cr3t"))

        // The exporter itself says what failed.
        let exporter = try OTLPHTTPLogExporter(
            configuration: OTLPExporterConfiguration(signal: .logs, environment: environment),
            logger: Logger(label: "quiet") { _ in SwiftLogNoOpLogHandler() }
        )
        let record = OTLPLogRecord(timeNanoseconds: 1, level: .info, body: "direct", attributes: [:], spanContext: nil,
                                   scope: InstrumentationScope(name: "tls"))
        let error = #expect(throws: LoggingError.tlsFailed) { try exporter.export([record], timeout: .seconds(5)) }
        #expect(error?.message.contains("TLS failure") == true)
        #expect(error?.message.contains("s3cr3t") == false)
    }

    @Test func gRPCIsRefusedWithOneLineAndNoPipeline() async throws {
        let receiver = try await LogsReceiver()
        let sink = InMemoryLogSink()
        let environment = [
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:\(receiver.port)/v1/logs",
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc",
        ]
        let processor = YoMoLogging.otlpProcessorFromEnvironment(
            environment: environment, writer: LogWriter(sink: sink, configuration: .synchronous)
        )
        #expect(processor == nil)
        #expect(sink.lines.count == 1, "\(sink.lines)")
        #expect(sink.lines.first?.contains(
            "OTLP log export disabled: OTEL_EXPORTER_OTLP_LOGS_PROTOCOL=grpc is not supported; supported: http/protobuf"
        ) == true, "\(sink.lines)")
        #expect(throws: LoggingError.invalidConfiguration) {
            _ = try BatchLogRecordProcessor.otlp(environment: environment, logger: Logger(label: "quiet") { _ in SwiftLogNoOpLogHandler() })
        }
        #expect(try receiver.records().isEmpty)
    }
}
