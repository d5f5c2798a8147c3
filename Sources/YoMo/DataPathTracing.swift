internal import Logging
internal import Tracing
internal import YoMoTracing
internal import YoMoWire
internal import NIOCore
import Synchronization

/// Frame metadata as a trace-context carrier: the YoMo keys (`yomo-trace-id`,
/// `yomo-span-id`) for the Go side and W3C `traceparent` / `tracestate`.
struct MetadataInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout Metadata) { carrier[key] = value }
}

struct MetadataExtractor: Extractor {
    func extract(key: String, from carrier: Metadata) -> String? { carrier[key] }
}

/// The spans of the data path, as the last Go scheme that produced whole traces
/// names them (PROTOCOL.md, "Tracing in metadata"). Each starts as a child of
/// the frame's metadata and writes its own ids back before the frame goes on.
struct DataPathTracer: Sendable {
    let tracer: YoMoTracer

    static let disabled = DataPathTracer(tracer: TracerProvider.noop.tracer("YoMo"))

    /// The given provider, or one from the environment that the caller then owns
    /// (and must shut down). Its `service.name` is `OTEL_SERVICE_NAME` when set,
    /// else the client's (or zipper's) name.
    static func resolve(
        _ provider: TracerProvider?,
        serviceName: String,
        scope: String,
        environment: [String: String] = ProcessEnvironment.current
    ) -> (DataPathTracer, owned: TracerProvider?) {
        if let provider { return (DataPathTracer(tracer: provider.tracer(scope)), nil) }
        let nameFromEnvironment = environment["OTEL_SERVICE_NAME"].map { !$0.trimmingSpaces().isEmpty } ?? false
        let fromEnvironment = TracerProvider.fromEnvironment(
            serviceName: nameFromEnvironment ? nil : serviceName, environment: environment
        )
        return (DataPathTracer(tracer: fromEnvironment.tracer(scope)), fromEnvironment.isEnabled ? fromEnvironment : nil)
    }

    /// The source's span (scope "Source"), kind producer. `metadata(_:carrying:)`
    /// gives the frame's metadata with its ids; `endSourceSpan` ends it.
    func sourceSpan(name: String) -> HopSpan? {
        guard tracer.isEnabled else { return nil }
        return startHopSpan(name, parent: nil, context: ServiceContext.current ?? .topLevel, ofKind: .producer)
    }

    /// Ends `sourceSpan(name:)`'s span, recording `error` (the write failed) on it.
    func endSourceSpan(_ span: HopSpan?, name: String, tag: UInt32, length: Int, failing error: (any Error)? = nil) {
        guard let span else { return }
        tracer.endHopSpan(
            span, name, ofKind: .producer, at: DefaultTracerClock.now,
            fixedAttributes: FixedAttributes(.init("send_data_tag", .int64(Int64(tag))), .init("send_data_len", .int64(Int64(length)))),
            error.map { error in { $0.fail(error) } })
    }

    /// `metadata` encoded with the span's ids injected, as `inject` then
    /// `encoded()` give them; the ids are written straight after the entries
    /// when the metadata holds no trace key and no `tracestate` is to be written.
    func metadata(_ metadata: Metadata, carrying span: HopSpan?) -> ByteBuffer {
        guard let spanContext = span?.spanContext, spanContext.isValid else { return metadata.encoded() }
        if let values = Self.patch(spanContext, formats: tracer.propagator.formats),
           let encoded = metadata.encoded(appending: values) {
            return encoded
        }
        var injected = metadata
        inject(spanContext, into: &injected)
        return injected.encoded()
    }

    /// The zipper's span ("zipper endpoint", scope "Zipper"), ended by
    /// `endZipperSpan` once the frame is routed. `context` is the task's
    /// (`ServiceContext.current`), which the zipper reads once per connection
    /// rather than once per frame.
    func zipperSpan(metadata: inout Metadata, context: ServiceContext) -> HopSpan? {
        guard tracer.isEnabled else { return nil }
        let span = startZipperSpan(parent: extractParent(from: metadata), context: context)
        inject(span, into: &metadata)
        return span
    }

