import Logging
import ServiceLifecycle
import Synchronization
import Testing
import Tracing
@testable import YoMoTracing

@Suite struct IdentifierTests {
    @Test func randomTraceIDsAreValidLowercaseHexAndRoundTrip() {
        var seen = Set<TraceID>()
        for _ in 0..<2000 {
            let id = TraceID.random()
            #expect(id.isValid)
            let hex = id.description
            #expect(hex.count == 32)
            #expect(hex.allSatisfy { "0123456789abcdef".contains($0) })
            #expect(TraceID(hexString: hex) == id)
            #expect(id.bytes.count == 16)
            seen.insert(id)
        }
        #expect(seen.count == 2000)
    }

    @Test func randomSpanIDsAreValidLowercaseHexAndRoundTrip() {
        for _ in 0..<2000 {
            let id = SpanID.random()
            #expect(id.isValid)
            #expect(id.description.count == 16)
            #expect(id.description == id.description.lowercased())
            #expect(SpanID(hexString: id.description) == id)
        }
    }

    @Test func parsingRejectsMalformedIDs() {
        #expect(TraceID(hexString: "") == nil)
        #expect(TraceID(hexString: "0af7651916cd43dd8448eb211c80319") == nil)
        #expect(TraceID(hexString: "0af7651916cd43dd8448eb211c80319cc") == nil)
        #expect(TraceID(hexString: "0af7651916cd43dd8448eb211c80319g") == nil)
        #expect(TraceID(hexString: "0AF7651916CD43DD8448EB211C80319C", lowercaseOnly: true) == nil)
        #expect(TraceID(hexString: "0AF7651916CD43DD8448EB211C80319C")?.description == "0af7651916cd43dd8448eb211c80319c")
        #expect(SpanID(hexString: "b7ad6b716920333") == nil)
        #expect(SpanID(hexString: "b7ad6b71692033-3") == nil)
        #expect(TraceID(hexString: String(repeating: "0", count: 32))?.isValid == false)
        #expect(TraceID(high: 1, low: 2).bytes == [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2])
    }
}

@Suite struct SamplerTests {
    let root = SpanContext(traceID: TraceID.random(), spanID: SpanID.random())

    @Test func alwaysOnAndOff() {
        #expect(AlwaysOnSampler().shouldSample(parent: nil, traceID: .random(), name: "x", kind: .internal) == .recordAndSample)
        #expect(AlwaysOffSampler().shouldSample(parent: nil, traceID: .random(), name: "x", kind: .internal) == .drop)
    }

    @Test func traceIDRatioIsDeterministicAndProportional() {
        let half = TraceIDRatioBasedSampler(ratio: 0.5)
        var sampled = 0
        for _ in 0..<20_000 {
            let id = TraceID.random()
            let decision = half.shouldSample(parent: nil, traceID: id, name: "x", kind: .internal)
            #expect(decision == half.shouldSample(parent: nil, traceID: id, name: "y", kind: .server))
            if decision.isSampled { sampled += 1 }
        }
        #expect(sampled > 9_000 && sampled < 11_000)
        #expect(TraceIDRatioBasedSampler(ratio: 0).shouldSample(parent: nil, traceID: .random(), name: "x", kind: .internal) == .drop)
        #expect(TraceIDRatioBasedSampler(ratio: 1).shouldSample(parent: nil, traceID: .random(), name: "x", kind: .internal) == .recordAndSample)
        #expect(TraceIDRatioBasedSampler(ratio: 7).ratio == 1)
    }

    @Test func parentBasedFollowsTheParent() {
        let sampler = ParentBasedSampler(root: AlwaysOffSampler())
        var parent = root
        #expect(sampler.shouldSample(parent: nil, traceID: .random(), name: "x", kind: .internal) == .drop)
        #expect(sampler.shouldSample(parent: parent, traceID: parent.traceID, name: "x", kind: .internal) == .recordAndSample)
        parent.traceFlags = []
        #expect(sampler.shouldSample(parent: parent, traceID: parent.traceID, name: "x", kind: .internal) == .drop)
        parent.isRemote = true
        #expect(sampler.shouldSample(parent: parent, traceID: parent.traceID, name: "x", kind: .internal) == .drop)
        parent.traceFlags = .sampled
        #expect(sampler.shouldSample(parent: parent, traceID: parent.traceID, name: "x", kind: .internal) == .recordAndSample)
    }

