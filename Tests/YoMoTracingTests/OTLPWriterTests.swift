import Foundation
import Testing
import Tracing
@testable import YoMoTracing

/// The exporters' hand-written protobuf (`OTLPTraceWriter`) must produce the
/// bytes protobuf-c packs for the same spans (`OTLPTraceEncoding.encodeRequest`).
/// `OTLPReceiverTests` decode what the exporter sends with the official
/// opentelemetry-proto package.
@Suite struct OTLPTraceWriterTests {
    struct FixedInstant: TracerInstant {
        var nanosecondsSinceEpoch: UInt64
        static func < (lhs: Self, rhs: Self) -> Bool { lhs.nanosecondsSinceEpoch < rhs.nanosecondsSinceEpoch }
    }

    struct Custom: CustomStringConvertible, Sendable {
        var description: String { "custom ✓" }
    }

    func reference(_ spans: [FinishedSpan]) -> [UInt8] {
        OTLPTraceEncoding.encodeRequest(spans)
    }

    func written(_ spans: [FinishedSpan]) -> [UInt8] {
        var writer = OTLPTraceWriter(capacity: 64)
        return writer.encodeRequest(spans)
    }

    /// Where two bodies first differ (nil when equal): a short failure message
    /// instead of two printed bodies.
    func mismatch(_ spans: [FinishedSpan]) -> String? {
        let (actual, expected) = (written(spans), reference(spans))
        guard actual != expected else { return nil }
        let offset = actual.indices.first { $0 >= expected.count || actual[$0] != expected[$0] } ?? expected.count
        return "\(actual.count) vs \(expected.count) bytes, first difference at \(offset): "
            + "\(actual[offset...].prefix(8)) vs \(expected[offset...].prefix(8))"
    }

    /// Every value type, at the sizes where varints and length prefixes change width.
    static let values: [SpanAttribute] = [
        .string(""), .string("x"), .string("ünïcødé 🚀"), .string(String(repeating: "a", count: 127)),
        .string(String(repeating: "b", count: 128)), .string(String(repeating: "c", count: 16_383)),
        .string(String(repeating: "d", count: 16_384)), .string("before\0after"),
        .bool(true), .bool(false),
        .int32(0), .int32(-1), .int32(.min), .int32(.max),
        .int64(0), .int64(1), .int64(127), .int64(128), .int64(-1), .int64(.min), .int64(.max),
        .double(0), .double(-0.0), .double(1.5), .double(-2.25e300), .double(.infinity), .double(.nan),
        .double(.leastNonzeroMagnitude),
        .stringArray([]), .stringArray(["", "a", "ü"]), .stringArray((0..<40).map { "element \($0)" }),
        .boolArray([true, false]), .int32Array([0, -5, .max]), .int64Array([.min, 0, 300]),
        .doubleArray([0, -1.5, 3e-10]),
        .stringConvertible(Custom()), .stringConvertible(42),
        .stringConvertibleArray([1, Int64(-2), Int32(3), UInt32(4), 5.5, Float(6.5), true, "seven", Custom()]),
    ]

    static let fixedSets = [
        FixedAttributes(.init("recv_data_tag", .int64(0x33)), .init("recv_data_len", .int64(0))),
        FixedAttributes(.init("sfn_handler_type", .string("async_handler")), .init("negative", .int64(-1)), .init("max", .int64(.max))),
        FixedAttributes(.init("", .string("")), .init("nul\0key", .string("nul\0value")), .init("ünï", .string("ünïcødé"))),
        FixedAttributes(.init("routing_data_tag", .int64(127)), .init("routing_data_len", .int64(128)), .init("listed", .int64(16384))),
        // Around the short-value path's 16-byte limit, and a NUL in a word's last byte.
        FixedAttributes(.init("seventeen_bytes_k", .string("sixteen_bytes_vv")), .init("k", .string("seventeen_bytes_v")),
                        .init("eight_b\0", .string("1234567\0"))),
    ]