    /// A hop the zipper does not record, under a parent not sampled, is the
    /// parent's ids (`HopSpan.isForwarded`): the frame's trace context goes on
    /// as it came, as a W3C intermediary that does not trace may hand it on.
    private func startZipperSpan(parent: SpanContext?, context: ServiceContext) -> HopSpan? {
        startHopSpan("zipper endpoint", parent: parent, context: context, ofKind: .internal, forwardsUnsampledParent: true)
    }

    /// Ends a zipper span (a recorded one is made now, with the frame's tag
    /// and length as its attributes).
    func endZipperSpan(_ span: HopSpan?, tag: UInt32, length: Int) {
        guard let span else { return }
        tracer.endHopSpan(
            span, "zipper endpoint", ofKind: .internal, at: DefaultTracerClock.now,
            fixedAttributes: FixedAttributes(.init("routing_data_tag", .int64(Int64(tag))), .init("routing_data_len", .int64(Int64(length)))))
    }

    /// A held frame as it goes to `function`: its wait, from when it was held
    /// (`waited` ago) until now, recorded as a span ("zipper hold", with the
    /// reason) under the frame's parent, the zipper's span, and the frame's
    /// trace context moved to that span, so that the function's span follows
    /// it and a trace shows where a delayed frame's time went. Under a parent
    /// not sampled, or with tracing off, the frame as it is.
    func heldFrame(_ frame: DataFrame, waited: Duration, reason: StaticString, function: String) -> DataFrame {
        waitedFrame(
            frame, span: "zipper hold", waited: waited, attributes: Self.holdAttributes(frame, reason: reason),
            listed: [ListedAttribute(key: "messaging.consumer.group.name", value: .string(function))])
    }

    private static func holdAttributes(_ frame: DataFrame, reason: StaticString) -> FixedAttributes {
        FixedAttributes(.init("yomo.hold.reason", .string(reason)), .init("routing_data_tag", .int64(Int64(frame.tag))))
    }

    /// A held frame whose wait ended with nobody taking it for `missing` (the
    /// names it was held for, or none: any function that came): the span of
    /// its wait ("zipper hold"), ended now with an error status, so that the
    /// frame's trace says it was dropped and why rather than simply ending at
    /// the zipper.
    @discardableResult
    func droppedHeldFrame(_ frame: DataFrame, waited: Duration, reason: StaticString, missing: Set<String>, cause: String) -> YoMoSpan? {
        let names = missing.sorted().joined(separator: ",")
        return waitSpan(
            of: frame, name: "zipper hold", waited: waited, attributes: Self.holdAttributes(frame, reason: reason),
            listed: names.isEmpty ? [] : [ListedAttribute(key: "messaging.consumer.group.name", value: .string(names))],
            status: SpanStatus(code: .error, message: cause))?.span
    }

    /// A frame the zipper did not send on to `destination` (a function's name,
    /// or a mesh downstream's): a span ("zipper drop") under `parent`, the
    /// zipper's span for the frame, ended at once in error status with `cause`
    /// and `yomo.drop.reason`, so that the frame's trace says where and why it
    /// ended instead of simply stopping at the zipper. Nil, and nothing
    /// recorded, with tracing off or under a parent not sampled; else the span,
    /// for a log line that should carry the frame's trace id.
    @discardableResult
    func droppedFrame(under parent: SpanContext?, tag: UInt32, reason: StaticString, destination: DropDestination, cause: String) -> YoMoSpan? {
        guard tracer.isEnabled, let parent, parent.isSampled else { return nil }
        let now = DefaultTracerClock.now
        let span = tracer.startSpan(
            "zipper drop", parent: parent, context: .topLevel, ofKind: .internal, at: now,
            attributes: [ListedAttribute(key: destination.attributeKey, value: .string(destination.name))],
            fixedAttributes: FixedAttributes(.init("yomo.drop.reason", .string(reason)), .init("routing_data_tag", .int64(Int64(tag)))))
        span.setStatus(SpanStatus(code: .error, message: cause))
        span.end(at: now)
        return span
    }

