import NIOCore
import Testing
import Tracing
import YoMoTracing
@testable import YoMoWire

@testable import YoMo

/// The data path reads and writes trace context without strings (trace values
/// held as numbers in `Metadata`); these tests hold it to exactly what
/// `TraceContextPropagator` does with the same metadata as text.
@Suite("Trace context on the data path")
struct PropagationFastPathTests {
    static let formatChoices: [TraceContextPropagator.Formats] = [.all, .traceContext, .yomo, []]

    static func tracer(_ formats: TraceContextPropagator.Formats) -> DataPathTracer {
        var configuration = TracerProvider.Configuration(environment: [:])
        configuration.propagation = formats
        return DataPathTracer(tracer: TracerProvider(configuration: configuration, processors: []).tracer("test"))
    }

    /// Metadata as frames bring it: encoded by a peer, then decoded here, so
    /// canonical values are held as numbers and other forms as text.
    static func decoded(_ entries: [(String, String)]) throws -> Metadata {
        var metadata = Metadata()
        for (key, value) in entries { metadata[key] = value }
        return try Metadata(decoding: metadata.encoded())
    }

    static let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
    static let spanID = "00f067aa0ba902b7"
    static let traceparents = [
        "00-\(traceID)-\(spanID)-01", "00-\(traceID)-\(spanID)-00", "00-\(traceID)-\(spanID)-03", "00-\(traceID)-\(spanID)-02",
        "00-00000000000000000000000000000000-\(spanID)-01", "00-\(traceID)-0000000000000000-01",
        "00-\(traceID.uppercased())-\(spanID)-01", " 00-\(traceID)-\(spanID)-01 ", "01-\(traceID)-\(spanID)-01-future",
        "ff-\(traceID)-\(spanID)-01", "garbage",
    ]
    static let traceIDs = [traceID, traceID.uppercased(), "00000000000000000000000000000000", "short"]
    static let spanIDs = [spanID, spanID.uppercased(), "0000000000000000", "xyz"]
    static let traceStates = [nil, "congo=t61rcWkgMzE", "  spaced=1  ", String(repeating: "a", count: 600)]

    /// Every combination of the values above (present or absent).
    static func carriers() throws -> [Metadata] {
        var result: [Metadata] = []
        for traceparent in [nil] + traceparents {
            for (traceIDValue, spanIDValue) in [(nil, nil)] + zip(traceIDs, spanIDs).map({ ($0, $1) }) + [(traceID, "xyz"), (traceID, nil)] {
                for traceState in traceStates {
                    var entries = [("yomo-tid", "V1StGXR8_Z5jdHi6B-myT")]
                    if let traceparent { entries.append(("traceparent", traceparent)) }
                    if let traceState { entries.append(("tracestate", traceState)) }
                    if let traceIDValue { entries.append(("yomo-trace-id", traceIDValue)) }
                    if let spanIDValue { entries.append(("yomo-span-id", spanIDValue)) }
                    result.append(try decoded(entries))
                }
            }
        }
        return result
    }