    @Test func samplerFromEnvironment() {
        #expect(Samplers.fromEnvironment([:]).sampler.description == "ParentBased{root:AlwaysOnSampler}")
        #expect(Samplers.fromEnvironment(["OTEL_TRACES_SAMPLER": "always_off"]).sampler.description == "AlwaysOffSampler")
        #expect(Samplers.fromEnvironment(["OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"])
            .sampler.description == "TraceIDRatioBased{0.25}")
        #expect(Samplers.fromEnvironment(["OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"])
            .sampler.description == "ParentBased{root:TraceIDRatioBased{0.1}}")
        let invalid = Samplers.fromEnvironment(["OTEL_TRACES_SAMPLER": "sometimes"])
        #expect(invalid.warning != nil)
        #expect(invalid.sampler.description == "ParentBased{root:AlwaysOnSampler}")
        let badArgument = Samplers.fromEnvironment(["OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"])
        #expect(badArgument.warning != nil)
        #expect(badArgument.sampler.description == "TraceIDRatioBased{1.0}")
    }

    @Test func droppedRootSpansStillPropagateIDs() {
        let exporter = InMemorySpanExporter()
        let provider = makeProvider(environment: ["OTEL_TRACES_SAMPLER": "always_off"], exporter: exporter)
        let tracer = provider.tracer("test")
        let span = tracer.startSpan("dropped")
        #expect(!span.isRecording)
        let context = span.spanContext
        #expect(context?.isValid == true)
        #expect(context?.isSampled == false)
        span.attributes["ignored"] = 1
        span.end()
        #expect(exporter.spans.isEmpty)
    }

    @Test func hopSpansAreIDsWhenSampledOutAndSpansWhenRecorded() async throws {
        let parent = SpanContext(
            traceID: .random(), spanID: .random(), traceFlags: [], isRemote: true, traceState: "vendor=1")
        var incoming = ServiceContext.topLevel
        incoming.spanContext = SpanContext(traceID: .random(), spanID: .random())

        // Sampled out: no span object, only ids that continue the parent's trace.
        let offExporter = InMemorySpanExporter()
        let off = makeProvider(environment: ["OTEL_TRACES_SAMPLER": "always_off"], exporter: offExporter).tracer("hop")
        let dropped = try #require(off.startHopSpan("z", parent: parent, context: incoming, ofKind: .internal, at: DefaultTracerClock.now))
        #expect(!dropped.isRecording)
        #expect(dropped.spanContext.traceID == parent.traceID)
        #expect(dropped.spanContext.spanID != parent.spanID && dropped.spanContext.spanID.isValid)
        #expect(!dropped.spanContext.isSampled && !dropped.spanContext.isRemote)
        #expect(dropped.spanContext.traceState == "vendor=1")
        // Read as a span (for a log record under it), it carries the same ids.
        #expect(dropped.span(in: incoming).context.spanContext == dropped.spanContext)
        off.endHopSpan(dropped, "z", ofKind: .internal, at: DefaultTracerClock.now)
        #expect(offExporter.spans.isEmpty)

        // Recorded: only its ids and start while the hop runs; the span, made
        // as it ends, is what `startSpan` and `end` give for the same inputs.
        let onExporter = InMemorySpanExporter()
        let onProvider = makeProvider(exporter: onExporter)
        let onTracer = onProvider.tracer("hop")
        let recorded = try #require(onTracer.startHopSpan("z", parent: nil, context: incoming, ofKind: .internal, at: DefaultTracerClock.now))
        #expect(recorded.isRecording && recorded.spanContext.isSampled)
        // No parent given: a root (the data path passes the context's span as the parent itself).
        #expect(recorded.spanContext.traceID != incoming.spanContext?.traceID && recorded.spanContext.isValid)
        let fixed = FixedAttributes(.init("k", .int64(1)), .init("l", .int64(2)))
        onTracer.endHopSpan(recorded, "z", ofKind: .producer, at: DefaultTracerClock.now, fixedAttributes: fixed)
        await onProvider.forceFlush()
        #expect(onExporter.spans.count == 1)
        let exported = try #require(onExporter.spans.first)
        #expect(exported.context == recorded.spanContext && exported.name == "z" && exported.kind == .producer)
        #expect(exported.parentSpanID == nil)
        #expect(exported.startTimeNanoseconds > 0 && exported.startTimeNanoseconds <= exported.endTimeNanoseconds)
        #expect(exported.attributes.get("k") == .int64(1) && exported.attributes.get("l") == .int64(2))
        // Under a remote parent, with an error recorded as it ends: the same
        // parent fields, event and status a started span gets.
        let remote = SpanContext(traceID: .random(), spanID: .random(), traceFlags: .sampled, isRemote: true)
        onExporter.reset()
        let child = try #require(onTracer.startHopSpan("c", parent: remote, context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now))
        onTracer.endHopSpan(child, "c", ofKind: .internal, at: DefaultTracerClock.now, fixedAttributes: fixed) {
            $0.recordError(TracingError.shutdown("failed write"))
            $0.setStatus(SpanStatus(code: .error, message: "failed write"))
        }
        let reference = onTracer.startSpan("c", parent: remote, context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now, fixedAttributes: fixed)
        reference.recordError(TracingError.shutdown("failed write"))
        reference.setStatus(SpanStatus(code: .error, message: "failed write"))
        reference.end()
        await onProvider.forceFlush()
        try #require(onExporter.spans.count == 2)
        let (hop, started) = (onExporter.spans[0], onExporter.spans[1])
        #expect(hop.context.traceID == remote.traceID && hop.parentSpanID == remote.spanID && hop.parentIsRemote)
        #expect(hop.parentSpanID == started.parentSpanID && hop.parentIsRemote == started.parentIsRemote)
        #expect(hop.name == started.name && hop.kind == started.kind && hop.status == started.status)
        #expect(hop.events.map(\.name) == started.events.map(\.name) && hop.events.count == 1)
        #expect(hop.attributes == started.attributes)

        // Shut down: the context's ids pass through, as for any span of a disabled provider.
        await onProvider.shutdown()
        let late = onProvider.tracer("hop")
        #expect(late.startHopSpan("z", parent: parent, context: incoming, ofKind: .internal, at: DefaultTracerClock.now)?.spanContext
                == incoming.spanContext)
        #expect(late.startHopSpan("z", parent: parent, context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now) == nil)
    }

    @Test func hopSpansForwardAnUnsampledParentOnlyWhenTheyDoNotRecord() throws {
        let unsampled = SpanContext(traceID: .random(), spanID: .random(), traceFlags: [], isRemote: true, traceState: "vendor=1")
        let sampled = SpanContext(traceID: .random(), spanID: .random(), traceFlags: .sampled, isRemote: true)
        func hop(_ sampler: String, parent: SpanContext?, forwards: Bool = true) throws -> HopSpan {
            let tracer = makeProvider(environment: ["OTEL_TRACES_SAMPLER": sampler], exporter: InMemorySpanExporter()).tracer("hop")
            return try #require(tracer.startHopSpan(
                "z", parent: parent, context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now, forwardsUnsampledParent: forwards))
        }
        // Not recorded, under a parent not sampled: the parent's ids, as they came.
        for sampler in ["parentbased_always_on", "always_off", "parentbased_traceidratio"] {
            let forwarded = try hop(sampler, parent: unsampled)
            #expect(forwarded.isForwarded && !forwarded.isRecording, "\(sampler)")
            #expect(forwarded.spanContext == unsampled, "\(sampler)")
        }
        // Under a sampled parent, a hop that records nothing still has its own
        // ids: it tells the next hop not to sample, which the parent did not.
        let dropped = try hop("always_off", parent: sampled)
        #expect(!dropped.isForwarded && !dropped.isRecording)
        #expect(dropped.spanContext.traceID == sampled.traceID && dropped.spanContext.spanID != sampled.spanID)
        #expect(!dropped.spanContext.isSampled)
        // A hop that records is its own span whatever its parent said.
        let recorded = try hop("always_on", parent: unsampled)
        #expect(!recorded.isForwarded && recorded.isRecording && recorded.spanContext.spanID != unsampled.spanID)
        // A root has no parent to forward; without the option nothing is forwarded.
        let root = try hop("always_off", parent: nil)
        #expect(!root.isForwarded && root.spanContext.isValid)
        let own = try hop("always_off", parent: unsampled, forwards: false)
        #expect(!own.isForwarded && own.spanContext.spanID != unsampled.spanID && own.spanContext.traceID == unsampled.traceID)
    }

    @Test func spansForwardAnUnsampledParentAsALocalSpanOnItsIds() throws {
        let unsampled = SpanContext(traceID: .random(), spanID: .random(), traceFlags: [], isRemote: true, traceState: "vendor=1")
        // Children of an unsampled local parent are recorded; of a remote one, not.
        let exporter = InMemorySpanExporter()
        var configuration = TracerProvider.Configuration(environment: [:])
        configuration.sampler = ParentBasedSampler(root: AlwaysOnSampler(), localParentNotSampled: AlwaysOnSampler())
        let tracer = TracerProvider(configuration: configuration, processors: [SimpleSpanProcessor(exporter: exporter)]).tracer("f")
        let handler = tracer.startSpan(
            "handler", parent: unsampled, context: .topLevel, ofKind: .consumer, at: DefaultTracerClock.now, forwardsUnsampledParent: true)
        // Not recorded: the parent's ids, flags and tracestate, held as this process's.
        #expect(!handler.isRecording)
        let ids = try #require(handler.spanContext)
        #expect(ids.traceID == unsampled.traceID && ids.spanID == unsampled.spanID && ids.traceFlags == unsampled.traceFlags)
        #expect(ids.traceState == unsampled.traceState && !ids.isRemote)
        // A child is sampled as a child of a local span, as under a span id of the handler's own.
        let child = tracer.startSpan("child", context: handler.context, ofKind: .internal, at: DefaultTracerClock.now)
        #expect(child.isRecording)
        child.end()
        #expect(exporter.spans.map(\.parentSpanID) == [unsampled.spanID])
        // Without the option the handler's span has an id of its own.
        let own = tracer.startSpan("handler", parent: unsampled, context: .topLevel, ofKind: .consumer, at: DefaultTracerClock.now)
        #expect(own.spanContext?.spanID != unsampled.spanID && own.spanContext?.traceID == unsampled.traceID)
    }

    @Test func decisionsTakenWithoutAskingAreTheSamplersOwn() {
        struct Custom: Sampler {
            func shouldSample(parent: SpanContext?, traceID: TraceID, name: String, kind: SpanKind) -> SamplingDecision { .recordOnly }
            var description: String { "Custom" }
        }
        let samplers: [any Sampler] = [
            AlwaysOffSampler(), AlwaysOnSampler(), TraceIDRatioBasedSampler(ratio: 0.5), Custom(),
            ParentBasedSampler(root: AlwaysOnSampler()), ParentBasedSampler(root: TraceIDRatioBasedSampler(ratio: 0.5)),
            ParentBasedSampler(root: AlwaysOnSampler(), remoteParentNotSampled: AlwaysOnSampler()),
            ParentBasedSampler(root: AlwaysOffSampler(), remoteParentNotSampled: Custom()),
            ParentBasedSampler(root: AlwaysOnSampler(), remoteParentSampled: AlwaysOffSampler()),
            ParentBasedSampler(root: AlwaysOnSampler(), remoteParentSampled: Custom(), localParentSampled: Custom()),
        ]
        var parents: [SpanContext?] = [nil]
        for isRemote in [true, false] {
            for flags in [TraceFlags(), .sampled] {
                parents.append(SpanContext(traceID: .random(), spanID: .random(), traceFlags: flags, isRemote: isRemote))
                parents.append(SpanContext(traceID: .zero, spanID: .random(), traceFlags: flags, isRemote: isRemote))
            }
        }
        for sampler in samplers {
            let shared = TracerShared(resource: Resource(), sampler: sampler, limits: .default, processors: [])
            for parent in parents {
                let traceID = parent?.traceID ?? .random()
                #expect(shared.shouldSample(parent: parent, traceID: traceID, name: "s", kind: .internal)
                        == sampler.shouldSample(parent: parent, traceID: traceID, name: "s", kind: .internal), "\(sampler), \(String(describing: parent))")
            }
        }
    }

    @Test func samplersKnownToDropUnsampledRemoteChildrenLetHopsDecideAlone() async {
        func forwardsEvery(_ environment: [String: String]) -> Bool {
            makeProvider(environment: environment, exporter: InMemorySpanExporter()).tracer("hop").forwardsEveryUnsampledParent
        }
        #expect(forwardsEvery([:]))  // parentbased_always_on
        #expect(forwardsEvery(["OTEL_TRACES_SAMPLER": "always_off"]))
        #expect(forwardsEvery(["OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"]))
        #expect(!forwardsEvery(["OTEL_TRACES_SAMPLER": "always_on"]))
        #expect(!forwardsEvery(["OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.5"]))
        #expect(!TracerProvider.noop.tracer("hop").forwardsEveryUnsampledParent)
        let provider = makeProvider(exporter: InMemorySpanExporter())
        await provider.shutdown()
        #expect(!provider.tracer("hop").forwardsEveryUnsampledParent, "shut down: no span, nothing to forward")
    }
}