    func variedSpans(exporter: InMemorySpanExporter) -> [TracerProvider] {
        var limited = TracerProvider.Configuration(environment: [
            "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "3", "OTEL_SPAN_EVENT_COUNT_LIMIT": "2",
            "OTEL_SPAN_LINK_COUNT_LIMIT": "1", "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT": "1",
            "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT": "1",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=tëst,empty=",
        ])
        limited.serviceName = "limited"
        let providers = [
            makeProvider(exporter: exporter, serviceName: "üñí service"),
            TracerProvider(configuration: limited, processors: [SimpleSpanProcessor(exporter: exporter)]),
            makeProvider(exporter: exporter, serviceName: ""),
        ]
        let scopes = [
            InstrumentationScope(name: "plain"), InstrumentationScope(name: "versioned", version: "1.2.3"),
            InstrumentationScope(name: "", version: ""), InstrumentationScope(name: "zero\0byte", version: "\0"),
        ]
        let kinds: [SpanKind] = [.internal, .server, .client, .producer, .consumer]
        let remoteParent = SpanContext(
            traceID: TraceID(hexString: "4bf92f3577b34da6a3ce929d0e0e4736")!, spanID: SpanID(hexString: "00f067aa0ba902b7")!,
            traceFlags: .sampled, isRemote: true, traceState: "vendor=value,other=ü")
        var index = 0
        for provider in providers {
            for scope in scopes {
                let tracer = provider.tracer(scope: scope)
                let linked = tracer.startSpan("linked")
                for value in Self.values {
                    index += 1
                    let names = ["", "span \(index)", "ünïcødé", String(repeating: "n", count: 200), "nul\0name"]
                    let parent: SpanContext? = switch index % 3 {
                    case 0: nil
                    case 1: remoteParent
                    default: linked.spanContext
                    }
                    let start = index % 7 == 0 ? 0 : UInt64(index) * 1_000_003
                    // Two spans in three start with fixed attributes, which the
                    // attribute changes below then move into the list or the map.
                    let span = tracer.startSpan(
                        names[index % names.count], parent: parent, context: .topLevel,
                        ofKind: kinds[index % kinds.count], at: FixedInstant(nanosecondsSinceEpoch: start),
                        fixedAttributes: index % 3 != 1 ? Self.fixedSets[index / 3 % Self.fixedSets.count] : FixedAttributes())
                    switch index % 4 {
                    case 0:
                        span.setAttribute("listed", value)
                        span.setAttribute("", .int64(Int64(index)))
                    case 1:
                        span.attributes["value"] = value.toSpanAttribute()
                        span.attributes["ü key"] = "v"
                    case 2:
                        span.setAttribute("listed", value)
                        span.attributes["mapped"] = value.toSpanAttribute()
                        span.attributes["more"] = 1
                        span.attributes["even more"] = 2
                        span.attributes["over the limit"] = 3
                    default: break
                    }
                    if index % 5 == 0 {
                        span.addEvent(SpanEvent(name: "event", at: FixedInstant(nanosecondsSinceEpoch: UInt64(index)),
                                                attributes: ["value": value, "second": "x"]))
                        span.addEvent(SpanEvent(name: "", at: FixedInstant(nanosecondsSinceEpoch: 0), attributes: [:]))
                        span.addEvent(SpanEvent(name: "third", attributes: [:]))
                    }
                    if index % 6 == 0 {
                        span.addLink(SpanLink(context: linked.context, attributes: ["value": value, "b": true]))
                        span.addLink(SpanLink(context: linked.context, attributes: [:]))
                    }
                    switch index % 5 {
                    case 0: span.setStatus(SpanStatus(code: .ok))
                    case 1: span.setStatus(SpanStatus(code: .error, message: "failed: ü"))
                    case 2: span.setStatus(SpanStatus(code: .error, message: ""))
                    case 3: span.setStatus(SpanStatus(code: .error))
                    default: break
                    }
                    let end = index % 11 == 0 ? 0 : start + UInt64(index)
                    span.end(at: FixedInstant(nanosecondsSinceEpoch: end))
                }
                linked.end()
            }
        }
        return providers
    }

    @Test func variedSpansEncodeToProtobufCBytes() async {
        let exporter = InMemorySpanExporter()
        let providers = variedSpans(exporter: exporter)
        let spans = exporter.spans
        #expect(spans.count > 400)
        #expect(spans.contains { $0.droppedAttributeCount > 0 } && spans.contains { $0.droppedEventCount > 0 }
            && spans.contains { $0.droppedLinkCount > 0 } && spans.contains { !$0.context.traceState.isEmpty })

