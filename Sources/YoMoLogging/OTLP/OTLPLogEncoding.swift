import COTLPProto
import Logging
import YoMoTracing

private typealias PBLogRecord = Opentelemetry__Proto__Logs__V1__LogRecord

/// Builds `ExportLogsServiceRequest` bodies (OTLP/HTTP binary protobuf,
/// https://opentelemetry.io/docs/specs/otlp/#otlphttp-request) with protobuf-c,
/// and reads `ExportLogsServiceResponse` bodies.
enum OTLPLogEncoding {
    /// - Parameter arena: where the message tree is built; reset here first.
    static func encodeRequest(_ records: [OTLPLogRecord], resource: Resource, arena: ProtobufArena = ProtobufArena()) -> [UInt8] {
        arena.reset()

        // One ResourceLogs; one ScopeLogs per logger label, in first-seen order.
        var scopes: [InstrumentationScope] = []
        var indicesByScope: [InstrumentationScope: [Int]] = [:]
        for (index, record) in records.enumerated() {
            if indicesByScope[record.scope] == nil { scopes.append(record.scope) }
            indicesByScope[record.scope, default: []].append(index)
        }

        let resourceLogs = arena.allocate(Opentelemetry__Proto__Logs__V1__ResourceLogs.self)
        opentelemetry__proto__logs__v1__resource_logs__init(resourceLogs)
        resourceLogs.pointee.resource = OTLPCommonEncoding.resource(resource, in: arena)
        let scopePointers = arena.allocate(UnsafeMutablePointer<Opentelemetry__Proto__Logs__V1__ScopeLogs>?.self, count: scopes.count)
        for (scopeIndex, scope) in scopes.enumerated() {
            let indices = indicesByScope[scope] ?? []
            let scopeLogs = arena.allocate(Opentelemetry__Proto__Logs__V1__ScopeLogs.self)
            opentelemetry__proto__logs__v1__scope_logs__init(scopeLogs)
            scopeLogs.pointee.scope = OTLPCommonEncoding.scope(scope, in: arena)
            let recordPointers = arena.allocate(UnsafeMutablePointer<PBLogRecord>?.self, count: indices.count)
            let recordMessages = arena.allocate(PBLogRecord.self, count: indices.count)
            for (position, recordIndex) in indices.enumerated() {
                let message = recordMessages + position
                fill(message, from: records[recordIndex], arena: arena)
                recordPointers[position] = message
            }
            scopeLogs.pointee.n_log_records = indices.count
            scopeLogs.pointee.log_records = recordPointers
            scopePointers[scopeIndex] = scopeLogs
        }
        resourceLogs.pointee.n_scope_logs = scopes.count
        resourceLogs.pointee.scope_logs = scopePointers

        var request = Opentelemetry__Proto__Collector__Logs__V1__ExportLogsServiceRequest()
        opentelemetry__proto__collector__logs__v1__export_logs_service_request__init(&request)
        var resourcePointer: UnsafeMutablePointer<Opentelemetry__Proto__Logs__V1__ResourceLogs>? = resourceLogs
        let body = withUnsafeMutablePointer(to: &resourcePointer) { pointer -> [UInt8] in
            request.n_resource_logs = records.isEmpty ? 0 : 1
            request.resource_logs = pointer
            return withUnsafePointer(to: &request) {
                $0.withMemoryRebound(to: ProtobufCMessage.self, capacity: 1) { OTLPCommonEncoding.pack($0) }
            }
        }
        withExtendedLifetime(arena) {}
        return body
    }

    private static func fill(_ message: UnsafeMutablePointer<PBLogRecord>, from record: OTLPLogRecord, arena: ProtobufArena) {
        opentelemetry__proto__logs__v1__log_record__init(message)
        message.pointee.time_unix_nano = record.timeNanoseconds
        message.pointee.observed_time_unix_nano = record.observedTimeNanoseconds
        message.pointee.severity_number = Opentelemetry__Proto__Logs__V1__SeverityNumber(rawValue: severityNumber(record.level))
        message.pointee.severity_text = arena.string(levelName(record.level))
        message.pointee.body = anyValue(.string(record.body), arena)
        if let spanContext = record.spanContext, spanContext.isValid {
            message.pointee.trace_id = arena.bytes(spanContext.traceID)
            message.pointee.span_id = arena.bytes(spanContext.spanID)
            // LogRecordFlags: the W3C trace flags in the low byte.
            message.pointee.flags = UInt32(spanContext.traceFlags.rawValue)
        }
        let attributes = keyValues(record.attributes, arena)
        message.pointee.n_attributes = attributes.count
        message.pointee.attributes = attributes.pointer
    }