    /// `droppedFrame(under:...)` for a frame whose zipper span is known only
    /// from its metadata (a frame a mesh link had queued): decoded only here.
    @discardableResult
    func droppedFrame(_ frame: DataFrame, reason: StaticString, destination: DropDestination, cause: String) -> YoMoSpan? {
        guard tracer.isEnabled, let metadata = try? Metadata(decoding: frame.metadata) else { return nil }
        return droppedFrame(under: extractParent(from: metadata), tag: frame.tag, reason: reason, destination: destination, cause: cause)
    }

    /// Where a dropped frame was going, as its drop span names it.
    enum DropDestination {
        case function(String)
        case meshDownstream(String)

        var attributeKey: String {
            switch self {
            case .function: "messaging.consumer.group.name"
            case .meshDownstream: "yomo.mesh.downstream"
            }
        }

        var name: String {
            switch self {
            case .function(let name), .meshDownstream(let name): name
            }
        }
    }

    /// A frame a client held while it reconnected, as it goes to the new
    /// connection: its wait, recorded as a span ("client outage") under the
    /// frame's parent (the writer's span), as `heldFrame` does at the zipper.
    /// `resent`: it was written to the lost connection, which the zipper had
    /// not acknowledged (or settled, with receipts); else written meanwhile.
    /// `meshLink`: the client is a zipper's link to a downstream zipper.
    func outageFrame(_ frame: DataFrame, waited: Duration, resent: Bool, meshLink: Bool = false) -> DataFrame {
        waitedFrame(frame, span: Self.outageSpanName(meshLink), waited: waited, attributes: Self.outageAttributes(frame, resent: resent))
    }

    private static func outageSpanName(_ meshLink: Bool) -> String { meshLink ? "mesh link outage" : "client outage" }

    /// A frame a zipper's previous run kept for a mesh downstream at its
    /// close (`MeshKeptFile`), as this run's link takes it: its wait since
    /// that close, recorded as a `mesh link outage` span (reason
    /// `kept_at_close`) under the frame's parent, the previous run's span.
    /// `spooled`: the previous run ended without closing and the frame is
    /// one its link's spool kept (reason `spooled`, its wait since the spool began).
    func keptFrame(_ frame: DataFrame, waited: Duration, spooled: Bool = false) -> DataFrame {
        waitedFrame(
            frame, span: Self.outageSpanName(true), waited: waited,
            attributes: Self.outageAttributes(frame, reason: spooled ? "spooled" : "kept_at_close"))
    }

    private static func outageAttributes(_ frame: DataFrame, resent: Bool) -> FixedAttributes {
        outageAttributes(frame, reason: resent ? "resent" : "buffered")
    }

    private static func outageAttributes(_ frame: DataFrame, reason: StaticString) -> FixedAttributes {
        FixedAttributes(.init("yomo.outage.reason", .string(reason)), .init("send_data_tag", .int64(Int64(frame.tag))))
    }

    /// A frame a client held while it reconnected, dropped (`cause`): the span
    /// of its wait, as `outageFrame` records it, ended now in error status, so
    /// that the frame's trace says it went no further and why. The span, for a
    /// log line that should carry its trace id; nil when nothing was recorded.
    func droppedOutageFrame(_ frame: DataFrame, waited: Duration, resent: Bool, meshLink: Bool, cause: String) -> YoMoSpan? {
        waitSpan(
            of: frame, name: Self.outageSpanName(meshLink), waited: waited, attributes: Self.outageAttributes(frame, resent: resent),
            status: SpanStatus(code: .error, message: cause))?.span
    }

    /// `frame` with its trace context moved to a new span, `span`, that began
    /// `waited` ago and ends now, a child of the frame's parent; the frame as
    /// it is with tracing off or under a parent not sampled (its wait is then
    /// recorded nowhere, as the hops around it).
    private func waitedFrame(
        _ frame: DataFrame, span name: String, waited: Duration, attributes: FixedAttributes, listed: [ListedAttribute] = []
    ) -> DataFrame {
        guard let (span, metadata) = waitSpan(of: frame, name: name, waited: waited, attributes: attributes, listed: listed) else { return frame }
        var moved = metadata
        inject(span, into: &moved)
        return DataFrame(tag: frame.tag, metadata: moved.encoded(), payload: frame.payload)
    }

