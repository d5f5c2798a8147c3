package import Tracing

/// The span of one hop of a frame's path whose `context` the hop never reads
/// (the zipper's, a source's). While the hop runs it is only its ids and, when
/// it records, when it started and under which parent: no object, so the hop
/// allocates nothing and takes no lock or reference count before the frame
/// goes on. `YoMoTracer.endHopSpan` makes the recorded span, already ended,
/// once the hop is done. A sampled-out `YoMoSpan` boxes its ids in an object
/// for its `context`; here they stay inline.
package struct HopSpan: Sendable {
    /// What a recorded hop's span needs from its start.
    struct RecordedStart: Sendable {
        let startTime: UInt64
        let parentSpanID: SpanID?
        let parentIsRemote: Bool
    }

    /// Nil: not recorded (sampled out, or forwarded).
    let recordedStart: RecordedStart?
    /// This span's ids, which the next hop's span takes as its parent.
    package let spanContext: SpanContext

    /// Whether this span is its unsampled parent's ids, handed on as they came
    /// (`YoMoTracer.startHopSpan(forwardsUnsampledParent:)`).
    package let isForwarded: Bool

    init(recording spanContext: SpanContext, parent: SpanContext?, startTime: UInt64) {
        self.recordedStart = RecordedStart(startTime: startTime, parentSpanID: parent?.spanID, parentIsRemote: parent?.isRemote ?? false)
        self.spanContext = spanContext
        self.isForwarded = false
    }

    init(unrecorded spanContext: SpanContext) {
        self.recordedStart = nil
        self.spanContext = spanContext
        self.isForwarded = false
    }

    package init(forwarding parent: SpanContext) {
        self.recordedStart = nil
        self.spanContext = parent
        self.isForwarded = true
    }

    /// Whether `YoMoTracer.endHopSpan` records the span.
    package var isRecording: Bool { recordedStart != nil }

    /// The span's ids and flags as a `YoMoSpan` in `context`, for code that
    /// reads its context (a log record written under it).
    package func span(in context: ServiceContext) -> YoMoSpan {
        YoMoSpan(context: context, unrecorded: spanContext)
    }
}
