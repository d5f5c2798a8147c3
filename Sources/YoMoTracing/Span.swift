public import Tracing
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Provider-wide state every span of a provider shares.
final class TracerShared: Sendable {
    let resource: Resource
    let sampler: any Sampler
    let limits: SpanLimits
    let processors: [any SpanProcessor]
    /// `processors` when it is one batch processor (the usual set-up): ended
    /// spans go to it directly, moved into its queue, with no dynamic call
    /// and no reference count taken and dropped on the way. Unmanaged:
    /// `processors` keeps it alive, and a strong read is a retain per span.
    private let onlyBatchProcessor: Unmanaged<BatchSpanProcessor>?
    let propagator: TraceContextPropagator
    let isShutdown = Atomic<Bool>(false)
    /// The sampler's decision for a span whose valid remote parent was (or was
    /// not) sampled, when it is known without asking: always_on, always_off,
    /// or parent-based with one of those for such parents (the defaults).
    /// Nil: ask the sampler.
    private let remoteSampledDecision, remoteNotSampledDecision: SamplingDecision?
    /// Whether every span whose remote parent was not sampled is dropped: then
    /// a hop can decide from the frame alone, asking nothing.
    var dropsUnsampledRemoteChildren: Bool { remoteNotSampledDecision == .drop }

    init(
        resource: Resource, sampler: any Sampler, limits: SpanLimits, processors: [any SpanProcessor],
        propagation: TraceContextPropagator.Formats = .all
    ) {
        self.resource = resource
        self.sampler = sampler
        self.limits = limits
        self.processors = processors
        self.onlyBatchProcessor = (processors.count == 1 ? processors[0] as? BatchSpanProcessor : nil).map(Unmanaged.passUnretained)
        self.propagator = TraceContextPropagator(formats: propagation)
        func fixedDecision(_ sampler: any Sampler) -> SamplingDecision? {
            switch sampler {
            case is AlwaysOnSampler: .recordAndSample
            case is AlwaysOffSampler: .drop
            default: nil
            }
        }
        if let parentBased = sampler as? ParentBasedSampler {
            remoteSampledDecision = fixedDecision(parentBased.remoteParentSampled)
            remoteNotSampledDecision = fixedDecision(parentBased.remoteParentNotSampled)
        } else {
            (remoteSampledDecision, remoteNotSampledDecision) = (fixedDecision(sampler), fixedDecision(sampler))
        }
    }

    /// Hands a span that has just ended to the processors.
    @inline(__always) func submit(_ storage: SpanStorage) {
        if let onlyBatchProcessor {
            onlyBatchProcessor._withUnsafeGuaranteedRef { $0.enqueue(FinishedSpan(storage: storage)) }
            return
        }
        let finished = FinishedSpan(storage: storage)
        for processor in processors {
            processor.onEnd(finished)
        }
    }

    /// The sampler's decision, asked in place (reading `sampler` from outside
    /// copies the existential, retaining what it holds). A span under a remote
    /// parent, the usual case on the data path, is decided here when the
    /// sampler's answer is known: asking costs two dynamic calls through
    /// existentials per span.
    func shouldSample(parent: SpanContext?, traceID: TraceID, name: String, kind: SpanKind) -> SamplingDecision {
        if let parent, parent.isRemote, parent.isValid,
           let decision = parent.isSampled ? remoteSampledDecision : remoteNotSampledDecision {
            return decision
        }
        return sampler.shouldSample(parent: parent, traceID: traceID, name: name, kind: kind)
    }
}

/// A span of `YoMoTracer`. Copies share one span (reference semantics, as
/// `Tracing.Span` requires). Dropped (unrecorded) and disabled spans carry no storage, so
/// their methods cost a nil check.
public struct YoMoSpan: Tracing.Span {
    /// The parent's context (`context` adds this span's ids to it).
    private let baseContext: ServiceContext
    /// This span's ids: its `SpanStorage` when recording, a plain box when
    /// sampled out, nil when the provider is disabled (the parent's context
    /// then passes through unchanged).
    private let box: SpanContextBox?
    private let recording: Bool

    /// A recording span's mutable state; nil for other spans.
    var storage: SpanStorage? {
        recording ? unsafeDowncast(box.unsafelyUnwrapped, to: SpanStorage.self) : nil
    }