        // Whole batch (three resources, four scopes each), then each span alone.
        #expect(mismatch(spans) == nil)
        for span in spans {
            let difference = mismatch([span])
            #expect(difference == nil, "span \(span.name.debugDescription)")
            if difference != nil { break }
        }
        // Interleaved resources and scopes group as the reference groups them.
        let shuffled = spans.enumerated().sorted { ($0.offset % 13, $0.offset) < ($1.offset % 13, $1.offset) }.map(\.element)
        #expect(mismatch(shuffled) == nil)
        #expect(mismatch([]) == nil)
        for provider in providers { await provider.shutdown() }
    }

    /// Grouping, which the writer and the protobuf-c reference share, against
    /// a plain one: resources, then scopes, in first-seen order, spans in order.
    /// A resource is one provider's, or equal attributes from another provider.
    @Test func spansGroupByResourceThenScopeInFirstSeenOrder() async {
        let exporter = InMemorySpanExporter()
        let providers = [
            makeProvider(exporter: exporter, serviceName: "one"), makeProvider(exporter: exporter, serviceName: "two"),
            makeProvider(exporter: exporter, serviceName: "one"),
        ]
        let tracers = providers.flatMap { provider in ["a", "b"].map { provider.tracer($0) } }
        // Runs of one tracer, then single spans of alternating tracers.
        let order = [0, 0, 0, 3, 3, 1, 0, 5, 2, 4, 4, 1, 3, 0, 5, 5, 2]
        for (index, tracer) in order.enumerated() { tracers[tracer].startSpan("span \(index)").end() }
        let spans = exporter.spans
        #expect(spans.map(\.name) == order.indices.map { "span \($0)" })

        func plain(_ spans: [FinishedSpan]) -> [(service: String, scopes: [(scope: String, spans: [Int])])] {
            var groups: [(service: String, scopes: [(scope: String, spans: [Int])])] = []
            for (index, span) in spans.enumerated() {
                let service = "\(span.resource.attributes["service.name"].map { "\($0)" } ?? "")"
                let group = groups.firstIndex { $0.service == service } ?? {
                    groups.append((service, []))
                    return groups.count - 1
                }()
                if let scope = groups[group].scopes.firstIndex(where: { $0.scope == span.scope.name }) {
                    groups[group].scopes[scope].spans.append(index)
                } else {
                    groups[group].scopes.append((span.scope.name, [index]))
                }
            }
            return groups
        }
        func grouped(_ spans: [FinishedSpan]) -> [(service: String, scopes: [(scope: String, spans: [Int])])] {
            OTLPTraceEncoding.group(spans).map { group in
                ("\(group.resource.attributes["service.name"].map { "\($0)" } ?? "")", group.scopes.map { ($0.scope.name, $0.spans) })
            }
        }
        for batch in [spans, Array(spans.prefix(3)), Array(spans.prefix(5)), Array(spans.reversed()), []] {
            let expected = plain(batch), actual = grouped(batch)
            #expect(actual.map(\.service) == expected.map(\.service))
            #expect(actual.map { $0.scopes.map(\.scope) } == expected.map { $0.scopes.map(\.scope) })
            #expect(actual.map { $0.scopes.map(\.spans) } == expected.map { $0.scopes.map(\.spans) })
        }
        #expect(plain(spans).count == 2 && plain(spans).allSatisfy { $0.scopes.count == 2 })
        for provider in providers { await provider.shutdown() }
    }

    @Test func aReusedWriterGivesTheSameBytes() {
        let exporter = finishedNumberedSpans(scope: "reuse")
        var writer = OTLPTraceWriter(capacity: 64)
        let big = writer.encodeRequest(exporter.spans)
        let small = writer.encodeRequest(Array(exporter.spans.prefix(2)))
        let again = writer.encodeRequest(exporter.spans)
        #expect(big == reference(exporter.spans))
        #expect(small == reference(Array(exporter.spans.prefix(2))))
        #expect(again == big)
    }

    /// The exporter posts the body from the writer's buffer (no copy out):
    /// what it lends is the request, after the buffer grew and after a
    /// shorter request reused it.
    @Test func aLentBodyIsTheEncodedRequest() {
        let exporter = finishedNumberedSpans(scope: "lent")
        var writer = OTLPTraceWriter(capacity: 64)
        let lentBig = writer.withEncodedRequest(exporter.spans) { [UInt8]($0) }
        let lentSmall = writer.withEncodedRequest(Array(exporter.spans.prefix(1))) { [UInt8]($0) }
        #expect(lentBig.count > 64)
        #expect(lentBig == reference(exporter.spans))
        #expect(lentSmall == reference(Array(exporter.spans.prefix(1))))
    }
}

