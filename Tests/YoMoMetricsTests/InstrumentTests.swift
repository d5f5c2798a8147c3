import CoreMetrics
import Foundation
import Testing
import Tracing
import YoMoTracing

@testable import YoMoMetrics

func testProvider() -> MeterProvider {
    MeterProvider(configuration: .init(resource: Resource(attributes: ["service.name": "test-svc"])))
}

@Suite("Instruments and aggregation")
struct InstrumentTests {
    @Test("counters add per attribute set (order-insensitive), negative adds ignored")
    func counters() throws {
        let provider = testProvider()
        let counter = provider.meter("t").counter("requests", unit: "{request}")
        counter.add(2, attributes: ["a": "1", "b": "2"])
        counter.bind(["b": "2", "a": "1"]).add()
        counter.add(-5, attributes: ["a": "1", "b": "2"])
        counter.add(1, attributes: ["a": "x"])
        let snapshot = try #require(provider.collect().first)
        #expect(snapshot.points.count == 2)
        #expect(snapshot.points.first { $0.attributes == ["a": "1", "b": "2"] }?.value == .scalar(3))
        #expect(snapshot.points.first { $0.attributes == ["a": "x"] }?.value == .scalar(1))
    }

    @Test("past the cardinality limit, new attribute sets share the overflow series: the limit holds and nothing is lost")
    func cardinalityLimit() throws {
        let provider = MeterProvider(configuration: .init(resource: Resource(attributes: ["service.name": "t"]), cardinalityLimit: 4))
        let meter = provider.meter("t")
        let counter = meter.counter("frames", unit: "{frame}")
        let histogram = meter.histogram("latency", unit: "s", boundaries: [1])
        for index in 0..<10 {
            counter.add(Double(index + 1), attributes: ["tag": "\(index)"])
            histogram.record(0.5, attributes: ["tag": "\(index)"])
        }
        // A set that has its own series keeps it after the limit is reached.
        counter.add(100, attributes: ["tag": "0"])
        let snapshots = provider.collect()
        let frames = try #require(snapshots.first { $0.descriptor.name == "frames" })
        #expect(frames.points.count == 4)
        #expect(frames.points.first { $0.attributes == ["tag": "0"] }?.value == .scalar(101))
        #expect(frames.points.first { $0.attributes == ["tag": "2"] }?.value == .scalar(3))
        #expect(frames.points.first { $0.attributes == .overflow }?.value == .scalar(Double((4...10).reduce(0, +))))
        let latency = try #require(snapshots.first { $0.descriptor.name == "latency" })
        #expect(latency.points.count == 4)
        guard case .histogram(let overflow)? = latency.points.first(where: { $0.attributes == .overflow })?.value else {
            Issue.record("no overflow histogram series")
            return
        }
        #expect(overflow.count == 7 && overflow.counts == [7, 0])
    }

    @Test("an observed gauge with more series than the cardinality limit reports the limit's worth, the first by attributes")
    func observedCardinalityLimit() throws {
        let provider = MeterProvider(configuration: .init(resource: Resource(attributes: ["service.name": "t"]), cardinalityLimit: 4))
        provider.meter("t").observableGauge("rtt", unit: "s") { (0..<10).map { (["conn": "\($0)"], Double($0)) } }
        let rtt = try #require(provider.collect().first { $0.descriptor.name == "rtt" })
        #expect(rtt.points.map(\.attributes) == (0..<4).map { ["conn": "\($0)"] })
        #expect(rtt.points.map(\.value) == (0..<4).map { .scalar(Double($0)) })
    }