    init(context: ServiceContext, storage: SpanStorage?) {
        self.baseContext = context
        self.box = storage
        self.recording = storage != nil
    }

    init(context: ServiceContext, unrecorded spanContext: SpanContext?) {
        self.baseContext = context
        self.box = spanContext.map(SpanContextBox.init)
        self.recording = false
    }

    /// The span's context: the parent's context plus this span's `spanContext`.
    /// Built on each read rather than at start, so spans whose context is never
    /// read as a `ServiceContext` (the zipper's, or any span whose ids are
    /// injected straight from `spanContext`) skip a dictionary insert. It
    /// cannot be cached in the storage: the context holds the storage, which
    /// would make a cycle.
    public var context: ServiceContext {
        guard let box else { return baseContext }
        var context = baseContext
        context.spanContextBox = box
        return context
    }

    /// This span's ids (for a disabled provider: the parent's, passed through).
    public var spanContext: SpanContext? { box?.spanContext ?? baseContext.spanContext }

    public var operationName: String {
        get { storage?.withLock { $0.name } ?? "" }
        nonmutating set { storage?.withLock { if !$0.ended { $0.name = newValue } } }
    }

    public var attributes: SpanAttributes {
        get { storage?.withLock { $0.mergedAttributes } ?? [:] }
        nonmutating set {
            guard let storage else { return }
            storage.lock()
            defer { storage.unlock() }
            guard !storage.ended else { return }
            storage.listedAttributes = []
            let previousKeys = newValue.count > storage.limits.attributeCountLimit ? storage.attributeKeys() : nil
            storage.attributes = newValue
            storage.enforceAttributeLimit(previousKeys: previousKeys)
        }
        // In-place mutation under the span's lock: `span.attributes["k"] = v`
        // neither copies the dictionary nor takes the lock twice.
        nonmutating _modify {
            guard let storage else {
                // Discarded; sized so a few inserts do not regrow it. (Callers
                // on hot paths check `isRecording` and skip the work entirely.)
                var scratch = SpanAttributes([String: SpanAttribute](minimumCapacity: 6))
                yield &scratch
                return
            }
            storage.lock()
            defer { storage.unlock() }
            if storage.ended {
                var scratch = storage.mergedAttributes
                yield &scratch
                return
            }
            storage.moveListedAttributesIntoMap()
            // At the limit, remember which keys existed so that new ones (not old
            // ones) are the ones dropped.
            let previousKeys = storage.attributes.count >= storage.limits.attributeCountLimit
                ? storage.attributeKeys() : nil
            if storage.attributes.isEmpty {
                // Most spans get a few attributes: one table with room for them
                // beats growing it insert by insert (measured: ~80 ns per span).
                storage.attributes = SpanAttributes([String: SpanAttribute](minimumCapacity: 6))
            }
            yield &storage.attributes
            if storage.attributes.count > storage.limits.attributeCountLimit {
                storage.enforceAttributeLimit(previousKeys: previousKeys)
            }
        }
    }

    /// Sets one attribute without the `SpanAttributes` dictionary: for the few
    /// attributes the data path sets right after starting a span, a short list
    /// beats hashing each key here and copying values back out at export.
    /// Same limits and last-write-wins as `attributes`.
    package func setAttribute(_ key: String, _ value: SpanAttribute) {
        guard let storage else { return }
        storage.lock()
        defer { storage.unlock() }
        guard !storage.ended else { return }
        storage.moveFixedAttributesIntoList()
        if let index = storage.listedAttributes.firstIndex(where: { $0.key == key }) {
            storage.listedAttributes[index].value = value
        } else if !storage.attributes.isEmpty, storage.attributes[key] != nil {
            storage.attributes[key] = value
        } else if storage.listedAttributes.count + storage.attributes.count < storage.limits.attributeCountLimit {
            if storage.listedAttributes.isEmpty { storage.listedAttributes.reserveCapacity(4) }
            storage.listedAttributes.append(ListedAttribute(key: key, value: value))
        } else {
            storage.droppedAttributeCount += 1
        }
    }

    public var isRecording: Bool {
        guard let storage else { return false }
        return storage.withLock { !$0.ended }
    }