@Suite struct ProtobufWriterTests {
    static func varint(_ value: UInt64) -> [UInt8] {
        var value = value
        var bytes: [UInt8] = []
        repeat {
            bytes.append(UInt8(value & 0x7f) | (value >= 0x80 ? 0x80 : 0))
            value >>= 7
        } while value != 0
        return bytes
    }

    /// A length-delimited field as protobuf-c packs a C string: cut at the first NUL.
    static func delimited(_ field: UInt32, _ bytes: [UInt8]) -> [UInt8] {
        let cut = Array(bytes.prefix { $0 != 0 })
        return varint(UInt64(field << 3 | 2)) + varint(UInt64(cut.count)) + cut
    }

    /// Every key and string length from 0 to 20 (the short path takes up to
    /// 16), each without a NUL and with one at each position, in fields below
    /// and above 16, against the textbook encoding.
    @Test func keyValuesAndStringsOfEveryShortLength() {
        var writer = ProtobufWriter(capacity: 1)
        var cases: [[UInt8]] = []
        for length in 0...20 {
            let plain = (0..<length).map { UInt8(ascii: "a") + UInt8($0) }
            cases.append(plain)
            for nul in plain.indices {
                var withNUL = plain
                withNUL[nul] = 0
                cases.append(withNUL)
            }
        }
        let values: [Int64] = [0, 1, 127, 128, 16_384, -1, .max]
        for field: UInt32 in [1, 9, 15, 16, 20] {
            for bytes in cases {
                let cut = Array(bytes.prefix { $0 != 0 })
                let key = cut.isEmpty ? [] : Self.delimited(1, bytes)
                func expectKeyValue(_ any: [UInt8], _ label: String) {
                    let body = key + [0x12] + Self.varint(UInt64(any.count)) + any
                    #expect(writer.bytes == Self.varint(UInt64(field << 3 | 2)) + Self.varint(UInt64(body.count)) + body, "\(label), field \(field), \(bytes)")
                }
                for value in values {
                    writer.reset()
                    bytes.withUnsafeBytes { writer.keyValue(field, key: $0, int: value) }
                    expectKeyValue([0x18] + Self.varint(UInt64(bitPattern: value)), "int \(value)")
                }
                for string in [[], Array("x".utf8), bytes, Array(repeating: UInt8(ascii: "s"), count: 17)] {
                    writer.reset()
                    bytes.withUnsafeBytes { key in string.withUnsafeBytes { writer.keyValue(field, key: key, string: $0) } }
                    expectKeyValue(Self.delimited(1, string), "string \(string)")
                }
                writer.reset()
                writer.string(field, String(decoding: bytes, as: UTF8.self))
                #expect(writer.bytes == (cut.isEmpty ? [] : Self.delimited(field, bytes)), "string field \(field), \(bytes)")
                writer.reset()
                writer.string(field, String(decoding: bytes, as: UTF8.self), always: true)
                #expect(writer.bytes == Self.delimited(field, bytes), "always, field \(field), \(bytes)")
            }
        }
    }

    /// Varints and message lengths at every width boundary, against the
    /// textbook encoding.
    @Test func varintsAndLengthPrefixesAtEveryWidth() {
        let varint = Self.varint
        var boundaries: [UInt64] = [0, .max]
        for bits in stride(from: 7, through: 63, by: 7) {
            boundaries += [(1 << UInt64(bits)) - 1, 1 << UInt64(bits)]
        }
        var writer = ProtobufWriter(capacity: 1)
        for value in boundaries {
            writer.reset()
            writer.varint(1, value)
            #expect(writer.bytes == [0x08] + varint(value))
            #expect(ProtobufWriter.varintSize(value) == varint(value).count)
        }
        for length in [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152] {
            for guess in 1...3 {
                writer.reset()
                writer.varint(1, 1)
                let mark = writer.beginMessage(2, lengthGuess: guess)
                let body = [UInt8](repeating: 0x5a, count: length)
                body.withUnsafeBytes { writer.bytes(3, $0) }
                writer.endMessage(mark)
                writer.fixed32(16, 7)
                let inner = [0x1a] + varint(UInt64(length)) + body
                #expect(writer.bytes == [0x08, 0x01, 0x12] + varint(UInt64(inner.count)) + inner + [0x85, 0x01, 7, 0, 0, 0],
                        "length \(length), guess \(guess)")
            }
        }
    }
}
