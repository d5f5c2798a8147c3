import COTLPProto
import Tracing

private typealias PBSpan = Opentelemetry__Proto__Trace__V1__Span

/// Builds `ExportTraceServiceRequest` bodies (OTLP/HTTP binary protobuf,
/// https://opentelemetry.io/docs/specs/otlp/#otlphttp-request) and reads
/// `ExportTraceServiceResponse` bodies.
///
/// Exporters write bodies with `OTLPTraceWriter`; `encodeRequest` here builds
/// the same message with protobuf-c, the reference its output is tested against.
package enum OTLPTraceEncoding {
    /// Spans grouped by resource, then by scope, in first-seen order.
    typealias Group = (shared: TracerShared, resource: Resource, scopes: [(scope: InstrumentationScope, spans: [Int])])

    /// Spans of one provider share its resource, so an identity check settles
    /// most spans without comparing attribute dictionaries; scopes are few, so
    /// a linear search beats hashing their names for every span.
    static func group(_ spans: [FinishedSpan]) -> [Group] {
        // The provider is compared by identity, not held: every span the data
        // path starts retains it, and the export thread retaining it too, span
        // by span, made its reference count a cache line the cores fought over.
        guard let first = spans.first?.storage else { return [] }
        let firstShared = ObjectIdentifier(first.shared)
        // A batch from one tracer (a zipper's, a stream function's) is one
        // group: checked in one pass, without building its index list span by
        // span below (about 150 instructions a span there, 40 here).
        if spans.allSatisfy({ ObjectIdentifier($0.storage.shared) == firstShared && $0.storage.scope == first.scope }) {
            return [(first.shared, first.shared.resource, [(first.scope, Array(spans.indices))])]
        }
        var resources: [Group] = []
        // Runs of spans from one tracer are the rule: same group as the span before.
        var last: (shared: ObjectIdentifier, scope: InstrumentationScope, position: Int, scopePosition: Int)?
        for index in spans.indices {
            let storage = spans[index].storage
            let shared = ObjectIdentifier(storage.shared)
            if let last, last.shared == shared, last.scope == storage.scope {
                resources[last.position].scopes[last.scopePosition].spans.append(index)
                continue
            }
            let position: Int
            if let found = resources.lastIndex(where: { ObjectIdentifier($0.shared) == shared || $0.resource == storage.shared.resource }) {
                position = found
            } else {
                resources.append((storage.shared, storage.shared.resource, []))
                position = resources.count - 1
            }
            if let scopePosition = resources[position].scopes.lastIndex(where: { $0.scope == storage.scope }) {
                resources[position].scopes[scopePosition].spans.append(index)
                last = (shared, storage.scope, position, scopePosition)
            } else {
                resources[position].scopes.append((storage.scope, [index]))
                last = (shared, storage.scope, position, resources[position].scopes.count - 1)
            }
        }
        return resources
    }

    /// SpanFlags: W3C flags in bits 0-7; bit 8 says bit 9 (remote) is known.
    static func flags(_ traceFlags: TraceFlags, remote: Bool) -> UInt32 {
        UInt32(traceFlags.rawValue) | 0x100 | (remote ? 0x200 : 0)
    }

    /// - Parameter arena: where the message tree is built; reset here first.
    package static func encodeRequest(_ spans: [FinishedSpan], arena: ProtobufArena = ProtobufArena()) -> [UInt8] {
        arena.reset()

        let resources = group(spans)
        let resourceSpans = arena.allocate(UnsafeMutablePointer<Opentelemetry__Proto__Trace__V1__ResourceSpans>?.self, count: resources.count)
        for (resourceIndex, group) in resources.enumerated() {
            let message = arena.allocate(Opentelemetry__Proto__Trace__V1__ResourceSpans.self)
            opentelemetry__proto__trace__v1__resource_spans__init(message)
            message.pointee.resource = OTLPCommonEncoding.resource(group.resource, in: arena)
            let scopeSpans = arena.allocate(UnsafeMutablePointer<Opentelemetry__Proto__Trace__V1__ScopeSpans>?.self, count: group.scopes.count)
            for (scopeIndex, (scope, indices)) in group.scopes.enumerated() {
                let scopeMessage = arena.allocate(Opentelemetry__Proto__Trace__V1__ScopeSpans.self)
                opentelemetry__proto__trace__v1__scope_spans__init(scopeMessage)
                scopeMessage.pointee.scope = OTLPCommonEncoding.scope(scope, in: arena)
                let spanPointers = arena.allocate(UnsafeMutablePointer<PBSpan>?.self, count: indices.count)
                let spanMessages = arena.allocate(PBSpan.self, count: indices.count)
                for (position, spanIndex) in indices.enumerated() {
                    let spanMessage = spanMessages + position
                    fill(spanMessage, from: spans[spanIndex], arena: arena)
                    spanPointers[position] = spanMessage
                }
                scopeMessage.pointee.n_spans = indices.count
                scopeMessage.pointee.spans = spanPointers
                scopeSpans[scopeIndex] = scopeMessage
            }
            message.pointee.n_scope_spans = group.scopes.count
            message.pointee.scope_spans = scopeSpans
            resourceSpans[resourceIndex] = message
        }

        var request = Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest()
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(&request)
        request.n_resource_spans = resources.count
        request.resource_spans = resources.isEmpty ? nil : resourceSpans
        let body = withUnsafePointer(to: &request) {
            $0.withMemoryRebound(to: ProtobufCMessage.self, capacity: 1) { OTLPCommonEncoding.pack($0) }
        }
        withExtendedLifetime(arena) {}
        return body
    }

    private static func fill(_ message: UnsafeMutablePointer<PBSpan>, from span: FinishedSpan, arena: ProtobufArena) {
        opentelemetry__proto__trace__v1__span__init(message)
        message.pointee.trace_id = arena.bytes(span.context.traceID)
        message.pointee.span_id = arena.bytes(span.context.spanID)
        if !span.context.traceState.isEmpty {
            message.pointee.trace_state = arena.string(span.context.traceState)
        }
        if let parent = span.parentSpanID {
            message.pointee.parent_span_id = arena.bytes(parent)
        }
        message.pointee.flags = flags(span.context.traceFlags, remote: span.parentIsRemote)
        message.pointee.name = arena.string(span.name)
        message.pointee.kind = Opentelemetry__Proto__Trace__V1__Span__SpanKind(rawValue: kindNumber(span.kind))
        message.pointee.start_time_unix_nano = span.startTimeNanoseconds
        message.pointee.end_time_unix_nano = span.endTimeNanoseconds
        let attributes = OTLPCommonEncoding.keyValues(of: span.storage, in: arena)
        message.pointee.n_attributes = attributes.count
        message.pointee.attributes = attributes.pointer
        message.pointee.dropped_attributes_count = UInt32(clamping: span.droppedAttributeCount)

        if !span.events.isEmpty {
            let pointers = arena.allocate(UnsafeMutablePointer<Opentelemetry__Proto__Trace__V1__Span__Event>?.self, count: span.events.count)
            for (index, event) in span.events.enumerated() {
                let eventMessage = arena.allocate(Opentelemetry__Proto__Trace__V1__Span__Event.self)
                opentelemetry__proto__trace__v1__span__event__init(eventMessage)
                eventMessage.pointee.time_unix_nano = event.nanosecondsSinceEpoch
                eventMessage.pointee.name = arena.string(event.name)
                let eventAttributes = OTLPCommonEncoding.keyValues(event.attributes, in: arena)
                eventMessage.pointee.n_attributes = eventAttributes.count
                eventMessage.pointee.attributes = eventAttributes.pointer
                pointers[index] = eventMessage
            }
            message.pointee.n_events = span.events.count
            message.pointee.events = pointers
        }
        message.pointee.dropped_events_count = UInt32(clamping: span.droppedEventCount)

        if !span.links.isEmpty {
            let pointers = arena.allocate(UnsafeMutablePointer<Opentelemetry__Proto__Trace__V1__Span__Link>?.self, count: span.links.count)
            for (index, link) in span.links.enumerated() {
                let linkMessage = arena.allocate(Opentelemetry__Proto__Trace__V1__Span__Link.self)
                opentelemetry__proto__trace__v1__span__link__init(linkMessage)
                linkMessage.pointee.trace_id = arena.bytes(link.context.traceID)
                linkMessage.pointee.span_id = arena.bytes(link.context.spanID)
                if !link.context.traceState.isEmpty {
                    linkMessage.pointee.trace_state = arena.string(link.context.traceState)
                }
                let linkAttributes = OTLPCommonEncoding.keyValues(link.attributes, in: arena)
                linkMessage.pointee.n_attributes = linkAttributes.count
                linkMessage.pointee.attributes = linkAttributes.pointer
                linkMessage.pointee.dropped_attributes_count = UInt32(clamping: link.droppedAttributeCount)
                linkMessage.pointee.flags = flags(link.context.traceFlags, remote: link.context.isRemote)
                pointers[index] = linkMessage
            }
            message.pointee.n_links = span.links.count
            message.pointee.links = pointers
        }
        message.pointee.dropped_links_count = UInt32(clamping: span.droppedLinkCount)

        if let status = span.status {
            let statusMessage = arena.allocate(Opentelemetry__Proto__Trace__V1__Status.self)
            opentelemetry__proto__trace__v1__status__init(statusMessage)
            statusMessage.pointee.code = Opentelemetry__Proto__Trace__V1__Status__StatusCode(rawValue: status.code == .ok ? 1 : 2)
            if let text = status.message { statusMessage.pointee.message = arena.string(text) }
            message.pointee.status = statusMessage
        }
    }

    static func kindNumber(_ kind: SpanKind) -> UInt32 {
        switch kind {
        case .internal: 1
        case .server: 2
        case .client: 3
        case .producer: 4
        case .consumer: 5
        }
    }

    /// `partial_success` of an `ExportTraceServiceResponse`: rejected count and
    /// message, or nil when the body is empty, unreadable or reports full success.
    package static func partialSuccess(in body: [UInt8]) -> (rejected: Int64, message: String)? {
        guard !body.isEmpty else { return nil }
        return body.withUnsafeBufferPointer { buffer -> (Int64, String)? in
            guard let response = opentelemetry__proto__collector__trace__v1__export_trace_service_response__unpack(
                nil, buffer.count, buffer.baseAddress
            ) else { return nil }
            defer { opentelemetry__proto__collector__trace__v1__export_trace_service_response__free_unpacked(response, nil) }
            guard let partial = response.pointee.partial_success else { return nil }
            let message = partial.pointee.error_message.map { String(cString: $0) } ?? ""
            guard partial.pointee.rejected_spans != 0 || !message.isEmpty else { return nil }
            return (partial.pointee.rejected_spans, message)
        }
    }
}