    /// Ok is final; error replaces unset; unset is ignored (OTel API "Set Status").
    public func setStatus(_ status: SpanStatus) {
        storage?.withLock { storage in
            guard !storage.ended else { return }
            switch status.code {
            case .ok:
                storage.status = SpanStatus(code: .ok)
            case .error:
                if storage.status?.code != .ok { storage.status = status }
            }
        }
    }

    public func addEvent(_ event: SpanEvent) {
        storage?.withLock { storage in
            guard !storage.ended else { return }
            storage.appendEvent(event)
        }
    }

    /// Records an `exception` event with `exception.type` and `exception.message`
    /// (OTel semantic conventions). Does not set the status; `withSpan` does.
    public func recordError<Instant: TracerInstant>(
        _ error: any Error,
        attributes: SpanAttributes,
        at instant: @autoclosure () -> Instant
    ) {
        guard let storage else { return }
        var eventAttributes = attributes
        eventAttributes["exception.type"] = String(reflecting: type(of: error))
        eventAttributes["exception.message"] = String(describing: error)
        let event = SpanEvent(name: "exception", at: instant(), attributes: eventAttributes)
        storage.withLock { storage in
            guard !storage.ended else { return }
            storage.appendEvent(event)
        }
    }

    /// Links to another span; a link whose context carries no span context is ignored.
    public func addLink(_ link: SpanLink) {
        guard let storage, let linked = link.context.spanContext, linked.isValid else { return }
        storage.withLock { storage in
            guard !storage.ended else { return }
            guard storage.links.count < storage.limits.linkCountLimit else {
                storage.droppedLinkCount += 1
                return
            }
            var attributes = link.attributes
            let dropped = trim(&attributes, to: storage.limits.attributePerLinkCountLimit)
            storage.links.append(FinishedSpan.Link(context: linked, attributes: attributes, droppedAttributeCount: dropped))
        }
    }

    /// Ends the span once; later calls and later mutations are ignored.
    public func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        guard recording else { return }
        endRecording(at: instant().nanosecondsSinceEpoch)
    }

    /// Out of line, so that `end` stays small where it is inlined (a
    /// handler's task: larger, the task's closure stopped inlining its
    /// runner and copied the handler's `Context` once more per frame).
    @inline(never)
    func endRecording(at end: UInt64) {
        // Borrowed, not retained: `self` holds the storage, and the storage
        // its provider. A span's reference count is written on the thread
        // that ends it, then on the export thread: each retain here was an
        // atomic on a line the export thread also writes.
        Unmanaged.passUnretained(unsafeDowncast(box.unsafelyUnwrapped, to: SpanStorage.self))._withUnsafeGuaranteedRef { storage in
            guard storage.markEnded(at: end) else { return }
            Unmanaged.passUnretained(storage.shared)._withUnsafeGuaranteedRef { $0.submit(storage) }
        }
    }
}

/// Drops attributes beyond `limit` (which ones is unspecified: SpanAttributes
/// is unordered) and returns how many were dropped.
func trim(_ attributes: inout SpanAttributes, to limit: Int) -> Int {
    let excess = attributes.count - limit
    guard excess > 0 else { return 0 }
    var victims: [String] = []
    victims.reserveCapacity(excess)
    attributes.forEach { key, _ in if victims.count < excess { victims.append(key) } }
    for key in victims { attributes[key] = nil }
    return excess
}

/// An attribute set with `YoMoSpan.setAttribute`, or given when the span
/// starts. A struct, not a tuple: an array of tuples is copied and destroyed
/// through the runtime's generic tuple witnesses, an array of structs through
/// specialised code.
package struct ListedAttribute {
    var key: String
    var value: SpanAttribute

    package init(key: String, value: SpanAttribute) {
        self.key = key
        self.value = value
    }
}

/// An attribute whose key (and string value) are literals: what the data
/// path's spans carry (`recv_data_tag`, …). Plain values, no references, so
/// a span holds them inline and drops them without a release; exporters
/// write the literal bytes straight.
package struct FixedAttribute: Sendable {
    package enum Value: Sendable {
        case int64(Int64)
        case string(StaticString)
    }

    package let key: StaticString
    package let value: Value

    package init(_ key: StaticString, _ value: Value) {
        self.key = key
        self.value = value
    }

    var keyString: String { Self.string(key) }

    var attribute: SpanAttribute {
        switch value {
        case .int64(let int): .int64(int)
        case .string(let string): .string(Self.string(string))
        }
    }

    private static func string(_ literal: StaticString) -> String {
        literal.withUTF8Buffer { String(decoding: $0, as: UTF8.self) }
    }
}

