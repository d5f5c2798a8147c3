import Foundation
import Logging
import Testing
import Tracing
@testable import YoMoTracing

/// Shutdown against collectors that fail (otlp_receiver.py's fault modes):
/// `shutdown(timeout:)` must return in time whatever the collector does, count
/// every span it could not export and say so in one line. Serialized: each
/// test runs a collector process and the machine has two cores.
@Suite(.serialized) struct FaultShutdownTests {
    struct Case: Sendable, CustomStringConvertible {
        var name: String
        var receiverArguments: [String]
        var spans: Int
        /// Below `spans`, the export thread starts a batch before the shutdown
        /// (in flight when it begins); above, only the shutdown exports.
        var batchSize: Int
        var expectDeadlineReached: Bool
        var failureDetail: String
        /// The shutdown's deadline: long enough for the collector process to
        /// answer at least once on a loaded machine when the report needs its answer.
        var deadlineSeconds = 1
        var description: String { name }
    }

    static let cases: [Case] = [
        // Retry-After 30 s does not fit in the deadline: give up at once.
        Case(name: "503 with Retry-After: 30", receiverArguments: ["--status", "503", "--retry-after", "30"],
             spans: 500, batchSize: 512, expectDeadlineReached: false, failureDetail: "HTTP 503"),
        // Backoff retries, clipped to the time left, until the deadline.
        Case(name: "503", receiverArguments: ["--status", "503"],
             spans: 500, batchSize: 512, expectDeadlineReached: true, failureDetail: "HTTP 503", deadlineSeconds: 3),
        // The first batch hangs (10 s OTLP timeout) when the shutdown begins.
        Case(name: "black hole", receiverArguments: ["--fault", "blackhole"],
             spans: 1000, batchSize: 100, expectDeadlineReached: true, failureDetail: "no answer before the shutdown deadline"),
        // The first batch is between connection retries when the shutdown begins.
        Case(name: "refused", receiverArguments: ["--fault", "refused"],
             spans: 1000, batchSize: 100, expectDeadlineReached: true, failureDetail: "connection failed"),
    ]

