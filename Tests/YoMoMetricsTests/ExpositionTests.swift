import Foundation
import Testing
import Tracing
import YoMoTracing

@testable import YoMoMetrics

@Suite("Prometheus text and OpenMetrics rendering")
struct ExpositionTests {
    @Test("OpenTelemetry names become Prometheus names: dots, unit suffixes, annotations dropped")
    func names() {
        #expect(PrometheusExposition.metricName("messaging.process.duration", unit: "s") == "messaging_process_duration_seconds")
        #expect(PrometheusExposition.metricName("messaging.client.consumed.messages", unit: "{message}") == "messaging_client_consumed_messages")
        #expect(PrometheusExposition.metricName("yomo.zipper.routed.messages", unit: "{message}") == "yomo_zipper_routed_messages")
        #expect(PrometheusExposition.metricName("queue.size", unit: "By") == "queue_size_bytes")
        #expect(PrometheusExposition.metricName("yomo.quic.pacing_rate", unit: "By/s") == "yomo_quic_pacing_rate_bytes_per_second")
        #expect(PrometheusExposition.metricName("requests", unit: "{request}/min") == "requests_per_min")
        #expect(PrometheusExposition.metricName("cpu.utilization", unit: "1") == "cpu_utilization_ratio")
        #expect(PrometheusExposition.metricName("already_seconds", unit: "s") == "already_seconds")
        #expect(PrometheusExposition.metricName("9lives..x-y", unit: "") == "_lives_x_y")
    }

    @Test("text format: HELP/TYPE, counters with _total, escaped label values, target_info")
    func textFormat() {
        let provider = MeterProvider(configuration: .init(resource: Resource(attributes: ["service.name": "upper"])))
        let meter = provider.meter("StreamFunction")
        meter.counter("messaging.client.consumed.messages", unit: "{message}", description: "Frames handled.\nOne per frame.")
            .add(3, attributes: ["messaging.destination.name": "0x33", "odd": "a\"b\\c\nd"])
        meter.upDownCounter("yomo.zipper.connections", unit: "{connection}").add(2, attributes: ["type": "source"])
        let text = PrometheusExposition.render(provider.collect(), resource: provider.configuration.resource, format: .text)
        #expect(text.contains("# HELP target_info Target metadata\n# TYPE target_info gauge\ntarget_info{service_name=\"upper\"} 1\n"))
        #expect(text.contains("# HELP messaging_client_consumed_messages_total Frames handled.\\nOne per frame.\n"))
        #expect(text.contains("# TYPE messaging_client_consumed_messages_total counter\n"))
        #expect(text.contains(#"messaging_client_consumed_messages_total{messaging_destination_name="0x33",odd="a\"b\\c\nd",otel_scope_name="StreamFunction"} 3"#))
        #expect(text.contains("# TYPE yomo_zipper_connections gauge\nyomo_zipper_connections{type=\"source\",otel_scope_name=\"StreamFunction\"} 2\n"))
        #expect(!text.contains("# EOF"))
    }