    /// The span of `frame`'s wait, `name`, begun `waited` ago and ended now
    /// (in error status with `status`), a child of the frame's parent, with
    /// the frame's metadata as decoded; nil, and nothing recorded, with
    /// tracing off or under a parent not sampled.
    private func waitSpan(
        of frame: DataFrame, name: String, waited: Duration, attributes: FixedAttributes, listed: [ListedAttribute] = [],
        status: SpanStatus? = nil
    ) -> (span: YoMoSpan, metadata: Metadata)? {
        guard tracer.isEnabled, let metadata = try? Metadata(decoding: frame.metadata),
              let parent = extractParent(from: metadata), parent.isSampled else { return nil }
        let now = DefaultTracerClock.now.nanosecondsSinceEpoch
        let nanoseconds = UInt64(clamping: waited.components.seconds) &* 1_000_000_000 &+ UInt64(clamping: waited.components.attoseconds / 1_000_000_000)
        let span = tracer.startSpan(
            name, parent: parent, context: .topLevel, ofKind: .internal,
            at: DefaultTracerClock.Instant(nanosecondsSinceEpoch: now - min(now, nanoseconds)),
            attributes: listed, fixedAttributes: attributes)
        if let status { span.setStatus(status) }
        span.end(at: DefaultTracerClock.Instant(nanosecondsSinceEpoch: now))
        return (span, metadata)
    }

    /// The zipper's span for metadata read in place whose trace values are all
    /// canonical (`MetadataView.canonicalTrace`), and the digits to write over
    /// them: what `zipperSpan(metadata:)` does with `traceMetadata`, without
    /// building a `Metadata`. Nil, with no span started, when the general path
    /// is needed: no parent found this way, or a key the formats write absent.
    /// A nil patch with a span: hand that span on by the general path.
    func zipperSpan(
        trace: MetadataView.CanonicalTrace, context: ServiceContext
    ) -> (span: HopSpan?, patch: MetadataView.TracePatch?)? {
        let formats = tracer.propagator.formats
        // Propagation only, decided from the frame alone: an unsampled parent
        // under a sampler that drops such children is forwarded as it came, as
        // `startZipperSpan` would.
        if let fields = Self.unsampledParentAsWritten(in: trace, formats: formats), tracer.forwardsEveryUnsampledParent,
           let parent = Self.remoteParent(fields) {
            return (HopSpan(forwarding: parent), MetadataView.TracePatch())
        }
        guard tracer.isEnabled, let parent = parent(in: trace, formats: formats),
              !formats.contains(.traceContext) || trace.traceparent != nil,
              !formats.contains(.yomo) || (trace.traceID != nil && trace.spanID != nil)
        else { return nil }
        let span = startZipperSpan(parent: parent, context: context)
        guard let spanContext = span?.spanContext, spanContext.isValid else { return (span, MetadataView.TracePatch()) }
        // A forwarded parent (unsampled: only `traceparent` names one) already
        // written as `inject` writes it: nothing to write.
        if span?.isForwarded == true, Self.unsampledParentAsWritten(in: trace, formats: formats) != nil {
            return (span, MetadataView.TracePatch())
        }
        return (span, Self.patch(spanContext, formats: formats))
    }

    /// The unsampled parent `trace`'s `traceparent` names, when the frame holds
    /// exactly what `inject` writes for it with `formats` (flags 00, the YoMo
    /// keys repeating its ids): a hop that forwards it writes nothing. Nil
    /// otherwise (a sampled parent, other flags, keys that disagree, or a
    /// format that does not carry `traceparent`).
    static func unsampledParentAsWritten(
        in trace: MetadataView.CanonicalTrace, formats: TraceContextPropagator.Formats
    ) -> TraceparentFields? {
        guard formats.contains(.traceContext), let fields = trace.traceparent, fields.flags == 0 else { return nil }
        if formats.contains(.yomo) {
            guard let traceID = trace.traceID, traceID == (fields.traceIDHigh, fields.traceIDLow), trace.spanID == fields.spanID else {
                return nil
            }
        }
        return fields
    }

