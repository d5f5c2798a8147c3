import Foundation
import Synchronization
import Testing
import Tracing
import YoMoTraceView
import YoMoTracing

@Suite("yomo trace-view")
struct TraceViewTests {
    struct Failure: Error {}

    @Test("spans exported over OTLP/HTTP are received, decoded, grouped by trace and drawn as a tree")
    func receiveAndRender() async throws {
        let assembler = TraceAssembler()
        let errors = Mutex<[String]>([])
        let receiver = try await OTLPHTTPReceiver.start(
            host: "127.0.0.1", port: 0, onSpans: { assembler.add($0) }, onError: { message in errors.withLock { $0.append(message) } })
        let provider = TracerProvider.otlp(serviceName: "viewer-test", environment: [
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:\(receiver.port)",
        ])
        let tracer = provider.tracer("test-scope")
        tracer.withSpan("root") { root in
            root.attributes["frame.tag"] = 51
            tracer.withSpan("child") { _ in
                tracer.withSpan("grandchild") { span in
                    span.setStatus(SpanStatus(code: .error, message: "boom"))
                }
            }
        }
        tracer.withSpan("other trace") { _ in }
        await provider.shutdown()  // flushes to the receiver

        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(10))
        var traces: [[ReceivedSpan]] = []
        while traces.count < 2, clock.now < deadline {
            traces += assembler.takeFinished(quiet: .milliseconds(50))
            try await Task.sleep(for: .milliseconds(20))
        }
        await receiver.close()
        #expect(errors.withLock { $0 } == [])
        try #require(traces.count == 2)
        let tree = try #require(traces.first { $0.count == 3 })
        let root = try #require(tree.first { $0.name == "root" })
        let child = try #require(tree.first { $0.name == "child" })
        let grandchild = try #require(tree.first { $0.name == "grandchild" })
        #expect(child.parentSpanID == root.spanID)
        #expect(grandchild.parentSpanID == child.spanID)
        #expect(root.service == "viewer-test")
        #expect(root.scope == "test-scope")
        #expect(root.attributes.contains { $0.key == "frame.tag" && $0.value == "51" })
        #expect(grandchild.isError && grandchild.statusMessage == "boom")
        #expect(Set(tree.map(\.traceID)).count == 1)

        let text = WaterfallRenderer(colour: false).render(tree)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.count == 4)
        #expect(lines[0].hasPrefix("trace \(root.traceID)  3 spans"))
        #expect(lines[0].contains("1 error"))
        #expect(lines[1].contains("root") && lines[1].contains("frame.tag=51"))
        #expect(lines[2].contains("└─ child"))
        #expect(lines[3].contains("└─ grandchild") && lines[3].contains("✗ boom"))
        #expect(WaterfallRenderer(colour: true).render(tree).contains("\u{1B}[31m"))
    }

    @Test("a body that is not OTLP is refused with a clear error")
    func garbage() throws {
        #expect(throws: TraceViewError.self) { try OTLPTraceDecoder.decode([0xFF, 0xFF, 0xFF, 0x01]) }
        #expect(try OTLPTraceDecoder.decode([]).isEmpty)
    }
}

/// `fixed(_:decimals:)` replaces `String(format: "%.Nf")`, which needs full Foundation.
@Suite("Fixed-point formatting")
struct FixedFormattingTests {
    @Test("prints what %.Nf prints", arguments: [0, 1, 2])
    func matchesPrintf(decimals: Int) {
        let values: [Double] = [0, 1, -1, 0.5, 1.5, 2.5, 0.125, 0.375, 1.005, 12.345, 999.995, 1234.5678, -0.004, -2.75,
                                0.001, 59.99, 100, 1e6 + 0.25, 3_600_000.125, 42.0625]
        for value in values {
            #expect(fixed(value, decimals: decimals) == String(format: "%.\(decimals)f", value), "\(value)")
        }
        // Random values, and values a hair from the ties (binary ties fall either side).
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let value = Bool.random(using: &generator)
                ? Double.random(in: -1e6...1e6, using: &generator)
                : Double(Int.random(in: -100_000...100_000, using: &generator)) / 1000 + 0.0005
            #expect(fixed(value, decimals: decimals) == String(format: "%.\(decimals)f", value), "\(value)")
        }
        #expect(fixed(.nan, decimals: decimals) == "-")
        #expect(fixed(.infinity, decimals: decimals) == "-")
    }
}
