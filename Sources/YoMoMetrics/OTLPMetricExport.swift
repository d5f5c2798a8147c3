import COTLPProto
import FoundationEssentials
import Glibc
public import Logging
import Synchronization
import Tracing
public import YoMoTracing

/// How sums and histograms are reported over OTLP
/// (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`).
public struct AggregationTemporality: Sendable, Hashable, CustomStringConvertible {
    private let name: String
    /// Totals since the start (the default).
    public static let cumulative = AggregationTemporality(name: "cumulative")
    /// Counters and histograms as the change since the last export; up-down
    /// counters stay cumulative, as the specification's `delta` preference says.
    public static let delta = AggregationTemporality(name: "delta")
    public var description: String { name }

    /// `cumulative` (default), `delta`; `lowmemory` is treated as `delta`.
    public init(environment: [String: String]) {
        switch environment["OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"]?.lowercased() {
        case "delta", "lowmemory": self = .delta
        default: self = .cumulative
        }
    }

    private init(name: String) { self.name = name }
}

/// Builds `ExportMetricsServiceRequest` bodies (OTLP/HTTP binary protobuf).
enum OTLPMetricEncoding {
    typealias PBMetric = Opentelemetry__Proto__Metrics__V1__Metric
    typealias PBNumberPoint = Opentelemetry__Proto__Metrics__V1__NumberDataPoint
    typealias PBHistogramPoint = Opentelemetry__Proto__Metrics__V1__HistogramDataPoint
    typealias PBExemplar = Opentelemetry__Proto__Metrics__V1__Exemplar

    /// One request for everything collected: one resource, a scope per meter.
    static func encodeRequest(
        _ snapshots: [MetricSnapshot], resource: Resource, startNanoseconds: UInt64, nowNanoseconds: UInt64,
        temporality: AggregationTemporality, arena: ProtobufArena
    ) -> [UInt8] {
        arena.reset()
        var scopes: [(name: String, metrics: [MetricSnapshot])] = []
        for snapshot in snapshots where !snapshot.points.isEmpty {
            if let index = scopes.firstIndex(where: { $0.name == snapshot.descriptor.scope }) {
                scopes[index].metrics.append(snapshot)
            } else {
                scopes.append((snapshot.descriptor.scope, [snapshot]))
            }
        }
        let resourceMetrics = arena.allocate(Opentelemetry__Proto__Metrics__V1__ResourceMetrics.self)
        opentelemetry__proto__metrics__v1__resource_metrics__init(resourceMetrics)
        resourceMetrics.pointee.resource = OTLPCommonEncoding.resource(resource, in: arena)
        let scopeArray = arena.allocate(UnsafeMutablePointer<Opentelemetry__Proto__Metrics__V1__ScopeMetrics>?.self, count: max(scopes.count, 1))
        for (scopeIndex, scope) in scopes.enumerated() {
            let scopeMessage = arena.allocate(Opentelemetry__Proto__Metrics__V1__ScopeMetrics.self)
            opentelemetry__proto__metrics__v1__scope_metrics__init(scopeMessage)
            scopeMessage.pointee.scope = OTLPCommonEncoding.scope(InstrumentationScope(name: scope.name), in: arena)
            let metricArray = arena.allocate(UnsafeMutablePointer<PBMetric>?.self, count: scope.metrics.count)
            for (index, snapshot) in scope.metrics.enumerated() {
                metricArray[index] = metric(snapshot, start: startNanoseconds, now: nowNanoseconds, temporality: temporality, arena: arena)
            }
            scopeMessage.pointee.n_metrics = scope.metrics.count
            scopeMessage.pointee.metrics = metricArray
            scopeArray[scopeIndex] = scopeMessage
        }
        resourceMetrics.pointee.n_scope_metrics = scopes.count
        resourceMetrics.pointee.scope_metrics = scopes.isEmpty ? nil : scopeArray

        let requestArray = arena.allocate(UnsafeMutablePointer<Opentelemetry__Proto__Metrics__V1__ResourceMetrics>?.self, count: 1)
        requestArray[0] = resourceMetrics
        var request = Opentelemetry__Proto__Collector__Metrics__V1__ExportMetricsServiceRequest()
        opentelemetry__proto__collector__metrics__v1__export_metrics_service_request__init(&request)
        request.n_resource_metrics = 1
        request.resource_metrics = requestArray
        let body = withUnsafePointer(to: &request) {
            $0.withMemoryRebound(to: ProtobufCMessage.self, capacity: 1) { OTLPCommonEncoding.pack($0) }
        }
        withExtendedLifetime(arena) {}
        return body
    }

