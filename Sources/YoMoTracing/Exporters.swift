import Tracing
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Keeps exported spans in memory, for tests.
public final class InMemorySpanExporter: SpanExporter {
    private let state = Mutex<(spans: [FinishedSpan], isShutdown: Bool, flushes: Int)>(([], false, 0))

    public init() {}

    public func export(_ spans: [FinishedSpan], timeout: Duration) throws(TracingError) {
        try state.withLock { (state) throws(TracingError) in
            guard !state.isShutdown else { throw .shutdown("in-memory exporter is shut down") }
            state.spans += spans
        }
    }

    public func forceFlush() { state.withLock { $0.flushes += 1 } }
    public func shutdown() { state.withLock { $0.isShutdown = true } }

    /// Every span exported so far, in export order.
    public var spans: [FinishedSpan] { state.withLock { $0.spans } }
    public var isShutdown: Bool { state.withLock { $0.isShutdown } }
    public func reset() { state.withLock { $0.spans.removeAll() } }
}

/// Writes one JSON object per span (JSON lines), by default to standard output.
public final class ConsoleSpanExporter: SpanExporter {
    private let write: @Sendable (String) -> Void

    /// Writes to standard output.
    public convenience init() {
        self.init { line in
            // One write per line keeps concurrent lines whole.
            let bytes = Array((line + "\n").utf8)
            bytes.withUnsafeBytes { buffer in
                #if canImport(Glibc)
                _ = Glibc.write(1, buffer.baseAddress, buffer.count)
                #else
                _ = Darwin.write(1, buffer.baseAddress, buffer.count)
                #endif
            }
        }
    }

    /// - Parameter write: receives each line without its trailing newline.
    public init(write: @escaping @Sendable (String) -> Void) {
        self.write = write
    }

    public func export(_ spans: [FinishedSpan], timeout: Duration) throws(TracingError) {
        for span in spans { write(Self.jsonLine(span)) }
    }

    static func jsonLine(_ span: FinishedSpan) -> String {
        let json = JSONWriter()
        json.object {
            json.field("trace_id", span.context.traceID.description)
            json.field("span_id", span.context.spanID.description)
            if let parent = span.parentSpanID { json.field("parent_span_id", parent.description) }
            json.field("name", span.name)
            json.field("kind", "\(span.kind)")
            json.field("start_unix_nano", span.startTimeNanoseconds)
            json.field("end_unix_nano", span.endTimeNanoseconds)
            json.field("duration_us", Double(span.endTimeNanoseconds - span.startTimeNanoseconds) / 1000)
            json.field("scope", span.scope.name)
            if let service = span.resource.serviceName { json.field("service", service) }
            if let status = span.status {
                json.key("status")
                json.object {
                    json.field("code", status.code == .ok ? "ok" : "error")
                    if let message = status.message { json.field("message", message) }
                }
            }
            json.key("attributes")
            json.attributes(span.attributes)
            if !span.events.isEmpty {
                json.key("events")
                json.array(span.events) { event in
                    json.object {
                        json.field("name", event.name)
                        json.field("time_unix_nano", event.nanosecondsSinceEpoch)
                        json.key("attributes")
                        json.attributes(event.attributes)
                    }
                }
            }
            if !span.links.isEmpty {
                json.key("links")
                json.array(span.links) { link in
                    json.object {
                        json.field("trace_id", link.context.traceID.description)
                        json.field("span_id", link.context.spanID.description)
                    }
                }
            }
        }
        return json.output
    }
}

/// A minimal JSON writer for the console exporter (no Foundation in this module).
final class JSONWriter {
    var output = ""
    private var needsComma = false

    func object(_ body: () -> Void) {
        separate()
        output += "{"
        needsComma = false
        body()
        output += "}"
        needsComma = true
    }

    func array<C: Collection>(_ items: C, _ body: (C.Element) -> Void) {
        separate()
        output += "["
        needsComma = false
        for item in items { body(item) }
        output += "]"
        needsComma = true
    }

    func key(_ key: String) {
        separate()
        appendString(key)
        output += ":"
        needsComma = false
    }

    func field(_ key: String, _ value: String) {
        self.key(key)
        appendString(value)
        needsComma = true
    }

    func field(_ key: String, _ value: UInt64) {
        self.key(key)
        output += String(value)
        needsComma = true
    }

    func field(_ key: String, _ value: Double) {
        self.key(key)
        output += value.isFinite ? "\(value)" : "null"
        needsComma = true
    }

    func attributes(_ attributes: SpanAttributes) {
        var pairs: [(String, SpanAttribute)] = []
        attributes.forEach { pairs.append(($0, $1)) }
        pairs.sort { $0.0 < $1.0 }
        object {
            for (key, value) in pairs {
                self.key(key)
                self.value(value)
                needsComma = true
            }
        }
    }

    private func value(_ attribute: SpanAttribute) {
        switch attribute {
        case .string(let value): appendString(value)
        case .bool(let value): output += value ? "true" : "false"
        case .int32(let value): output += String(value)
        case .int64(let value): output += String(value)
        case .double(let value): output += value.isFinite ? "\(value)" : "null"
        case .stringArray(let values): list(values) { appendString($0) }
        case .boolArray(let values): list(values) { output += $0 ? "true" : "false" }
        case .int32Array(let values): list(values) { output += String($0) }
        case .int64Array(let values): list(values) { output += String($0) }
        case .doubleArray(let values): list(values) { output += $0.isFinite ? "\($0)" : "null" }
        case .stringConvertible(let value): appendString(value.description)
        case .stringConvertibleArray(let values): list(values) { appendString($0.description) }
        default: output += "null"
        }
    }

    private func list<T>(_ values: [T], _ body: (T) -> Void) {
        output += "["
        for (index, value) in values.enumerated() {
            if index > 0 { output += "," }
            body(value)
        }
        output += "]"
    }

    private func separate() {
        if needsComma { output += "," }
    }

    private func appendString(_ string: String) {
        output += "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\r": output += "\\r"
            case "\t": output += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                output += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: output.unicodeScalars.append(scalar)
            }
        }
        output += "\""
    }
}
