import NIOCore
import Testing
import Tracing
import YoMoTracing
import YoMoWire

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
        "00-\(traceID)-\(spanID)-01", "00-\(traceID)-\(spanID)-00", "00-\(traceID)-\(spanID)-03",
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

    @Test("an invalid span context writes nothing")
    func invalidWritesNothing() {
        var metadata = Metadata()
        Self.tracer(.all).inject(SpanContext(traceID: .zero, spanID: SpanID(rawValue: 1)), into: &metadata)
        #expect(metadata.isEmpty)
    }
}
