import Synchronization
public import YoMoTracing

/// Owns the instruments of a process (or of a component given its own), their
/// resource, and what reads them: the Prometheus/OpenMetrics endpoint today.
///
/// Recording is cheap enough for the data path: instruments are looked up once
/// by name, their series once per attribute set (`bind`), and a bound counter
/// adds with one atomic operation; a bound histogram takes one uncontended lock.
/// A disabled provider (`MeterProvider.noop`, `OTEL_SDK_DISABLED=true`) hands out
/// instruments that record nothing.
public final class MeterProvider: Sendable {
    public struct Configuration: Sendable {
        /// `service.name` and the other resource attributes, as the tracer provider's.
        public var resource: Resource
        /// Record nothing.
        public var isDisabled: Bool
        /// Series one instrument may hold, the overflow series included
        /// (OpenTelemetry's aggregation cardinality limit). Past it, new
        /// attribute sets are counted together in the series with
        /// `otel.metric.overflow=true`, and a warning is logged once.
        public var cardinalityLimit: Int

        /// OpenTelemetry's default.
        public static let defaultCardinalityLimit = 2000

        public init(resource: Resource = .detect(), isDisabled: Bool = false, cardinalityLimit: Int = Configuration.defaultCardinalityLimit) {
            self.resource = resource
            self.isDisabled = isDisabled
            self.cardinalityLimit = cardinalityLimit
        }

        /// The resource from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`
        /// (`serviceName` as the default name), disabled by `OTEL_SDK_DISABLED=true`.
        public init(serviceName: String? = nil, environment: [String: String] = ProcessEnvironment.current) {
            let disabled = environment["OTEL_SDK_DISABLED"]?.trimmingSpaces().lowercased() == "true"
            // OTEL_SERVICE_NAME wins over the component's name, as for its spans.
            let nameFromEnvironment = !(environment["OTEL_SERVICE_NAME"]?.trimmingSpaces().isEmpty ?? true)
            let resource = Resource.detect(serviceName: nameFromEnvironment ? nil : serviceName, environment: environment)
            self.init(resource: resource, isDisabled: disabled)
        }
    }

    public let configuration: Configuration
    /// By name, and in the order they were made (a stable page).
    /// By scope and name, the first of each name, and all in the order made.
    private let instruments = Mutex<(byKey: [String: InstrumentStorage], byName: [String: InstrumentStorage], ordered: [InstrumentStorage])>(([:], [:], []))

    /// Readings registered once per provider: process-wide ones, which several
    /// components sharing the provider would otherwise each report.
    private let registeredOnce = Mutex<Set<String>>([])

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// True the first time `key` is asked for on this provider.
    package func isFirstRegistration(of key: String) -> Bool {
        registeredOnce.withLock { $0.insert(key).inserted }
    }

    /// Records nothing.
    public static let noop = MeterProvider(configuration: Configuration(resource: Resource(), isDisabled: true))

    public var isEnabled: Bool { !configuration.isDisabled }

    public func meter(_ scope: String) -> Meter { Meter(provider: self, scope: scope) }

    /// The instrument named `name` in `scope` (a meter), made on first use;
    /// later calls get the same series. Meters of one provider may each have
    /// an instrument of a name (a process with a Source and a StreamFunction:
    /// each series keeps its own scope), if they agree on its kind, unit and
    /// buckets; one that does not gets the first one's, as one metric family
    /// of Prometheus has one type.
    func storage(
        _ name: String, unit: String, description: String, kind: InstrumentDescriptor.Kind, boundaries: [Double], scope: String
    ) -> InstrumentStorage? {
        guard isEnabled else { return nil }
        let key = scope + "\u{0}" + name
        return instruments.withLock { instruments in
            if let existing = instruments.byKey[key] { return existing }
            if let first = instruments.byName[name] {
                let other = first.descriptor
                guard other.kind == kind, other.unit == unit, other.boundaries == boundaries else { return first }
            }
            let storage = InstrumentStorage(InstrumentDescriptor(
                name: name, unit: unit, description: description, kind: kind, boundaries: boundaries, scope: scope),
                cardinalityLimit: configuration.cardinalityLimit)
            instruments.byKey[key] = storage
            if instruments.byName[name] == nil { instruments.byName[name] = storage }
            instruments.ordered.append(storage)
            return storage
        }
    }

    /// Every instrument's current state, cumulative since the provider began.
    public func collect() -> [MetricSnapshot] {
        instruments.withLock { $0.ordered }.map { $0.snapshot() }
    }
}

/// The provider that components use when none is given in code:
/// `MeterProvider.noop` until an executable installs one
/// (`YoMoMetrics.bootstrap`), as swift-metrics' `MetricsSystem` does.
public enum GlobalMeterProvider {
    private static let current = Mutex<MeterProvider>(.noop)

    public static var provider: MeterProvider { current.withLock { $0 } }

    /// Only executables call this (libraries accept a provider).
    public static func set(_ provider: MeterProvider) { current.withLock { $0 = provider } }
}