    /// The parent `extractParent(from:)` finds in canonical trace values, or nil
    /// where it would ask the propagator (which the general path then does).
    func parent(in trace: MetadataView.CanonicalTrace, formats: TraceContextPropagator.Formats) -> SpanContext? {
        // No tracestate: canonicalTrace is nil when the frame has one.
        if formats.contains(.traceContext), let fields = trace.traceparent, let parent = Self.remoteParent(fields) {
            return parent
        }
        if formats.contains(.yomo), let traceID = trace.traceID, let spanID = trace.spanID {
            return Self.remoteParent(yomoTraceID: traceID, spanID: spanID)
        }
        return nil
    }

    /// The parent a valid `traceparent` names (flags other than sampled dropped);
    /// nil for a zero trace or span id, which the propagator ignores too.
    private static func remoteParent(_ fields: TraceparentFields) -> SpanContext? {
        let traceID = TraceID(high: fields.traceIDHigh, low: fields.traceIDLow)
        guard traceID.isValid && fields.spanID != 0 else { return nil }
        return SpanContext(
            traceID: traceID, spanID: SpanID(rawValue: fields.spanID),
            traceFlags: TraceFlags(rawValue: fields.flags & TraceFlags.sampled.rawValue), isRemote: true
        )
    }

    /// The parent the YoMo keys name (always sampled: they carry no flags); nil for zero ids.
    private static func remoteParent(yomoTraceID traceID: (high: UInt64, low: UInt64), spanID: UInt64) -> SpanContext? {
        guard traceID.high != 0 || traceID.low != 0, spanID != 0 else { return nil }
        return SpanContext(
            traceID: TraceID(high: traceID.high, low: traceID.low), spanID: SpanID(rawValue: spanID),
            traceFlags: .sampled, isRemote: true
        )
    }

    /// What `inject(_:into:)` writes, as digits over the values present; nil
    /// when it would also write a `tracestate`.
    static func patch(_ spanContext: SpanContext, formats: TraceContextPropagator.Formats) -> MetadataView.TracePatch? {
        guard spanContext.traceState.isEmpty || !formats.contains(.traceContext) else { return nil }
        return traceValues(spanContext, formats: formats)
    }

    /// The trace values `formats` carry for `spanContext`, `tracestate` aside.
    private static func traceValues(
        _ spanContext: SpanContext, formats: TraceContextPropagator.Formats
    ) -> MetadataView.TracePatch {
        var values = MetadataView.TracePatch()
        if formats.contains(.traceContext) {
            values.traceparent = TraceparentFields(
                traceIDHigh: spanContext.traceID.high, traceIDLow: spanContext.traceID.low,
                spanID: spanContext.spanID.rawValue, flags: spanContext.isSampled ? 1 : 0
            )
        }
        if formats.contains(.yomo) {
            values.yomo = (spanContext.traceID.high, spanContext.traceID.low, spanContext.spanID.rawValue)
        }
        return values
    }

    /// The stream function's span (scope "StreamFunction", named after it),
    /// kind consumer, with its ids written into `metadata`.
    func functionSpan(name: String, handlerType: StaticString, tag: UInt32, length: Int, metadata: inout Metadata) -> YoMoSpan? {
        let span = functionSpan(name: name, handlerType: handlerType, tag: tag, length: length, received: metadata)
        inject(span, into: &metadata)
        return span
    }

    /// The stream function's span, its ids not yet written anywhere: an async
    /// handler's `Context` writes them into its metadata only when read
    /// (`ResendableMetadata.metadata()`).
    func functionSpan(name: String, handlerType: StaticString, tag: UInt32, length: Int, received metadata: Metadata) -> YoMoSpan? {
        guard tracer.isEnabled else { return nil }
        return startFunctionSpan(name: name, handlerType: handlerType, tag: tag, length: length, parent: extractParent(from: metadata))
    }