    @Test("histogram buckets: upper bounds inclusive, +Inf last, sum, count, min, max")
    func histogramBuckets() throws {
        let provider = testProvider()
        let histogram = provider.meter("t").histogram("latency", unit: "s", boundaries: [0.1, 1, 10])
        for value in [0.05, 0.1, 0.5, 1, 20, 20] { histogram.record(value) }
        guard case .histogram(let h) = try #require(provider.collect().first?.points.first).value else {
            Issue.record("not a histogram")
            return
        }
        #expect(h.counts == [2, 2, 0, 2])
        #expect(h.count == 6)
        #expect(abs(h.sum - 41.65) < 1e-9)
        #expect(h.minimum == 0.05)
        #expect(h.maximum == 20)
    }

    @Test("a measurement under a sampled span becomes its bucket's exemplar; an unsampled one does not")
    func exemplars() throws {
        let provider = testProvider()
        let histogram = provider.meter("t").histogram("latency", unit: "s", boundaries: [1]).bind()
        let sampled = SpanContext(traceID: .random(), spanID: .random(), traceFlags: .sampled)
        let unsampled = SpanContext(traceID: .random(), spanID: .random(), traceFlags: [])
        var context = ServiceContext.topLevel
        context.spanContext = sampled
        ServiceContext.withValue(context) { histogram.record(0.5) }
        histogram.record(5, spanContext: unsampled)
        histogram.record(7)
        guard case .histogram(let h) = try #require(provider.collect().first?.points.first).value else { return }
        #expect(h.exemplars[0]?.traceID == sampled.traceID.description)
        #expect(h.exemplars[0]?.spanID == sampled.spanID.description)
        #expect(h.exemplars[0]?.value == 0.5)
        #expect(h.exemplars[1] == nil)
    }

    @Test("a disabled provider records nothing and hands out no-op instruments")
    func disabled() {
        let provider = MeterProvider(configuration: .init(serviceName: "x", environment: ["OTEL_SDK_DISABLED": "true"]))
        #expect(!provider.isEnabled)
        provider.meter("t").counter("c").add(1)
        #expect(!provider.meter("t").histogram("h").bind().isEnabled)
        #expect(provider.collect().isEmpty)
    }

    @Test("concurrent adds from many tasks are all counted")
    func concurrency() async throws {
        let provider = testProvider()
        let counter = provider.meter("t").counter("c").bind()
        let histogram = provider.meter("t").histogram("h", boundaries: [0.5]).bind()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    for index in 0..<10_000 {
                        counter.add(0.5)
                        histogram.record(Double(index % 2))
                    }
                }
            }
        }
        let snapshots = provider.collect()
        #expect(snapshots[0].points[0].value == .scalar(40_000))
        guard case .histogram(let h) = snapshots[1].points[0].value else { return }
        #expect(h.count == 80_000)
        #expect(h.counts == [40_000, 40_000])
    }

    @Test("swift-metrics handlers land in the provider: counter, timer in seconds, recorder, meter")
    func swiftMetricsFactory() throws {
        let provider = testProvider()
        let factory = SwiftMetricsFactory(provider)
        factory.makeCounter(label: "jobs", dimensions: [("queue", "a")]).increment(by: 3)
        factory.makeTimer(label: "job_time", dimensions: []).recordNanoseconds(2_000_000)
        factory.makeRecorder(label: "size", dimensions: [], aggregate: true).record(Int64(7))
        factory.makeMeter(label: "depth", dimensions: []).set(Int64(4))
        let snapshots = Dictionary(uniqueKeysWithValues: provider.collect().map { ($0.descriptor.name, $0) })
        #expect(snapshots["jobs"]?.points.first?.value == .scalar(3))
        #expect(snapshots["jobs"]?.points.first?.attributes == ["queue": "a"])
        guard case .histogram(let timer)? = snapshots["job_time"]?.points.first?.value else {
            Issue.record("timer is not a histogram")
            return
        }
        #expect(timer.sum == 0.002)
        #expect(snapshots["job_time"]?.descriptor.unit == "s")
        #expect(snapshots["depth"]?.points.first?.value == .scalar(4))
    }

    @Test("listen addresses parse; malformed ones are a clear error")
    func listenAddresses() throws {
        #expect(try YoMoMetrics.parseListen("127.0.0.1:9464") == ("127.0.0.1", 9464))
        #expect(try YoMoMetrics.parseListen(":9464") == ("0.0.0.0", 9464))
        #expect(try YoMoMetrics.parseListen("[::1]:9") == ("::1", 9))
        #expect(throws: MetricsError.self) { try YoMoMetrics.parseListen("localhost") }
        #expect(throws: MetricsError.self) { try YoMoMetrics.parseListen("h:99999") }
    }
}
