import Foundation
import Logging
import Testing
@testable import YoMoMetrics
import YoMoTracing

@testable import YoMo

/// A real Prometheus (Debian's 2.42, installed by scripts/setup.sh) scraping the
/// given targets every 200 ms with exemplar storage on, evaluating `ruleFiles`
/// as often, killed at the end.
final class PrometheusServer {
    let process = Process()
    let directory: URL
    let port: Int

    init(targets: [String], ruleFiles: [String] = []) async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("yomo-prometheus-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        port = try await freeTCPPort()
        let config = """
            global:
              scrape_interval: 200ms
              scrape_timeout: 150ms
              evaluation_interval: 200ms
            rule_files: [\(ruleFiles.map { "\"\($0)\"" }.joined(separator: ", "))]
            scrape_configs:
              - job_name: yomo
                static_configs:
                  - targets: [\(targets.map { "\"\($0)\"" }.joined(separator: ", "))]
            """
        let configPath = directory.appendingPathComponent("prometheus.yml").path
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/prometheus")
        process.arguments = [
            "--config.file=\(configPath)", "--storage.tsdb.path=\(directory.appendingPathComponent("data").path)",
            "--web.listen-address=127.0.0.1:\(port)", "--enable-feature=exemplar-storage",
        ]
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }

    /// `GET /api/v1/<path>` as JSON, nil while Prometheus is not up.
    func api(_ path: String, _ query: [String: String]) async -> [String: Any]? {
        var components = URLComponents(string: "http://127.0.0.1:\(port)/api/v1/\(path)")!
        components.queryItems = query.map { URLQueryItem(name: $0.key, value: $0.value) }
        guard let data = await httpGet(components.url!.absoluteString)?.body else { return nil }
        return (try? JSONSerialization.jsonObject(with: Data(data.utf8))) as? [String: Any]
    }

    /// The alerts firing now (pending ones left out): each one's labels.
    func firingAlerts() async -> [[String: String]]? {
        guard let data = (await api("alerts", [:]))?["data"] as? [String: Any], let alerts = data["alerts"] as? [[String: Any]] else {
            return nil
        }
        return alerts.filter { $0["state"] as? String == "firing" }.compactMap { $0["labels"] as? [String: String] }
    }

    /// The value of an instant query that returns one sample.
    func scalar(_ query: String) async -> Double? {
        guard let result = (await api("query", ["query": query]))?["data"] as? [String: Any],
              let vector = result["result"] as? [[String: Any]], let first = vector.first,
              let value = first["value"] as? [Any], value.count == 2, let text = value[1] as? String
        else { return nil }
        return Double(text)
    }

    /// `query`'s value once it is `expected`, or the last one read in
    /// `tries` reads 100 ms apart: each target is scraped at its own moment,
    /// so a second target's counter may lag what the first one showed.
    func scalar(_ query: String, becomes expected: Double, tries: Int = 300) async -> Double? {
        var value: Double?
        for _ in 0..<tries {
            value = await scalar(query)
            if value == expected { break }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return value
    }
}

/// A TCP port that was free a moment ago.
func freeTCPPort() async throws -> Int {
    let probe = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: .noop)
    let port = probe.port
    await probe.close()
    return port
}

/// The sum of the values of `name`'s series on a Prometheus text page whose
/// lines contain each of `labels`; nil when there is none.
func seriesValue(_ page: String, _ name: String, labels: [String] = []) -> Double? {
    let values = page.split(separator: "\n")
        .filter { line in line.hasPrefix(name + "{") && labels.allSatisfy { line.contains($0) } }
        .compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }
    return values.isEmpty ? nil : values.reduce(0, +)
}

/// A GET with the client `yomo top` scrapes with (URLSession is not on every
/// Linux machine here); nil when there is no whole answer.
func httpGet(_ url: String, accept: String? = nil) async -> (status: Int, body: String)? {
    guard let components = URLComponents(string: url), let host = components.host, let port = components.port else { return nil }
    let path = (components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath)
        + (components.percentEncodedQuery.map { "?" + $0 } ?? "")
    let answer = try? await plainHTTPGet(host: host, port: port, path: path, accept: accept, deadline: .seconds(5), maximumBytes: 64 << 20).get()
    return answer.map { ($0.status, $0.body) }
}

