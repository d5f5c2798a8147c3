public import Tracing

/// A tracer of one instrumentation scope. Conforms to swift-distributed-tracing's
/// `Tracer` (and so `Instrument`): `withSpan` makes children of
/// `ServiceContext.current`, and `inject` / `extract` move trace context through
/// any string-keyed carrier (see `TraceContextPropagator`).
public struct YoMoTracer: Tracer {
    public typealias Span = YoMoSpan

    let shared: TracerShared?
    public let scope: InstrumentationScope
    /// The provider's propagation choice (both formats for a no-op provider).
    public let propagator: TraceContextPropagator

    init(shared: TracerShared?, scope: InstrumentationScope) {
        self.shared = shared
        self.scope = scope
        self.propagator = shared?.propagator ?? TraceContextPropagator()
    }

    /// False for a disabled or no-op provider: spans then cost almost nothing and
    /// carry the parent's context through unchanged.
    public var isEnabled: Bool { shared != nil }

    /// Whether `startHopSpan(forwardsUnsampledParent: true)` is sure to forward
    /// any valid remote parent that was not sampled: the provider is running
    /// and its sampler is one known to drop such children. False says nothing
    /// (a custom sampler is asked span by span).
    package var forwardsEveryUnsampledParent: Bool {
        guard let shared else { return false }
        return shared.dropsUnsampledRemoteChildren && !shared.isShutdown.load(ordering: .relaxed)
    }

    public func startSpan<Instant: TracerInstant>(
        _ operationName: String,
        context: @autoclosure () -> ServiceContext,
        ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant,
        function: String,
        file fileID: String,
        line: UInt
    ) -> YoMoSpan {
        let parentContext = context()
        // An empty context (the common root case) skips the dictionary lookup.
        let parent = parentContext.isEmpty ? nil : parentContext.spanContext
        return startSpan(operationName, parent: parent, context: parentContext, ofKind: kind, at: instant())
    }

    /// Starts a span with an explicit parent span context (nil or invalid: a
    /// root) whose `context` extends `context`. The data path uses it with the
    /// parent extracted from a frame, which saves putting that parent into a
    /// `ServiceContext` only to read it back; and with its attributes (keys
    /// unique), evaluated only for a recording span and set as it starts, which
    /// saves a `setAttribute` (a lock and a search) each. `fixedAttributes`
    /// (literals, kept inline) come first; keys unique across both.
    /// `forwardsUnsampledParent`: as for `startHopSpan`; the span's context
    /// then holds the parent's ids.
    package func startSpan<Instant: TracerInstant>(
        _ operationName: String,
        parent: SpanContext?,
        context parentContext: ServiceContext,
        ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant,
        attributes: @autoclosure () -> [ListedAttribute] = [],
        fixedAttributes: @autoclosure () -> FixedAttributes = FixedAttributes(),
        forwardsUnsampledParent: Bool = false
    ) -> YoMoSpan {
        switch start(operationName, parent: parent, ofKind: kind, at: instant(), forwardsUnsampledParent: forwardsUnsampledParent) {
        case .recording(let spanContext, let parent, let startTime):
            YoMoSpan(context: parentContext, storage: SpanStorage(
                shared: shared.unsafelyUnwrapped, scope: scope, name: operationName, kind: kind,
                spanContext: spanContext, parentSpanID: parent?.spanID, parentIsRemote: parent?.isRemote ?? false,
                startTime: startTime, attributes: attributes(), fixedAttributes: fixedAttributes()
            ))
        case .unrecorded(let spanContext): YoMoSpan(context: parentContext, unrecorded: spanContext)
        // Still this process's span, on its parent's ids: children started
        // under it are sampled as children of a local parent, as they were
        // under a span id of its own.
        case .forwarded(let parent): YoMoSpan(context: parentContext, unrecorded: parent.local)
        case .disabled: YoMoSpan(context: parentContext, storage: nil)
        }
    }

    /// `startSpan(_:parent:context:...)` for a span whose `context` is never
    /// read (the zipper's, a source's): its ids, and, when it records, its
    /// start; `endHopSpan` makes the recorded span as the hop ends. Nil when
    /// the provider is disabled (or shut down) and `context` holds no span.
    ///
    /// `forwardsUnsampledParent`: a hop the sampler does not record, under a
    /// parent that was not sampled, is its parent's ids (`HopSpan.isForwarded`)
    /// rather than a new span id that names a span nobody records under a
    /// parent nobody recorded. The sampled flag the next hop sees is the same
    /// either way; a hop that forwards need not write the frame's trace context.
    package func startHopSpan<Instant: TracerInstant>(
        _ operationName: String,
        parent: SpanContext?,
        context parentContext: @autoclosure () -> ServiceContext,
        ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant,
        forwardsUnsampledParent: Bool = false
    ) -> HopSpan? {
        switch start(operationName, parent: parent, ofKind: kind, at: instant(), forwardsUnsampledParent: forwardsUnsampledParent) {
        case .recording(let spanContext, let parent, let startTime):
            HopSpan(recording: spanContext, parent: parent, startTime: startTime)
        case .unrecorded(let spanContext): HopSpan(unrecorded: spanContext)
        case .forwarded(let parent): HopSpan(forwarding: parent)
        // As a span of a disabled provider: the context's ids pass through.
        case .disabled: parentContext().spanContext.map(HopSpan.init(unrecorded:))
        }
    }

