import Glibc
import Logging
import Synchronization
public import YoMoTracing
import Tracing

/// Attributes of one time series: string keys and values, kept sorted so equal
/// sets compare and hash equal whatever order they were given in.
public struct MetricAttributes: Hashable, Sendable, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    public private(set) var pairs: [(key: String, value: String)]

    public init(_ pairs: [(String, String)]) {
        var unique: [String: String] = [:]
        for (key, value) in pairs { unique[key] = value }
        self.pairs = unique.sorted { $0.key < $1.key }.map { (key: $0.key, value: $0.value) }
    }

    public init(dictionaryLiteral elements: (String, String)...) { self.init(elements) }

    public static let empty = MetricAttributes([])

    /// A copy with `key` set to `value`.
    public func with(_ key: String, _ value: String) -> MetricAttributes {
        MetricAttributes(pairs.map { ($0.key, $0.value) } + [(key, value)])
    }

    public static func == (lhs: MetricAttributes, rhs: MetricAttributes) -> Bool {
        lhs.pairs.count == rhs.pairs.count && zip(lhs.pairs, rhs.pairs).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }

    public func hash(into hasher: inout Hasher) {
        for pair in pairs {
            hasher.combine(pair.key)
            hasher.combine(pair.value)
        }
    }

    public var description: String { pairs.map { "\($0.key)=\($0.value)" }.joined(separator: ",") }
}

/// What an instrument is: its name (OpenTelemetry style, dots), unit (UCUM, e.g.
/// `s`, `By`, `{message}`), description, kind and, for histograms, bucket bounds.
public struct InstrumentDescriptor: Hashable, Sendable {
    public enum Kind: String, Sendable {
        case counter, upDownCounter, gauge, histogram
    }

    public var name: String
    public var unit: String
    public var description: String
    public var kind: Kind
    /// Upper bounds of the explicit buckets (histograms), ascending; +Inf is implied.
    public var boundaries: [Double]
    /// Instrumentation scope (the meter's name).
    public var scope: String
}

/// A measurement kept with a histogram bucket: the trace of a recent sampled
/// measurement made under a span, so a latency bucket links to a trace.
public struct Exemplar: Hashable, Sendable {
    public var value: Double
    /// The ids as recorded; formatted as hex only when exposed (no string per measurement).
    public var trace: TraceID
    public var span: SpanID
    /// When it was recorded, Unix nanoseconds (OTLP's unit).
    public var timeUnixNanoseconds: UInt64

    /// Unix seconds (OpenMetrics' unit).
    public var timestamp: Double { Double(timeUnixNanoseconds) / 1e9 }

    /// Lower-case hex, as OpenMetrics and OTLP-JSON show them.
    public var traceID: String { trace.description }
    public var spanID: String { span.description }
}

/// One series of an observable instrument as read at collection.
public struct Observation: Sendable {
    public var attributes: MetricAttributes
    public var value: Double
    /// A counter's: the last event it counted that was traced, if any.
    public var exemplar: Exemplar?

    public init(attributes: MetricAttributes, value: Double, exemplar: Exemplar? = nil) {
        self.attributes = attributes
        self.value = value
        self.exemplar = exemplar
    }
}

extension Exemplar {
    /// `value` recorded under `spanContext` now (nil unless it is sampled): a
    /// traced event an observable counter will show when it is next read.
    public init?(value: Double = 1, spanContext: SpanContext) {
        guard spanContext.isSampled else { return nil }
        self.init(value: value, trace: spanContext.traceID, span: spanContext.spanID, timeUnixNanoseconds: wallClockNanoseconds())
    }
}

/// A value that is added to atomically (a compare-and-swap loop on the bits),
/// and, for a counter, the exemplar of its last sampled addition.
final class ScalarCell: Sendable {
    private let bits = Atomic<UInt64>(0)
    /// Taken only by additions that carry a sampled span: a counter of rare
    /// events (drops) links to one of them; the hot paths never touch it.
    let exemplar = Mutex<Exemplar?>(nil)

    func add(_ value: Double) {
        var current = bits.load(ordering: .relaxed)
        while true {
            let next = (Double(bitPattern: current) + value).bitPattern
            let (exchanged, original) = bits.compareExchange(expected: current, desired: next, ordering: .relaxed)
            if exchanged { return }
            current = original
        }
    }

    func add(_ value: Double, exemplar spanContext: SpanContext?) {
        add(value)
        guard let spanContext, let exemplar = Exemplar(value: value, spanContext: spanContext) else { return }
        self.exemplar.withLock { $0 = exemplar }
    }

    func store(_ value: Double) { bits.store(value.bitPattern, ordering: .relaxed) }
    var value: Double { Double(bitPattern: bits.load(ordering: .relaxed)) }
}