@Suite struct LimitsAndResourceTests {
    @Test func spanLimitsFromEnvironment() {
        #expect(SpanLimits.default.attributeCountLimit == 128)
        #expect(SpanLimits.default.eventCountLimit == 128)
        #expect(SpanLimits.default.linkCountLimit == 128)
        let limits = SpanLimits(environment: [
            "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "3", "OTEL_SPAN_EVENT_COUNT_LIMIT": "2",
            "OTEL_SPAN_LINK_COUNT_LIMIT": "1", "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT": "-4",
        ])
        #expect(limits.attributeCountLimit == 3)
        #expect(limits.eventCountLimit == 2)
        #expect(limits.linkCountLimit == 1)
        #expect(limits.attributePerEventCountLimit == 128)
        #expect(SpanLimits(environment: ["OTEL_ATTRIBUTE_COUNT_LIMIT": "5"]).attributeCountLimit == 5)
    }

    @Test func limitsDropAndCountTheExcess() throws {
        let exporter = InMemorySpanExporter()
        let provider = makeProvider(environment: [
            "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "3", "OTEL_SPAN_EVENT_COUNT_LIMIT": "2", "OTEL_SPAN_LINK_COUNT_LIMIT": "1",
        ], exporter: exporter)
        let tracer = provider.tracer("test")
        let other = tracer.startSpan("other")
        let span = tracer.startSpan("limited")
        span.attributes["a"] = 1
        span.attributes["b"] = 2
        span.attributes["c"] = 3
        span.attributes["d"] = 4
        span.attributes["a"] = 10  // replacing an existing key is not an addition
        span.updateAttributes { $0["e"] = 5; $0["f"] = 6 }
        for index in 0..<5 { span.addEvent(SpanEvent(name: "event \(index)")) }
        span.addLink(SpanLink(context: other.context, attributes: [:]))
        span.addLink(SpanLink(context: other.context, attributes: [:]))
        span.end()
        let finished = try #require(exporter.spans.first)
        #expect(finished.attributes.count == 3)
        #expect(finished.attributes.get("a") == .int64(10))
        #expect(finished.attributes.get("b") == .int64(2))
        #expect(finished.attributes.get("c") == .int64(3))
        #expect(finished.droppedAttributeCount == 3)
        #expect(finished.events.map(\.name) == ["event 0", "event 1"])
        #expect(finished.droppedEventCount == 3)
        #expect(finished.links.count == 1)
        #expect(finished.droppedLinkCount == 1)
    }

