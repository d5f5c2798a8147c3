public import Tracing

/// The span of one hop of a frame's path whose `context` the hop never reads
/// (the zipper's, a source's): a recording `YoMoSpan`, or, sampled out, only
/// its ids. A sampled-out `YoMoSpan` boxes its ids in an object for its
/// `context`; here they stay inline, so handing ids on costs no allocation.
package struct HopSpan: Sendable {
    /// The span, when it records (nil: sampled out).
    package let recording: YoMoSpan?
    /// This span's ids, which the next hop's span takes as its parent.
    package let spanContext: SpanContext

    /// Whether this span is its unsampled parent's ids, handed on as they came
    /// (`YoMoTracer.startHopSpan(forwardsUnsampledParent:)`).
    package let isForwarded: Bool

    init(recording: YoMoSpan) {
        self.recording = recording
        self.spanContext = recording.spanContext.unsafelyUnwrapped
        self.isForwarded = false
    }

    init(unrecorded spanContext: SpanContext) {
        self.recording = nil
        self.spanContext = spanContext
        self.isForwarded = false
    }

    package init(forwarding parent: SpanContext) {
        self.recording = nil
        self.spanContext = parent
        self.isForwarded = true
    }

    /// The span as a `YoMoSpan` in `context`, for code that reads its context
    /// (a log record written under it): boxes a sampled-out span's ids.
    package func span(in context: ServiceContext) -> YoMoSpan {
        recording ?? YoMoSpan(context: context, unrecorded: spanContext)
    }

    package func end() { recording?.end() }
}
