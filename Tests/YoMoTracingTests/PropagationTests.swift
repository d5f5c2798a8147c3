import Testing
import Tracing
@testable import YoMoTracing

@Suite struct PropagationTests {
    let tracer = makeProvider(exporter: InMemorySpanExporter()).tracer("test")

    @Test func injectWritesYoMoKeysAndTraceparent() throws {
        var context = ServiceContext.topLevel
        let spanContext = SpanContext(
            traceID: try #require(TraceID(hexString: "0af7651916cd43dd8448eb211c80319c")),
            spanID: try #require(SpanID(hexString: "b7ad6b7169203331")),
            traceFlags: .sampled, traceState: "congo=t61rcWkgMzE"
        )
        context.spanContext = spanContext
        var metadata = Metadata()
        tracer.inject(context, into: &metadata, using: DictionaryInjector())
        #expect(metadata == [
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "congo=t61rcWkgMzE",
            "yomo-trace-id": "0af7651916cd43dd8448eb211c80319c",
            "yomo-span-id": "b7ad6b7169203331",
        ])

        var extracted = ServiceContext.topLevel
        tracer.extract(metadata, into: &extracted, using: DictionaryExtractor())
        var expected = spanContext
        expected.isRemote = true
        #expect(extracted.spanContext == expected)
    }

    @Test func noTracestateKeyWhenEmptyAndNothingWithoutContext() {
        var context = ServiceContext.topLevel
        var metadata = Metadata()
        tracer.inject(context, into: &metadata, using: DictionaryInjector())
        #expect(metadata.isEmpty)
        context.spanContext = SpanContext(traceID: .random(), spanID: .random(), traceFlags: [])
        tracer.inject(context, into: &metadata, using: DictionaryInjector())
        #expect(metadata["tracestate"] == nil)
        #expect(metadata["traceparent"]?.hasSuffix("-00") == true)
        #expect(metadata.count == 3)
    }

    @Test(arguments: [
        (nil, TraceContextPropagator.Formats.all, false),
        ("", .all, false),
        ("tracecontext", .traceContext, false),
        (" yomo ", .yomo, false),
        ("tracecontext,yomo", .all, false),
        ("YOMO,TraceContext", .all, false),
        ("tracecontext,baggage", .traceContext, true),
        ("b3", .all, true),
        ("none", [], false),
        ("none,yomo", .yomo, false),
    ] as [(String?, TraceContextPropagator.Formats, Bool)])
    func propagatorsFromEnvironment(value: String?, formats: TraceContextPropagator.Formats, warns: Bool) {
        let (parsed, warning) = TraceContextPropagator.Formats.fromEnvironment(value.map { ["OTEL_PROPAGATORS": $0] } ?? [:])
        #expect(parsed == formats)
        #expect((warning != nil) == warns)
        if warns { #expect(warning?.contains("supported: tracecontext, yomo, none") == true) }
    }

    @Test func oneFormatWritesAndReadsOnlyItsKeys() throws {
        let spanContext = SpanContext(traceID: .random(), spanID: .random(), traceFlags: .sampled, traceState: "a=1")
        var w3c: Metadata = [:]
        TraceContextPropagator(formats: .traceContext).inject(spanContext, into: &w3c, using: DictionaryInjector())
        #expect(Set(w3c.keys) == ["traceparent", "tracestate"])
        var yomo: Metadata = [:]
        TraceContextPropagator(formats: .yomo).inject(spanContext, into: &yomo, using: DictionaryInjector())
        #expect(Set(yomo.keys) == ["yomo-trace-id", "yomo-span-id"])
        var none: Metadata = [:]
        TraceContextPropagator(formats: []).inject(spanContext, into: &none, using: DictionaryInjector())
        #expect(none.isEmpty)
        // Each reads only its own keys.
        #expect(TraceContextPropagator(formats: .yomo).extract(from: w3c, using: DictionaryExtractor()) == nil)
        #expect(TraceContextPropagator(formats: .traceContext).extract(from: yomo, using: DictionaryExtractor()) == nil)
        #expect(TraceContextPropagator(formats: .traceContext).extract(from: w3c, using: DictionaryExtractor())?.spanID == spanContext.spanID)
        #expect(TraceContextPropagator(formats: .yomo).extract(from: yomo, using: DictionaryExtractor())?.spanID == spanContext.spanID)
        // A provider's tracers use its choice.
        var configuration = TracerProvider.Configuration(environment: ["OTEL_PROPAGATORS": "yomo"])
        #expect(configuration.propagation == .yomo)
        configuration.propagation = .traceContext
        #expect(TracerProvider(configuration: configuration, processors: []).tracer("t").propagator.formats == .traceContext)
    }

    @Test func yomoOnlyParentIsSampledAndRemote() throws {
        let metadata: Metadata = ["yomo-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736", "yomo-span-id": "00f067aa0ba902b7"]
        var context = ServiceContext.topLevel
        tracer.extract(metadata, into: &context, using: DictionaryExtractor())
        let parent = try #require(context.spanContext)
        #expect(parent.traceID.description == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(parent.spanID.description == "00f067aa0ba902b7")
        #expect(parent.isSampled)
        #expect(parent.isRemote)

        // A span started under it continues the trace, as a child of the remote parent.
        let span = tracer.startSpan("sfn", context: context, ofKind: .consumer)
        #expect(span.spanContext?.traceID == parent.traceID)
        #expect(span.spanContext?.spanID != parent.spanID)
        #expect(span.isRecording)
    }

    @Test func traceparentWinsOverYoMoKeysAndInvalidTraceparentFallsBack() throws {
        let both: Metadata = [
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            "yomo-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736", "yomo-span-id": "00f067aa0ba902b7",
        ]
        let preferred = try #require(TraceContextPropagator().extract(from: both, using: DictionaryExtractor()))
        #expect(preferred.traceID.description == "0af7651916cd43dd8448eb211c80319c")
        #expect(!preferred.isSampled)

        var broken = both
        broken["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"
        let fallback = try #require(TraceContextPropagator().extract(from: broken, using: DictionaryExtractor()))
        #expect(fallback.traceID.description == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(fallback.isSampled)
    }

    @Test(arguments: [
        "",
        "garbage",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
        "0g-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x",
    ])
    func invalidTraceparentsAreIgnored(_ value: String) {
        #expect(TraceContextPropagator.parseTraceparent(value) == nil)
        var context = ServiceContext.topLevel
        tracer.extract(["traceparent": value], into: &context, using: DictionaryExtractor())
        #expect(context.spanContext == nil)
    }

    @Test func futureTraceparentVersionsAreReadAsVersion00() {
        let parsed = TraceContextPropagator.parseTraceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-whatever")
        #expect(parsed?.isSampled == true)
        #expect(parsed?.spanID.description == "b7ad6b7169203331")
    }

    @Test func invalidYoMoKeysAreIgnored() {
        let cases: [Metadata] = [
            ["yomo-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736"],
            ["yomo-trace-id": "4bf92f3577b34da6a3ce929d0e0e473", "yomo-span-id": "00f067aa0ba902b7"],
            ["yomo-trace-id": "00000000000000000000000000000000", "yomo-span-id": "00f067aa0ba902b7"],
            ["yomo-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736", "yomo-span-id": "0000000000000000"],
            ["yomo-trace-id": "zzf92f3577b34da6a3ce929d0e0e4736", "yomo-span-id": "00f067aa0ba902b7"],
        ]
        for metadata in cases {
            #expect(TraceContextPropagator().extract(from: metadata, using: DictionaryExtractor()) == nil)
        }
    }

    @Test func randomGarbageNeverCrashes() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("0123456789abcdefABCDEF-_ xz\u{0}é")
        for _ in 0..<5000 {
            let length = Int.random(in: 0...70, using: &generator)
            let value = String((0..<length).map { _ in alphabet.randomElement(using: &generator)! })
            let metadata: Metadata = ["traceparent": value, "yomo-trace-id": value, "yomo-span-id": String(value.prefix(16))]
            _ = TraceContextPropagator().extract(from: metadata, using: DictionaryExtractor())
        }
    }

    @Test func startSpanExtractingFromACarrier() throws {
        let metadata: Metadata = ["yomo-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736", "yomo-span-id": "00f067aa0ba902b7"]
        let span = tracer.startSpan("zipper endpoint", extractingParentFrom: metadata, using: DictionaryExtractor())
        #expect(span.spanContext?.traceID.description == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(span.isRecording)
        // No trace context in the carrier: a new root (or a child of the current context).
        let root = tracer.startSpan("root", extractingParentFrom: Metadata(), using: DictionaryExtractor())
        #expect(root.spanContext?.traceID != span.spanContext?.traceID)
        var outgoing = Metadata()
        tracer.inject(span.context, into: &outgoing, using: DictionaryInjector())
        #expect(outgoing["yomo-span-id"] == span.spanContext?.spanID.description)
        span.end()
        root.end()
    }

    /// The PROTOCOL.md scheme: each hop starts its span as a child of the
    /// incoming ids, then overwrites the keys with its own span's ids.
    @Test func sourceZipperStreamFunctionChainIsOneTrace() async throws {
        let exporter = InMemorySpanExporter()
        let provider = makeProvider(exporter: exporter)
        let source = provider.tracer("Source")
        let zipper = provider.tracer("Zipper")
        let sfn = provider.tracer("StreamFunction")

        var metadata = Metadata()
        let sourceSpan = source.startSpan("my-source", context: .topLevel, ofKind: .producer)
        sourceSpan.attributes["send_data_tag"] = 0x33
        sourceSpan.attributes["send_data_len"] = 5
        source.inject(sourceSpan.context, into: &metadata, using: DictionaryInjector())
        sourceSpan.end()

        var zipperContext = ServiceContext.topLevel
        zipper.extract(metadata, into: &zipperContext, using: DictionaryExtractor())
        let zipperSpan = zipper.startSpan("zipper endpoint", context: zipperContext)
        zipperSpan.attributes["routing_data_tag"] = 0x33
        zipper.inject(zipperSpan.context, into: &metadata, using: DictionaryInjector())
        zipperSpan.end()

        // The Go zipper forwards only the YoMo keys.
        let goMetadata = metadata.filter { $0.key.hasPrefix("yomo-") }
        var sfnContext = ServiceContext.topLevel
        sfn.extract(goMetadata, into: &sfnContext, using: DictionaryExtractor())
        var written = Metadata()
        try await sfn.withSpan("uppercase", context: sfnContext, ofKind: .consumer) { span in
            span.attributes["sfn_handler_type"] = "async_handler"
            await sfn.withSpan("user work") { _ in await Task.yield() }
            sfn.inject(try #require(ServiceContext.current), into: &written, using: DictionaryInjector())
        }

        let spans = Dictionary(uniqueKeysWithValues: exporter.spans.map { ($0.name, $0) })
        let traceID = try #require(spans["my-source"]?.context.traceID)
        #expect(spans.values.allSatisfy { $0.context.traceID == traceID })
        #expect(spans["my-source"]?.parentSpanID == nil)
        #expect(spans["zipper endpoint"]?.parentSpanID == spans["my-source"]?.context.spanID)
        #expect(spans["zipper endpoint"]?.parentIsRemote == true)
        #expect(spans["uppercase"]?.parentSpanID == spans["zipper endpoint"]?.context.spanID)
        #expect(spans["user work"]?.parentSpanID == spans["uppercase"]?.context.spanID)
        #expect(spans["uppercase"]?.scope.name == "StreamFunction")
        // What the handler writes carries the sfn span as parent of the next hop.
        #expect(written["yomo-span-id"] == spans["uppercase"]?.context.spanID.description)
    }
}

/// The word-at-a-time hex parser against a digit-by-digit reference: every
/// byte value at every position, in both case modes, and random digit strings.
@Suite struct HexParsingTests {
    static func reference(_ digits: [UInt8], lowercaseOnly: Bool) -> UInt64? {
        guard digits.count == 16 else { return nil }
        var value: UInt64 = 0
        for byte in digits {
            let nibble: UInt64
            switch byte {
            case 0x30...0x39: nibble = UInt64(byte - 0x30)
            case 0x61...0x66: nibble = UInt64(byte - 0x61 + 10)
            case 0x41...0x46 where !lowercaseOnly: nibble = UInt64(byte - 0x41 + 10)
            default: return nil
            }
            value = value << 4 | nibble
        }
        return value
    }

    @Test(arguments: [true, false]) func everyByteAtEveryPosition(lowercaseOnly: Bool) {
        let valid = Array("0123456789abcdef".utf8)
        for position in 0..<16 {
            for byte in UInt8.min...UInt8.max {
                var digits = (0..<16).map { valid[($0 * 7) % 16] }
                digits[position] = byte
                let parsed = digits.withUnsafeBufferPointer { parseHex64(contiguous: $0, lowercaseOnly: lowercaseOnly) }
                #expect(parsed == Self.reference(digits, lowercaseOnly: lowercaseOnly), "byte \(byte) at \(position)")
            }
        }
    }

    @Test func randomDigitStrings() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("0123456789abcdefABCDEF".utf8)
        for _ in 0..<20_000 {
            let digits = (0..<16).map { _ in alphabet.randomElement(using: &generator)! }
            for lowercaseOnly in [true, false] {
                let parsed = digits.withUnsafeBufferPointer { parseHex64(contiguous: $0, lowercaseOnly: lowercaseOnly) }
                #expect(parsed == Self.reference(digits, lowercaseOnly: lowercaseOnly))
            }
        }
        let value = UInt64.random(in: .min ... .max)
        #expect(SpanID(hexString: SpanID(rawValue: value).description)?.rawValue == value)
        #expect(parseHex64(Array("0123456789abcde".utf8), lowercaseOnly: false) == nil)
    }
}
