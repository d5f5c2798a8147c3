public import Instrumentation

/// The propagated part of a span: ids, flags, remote-ness and W3C tracestate.
public struct SpanContext: Sendable, Hashable, CustomStringConvertible {
    public var traceID: TraceID
    public var spanID: SpanID
    public var traceFlags: TraceFlags
    /// True when this context was extracted from a carrier (came from another process).
    public var isRemote: Bool
    /// The W3C `tracestate` header value, passed through unchanged; empty when absent.
    public var traceState: String

    public init(
        traceID: TraceID,
        spanID: SpanID,
        traceFlags: TraceFlags = .sampled,
        isRemote: Bool = false,
        traceState: String = ""
    ) {
        self.traceID = traceID
        self.spanID = spanID
        self.traceFlags = traceFlags
        self.isRemote = isRemote
        self.traceState = traceState
    }

    public var isSampled: Bool { traceFlags.contains(.sampled) }

    /// Both ids non-zero.
    public var isValid: Bool { traceID.isValid && spanID.isValid }

    /// The W3C `traceparent` value: `00-<trace id>-<span id>-<flags>`.
    public var traceparent: String {
        "00-\(traceID)-\(spanID)-\(traceFlags.contains(.sampled) ? "01" : "00")"
    }

    public var description: String { traceparent }

    /// The same context, as one of this process's spans holds it.
    var local: SpanContext {
        var context = self
        context.isRemote = false
        return context
    }
}

/// Holds a span context inside a `ServiceContext`. A class, so storing it is a
/// retain instead of boxing a 48-byte struct; a recording span's storage is a
/// subclass and is stored itself (no extra allocation per span).
class SpanContextBox: @unchecked Sendable {
    final let spanContext: SpanContext

    init(_ spanContext: SpanContext) {
        self.spanContext = spanContext
    }
}

private enum SpanContextKey: ServiceContextKey {
    typealias Value = SpanContextBox
    static var nameOverride: String? { "yomo-span-context" }
}

extension ServiceContext {
    /// The span context of the current span (or of the remote parent after
    /// extraction). Loggers read it to stamp `trace_id` / `span_id`.
    public var spanContext: SpanContext? {
        get { self[SpanContextKey.self]?.spanContext }
        set { self[SpanContextKey.self] = newValue.map(SpanContextBox.init) }
    }

    var spanContextBox: SpanContextBox? {
        get { self[SpanContextKey.self] }
        set { self[SpanContextKey.self] = newValue }
    }
}