    private static func metric(
        _ snapshot: MetricSnapshot, start: UInt64, now: UInt64, temporality: AggregationTemporality, arena: ProtobufArena
    ) -> UnsafeMutablePointer<PBMetric> {
        let descriptor = snapshot.descriptor
        let message = arena.allocate(PBMetric.self)
        opentelemetry__proto__metrics__v1__metric__init(message)
        message.pointee.name = arena.string(descriptor.name)
        if !descriptor.description.isEmpty { message.pointee.description = arena.string(descriptor.description) }
        if !descriptor.unit.isEmpty { message.pointee.unit = arena.string(descriptor.unit) }
        let cumulativeOnly = descriptor.kind == .upDownCounter
        let wireTemporality = temporality == .delta && !cumulativeOnly
            ? OPENTELEMETRY__PROTO__METRICS__V1__AGGREGATION_TEMPORALITY__AGGREGATION_TEMPORALITY_DELTA
            : OPENTELEMETRY__PROTO__METRICS__V1__AGGREGATION_TEMPORALITY__AGGREGATION_TEMPORALITY_CUMULATIVE
        switch descriptor.kind {
        case .counter, .upDownCounter:
            let sum = arena.allocate(Opentelemetry__Proto__Metrics__V1__Sum.self)
            opentelemetry__proto__metrics__v1__sum__init(sum)
            (sum.pointee.n_data_points, sum.pointee.data_points) = numberPoints(snapshot.points, start: start, now: now, arena: arena)
            sum.pointee.aggregation_temporality = wireTemporality
            sum.pointee.is_monotonic = descriptor.kind == .counter ? 1 : 0
            message.pointee.data_case = OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_SUM
            message.pointee.sum = sum
        case .gauge:
            let gauge = arena.allocate(Opentelemetry__Proto__Metrics__V1__Gauge.self)
            opentelemetry__proto__metrics__v1__gauge__init(gauge)
            (gauge.pointee.n_data_points, gauge.pointee.data_points) = numberPoints(snapshot.points, start: start, now: now, arena: arena)
            message.pointee.data_case = OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_GAUGE
            message.pointee.gauge = gauge
        case .histogram:
            let histogram = arena.allocate(Opentelemetry__Proto__Metrics__V1__Histogram.self)
            opentelemetry__proto__metrics__v1__histogram__init(histogram)
            let points = arena.allocate(UnsafeMutablePointer<PBHistogramPoint>?.self, count: snapshot.points.count)
            for (index, point) in snapshot.points.enumerated() {
                guard case .histogram(let data) = point.value else { continue }
                points[index] = histogramPoint(data, attributes: point.attributes, start: start, now: now, arena: arena)
            }
            histogram.pointee.n_data_points = snapshot.points.count
            histogram.pointee.data_points = points
            histogram.pointee.aggregation_temporality = wireTemporality
            message.pointee.data_case = OPENTELEMETRY__PROTO__METRICS__V1__METRIC__DATA_HISTOGRAM
            message.pointee.histogram = histogram
        }
        return message
    }

    private static func attributes(_ attributes: MetricAttributes, arena: ProtobufArena)
        -> (Int, UnsafeMutablePointer<UnsafeMutablePointer<PBKeyValue>?>?) {
        var spanAttributes = SpanAttributes()
        for pair in attributes.pairs { spanAttributes[pair.key] = pair.value }
        let result = OTLPCommonEncoding.keyValues(spanAttributes, in: arena)
        return (result.count, result.pointer)
    }