    /// The stream function's span for metadata read in place: the parent that
    /// `extractParent` finds in the decoded metadata, read without decoding it.
    /// `trace`: the view's `canonicalTrace`, when read.
    func functionSpan(
        name: String, handlerType: StaticString, tag: UInt32, length: Int, view: MetadataView, trace: MetadataView.CanonicalTrace?
    ) -> YoMoSpan? {
        guard tracer.isEnabled else { return nil }
        return startFunctionSpan(
            name: name, handlerType: handlerType, tag: tag, length: length, parent: extractParent(from: view, trace: trace))
    }

    /// Not recorded, under a parent not sampled, the span is the parent's ids
    /// (as the zipper's hop is): no new span id names a span nobody records,
    /// and a reply carries the frame's trace context as it came.
    private func startFunctionSpan(name: String, handlerType: StaticString, tag: UInt32, length: Int, parent: SpanContext?) -> YoMoSpan {
        startSpan(
            name, parent: parent, context: ServiceContext.current ?? .topLevel, ofKind: .consumer,
            attributes: FixedAttributes(
                .init("sfn_handler_type", .string(handlerType)),
                .init("recv_data_tag", .int64(Int64(tag))), .init("recv_data_len", .int64(Int64(length)))),
            forwardsUnsampledParent: true
        )
    }

    /// `extractParent(from:)` of the decoded metadata: canonical values
    /// (`trace`, the view's `canonicalTrace`) are read as numbers in place; any
    /// other form goes through the trace keys alone (all `extractParent` reads).
    func extractParent(from view: MetadataView, trace: MetadataView.CanonicalTrace?) -> SpanContext? {
        guard MetadataView.Key.traceKeys.contains(where: view.contains) else { return nil }
        if let trace, let parent = parent(in: trace, formats: tracer.propagator.formats) { return parent }
        return extractParent(from: view.traceMetadata)
    }

    /// The bytes a handler's writes carry as metadata, when they can be the
    /// received bytes (`view`) with the function's span ids written over the
    /// old ones: what `functionSpan` writes into the decoded metadata, without
    /// encoding it again. Nil when the metadata must be encoded (a trace key
    /// was absent, or a tracestate is to be written).
    /// `present`: the view's `canonicalTrace`, when read (digits that stay
    /// the same, usually the trace id, are then not written again).
    func resendable(_ view: MetadataView?, after span: YoMoSpan?, over present: MetadataView.CanonicalTrace? = nil) -> ResendableMetadata? {
        guard let view else { return nil }
        // No span, or no valid ids: functionSpan writes nothing.
        guard let spanContext = span?.spanContext, spanContext.isValid else { return ResendableMetadata(view: view, patch: nil) }
        let formats = tracer.propagator.formats
        // A forwarded parent already written as `inject` writes it: the bytes go on as they came.
        if let present, let fields = Self.unsampledParentAsWritten(in: present, formats: formats),
           spanContext.spanID.rawValue == fields.spanID, !spanContext.isSampled,
           spanContext.traceID == TraceID(high: fields.traceIDHigh, low: fields.traceIDLow) {
            return ResendableMetadata(view: view, patch: nil)
        }
        guard let trace = Self.patch(spanContext, formats: formats), let patch = view.patch(trace, over: present) else { return nil }
        return ResendableMetadata(view: view, patch: patch, ids: trace)
    }

    /// `startSpan` for a span whose context is never read: sampled out, it is
    /// only its ids (no object).
    private func startHopSpan(
        _ name: String, parent: SpanContext?, context: ServiceContext, ofKind kind: SpanKind, forwardsUnsampledParent: Bool = false
    ) -> HopSpan? {
        let parent = parent ?? (context.isEmpty ? nil : context.spanContext)
        return tracer.startHopSpan(
            name, parent: parent, context: context, ofKind: kind, at: DefaultTracerClock.now,
            forwardsUnsampledParent: forwardsUnsampledParent)
    }

