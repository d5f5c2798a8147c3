public import CoreMetrics
import Synchronization

/// Backs swift-metrics (`MetricsSystem.bootstrap(SwiftMetricsFactory(provider))`)
/// with a meter provider, so libraries instrumented with swift-metrics land in
/// the same `/metrics` as the SDK's own instruments: counters as counters,
/// aggregating recorders and timers as histograms (timers in seconds), meters
/// and non-aggregating recorders as gauges. Labels are used as metric names as
/// they are (swift-metrics has no units).
public struct SwiftMetricsFactory: MetricsFactory {
    let provider: MeterProvider
    let meter: Meter

    public init(_ provider: MeterProvider) {
        self.provider = provider
        self.meter = provider.meter("swift-metrics")
    }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        CounterAdapter(meter.counter(label).bind(MetricAttributes(dimensions)))
    }

    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        CounterAdapter(meter.counter(label).bind(MetricAttributes(dimensions)))
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        GaugeAdapter(meter.gauge(label).bind(MetricAttributes(dimensions)))
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        if aggregate { return HistogramAdapter(meter.histogram(label).bind(MetricAttributes(dimensions)), scale: 1) }
        return GaugeAdapter(meter.gauge(label).bind(MetricAttributes(dimensions)))
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        HistogramAdapter(meter.histogram(label, unit: "s", boundaries: Histogram.durationBoundaries).bind(MetricAttributes(dimensions)), scale: 1e-9)
    }

    public func destroyCounter(_ handler: any CounterHandler) {}
    public func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
    public func destroyMeter(_ handler: any MeterHandler) {}
    public func destroyRecorder(_ handler: any RecorderHandler) {}
    public func destroyTimer(_ handler: any TimerHandler) {}
}

private final class CounterAdapter: CounterHandler, FloatingPointCounterHandler, Sendable {
    let counter: BoundCounter
    init(_ counter: BoundCounter) { self.counter = counter }
    func increment(by amount: Int64) { counter.add(Double(amount)) }
    func increment(by amount: Double) { counter.add(amount) }
    // Cumulative exposition has no reset; a swift-metrics reset is ignored.
    func reset() {}
}

private final class GaugeAdapter: MeterHandler, RecorderHandler, Sendable {
    let gauge: BoundGauge
    init(_ gauge: BoundGauge) { self.gauge = gauge }
    func set(_ value: Int64) { gauge.set(Double(value)) }
    func set(_ value: Double) { gauge.set(value) }
    func increment(by amount: Double) { gauge.add(amount) }
    func decrement(by amount: Double) { gauge.add(-amount) }
    func record(_ value: Int64) { gauge.set(Double(value)) }
    func record(_ value: Double) { gauge.set(value) }
}

private final class HistogramAdapter: RecorderHandler, TimerHandler, Sendable {
    let histogram: BoundHistogram
    let scale: Double
    init(_ histogram: BoundHistogram, scale: Double) {
        self.histogram = histogram
        self.scale = scale
    }
    func record(_ value: Int64) { histogram.record(Double(value) * scale) }
    func record(_ value: Double) { histogram.record(value * scale) }
    func recordNanoseconds(_ duration: Int64) { histogram.record(Double(duration) * scale) }
}