    @Test(arguments: cases) func shutdownEndsInTimeCountsAndReportsOnce(_ fault: Case) async throws {
        let collector = try await OTLPReceiver.start(arguments: fault.receiverArguments)
        defer { collector.stop() }
        let logs = CapturedLogs()
        let provider = TracerProvider.otlp(
            serviceName: "fault",
            environment: [
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "600000",
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "\(fault.batchSize)",
            ],
            logger: logs.logger()
        )
        let tracer = provider.tracer("t")
        for _ in 0..<fault.spans { tracer.startSpan("lost").end() }

        let clock = ContinuousClock()
        let start = clock.now
        await provider.shutdown(timeout: .seconds(fault.deadlineSeconds))
        let elapsed = clock.now - start

        // Without the deadline: 10 s per attempt (black hole), or retries for
        // the whole 10 s OTLP timeout per batch (503, refused).
        #expect(elapsed < .seconds(fault.deadlineSeconds + 2), "shutdown took \(elapsed)")
        #expect(provider.droppedSpanCount == fault.spans)
        #expect(provider.queuedSpanCount == 0)
        let errors = logs.all.filter { $0.level >= .error }
        #expect(errors.count == 1, "one report line, not one per batch: \(errors.map(\.message))")
        let report = try #require(errors.first)
        #expect(report.message.contains("\(fault.spans) spans not exported"))
        #expect(report.message.contains("collector \(collector.endpoint)/v1/traces"))
        #expect(report.message.contains(fault.failureDetail), "\(report.message)")
        #expect(report.message.contains("deadline (\(fault.deadlineSeconds) s) reached") == fault.expectDeadlineReached,
                "\(logs.all.map { "\($0.message) \($0.metadata)" })")
        #expect(report.metadata["dropped_spans"] == "\(fault.spans)")
        #expect(report.metadata["shutdown_timeout_ms"] == "\(fault.deadlineSeconds * 1000)")
    }

    @Test func forceFlushReturnsInTimeAndKeepsTheSpans() async throws {
        let collector = try await OTLPReceiver.start(arguments: ["--fault", "blackhole"])
        defer { collector.stop() }
        let logs = CapturedLogs()
        let provider = TracerProvider.otlp(
            serviceName: "flush",
            environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "600000"],
            logger: logs.logger()
        )
        for _ in 0..<10 { provider.tracer("t").startSpan("pending").end() }
        let clock = ContinuousClock()
        let start = clock.now
        await provider.forceFlush(timeout: .milliseconds(300))
        #expect(clock.now - start < .seconds(2))
        // The export is still waiting for the collector: nothing lost yet.
        #expect(provider.droppedSpanCount == 0)

        await provider.shutdown(timeout: .milliseconds(500))
        #expect(clock.now - start < .seconds(3))
        #expect(provider.droppedSpanCount == 10)
        #expect(logs.all.filter { $0.level >= .error }.map(\.message).count == 1)
    }

    /// A shutdown deadline that ends an export after a failed attempt reports
    /// what that attempt met, not only that the deadline came (a loaded machine
    /// can wake the export thread after the deadline, as a parallel test run
    /// showed): ending the retry wait (the collector refuses connections), or
    /// the next attempt (the collector answered 503, then stopped answering).
    @Test(arguments: [
        (["--fault", "refused"], 0, "connection failed"),
        (["--fail-first", "1", "--then-hang"], 2, "no answer before the shutdown deadline (the attempt before: HTTP 503"),
    ])
    func deadlineAfterAFailedAttemptReportsThatFailure(receiverArguments: [String], requestsRead: Int, detail: String) async throws {
        let collector = try await OTLPReceiver.start(arguments: receiverArguments)
        defer { collector.stop() }
        let logs = CapturedLogs()
        let exporter = try OTLPHTTPSpanExporter(
            configuration: OTLPExporterConfiguration(signal: .traces, environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint]),
            logger: logs.logger())
        let spans = finishedSpans("lost")
        // The export blocks its thread, as on the processor's export thread (its 10 s timeout bounds it).
        async let outcome: TracingError? = withCheckedContinuation { continuation in
            Thread {
                do throws(TracingError) {
                    try exporter.export(spans, timeout: .seconds(10))
                    continuation.resume(returning: nil)
                } catch {
                    continuation.resume(returning: error)
                }
            }.start()
        }
        // Abandon once the attempts are where the case needs them: a retry
        // planned (refused), or the second request read and left unanswered.
        #expect(await collector.wait {
            logs.all.contains { $0.message == "OTLP export will retry" } && collector.requests.count >= requestsRead
        })
        exporter.abandonExports(after: .zero)
        let error = try #require(await outcome)
        #expect(error == .abandoned)
        #expect(error.message.contains("collector \(collector.endpoint)/v1/traces: \(detail)"), "\(error.message)")
    }

    @Test func shutdownTimeoutDefaultsToFiveSecondsAndReadsTheEnvironment() {
        #expect(BatchSpanProcessor.Configuration(environment: [:]).shutdownTimeout == .seconds(5))
        #expect(BatchSpanProcessor.Configuration(environment: ["YOMO_TELEMETRY_SHUTDOWN_TIMEOUT": " 1500 "]).shutdownTimeout
            == .milliseconds(1500))
        #expect(BatchSpanProcessor.Configuration(environment: ["YOMO_TELEMETRY_SHUTDOWN_TIMEOUT": "-1"]).shutdownTimeout
            == .seconds(5))
    }

    /// The configured timeout applies to `shutdown()` without an argument,
    /// which is what the YoMo components call.
    @Test func shutdownWithoutArgumentUsesTheConfiguredTimeout() async throws {
        let collector = try await OTLPReceiver.start(arguments: ["--fault", "blackhole"])
        defer { collector.stop() }
        let logs = CapturedLogs()
        let provider = TracerProvider.otlp(
            serviceName: "configured",
            environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "YOMO_TELEMETRY_SHUTDOWN_TIMEOUT": "700"],
            logger: logs.logger()
        )
        provider.tracer("t").startSpan("lost").end()
        let clock = ContinuousClock()
        let start = clock.now
        await provider.shutdown()
        #expect(clock.now - start < .milliseconds(2700))
        #expect(provider.droppedSpanCount == 1)
        #expect(logs.all.contains { $0.message.contains("deadline (700 ms) reached, 1 spans not exported") })
    }
}