@Suite("Metrics on the data path, scraped by a real Prometheus", .serialized)
struct MetricsEndToEndTests {
    @Test("Prometheus counts every frame at the zipper and the function, and its exemplars are traces that were exported")
    func prometheusScrape() async throws {
        let receiver = try await SpanReceiver.start()
        let zipperMetrics = MeterProvider(configuration: .init(serviceName: "zipper-m", environment: [:]))
        let functionMetrics = MeterProvider(configuration: .init(serviceName: "upper-m", environment: [:]))
        let zipperEndpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: zipperMetrics)
        let functionEndpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: functionMetrics)
        defer { Task { await zipperEndpoint.close(); await functionEndpoint.close() } }
        let prometheus = try await PrometheusServer(targets: ["127.0.0.1:\(zipperEndpoint.port)", "127.0.0.1:\(functionEndpoint.port)"])

        // The replies' tag has no observer: dropped at once (no_route), not held in the zipper's first seconds.
        let zipper = Zipper(
            configuration: ZipperConfiguration(host: "127.0.0.1", port: 0, unroutedHold: .off),
            options: .init(tracerProvider: receiver.provider(service: "zipper-m"), meterProvider: zipperMetrics))
        try await zipper.start()
        let address = try #require(zipper.address)
        let functionTracing = receiver.provider(service: "upper-m")
        let sfn = StreamFunction(
            name: "upper-m", zipper: address,
            options: .init(observedTags: [0x33], tracerProvider: functionTracing, meterProvider: functionMetrics))
        sfn.setHandler { ctx in try await ctx.write(tag: 0x34, data: ctx.data) }
        try await sfn.connect()
        let source = Source(name: "source-m", zipper: address, options: .init(tracerProvider: TracerProvider.noop))
        try await source.connect()
        let frames = 40
        for index in 0..<frames { try await source.write(tag: 0x33, data: Array("frame \(index)".utf8)) }

        // Every frame handled, counted at the function; at the zipper, 0x33 delivered
        // once each and the 0x34 replies with no observer.
        let consumed = "sum(messaging_client_consumed_messages_total{messaging_destination_name=\"0x33\"})"
        #expect(await prometheus.scalar(consumed, becomes: Double(frames)) == Double(frames))
        // The zipper's target is scraped at its own moment (a full suite here once read it one scrape behind).
        #expect(await prometheus.scalar("sum(yomo_zipper_routed_messages_total{messaging_destination_name=\"0x33\",outcome=\"delivered\"})", becomes: Double(frames)) == Double(frames))
        #expect(await prometheus.scalar("sum(yomo_zipper_routed_messages_total{messaging_destination_name=\"0x34\",outcome=\"no_route\"})", becomes: Double(frames)) == Double(frames))
        #expect(await prometheus.scalar("sum(messaging_client_sent_messages_total{messaging_destination_name=\"0x34\"})") == Double(frames))
        #expect(await prometheus.scalar("sum(messaging_process_duration_seconds_count{messaging_consumer_group_name=\"upper-m\"})") == Double(frames))
        #expect(await prometheus.scalar("yomo_zipper_connections{yomo_client_type=\"stream_function\"}") == 1)
        // The SDK's own health: the function's span queue and its (no) losses.
        #expect(await prometheus.scalar("sum(yomo_sdk_spans_dropped_total{messaging_consumer_group_name=\"upper-m\"})") == 0)
        #expect(await prometheus.scalar("count(otel_sdk_processor_span_queue_size{messaging_consumer_group_name=\"upper-m\"})") == 1)
        // Its QUIC health: a round-trip time and bytes sent on its connection.
        #expect((await prometheus.scalar("yomo_quic_smoothed_rtt_seconds{messaging_consumer_group_name=\"upper-m\"}") ?? 0) > 0)
        #expect((await prometheus.scalar("yomo_quic_sent_bytes{messaging_consumer_group_name=\"upper-m\"}") ?? 0) > 0)
        // The zipper's side of each client's connection: one series per connection, by name and type.
        #expect(await prometheus.scalar("count(yomo_zipper_client_smoothed_rtt_seconds)") == 2)
        #expect((await prometheus.scalar("yomo_zipper_client_smoothed_rtt_seconds{yomo_client_type=\"stream_function\",yomo_client_name=\"upper-m\"}") ?? 0) > 0)
        #expect((await prometheus.scalar("yomo_zipper_client_pacing_rate_bytes_per_second{yomo_client_name=\"upper-m\"}") ?? 0) > 0, "BBR paces")
        #expect((await prometheus.scalar("yomo_zipper_client_max_datagram_size_bytes{yomo_client_type=\"source\"}") ?? 0) >= 1200)
        #expect(await prometheus.scalar("yomo_zipper_client_unacknowledged_bytes{yomo_client_name=\"upper-m\"}") != nil)
        #expect(await prometheus.scalar("yomo_zipper_client_unread_bytes{yomo_client_name=\"source-m\"}") == 0, "nothing waits: every frame was routed")
        // What both clients may send ahead of the zipper's reading: each window grown past 32 KiB at its first read, within the 64 MiB budget.
        let windows = await prometheus.scalar("yomo_zipper_receive_window_bytes") ?? 0
        #expect(windows > 2 * 32 * 1024 && windows <= 64 * 1024 * 1024 + 2 * 32 * 1024, "\(windows)")
        // Two clients, far from 128 handshakes at once: nobody was asked for a Retry.
        #expect(await prometheus.scalar("yomo_zipper_address_validation_retries_total") == 0)
        #expect(await prometheus.scalar("yomo_zipper_address_validation_invalid_tokens_total") == 0)
        #expect(await prometheus.scalar("yomo_zipper_address_validation_refused_total") == 0)
        // Delivery receipts: the zipper told its writers what was settled, and the
        // function keeps none of its replies (no route: settled at once).
        #expect((await prometheus.scalar("yomo_zipper_delivery_receipts_total") ?? 0) > 0)
        let unsettled = "yomo_client_unsettled_messages{messaging_consumer_group_name=\"upper-m\"}"
        #expect(await prometheus.scalar(unsettled, becomes: 0, tries: 100) == 0)
        var exportedSpans = 0.0
        for _ in 0..<100 where exportedSpans < Double(frames) {
            exportedSpans = await prometheus.scalar("otel_sdk_exporter_span_exported_total{messaging_consumer_group_name=\"upper-m\"}") ?? 0
            if exportedSpans < Double(frames) { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(exportedSpans == Double(frames), "the function's exporter reports every span exported")
        #expect(await prometheus.scalar("yomo_sdk_span_export_failures_total{messaging_consumer_group_name=\"upper-m\"}") == 0)
        #expect((await prometheus.scalar("sum(otel_sdk_exporter_operation_duration_seconds_count{messaging_consumer_group_name=\"upper-m\"})") ?? 0) > 0,
                "export calls timed")

        // Exemplars: trace ids of spans the function exported.
        await sfn.close()
        await source.close()
        await zipper.close()
        await functionTracing.shutdown()
        let now = Date().timeIntervalSince1970
        var exemplarTraceIDs: Set<String> = []
        for _ in 0..<100 where exemplarTraceIDs.isEmpty {
            let answer = await prometheus.api("query_exemplars", [
                "query": "messaging_process_duration_seconds_bucket", "start": "\(now - 120)", "end": "\(now + 10)",
            ])
            for series in (answer?["data"] as? [[String: Any]]) ?? [] {
                for exemplar in (series["exemplars"] as? [[String: Any]]) ?? [] {
                    if let labels = exemplar["labels"] as? [String: String], let id = labels["trace_id"] { exemplarTraceIDs.insert(id) }
                }
            }
            if exemplarTraceIDs.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(!exemplarTraceIDs.isEmpty, "Prometheus stored exemplars")
        let exported = Set(receiver.spans().filter { $0["name"] as? String == "upper-m" }.compactMap { $0["trace_id"] as? String })
        #expect(exported.count == frames)
        #expect(exemplarTraceIDs.isSubset(of: exported), "\(exemplarTraceIDs.subtracting(exported))")
    }

    @Test("frames dropped for a slow consumer: Prometheus counts them, and the count's exemplar opens a dropped frame's trace, whose zipper drop span says why")
    func droppedFramesExemplar() async throws {
        let receiver = try await SpanReceiver.start()
        let zipperMetrics = MeterProvider(configuration: .init(serviceName: "zipper-d", environment: [:]))
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: zipperMetrics)
        defer { Task { await endpoint.close() } }
        let prometheus = try await PrometheusServer(targets: ["127.0.0.1:\(endpoint.port)"])
        var configuration = ZipperConfiguration(host: "127.0.0.1", port: 0)
        configuration.slowConsumer = .init(policy: .drop, maximumBufferedBytes: 64 << 10)
        let tracing = ["zipper-d", "source-d"].map { receiver.provider(service: $0) }
        let zipper = Zipper(configuration: configuration, options: .init(tracerProvider: tracing[0], meterProvider: zipperMetrics))
        try await zipper.start()
        let address = try #require(zipper.address)
        let gate = Gate()
        let source = Source(name: "source-d", zipper: address, options: .init(tracerProvider: tracing[1]))
        let (stalled, healthy) = try await TracingEndToEndTests.stalledBesideHealthy(zipper: address, tag: 0x66, gate: gate, source: source, frames: 400)
        let dropped = zipper.statistics.droppedFrames
        #expect(dropped > 0, "\(zipper.statistics)")
        let query = "yomo_zipper_routed_messages_total{outcome=\"dropped\"}"
        var counted = 0.0
        for _ in 0..<100 where counted < Double(dropped) {
            counted = await prometheus.scalar("sum(\(query))") ?? 0
            if counted < Double(dropped) { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(counted == Double(dropped), "Prometheus counted every drop")
        let now = Date().timeIntervalSince1970
        var exemplarTraceIDs: Set<String> = []
        for _ in 0..<100 where exemplarTraceIDs.isEmpty {
            let answer = await prometheus.api("query_exemplars", ["query": query, "start": "\(now - 120)", "end": "\(now + 10)"])
            for series in (answer?["data"] as? [[String: Any]]) ?? [] {
                for exemplar in (series["exemplars"] as? [[String: Any]]) ?? [] {
                    if let labels = exemplar["labels"] as? [String: String], let id = labels["trace_id"] { exemplarTraceIDs.insert(id) }
                }
            }
            if exemplarTraceIDs.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }
        gate.open()
        await source.close()
        await healthy.close()
        await stalled.close()
        await zipper.close()
        for provider in tracing { await provider.shutdown() }
        #expect(!exemplarTraceIDs.isEmpty, "Prometheus stored the counter's exemplars")
        let drops = receiver.spans().filter { $0["name"] as? String == "zipper drop" }
        #expect(drops.count == dropped)
        let dropTraces = Set(drops.compactMap { $0["trace_id"] as? String })
        #expect(exemplarTraceIDs.isSubset(of: dropTraces), "each exemplar is a dropped frame's trace: \(exemplarTraceIDs.subtracting(dropTraces))")
    }

    @Test("the shipped alert rules on a real Prometheus: a healthy zipper fires none, peers whose frames stall fire YoMoStalledFrames")
    func shippedAlertsFire() async throws {
        let rules = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../deploy/prometheus/alerts.yml").standardized.path
        let metrics = MeterProvider(configuration: .init(serviceName: "zipper-a", environment: [:]))
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: metrics)
        defer { Task { await endpoint.close() } }
        let prometheus = try await PrometheusServer(targets: ["127.0.0.1:\(endpoint.port)"], ruleFiles: [rules])
        var configuration = ZipperConfiguration(name: "edge-a", host: "127.0.0.1", port: 0)
        configuration.limits.maximumIncompleteFrameBytes = 8 << 20
        configuration.limits.stalledFrameTimeout = .seconds(1)
        let zipper = Zipper(configuration: configuration, options: .init(meterProvider: metrics))
        try await zipper.start()
        let address = try #require(zipper.address)

        // Healthy traffic, with a tag nobody observes (no_route by design): nothing fires.
        let handled = Inbox<Int>()
        let sfn = StreamFunction(name: "upper-a", zipper: address, options: .init(observedTags: [0x33], meterProvider: metrics))
        sfn.setHandler { ctx in
            handled.append(1)
            try await ctx.write(tag: 0x34, data: ctx.data)
        }
        try await sfn.connect()
        let source = Source(name: "source-a", zipper: address)
        try await source.connect()
        for index in 0..<20 { try await source.write(tag: 0x33, data: Array("frame \(index)".utf8)) }
        #expect(await handled.wait(for: 20))
        var routedSeen = false
        for _ in 0..<100 where !routedSeen {
            routedSeen = await prometheus.scalar("sum(yomo_zipper_routed_messages_total{outcome=\"no_route\"})") == 20
            if !routedSeen { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(routedSeen, "Prometheus scraped the zipper's counters")
        // Every group evaluated over those series, five evaluations (1 s of Prometheus's time) after they were seen.
        let seen = try #require(await prometheus.scalar("vector(time())"))
        let timestamps = ISO8601DateFormatter()
        timestamps.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        var rulesEvaluated = false
        for _ in 0..<100 where !rulesEvaluated {
            let groups = ((await prometheus.api("rules", [:]))?["data"] as? [String: Any])?["groups"] as? [[String: Any]] ?? []
            rulesEvaluated = groups.count == 3 && groups.allSatisfy { group in
                (group["lastEvaluation"] as? String).flatMap { timestamps.date(from: $0) }.map { $0.timeIntervalSince1970 > seen + 1 } ?? false
            }
            if !rulesEvaluated { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(rulesEvaluated, "Prometheus loaded the three groups of alerts.yml and evaluated them over the healthy zipper")
        #expect(await prometheus.firingAlerts() == [], "a healthy zipper fires nothing")

        // Two peers each send most of a 6 MiB frame into 8 MiB of room and stop:
        // the second waits, the first loses its room after a second.
        async let peers = runHostilePeer("big-partial", port: try #require(zipper.port), count: 2, wait: 40)
        var fired: [String: String]?
        for _ in 0..<300 where fired == nil {
            fired = await prometheus.firingAlerts()?.first { $0["alertname"] == "YoMoStalledFrames" }
            if fired == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(fired?["yomo_zipper_name"] == "edge-a", "\(String(describing: fired))")
        #expect(fired?["severity"] == "warning")
        #expect(zipper.statistics.stalledFrames >= 1)
        await source.close()
        await sfn.close()
        await zipper.close()
        _ = try await peers
    }

    @Test("/readyz: 200 while the function is connected, 503 while its zipper is away, 200 when it is back; /healthz 200")
    func readiness() async throws {
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: .noop)
        defer { Task { await endpoint.close() } }
        let zipper = try await ZipperProcess(port: try await freePort())
        let sfn = StreamFunction(name: "ready-check", zipper: zipper.address, options: .init(observedTags: [0x33], retryConnect: true))
        sfn.setHandler { _ in }
        try await sfn.connect()
        let readyz = "http://127.0.0.1:\(endpoint.port)/readyz"
        // /readyz answers for every client of the process, and tests running
        // in parallel have clients of their own: this one's line is read, and
        // the status is held to the lines (200 exactly when all say ready).
        struct Readiness { var status: Int; var ready: Bool?; var allReady: Bool }
        func state() async -> Readiness? {
            guard let answer = await httpGet(readyz) else { return nil }
            let lines = answer.body.split(separator: "\n")
            let own = lines.first { $0.hasPrefix("stream function ready-check: ") }
            return Readiness(
                status: answer.status, ready: own.map { $0.hasSuffix(": ready") },
                allReady: lines.allSatisfy { !$0.hasSuffix(": not ready") })
        }
        func consistent(_ now: Readiness?) -> Bool { now.map { $0.status == ($0.allReady ? 200 : 503) } ?? false }
        #expect(await httpGet("http://127.0.0.1:\(endpoint.port)/healthz")?.status == 200)
        var now = await state()
        #expect(now?.ready == true && consistent(now), "\(String(describing: now))")

        await zipper.kill()
        for _ in 0..<100 where now?.ready != false {
            try await Task.sleep(for: .milliseconds(50))
            now = await state()
        }
        #expect(now?.ready == false && now?.status == 503, "not ready while reconnecting: \(String(describing: now))")

        try await zipper.restart()
        for _ in 0..<200 where now?.ready != true {
            try await Task.sleep(for: .milliseconds(50))
            now = await state()
        }
        #expect(now?.ready == true && consistent(now), "ready again: \(String(describing: now))")
        await sfn.close()
        let after = await httpGet(readyz)
        #expect(after?.body.contains("ready-check") == false, "a closed client leaves /readyz")
        await zipper.kill()
    }

    @Test("the endpoint answers OpenMetrics with exemplars when asked, the text format otherwise")
    func contentNegotiation() async throws {
        let provider = MeterProvider(configuration: .init(serviceName: "neg", environment: [:]))
        let span = SpanContext(traceID: .random(), spanID: .random(), traceFlags: .sampled)
        provider.meter("t").histogram("h", unit: "s", boundaries: [1]).bind().record(0.5, spanContext: span)
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: provider)
        defer { Task { await endpoint.close() } }
        let url = "http://127.0.0.1:\(endpoint.port)/metrics"
        let open = try #require(await httpGet(url, accept: "application/openmetrics-text;version=1.0.0"))
        #expect(open.status == 200)
        #expect(open.body.contains("trace_id=\"\(span.traceID)\""))
        #expect(open.body.hasSuffix("# EOF\n"))
        let text = try #require(await httpGet(url))
        #expect(text.body.contains("h_seconds_bucket{otel_scope_name=\"t\",le=\"1\"} 1"))
        #expect(!text.body.contains("trace_id"))
        #expect(await httpGet("http://127.0.0.1:\(endpoint.port)/nope")?.status == 404)
    }

    @Test("OTLP export: names, units, attributes, bucket bounds and exemplars decode with opentelemetry-proto; delta temporality sends differences")
    func otlpExport() async throws {
        let receiver = try await SpanReceiver.start()
        for temporality in [AggregationTemporality.cumulative, .delta] {
            let provider = MeterProvider(configuration: .init(serviceName: "otlp-m", environment: [:]))
            let meter = provider.meter("StreamFunction")
            let counter = meter.counter("messaging.client.consumed.messages", unit: "{message}").bind(["messaging.destination.name": "0x33"])
            let histogram = meter.histogram("messaging.process.duration", unit: "s", boundaries: [0.01, 0.1]).bind(["messaging.destination.name": "0x33"])
            meter.upDownCounter("yomo.zipper.connections", unit: "{connection}").add(2, attributes: ["yomo.client.type": "source"])
            let span = SpanContext(traceID: .random(), spanID: .random(), traceFlags: .sampled)
            counter.add(2)
            counter.add(1, exemplar: span)
            histogram.record(0.005, spanContext: span)
            histogram.record(0.05, spanContext: nil)
            let exporter = try OTLPHTTPMetricExporter(
                configuration: OTLPExporterConfiguration(signal: .metrics, environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint]),
                logger: Logger(label: "test"))
            let reader = PeriodicMetricReader(
                provider: provider, exporter: exporter,
                configuration: .init(interval: .seconds(3600), timeout: .seconds(5), temporality: temporality))
            let before = receiver.metrics().count
            await reader.forceFlush()
            counter.add(2)
            histogram.record(0.5, spanContext: nil)
            await reader.shutdown(timeout: .seconds(5))
            let records = Array(receiver.metrics().dropFirst(before))
            let sums = records.filter { $0["name"] as? String == "messaging.client.consumed.messages" }
            #expect(sums.count == 2, "one per export: \(records.count) records")
            #expect(sums.first?["unit"] as? String == "{message}")
            #expect(sums.first?["monotonic"] as? Bool == true)
            #expect(sums.first?["temporality"] as? Int == (temporality == .delta ? 1 : 2))
            let values = sums.compactMap { ($0["points"] as? [[String: Any]])?.first?["value"] as? Double }
            #expect(values == (temporality == .delta ? [3, 2] : [3, 5]), "\(temporality)")
            let attributes = (sums.first?["points"] as? [[String: Any]])?.first?["attributes"] as? [String: String]
            #expect(attributes == ["messaging.destination.name": "0x33"])
            #expect((sums.first?["resource"] as? [String: Any])?["service.name"] as? String == "otlp-m")
            let counterExemplars = (sums.first?["points"] as? [[String: Any]])?.first?["exemplars"] as? [[String: Any]]
            #expect(counterExemplars?.count == 1 && counterExemplars?.first?["trace_id"] as? String == span.traceID.description
                && counterExemplars?.first?["span_id"] as? String == span.spanID.description && counterExemplars?.first?["value"] as? Double == 1,
                "\(String(describing: counterExemplars))")

            let histograms = records.filter { $0["name"] as? String == "messaging.process.duration" }
            let first = try #require((histograms.first?["points"] as? [[String: Any]])?.first)
            #expect(histograms.first?["unit"] as? String == "s")
            #expect(first["explicit_bounds"] as? [Double] == [0.01, 0.1])
            #expect(first["bucket_counts"] as? [Int] == [1, 1, 0])
            #expect(first["count"] as? Int == 2)
            #expect(first["min"] as? Double == 0.005)
            let exemplars = try #require(first["exemplars"] as? [[String: Any]])
            #expect(exemplars.count == 1)
            #expect(exemplars.first?["trace_id"] as? String == span.traceID.description)
            #expect(exemplars.first?["span_id"] as? String == span.spanID.description)
            let second = try #require((histograms.last?["points"] as? [[String: Any]])?.first)
            #expect(second["bucket_counts"] as? [Int] == (temporality == .delta ? [0, 0, 1] : [1, 1, 1]))

            let gauge = records.first { $0["name"] as? String == "yomo.zipper.connections" }
            #expect(gauge?["monotonic"] as? Bool == false)
            #expect(gauge?["temporality"] as? Int == 2, "up-down counters stay cumulative")
        }
    }

    @Test("OTLP metrics export follows OTEL_METRICS_EXPORTER and the endpoints")
    func exportDecision() {
        #expect(!YoMoMetrics.wantsOTLPExport([:]))
        #expect(YoMoMetrics.wantsOTLPExport(["OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"]))
        #expect(YoMoMetrics.wantsOTLPExport(["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4318/v1/metrics"]))
        #expect(!YoMoMetrics.wantsOTLPExport(["OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_METRICS_EXPORTER": "none"]))
        #expect(YoMoMetrics.wantsOTLPExport(["OTEL_METRICS_EXPORTER": "prometheus, otlp"]))
        let configuration = PeriodicMetricReader.Configuration(environment: [
            "OTEL_METRIC_EXPORT_INTERVAL": "1500", "OTEL_METRIC_EXPORT_TIMEOUT": "700",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "Delta",
        ])
        #expect(configuration.interval == .milliseconds(1500))
        #expect(configuration.timeout == .milliseconds(700))
        #expect(configuration.temporality == .delta)
        #expect(PeriodicMetricReader.Configuration(environment: [:]).interval == .seconds(60))
    }

    @Test("yomo top --once shows each component's rates from their /metrics")
    func top() async throws {
        let zipperMetrics = MeterProvider(configuration: .init(serviceName: "top-zipper", environment: [:]))
        let functionMetrics = MeterProvider(configuration: .init(serviceName: "top-upper", environment: [:]))
        let zipperEndpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: zipperMetrics)
        let functionEndpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: functionMetrics)
        // As bootstrap does for a program: the process's own metrics, here on the function's page only.
        ProcessMetrics.observe(functionMetrics)
        // The replies' tag has no observer: dropped at once (no_route), not held in the zipper's first seconds.
        let zipper = Zipper(
            configuration: ZipperConfiguration(host: "127.0.0.1", port: 0, unroutedHold: .off), options: .init(meterProvider: zipperMetrics))
        try await zipper.start()
        let address = try #require(zipper.address)
        let sfn = StreamFunction(name: "top-upper", zipper: address, options: .init(observedTags: [0x33], meterProvider: functionMetrics))
        sfn.setHandler { ctx in try await ctx.write(tag: 0x34, data: ctx.data) }
        try await sfn.connect()
        let source = Source(name: "top-source", zipper: address)
        try await source.connect()
        // Frames keep flowing while `yomo top` takes its two scrapes.
        let writer = Task {
            while !Task.isCancelled {
                try? await source.write(tag: 0x33, data: Array("tick".utf8))
                try? await Task.sleep(for: .milliseconds(2))
            }
        }
        let (process, output) = try startYomo(
            ["top", "--once", "--interval", "1", "--clients", "5",
             "--targets", "127.0.0.1:\(zipperEndpoint.port),127.0.0.1:\(functionEndpoint.port),127.0.0.1:1"])
        let lines = await output.value.split(separator: "\n").map(String.init)
        await waitForExit(process)
        writer.cancel()
        #expect(process.terminationStatus == 0)
        let zipperLine = try #require(lines.first { $0.hasPrefix("top-zipper") }, "\(lines)")
        let functionLine = try #require(lines.first { $0.hasPrefix("top-upper") }, "\(lines)")
        #expect(lines.contains { $0.contains("127.0.0.1:1") && $0.contains("unreachable") })
        func fields(_ line: String) -> [String] { line.split(separator: " ").map(String.init) }
        // component target in/s out/s err% p50 p99 conns reconn noroute/s drop/s rtt spandrops held%
        #expect((Double(fields(functionLine)[2]) ?? 0) > 10, "\(functionLine)")
        #expect((Double(fields(functionLine)[3]) ?? 0) > 10, "\(functionLine)")
        #expect(fields(functionLine)[5] != "-", "a p50: \(functionLine)")
        #expect((Double(fields(functionLine)[11]) ?? 0) > 0, "an RTT: \(functionLine)")
        #expect(fields(functionLine)[12] == "0", "no span drops: \(functionLine)")
        #expect(fields(functionLine)[13] == "0.0", "no limit held reading: \(functionLine)")
        #expect((Double(fields(functionLine)[14]) ?? 0) > 1, "this process's resident MiB: \(functionLine)")
        #expect(fields(zipperLine)[14] == "-", "no process metrics on that page: \(zipperLine)")
        #expect((Double(fields(zipperLine)[2]) ?? 0) > 10, "\(zipperLine)")
        #expect(fields(zipperLine)[7] == "2", "a source and a function connected: \(zipperLine)")
        #expect((Double(fields(zipperLine)[9]) ?? 0) > 10, "replies have no observer: \(zipperLine)")
        // --clients: the zipper's two clients, under its target (the function's page has none).
        #expect(lines.contains("clients of 127.0.0.1:\(zipperEndpoint.port)"), "\(lines)")
        #expect(!lines.contains("clients of 127.0.0.1:\(functionEndpoint.port)"))
        let functionClient = try #require(lines.first { $0.contains("stream_function") && $0.contains("top-upper") }, "\(lines)")
        let sourceClient = try #require(lines.first { $0.contains(" source ") && $0.contains("top-source") }, "\(lines)")
        // zipper type name id rtt lost/s pace datagram unacked
        for line in [functionClient, sourceClient] {
            #expect((Double(fields(line)[4]) ?? 0) > 0, "an RTT: \(line)")
            #expect(fields(line)[5] != "-", "both scrapes saw the connection: \(line)")
            #expect((Double(fields(line)[7]) ?? 0) >= 1200, "a datagram size: \(line)")
        }
        await source.close()
        await sfn.close()
        await zipper.close()
        await zipperEndpoint.close()
        await functionEndpoint.close()
    }

    @Test("a source writing thousands of distinct tags: the zipper's series stop at the cardinality limit and the overflow series counts the rest")
    func tagCardinality() async throws {
        let limit = MeterProvider.Configuration.defaultCardinalityLimit
        let metrics = MeterProvider(configuration: .init(serviceName: "zipper-tags", environment: [:]))
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: metrics)
        // No hold: each frame is counted no_route at once, not after the 5 s hold.
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0, unroutedHold: .off), options: .init(meterProvider: metrics))
        try await zipper.start()
        let source = Source(name: "many-tags", zipper: try #require(zipper.address), options: .init(tracerProvider: TracerProvider.noop))
        try await source.connect()
        // Four routed series per tag (one per outcome) and one histogram series: well past the limit.
        let tags = 3_000
        for tag in 1...UInt32(tags) { try await source.write(tag: tag, data: [0x2A]) }

        func routed(_ samples: [ScrapedSample]) -> [ScrapedSample] { samples.filter { $0.name == "yomo_zipper_routed_messages_total" } }
        var samples: [ScrapedSample] = []
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(30))
        // Every frame has no route: counted once each, in its tag's series or in the overflow series.
        while routed(samples).reduce(0, { $0 + $1.value }) < Double(tags), clock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
            samples = (await httpGet("http://127.0.0.1:\(endpoint.port)/metrics")?.body).map(PrometheusTextParser.parse) ?? []
        }
        await source.close()
        await zipper.close()
        await endpoint.close()

        let series = routed(samples)
        #expect(series.reduce(0) { $0 + $1.value } == Double(tags), "no frame lost from the counts")
        #expect(series.count == limit, "\(series.count) series")
        let overflow = try #require(series.first { $0.labels["otel_metric_overflow"] == "true" })
        #expect(Set(overflow.labels.keys) == ["otel_metric_overflow", "otel_scope_name"], "only its marker and the scope: \(overflow.labels)")
        // 500 tags fill the other 1,999 routed series (four outcomes each, the last tag with three).
        #expect(overflow.value == Double(tags - (limit - 1 + 3) / 4))
        let durations = samples.filter { $0.name == "yomo_zipper_routing_duration_seconds_count" }
        #expect(durations.count == limit && durations.reduce(0) { $0 + $1.value } == Double(tags))
    }

    @Test("a stream function's handler metrics show handlers stalled at their limit, and clear when they finish")
    func handlerMetrics() async throws {
        let metrics = MeterProvider(configuration: .init(serviceName: "handlers", environment: [:]))
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: metrics)
        try await withZipper { address, _ in
            let gate = Gate()
            let handled = Inbox<Int>()
            let sfn = StreamFunction(name: "stalling", zipper: address, options: .init(
                observedTags: [0x66], handlerConcurrency: 2, tracerProvider: TracerProvider.noop, meterProvider: metrics))
            sfn.setHandler { ctx in
                await gate.wait()
                handled.append(ctx.data.count)
            }
            try await sfn.connect()
            let source = Source(name: "five", zipper: address, options: .init(tracerProvider: TracerProvider.noop))
            try await source.connect()
            for _ in 0..<5 { try await source.write(tag: 0x66, data: [UInt8](repeating: 0x61, count: 1000)) }

            func value(_ name: String) async -> Double? {
                let samples = (await httpGet("http://127.0.0.1:\(endpoint.port)/metrics")?.body).map(PrometheusTextParser.parse) ?? []
                return samples.first { $0.name == name && $0.labels["messaging_consumer_group_name"] == "stalling" }?.value
            }
            // Two handlers wait at the limit of two, and the third frame waits for them:
            // the time reading is held grows while the hold goes on.
            var (running, held, heldSeconds) = (0.0, 0.0, 0.0)
            for _ in 0..<400 where heldSeconds < 0.2 {
                running = await value("yomo_handlers_running") ?? 0
                held = await value("yomo_handlers_held_bytes") ?? 0
                heldSeconds = await value("yomo_handlers_reading_held_time_seconds_total") ?? 0
                if heldSeconds < 0.2 { try await Task.sleep(for: .milliseconds(25)) }
            }
            #expect(running == 2 && heldSeconds >= 0.2, "running \(running), reading held \(heldSeconds) s")
            // Each counts its payload, its metadata and `handlerOverheadBytes`.
            let each = Double(1000 + StreamFunction.Options.handlerOverheadBytes)
            #expect(held >= 2 * each && held < 2 * (each + 512), "\(held) bytes")
            // `yomo top` shows the share of its interval that reading was held: all of it.
            let (process, output) = try startYomo(["top", "--once", "--interval", "1", "--targets", "127.0.0.1:\(endpoint.port)"])
            let line = await output.value.split(separator: "\n").map(String.init).first { $0.hasPrefix("handlers ") } ?? ""
            await waitForExit(process)
            let fields = line.split(separator: " ").map(String.init)
            // … held% rss: this page has no process metrics, so rss is "-".
            #expect(fields.count == 15 && (Double(fields[13]) ?? 0) > 90 && fields[14] == "-", "held%: \(line)")
            gate.open()
            #expect(await handled.wait(for: 5))
            var cleared = false
            for _ in 0..<400 where !cleared {
                let (running, held) = (await value("yomo_handlers_running"), await value("yomo_handlers_held_bytes"))
                cleared = running == 0 && held == 0
                if !cleared { try await Task.sleep(for: .milliseconds(25)) }
            }
            #expect(cleared, "nothing runs or is held once the handlers finished")
            await source.close()
            await sfn.close()
        }
        await endpoint.close()
    }

    @Test("binding a taken port is a clear error")
    func bindFailure() async throws {
        let first = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: .noop)
        defer { Task { await first.close() } }
        let error = await #expect(throws: MetricsError.self) {
            _ = try await MetricsEndpoint.start(host: "127.0.0.1", port: first.port, provider: .noop)
        }
        // The system's words, not NIO's description of the call.
        #expect(error?.description == "cannot serve metrics on 127.0.0.1:\(first.port): Address already in use")
    }
}