    /// A span whose parent is the frame's (`parent`, from its trace context), or
    /// else the task's (`context`): what `startSpan(extractingParentFrom:)` does,
    /// without strings. `attributes` are built only for a recording span.
    private func startSpan(
        _ name: String, parent: SpanContext?, context: ServiceContext, ofKind kind: SpanKind,
        attributes: @autoclosure () -> FixedAttributes, forwardsUnsampledParent: Bool = false
    ) -> YoMoSpan {
        let parent = parent ?? (context.isEmpty ? nil : context.spanContext)
        return tracer.startSpan(
            name, parent: parent, context: context, ofKind: kind, at: DefaultTracerClock.now, fixedAttributes: attributes(),
            forwardsUnsampledParent: forwardsUnsampledParent)
    }

    /// The remote parent in a frame's metadata, as `TraceContextPropagator.extract`
    /// finds it. Trace values held as numbers (their usual, canonical form) are
    /// read without making strings; any other form goes to the propagator.
    func extractParent(from metadata: Metadata) -> SpanContext? {
        let propagator = tracer.propagator
        if propagator.formats.contains(.traceContext) {
            switch metadata.traceparentValue {
            case .fields(let fields):
                // An invalid one is ignored: the YoMo keys are read next, as the propagator does.
                if var parent = Self.remoteParent(fields) {
                    if let traceState = metadata[TraceContextPropagator.tracestateKey],
                       traceState.utf8.count <= TraceContextPropagator.maxTraceStateLength {
                        parent.traceState = traceState.trimmingSpaces()
                    }
                    return parent
                }
            case .text:
                return propagator.extract(from: metadata, using: MetadataExtractor())
            case .absent:
                break
            }
        }
        if propagator.formats.contains(.yomo),
           case .fields(let traceID) = metadata.yomoTraceIDValue, case .fields(let spanID) = metadata.yomoSpanIDValue,
           let parent = Self.remoteParent(yomoTraceID: traceID, spanID: spanID) {
            return parent
        }
        return propagator.extract(from: metadata, using: MetadataExtractor())
    }

    /// Writes the span's ids straight from its span context: building
    /// `span.context` (a `ServiceContext`) just to read them back would cost
    /// a dictionary insert per frame.
    func inject(_ span: YoMoSpan?, into metadata: inout Metadata) {
        guard let spanContext = span?.spanContext else { return }
        inject(spanContext, into: &metadata)
    }

    func inject(_ span: HopSpan?, into metadata: inout Metadata) {
        guard let span else { return }
        inject(span.spanContext, into: &metadata)
    }

    /// What `TraceContextPropagator.inject` writes, with the ids written as
    /// numbers (formatted only when the metadata is encoded or read as text).
    func inject(_ spanContext: SpanContext, into metadata: inout Metadata) {
        guard spanContext.isValid else { return }
        let values = Self.traceValues(spanContext, formats: tracer.propagator.formats)
        // tracestate travels with traceparent only.
        metadata.setTrace(
            traceparent: values.traceparent, tracestate: values.traceparent != nil ? spanContext.traceState : nil, yomo: values.yomo)
    }

    /// Writes the current task's trace context (if any) into outgoing metadata.
    func injectCurrent(into metadata: inout Metadata) {
        guard tracer.isEnabled, let spanContext = ServiceContext.current?.spanContext else { return }
        inject(spanContext, into: &metadata)
    }
}

extension YoMoSpan {
    /// Records a handler's error on its span: the error event and error status.
    func fail(_ error: any Error) {
        recordError(error)
        setStatus(SpanStatus(code: .error, message: "\(error)"))
    }
}

extension DataPathTracer {
    /// Runs synchronous `body` with the span as the current context, so that log
    /// records written in it (the data path's own, an error handler's) carry the
    /// frame's trace id.
    func withCurrent<T>(_ span: YoMoSpan?, _ body: () throws -> T) rethrows -> T {
        guard let span else { return try body() }
        return try ServiceContext.withValue(span.context, operation: body)
    }

