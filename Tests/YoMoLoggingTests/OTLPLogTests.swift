import Foundation
import Logging
import Testing
import Tracing
@testable import YoMoLogging
import YoMoTracing

/// Runs `otlp_logs_receiver.py` (decoding with the official opentelemetry-proto package).
final class LogsReceiver {
    let process = Process()
    let stdin = Pipe()
    let directory: URL
    let port: Int
    let outputURL: URL

    /// - Parameter arguments: more receiver flags, e.g. `TestCertificates.receiverArguments`.
    init(failFirst: Int = 0, arguments: [String] = []) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("yomo-logs-\(UUID().uuidString)")
        let outputURL = directory.appendingPathComponent("records.jsonl")
        self.directory = directory
        self.outputURL = outputURL
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("otlp_logs_receiver.py")
        let portFile = directory.appendingPathComponent("port")
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script.path, "--port-file", portFile.path, "--out", outputURL.path, "--fail-first", "\(failFirst)"] + arguments
        // The receiver exits when its stdin closes: on deinit, or if the test process dies.
        process.standardInput = stdin
        try process.run()
        var port: Int?
        for _ in 0..<200 {
            if let text = try? String(contentsOf: portFile, encoding: .utf8), let value = Int(text) {
                port = value
                break
            }
            try await Task.sleep(for: .milliseconds(25))
        }
        self.port = try #require(port, "the receiver did not start")
    }

    func records() throws -> [[String: Any]] {
        guard let text = try? String(contentsOf: outputURL, encoding: .utf8) else { return [] }
        return try text.split(separator: "\n").map { try parseJSONLine(String($0)) }
    }

    deinit {
        // No waitUntilExit: Foundation's can hang off the main thread on Linux.
        try? stdin.fileHandleForWriting.close()
        process.terminate()
        try? FileManager.default.removeItem(at: directory)
    }
}

@Suite struct OTLPLogTests {
    @Test func defaultsAreTheOTelBatchLogRecordProcessorDefaults() {
        let configuration = BatchLogRecordProcessor.Configuration(environment: [:])
        #expect(configuration.scheduleDelay == .milliseconds(1000))
        #expect(configuration.maxQueueSize == 2048)
        #expect(configuration.maxExportBatchSize == 512)
        #expect(configuration.exportTimeout == .milliseconds(30000))
        let custom = BatchLogRecordProcessor.Configuration(environment: [
            "OTEL_BLRP_SCHEDULE_DELAY": "50", "OTEL_BLRP_MAX_QUEUE_SIZE": "100",
            "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "500", "OTEL_BLRP_EXPORT_TIMEOUT": "bogus",
        ])
        #expect(custom.scheduleDelay == .milliseconds(50))
        #expect(custom.maxQueueSize == 100)
        #expect(custom.maxExportBatchSize == 100)
        #expect(custom.exportTimeout == .milliseconds(30000))
    }

    @Test func fullQueueDropsAndCounts() async {
        let exporter = InMemoryLogRecordExporter()
        var configuration = BatchLogRecordProcessor.Configuration(environment: [:])
        configuration.maxQueueSize = 10
        configuration.scheduleDelay = .seconds(60)
        let processor = BatchLogRecordProcessor(exporter: exporter, configuration: configuration, logger: Logger(label: "quiet") { _ in SwiftLogNoOpLogHandler() })
        let logger = Logger(label: "q") { OTLPLogHandler(label: $0, processor: processor, metadataProvider: nil) }
        for _ in 0..<15 { logger.info("x") }
        let dropped = processor.droppedRecordCount
        await processor.shutdown()
        // The export thread may take a full batch between emits; at least the overflow is counted.
        #expect(dropped + exporter.records.count == 15)
        #expect(dropped >= 0 && exporter.records.count >= 10)
    }