/// One histogram series: counts per bucket, sum, count, and an exemplar per bucket.
final class HistogramCell: Sendable {
    struct State {
        var counts: [Int]
        var sum = 0.0
        var count = 0
        var minimum = Double.infinity
        var maximum = -Double.infinity
        var exemplars: [Exemplar?]
    }

    let boundaries: [Double]
    let state: Mutex<State>

    init(boundaries: [Double]) {
        self.boundaries = boundaries
        state = Mutex(State(counts: Array(repeating: 0, count: boundaries.count + 1), exemplars: Array(repeating: nil, count: boundaries.count + 1)))
    }

    func record(_ value: Double, exemplar spanContext: SpanContext?) {
        // Bucket i holds (bounds[i-1], bounds[i]]: the first bound >= value.
        var low = 0
        var high = boundaries.count
        while low < high {
            let middle = (low + high) / 2
            if boundaries[middle] < value { low = middle + 1 } else { high = middle }
        }
        let exemplar = spanContext.flatMap { context -> Exemplar? in
            guard context.isSampled else { return nil }
            return Exemplar(value: value, trace: context.traceID, span: context.spanID, timeUnixNanoseconds: wallClockNanoseconds())
        }
        state.withLock { state in
            state.counts[low] += 1
            state.sum += value
            state.count += 1
            if value < state.minimum { state.minimum = value }
            if value > state.maximum { state.maximum = value }
            if let exemplar { state.exemplars[low] = exemplar }
        }
    }
}

/// The current span's context, for exemplars.
func currentSpanContext() -> SpanContext? { ServiceContext.current?.spanContext }

extension MetricAttributes {
    /// The series that holds what an instrument past its cardinality limit
    /// records for new attribute sets (OpenTelemetry's `otel.metric.overflow`).
    public static let overflow: MetricAttributes = ["otel.metric.overflow": "true"]
}

/// An instrument's series by attribute set, at most `limit` of them: attributes
/// can come from peers (a frame's tag), and each new set would otherwise cost
/// memory and a line of every page for the life of the process. Past the
/// limit, new sets share the overflow series, so nothing recorded is lost.
struct SeriesTable<Cell> {
    private(set) var series: [MetricAttributes: Cell] = [:]
    private(set) var overflow: Cell?

    /// The cell of `attributes`, made on first use; `reachedLimit` is true
    /// only the first time the overflow series is handed out.
    mutating func cell(_ attributes: MetricAttributes, limit: Int, make: () -> Cell) -> (cell: Cell, reachedLimit: Bool) {
        if let cell = series[attributes] { return (cell, false) }
        // The overflow series counts toward the limit.
        guard series.count < limit - 1 else {
            if let overflow { return (overflow, false) }
            let cell = make()
            overflow = cell
            return (cell, true)
        }
        let cell = make()
        series[attributes] = cell
        return (cell, false)
    }

    var all: [(MetricAttributes, Cell)] {
        series.map { ($0.key, $0.value) } + (overflow.map { [(MetricAttributes.overflow, $0)] } ?? [])
    }
}

/// Where an instrument keeps its series; created once per name by the provider.
final class InstrumentStorage: Sendable {
    let descriptor: InstrumentDescriptor
    /// Series per instrument, the overflow series included (at least 2).
    let cardinalityLimit: Int
    private let scalars = Mutex(SeriesTable<ScalarCell>())
    private let histograms = Mutex(SeriesTable<HistogramCell>())
    private let callbacks = Mutex<[@Sendable () -> [Observation]]>([])
    private let observedOverLimitSaid = Atomic<Bool>(false)

    init(_ descriptor: InstrumentDescriptor, cardinalityLimit: Int = MeterProvider.Configuration.defaultCardinalityLimit) {
        self.descriptor = descriptor
        self.cardinalityLimit = max(2, cardinalityLimit)
    }

    func scalar(_ attributes: MetricAttributes) -> ScalarCell {
        let (cell, reachedLimit) = scalars.withLock { $0.cell(attributes, limit: cardinalityLimit, make: ScalarCell.init) }
        if reachedLimit { warnOverflow() }
        return cell
    }

    func histogram(_ attributes: MetricAttributes) -> HistogramCell {
        let boundaries = descriptor.boundaries
        let (cell, reachedLimit) = histograms.withLock {
            $0.cell(attributes, limit: cardinalityLimit) { HistogramCell(boundaries: boundaries) }
        }
        if reachedLimit { warnOverflow() }
        return cell
    }

    /// Once per instrument: the page alone would not say why series stopped appearing.
    private func warnOverflow() {
        Logger(label: "swift-yomo.metrics").warning(
            "metric reached its cardinality limit: new attribute sets are counted in the series with otel.metric.overflow=true",
            metadata: ["metric": "\(descriptor.name)", "limit": "\(cardinalityLimit)"])
    }

