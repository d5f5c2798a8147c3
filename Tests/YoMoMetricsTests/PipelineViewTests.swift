import Testing
import YoMoTracing

@testable import YoMoMetrics

@Suite("yomo top's arithmetic: parsing scrapes, rates, quantiles")
struct PipelineViewTests {
    @Test("the text format parses back what the exposition renders, escapes included")
    func roundTrip() {
        let provider = MeterProvider(configuration: .init(resource: Resource(attributes: ["service.name": "svc"])))
        provider.meter("s").counter("c", unit: "{x}").add(4, attributes: ["k": "a\"b\\c\nd"])
        provider.meter("s").histogram("h", unit: "s", boundaries: [1]).record(0.5)
        let text = PrometheusExposition.render(provider.collect(), resource: provider.configuration.resource, format: .text)
        let samples = PrometheusTextParser.parse(text)
        #expect(samples.contains { $0.name == "c_total" && $0.labels["k"] == "a\"b\\c\nd" && $0.value == 4 })
        #expect(samples.contains { $0.name == "h_seconds_bucket" && $0.labels["le"] == "+Inf" && $0.value == 1 })
        #expect(samples.contains { $0.name == "target_info" && $0.labels["service_name"] == "svc" })
    }

    @Test("odd lines: blank or commented, CRLF, empty braces, spaces and a timestamp, escapes around UTF-8, no value")
    func oddLines() {
        let text = "\n  # HELP x y\r\na 1\r\nb{} 2\n\tc{ k=\"v\", l=\"é\\\"\\é\\n\"} 3 1700000000000\nd{k=\"v\"}\ne +Inf\nf{k=\"}\"} -Inf\n42\n"
        let samples = PrometheusTextParser.parse(text)
        #expect(samples.map(\.name) == ["a", "b", "c", "e", "f", ""], "\(samples)")
        #expect(samples.first { $0.name == "a" }?.value == 1, "a CRLF line ends before its CR")
        #expect(samples.first { $0.name == "b" }.map { $0.labels.isEmpty && $0.value == 2 } == true)
        let c = samples.first { $0.name == "c" }
        #expect(c?.labels == ["k": "v", "l": "é\"é\n"] && c?.value == 3, "\(String(describing: c))")
        #expect(samples.first { $0.name == "e" }?.value == .infinity)
        #expect(samples.first { $0.name == "f" }.map { $0.labels == ["k": "}"] && $0.value == -.infinity } == true)
        #expect(samples.last?.value == 42, "a bare number: a sample with no name, as before")
    }

    @Test("rates, error share and interval quantiles from two scrapes")
    func rows() throws {
        func page(consumed: Double, sent: Double, failed: Double, buckets: [Double], held: Double) -> [ScrapedSample] {
            var samples = [
                ScrapedSample(name: "target_info", labels: ["service_name": "upper"], value: 1),
                ScrapedSample(name: "yomo_handlers_reading_held_time_seconds_total", labels: ["messaging_consumer_group_name": "upper"], value: held),
                ScrapedSample(name: "messaging_client_consumed_messages_total", labels: [:], value: consumed),
                ScrapedSample(name: "messaging_client_sent_messages_total", labels: [:], value: sent),
                ScrapedSample(name: "messaging_process_duration_seconds_count", labels: [:], value: consumed - failed),
                ScrapedSample(name: "messaging_process_duration_seconds_count", labels: ["error_type": "E"], value: failed),
            ]
            for (bound, count) in zip(["0.01", "0.1", "+Inf"], buckets) {
                samples.append(ScrapedSample(name: "messaging_process_duration_seconds_bucket", labels: ["le": bound], value: count))
            }
            return samples
        }
        let before = page(consumed: 100, sent: 100, failed: 0, buckets: [100, 100, 100], held: 4.5)
        let after = page(consumed: 300, sent: 290, failed: 10, buckets: [100, 300, 300], held: 5.5)
        let row = PipelineRow.compute(target: "h:1", previous: before, current: after, seconds: 2)
        #expect(row.service == "upper")
        #expect(row.inRate == 100)
        #expect(row.outRate == 95)
        #expect(row.errorPercent == 5)
        // All 200 handled in the interval fell in (0.01, 0.1]: p50 halfway, p99 near the top.
        #expect(abs(try #require(row.p50) - 0.055) < 1e-9)
        #expect(abs(try #require(row.p99) - 0.0991) < 1e-9)
        #expect(row.connections == nil)
        #expect(row.heldPercent == 50, "reading held 1 s of the 2")
        #expect(row.residentBytes == nil, "no process metrics on the page")
        let withMemory = PipelineRow.compute(
            target: "h:1", previous: before, current: after + [ScrapedSample(name: "process_memory_usage_bytes", labels: [:], value: 3_145_728)],
            seconds: 2)
        #expect(withMemory.residentBytes == 3_145_728)
        let idle = PipelineRow.compute(target: "h:1", previous: after, current: after, seconds: 1)
        #expect(idle.p50 == nil && idle.inRate == 0)
    }

    @Test("each client of a zipper: its connection's gauges, lost packets as a rate, the most backlogged first")
    func clientRows() {
        func client(_ name: String, id: String, rtt: Double, lost: Double, unacknowledged: Double) -> [ScrapedSample] {
            let labels = ["yomo_zipper_name": "edge", "yomo_client_type": "stream_function", "yomo_client_name": name, "yomo_client_id": id]
            return [
                ScrapedSample(name: "yomo_zipper_client_smoothed_rtt_seconds", labels: labels, value: rtt),
                ScrapedSample(name: "yomo_zipper_client_packets_lost", labels: labels, value: lost),
                ScrapedSample(name: "yomo_zipper_client_pacing_rate_bytes_per_second", labels: labels, value: 1_250_000),
                ScrapedSample(name: "yomo_zipper_client_max_datagram_size_bytes", labels: labels, value: 1452),
                ScrapedSample(name: "yomo_zipper_client_unacknowledged_bytes", labels: labels, value: unacknowledged),
            ]
        }
        let before = client("fast", id: "f-0", rtt: 0.001, lost: 10, unacknowledged: 0)
            + client("slow", id: "s-0", rtt: 0.2, lost: 5, unacknowledged: 0)
        let after = client("fast", id: "f-0", rtt: 0.001, lost: 30, unacknowledged: 0)
            + client("slow", id: "s-0", rtt: 0.25, lost: 5, unacknowledged: 65536)
            + client("new", id: "n-1", rtt: 0.01, lost: 3, unacknowledged: 0)
        let rows = ClientRow.compute(previous: before, current: after, seconds: 2)
        #expect(rows.map(\.name) == ["slow", "new", "fast"], "backlog first, then round-trip time")
        #expect(rows[0].unacknowledged == 65536 && rows[0].rtt == 0.25 && rows[0].lostRate == 0)
        #expect(rows[1].lostRate == nil, "a connection the first scrape did not see has no rate yet")
        #expect(rows[2].lostRate == 10, "20 packets in 2 s")
        #expect(rows[2].pacingRate == 1_250_000 && rows[2].datagramSize == 1452 && rows[2].clientType == "stream_function")
        #expect(ClientRow.compute(previous: [], current: [], seconds: 1).isEmpty)
    }
}