    private static func numberPoints(_ points: [MetricSnapshot.Point], start: UInt64, now: UInt64, arena: ProtobufArena)
        -> (Int, UnsafeMutablePointer<UnsafeMutablePointer<PBNumberPoint>?>?) {
        let array = arena.allocate(UnsafeMutablePointer<PBNumberPoint>?.self, count: max(points.count, 1))
        for (index, point) in points.enumerated() {
            let message = arena.allocate(PBNumberPoint.self)
            opentelemetry__proto__metrics__v1__number_data_point__init(message)
            (message.pointee.n_attributes, message.pointee.attributes) = attributes(point.attributes, arena: arena)
            message.pointee.start_time_unix_nano = start
            message.pointee.time_unix_nano = now
            if case .scalar(let value) = point.value {
                message.pointee.value_case = OPENTELEMETRY__PROTO__METRICS__V1__NUMBER_DATA_POINT__VALUE_AS_DOUBLE
                message.pointee.as_double = value
            }
            if let exemplar = point.exemplar {
                (message.pointee.n_exemplars, message.pointee.exemplars) = exemplars([exemplar], arena: arena)
            }
            array[index] = message
        }
        return (points.count, points.isEmpty ? nil : array)
    }

    private static func histogramPoint(
        _ data: MetricSnapshot.Histogram, attributes pointAttributes: MetricAttributes, start: UInt64, now: UInt64, arena: ProtobufArena
    ) -> UnsafeMutablePointer<PBHistogramPoint> {
        let message = arena.allocate(PBHistogramPoint.self)
        opentelemetry__proto__metrics__v1__histogram_data_point__init(message)
        (message.pointee.n_attributes, message.pointee.attributes) = attributes(pointAttributes, arena: arena)
        message.pointee.start_time_unix_nano = start
        message.pointee.time_unix_nano = now
        message.pointee.count = UInt64(data.count)
        message.pointee.sum_present_case = OPENTELEMETRY__PROTO__METRICS__V1__HISTOGRAM_DATA_POINT__SUM_PRESENT_SUM
        message.pointee.sum = data.sum
        let counts = arena.allocate(UInt64.self, count: data.counts.count)
        for (index, count) in data.counts.enumerated() { counts[index] = UInt64(count) }
        message.pointee.n_bucket_counts = data.counts.count
        message.pointee.bucket_counts = counts
        if !data.boundaries.isEmpty {
            let bounds = arena.allocate(Double.self, count: data.boundaries.count)
            for (index, bound) in data.boundaries.enumerated() { bounds[index] = bound }
            message.pointee.n_explicit_bounds = data.boundaries.count
            message.pointee.explicit_bounds = bounds
        }
        if let minimum = data.minimum, let maximum = data.maximum {
            message.pointee.min_present_case = OPENTELEMETRY__PROTO__METRICS__V1__HISTOGRAM_DATA_POINT__MIN_PRESENT_MIN
            message.pointee.min = minimum
            message.pointee.max_present_case = OPENTELEMETRY__PROTO__METRICS__V1__HISTOGRAM_DATA_POINT__MAX_PRESENT_MAX
            message.pointee.max = maximum
        }
        (message.pointee.n_exemplars, message.pointee.exemplars) = exemplars(data.exemplars.compactMap { $0 }, arena: arena)
        return message
    }

    private static func exemplars(_ exemplars: [Exemplar], arena: ProtobufArena)
        -> (Int, UnsafeMutablePointer<UnsafeMutablePointer<PBExemplar>?>?) {
        guard !exemplars.isEmpty else { return (0, nil) }
        let array = arena.allocate(UnsafeMutablePointer<PBExemplar>?.self, count: exemplars.count)
        for (index, exemplar) in exemplars.enumerated() {
            let entry = arena.allocate(PBExemplar.self)
            opentelemetry__proto__metrics__v1__exemplar__init(entry)
            entry.pointee.time_unix_nano = exemplar.timeUnixNanoseconds
            entry.pointee.value_case = OPENTELEMETRY__PROTO__METRICS__V1__EXEMPLAR__VALUE_AS_DOUBLE
            entry.pointee.as_double = exemplar.value
            entry.pointee.trace_id = arena.bytes(exemplar.trace)
            entry.pointee.span_id = arena.bytes(exemplar.span)
            array[index] = entry
        }
        return (exemplars.count, array)
    }
}

