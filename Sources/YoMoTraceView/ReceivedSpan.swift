import COTLPProto

/// One span as a receiver got it, with what a trace view shows.
public struct ReceivedSpan: Sendable, Hashable {
    public var traceID: String
    public var spanID: String
    public var parentSpanID: String
    public var name: String
    public var service: String
    public var scope: String
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    public var kind: Int
    public var startNanoseconds: UInt64
    public var endNanoseconds: UInt64
    public var attributes: [(key: String, value: String)]
    public var isError: Bool
    public var statusMessage: String
    public var eventNames: [String]

    public var durationNanoseconds: UInt64 { endNanoseconds >= startNanoseconds ? endNanoseconds - startNanoseconds : 0 }

    public static func == (lhs: ReceivedSpan, rhs: ReceivedSpan) -> Bool {
        lhs.traceID == rhs.traceID && lhs.spanID == rhs.spanID
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(traceID)
        hasher.combine(spanID)
    }
}

/// Why an OTLP body could not be read.
public struct TraceViewError: Error, CustomStringConvertible {
    public let description: String
}

/// Decodes an OTLP `ExportTraceServiceRequest` protobuf body (protobuf-c).
public enum OTLPTraceDecoder {
    /// Messages nested deeper than this are refused before decoding (the
    /// schema's own paths take 7 levels; the rest is values within values).
    public static let maximumNesting = 64

    public static func decode(_ body: [UInt8]) throws -> [ReceivedSpan] {
        guard !body.withUnsafeBytes({ OTLPNesting.exceeds(maximumNesting, in: $0) }) else {
            throw TraceViewError(description: "the body nests messages deeper than \(maximumNesting) levels (\(body.count) bytes)")
        }
        let unpacked = body.withUnsafeBufferPointer { bytes in
            opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(nil, bytes.count, bytes.baseAddress)
        }
        guard let request = unpacked else {
            throw TraceViewError(description: "the body is not an OTLP ExportTraceServiceRequest (\(body.count) bytes)")
        }
        defer { opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(request, nil) }
        var spans: [ReceivedSpan] = []
        for resourceSpans in buffer(request.pointee.resource_spans, request.pointee.n_resource_spans) {
            guard let resourceSpans else { continue }
            let resource = resourceSpans.pointee.resource.map { attributes($0.pointee.attributes, $0.pointee.n_attributes) } ?? []
            let service = resource.first { $0.key == "service.name" }?.value ?? "unknown"
            for scopeSpans in buffer(resourceSpans.pointee.scope_spans, resourceSpans.pointee.n_scope_spans) {
                guard let scopeSpans else { continue }
                let scope = scopeSpans.pointee.scope.flatMap { $0.pointee.name.map { String(cString: $0) } } ?? ""
                for span in buffer(scopeSpans.pointee.spans, scopeSpans.pointee.n_spans) {
                    guard let span = span?.pointee else { continue }
                    let status = span.status?.pointee
                    spans.append(
                        ReceivedSpan(
                            traceID: hex(span.trace_id),
                            spanID: hex(span.span_id),
                            parentSpanID: hex(span.parent_span_id),
                            name: span.name.map { String(cString: $0) } ?? "",
                            service: service,
                            scope: scope,
                            kind: Int(span.kind.rawValue),
                            startNanoseconds: span.start_time_unix_nano,
                            endNanoseconds: span.end_time_unix_nano,
                            attributes: attributes(span.attributes, span.n_attributes),
                            isError: status?.code == OPENTELEMETRY__PROTO__TRACE__V1__STATUS__STATUS_CODE__STATUS_CODE_ERROR,
                            statusMessage: status?.message.map { String(cString: $0) } ?? "",
                            eventNames: buffer(span.events, span.n_events).compactMap { $0?.pointee.name.map { String(cString: $0) } }
                        ))
                }
            }
        }
        return spans
    }

    private static func buffer<T>(_ pointer: UnsafeMutablePointer<T>?, _ count: Int) -> UnsafeBufferPointer<T> {
        UnsafeBufferPointer(start: pointer, count: pointer == nil ? 0 : count)
    }

    private static func hex(_ data: ProtobufCBinaryData) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(data.len * 2)
        for byte in UnsafeBufferPointer(start: data.data, count: data.data == nil ? 0 : data.len) {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    private static func attributes(
        _ list: UnsafeMutablePointer<UnsafeMutablePointer<Opentelemetry__Proto__Common__V1__KeyValue>?>?, _ count: Int
    ) -> [(key: String, value: String)] {
        buffer(list, count).compactMap { pair in
            guard let pair = pair?.pointee, let key = pair.key else { return nil }
            return (String(cString: key), pair.value.map { describe($0.pointee) } ?? "")
        }
    }

    private static func describe(_ value: Opentelemetry__Proto__Common__V1__AnyValue) -> String {
        switch value.value_case {
        case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE:
            return value.string_value.map { String(cString: $0) } ?? ""
        case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE:
            return value.bool_value != 0 ? "true" : "false"
        case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE:
            return "\(value.int_value)"
        case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE:
            return "\(value.double_value)"
        case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE:
            guard let array = value.array_value?.pointee else { return "[]" }
            return "[" + buffer(array.values, array.n_values).compactMap { $0.map { describe($0.pointee) } }.joined(separator: ", ") + "]"
        case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BYTES_VALUE:
            return hex(value.bytes_value)
        default:
            return ""
        }
    }
}