    @Test func listedAttributesShareKeysAndTheLimitWithTheDictionary() throws {
        let exporter = InMemorySpanExporter()
        let provider = makeProvider(environment: ["OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "3"], exporter: exporter)
        let span = provider.tracer("test").startSpan("mixed")
        span.setAttribute("a", .int64(1))
        span.setAttribute("b", .string("x"))
        span.setAttribute("a", .int64(2))
        #expect(span.attributes.get("a") == .int64(2))
        #expect(span.attributes.count == 2)
        span.attributes["c"] = 3
        span.setAttribute("d", .int64(4))  // over the limit: dropped
        span.setAttribute("b", .string("y"))  // a key the dictionary now holds: replaced
        span.end()
        span.setAttribute("e", .int64(5))  // after end: ignored
        let finished = try #require(exporter.spans.first)
        #expect(finished.attributes.count == 3)
        #expect(finished.attributes.get("a") == .int64(2))
        #expect(finished.attributes.get("b") == .string("y"))
        #expect(finished.attributes.get("c") == .int64(3))
        #expect(finished.droppedAttributeCount == 1)
    }

    @Test func attributesGivenAtStartCountAndChangeLikeSetOnes() throws {
        let exporter = InMemorySpanExporter()
        let provider = makeProvider(environment: ["OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "2"], exporter: exporter)
        let tracer = provider.tracer("test")
        let given = [
            ListedAttribute(key: "a", value: .int64(1)), ListedAttribute(key: "b", value: .string("x")),
            ListedAttribute(key: "c", value: .int64(3)),
        ]
        let span = tracer.startSpan("given", parent: nil, context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now, attributes: given)
        #expect(span.attributes.count == 2)  // the third is over the limit
        span.setAttribute("a", .int64(2))  // last write wins
        span.setAttribute("d", .int64(4))  // over the limit: dropped
        span.end()
        let finished = try #require(exporter.spans.first)
        #expect(finished.attributes.count == 2)
        #expect(finished.attributes.get("a") == .int64(2))
        #expect(finished.attributes.get("b") == .string("x"))
        #expect(finished.droppedAttributeCount == 2)

        // A span sampled out never builds them.
        let off = makeProvider(environment: ["OTEL_TRACES_SAMPLER": "always_off"], exporter: InMemorySpanExporter())
        let built = Atomic<Int>(0)
        func counted() -> [ListedAttribute] {
            built.add(1, ordering: .relaxed)
            return given
        }
        let unrecorded = off.tracer("test").startSpan(
            "off", parent: nil, context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now, attributes: counted()
        )
        #expect(!unrecorded.isRecording)
        #expect(built.load(ordering: .relaxed) == 0)
        let recorded = tracer.startSpan("on", parent: nil, context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now, attributes: counted())
        #expect(built.load(ordering: .relaxed) == 1)
        recorded.end()
    }

    @Test func fixedAttributesCountAndChangeLikeOthers() throws {
        let exporter = InMemorySpanExporter()
        let provider = makeProvider(environment: ["OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "4"], exporter: exporter)
        let tracer = provider.tracer("test")
        let fixed = FixedAttributes(.init("tag", .int64(0x33)), .init("type", .string("async_handler")), .init("length", .int64(-1)))

        // Read back as ordinary attributes, and exported as given.
        let plain = tracer.startSpan("plain", parent: nil, context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now, fixedAttributes: fixed)
        #expect(plain.attributes.get("type") == .string("async_handler"))
        plain.end()
        var finished = try #require(exporter.spans.last)
        #expect(finished.attributes.count == 3)
        #expect(finished.attributes.get("tag") == .int64(0x33) && finished.attributes.get("length") == .int64(-1))

        // A set attribute replaces a fixed one of its key; all share the limit.
        let changed = tracer.startSpan("changed", parent: nil, context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now, fixedAttributes: fixed)
        changed.setAttribute("tag", .string("replaced"))
        changed.setAttribute("new", .int64(1))
        changed.setAttribute("over", .int64(2))  // a fifth: dropped
        changed.attributes["type"] = "mapped"
        changed.end()
        finished = try #require(exporter.spans.last)
        #expect(finished.attributes.count == 4)
        #expect(finished.attributes.get("tag") == .string("replaced") && finished.attributes.get("type") == .string("mapped"))
        #expect(finished.attributes.get("length") == .int64(-1) && finished.attributes.get("new") == .int64(1))
        #expect(finished.droppedAttributeCount == 1)

        // Beyond the limit, the last ones given are dropped and counted.
        let tight = makeProvider(environment: ["OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "1"], exporter: exporter).tracer("test")
        tight.startSpan("tight", parent: nil, context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now, fixedAttributes: fixed).end()
        finished = try #require(exporter.spans.last)
        #expect(finished.attributes.count == 1 && finished.attributes.get("tag") == .int64(0x33))
        #expect(finished.droppedAttributeCount == 2)
    }

    @Test func resourceDetection() {
        let resource = Resource.detect(environment: [
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=a%20b, bad ,service.name=from-attributes",
        ])
        #expect(resource.serviceName == "from-attributes")
        #expect(resource.attributes.get("deployment.environment") == .string("prod"))
        #expect(resource.attributes.get("team") == .string("a b"))
        #expect(resource.attributes.get("telemetry.sdk.name") == .string("swift-yomo"))
        #expect(resource.attributes.get("telemetry.sdk.language") == .string("swift"))
        #expect(resource.attributes.get("telemetry.sdk.version") == .string(YoMoTracingSDK.version))
        #expect(resource.attributes.get("host.name") != nil)
        #expect(resource.attributes.get("process.pid") != nil)
        let named = Resource.detect(environment: ["OTEL_SERVICE_NAME": "from-env", "OTEL_RESOURCE_ATTRIBUTES": "service.name=x"])
        #expect(named.serviceName == "from-env")
        #expect(Resource.detect(serviceName: "from-code", environment: ["OTEL_SERVICE_NAME": "from-env"]).serviceName == "from-code")
        #expect(Resource.detect(environment: [:]).serviceName?.hasPrefix("unknown_service:") == true)
    }
}

@Suite struct TracerTests {
    @Test func withSpanMakesChildrenThroughServiceContext() async throws {
        let exporter = InMemorySpanExporter()
        let provider = makeProvider(exporter: exporter)
        let tracer = provider.tracer(scope: InstrumentationScope(name: "StreamFunction", version: "1.0"))
        try await tracer.withSpan("parent", ofKind: .consumer) { parent in
            parent.attributes["recv_data_tag"] = 0x33
            await tracer.withSpan("child") { child in
                await Task.yield()
                child.attributes["nested"] = true
            }
            tracer.withSpan("sync child") { _ in }
            #expect(ServiceContext.current?.spanContext == parent.spanContext)
            _ = try await Task { try #require(ServiceContext.current?.spanContext) }.value
        }
        let spans = exporter.spans
        #expect(spans.map(\.name) == ["child", "sync child", "parent"])
        let parent = spans[2]
        #expect(parent.parentSpanID == nil)
        #expect(parent.kind == .consumer)
        #expect(parent.scope == InstrumentationScope(name: "StreamFunction", version: "1.0"))
        #expect(parent.resource.serviceName == "test-service")
        for child in spans[0..<2] {
            #expect(child.context.traceID == parent.context.traceID)
            #expect(child.parentSpanID == parent.context.spanID)
            #expect(child.parentIsRemote == false)
        }
        #expect(parent.endTimeNanoseconds >= parent.startTimeNanoseconds)
    }

    /// What the YoMo layer does around a handler: the sfn tracer as the task-local
    /// tracer (no global bootstrap) and the frame span as the current context, so
    /// the free `withSpan` used by user code and libraries nests under the frame.
    @Test func globalWithSpanInsideAHandlerJoinsTheFrameTrace() async throws {
        let exporter = InMemorySpanExporter()
        let tracer = makeProvider(exporter: exporter).tracer("StreamFunction")
        let frameSpan = tracer.startSpan("uppercase", context: .topLevel, ofKind: .consumer)
        await withTracer(tracer) {
            await ServiceContext.withValue(frameSpan.context) {
                await withSpan("library call") { span in
                    await Task.yield()
                    span.attributes["db.system"] = "redis"
                }
            }
        }
        frameSpan.end()
        let spans = exporter.spans
        #expect(spans.map(\.name) == ["library call", "uppercase"])
        #expect(spans.first?.parentSpanID == frameSpan.spanContext?.spanID)
        #expect(spans.first?.context.traceID == frameSpan.spanContext?.traceID)
        #expect(spans.first?.scope.name == "StreamFunction")
    }

    @Test func thrownErrorsSetErrorStatusAndRecordAnException() throws {
        struct HandlerFailed: Error {}
        let exporter = InMemorySpanExporter()
        let tracer = makeProvider(exporter: exporter).tracer("test")
        #expect(throws: HandlerFailed.self) {
            try tracer.withSpan("failing") { _ in throw HandlerFailed() }
        }
        let span = try #require(exporter.spans.first)
        #expect(span.status?.code == .error)
        #expect(span.events.first?.name == "exception")
        #expect(span.events.first?.attributes.get("exception.type") != nil)
    }

    @Test func statusOkIsFinalAndEndIsOnce() throws {
        let exporter = InMemorySpanExporter()
        let tracer = makeProvider(exporter: exporter).tracer("test")
        let span = tracer.startSpan("s")
        span.setStatus(SpanStatus(code: .error, message: "boom"))
        span.setStatus(SpanStatus(code: .ok))
        span.setStatus(SpanStatus(code: .error, message: "later"))
        span.operationName = "renamed"
        span.end()
        span.end()
        span.attributes["after"] = "end"
        #expect(!span.isRecording)
        #expect(exporter.spans.count == 1)
        let finished = try #require(exporter.spans.first)
        #expect(finished.status?.code == .ok)
        #expect(finished.name == "renamed")
        #expect(finished.attributes.get("after") == nil)
    }

    @Test func typedAttributesEventsAndLinks() throws {
        let exporter = InMemorySpanExporter()
        let tracer = makeProvider(exporter: exporter).tracer("test")
        let linked = tracer.startSpan("linked")
        let span = tracer.startSpan("typed", ofKind: .producer)
        span.attributes["string"] = "s"
        span.attributes["int"] = 42
        span.attributes["double"] = 1.5
        span.attributes["bool"] = true
        span.attributes["strings"] = ["a", "b"]
        span.attributes["ints"] = [1, 2, 3]
        span.attributes["doubles"] = [0.5, 1.5]
        span.attributes["bools"] = [true, false]
        span.addEvent(SpanEvent(name: "received", attributes: ["bytes": 10]))
        span.addLink(SpanLink(context: linked.context, attributes: ["why": "batch"]))
        span.end()
        let finished = try #require(exporter.spans.first)
        #expect(finished.attributes.count == 8)
        #expect(finished.attributes.get("ints") != nil)  // exported as integers, see OTLPTests
        #expect(finished.attributes.get("bools") == .boolArray([true, false]))
        #expect(finished.events.first?.attributes.get("bytes") == .int64(10))
        #expect(finished.links.first?.context.spanID == linked.spanContext?.spanID)
        #expect(finished.kind == .producer)
    }

    @Test func disabledProviderPassesTheParentContextThrough() {
        let exporter = InMemorySpanExporter()
        let provider = makeProvider(environment: ["OTEL_SDK_DISABLED": "true"], exporter: exporter)
        #expect(!provider.isEnabled)
        let tracer = provider.tracer("test")
        #expect(!tracer.isEnabled)
        var incoming = ServiceContext.topLevel
        incoming.spanContext = SpanContext(traceID: .random(), spanID: .random(), isRemote: true)
        let span = tracer.startSpan("ignored", context: incoming)
        #expect(!span.isRecording)
        #expect(span.spanContext == incoming.spanContext)
        span.end()
        #expect(exporter.spans.isEmpty)
        #expect(!TracerProvider.noop.isEnabled)
        #expect(!TracerProvider.fromEnvironment(environment: [:]).isEnabled)
        #expect(!TracerProvider.fromEnvironment(environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
                                                             "OTEL_SDK_DISABLED": "TRUE"]).isEnabled)
        #expect(!TracerProvider.fromEnvironment(environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
                                                             "OTEL_TRACES_EXPORTER": "none"]).isEnabled)
    }

    @Test func fromEnvironmentEnablesOTLPWhenAnEndpointIsSet() async {
        let provider = TracerProvider.fromEnvironment(
            serviceName: "svc", environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"]
        )
        #expect(provider.isEnabled)
        #expect(provider.resource.serviceName == "svc")
        await provider.shutdown()
        #expect(!provider.tracer("x").startSpan("after shutdown").isRecording)
    }

    @Test func runsAsAServiceAndShutsDownWithTheGroup() async throws {
        let exporter = InMemorySpanExporter()
        let provider = makeProvider(exporter: exporter)
        let group = ServiceGroup(services: [provider], logger: CapturedLogs().logger())
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            provider.tracer("svc").startSpan("during").end()
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(exporter.spans.map(\.name) == ["during"])
        #expect(exporter.isShutdown)
    }

    @Test func spansAfterShutdownAreNotRecorded() async {
        let exporter = InMemorySpanExporter()
        let provider = makeProvider(exporter: exporter)
        await provider.shutdown()
        #expect(exporter.isShutdown)
        let span = provider.tracer("t").startSpan("late")
        #expect(!span.isRecording)
        span.end()
        #expect(exporter.spans.isEmpty)
    }
}