    private static func keyValues(
        _ metadata: Logger.Metadata, _ arena: ProtobufArena
    ) -> (count: Int, pointer: UnsafeMutablePointer<UnsafeMutablePointer<PBKeyValue>?>?) {
        guard !metadata.isEmpty else { return (0, nil) }
        let pointers = arena.allocate(UnsafeMutablePointer<PBKeyValue>?.self, count: metadata.count)
        let entries = arena.allocate(PBKeyValue.self, count: metadata.count)
        for (index, (key, value)) in metadata.sorted(by: { $0.key < $1.key }).enumerated() {
            let entry = entries + index
            opentelemetry__proto__common__v1__key_value__init(entry)
            entry.pointee.key = arena.string(key)
            entry.pointee.value = anyValue(value, arena)
            pointers[index] = entry
        }
        return (metadata.count, pointers)
    }

    /// Metadata keeps its shape: dictionaries become kvlist values, arrays array
    /// values, integers/booleans/doubles typed values, everything else strings.
    private static func anyValue(_ value: Logger.Metadata.Value, _ arena: ProtobufArena) -> UnsafeMutablePointer<PBAnyValue> {
        let message = arena.allocate(PBAnyValue.self)
        opentelemetry__proto__common__v1__any_value__init(message)
        switch value {
        case .string(let string):
            message.pointee.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE
            message.pointee.string_value = arena.string(string)
        case .stringConvertible(let convertible):
            if let bool = convertible as? Bool {
                message.pointee.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE
                message.pointee.bool_value = bool ? 1 : 0
            } else if let integer = convertible as? any BinaryInteger, let value = Int64(exactly: integer) {
                message.pointee.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE
                message.pointee.int_value = value
            } else if let double = convertible as? Double {
                message.pointee.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE
                message.pointee.double_value = double
            } else if let float = convertible as? Float {
                message.pointee.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE
                message.pointee.double_value = Double(float)
            } else {
                message.pointee.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE
                message.pointee.string_value = arena.string(convertible.description)
            }
        case .dictionary(let dictionary):
            let list = arena.allocate(Opentelemetry__Proto__Common__V1__KeyValueList.self)
            opentelemetry__proto__common__v1__key_value_list__init(list)
            let entries = keyValues(dictionary, arena)
            list.pointee.n_values = entries.count
            list.pointee.values = entries.pointer
            message.pointee.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_KVLIST_VALUE
            message.pointee.kvlist_value = list
        case .array(let elements):
            let array = arena.allocate(Opentelemetry__Proto__Common__V1__ArrayValue.self)
            opentelemetry__proto__common__v1__array_value__init(array)
            let pointers = arena.allocate(UnsafeMutablePointer<PBAnyValue>?.self, count: elements.count)
            for (index, element) in elements.enumerated() { pointers[index] = anyValue(element, arena) }
            array.pointee.n_values = elements.count
            array.pointee.values = elements.isEmpty ? nil : pointers
            message.pointee.value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE
            message.pointee.array_value = array
        }
        return message
    }

    /// `partial_success` of an `ExportLogsServiceResponse`, or nil when the body
    /// is empty, unreadable or reports full success.
    static func partialSuccess(in body: [UInt8]) -> (rejected: Int64, message: String)? {
        guard !body.isEmpty else { return nil }
        return body.withUnsafeBufferPointer { buffer -> (Int64, String)? in
            guard let response = opentelemetry__proto__collector__logs__v1__export_logs_service_response__unpack(
                nil, buffer.count, buffer.baseAddress
            ) else { return nil }
            defer { opentelemetry__proto__collector__logs__v1__export_logs_service_response__free_unpacked(response, nil) }
            guard let partial = response.pointee.partial_success else { return nil }
            let message = partial.pointee.error_message.map { String(cString: $0) } ?? ""
            guard partial.pointee.rejected_log_records != 0 || !message.isEmpty else { return nil }
            return (partial.pointee.rejected_log_records, message)
        }
    }
}