    /// A debug record of one step of a frame's path, written under the step's
    /// span so it carries the frame's trace id. The level is checked first: with
    /// debug off this costs neither the context switch nor the metadata.
    func debug(
        _ logger: Logger,
        under span: YoMoSpan?,
        _ message: @autoclosure () -> Logger.Message,
        metadata: @autoclosure () -> Logger.Metadata
    ) {
        guard logger.logLevel <= .debug else { return }
        withCurrent(span) { logger.debug(message(), metadata: metadata()) }
    }

    /// `debug(_:under:...)` under a hop's span; `context` is the one the span
    /// started in (read only when debug records are written).
    func debug(
        _ logger: Logger,
        under span: HopSpan?,
        in context: @autoclosure () -> ServiceContext,
        _ message: @autoclosure () -> Logger.Message,
        metadata: @autoclosure () -> Logger.Metadata
    ) {
        guard logger.logLevel <= .debug else { return }
        withCurrent(span?.span(in: context())) { logger.debug(message(), metadata: metadata()) }
    }

    /// Runs `body` with this tracer as the task's tracer, which the tasks it
    /// starts inherit: a client sets it once around all its handlers, not per frame.
    func withTaskTracer<T>(_ body: () async -> T) async -> T {
        guard tracer.isEnabled else { return await body() }
        return await withTracer(tracer) { await body() }
    }

    /// Runs `body` with the span as the current context, so `withSpan` inside —
    /// ours, a library's, or the free function, under `withTaskTracer` — makes
    /// children of the frame's span without any global bootstrap. Ends the span
    /// when `body` returns or throws.
    ///
    /// Always inlined into the handler's task: called out of line, it is an
    /// extra async frame per frame, and the handler's `Context` is copied into
    /// the closure it is given.
    @inline(__always)
    func run<T>(_ span: YoMoSpan?, _ body: () async throws -> T) async throws -> T {
        guard let span else { return try await body() }
        defer { span.end() }
        do {
            return try await ServiceContext.withValue(span.context, operation: body)
        } catch {
            span.fail(error)
            throw error
        }
    }
}

/// Received metadata bytes to send on, with digits to write over them first.
/// A class: a `Context` carries it into its handler's task, whose first
/// frames must stay small (a larger one costs the task an extra allocation).
///
/// It is also the handler's metadata, decoded only if the handler reads it
/// whole (most only write, and a single key is read in place), with the
/// function's ids written in: such a handler costs no decoding, no key
/// search and no digits per frame.
final class ResendableMetadata: Sendable {
    /// The received metadata, read in place.
    let view: MetadataView
    let patch: MetadataPatch?
    /// The values `patch` writes, for the decoded metadata (nil: leave it as
    /// received). There is no tracestate to write: with one, a patch is not made.
    private let ids: MetadataView.TracePatch?
    /// `metadata()`, once a handler has read it.
    private let decoded = Mutex<Metadata?>(nil)

    init(view: MetadataView, patch: MetadataPatch?, ids: MetadataView.TracePatch? = nil) {
        self.view = view
        self.patch = patch
        self.ids = ids
    }

    var bytes: ByteBuffer { view.bytes }

    var patched: ByteBuffer { patch?.applied(to: bytes) ?? bytes }

    /// The received metadata with the function's ids written in, as
    /// `DataPathTracer.functionSpan(metadata:)` writes them: decoded on the
    /// first read, then kept.
    func metadata() -> Metadata {
        decoded.withLock { decoded in
            if let decoded { return decoded }
            var metadata = view.decoded
            if let ids { metadata.setTrace(traceparent: ids.traceparent, yomo: ids.yomo) }
            decoded = metadata
            return metadata
        }
    }

    /// `metadata()[key]`, read in place unless the ids change it (a trace key).
    func value(_ key: String) -> String? {
        if ids != nil, let known = MetadataView.Key(key), known.isTraceKey { return metadata()[key] }
        return view.string(forKey: key)
    }
}