/// Turns cumulative snapshots into deltas since the previous export (counters
/// and histograms; gauges and up-down counters pass through).
struct DeltaTracker {
    private var previous: [String: [MetricAttributes: MetricSnapshot.Value]] = [:]

    mutating func deltas(_ snapshots: [MetricSnapshot]) -> [MetricSnapshot] {
        snapshots.map { snapshot in
            guard snapshot.descriptor.kind == .counter || snapshot.descriptor.kind == .histogram else { return snapshot }
            var result = snapshot
            var seen: [MetricAttributes: MetricSnapshot.Value] = [:]
            result.points = snapshot.points.map { point in
                seen[point.attributes] = point.value
                guard let before = previous[snapshot.descriptor.name]?[point.attributes] else { return point }
                var delta = point
                switch (point.value, before) {
                case (.scalar(let now), .scalar(let then)):
                    delta.value = .scalar(now - then)
                case (.histogram(var now), .histogram(let then)) where now.counts.count == then.counts.count:
                    now.counts = zip(now.counts, then.counts).map { $0 - $1 }
                    now.count -= then.count
                    now.sum -= then.sum
                    // Min and max since the start say nothing about the interval.
                    now.minimum = nil
                    now.maximum = nil
                    delta.value = .histogram(now)
                default:
                    break
                }
                return delta
            }
            previous[snapshot.descriptor.name] = seen
            return result
        }
    }
}

/// Sends metrics over OTLP/HTTP protobuf (`/v1/metrics`), with the transport,
/// retries, compression, TLS and headers of the span exporter.
public final class OTLPHTTPMetricExporter: Sendable {
    public let configuration: OTLPExporterConfiguration
    private let transport: OTLPHTTPTransport
    private let arena = Mutex(ProtobufArena())

    /// - Throws: `MetricsError` when the configuration cannot work (an
    ///   unsupported protocol, an unreadable certificate).
    public init(configuration: OTLPExporterConfiguration = OTLPExporterConfiguration(signal: .metrics), logger: Logger) throws {
        do {
            try configuration.validate()
        } catch {
            throw MetricsError("OTLP metrics export: \(error)")
        }
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "component"] = "OTLPHTTPMetricExporter"
        transport = OTLPHTTPTransport(configuration: configuration, signalName: "metric points", logger: logger)
    }

    func export(_ snapshots: [MetricSnapshot], resource: Resource, start: UInt64, now: UInt64, temporality: AggregationTemporality, timeout: Duration) throws {
        let points = snapshots.reduce(0) { $0 + $1.points.count }
        guard points > 0 else { return }
        let body = arena.withLock {
            OTLPMetricEncoding.encodeRequest(snapshots, resource: resource, startNanoseconds: start, nowNanoseconds: now, temporality: temporality, arena: $0)
        }
        _ = try transport.send(body, timeout: min(timeout, configuration.timeout), itemCount: points)
    }

    func shutdown() { transport.shutdown() }
}

/// Collects the provider every `interval` (`OTEL_METRIC_EXPORT_INTERVAL`,
/// default 60 s) and exports it, on a thread of its own so the data path never
/// waits for the collector; `forceFlush()` exports now; `shutdown(timeout:)`
/// exports one last time within the timeout.
public final class PeriodicMetricReader: @unchecked Sendable {
    public struct Configuration: Sendable {
        public var interval: Duration
        /// Time for one export (`OTEL_METRIC_EXPORT_TIMEOUT`, default 30 s).
        public var timeout: Duration
        public var temporality: AggregationTemporality

        public init(interval: Duration = .seconds(60), timeout: Duration = .seconds(30), temporality: AggregationTemporality = .cumulative) {
            self.interval = interval
            self.timeout = timeout
            self.temporality = temporality
        }