    func addCallback(_ callback: @escaping @Sendable () -> [(MetricAttributes, Double)]) {
        callbacks.withLock { $0.append { callback().map { Observation(attributes: $0.0, value: $0.1) } } }
    }

    func addCallback(observing callback: @escaping @Sendable () -> [Observation]) {
        callbacks.withLock { $0.append(callback) }
    }

    func snapshot() -> MetricSnapshot {
        var points: [MetricSnapshot.Point] = []
        for (attributes, cell) in scalars.withLock({ $0.all }) {
            points.append(.init(attributes: attributes, value: .scalar(cell.value), exemplar: cell.exemplar.withLock { $0 }))
        }
        // Two callbacks naming the same series would make a page Prometheus
        // rejects (duplicate series): the later one wins.
        var observed: [MetricAttributes: Observation] = [:]
        for callback in callbacks.withLock({ $0 }) {
            for observation in callback() { observed[observation.attributes] = observation }
        }
        if observed.count > cardinalityLimit {
            // One series per connection, say, on a zipper with thousands: the
            // page stays bounded. The first by attributes are kept; the rest
            // are left out (gauges' values do not add up into an overflow series).
            let kept = observed.map { ($0.key.description, $0) }.sorted { $0.0 < $1.0 }.prefix(cardinalityLimit)
            observed = Dictionary(uniqueKeysWithValues: kept.map { ($0.1.key, $0.1.value) })
            if !observedOverLimitSaid.exchange(true, ordering: .relaxed) {
                Logger(label: "swift-yomo.metrics").warning(
                    "metric observed more series than its cardinality limit: the rest are left out of each collection",
                    metadata: ["metric": "\(descriptor.name)", "limit": "\(cardinalityLimit)"])
            }
        }
        for (attributes, observation) in observed {
            points.append(.init(attributes: attributes, value: .scalar(observation.value), exemplar: observation.exemplar))
        }
        for (attributes, cell) in histograms.withLock({ $0.all }) {
            let state = cell.state.withLock { $0 }
            points.append(.init(attributes: attributes, value: .histogram(.init(
                boundaries: cell.boundaries, counts: state.counts, sum: state.sum, count: state.count,
                minimum: state.count > 0 ? state.minimum : nil, maximum: state.count > 0 ? state.maximum : nil,
                exemplars: state.exemplars))))
        }
        // A stable order for the page; each key built once, not per comparison.
        let ordered = points.map { ($0.attributes.description, $0) }.sorted { $0.0 < $1.0 }.map(\.1)
        return MetricSnapshot(descriptor: descriptor, points: ordered)
    }
}

/// The state of one instrument at collection time (cumulative since start).
public struct MetricSnapshot: Sendable {
    public struct Histogram: Sendable, Hashable {
        public var boundaries: [Double]
        /// One more than `boundaries`: the last is the +Inf bucket. Not cumulative.
        public var counts: [Int]
        public var sum: Double
        public var count: Int
        public var minimum: Double?
        public var maximum: Double?
        public var exemplars: [Exemplar?]
    }

    public enum Value: Sendable, Hashable {
        case scalar(Double)
        case histogram(Histogram)
    }

    public struct Point: Sendable {
        public var attributes: MetricAttributes
        public var value: Value
        /// A counter's last sampled addition (histograms keep theirs per bucket).
        public var exemplar: Exemplar? = nil
    }

    public var descriptor: InstrumentDescriptor
    public var points: [Point]
}

/// A monotonic sum. Bind the attributes of a hot path once (`bind`), then `add`.
public struct Counter: Sendable {
    let storage: InstrumentStorage?

    /// The series for `attributes`, to add to without a lookup per call.
    public func bind(_ attributes: MetricAttributes = .empty) -> BoundCounter { BoundCounter(cell: storage?.scalar(attributes)) }

    public func add(_ value: Double = 1, attributes: MetricAttributes = .empty) { bind(attributes).add(value) }

    /// `add`, keeping `spanContext` (if sampled) as the series' exemplar:
    /// OpenMetrics shows it beside the `_total` sample, OTLP with the point.
    public func add(_ value: Double = 1, attributes: MetricAttributes = .empty, exemplar spanContext: SpanContext?) {
        bind(attributes).add(value, exemplar: spanContext)
    }
}

public struct BoundCounter: Sendable {
    let cell: ScalarCell?

    /// Adds `value` (negative values are ignored: a counter only grows).
    public func add(_ value: Double = 1) {
        guard value >= 0 else { return }
        cell?.add(value)
    }

    /// `add`, keeping `spanContext` (if sampled) as the series' exemplar, the
    /// last one replacing the one before: for counters of events worth a
    /// trace (a dropped frame), not for every frame of a hot path.
    public func add(_ value: Double = 1, exemplar spanContext: SpanContext?) {
        guard value >= 0 else { return }
        cell?.add(value, exemplar: spanContext)
    }
}

