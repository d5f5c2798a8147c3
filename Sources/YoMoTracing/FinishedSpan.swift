public import Tracing

/// An ended span as processors and exporters see it (the OTel SDK's "SpanData").
///
/// A view of the ended span's storage, which no longer changes once ended:
/// handing it to processors costs one retain, not a copy of every field.
public struct FinishedSpan: Sendable {
    public struct Link: Sendable {
        public var context: SpanContext
        public var attributes: SpanAttributes
        public var droppedAttributeCount: Int
    }

    let storage: SpanStorage

    init(storage: SpanStorage) {
        self.storage = storage
    }

    public var name: String { storage.name }
    public var kind: SpanKind { storage.kind }
    public var context: SpanContext { storage.spanContext }
    /// Nil for a root span.
    public var parentSpanID: SpanID? { storage.parentSpanID }
    /// True when the parent came from another process (OTLP `flags` bits 8-9).
    public var parentIsRemote: Bool { storage.parentIsRemote }
    public var startTimeNanoseconds: UInt64 { storage.startTime }
    public var endTimeNanoseconds: UInt64 { storage.endTime }
    public var attributes: SpanAttributes { storage.mergedAttributes }
    public var droppedAttributeCount: Int { storage.droppedAttributeCount }
    public var events: [SpanEvent] { storage.events }
    public var droppedEventCount: Int { storage.droppedEventCount }
    public var links: [Link] { storage.links }
    public var droppedLinkCount: Int { storage.droppedLinkCount }
    /// Nil when never set (OTLP "unset").
    public var status: SpanStatus? { storage.status }
    public var scope: InstrumentationScope { storage.scope }
    public var resource: Resource { storage.shared.resource }
}

/// Receives spans as they end. `onEnd` runs on the thread that ended the span,
/// so it must not block.
public protocol SpanProcessor: Sendable {
    func onEnd(_ span: FinishedSpan)
    /// Returns once everything ended before the call was handed to the exporter.
    func forceFlush() async
    /// Flushes, then shuts the exporter down; later spans are ignored.
    func shutdown() async
    /// `forceFlush()` that returns after `timeout` at the latest, whatever the
    /// exporter is doing (what is not exported yet stays queued).
    func forceFlush(timeout: Duration) async
    /// `shutdown()` that returns after `timeout` at the latest: what could not be
    /// exported by then is dropped (and, by the batch processor, counted and reported).
    func shutdown(timeout: Duration) async
}

extension SpanProcessor {
    /// Default: unbounded, for processors that do not block.
    public func forceFlush(timeout: Duration) async { await forceFlush() }
    /// Default: unbounded, for processors that do not block.
    public func shutdown(timeout: Duration) async { await shutdown() }
}

/// Sends batches of ended, sampled spans somewhere. Called from one thread at a
/// time (the batch processor's export thread), so it may block.
///
/// Exporters log their own failures (the processors log them only at debug).
public protocol SpanExporter: Sendable {
    /// - Parameter timeout: the time the whole export, retries included, may take.
    func export(_ spans: [FinishedSpan], timeout: Duration) throws(TracingError)
    func forceFlush()
    func shutdown()
    /// The batch processor's shutdown has started and gives up `timeout` from
    /// now: an export in flight then, or started later, should return by that
    /// time (the processor cannot interrupt a blocked `export`). Failures from
    /// then on may be left to the processor, which reports everything it could
    /// not export in one line. Called from any thread, before `shutdown()`.
    func abandonExports(after timeout: Duration)
}

extension SpanExporter {
    public func forceFlush() {}
    public func shutdown() {}
    /// Default: nothing; each export's `timeout` is then its only bound.
    public func abandonExports(after timeout: Duration) {}
}