/// Up to three `FixedAttribute`s, inline (keys unique).
package struct FixedAttributes: Sendable {
    private var first, second, third: FixedAttribute?
    package private(set) var count = 0

    package init() {}

    package init(_ first: FixedAttribute, _ second: FixedAttribute, _ third: FixedAttribute? = nil) {
        (self.first, self.second, self.third) = (first, second, third)
        count = third == nil ? 2 : 3
    }

    package var isEmpty: Bool { count == 0 }

    /// The first `limit`; how many were left out.
    mutating func keepFirst(_ limit: Int) -> Int {
        guard count > limit else { return 0 }
        let dropped = count - max(limit, 0)
        if limit < 3 { third = nil }
        if limit < 2 { second = nil }
        if limit < 1 { first = nil }
        count = max(limit, 0)
        return dropped
    }

    @inline(__always) func forEach(_ body: (FixedAttribute) -> Void) {
        if let first { body(first) }
        if let second { body(second) }
        if let third { body(third) }
    }
}

/// The mutable part of a recording span, guarded by a tiny spin lock: spans are
/// touched by one task at a time in practice, so the lock is almost never
/// contended, and unlike a pthread mutex it needs no separate allocation.
///
/// Once `ended` is set (under the lock) no field changes again, so
/// `FinishedSpan` reads them without the lock.
final class SpanStorage: SpanContextBox, @unchecked Sendable {
    let shared: TracerShared
    let scope: InstrumentationScope
    let parentSpanID: SpanID?
    let parentIsRemote: Bool
    let kind: SpanKind
    let startTime: UInt64
    @exclusivity(unchecked) private(set) var endTime: UInt64 = 0
    var limits: SpanLimits { shared.limits }

    private let locked = Atomic<Bool>(false)
    // The fields below change only under `locked` (and not at all once
    // `ended`), so Swift's dynamic exclusivity checks on every access, a
    // runtime call each, guard nothing here: `@exclusivity(unchecked)`.
    @exclusivity(unchecked) var ended = false
    @exclusivity(unchecked) var name: String
    /// Attributes given as the span started, as literals; keys unique and
    /// absent from `listedAttributes` and `attributes` (any change to the
    /// attributes first moves them to `listedAttributes`).
    @exclusivity(unchecked) var fixedAttributes = FixedAttributes()
    /// Attributes set with `YoMoSpan.setAttribute`; keys unique and absent from `attributes`.
    @exclusivity(unchecked) var listedAttributes: [ListedAttribute] = []
    /// Attributes set through `YoMoSpan.attributes`.
    @exclusivity(unchecked) var attributes = SpanAttributes()
    @exclusivity(unchecked) var droppedAttributeCount = 0
    @exclusivity(unchecked) var events: [SpanEvent] = []
    @exclusivity(unchecked) var droppedEventCount = 0
    @exclusivity(unchecked) var links: [FinishedSpan.Link] = []
    @exclusivity(unchecked) var droppedLinkCount = 0
    @exclusivity(unchecked) var status: SpanStatus?

    /// `attributes`: keys unique; those beyond the attribute count limit are dropped (and counted).
    init(
        shared: TracerShared, scope: InstrumentationScope, name: String, kind: SpanKind,
        spanContext: SpanContext, parentSpanID: SpanID?, parentIsRemote: Bool, startTime: UInt64,
        attributes: [ListedAttribute] = [], fixedAttributes: FixedAttributes = FixedAttributes()
    ) {
        self.shared = shared
        self.scope = scope
        self.name = name
        self.kind = kind
        self.parentSpanID = parentSpanID
        self.parentIsRemote = parentIsRemote
        self.startTime = startTime
        let limit = shared.limits.attributeCountLimit
        var fixed = fixedAttributes
        self.droppedAttributeCount = fixed.keepFirst(limit)
        self.fixedAttributes = fixed
        let room = max(limit - fixed.count, 0)
        if attributes.count <= room {
            self.listedAttributes = attributes
        } else {
            self.listedAttributes = Array(attributes.prefix(room))
            self.droppedAttributeCount += attributes.count - room
        }
        super.init(spanContext)
    }

