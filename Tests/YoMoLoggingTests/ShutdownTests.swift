import Foundation
import Logging
import Testing
@testable import YoMoLogging
import YoMoTracing

/// A failing collector: YoMoTracingTests' otlp_receiver.py in one of its fault
/// modes (it answers any signal's POST with the status given).
final class FaultyCollector {
    let process = Process()
    let directory: URL
    let port: Int

    init(_ arguments: [String]) async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("yomo-fault-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../YoMoTracingTests/otlp_receiver.py").standardizedFileURL
        let portFile = directory.appendingPathComponent("port")
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script.path, "--port-file", portFile.path,
                             "--out", directory.appendingPathComponent("out.jsonl").path] + arguments
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        var port: Int?
        for _ in 0..<400 {
            if let text = try? String(contentsOf: portFile, encoding: .utf8), let value = Int(text) {
                port = value
                break
            }
            try await Task.sleep(for: .milliseconds(25))
        }
        self.port = try #require(port, "the collector stand-in did not start")
    }

    deinit {
        // SIGKILL: the child may have inherited blocked signals. No waitUntilExit
        // (it can hang off the main thread on Linux).
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }
}

/// The OTLP log side of bounded shutdown, through what `bootstrap` installs:
/// the processor from the environment, reporting to the log writer.
@Suite(.serialized) struct LogShutdownTests {
    struct Case: Sendable, CustomStringConvertible {
        var name: String
        var arguments: [String]
        var expectDeadlineReached: Bool
        var description: String { name }
    }

    static let cases: [Case] = [
        Case(name: "503 with Retry-After: 30", arguments: ["--status", "503", "--retry-after", "30"], expectDeadlineReached: false),
        Case(name: "black hole", arguments: ["--fault", "blackhole"], expectDeadlineReached: true),
        Case(name: "refused", arguments: ["--fault", "refused"], expectDeadlineReached: true),
    ]

    @Test(arguments: cases) func installationShutdownEndsInTimeCountsAndReportsOnce(_ fault: Case) async throws {
        let collector = try await FaultyCollector(fault.arguments)
        let sink = InMemoryLogSink()
        let writer = LogWriter(sink: sink, configuration: .synchronous)
        let environment = [
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:\(collector.port)/v1/logs",
            "OTEL_BLRP_SCHEDULE_DELAY": "600000",
            // No export before the shutdown (neither batch size nor delay is reached).
            "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "1000",
            "YOMO_LOG_FORMAT": "json",
        ]
        let processor = try #require(YoMoLogging.otlpProcessorFromEnvironment(environment: environment, writer: writer))
        let installation = YoMoLogging.Installation(
            configuration: .init(environment: environment), writer: writer, logProcessor: processor
        )
        let logger = Logger(label: "app") { OTLPLogHandler(label: $0, processor: processor, metadataProvider: nil) }
        let records = 900
        for index in 0..<records { logger.info("record \(index)") }

        let clock = ContinuousClock()
        let start = clock.now
        await installation.shutdown(timeout: .seconds(1))
        let elapsed = clock.now - start

        #expect(elapsed < .seconds(3), "shutdown took \(elapsed)")
        #expect(processor.droppedRecordCount == records)
        let lines = try sink.lines.map(parseJSONLine)
        let errors = lines.filter { ($0["level"] as? String)?.lowercased() == "error" }
        #expect(errors.count == 1, "one report line: \(sink.lines)")
        let report = try #require(errors.first)
        let message = try #require(report["msg"] as? String ?? report["message"] as? String, "\(report)")
        #expect(message.contains("\(records) log records not exported"), "\(message)")
        #expect(message.contains("collector http://127.0.0.1:\(collector.port)/v1/logs"), "\(message)")
        #expect(message.contains("deadline (1 s) reached") == fault.expectDeadlineReached, "\(message)")
        #expect("\(report["dropped_log_records"] ?? "")" == "\(records)")
    }

    @Test func shutdownTimeoutDefaultsToFiveSecondsAndReadsTheEnvironment() {
        #expect(BatchLogRecordProcessor.Configuration(environment: [:]).shutdownTimeout == .seconds(5))
        #expect(BatchLogRecordProcessor.Configuration(environment: ["YOMO_TELEMETRY_SHUTDOWN_TIMEOUT": "250"]).shutdownTimeout
            == .milliseconds(250))
    }
}
