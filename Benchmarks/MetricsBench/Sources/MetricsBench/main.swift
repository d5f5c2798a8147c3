// Nanoseconds per measurement, best of 5 rounds of 2,000,000, single thread,
// series bound once (the way the data path records). Both libraries in one run.
import Foundation
import Prometheus
import Tracing
import YoMoMetrics
import YoMoTracing

func measure(_ name: String, iterations: Int = 2_000_000, _ body: (Int) -> Void) {
    var best = Double.infinity
    for _ in 0..<5 {
        let clock = ContinuousClock()
        let start = clock.now
        for index in 0..<iterations { body(index) }
        let elapsed = (clock.now - start).components
        let nanoseconds = (Double(elapsed.seconds) * 1e9 + Double(elapsed.attoseconds) / 1e9) / Double(iterations)
        best = min(best, nanoseconds)
    }
    print(String(format: "%-58@ %7.1f ns", name as NSString, best))
}

// The messaging conventions' advised bounds (YoMoMetrics' Histogram.durationBoundaries;
// spelled out: `Histogram` is also swift-prometheus' type).
let durationBounds: [Double] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]

let provider = MeterProvider(configuration: .init(resource: Resource(attributes: ["service.name": "bench"])))
let meter = provider.meter("bench")
let counter = meter.counter("messaging.client.consumed.messages", unit: "{message}").bind(["messaging.destination.name": "0x33"])
let histogram = meter.histogram("messaging.process.duration", unit: "s", boundaries: durationBounds)
    .bind(["messaging.destination.name": "0x33"])

let registry = PrometheusCollectorRegistry()
let promCounter = registry.makeCounter(name: "messaging_client_consumed_messages_total", labels: [("messaging_destination_name", "0x33")])
let promHistogram = registry.makeValueHistogram(
    name: "messaging_process_duration_seconds", labels: [("messaging_destination_name", "0x33")],
    buckets: durationBounds)

let sampled = SpanContext(traceID: .random(), spanID: .random(), traceFlags: .sampled)
var context = ServiceContext.topLevel
context.spanContext = sampled

print("per measurement, best of 5 × 2,000,000 (lower is better)")
measure("YoMoMetrics counter add (bound)") { _ in counter.add() }
measure("swift-prometheus counter increment") { _ in promCounter.increment() }
measure("YoMoMetrics histogram record, no span") { index in histogram.record(Double(index & 63) * 0.001, spanContext: nil) }
measure("YoMoMetrics histogram record with exemplar (sampled span)") { index in
    histogram.record(Double(index & 63) * 0.001, spanContext: sampled)
}
measure("YoMoMetrics histogram record, exemplar from the task-local span") { index in
    ServiceContext.withValue(context) { histogram.record(Double(index & 63) * 0.001) }
}
measure("swift-prometheus histogram record (no exemplars)") { index in promHistogram.record(Double(index & 63) * 0.001) }

// Exposition, the scraper's side: one page of 100 series.
let wide = provider.meter("wide").counter("wide.counter", unit: "{x}")
for index in 0..<100 { wide.add(1, attributes: ["index": "\(index)"]) }
let wideProm = (0..<100).map { registry.makeCounter(name: "wide_counter_total", labels: [("index", "\($0)")]) }
for counter in wideProm { counter.increment() }
measure("YoMoMetrics render (text, ~115 series)", iterations: 2_000) { _ in
    _ = PrometheusExposition.render(provider.collect(), resource: provider.configuration.resource, format: .text)
}
measure("swift-prometheus emit (~115 series)", iterations: 2_000) { _ in
    var buffer: [UInt8] = []
    registry.emit(into: &buffer)
}