    @Test("extraction finds the parent the propagator finds, for every format choice and carrier")
    func extractionAgrees() throws {
        let carriers = try Self.carriers()
        #expect(carriers.count > 300)
        for formats in Self.formatChoices {
            let tracing = Self.tracer(formats)
            let propagator = TraceContextPropagator(formats: formats)
            var found = 0
            for carrier in carriers {
                let expected = propagator.extract(from: carrier, using: MetadataExtractor())
                #expect(tracing.extractParent(from: carrier) == expected, "\(formats.rawValue): \(carrier)")
                if expected != nil { found += 1 }
            }
            // The corpus exercises both outcomes for every choice that reads anything.
            if !formats.isEmpty { #expect(found > 0 && found < carriers.count) }
        }
    }

    @Test("injection writes what the propagator writes, to the byte")
    func injectionAgrees() throws {
        var generator = SystemRandomNumberGenerator()
        let starts = try [Metadata(), Self.carriers()[7], Self.carriers()[200]] + [Self.decoded([("traceparent", "00-\(Self.traceID)-\(Self.spanID)-01")])]
        for formats in Self.formatChoices {
            let tracing = Self.tracer(formats)
            let propagator = TraceContextPropagator(formats: formats)
            for start in starts {
                for traceState in ["", "vendor=1"] {
                    let spanContext = SpanContext(
                        traceID: TraceID(high: generator.next(), low: generator.next() | 1),
                        spanID: SpanID(rawValue: generator.next() | 1),
                        traceFlags: Bool.random() ? .sampled : [], traceState: traceState)
                    var numbers = start
                    tracing.inject(spanContext, into: &numbers)
                    var text = start
                    propagator.inject(spanContext, into: &text, using: MetadataInjector())
                    #expect(numbers == text)
                    #expect(numbers.encoded() == text.encoded())
                    // And the next hop reads back this span as the parent.
                    if !formats.isEmpty {
                        let parent = try #require(tracing.extractParent(from: try Metadata(decoding: numbers.encoded())))
                        #expect(parent.traceID == spanContext.traceID && parent.spanID == spanContext.spanID)
                    }
                }
            }
        }
    }

    @Test("a source's metadata with its span's ids written after the entries is the bytes injection then encoding give")
    func sourceMetadataAgrees() throws {
        var fifteen = Metadata()
        for index in 0..<15 { fifteen["key-\(index)"] = "value-\(index)" }
        let starts: [Metadata] = [
            Metadata(), ["yomo-source-id": "V1StGXR8_Z5jdHi6B-myT", "yomo-tid": "abc", "yomo-target": "t"], fifteen,
            // Trace keys already there (a writer's own): replaced in place by the general path.
            try Self.carriers()[7], try Self.decoded([("traceparent", "00-\(Self.traceID)-\(Self.spanID)-01")]),
        ]
        var generator = SystemRandomNumberGenerator()
        for formats in Self.formatChoices {
            let tracing = Self.tracer(formats)
            for start in starts {
                for traceState in ["", "vendor=1"] {
                    var parent = ServiceContext.topLevel
                    parent.spanContext = SpanContext(
                        traceID: TraceID(high: generator.next(), low: generator.next() | 1), spanID: SpanID(rawValue: generator.next() | 1),
                        traceFlags: .sampled, traceState: traceState)
                    let span = try #require(ServiceContext.withValue(parent) { tracing.sourceSpan(name: "source") })
                    var injected = start
                    tracing.inject(span.spanContext, into: &injected)
                    let written = tracing.metadata(start, carrying: span)
                    #expect(written == injected.encoded(), "\(formats.rawValue), \(start.count) entries, tracestate \(traceState)")
                    #expect(try Metadata(decoding: written) == injected)
                    tracing.endSourceSpan(span, name: "source", tag: 0x33, length: 16)
                }
            }
        }
        // No span, or a disabled tracer: the metadata as it is.
        let plain: Metadata = ["yomo-tid": "abc"]
        #expect(Self.tracer(.all).metadata(plain, carrying: nil) == plain.encoded())
    }

    @Test("the zipper's in-place path finds the parent extraction finds, or leaves the frame to it")
    func inPlaceParentAgrees() throws {
        let carriers = try Self.carriers()
        for formats in Self.formatChoices {
            let tracing = Self.tracer(formats)
            var inPlace = 0
            for carrier in carriers {
                let view = try #require(MetadataView(carrier.encoded()))
                guard let trace = view.canonicalTrace else {
                    // Only a tracestate or a value not in canonical form sends a frame to the general path.
                    let canonical = [MetadataView.Key.traceparent, .traceID, .spanID].allSatisfy { key in
                        guard let text = view.string(key) else { return true }
                        return Array(text.utf8).withUnsafeBytes { StoredValue(key.traceKey!, $0) } != nil
                    }
                    #expect(view.contains(.tracestate) || !canonical, "\(carrier)")
                    continue
                }
                #expect(!view.contains(.tracestate))
                // Each value as parsing it alone reads it (a trace id equal to
                // traceparent's is read once, from traceparent).
                func parsed(_ key: MetadataView.Key) -> StoredValue? {
                    view.string(key).flatMap { text in Array(text.utf8).withUnsafeBytes { StoredValue(key.traceKey!, $0) } }
                }
                #expect(trace.traceparent.map(StoredValue.traceparent) == parsed(.traceparent))
                #expect(trace.traceID.map { StoredValue.traceID(high: $0.high, low: $0.low) } == parsed(.traceID))
                #expect(trace.spanID.map(StoredValue.spanID) == parsed(.spanID))
                guard let parent = tracing.parent(in: trace, formats: formats) else { continue }
                inPlace += 1
                #expect(parent == tracing.extractParent(from: view.traceMetadata), "\(formats.rawValue): \(carrier)")
                #expect(parent == tracing.extractParent(from: carrier), "\(formats.rawValue): \(carrier)")
            }
            // The corpus has canonical parents for every choice that reads any format.
            if !formats.isEmpty { #expect(inPlace >= 5, "\(formats.rawValue): \(inPlace)") }
        }
    }

    @Test("digits written in place are the bytes the general path writes")
    func inPlacePatchAgrees() throws {
        var generator = SystemRandomNumberGenerator()
        var compared = 0
        for formats in Self.formatChoices {
            let tracing = Self.tracer(formats)
            for carrier in try Self.carriers() {
                let view = try #require(MetadataView(carrier.encoded()))
                guard let trace = view.canonicalTrace else { continue }
                // A new trace id, and each trace id present: a child keeps its
                // parent's, which the patch then leaves as it is.
                let traceIDs = [TraceID(high: generator.next(), low: generator.next() | 1)]
                    + [trace.traceparent.map { TraceID(high: $0.traceIDHigh, low: $0.traceIDLow) },
                       trace.traceID.map { TraceID(high: $0.high, low: $0.low) }].compactMap { $0 }.filter(\.isValid)
                for wantedTarget in [nil, "sink"] {
                  for traceID in traceIDs {
                    let spanContext = SpanContext(
                        traceID: traceID, spanID: SpanID(rawValue: generator.next() | 1), traceFlags: Bool.random() ? .sampled : [])
                    var changes = Metadata()
                    if let wantedTarget { changes[Metadata.ReservedKey.wantedTarget] = wantedTarget }
                    var general = view.traceMetadata
                    tracing.inject(spanContext, into: &general)
                    var merged = changes
                    merged.merge(general)
                    let expected = view.applying(merged)
                    let patch = try #require(DataPathTracer.patch(spanContext, formats: formats))
                    let inPlace = view.applying(changes, trace: patch)
                    // Skipping the digits that stay the same changes no byte.
                    let overPresent = view.applying(changes, trace: patch, over: trace)
                    // The in-place path runs only when every key it writes is there; then it agrees.
                    let keysPresent = (!formats.contains(.traceContext) || trace.traceparent != nil)
                        && (!formats.contains(.yomo) || (trace.traceID != nil && trace.spanID != nil))
                    if keysPresent {
                        #expect(inPlace != nil && inPlace == expected, "\(formats.rawValue): \(carrier)")
                        #expect(overPresent == expected, "\(formats.rawValue), \(traceID): \(carrier)")
                        if changes.isEmpty {
                            // The zipper's usual case: the digits written as the frame is encoded.
                            let whileEncoding = view.patch(patch, over: trace).map { $0.applied(to: view.bytes) }
                            #expect(whileEncoding == expected, "\(formats.rawValue), \(traceID): \(carrier)")
                        }
                        compared += 1
                    } else {
                        #expect(inPlace == nil && overPresent == nil)
                    }
                  }
                }
            }
        }
        #expect(compared > 50)
        // A tracestate to hand on is left to the general path.
        let withState = SpanContext(traceID: TraceID(high: 1, low: 2), spanID: SpanID(rawValue: 3), traceState: "vendor=1")
        #expect(DataPathTracer.patch(withState, formats: .all) == nil)
        #expect(DataPathTracer.patch(withState, formats: .yomo) != nil)
    }

    @Test("""
        a stream function finds the decoded metadata's parent in place, and its writes carry the received bytes \
        with its ids written over them: the bytes encoding gives; under a parent not sampled, the parent's ids
        """)
    func functionResendsReceivedBytes() throws {
        for formats in Self.formatChoices {
            let tracing = Self.tracer(formats)
            var resent = 0, encoded = 0, parents = 0, forwardedAsCame = 0
            for carrier in try Self.carriers() {
                let received = carrier.encoded()
                var metadata = try Metadata(decoding: received)
                let view = MetadataView(received)
                #expect(metadata == carrier && view != nil)
                // The parent read in place (with or without the canonical values) is the decoding path's.
                let parent = tracing.extractParent(from: view!, trace: view!.canonicalTrace)
                #expect(parent == tracing.extractParent(from: metadata), "\(formats.rawValue): \(carrier)")
                #expect(parent == tracing.extractParent(from: view!, trace: nil), "\(formats.rawValue): \(carrier)")
                if parent != nil { parents += 1 }
                let span = tracing.functionSpan(name: "f", handlerType: "async_handler", tag: 1, length: 1, metadata: &metadata)
                defer { span?.end() }
                guard let resendable = tracing.resendable(view, after: span) else {
                    // Only a key the formats write being absent or odd-sized, or a tracestate, sends it to encoding.
                    #expect(view!.contains(.tracestate) || !formats.isEmpty, "\(formats.rawValue): \(carrier)")
                    encoded += 1
                    continue
                }
                resent += 1
                #expect(resendable.patched == metadata.encoded(), "\(formats.rawValue): \(carrier)")
                // Digits that stay the same may be skipped: the same bytes.
                let overPresent = tracing.resendable(view, after: span, over: view!.canonicalTrace)
                #expect(overPresent?.patched == metadata.encoded(), "\(formats.rawValue): \(carrier)")
                // Under a parent not sampled (the default sampler records none of
                // its children) the span is the parent's ids, and a frame that
                // already carries them as written goes on with nothing to write.
                if let parent, !parent.isSampled {
                    var local = parent
                    local.isRemote = false
                    #expect(span?.spanContext == local, "\(formats.rawValue): \(carrier)")
                    if let trace = view!.canonicalTrace, DataPathTracer.unsampledParentAsWritten(in: trace, formats: formats) != nil {
                        #expect(overPresent?.patch == nil && overPresent?.patched == received, "\(formats.rawValue): \(carrier)")
                        forwardedAsCame += 1
                    }
                }
                // A handler reading its metadata gets it decoded then, with the ids
                // written in as functionSpan writes them; keys read one by one agree.
                #expect(resendable.metadata() == metadata, "\(formats.rawValue): \(carrier)")
                #expect(resendable.metadata() == metadata, "read again (kept): \(formats.rawValue): \(carrier)")
                for key in metadata.map(\.key) + MetadataView.Key.allCases.map(\.string) + ["absent", ""] {
                    #expect(resendable.value(key) == metadata[key], "\(formats.rawValue): \(key) in \(carrier)")
                }
                #expect(resendable.bytes == received)  // the received bytes themselves are left as they were
            }
            #expect(resent > 20, "\(formats.rawValue): \(resent) resent, \(encoded) encoded")
            // Found often, and not always (no format: never).
            let carriers = try Self.carriers().count
            #expect(formats.isEmpty ? parents == 0 : parents > 20 && parents < carriers - 20, "\(formats.rawValue): \(parents) of \(carriers)")
            if !formats.isEmpty { #expect(encoded > 20, "\(formats.rawValue): \(resent) resent, \(encoded) encoded") }
            // Only traceparent says "not sampled" (the YoMo keys carry no flags).
            #expect(formats.contains(.traceContext) ? forwardedAsCame >= 1 : forwardedAsCame == 0, "\(formats.rawValue): \(forwardedAsCame)")
        }
        // Tracing off: the received bytes go out unchanged.
        let view = MetadataView(try Self.carriers()[7].encoded())
        var metadata = try Metadata(decoding: Self.carriers()[7].encoded())
        #expect(DataPathTracer.disabled.functionSpan(name: "f", handlerType: "h", tag: 1, length: 1, metadata: &metadata) == nil)
        let expected = try Self.carriers()[7].encoded()
        #expect(DataPathTracer.disabled.resendable(view, after: nil)?.patched == expected)
    }

    @Test("""
        a zipper hop that records nothing, under a parent not sampled, hands the parent's ids on: in place, \
        nothing is written when the frame already carries them, and otherwise the bytes are the general path's
        """)
    func unrecordedHopForwardsUnsampledParent() throws {
        /// Not one the tracer knows: asked span by span (the general route).
        struct DropsEverything: Sampler {
            func shouldSample(parent: SpanContext?, traceID: TraceID, name: String, kind: SpanKind) -> SamplingDecision { .drop }
            var description: String { "DropsEverything" }
        }
        // parentbased_always_on and always_off are decided from the frame alone.
        let samplers: [any Sampler] = [ParentBasedSampler(root: AlwaysOnSampler()), AlwaysOffSampler(), DropsEverything()]
        var forwardedUnchanged = 0, forwardedRewritten = 0
        for (formats, sampler) in Self.formatChoices.flatMap({ formats in samplers.map { (formats, $0) } }) {
            var configuration = TracerProvider.Configuration(environment: [:])
            configuration.propagation = formats
            configuration.sampler = sampler
            let tracing = DataPathTracer(tracer: TracerProvider(configuration: configuration, processors: []).tracer("test"))
            #expect(tracing.tracer.forwardsEveryUnsampledParent == !(sampler is DropsEverything))
            for carrier in try Self.carriers() {
                let view = try #require(MetadataView(carrier.encoded()))
                guard let trace = view.canonicalTrace,
                      let started = tracing.zipperSpan(trace: trace, context: .topLevel),
                      let span = started.span, let patch = started.patch
                else { continue }
                let parent = try #require(tracing.parent(in: trace, formats: formats))
                #expect(span.isForwarded == !parent.isSampled, "\(formats.rawValue): \(carrier)")
                guard span.isForwarded else { tracing.endZipperSpan(span, tag: 1, length: 1); continue }
                #expect(span.spanContext == parent)
                // The general path (decode, inject, encode) forwards the same parent.
                var general = view.traceMetadata
                let generalSpan = try #require(tracing.zipperSpan(metadata: &general, context: .topLevel))
                #expect(generalSpan.isForwarded && generalSpan.spanContext == parent)
                let expected = view.applying(general)
                #expect(view.applying(Metadata(), trace: patch, over: trace) == expected, "\(formats.rawValue): \(carrier)")
                if patch.isEmpty {
                    // Nothing to write: the frame already carries what inject writes.
                    #expect(expected == view.bytes, "\(formats.rawValue): \(carrier)")
                    forwardedUnchanged += 1
                } else {
                    // E.g. YoMo keys that disagree with traceparent: written as the parent's.
                    #expect(expected != view.bytes)
                    forwardedRewritten += 1
                }
            }
        }
        #expect(forwardedUnchanged >= 9 && forwardedRewritten >= 3, "\(forwardedUnchanged), \(forwardedRewritten)")
    }

    @Test("the in-place zipper span starts nothing when the frame lacks a key the formats write")
    func inPlaceLeavesMissingKeys() throws {
        let tracing = Self.tracer(.all)
        let onlyTraceparent = try #require(MetadataView(
            Self.decoded([("traceparent", "00-\(Self.traceID)-\(Self.spanID)-01")]).encoded()))
        let trace = try #require(onlyTraceparent.canonicalTrace)
        #expect(tracing.zipperSpan(trace: trace, context: .topLevel) == nil)
        let both = try #require(MetadataView(Self.decoded([
            ("traceparent", "00-\(Self.traceID)-\(Self.spanID)-01"),
            ("yomo-trace-id", Self.traceID), ("yomo-span-id", Self.spanID),
        ]).encoded()))
        let bothTrace = try #require(both.canonicalTrace)
        let started = try #require(tracing.zipperSpan(trace: bothTrace, context: .topLevel))
        #expect(started.patch != nil)
        #expect(started.span?.spanContext.traceID.description == Self.traceID)
        tracing.endZipperSpan(started.span, tag: 1, length: 1)
    }

    @Test("an invalid span context writes nothing")
    func invalidWritesNothing() {
        var metadata = Metadata()
        Self.tracer(.all).inject(SpanContext(traceID: .zero, spanID: SpanID(rawValue: 1)), into: &metadata)
        #expect(metadata.isEmpty)
    }
}