    @inline(__always) func lock() {
        while !locked.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
            sched_yield()
        }
    }

    @inline(__always) func unlock() {
        locked.store(false, ordering: .releasing)
    }

    @inline(__always) func withLock<T>(_ body: (SpanStorage) throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body(self)
    }

    /// Every attribute, as `SpanAttributes`.
    var mergedAttributes: SpanAttributes {
        guard !listedAttributes.isEmpty || !fixedAttributes.isEmpty else { return attributes }
        var merged = attributes
        fixedAttributes.forEach { merged[$0.keyString] = $0.attribute }
        for listed in listedAttributes { merged[listed.key] = listed.value }
        return merged
    }

    /// Every attribute, fixed ones first, then listed ones, without building
    /// a dictionary. Read only after the span ended (exporters) or with the lock held.
    func forEachAttribute(_ body: (String, SpanAttribute) -> Void) {
        fixedAttributes.forEach { body($0.keyString, $0.attribute) }
        forEachChangeableAttribute(body)
    }

    /// The attributes other than the fixed ones, listed ones first.
    func forEachChangeableAttribute(_ body: (String, SpanAttribute) -> Void) {
        // Borrowed in place: iterating the array copies (retains) each element.
        listedAttributes.withUnsafeBufferPointer { listed in
            for index in listed.indices { body(listed[index].key, listed[index].value) }
        }
        // The data path's spans have no others; the map's iteration costs even when it is empty.
        if !attributes.isEmpty { attributes.forEach(body) }
    }

    var attributeCount: Int { fixedAttributes.count + listedAttributes.count + attributes.count }

    /// Call with the lock held, before changing attributes: the fixed ones
    /// join the listed ones, which hold keys that may change.
    func moveFixedAttributesIntoList() {
        guard !fixedAttributes.isEmpty else { return }
        var moved: [ListedAttribute] = []
        moved.reserveCapacity(fixedAttributes.count + listedAttributes.count + 1)
        fixedAttributes.forEach { moved.append(ListedAttribute(key: $0.keyString, value: $0.attribute)) }
        moved.append(contentsOf: listedAttributes)
        listedAttributes = moved
        fixedAttributes = FixedAttributes()
    }

    /// Call with the lock held, before changing `attributes` in place.
    func moveListedAttributesIntoMap() {
        moveFixedAttributesIntoList()
        guard !listedAttributes.isEmpty else { return }
        for listed in listedAttributes { attributes[listed.key] = listed.value }
        listedAttributes = []
    }

    func attributeKeys() -> Set<String> {
        var keys = Set<String>(minimumCapacity: attributes.count)
        attributes.forEach { key, _ in keys.insert(key) }
        return keys
    }

    /// Call with the lock held.
    func enforceAttributeLimit(previousKeys: Set<String>?) {
        let limit = limits.attributeCountLimit
        guard attributes.count > limit else { return }
        if let previousKeys {
            var added: [String] = []
            attributes.forEach { key, _ in if !previousKeys.contains(key) { added.append(key) } }
            for key in added where attributes.count > limit {
                attributes[key] = nil
                droppedAttributeCount += 1
            }
        }
        droppedAttributeCount += trim(&attributes, to: limit)
    }

    /// Call with the lock held.
    func appendEvent(_ event: SpanEvent) {
        guard events.count < limits.eventCountLimit else {
            droppedEventCount += 1
            return
        }
        if event.attributes.count > limits.attributePerEventCountLimit {
            var trimmed = event
            _ = trim(&trimmed.attributes, to: limits.attributePerEventCountLimit)
            events.append(trimmed)
        } else {
            events.append(event)
        }
    }

    /// Marks the span ended without taking its lock: for a span nothing else
    /// holds yet (a hop's, made as it ends), or with the lock held.
    func markEndedUnshared(at endTime: UInt64) {
        ended = true
        self.endTime = max(endTime, startTime)
    }

    /// Marks the span ended; false if it had already ended.
    func markEnded(at endTime: UInt64) -> Bool {
        lock()
        defer { unlock() }
        guard !ended else { return false }
        markEndedUnshared(at: endTime)
        return true
    }
}
