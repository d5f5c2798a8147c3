import Foundation
import Synchronization
import Testing
import Tracing
@testable import YoMoTracing

/// An exporter that blocks until released, to fill the batch queue.
final class GatedExporter: SpanExporter {
    private let gate = ConditionLock()
    private let state = Mutex<(open: Bool, batches: [Int], spans: Int)>((false, [], 0))

    func export(_ spans: [FinishedSpan], timeout: Duration) throws(TracingError) {
        while !state.withLock({ $0.open }) { usleep(1_000) }
        state.withLock {
            $0.batches.append(spans.count)
            $0.spans += spans.count
        }
    }

    func open() { state.withLock { $0.open = true } }
    var batches: [Int] { state.withLock { $0.batches } }
    var exportedSpans: Int { state.withLock { $0.spans } }
}

@Suite struct BatchProcessorTests {
    @Test func configurationDefaultsAndEnvironment() {
        let defaults = BatchSpanProcessor.Configuration(environment: [:])
        #expect(defaults.scheduleDelay == .milliseconds(5000))
        #expect(defaults.maxQueueSize == 2048)
        #expect(defaults.maxExportBatchSize == 512)
        #expect(defaults.exportTimeout == .milliseconds(30000))
        let custom = BatchSpanProcessor.Configuration(environment: [
            "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BSP_MAX_QUEUE_SIZE": "10",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "50", "OTEL_BSP_EXPORT_TIMEOUT": "nope",
        ])
        #expect(custom.scheduleDelay == .milliseconds(100))
        #expect(custom.maxQueueSize == 10)
        #expect(custom.maxExportBatchSize == 10)  // never above the queue size
        #expect(custom.exportTimeout == .milliseconds(30000))
    }

    @Test func fullQueueDropsAndCountsWithoutBlocking() async {
        let exporter = GatedExporter()
        let logs = CapturedLogs()
        var configuration = BatchSpanProcessor.Configuration(environment: [:])
        configuration.maxQueueSize = 100
        configuration.maxExportBatchSize = 10
        let processor = BatchSpanProcessor(exporter: exporter, configuration: configuration, logger: logs.logger())
        var providerConfiguration = TracerProvider.Configuration(environment: [:])
        providerConfiguration.serviceName = "bsp"
        let provider = TracerProvider(configuration: providerConfiguration, processors: [processor])
        let tracer = provider.tracer("bsp")

        let clock = ContinuousClock()
        let elapsed = clock.measure {
            for _ in 0..<5_000 { tracer.startSpan("s").end() }
        }
        // The exporter is blocked, so at most the queue plus the batch it holds survive.
        #expect(processor.droppedSpanCount >= 5_000 - 100 - 10)
        #expect(processor.droppedSpanCount <= 5_000 - 100)
        #expect(provider.droppedSpanCount == processor.droppedSpanCount)
        #expect(processor.queuedSpanCount <= 100)
        #expect(elapsed < .seconds(1))

        exporter.open()
        await provider.shutdown()
        #expect(exporter.exportedSpans == 5_000 - processor.droppedSpanCount)
        #expect(exporter.batches.allSatisfy { $0 <= 10 })
        #expect(logs.all.contains { $0.level == .warning && $0.metadata["dropped_count"] != nil })
    }

