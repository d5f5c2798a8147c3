import Logging
import Testing
import Tracing
import YoMoLogging
import YoMoTracing

@Suite struct TraceCorrelationTests {
    @Test func recordsInsideSpansCarryTheSpansIDs() throws {
        let exporter = InMemorySpanExporter()
        let provider = TracerProvider(
            configuration: .init(environment: [:]),
            processors: [SimpleSpanProcessor(exporter: exporter)]
        )
        let tracer = provider.tracer("test")
        let (logger, sink) = memoryLogger(.json, provider: .yomoTracing)

        logger.info("outside")
        tracer.withSpan("parent") { _ in
            logger.info("in parent")
            tracer.withSpan("child") { _ in
                logger.info("in child")
            }
        }

        let records = try sink.lines.map(parseJSONLine)
        #expect(records.count == 3)
        #expect(records[0]["trace_id"] == nil)
        #expect(records[0]["span_id"] == nil)

        let spans = exporter.spans
        let parent = try #require(spans.first { $0.name == "parent" })
        let child = try #require(spans.first { $0.name == "child" })
        #expect(records[1]["trace_id"] as? String == parent.context.traceID.description)
        #expect(records[1]["span_id"] as? String == parent.context.spanID.description)
        #expect(records[2]["trace_id"] as? String == parent.context.traceID.description)
        #expect(records[2]["span_id"] as? String == child.context.spanID.description)
        let traceID = try #require(records[2]["trace_id"] as? String)
        #expect(traceID.count == 32 && traceID == traceID.lowercased())
    }

    @Test func asyncSpansToo() async throws {
        let exporter = InMemorySpanExporter()
        let provider = TracerProvider(
            configuration: .init(environment: [:]),
            processors: [SimpleSpanProcessor(exporter: exporter)]
        )
        let tracer = provider.tracer("test")
        let (logger, sink) = memoryLogger(.logfmt, provider: .yomoTracing)
        await tracer.withSpan("handler") { _ in
            await Task.yield()
            logger.info("user code")
        }
        let line = try #require(sink.lines.first)
        let record = try #require(parseLogfmt(line))
        let span = try #require(exporter.spans.first)
        #expect(record["trace_id"] == span.context.traceID.description)
        #expect(record["span_id"] == span.context.spanID.description)
    }

    @Test(arguments: [LogFormat.json, .logfmt, .text])
    func directCorrelationMatchesTheProvider(format: LogFormat) throws {
        let tracer = TracerProvider(configuration: .init(environment: [:]), processors: []).tracer("t")
        let sink = InMemoryLogSink()
        let writer = LogWriter(sink: sink, configuration: .synchronous)
        var direct = Logger(label: "d") {
            YoMoLogHandler(label: $0, format: format, writer: writer, metadataProvider: nil, traceCorrelation: true)
        }
        // Both at once: the ids appear once, from the current span.
        var both = Logger(label: "b") {
            YoMoLogHandler(label: $0, format: format, writer: writer, metadataProvider: .yomoTracing, traceCorrelation: true)
        }
        direct[metadataKey: "trace_id"] = "stale"
        both[metadataKey: "k"] = "v"
        direct.info("outside")
        var ids: (String, String) = ("", "")
        tracer.withSpan("s") { span in
            ids = (span.context.spanContext!.traceID.description, span.context.spanContext!.spanID.description)
            direct.info("inside", metadata: ["span_id": "stale"])
            both.info("inside")
        }
        let lines = sink.lines
        #expect(lines.count == 3)
        func fields(_ line: String) throws -> [String: String] {
            if format == .json {
                return try parseJSONLine(line).compactMapValues { $0 as? String }
            }
            if format == .logfmt { return try #require(parseLogfmt(line)) }
            // The text format's fields after the one-word message are logfmt too.
            let start = try #require(line.range(of: ": ")).upperBound
            let rest = line[start...].split(separator: " ", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
            return try #require(parseLogfmt(rest))
        }
        #expect(try fields(lines[0])["trace_id"] == "stale")
        for line in lines.dropFirst() {
            let record = try fields(line)
            #expect(record["trace_id"] == ids.0)
            #expect(record["span_id"] == ids.1)
            #expect(line.components(separatedBy: "trace_id").count == 2, "trace_id once: \(line)")
            #expect(line.components(separatedBy: "span_id").count == 2, "span_id once: \(line)")
        }
    }
}