    @Test func exportedRecordsDecodeWithOpenTelemetryProtoAndCarryTraceIDs() async throws {
        let receiver = try await LogsReceiver()
        let environment = [
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:\(receiver.port)/v1/logs",
            "OTEL_SERVICE_NAME": "logging-test",
        ]
        let quiet = Logger(label: "quiet") { _ in SwiftLogNoOpLogHandler() }
        let processor = try BatchLogRecordProcessor.otlp(environment: environment, logger: quiet)
        let spanExporter = InMemorySpanExporter()
        let tracerProvider = TracerProvider(
            configuration: .init(environment: [:]), processors: [SimpleSpanProcessor(exporter: spanExporter)]
        )
        let tracer = tracerProvider.tracer("test")
        var logger = Logger(label: "yomo.sfn") {
            OTLPLogHandler(label: $0, processor: processor, logLevel: .debug, metadataProvider: .yomoTracing)
        }
        logger[metadataKey: YoMoLogField.service] = YoMoLogField.Service.streamFunction

        logger.info("outside a span")
        tracer.withSpan("handle frame") { _ in
            logger.warning("inside a span", metadata: [
                YoMoLogField.dataLength: .stringConvertible(12), "nested": ["k": "v"], "flag": .stringConvertible(true),
            ])
        }
        await processor.forceFlush()
        await processor.shutdown()

        let records = try receiver.records()
        #expect(records.count == 2)
        let outside = try #require(records.first { $0["body"] as? String == "outside a span" })
        #expect(outside["trace_id"] as? String == "")
        #expect(outside["severity_number"] as? Int == 9)
        #expect(outside["severity_text"] as? String == "INFO")

        let inside = try #require(records.first { $0["body"] as? String == "inside a span" })
        let span = try #require(spanExporter.spans.first)
        #expect(inside["trace_id"] as? String == span.context.traceID.description)
        #expect(inside["span_id"] as? String == span.context.spanID.description)
        #expect(inside["flags"] as? Int == 1)
        #expect(inside["severity_number"] as? Int == 13)
        #expect(inside["scope"] as? String == "yomo.sfn")
        #expect(inside["content_type"] as? String == "application/x-protobuf")
        let attributes = try #require(inside["attributes"] as? [String: Any])
        #expect(attributes["service"] as? String == "stream-function")
        #expect(attributes["data_length"] as? Int == 12)
        #expect(attributes["flag"] as? Bool == true)
        #expect((attributes["nested"] as? [String: Any])?["k"] as? String == "v")
        #expect(attributes["trace_id"] == nil, "carried by the record's own field")
        let resource = try #require(inside["resource"] as? [String: Any])
        #expect(resource["service.name"] as? String == "logging-test")
    }

    @Test func bootstrapFactoryFeedsConsoleAndOTLP() async throws {
        let sink = InMemoryLogSink()
        let writer = LogWriter(sink: sink, configuration: .synchronous)
        let exporter = InMemoryLogRecordExporter()
        let processor = BatchLogRecordProcessor(
            exporter: exporter, logger: Logger(label: "quiet") { _ in SwiftLogNoOpLogHandler() }
        )
        let factory = YoMoLogging.handlerFactory(
            configuration: .init(environment: ["YOMO_LOG_FORMAT": "json", "YOMO_LOG_LEVEL": "debug"]),
            writer: writer, processor: processor, traceCorrelation: true, additionalHandlers: { _, _ in [] }
        )
        let logger = Logger(label: "boot") { factory($0, nil) }
        let tracer = TracerProvider(configuration: .init(environment: [:]), processors: []).tracer("t")
        logger.trace("filtered")
        tracer.withSpan("s") { span in
            logger.debug("both")
        }
        await processor.shutdown()
        let line = try parseJSONLine(try #require(sink.lines.first))
        #expect(sink.lines.count == 1)
        let record = try #require(exporter.records.first)
        #expect(exporter.records.count == 1)
        #expect(record.body == "both")
        #expect(record.spanContext?.traceID.description == line["trace_id"] as? String)
        #expect(record.spanContext?.spanID.description == line["span_id"] as? String)
        #expect(record.attributes["trace_id"] == nil)
    }

    @Test func retriesA503AndSendsGzip() async throws {
        let receiver = try await LogsReceiver(failFirst: 1)
        let environment = [
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:\(receiver.port)",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        ]
        let processor = try #require(YoMoLogging.otlpProcessorFromEnvironment(
            environment: environment, writer: LogWriter(sink: InMemoryLogSink(), configuration: .synchronous)
        ))
        let logger = Logger(label: "retry") { OTLPLogHandler(label: $0, processor: processor, metadataProvider: nil) }
        logger.error("after a retry")
        await processor.shutdown()
        let records = try receiver.records()
        #expect(records.count == 2)
        #expect(records.first?["rejected_with"] as? Int == 503)
        #expect(records.last?["body"] as? String == "after a retry")
        #expect(records.last?["severity_number"] as? Int == 17)
        #expect(records.last?["content_encoding"] as? String == "gzip")
        #expect(processor.droppedRecordCount == 0)
    }
}