    /// A span's end hands it to the processors with borrowed references (and,
    /// for a lone batch processor, moves it into the queue): each processor
    /// sees each span once, a second `end` nothing, and once exported and
    /// dropped by the exporter no span's storage is left alive (nor freed
    /// early: that would crash here).
    @Test(arguments: [false, true])
    func endedSpansReachEveryProcessorOnceAndAreFreedAfterExport(besideASimpleProcessor: Bool) async {
        let batched = InMemorySpanExporter()
        let simple = InMemorySpanExporter()
        var processors: [any SpanProcessor] = [BatchSpanProcessor(
            exporter: batched,
            configuration: BatchSpanProcessor.Configuration(environment: ["OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "7"]),
            logger: CapturedLogs().logger())]
        if besideASimpleProcessor { processors.append(SimpleSpanProcessor(exporter: simple)) }
        let provider = TracerProvider(configuration: .init(environment: [:]), processors: processors)
        let tracer = provider.tracer("ends")
        final class Weak: @unchecked Sendable { weak var storage: SpanStorage? }
        var weakStorages: [Weak] = []
        for index in 0..<50 {
            let span = tracer.startSpan("span-\(index)")
            let weak = Weak()
            weak.storage = span.storage
            weakStorages.append(weak)
            span.end()
            span.end()
        }
        await provider.forceFlush()
        let expected = (0..<50).map { "span-\($0)" }
        #expect(batched.spans.map(\.name) == expected)
        #expect(simple.spans.map(\.name) == (besideASimpleProcessor ? expected : []))
        batched.reset()
        simple.reset()
        await provider.shutdown()
        #expect(weakStorages.allSatisfy { $0.storage == nil })
    }

    @Test func forceFlushExportsEverythingEndedBefore() async {
        let exporter = InMemorySpanExporter()
        let processor = BatchSpanProcessor(
            exporter: exporter,
            configuration: BatchSpanProcessor.Configuration(environment: ["OTEL_BSP_SCHEDULE_DELAY": "60000"]),
            logger: CapturedLogs().logger()
        )
        let provider = TracerProvider(configuration: .init(environment: [:]), processors: [processor])
        let tracer = provider.tracer("flush")
        for index in 0..<1_300 { tracer.startSpan("span \(index)").end() }
        await provider.forceFlush()
        #expect(exporter.spans.count == 1_300)
        tracer.startSpan("after flush").end()
        await provider.shutdown()
        #expect(exporter.spans.count == 1_301)
        #expect(exporter.isShutdown)
        await provider.shutdown()  // idempotent
        await provider.forceFlush()  // after shutdown: returns at once
    }

    @Test func scheduleDelayExportsWithoutAFlush() async throws {
        let exporter = InMemorySpanExporter()
        let processor = BatchSpanProcessor(
            exporter: exporter,
            configuration: BatchSpanProcessor.Configuration(environment: ["OTEL_BSP_SCHEDULE_DELAY": "50"]),
            logger: CapturedLogs().logger()
        )
        let provider = TracerProvider(configuration: .init(environment: [:]), processors: [processor])
        provider.tracer("timer").startSpan("one").end()
        let deadline = ContinuousClock.now + .seconds(5)
        while exporter.spans.isEmpty && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(exporter.spans.count == 1)
        await provider.shutdown()
    }

    @Test func concurrentProducersLoseNothingBelowTheQueueLimit() async {
        let exporter = InMemorySpanExporter()
        let processor = BatchSpanProcessor(
            exporter: exporter,
            configuration: BatchSpanProcessor.Configuration(environment: [
                "OTEL_BSP_MAX_QUEUE_SIZE": "20000", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100",
            ]),
            logger: CapturedLogs().logger()
        )
        let provider = TracerProvider(configuration: .init(environment: [:]), processors: [processor])
        let tracer = provider.tracer("concurrent")
        await withTaskGroup(of: Void.self) { group in
            for task in 0..<4 {
                group.addTask {
                    for index in 0..<2_000 {
                        let span = tracer.startSpan("task \(task)")
                        span.attributes["index"] = index
                        span.end()
                    }
                }
            }
            // Flushes racing with the producers must neither hang nor lose spans.
            group.addTask { for _ in 0..<5 { await provider.forceFlush() } }
        }
        await provider.forceFlush()
        #expect(exporter.spans.count == 8_000)
        #expect(provider.droppedSpanCount == 0)
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<3 { group.addTask { await provider.shutdown() } }
        }
        #expect(exporter.isShutdown)
        #expect(Set(exporter.spans.map(\.context.spanID)).count == 8_000)
    }

    @Test func unsampledSpansAreNotExported() async {
        let exporter = InMemorySpanExporter()
        let processor = BatchSpanProcessor(exporter: exporter, logger: CapturedLogs().logger())
        let provider = TracerProvider(
            configuration: .init(environment: ["OTEL_TRACES_SAMPLER": "always_off"]), processors: [processor]
        )
        provider.tracer("x").startSpan("dropped").end()
        await provider.shutdown()
        #expect(exporter.spans.isEmpty)
    }
}

@Suite struct ConsoleExporterTests {
    @Test func writesOneJSONLinePerSpan() throws {
        let lines = Mutex<[String]>([])
        let exporter = ConsoleSpanExporter { line in lines.withLock { $0.append(line) } }
        let provider = TracerProvider(
            configuration: { var c = TracerProvider.Configuration(environment: [:]); c.serviceName = "console"; return c }(),
            processors: [SimpleSpanProcessor(exporter: exporter)]
        )
        let tracer = provider.tracer("console")
        tracer.withSpan("parent") { parent in
            parent.attributes["quote"] = "say \"hi\"\n"
            parent.attributes["list"] = [1, 2]
            tracer.withSpan("child") { _ in }
        }
        let output = lines.withLock { $0 }
        #expect(output.count == 2)
        let objects = try output.map { try #require(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        #expect(objects[0]["name"] as? String == "child")
        #expect(objects[0]["parent_span_id"] as? String == objects[1]["span_id"] as? String)
        #expect(objects[1]["service"] as? String == "console")
        let attributes = try #require(objects[1]["attributes"] as? [String: Any])
        #expect(attributes["quote"] as? String == "say \"hi\"\n")
    }
}