/// A sum that goes up and down (connections open, items queued).
public struct UpDownCounter: Sendable {
    let storage: InstrumentStorage?

    public func bind(_ attributes: MetricAttributes = .empty) -> BoundUpDownCounter { BoundUpDownCounter(cell: storage?.scalar(attributes)) }
    public func add(_ value: Double, attributes: MetricAttributes = .empty) { bind(attributes).add(value) }
}

public struct BoundUpDownCounter: Sendable {
    let cell: ScalarCell?
    public func add(_ value: Double) { cell?.add(value) }
}

/// The last value set.
public struct Gauge: Sendable {
    let storage: InstrumentStorage?

    public func bind(_ attributes: MetricAttributes = .empty) -> BoundGauge { BoundGauge(cell: storage?.scalar(attributes)) }
    public func set(_ value: Double, attributes: MetricAttributes = .empty) { bind(attributes).set(value) }
}

public struct BoundGauge: Sendable {
    let cell: ScalarCell?
    public func set(_ value: Double) { cell?.store(value) }
    public func add(_ value: Double) { cell?.add(value) }
}

/// A distribution over explicit buckets, with exemplars.
public struct Histogram: Sendable {
    let storage: InstrumentStorage?

    public func bind(_ attributes: MetricAttributes = .empty) -> BoundHistogram { BoundHistogram(cell: storage?.histogram(attributes)) }

    public func record(_ value: Double, attributes: MetricAttributes = .empty) { bind(attributes).record(value) }
}

public struct BoundHistogram: Sendable {
    let cell: HistogramCell?

    /// Records `value`; under a sampled span (the current one) its bucket keeps
    /// the span's ids as the exemplar.
    public func record(_ value: Double) {
        guard let cell else { return }
        cell.record(value, exemplar: currentSpanContext())
    }

    /// Records `value` with the exemplar taken from `spanContext` (when the caller
    /// is no longer inside the span, e.g. timing a handler after it ended).
    public func record(_ value: Double, spanContext: SpanContext?) {
        cell?.record(value, exemplar: spanContext)
    }

    /// Whether recording does anything (a disabled provider's instruments do not).
    public var isEnabled: Bool { cell != nil }
}

/// Makes instruments of one instrumentation scope.
public struct Meter: Sendable {
    let provider: MeterProvider
    public let scope: String

    public func counter(_ name: String, unit: String = "", description: String = "") -> Counter {
        Counter(storage: provider.storage(name, unit: unit, description: description, kind: .counter, boundaries: [], scope: scope))
    }

    public func upDownCounter(_ name: String, unit: String = "", description: String = "") -> UpDownCounter {
        UpDownCounter(storage: provider.storage(name, unit: unit, description: description, kind: .upDownCounter, boundaries: [], scope: scope))
    }

    public func gauge(_ name: String, unit: String = "", description: String = "") -> Gauge {
        Gauge(storage: provider.storage(name, unit: unit, description: description, kind: .gauge, boundaries: [], scope: scope))
    }

    /// A gauge read when metrics are collected (scraped or exported).
    public func observableGauge(
        _ name: String, unit: String = "", description: String = "",
        _ observe: @escaping @Sendable () -> [(MetricAttributes, Double)]
    ) {
        provider.storage(name, unit: unit, description: description, kind: .gauge, boundaries: [], scope: scope)?.addCallback(observe)
    }

    /// A counter whose cumulative value is read when metrics are collected.
    public func observableCounter(
        _ name: String, unit: String = "", description: String = "",
        _ observe: @escaping @Sendable () -> [(MetricAttributes, Double)]
    ) {
        provider.storage(name, unit: unit, description: description, kind: .counter, boundaries: [], scope: scope)?.addCallback(observe)
    }

    /// `observableCounter`, each series read with the exemplar of the last
    /// event it counted that was traced (the span of a dropped frame, say).
    public func observableCounter(
        _ name: String, unit: String = "", description: String = "",
        observing observe: @escaping @Sendable () -> [Observation]
    ) {
        provider.storage(name, unit: unit, description: description, kind: .counter, boundaries: [], scope: scope)?.addCallback(observing: observe)
    }

    public func histogram(
        _ name: String, unit: String = "", description: String = "", boundaries: [Double] = Histogram.defaultBoundaries
    ) -> Histogram {
        Histogram(storage: provider.storage(name, unit: unit, description: description, kind: .histogram, boundaries: boundaries.sorted(), scope: scope))
    }
}

extension Histogram {
    /// The OpenTelemetry SDK's default explicit bucket bounds.
    public static let defaultBoundaries: [Double] = [0, 5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000]
    /// The messaging semantic conventions' advised bounds for durations in seconds.
    public static let durationBoundaries: [Double] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
}
