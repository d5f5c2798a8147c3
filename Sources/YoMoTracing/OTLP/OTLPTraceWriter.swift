import Tracing

/// Writes `ExportTraceServiceRequest` bodies straight from `FinishedSpan`s into
/// one reused buffer: the same bytes as `OTLPTraceEncoding.encodeRequest` (the
/// protobuf-c reference, kept for tests), without building a message tree of
/// C structs and copying every string twice (into the arena, then into the
/// body). Field numbers are those of opentelemetry-proto's trace.proto,
/// common.proto and resource.proto.
package struct OTLPTraceWriter: ~Copyable {
    private var writer: ProtobufWriter

    package init(capacity: Int = 64 * 1024) {
        writer = ProtobufWriter(capacity: capacity)
    }

    package mutating func encodeRequest(_ spans: [FinishedSpan]) -> [UInt8] {
        write(spans)
        return writer.bytes
    }

    /// Encodes `spans` and lends the body to `send` from the writer's own
    /// buffer: what `encodeRequest` returns, without copying it out.
    package mutating func withEncodedRequest<Result, Failure: Error>(
        _ spans: [FinishedSpan], _ send: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        write(spans)
        return try writer.withBytes(send)
    }

    private mutating func write(_ spans: [FinishedSpan]) {
        writer.reset()
        for group in OTLPTraceEncoding.group(spans) {
            // ExportTraceServiceRequest.resource_spans = 1
            let resourceSpans = writer.beginMessage(1, lengthGuess: 3)
            // ResourceSpans.resource = 1
            let resource = writer.beginMessage(1, lengthGuess: 2)
            writeKeyValues(1, group.resource.attributes)
            writer.endMessage(resource)
            for (scope, indices) in group.scopes {
                // ResourceSpans.scope_spans = 2
                let scopeSpans = writer.beginMessage(2, lengthGuess: 3)
                // ScopeSpans.scope = 1: name = 1, version = 2
                let scopeMark = writer.beginMessage(1)
                writer.string(1, scope.name)
                if let version = scope.version { writer.string(2, version) }
                writer.endMessage(scopeMark)
                for index in indices {
                    // ScopeSpans.spans = 2
                    let span = writer.beginMessage(2, lengthGuess: 2)
                    // Borrowed: the batch holds every span. A retain and release
                    // per span here wrote the reference counts of spans that
                    // data-path threads made and will free.
                    Unmanaged.passUnretained(spans[index].storage)._withUnsafeGuaranteedRef { writeSpan($0) }
                    writer.endMessage(span)
                }
                writer.endMessage(scopeSpans)
            }
            writer.endMessage(resourceSpans)
        }
    }

    private mutating func writeSpan(_ storage: SpanStorage) {
        let context = storage.spanContext
        writer.id(1, high: context.traceID.high, low: context.traceID.low)
        writer.id(2, context.spanID.rawValue)
        writer.string(3, context.traceState)
        if let parent = storage.parentSpanID { writer.id(4, parent.rawValue) }
        writer.string(5, storage.name)
        writer.int32(6, Int32(OTLPTraceEncoding.kindNumber(storage.kind)))
        if storage.startTime != 0 { writer.fixed64(7, storage.startTime) }
        if storage.endTime != 0 { writer.fixed64(8, storage.endTime) }
        storage.fixedAttributes.forEach { writeKeyValue(9, $0) }
        storage.forEachChangeableAttribute { key, value in writeKeyValue(9, key, value) }
        if storage.droppedAttributeCount != 0 { writer.varint(10, UInt64(UInt32(clamping: storage.droppedAttributeCount))) }
        for event in storage.events {
            let mark = writer.beginMessage(11, lengthGuess: 2)
            if event.nanosecondsSinceEpoch != 0 { writer.fixed64(1, event.nanosecondsSinceEpoch) }
            writer.string(2, event.name)
            writeKeyValues(3, event.attributes)
            writer.endMessage(mark)
        }
        if storage.droppedEventCount != 0 { writer.varint(12, UInt64(UInt32(clamping: storage.droppedEventCount))) }
        for link in storage.links {
            let mark = writer.beginMessage(13, lengthGuess: 2)
            writer.id(1, high: link.context.traceID.high, low: link.context.traceID.low)
            writer.id(2, link.context.spanID.rawValue)
            writer.string(3, link.context.traceState)
            writeKeyValues(4, link.attributes)
            if link.droppedAttributeCount != 0 { writer.varint(5, UInt64(UInt32(clamping: link.droppedAttributeCount))) }
            writer.fixed32(6, OTLPTraceEncoding.flags(link.context.traceFlags, remote: link.context.isRemote))
            writer.endMessage(mark)
        }
        if storage.droppedLinkCount != 0 { writer.varint(14, UInt64(UInt32(clamping: storage.droppedLinkCount))) }
        if let status = storage.status {
            // Status: message = 2, code = 3
            let mark = writer.beginMessage(15)
            if let message = status.message { writer.string(2, message) }
            writer.int32(3, status.code == .ok ? 1 : 2)
            writer.endMessage(mark)
        }
        writer.fixed32(16, OTLPTraceEncoding.flags(context.traceFlags, remote: storage.parentIsRemote))
    }

    /// A fixed attribute as KeyValue `field`: its literal bytes, written straight.
    private mutating func writeKeyValue(_ field: UInt32, _ attribute: FixedAttribute) {
        // A literal of more than one scalar lends its bytes in place;
        // `withUTF8Buffer` (which also encodes a one-scalar literal) costs a
        // closure call per literal.
        func bytes<T>(_ literal: StaticString, _ body: (UnsafeRawBufferPointer) -> T) -> T {
            guard literal.hasPointerRepresentation else { return literal.withUTF8Buffer { body(UnsafeRawBufferPointer($0)) } }
            return body(UnsafeRawBufferPointer(start: literal.utf8Start, count: literal.utf8CodeUnitCount))
        }
        bytes(attribute.key) { key in
            switch attribute.value {
            case .int64(let int):
                writer.keyValue(field, key: key, int: int)
            case .string(let string):
                bytes(string) { writer.keyValue(field, key: key, string: $0) }
            }
        }
    }

    /// Repeated KeyValue `field`.
    private mutating func writeKeyValues(_ field: UInt32, _ attributes: SpanAttributes) {
        attributes.forEach { key, value in writeKeyValue(field, key, value) }
    }

    /// KeyValue: key = 1, value = 2 (an AnyValue, sent even when unset).
    private mutating func writeKeyValue(_ field: UInt32, _ key: String, _ value: SpanAttribute) {
        let mark = writer.beginMessage(field)
        writer.string(1, key)
        let valueMark = writer.beginMessage(2)
        writeAnyValue(value)
        writer.endMessage(valueMark)
        writer.endMessage(mark)
    }

    /// AnyValue's oneof: string_value = 1, bool_value = 2, int_value = 3,
    /// double_value = 4, array_value = 5 (ArrayValue.values = 1). A oneof
    /// member is sent even when zero or empty.
    private mutating func writeAnyValue(_ value: SpanAttribute) {
        switch value {
        case .string(let string): writer.string(1, string, always: true)
        case .bool(let bool): writer.bool(2, bool)
        case .int32(let int): writer.int64(3, Int64(int))
        case .int64(let int): writer.int64(3, int)
        case .double(let double): writer.double(4, double)
        case .stringArray(let values): writeArray(values) { $0.writer.string(1, $1, always: true) }
        case .boolArray(let values): writeArray(values) { $0.writer.bool(2, $1) }
        case .int32Array(let values): writeArray(values) { $0.writer.int64(3, Int64($1)) }
        case .int64Array(let values): writeArray(values) { $0.writer.int64(3, $1) }
        case .doubleArray(let values): writeArray(values) { $0.writer.double(4, $1) }
        case .stringConvertible(let convertible): writer.string(1, convertible.description, always: true)
        case .stringConvertibleArray(let values):
            writeArray(values) { $0.writeAnyValue(OTLPCommonEncoding.scalarAttribute($1)) }
        default: break
        }
    }

    private mutating func writeArray<Element>(_ values: [Element], _ element: (inout Self, Element) -> Void) {
        let array = writer.beginMessage(5, lengthGuess: values.count > 8 ? 2 : 1)
        for value in values {
            let mark = writer.beginMessage(1)
            element(&self, value)
            writer.endMessage(mark)
        }
        writer.endMessage(array)
    }
}