    /// Ends a hop span, once: a recorded one is made now, already ended
    /// (nothing else holds it, so without its lock), and handed to the
    /// processors. `operationName`, `kind` and `fixedAttributes` are the
    /// span's, as `startSpan` would have been given them; `body`, when given,
    /// changes the span before it ends (an error recorded, a status set).
    package func endHopSpan<Instant: TracerInstant>(
        _ span: HopSpan,
        _ operationName: String,
        ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant,
        fixedAttributes: @autoclosure () -> FixedAttributes = FixedAttributes(),
        _ body: ((YoMoSpan) -> Void)? = nil
    ) {
        guard let start = span.recordedStart, self.shared != nil else { return }
        let end = instant().nanosecondsSinceEpoch
        // Borrowed for the call (see `start`); the storage keeps its own reference.
        Unmanaged.passUnretained(self.shared.unsafelyUnwrapped)._withUnsafeGuaranteedRef { shared in
            let storage = SpanStorage(
                shared: shared, scope: scope, name: operationName, kind: kind, spanContext: span.spanContext,
                parentSpanID: start.parentSpanID, parentIsRemote: start.parentIsRemote, startTime: start.startTime,
                fixedAttributes: fixedAttributes())
            if let body {
                let recorded = YoMoSpan(context: .topLevel, storage: storage)
                body(recorded)
                recorded.endRecording(at: end)
                return
            }
            storage.markEndedUnshared(at: end)
            shared.submit(storage)
        }
    }

    private enum Started {
        /// Recorded: the caller makes the span (at once, or as a hop ends).
        case recording(SpanContext, parent: SpanContext?, startTime: UInt64)
        case unrecorded(SpanContext)
        /// Not recorded, under a parent not sampled: the parent's ids stand for the span.
        case forwarded(SpanContext)
        case disabled
    }

    private func start<Instant: TracerInstant>(
        _ operationName: String,
        parent: SpanContext?,
        ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant,
        forwardsUnsampledParent: Bool = false
    ) -> Started {
        guard self.shared != nil else { return .disabled }
        // Borrowed, not retained: `self` holds it for the call. Every thread that
        // starts spans shares this object, so a retain and release per span
        // contend for its cache line; only a recording span's storage keeps it.
        return Unmanaged.passUnretained(self.shared.unsafelyUnwrapped)._withUnsafeGuaranteedRef { shared in
            guard !shared.isShutdown.load(ordering: .relaxed) else { return .disabled }
            let parent = parent.flatMap { $0.isValid ? $0 : nil }
            let traceID = parent?.traceID ?? TraceID.random()
            let decision = shared.shouldSample(parent: parent, traceID: traceID, name: operationName, kind: kind)
            if forwardsUnsampledParent, !decision.isRecording, let parent, !parent.isSampled { return .forwarded(parent) }
            let spanContext = SpanContext(
                traceID: traceID,
                spanID: SpanID.random(),
                traceFlags: decision.isSampled ? .sampled : [],
                isRemote: false,
                traceState: parent?.traceState ?? ""
            )
            guard decision.isRecording else { return .unrecorded(spanContext) }
            return .recording(spanContext, parent: parent, startTime: instant().nanosecondsSinceEpoch)
        }
    }

    /// Writes `context.spanContext` into the carrier as YoMo keys and W3C
    /// `traceparent` / `tracestate`; writes nothing when there is no span context.
    public func inject<Carrier, Inject: Injector>(
        _ context: ServiceContext,
        into carrier: inout Carrier,
        using injector: Inject
    ) where Inject.Carrier == Carrier {
        guard let spanContext = context.spanContext else { return }
        propagator.inject(spanContext, into: &carrier, using: injector)
    }

    /// Sets `context.spanContext` to the remote parent found in the carrier;
    /// leaves the context as it was when the carrier holds no valid trace context.
    public func extract<Carrier, Extract: Extractor>(
        _ carrier: Carrier,
        into context: inout ServiceContext,
        using extractor: Extract
    ) where Extract.Carrier == Carrier {
        if let spanContext = propagator.extract(from: carrier, using: extractor) {
            context.spanContext = spanContext
        }
    }

    /// Starts a span whose parent is the trace context in `carrier` (W3C
    /// `traceparent` or the YoMo keys), or, when the carrier has none,
    /// `ServiceContext.current`. The YoMo layer calls this with a frame's
    /// metadata; then `inject(span.context, into: &outgoing, using:)` hands the
    /// span on as the parent of the next hop.
    public func startSpan<Carrier, Extract: Extractor>(
        _ operationName: String,
        extractingParentFrom carrier: Carrier,
        using extractor: Extract,
        ofKind kind: SpanKind = .internal,
        function: String = #function,
        file fileID: String = #fileID,
        line: UInt = #line
    ) -> YoMoSpan where Extract.Carrier == Carrier {
        let context = ServiceContext.current ?? .topLevel
        let extracted = propagator.extract(from: carrier, using: extractor)
        guard let shared, !shared.isShutdown.load(ordering: .relaxed) else {
            // Disabled: pass the carrier's parent through, as `extract` would.
            var passedThrough = context
            if let extracted { passedThrough.spanContext = extracted }
            return YoMoSpan(context: passedThrough, storage: nil)
        }
        // The carrier's parent goes straight to the span, not through the context.
        let parent = extracted ?? (context.isEmpty ? nil : context.spanContext)
        return startSpan(operationName, parent: parent, context: context, ofKind: kind, at: DefaultTracerClock.now)
    }

    /// Part of the legacy synchronous tracer API; it cannot wait here. Use
    /// `TracerProvider.forceFlush()`.
    public func forceFlush() {}
}
