/// How deep an OTLP trace request nests messages, found without recursion
/// before protobuf-c sees the bytes: protobuf-c unpacks nested messages
/// recursively with no limit, so a body of a few tens of KB (attribute values
/// holding arrays holding arrays, 5,000 deep) overflows the stack of the
/// thread that decodes it. The schema bounds every path but one: an
/// `AnyValue` may hold an array or a key-value list of `AnyValue`s.
enum OTLPNesting {
    /// The messages that hold messages, by the field numbers of the OTLP trace protos.
    private enum Kind {
        case request, resourceSpans, resource, scopeSpans, scope, span, event, link, keyValue, anyValue, arrayValue, keyValueList

        /// The message type of field `number`, when it is a message that holds messages.
        func child(_ number: UInt64) -> Kind? {
            switch (self, number) {
            case (.request, 1): .resourceSpans
            case (.resourceSpans, 1): .resource
            case (.resourceSpans, 2): .scopeSpans
            case (.resource, 1): .keyValue
            case (.scopeSpans, 1): .scope
            case (.scopeSpans, 2): .span
            case (.scope, 3): .keyValue
            case (.span, 9): .keyValue
            case (.span, 11): .event
            case (.span, 13): .link
            case (.event, 3): .keyValue
            case (.link, 4): .keyValue
            case (.keyValue, 2): .anyValue
            case (.anyValue, 5): .arrayValue
            case (.anyValue, 6): .keyValueList
            case (.arrayValue, 1): .anyValue
            case (.keyValueList, 1): .keyValue
            default: nil
            }
        }
    }

    /// Whether `body`, read as an `ExportTraceServiceRequest`, nests messages
    /// more than `limit` deep (the request itself is level 1). Bytes that are
    /// not protobuf answer false at the first flaw: protobuf-c refuses them
    /// before it descends past it.
    static func exceeds(_ limit: Int, in body: UnsafeRawBufferPointer) -> Bool {
        var open: [(kind: Kind, end: Int)] = [(.request, body.count)]
        var offset = 0
        func varint() -> UInt64? {
            var value: UInt64 = 0
            for shift in stride(from: 0, to: 64, by: 7) {
                guard offset < open[open.count - 1].end else { return nil }
                let byte = body[offset]
                offset += 1
                value |= UInt64(byte & 0x7F) << UInt64(shift)
                if byte & 0x80 == 0 { return value }
            }
            return nil
        }
        while let (kind, end) = open.last {
            guard offset < end else {
                open.removeLast()
                continue
            }
            guard let tag = varint() else { return false }
            let size: UInt64
            switch tag & 7 {
            case 0:
                guard varint() != nil else { return false }
                continue
            case 1: size = 8
            case 5: size = 4
            case 2:
                guard let length = varint() else { return false }
                size = length
                if let child = kind.child(tag >> 3), length <= UInt64(end - offset) {
                    guard open.count < limit else { return true }
                    open.append((child, offset + Int(length)))
                    continue
                }
            default: return false
            }
            guard size <= UInt64(end - offset) else { return false }
            offset += Int(size)
        }
        return false
    }
}