        /// `OTEL_METRIC_EXPORT_INTERVAL` and `OTEL_METRIC_EXPORT_TIMEOUT` (ms),
        /// `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`.
        public init(environment: [String: String]) {
            func milliseconds(_ key: String) -> Duration? {
                guard let text = environment[key]?.trimming({ $0 == " " || $0 == "\t" }), let value = Int64(text), value > 0 else { return nil }
                return .milliseconds(value)
            }
            self.init(
                interval: milliseconds("OTEL_METRIC_EXPORT_INTERVAL") ?? .seconds(60),
                timeout: milliseconds("OTEL_METRIC_EXPORT_TIMEOUT") ?? .seconds(30),
                temporality: AggregationTemporality(environment: environment))
        }
    }

    /// Guarded by `lock`, which the export thread also waits on.
    private struct State {
        var wakeups = 0
        var stopping = false
        var exportsDone = 0
        var waiters: [(target: Int, continuation: CheckedContinuation<Void, Never>)] = []
        var failures = 0
        /// Set by `shutdown(timeout:)` for the last export.
        var shutdownTimeout: Duration?
        /// When the last successful export was taken (the start of a delta interval).
        var lastExport: UInt64?
    }

    public let configuration: Configuration
    private let provider: MeterProvider
    private let exporter: OTLPHTTPMetricExporter
    private let lock = ConditionLock()
    private var state = State()
    private let start = wallClockNanoseconds()
    /// Touched only by the export thread.
    private var deltas = DeltaTracker()

    public init(provider: MeterProvider, exporter: OTLPHTTPMetricExporter, configuration: Configuration) {
        self.provider = provider
        self.exporter = exporter
        self.configuration = configuration
        startThread { [self] in loop() }
    }

    /// Exports now; returns when that export is done (or failed).
    public func forceFlush() async {
        await withCheckedContinuation { continuation in
            lock.withLock {
                state.wakeups += 1
                state.waiters.append((state.exportsDone + 1, continuation))
                lock.signal()
            }
        }
    }

    /// A last export, then the exporter stops. Bounded by `timeout`.
    public func shutdown(timeout: Duration = .seconds(5)) async {
        await withCheckedContinuation { continuation in
            lock.withLock {
                state.shutdownTimeout = timeout
                state.stopping = true
                state.waiters.append((Int.max, continuation))
                lock.signal()
            }
        }
        exporter.shutdown()
    }

    private func loop() {
        while true {
            lock.lock()
            let due = monotonicNanoseconds(after: configuration.interval)
            while state.wakeups == 0, !state.stopping, monotonicNanoseconds() < due {
                lock.wait(untilMonotonicNanoseconds: due)
            }
            state.wakeups = 0
            let isStopping = state.stopping
            let timeout = state.shutdownTimeout ?? configuration.timeout
            lock.unlock()
            exportOnce(timeout: timeout)
            let ready = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
                state.exportsDone += 1
                let done = state.exportsDone
                let ready = state.waiters.filter { $0.target <= done || isStopping }.map(\.continuation)
                state.waiters.removeAll { $0.target <= done || isStopping }
                return ready
            }
            for waiter in ready { waiter.resume() }
            if isStopping { return }
        }
    }

    private func exportOnce(timeout: Duration) {
        var snapshots = provider.collect()
        var start = self.start
        if configuration.temporality == .delta {
            snapshots = deltas.deltas(snapshots)
            start = lock.withLock { state.lastExport } ?? self.start
        }
        let now = wallClockNanoseconds()
        do {
            try exporter.export(
                snapshots, resource: provider.configuration.resource, start: start, now: now,
                temporality: configuration.temporality, timeout: timeout)
            lock.withLock { state.lastExport = now }
        } catch {
            // The transport logged the failure; metrics are cumulative, so the
            // next export carries what this one could not.
            lock.withLock { state.failures += 1 }
        }
    }

    /// Exports that failed, since creation.
    public var failedExports: Int { lock.withLock { state.failures } }
}