    @Test("histograms: cumulative _bucket with le, +Inf, _sum, _count; exemplars only in OpenMetrics")
    func histograms() throws {
        let provider = MeterProvider(configuration: .init(resource: Resource()))
        let histogram = provider.meter("").histogram("messaging.process.duration", unit: "s", boundaries: [0.01, 0.1]).bind(["tag": "0x33"])
        let span = SpanContext(traceID: .random(), spanID: .random(), traceFlags: .sampled)
        histogram.record(0.005, spanContext: span)
        histogram.record(0.05, spanContext: nil)
        histogram.record(3, spanContext: nil)
        let text = PrometheusExposition.render(provider.collect(), resource: Resource(), format: .text)
        #expect(text.contains("""
            # TYPE messaging_process_duration_seconds histogram
            messaging_process_duration_seconds_bucket{tag="0x33",le="0.01"} 1
            messaging_process_duration_seconds_bucket{tag="0x33",le="0.1"} 2
            messaging_process_duration_seconds_bucket{tag="0x33",le="+Inf"} 3
            messaging_process_duration_seconds_sum{tag="0x33"} 3.055
            messaging_process_duration_seconds_count{tag="0x33"} 3

            """))
        #expect(!text.contains("trace_id"))
        let open = PrometheusExposition.render(provider.collect(), resource: Resource(), format: .openMetrics)
        #expect(open.contains("# UNIT messaging_process_duration_seconds seconds\n"))
        let line = try #require(open.split(separator: "\n").first { $0.contains("le=\"0.01\"") })
        #expect(line.hasPrefix("messaging_process_duration_seconds_bucket{tag=\"0x33\",le=\"0.01\"} 1 # {trace_id=\"\(span.traceID)\",span_id=\"\(span.spanID)\"} 0.005 "))
        #expect(open.hasSuffix("# EOF\n"))
    }

    @Test("OpenMetrics counters: family without _total, sample with it; the last sampled addition's span as the sample's exemplar, in OpenMetrics only")
    func openMetricsCounter() throws {
        let provider = MeterProvider(configuration: .init(resource: Resource()))
        let counter = provider.meter("").counter("yomo.zipper.routed.messages", unit: "{message}")
        counter.add(5, attributes: ["outcome": "delivered"])
        let first = SpanContext(traceID: .random(), spanID: .random(), traceFlags: .sampled)
        let last = SpanContext(traceID: .random(), spanID: .random(), traceFlags: .sampled)
        counter.add(1, attributes: ["outcome": "dropped"], exemplar: first)
        counter.add(2, attributes: ["outcome": "dropped"], exemplar: last)
        counter.add(1, attributes: ["outcome": "dropped"], exemplar: SpanContext(traceID: .random(), spanID: .random(), traceFlags: []))
        counter.add(1, attributes: ["outcome": "dropped"])
        let open = PrometheusExposition.render(provider.collect(), resource: Resource(), format: .openMetrics)
        #expect(open.contains("# TYPE yomo_zipper_routed_messages counter\n"))
        #expect(open.contains("\nyomo_zipper_routed_messages_total{outcome=\"delivered\"} 5\n"), "no exemplar: none was given")
        let dropped = try #require(open.split(separator: "\n").first { $0.contains("outcome=\"dropped\"") })
        #expect(dropped.hasPrefix("yomo_zipper_routed_messages_total{outcome=\"dropped\"} 5 # {trace_id=\"\(last.traceID)\",span_id=\"\(last.spanID)\"} 2 "),
                "the last sampled one: \(dropped)")
        let text = PrometheusExposition.render(provider.collect(), resource: Resource(), format: .text)
        #expect(text.contains("yomo_zipper_routed_messages_total{outcome=\"dropped\"} 5\n") && !text.contains("trace_id"))
    }

    @Test("two meters with an instrument of one name: one family on the page, each series under its own scope; promtool accepts the text page")
    func oneNameInTwoScopes() throws {
        let provider = MeterProvider(configuration: .init(resource: Resource()))
        // A process with a Source and a StreamFunction (`yomo bench`): both count sent frames.
        let description = "Frames written to the zipper."
        provider.meter("Source").counter("messaging.client.sent.messages", unit: "{message}", description: description)
            .add(2, attributes: ["yomo.source.name": "bench"])
        provider.meter("StreamFunction").counter("messaging.client.sent.messages", unit: "{message}", description: description)
            .add(3, attributes: ["messaging.consumer.group.name": "upper"])
        // Another kind under the same name would give the family two types: it gets the first.
        provider.meter("Other").gauge("messaging.client.sent.messages", unit: "{message}").set(7, attributes: ["x": "y"])
        let snapshots = provider.collect()
        #expect(snapshots.map(\.descriptor.scope) == ["Source", "StreamFunction"])
        for format in [PrometheusExposition.Format.text, .openMetrics] {
            let page = PrometheusExposition.render(snapshots, resource: Resource(), format: format)
            #expect(page.components(separatedBy: "# TYPE messaging_client_sent_messages").count == 2, "\(page)")
            #expect(page.contains(#"messaging_client_sent_messages_total{yomo_source_name="bench",otel_scope_name="Source"} 2"#), "\(page)")
            #expect(page.contains(#"messaging_client_sent_messages_total{messaging_consumer_group_name="upper",otel_scope_name="StreamFunction"} 3"#), "\(page)")
            #expect(page.contains(#"messaging_client_sent_messages_total{x="y",otel_scope_name="Source"} 7"#), "\(page)")
            // promtool reads the text format only.
            if format == .text { #expect(try promtoolAccepts(page), "\(page)") }
        }
    }

    /// `promtool check metrics` (Debian's prometheus package) reads the page as Prometheus would.
    private func promtoolAccepts(_ page: String) throws -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/promtool")
        process.arguments = ["check", "metrics"]
        let input = Pipe()
        process.standardInput = input
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        input.fileHandleForWriting.write(Data(page.utf8))
        try input.fileHandleForWriting.close()
        process.waitUntilExit()
        return process.terminationStatus == 0
    }

    @Test("the Accept header picks the format")
    func accept() {
        #expect(PrometheusExposition.Format(accept: "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5") == .openMetrics)
        #expect(PrometheusExposition.Format(accept: "text/plain") == .text)
        #expect(PrometheusExposition.Format(accept: nil) == .text)
    }
}
