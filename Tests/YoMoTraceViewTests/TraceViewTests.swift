import Foundation
import Synchronization
import Testing
import Tracing
@testable import YoMoTraceView
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

    static func span(_ name: String, id: String, parent: String = "", start: UInt64, end: UInt64, trace: String = "t") -> ReceivedSpan {
        ReceivedSpan(traceID: trace, spanID: id, parentSpanID: parent, name: name, service: "s", scope: "", kind: 1,
                     startNanoseconds: start, endNanoseconds: end, attributes: [], isError: false, statusMessage: "", eventNames: [])
    }

    /// The rows' names and depths, as `WaterfallRenderer.treeRows` orders them.
    static func shape(_ spans: [ReceivedSpan]) -> [String] {
        WaterfallRenderer.treeRows(spans).map { row in
            row.tree.replacingOccurrences(of: "└─ ", with: "+").replacingOccurrences(of: "├─ ", with: "+")
                .replacingOccurrences(of: "│  ", with: ".").replacingOccurrences(of: "   ", with: ".")
        }
    }

    @Test("spans with hostile times, repeated ids, cycles and a deep chain are drawn once each, without trapping")
    func hostileSpans() {
        let last = UInt64.max
        let renderer = WaterfallRenderer(colour: false)
        // A span that starts long after every span ends; a span at the clock's very end.
        let times = [Self.span("early", id: "a", start: 0, end: 0), Self.span("late", id: "b", start: 1 << 63, end: 0)]
        #expect(renderer.render(times).split(separator: "\n").count == 3)
        #expect(renderer.render([Self.span("end", id: "c", start: last, end: last)]).split(separator: "\n").count == 2)
        #expect(renderer.render([Self.span("wide", id: "w", start: 0, end: last), Self.span("at-end", id: "x", start: last, end: 1)])
            .split(separator: "\n").count == 3)
        var narrow = renderer
        narrow.barWidth = 0
        #expect(narrow.render(times).split(separator: "\n").count == 3)

        // A span its own parent, a cycle of two, an id repeated: each once, the cycle from its earliest span.
        let odd = [
            Self.span("root", id: "r", start: 1, end: 9),
            Self.span("own", id: "o", parent: "o", start: 2, end: 3),
            Self.span("cycle-b", id: "cb", parent: "ca", start: 5, end: 6),
            Self.span("cycle-a", id: "ca", parent: "cb", start: 4, end: 6),
            Self.span("child", id: "k", parent: "r", start: 2, end: 4),
            Self.span("again", id: "r", start: 3, end: 4),
        ]
        #expect(Self.shape(odd) == ["root", "+child", "again", "own", "cycle-a", "+cycle-b"])

        // A chain deeper than a recursive walk's stack would take (as in the
        // trace-view test against hostile senders): every link once, in order,
        // indentation bounded.
        let depth = 50_000
        let chain = (0..<depth).map { Self.span("l\($0)", id: "\($0)", parent: $0 == 0 ? "" : "\($0 - 1)", start: UInt64($0), end: UInt64($0) + 1) }
        let rows = WaterfallRenderer.treeRows(chain)
        #expect(rows.count == depth)
        #expect(rows.indices.allSatisfy { rows[$0].span.spanID == "\($0)" })
        #expect(rows.allSatisfy { $0.tree.count <= WaterfallRenderer.treeColumns + 5 + $0.span.name.count })
        let lines = renderer.render(chain).split(separator: "\n")
        #expect(lines.count == depth + 1)
        #expect(lines.allSatisfy { $0.count < 120 })
    }

    @Test("control characters a sender put in names, attributes and messages are drawn as escapes")
    func controlCharacters() {
        var span = Self.span("name\u{1B}]0;title\u{7}", id: "a", start: 0, end: 1)
        span.service = "svc\u{1B}[31m"
        span.attributes = [("key\u{1B}", "value\nsecond line")]
        span.isError = true
        span.statusMessage = "boom\u{1B}[2J"
        let text = WaterfallRenderer(colour: false).render([span])
        #expect(!text.contains("\u{1B}") && text.split(separator: "\n").count == 2, "\(text)")
        #expect(text.contains("name\\x1b]0;title\\x07") && text.contains("svc\\x1b[31m"), "\(text)")
        #expect(text.contains("key\\x1b=value\\nsecond line") && text.contains("✗ boom\\x1b[2J"), "\(text)")
    }

    @Test("random span graphs: every span is drawn exactly once, whatever its ids, parents and times")
    func randomGraphs() {
        var generator = SystemRandomNumberGenerator()
        let extremes: [UInt64] = [0, 1, 1 << 63, UInt64.max - 1, UInt64.max]
        for _ in 0..<300 {
            let count = Int.random(in: 1...40, using: &generator)
            let ids = (0..<Int.random(in: 1...count, using: &generator)).map { "\($0)" }
            let spans = (0..<count).map { index -> ReceivedSpan in
                func time() -> UInt64 {
                    Bool.random(using: &generator) ? extremes.randomElement(using: &generator)! : UInt64.random(in: 0...1000, using: &generator)
                }
                return Self.span("n\(index)", id: ids.randomElement(using: &generator)!,
                                 parent: Bool.random(using: &generator) ? ids.randomElement(using: &generator)! : "none",
                                 start: time(), end: time())
            }
            // A failure shows the graph: (id, parent, start, end) per span.
            let graph = "\(spans.map { ($0.spanID, $0.parentSpanID, $0.startNanoseconds, $0.endNanoseconds) })"
            let rows = WaterfallRenderer.treeRows(spans)
            #expect(rows.map(\.span.name).sorted() == spans.map(\.name).sorted(), "\(graph)")
            #expect(WaterfallRenderer(colour: false).render(spans).split(separator: "\n").count == count + 1, "\(graph)")
        }
    }

    @Test("the assembler holds at most its span limit: the least recently extended traces are handed out early, none lost")
    func assemblerLimit() {
        let assembler = TraceAssembler(maximumPendingSpans: 6)
        func trace(_ id: String) -> [ReceivedSpan] {
            (0..<4).map { Self.span("n", id: "\(id)\($0)", start: 0, end: 1, trace: id) }
        }
        assembler.add(trace("a"))
        #expect(assembler.takeFinished(quiet: .seconds(3600)).isEmpty, "under the limit, nothing is quiet yet")
        assembler.add(trace("b"))
        assembler.add(trace("c"))
        #expect(assembler.pendingSpanCount == 12)
        let early = assembler.takeFinished(quiet: .seconds(3600))
        #expect(early.count == 2 && early.allSatisfy { $0.count == 4 })
        #expect(assembler.pendingSpanCount == 4 && assembler.pendingCount == 1)
        let rest = assembler.takeFinished(quiet: .zero)
        #expect(Set((early + rest).flatMap { $0 }.map(\.spanID)) == Set(["a", "b", "c"].flatMap(trace).map(\.spanID)))
        #expect(assembler.pendingSpanCount == 0)
    }

    /// A request of one span whose attribute `k` is `levels` arrays deep around "x":
    /// 6 + 2 × levels messages deep, counting the request.
    static func nestedRequest(levels: Int) -> [UInt8] {
        func varint(_ number: Int) -> [UInt8] {
            var (number, out) = (UInt64(number), [UInt8]())
            repeat {
                out.append(UInt8(number & 0x7F) | (number > 0x7F ? 0x80 : 0))
                number >>= 7
            } while number > 0
            return out
        }
        func field(_ number: Int, _ payload: [UInt8]) -> [UInt8] { varint(number << 3 | 2) + varint(payload.count) + payload }
        var value = field(1, Array("x".utf8))
        for _ in 0..<levels { value = field(5, field(1, value)) }
        let span = field(1, [UInt8](repeating: 1, count: 16)) + field(2, [UInt8](repeating: 2, count: 8)) + field(5, Array("deep".utf8))
            + field(9, field(1, Array("k".utf8)) + field(2, value))
        return field(1, field(2, field(2, span)))
    }

    @Test("values nested past the limit are refused before protobuf-c unpacks them; up to it they decode")
    func nestingLimit() throws {
        // 6 + 2 × 29 = 64 levels: the limit itself decodes.
        let within = try OTLPTraceDecoder.decode(Self.nestedRequest(levels: 29))
        #expect(within.first?.attributes.first?.value == String(repeating: "[", count: 29) + "x" + String(repeating: "]", count: 29))
        #expect(throws: TraceViewError.self) { try OTLPTraceDecoder.decode(Self.nestedRequest(levels: 30)) }
        // Unchecked, protobuf-c's recursion through this overflows a thread's stack.
        let error = #expect(throws: TraceViewError.self) { try OTLPTraceDecoder.decode(Self.nestedRequest(levels: 20_000)) }
        #expect(error?.description.hasPrefix("the body nests messages deeper than 64 levels") == true)
        // Every prefix of a body, and damaged copies: the check ends, and decoding answers or throws.
        let body = Self.nestedRequest(levels: 40)
        for end in 0...body.count {
            _ = try? OTLPTraceDecoder.decode(Array(body[..<end]))
        }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2_000 {
            var damaged = body
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                damaged[Int.random(in: 0..<damaged.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            _ = try? OTLPTraceDecoder.decode(damaged)
        }
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
