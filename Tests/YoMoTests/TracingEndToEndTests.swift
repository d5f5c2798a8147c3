import Foundation
import Logging
import Testing
import Tracing
import YoMoTracing
import YoMoLogging

@testable import YoMo

/// The OTLP receiver of the tracing tests (`Tests/YoMoTracingTests/otlp_receiver.py`,
/// which decodes bodies with the official opentelemetry-proto package), run as a process.
final class SpanReceiver {
    let process = Process()
    let directory: URL
    private(set) var port = 0
    let portFile: String
    var endpoint: String { "http://127.0.0.1:\(port)" }

    /// Starts the receiver and waits (without holding a cooperative thread) for its port.
    static func start() async throws -> SpanReceiver {
        let receiver = try SpanReceiver()
        for _ in 0..<750 where receiver.port == 0 {
            receiver.port = (try? String(contentsOfFile: receiver.portFile, encoding: .utf8)).flatMap { Int($0) } ?? 0
            if receiver.port == 0 { try await Task.sleep(for: .milliseconds(20)) }
        }
        guard receiver.port != 0 else {
            throw YoMoError(.invalidConfiguration, "the OTLP receiver did not start (python3 with opentelemetry-proto?)")
        }
        return receiver
    }

    private init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("yomo-e2e-otlp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("YoMoTracingTests/otlp_receiver.py").path
        portFile = directory.appendingPathComponent("port").path
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, "--port-file", portFile, "--out", directory.appendingPathComponent("received.jsonl").path]
        try process.run()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }

    /// Every span received so far, as decoded by the receiver.
    func spans() -> [[String: Any]] { records(ofType: "span") }

    /// Every metric record received (one per metric per export).
    func metrics() -> [[String: Any]] { records(ofType: "metric") }

    /// The receiver's JSON lines of one `type`.
    private func records(ofType type: String) -> [[String: Any]] {
        let path = directory.appendingPathComponent("received.jsonl").path
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }.filter { $0["type"] as? String == type }
    }

    /// A provider exporting here; `sampler`: an `OTEL_TRACES_SAMPLER` value (default: the SDK's).
    func provider(service: String, sampler: String? = nil) -> TracerProvider {
        var environment = ["OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"]
        if let sampler { environment["OTEL_TRACES_SAMPLER"] = sampler }
        return TracerProvider.otlp(serviceName: service, environment: environment)
    }
}

@Suite("Tracing on the data path", .serialized)
struct TracingEndToEndTests {
    /// A logger writing JSON lines at debug level to `sink`, synchronously.
    static func debugLogger(_ label: String, _ sink: InMemoryLogSink) -> Logger {
        Logger(label: label) { label in
            YoMoLogHandler(label: label, format: .json, writer: LogWriter(sink: sink, configuration: .init(isSynchronous: true)), logLevel: .debug)
        }
    }

    /// A received span's attributes.
    static func attributes(_ span: [String: Any]) -> [String: Any] { span["attributes"] as? [String: Any] ?? [:] }

    /// A received span's time field (`start`, `end`), in nanoseconds since the epoch.
    static func nanoseconds(_ span: [String: Any], _ key: String) -> Int { (span[key] as? Int) ?? Int((span[key] as? String) ?? "") ?? 0 }

    /// The JSON records in `sink` whose message is `message`.
    static func records(_ sink: InMemoryLogSink, _ message: String) -> [[String: Any]] {
        sink.lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
            .filter { ($0["msg"] ?? $0["message"]) as? String == message }
    }

    /// The ids a source's first "frame written" debug line carries: its span's
    /// even when nothing is recorded.
    static func writtenIDs(_ sink: InMemoryLogSink) throws -> (traceID: String, spanID: String) {
        let written = try #require(records(sink, "frame written").first, "\(sink.lines)")
        return (try #require(written["trace_id"] as? String), try #require(written["span_id"] as? String))
    }

    @Test("source, zipper and stream function spans of one frame form one trace, with a user child span")
    func oneTrace() async throws {
        let receiver = try await SpanReceiver.start()
        let zipperProvider = receiver.provider(service: "test-zipper")
        let functionProvider = receiver.provider(service: "test-sfn")
        let sourceProvider = receiver.provider(service: "test-source")
        // Zipper and function log JSON lines to memory at debug; the handler logs
        // through the function's logger.
        let zipperLogs = InMemoryLogSink()
        let zipperLogger = Self.debugLogger("yomo.zipper", zipperLogs)
        let zipper = Zipper(
            configuration: ZipperConfiguration(host: "127.0.0.1", port: 0),
            options: .init(logger: zipperLogger, tracerProvider: zipperProvider))
        try await zipper.start()
        let address = try #require(zipper.address)

        let handled = Inbox<String>()
        let logs = InMemoryLogSink()
        let logger = Self.debugLogger("upper", logs)
        let sfn = StreamFunction(
            name: "upper", zipper: address,
            options: .init(observedTags: [0x33], logger: logger, tracerProvider: functionProvider))
        sfn.setHandler { ctx in
            if ctx.data == Array("boom".utf8) {
                handled.append("boom")
                throw Boom()
            }
            logger.info("handled a frame", metadata: ["tid": "\(ctx.tid ?? "")"])
            // The free `withSpan`, as user code and instrumented libraries call it:
            // no global bootstrap, yet it joins the frame's trace.
            try await withSpan("user work") { _ in
                try await Task.sleep(for: .milliseconds(5))
            }
            handled.append(ctx.metadata(Metadata.ReservedKey.traceID) ?? "")
        }
        let errorHandled = Inbox<String>()
        sfn.setErrorHandler { error in
            logger.warning("error handler saw it")
            errorHandled.append("\(error)")
        }
        try await sfn.connect()
        let sourceLogs = InMemoryLogSink()
        let sourceLogger = Self.debugLogger("yomo", sourceLogs)
        let source = Source(name: "sensor", zipper: address, options: .init(logger: sourceLogger, tracerProvider: sourceProvider))
        try await source.connect()
        try await source.write(tag: 0x33, data: Array("hello".utf8))
        #expect(await handled.wait(for: 1))
        try await source.write(tag: 0x33, data: Array("boom".utf8))
        #expect(await errorHandled.wait(for: 1))

        await source.close()
        await sfn.close()
        await zipper.close()
        for provider in [sourceProvider, functionProvider, zipperProvider] { await provider.shutdown() }

        // Two frames, two traces: the one with the user's span is the good frame's.
        let spans = receiver.spans()
        let userSpan = try #require(spans.first { $0["name"] as? String == "user work" }, "\(spans.map { $0["name"] ?? "?" })")
        let traceID = try #require(userSpan["trace_id"] as? String)
        #expect(traceID.count == 32)
        func span(_ name: String) throws -> [String: Any] {
            try #require(spans.first { $0["name"] as? String == name && $0["trace_id"] as? String == traceID },
                         "no span \(name) in trace \(traceID) among \(spans.map { $0["name"] ?? "?" })")
        }
        let sourceSpan = try span("sensor")
        let zipperSpan = try span("zipper endpoint")
        let functionSpan = try span("upper")
        #expect(spans.filter { $0["name"] as? String == "sensor" }.count == 2)
        #expect(handled.items.first == traceID, "the handler sees the trace id in the metadata")
        #expect(sourceSpan["parent_span_id"] as? String == "")
        #expect(zipperSpan["parent_span_id"] as? String == sourceSpan["span_id"] as? String)
        #expect(functionSpan["parent_span_id"] as? String == zipperSpan["span_id"] as? String)
        #expect(userSpan["parent_span_id"] as? String == functionSpan["span_id"] as? String)

        // The handler's log line carries the frame's trace and the function's span;
        // the SDK's own records carry the Go SDK's field names.
        let records = logs.lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
        let handledRecord = try #require(records.first { ($0["msg"] ?? $0["message"]) as? String == "handled a frame" }, "\(logs.lines)")
        #expect(handledRecord["trace_id"] as? String == traceID)
        #expect(handledRecord["span_id"] as? String == functionSpan["span_id"] as? String)
        let frameRecord = try #require(records.first { ($0["msg"] ?? $0["message"]) as? String == "frame received" })
        #expect(frameRecord["trace_id"] as? String == traceID, "the SDK's per-frame debug line carries the frame's trace")
        #expect(frameRecord["span_id"] as? String == functionSpan["span_id"] as? String)
        #expect(frameRecord["service"] as? String == "stream-function")
        #expect(frameRecord["sfn_name"] as? String == "upper")
        #expect((frameRecord["sfn_id"] as? String)?.hasSuffix("-0") == true)
        #expect(frameRecord["tag"] != nil && frameRecord["data_length"] != nil && frameRecord["tid"] != nil)

        let zipperRecords = zipperLogs.lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
        let routingRecord = try #require(zipperRecords.first { ($0["msg"] ?? $0["message"]) as? String == "routing frame" }, "\(zipperLogs.lines)")
        #expect(routingRecord["trace_id"] as? String == traceID)
        #expect(routingRecord["span_id"] as? String == zipperSpan["span_id"] as? String)
        let sourceRecords = sourceLogs.lines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
        let writtenRecord = try #require(sourceRecords.first { ($0["msg"] ?? $0["message"]) as? String == "frame written" }, "\(sourceLogs.lines)")
        #expect(writtenRecord["trace_id"] as? String == traceID)
        #expect(writtenRecord["span_id"] as? String == sourceSpan["span_id"] as? String)

        // A thrown handler error is logged, and reaches the error handler, under
        // the failing frame's span: both lines carry that frame's trace id.
        let failedSpan = try #require(spans.first { $0["name"] as? String == "upper" && $0["trace_id"] as? String != traceID })
        let thrownRecord = try #require(records.first { (($0["msg"] ?? $0["message"]) as? String)?.contains("threw") == true }, "\(logs.lines)")
        #expect(thrownRecord["trace_id"] as? String == failedSpan["trace_id"] as? String)
        let errorHandlerRecord = try #require(records.first { ($0["msg"] ?? $0["message"]) as? String == "error handler saw it" })
        #expect(errorHandlerRecord["trace_id"] as? String == failedSpan["trace_id"] as? String)

        #expect(Self.attributes(sourceSpan)["send_data_tag"] as? Int == 0x33)
        #expect(Self.attributes(sourceSpan)["send_data_len"] as? Int == 5)
        #expect(Self.attributes(zipperSpan)["routing_data_tag"] as? Int == 0x33)
        #expect(Self.attributes(zipperSpan)["routing_data_len"] as? Int == 5)
        #expect(Self.attributes(functionSpan)["sfn_handler_type"] as? String == "async_handler")
        #expect(Self.attributes(functionSpan)["recv_data_tag"] as? Int == 0x33)
        #expect(Self.attributes(functionSpan)["recv_data_len"] as? Int == 5)
        // OTLP span kinds: 4 producer, 5 consumer.
        #expect(sourceSpan["kind"] as? Int == 4)
        #expect(functionSpan["kind"] as? Int == 5)
        func scope(_ span: [String: Any]) -> String? { (span["scope"] as? [String: Any])?["name"] as? String }
        #expect(scope(sourceSpan) == "Source")
        #expect(scope(zipperSpan) == "Zipper")
        #expect(scope(functionSpan) == "StreamFunction")
        func service(_ span: [String: Any]) -> String? { (span["resource"] as? [String: Any])?["service.name"] as? String }
        #expect(service(sourceSpan) == "test-source")
        #expect(service(zipperSpan) == "test-zipper")
        #expect(service(functionSpan) == "test-sfn")
    }

    @Test("a frame that waited in the zipper's hold shows its wait in the trace: a span from its hold to its delivery, between the zipper's span and the function's, with the reason (a function away; one cut off inside its handlers)")
    func heldFrameTrace() async throws {
        let receiver = try await SpanReceiver.start()
        let providers = ["zipper", "worker", "source"].map { receiver.provider(service: "test-\($0)") }
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0), options: .init(tracerProvider: providers[0]))
        try await zipper.start()
        let address = try #require(zipper.address)
        let entered = Inbox<String>()
        let handled = Inbox<String>()
        let gate = Gate()
        let fast = ReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(100))
        func worker() -> StreamFunction {
            let function = StreamFunction(
                name: "worker", zipper: address, options: .init(observedTags: [0x61], reconnect: fast, tracerProvider: providers[1]))
            function.setHandler { ctx in
                let text = String(decoding: ctx.data, as: UTF8.self)
                entered.append(text)
                if text == "stuck" { await gate.wait() }
                handled.append(text)
            }
            return function
        }
        let first = worker()
        try await first.connect()
        let source = Source(name: "feeder", zipper: address, options: .init(tracerProvider: providers[2]))
        try await source.connect()
        // Away: the frame is held for the function's return.
        await first.close()
        #expect(await eventually { zipper.connectionCount == 1 })
        try await source.write(tag: 0x61, data: Array("away".utf8))
        #expect(await eventually { zipper.statistics.heldFrames == 1 })
        let second = worker()
        try await second.connect()
        #expect(await handled.wait(for: 1))
        // Cut off while its handler holds a frame its QUIC stack acknowledged:
        // taken back unhandled and sent again, and not handled twice.
        try await source.write(tag: 0x61, data: Array("stuck".utf8))
        #expect(await eventually { entered.count == 2 && functionConnections(zipper, named: "worker").first?.unacknowledgedBytes == 0 })
        await second.client.dropConnectionForTesting()
        // "away" too, if the receipt that it was handled was cut off with the connection.
        #expect(await eventually { zipper.statistics.heldFramesDelivered >= 2 }, "\(zipper.statistics)")
        gate.open()
        #expect(await handled.wait(for: 2))
        await source.close()
        await second.close()
        await zipper.close()
        for provider in providers { await provider.shutdown() }
        #expect(handled.items.sorted() == ["away", "stuck"], "each handled once")

        let spans = receiver.spans()
        for (text, reason) in [("away", "function_away"), ("stuck", "not_handled")] {
            let length = text.utf8.count
            let zipperSpan = try #require(spans.first { $0["name"] as? String == "zipper endpoint" && Self.attributes($0)["routing_data_len"] as? Int == length })
            let trace = spans.filter { $0["trace_id"] as? String == zipperSpan["trace_id"] as? String }
            let holds = trace.filter { $0["name"] as? String == "zipper hold" && $0["parent_span_id"] as? String == zipperSpan["span_id"] as? String }
            #expect(holds.map { Self.attributes($0)["yomo.hold.reason"] as? String } == [reason], "\(text): \(trace.map { "\($0["name"] ?? "?") \(Self.attributes($0))" })")
            guard let hold = holds.first else { continue }
            #expect(Self.attributes(hold)["messaging.consumer.group.name"] as? String == "worker")
            #expect(Self.attributes(hold)["routing_data_tag"] as? Int == 0x61)
            #expect(Self.nanoseconds(hold, "start") >= Self.nanoseconds(zipperSpan, "start") && Self.nanoseconds(hold, "end") > Self.nanoseconds(hold, "start"), "\(text): \(hold)")
            // One handling each: "away" after its wait, "stuck" before its (its copy skipped).
            let functionSpans = trace.filter { $0["name"] as? String == "worker" }
            #expect(functionSpans.count == 1, "\(text)")
            let parent = text == "away" ? hold : zipperSpan
            #expect(functionSpans.first?["parent_span_id"] as? String == parent["span_id"] as? String, "\(text)")
            if text == "away", let span = functionSpans.first { #expect(Self.nanoseconds(span, "start") >= Self.nanoseconds(hold, "end")) }
        }
    }

    @Test("a held frame that no function came for, or that a full hold refused, ends its trace with a span in error saying it was dropped and why")
    func droppedHeldFrameTrace() async throws {
        let receiver = try await SpanReceiver.start()
        let providers = ["zipper", "source"].map { receiver.provider(service: "test-\($0)") }
        var configuration = ZipperConfiguration(host: "127.0.0.1", port: 0)
        // Room for one of the two frames (each counts its bytes and HeldFrames.entryOverhead).
        configuration.unroutedHold = .init(duration: .milliseconds(200), maximumBytes: 600 + 400 + HeldFrames.entryOverhead)
        let metrics = MeterProvider(configuration: .init(serviceName: "test-zipper", environment: [:]))
        let zipper = Zipper(configuration: configuration, options: .init(tracerProvider: providers[0], meterProvider: metrics))
        try await zipper.start()
        let address = try #require(zipper.address)
        let source = Source(name: "feeder", zipper: address, options: .init(tracerProvider: providers[1]))
        try await source.connect()
        for text in ["held", "refused"] {
            try await source.write(tag: 0x63, data: Array(text.utf8) + [UInt8](repeating: 0x20, count: 600))
        }
        #expect(await eventually { zipper.statistics.heldFramesDropped == 2 }, "\(zipper.statistics)")
        await source.close()
        await zipper.close()
        for provider in providers { await provider.shutdown() }

        let spans = receiver.spans()
        for cause in ["dropped: no stream function", "dropped: the hold was full"] {
            let holds = spans.filter { ((($0["status"] as? [String: Any])?["message"]) as? String)?.hasPrefix(cause) == true }
            #expect(holds.count == 1, "\(cause): \(spans.map { "\($0["name"] ?? "?") \(String(describing: $0["status"]))" })")
            guard let hold = holds.first else { continue }
            #expect(hold["name"] as? String == "zipper hold")
            #expect((hold["status"] as? [String: Any])?["code"] as? Int == 2, "error")
            #expect(Self.attributes(hold)["yomo.hold.reason"] as? String == "no_function")
            let zipperSpan = try #require(spans.first { $0["span_id"] as? String == hold["parent_span_id"] as? String }, "its parent")
            #expect(zipperSpan["name"] as? String == "zipper endpoint" && zipperSpan["trace_id"] as? String == hold["trace_id"] as? String)
            let waited = Self.nanoseconds(hold, "end") - Self.nanoseconds(hold, "start")
            // The expired one waited the hold's duration; the refused one not at all.
            #expect(cause.hasSuffix("full") ? waited < 200_000_000 : waited >= 200_000_000, "\(cause): waited \(waited) ns")
        }
        // Counted as no_route, with a dropped frame's span as the count's exemplar.
        let routed = try #require(metrics.collect().first { $0.descriptor.name == "yomo.zipper.routed.messages" })
        let noRoute = try #require(routed.points.first { $0.attributes.pairs.contains { $0.key == "outcome" && $0.value == "no_route" } })
        #expect(noRoute.value == .scalar(2))
        let holdSpans = spans.filter { $0["name"] as? String == "zipper hold" }
        #expect(holdSpans.contains { $0["span_id"] as? String == noRoute.exemplar?.spanID }, "\(String(describing: noRoute.exemplar))")
    }

    @Test(
        "a frame the zipper did not send to a slow consumer ends its trace with a span that says why, and the line that says so carries a dropped frame's trace id",
        arguments: [ZipperConfiguration.SlowConsumer.Policy.drop, .disconnect])
    func slowConsumerDropTrace(policy: ZipperConfiguration.SlowConsumer.Policy) async throws {
        let receiver = try await SpanReceiver.start()
        let providers = ["zipper", "source"].map { receiver.provider(service: "test-\($0)") }
        let logs = InMemoryLogSink()
        var configuration = ZipperConfiguration(host: "127.0.0.1", port: 0)
        configuration.slowConsumer = .init(policy: policy, maximumBufferedBytes: 64 << 10)
        let zipper = Zipper(configuration: configuration, options: .init(logger: Self.debugLogger("zipper", logs), tracerProvider: providers[0]))
        try await zipper.start()
        let address = try #require(zipper.address)
        let gate = Gate()
        let source = Source(name: "firehose", zipper: address, options: .init(tracerProvider: providers[1]))
        let count = 400
        let (stalled, healthy) = try await Self.stalledBesideHealthy(zipper: address, tag: 0x64, gate: gate, source: source, frames: count)
        let dropped = policy == .drop ? zipper.statistics.droppedFrames : zipper.statistics.slowConsumerDisconnects
        #expect(dropped > 0, "\(zipper.statistics)")
        gate.open()
        await source.close()
        await healthy.close()
        await stalled.close()
        await zipper.close()
        for provider in providers { await provider.shutdown() }

        let spans = receiver.spans()
        let drops = spans.filter { $0["name"] as? String == "zipper drop" }
        func message(_ span: [String: Any]) -> String { ((span["status"] as? [String: Any])?["message"] as? String) ?? "" }
        // Every frame was sampled: each one dropped has its span (the disconnect: the frame that found it slow) ...
        #expect(drops.filter { message($0).hasPrefix("dropped: slow consumer: more than") }.count == dropped, "\(drops.map(message))")
        // ... and, disconnected, each frame its backlog had and it had not acknowledged.
        let backlog = drops.filter { message($0).hasPrefix("dropped: slow consumer stalled was disconnected before acknowledging it") }
        #expect(policy == .drop ? backlog.isEmpty : !backlog.isEmpty && backlog.count < count, "\(backlog.count)")
        #expect(drops.count == dropped + backlog.count, "\(drops.map(message))")
        let reason = policy == .drop ? "slow_consumer" : "slow_consumer_disconnected"
        let zipperSpans = Dictionary(spans.filter { $0["name"] as? String == "zipper endpoint" }.map { ($0["span_id"] as? String ?? "", $0) }) { first, _ in first }
        for drop in drops {
            let status = drop["status"] as? [String: Any]
            #expect(status?["code"] as? Int == 2, "error")
            #expect(message(drop).hasPrefix("dropped: slow consumer"), "\(String(describing: status))")
            let attributes = Self.attributes(drop)
            #expect(attributes["yomo.drop.reason"] as? String == reason)
            #expect(attributes["messaging.consumer.group.name"] as? String == "stalled")
            #expect(attributes["routing_data_tag"] as? Int == 0x64)
            let parent = zipperSpans[drop["parent_span_id"] as? String ?? ""]
            #expect(parent?["trace_id"] as? String == drop["trace_id"] as? String, "under the zipper's span for the frame")
        }
        #expect(Set(drops.compactMap { $0["trace_id"] as? String }).count == drops.count, "one frame each")
        let message = policy == .drop ? "slow consumer: dropping frames for it until it catches up" : "disconnecting slow consumer"
        let warnings = Self.records(logs, message)
        #expect(warnings.count == (policy == .drop ? 1 : dropped), "one line a burst (one burst here), or a disconnect")
        let dropTraces = Set(drops.compactMap { $0["trace_id"] as? String })
        for warning in warnings {
            #expect(dropTraces.contains(warning["trace_id"] as? String ?? "-"), "\(warning)")
        }
    }

    /// A function that stalls until `gate` opens ("stalled") and one that
    /// keeps up ("healthy"), both of `tag`, and `frames` frames of 1 KiB from
    /// `source` (connected here) in batches the healthy one paces: only the
    /// stalled one falls behind, and every frame was routed on return.
    static func stalledBesideHealthy(
        zipper address: String, tag: UInt32, gate: Gate, source: Source, frames: Int
    ) async throws -> (stalled: StreamFunction, healthy: StreamFunction) {
        let stalled = StreamFunction(name: "stalled", zipper: address, options: stalledOptions(tags: [tag]))
        stalled.setHandler { _ in await gate.wait() }
        try await stalled.connect()
        let fast = Inbox<Int>()
        let healthy = StreamFunction(name: "healthy", zipper: address, options: .init(observedTags: [tag]))
        healthy.setHandler { ctx in fast.append(ctx.data.count) }
        try await healthy.connect()
        try await source.connect()
        // In batches well under a 64 KiB limit: a source that floods makes the healthy function slow too.
        for batch in 1...(frames / 20) {
            for _ in 0..<20 { try await source.write(tag: tag, data: [UInt8](repeating: 0x61, count: 1024)) }
            #expect(await fast.wait(for: batch * 20, timeout: .seconds(20)))
        }
        return (stalled, healthy)
    }

    @Test("a frame a source wrote while it reconnected shows its wait in the trace: a span from the write to the new connection, between the source's span and the zipper's")
    func outageFrameTrace() async throws {
        let receiver = try await SpanReceiver.start()
        let providers = ["zipper", "sink", "source"].map { receiver.provider(service: "test-\($0)") }
        let port = try await freePort()
        func zipper() -> Zipper {
            Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: port), options: .init(tracerProvider: providers[0]))
        }
        let before = zipper()
        try await before.start()
        let fast = ReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(100))
        let received = Inbox<String>()
        let sink = StreamFunction(
            name: "sink", zipper: "127.0.0.1:\(port)", options: .init(observedTags: [0x62], reconnect: fast, tracerProvider: providers[1]))
        sink.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await sink.connect()
        let source = Source(name: "feeder", zipper: "127.0.0.1:\(port)", options: .init(reconnect: fast, tracerProvider: providers[2]))
        try await source.connect()
        await before.close()
        #expect(await eventually { !source.client.isConnected })
        try await source.write(tag: 0x62, data: Array("during".utf8))
        #expect(source.outageStatistics.buffered == 1)
        let after = zipper()
        try await after.start()
        #expect(await received.wait(for: 1))
        await source.close()
        await sink.close()
        await after.close()
        for provider in providers { await provider.shutdown() }

        let spans = receiver.spans()
        let sourceSpan = try #require(spans.first { $0["name"] as? String == "feeder" })
        let trace = spans.filter { $0["trace_id"] as? String == sourceSpan["trace_id"] as? String }
        let outage = try #require(trace.first { $0["name"] as? String == "client outage" }, "\(trace.map { $0["name"] ?? "?" })")
        #expect(outage["parent_span_id"] as? String == sourceSpan["span_id"] as? String)
        #expect(Self.attributes(outage)["yomo.outage.reason"] as? String == "buffered")
        #expect(Self.attributes(outage)["send_data_tag"] as? Int == 0x62)
        #expect((outage["scope"] as? [String: Any])?["name"] as? String == "Source")
        #expect(Self.nanoseconds(outage, "start") >= Self.nanoseconds(sourceSpan, "start") && Self.nanoseconds(outage, "end") > Self.nanoseconds(outage, "start"))
        let zipperSpan = try #require(trace.first { $0["name"] as? String == "zipper endpoint" })
        #expect(zipperSpan["parent_span_id"] as? String == outage["span_id"] as? String, "the zipper's span follows the wait")
        let sinkSpan = try #require(trace.first { $0["name"] as? String == "sink" })
        // The new zipper held it if the sink came back after the source: then its wait there follows.
        let hold = trace.first { $0["name"] as? String == "zipper hold" }
        #expect(hold == nil || hold?["parent_span_id"] as? String == zipperSpan["span_id"] as? String)
        #expect(sinkSpan["parent_span_id"] as? String == (hold ?? zipperSpan)["span_id"] as? String)
    }

    @Test("frames a source held while it reconnected and dropped when it ended end their traces with their wait, in error, and the line that says so carries one's trace id")
    func droppedOutageFrameTrace() async throws {
        let receiver = try await SpanReceiver.start()
        let providers = ["zipper", "source"].map { receiver.provider(service: "test-\($0)") }
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0), options: .init(tracerProvider: providers[0]))
        try await zipper.start()
        let address = try #require(zipper.address)
        let logs = InMemoryLogSink()
        var options = Source.Options(
            logger: Self.debugLogger("source", logs), reconnect: ReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(100)),
            tracerProvider: providers[1])
        options.shutdownTimeout = .milliseconds(300)
        let source = Source(name: "feeder", zipper: address, options: options)
        try await source.connect()
        await zipper.close()
        #expect(await eventually { !source.client.isConnected })
        for index in 0..<3 { try await source.write(tag: 0x65, data: Array("lost \(index)".utf8)) }
        #expect(source.outageStatistics.buffered == 3)
        // No zipper comes back: the close deadline passes and the client ends with them.
        await source.close()
        for provider in providers { await provider.shutdown() }

        let spans = receiver.spans()
        let sourceSpans = spans.filter { $0["name"] as? String == "feeder" }
        let waits = spans.filter { $0["name"] as? String == "client outage" }
        #expect(waits.count == 3, "\(spans.map { $0["name"] ?? "?" })")
        for wait in waits {
            let status = wait["status"] as? [String: Any]
            #expect(status?["code"] as? Int == 2, "error")
            #expect((status?["message"] as? String)?.hasPrefix("dropped: the client ended before it reconnected") == true, "\(String(describing: status))")
            #expect(Self.attributes(wait)["yomo.outage.reason"] as? String == "buffered")
            let writer = sourceSpans.first { $0["span_id"] as? String == wait["parent_span_id"] as? String }
            #expect(writer?["trace_id"] as? String == wait["trace_id"] as? String, "under the writer's span")
            #expect(Self.nanoseconds(wait, "end") - Self.nanoseconds(wait, "start") >= 300_000_000, "it waited for the close deadline")
        }
        let warning = try #require(Self.records(logs, "dropped the frames written while disconnected: the client ended before it reconnected").first)
        #expect(warning["dropped"] as? String == "3")
        #expect(waits.contains { $0["trace_id"] as? String == warning["trace_id"] as? String }, "\(warning)")
    }

    @Test("a client's outage drop count links to its last traced drop: a write the full buffer refused (its failed span), then a held frame dropped at the end (its wait's span)")
    func outageDropExemplar() async throws {
        let (source, exporter, meters) = try await Self.sourceWhoseZipperClosed(outageBufferFrames: 1)
        try await source.write(tag: 0x67, data: Array("held".utf8))
        let refused = await #expect(throws: YoMoError.self) { try await source.write(tag: 0x67, data: Array("refused".utf8)) }
        #expect(refused?.code == .outageBufferFull)
        func dropCount() throws -> MetricSnapshot.Point {
            try #require(meters.collect().first { $0.descriptor.name == "yomo.client.outage.dropped.messages" }?.points.first)
        }
        let failed = try #require(exporter.spans.first { $0.name == "feeder" && $0.status?.code == .error })
        #expect(try dropCount().value == .scalar(1))
        #expect(try dropCount().exemplar?.spanID == failed.context.spanID.description, "the refused write's span")
        // The close deadline passes with the held frame: dropped, its wait's span the exemplar now.
        await source.close()
        let wait = try #require(exporter.spans.first { $0.name == "client outage" && $0.status?.code == .error })
        #expect(try dropCount().value == .scalar(2))
        #expect(try dropCount().exemplar?.spanID == wait.context.spanID.description, "the dropped held frame's wait")
    }

    @Test("a client's outage drop count links to the last drop that was traced, though frames not sampled were dropped after it")
    func outageDropExemplarSkipsUnsampled() async throws {
        let (source, exporter, meters) = try await Self.sourceWhoseZipperClosed()
        try await source.write(tag: 0x67, data: Array("traced".utf8))
        // Then two under a caller's span that was not sampled: nothing recorded for them.
        var unsampled = ServiceContext.topLevel
        unsampled.spanContext = SpanContext(traceID: .random(), spanID: .random(), traceFlags: [])
        try await ServiceContext.withValue(unsampled) {
            for _ in 0..<2 { try await source.write(tag: 0x67, data: Array("not sampled".utf8)) }
        }
        #expect(source.outageStatistics.buffered == 3)
        await source.close()
        let waits = exporter.spans.filter { $0.name == "client outage" }
        #expect(waits.count == 1, "only the traced frame's wait: \(waits.map(\.name))")
        let point = try #require(meters.collect().first { $0.descriptor.name == "yomo.client.outage.dropped.messages" }?.points.first)
        #expect(point.value == .scalar(3))
        #expect(point.exemplar?.spanID == waits.first?.context.spanID.description, "the traced frame's wait: \(String(describing: point.exemplar))")
    }

    /// A source "feeder" (every span kept in the exporter, its metrics in the
    /// provider, a close deadline of 200 ms) whose zipper closed for good: it
    /// is reconnecting, and holds what it is given to write.
    static func sourceWhoseZipperClosed(
        outageBufferFrames: Int? = nil
    ) async throws -> (Source, InMemorySpanExporter, MeterProvider) {
        let exporter = InMemorySpanExporter()
        let provider = TracerProvider(configuration: .init(environment: [:]), processors: [SimpleSpanProcessor(exporter: exporter)])
        let meters = MeterProvider(configuration: .init(serviceName: "feeder", environment: [:]))
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0))
        try await zipper.start()
        var options = Source.Options(
            reconnect: ReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(100)), tracerProvider: provider, meterProvider: meters)
        if let outageBufferFrames { options.outageBufferFrames = outageBufferFrames }
        options.shutdownTimeout = .milliseconds(200)
        let source = Source(name: "feeder", zipper: try #require(zipper.address), options: options)
        try await source.connect()
        await zipper.close()
        #expect(await eventually { !source.client.isConnected })
        return (source, exporter, meters)
    }

    @Test("a function's replies are children of its span, frame after frame (its writes reuse the received metadata bytes)")
    func repliesStayInTheirFramesTraces() async throws {
        let receiver = try await SpanReceiver.start()
        let providers = ["zipper", "echo", "source", "sink"].map { receiver.provider(service: "test-\($0)") }
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0), options: .init(tracerProvider: providers[0]))
        try await zipper.start()
        let address = try #require(zipper.address)
        let echo = StreamFunction(name: "echo", zipper: address, options: .init(observedTags: [0x40], tracerProvider: providers[1]))
        // What the handler reads as its metadata: its own span's ids, written in
        // when it reads them (one key, or the whole map), after it has written.
        let seen = Inbox<[String]>()
        echo.setHandler { ctx in
            try await ctx.write(tag: 0x41, data: ctx.data)
            seen.append([
                ctx.metadata(Metadata.ReservedKey.spanID) ?? "", ctx.metadata[Metadata.ReservedKey.spanID] ?? "",
                ctx.metadata("traceparent") ?? "", ctx.metadata(Metadata.ReservedKey.traceID) ?? "", ctx.tid ?? "",
            ])
        }
        try await echo.connect()
        let received = Inbox<String>()
        // A handler that never writes reads its own span's ids too.
        let sinkSeen = Inbox<String>()
        let sink = StreamFunction(name: "sink", zipper: address, options: .init(observedTags: [0x41], tracerProvider: providers[3]))
        sink.setHandler { ctx in
            sinkSeen.append(ctx.metadata(Metadata.ReservedKey.spanID) ?? "")
            received.append(String(decoding: ctx.data, as: UTF8.self))
        }
        try await sink.connect()
        let source = Source(name: "feeder", zipper: address, options: .init(tracerProvider: providers[2]))
        try await source.connect()
        let texts = (0..<5).map { "frame-\($0)" }
        for (index, text) in texts.enumerated() {
            try await source.write(tag: 0x40, data: Array(text.utf8))
            // The count to wait for is fixed before the write could be answered:
            // read after it, a reply already in would make the wait one too many.
            #expect(await received.wait(for: index + 1))
        }
        #expect(received.items == texts)
        await source.close()
        await sink.close()
        await echo.close()
        await zipper.close()
        for provider in providers { await provider.shutdown() }

        let spans = receiver.spans()
        func named(_ name: String) -> [[String: Any]] { spans.filter { $0["name"] as? String == name } }
        let feeds = named("feeder")
        #expect(feeds.count == 5)
        for feed in feeds {
            let traceID = try #require(feed["trace_id"] as? String)
            let inTrace = spans.filter { $0["trace_id"] as? String == traceID }
            func child(of parent: [String: Any], named name: String) throws -> [String: Any] {
                try #require(inTrace.first { $0["name"] as? String == name && $0["parent_span_id"] as? String == parent["span_id"] as? String },
                             "no \(name) under \(parent["name"] ?? "?") in \(inTrace.map { "\($0["name"] ?? "?")" })")
            }
            // source → zipper → echo → zipper → sink, one chain per frame.
            let toEcho = try child(of: feed, named: "zipper endpoint")
            let echoed = try child(of: toEcho, named: "echo")
            let toSink = try child(of: echoed, named: "zipper endpoint")
            let sunk = try child(of: toSink, named: "sink")
            #expect(inTrace.count == 5)
            #expect(sinkSeen.items.contains(try #require(sunk["span_id"] as? String)), "the sink read another span id: \(sinkSeen.items)")
            let spanID = try #require(echoed["span_id"] as? String)
            let read = try #require(seen.items.first { $0[0] == spanID }, "the handler never read its span id \(spanID): \(seen.items)")
            #expect(read[1] == spanID)
            #expect(read[2] == "00-\(traceID)-\(spanID)-01")
            #expect(read[3] == traceID)
            #expect(!read[4].isEmpty)
        }
        #expect(seen.items.count == 5)
    }

    @Test("""
        a zipper hop that records nothing hands an unsampled frame's trace context on as it came; \
        a sampled frame gets the zipper's own ids, unsampled, as before
        """)
    func unrecordedZipperHops() async throws {
        let receiver = try await SpanReceiver.start()
        // Propagation only at the zipper; the function records every frame, whatever its parent says.
        let providers = [
            receiver.provider(service: "test-zipper", sampler: "always_off"), receiver.provider(service: "test-sfn", sampler: "always_on"),
            receiver.provider(service: "test-quiet", sampler: "always_off"), receiver.provider(service: "test-loud", sampler: "always_on"),
        ]
        let zipperLogs = InMemoryLogSink()
        let zipper = Zipper(
            configuration: ZipperConfiguration(host: "127.0.0.1", port: 0),
            options: .init(logger: Self.debugLogger("yomo.zipper", zipperLogs), tracerProvider: providers[0]))
        try await zipper.start()
        let address = try #require(zipper.address)
        let handled = Inbox<String>()
        let sfn = StreamFunction(name: "upper", zipper: address, options: .init(observedTags: [0x33], tracerProvider: providers[1]))
        sfn.setHandler { ctx in handled.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await sfn.connect()
        let quietLogs = InMemoryLogSink()
        let quiet = Source(name: "quiet", zipper: address, options: .init(logger: Self.debugLogger("yomo", quietLogs), tracerProvider: providers[2]))
        let loud = Source(name: "loud", zipper: address, options: .init(tracerProvider: providers[3]))
        try await quiet.connect()
        try await loud.connect()
        try await quiet.write(tag: 0x33, data: Array("unsampled".utf8))
        #expect(await handled.wait(for: 1))
        try await loud.write(tag: 0x33, data: Array("sampled".utf8))
        #expect(await handled.wait(for: 2))
        await quiet.close()
        await loud.close()
        await sfn.close()
        await zipper.close()
        for provider in providers { await provider.shutdown() }

        let spans = receiver.spans()
        func named(_ name: String) -> [[String: Any]] { spans.filter { $0["name"] as? String == name } }
        #expect(named("zipper endpoint").isEmpty && named("quiet").isEmpty, "sampled out: nothing exported")
        let functionSpans = named("upper")
        #expect(functionSpans.count == 2)
        // Unsampled: the function's parent is the quiet source's own (unrecorded)
        // span, whose ids the zipper handed on; its debug line carries them too.
        let (quietTraceID, quietSpanID) = try Self.writtenIDs(quietLogs)
        let underQuiet = try #require(functionSpans.first { $0["trace_id"] as? String == quietTraceID }, "\(functionSpans)")
        #expect(underQuiet["parent_span_id"] as? String == quietSpanID)
        let routed = try #require(Self.records(zipperLogs, "routing frame").first { $0["trace_id"] as? String == quietTraceID })
        #expect(routed["span_id"] as? String == quietSpanID)
        // Sampled: the zipper's hop, recording nothing, still names itself (and
        // tells the function's parent-based samplers not to sample, as before).
        let loudSpan = try #require(named("loud").first)
        let underLoud = try #require(functionSpans.first { $0["trace_id"] as? String == loudSpan["trace_id"] as? String })
        let zipperHopID = try #require(underLoud["parent_span_id"] as? String)
        #expect(zipperHopID.count == 16 && zipperHopID != loudSpan["span_id"] as? String)
    }

    @Test("""
        a stream function that records nothing, under a frame not sampled, replies with the frame's trace context \
        as it came: the next recorded span's parent is the source's
        """)
    func unrecordedFunctionForwardsUnsampledParent() async throws {
        let receiver = try await SpanReceiver.start()
        // Propagation only everywhere but the last function, which records every frame.
        let providers = [
            receiver.provider(service: "test-zipper", sampler: "always_off"), receiver.provider(service: "test-relay", sampler: "always_off"),
            receiver.provider(service: "test-sink", sampler: "always_on"), receiver.provider(service: "test-quiet", sampler: "always_off"),
        ]
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0), options: .init(tracerProvider: providers[0]))
        try await zipper.start()
        let address = try #require(zipper.address)
        let relayLogs = InMemoryLogSink()
        let relay = StreamFunction(name: "relay", zipper: address, options: .init(
            observedTags: [0x35], logger: Self.debugLogger("yomo", relayLogs), tracerProvider: providers[1]))
        relay.setHandler { ctx in try await ctx.write(tag: 0x36, data: ctx.data) }
        try await relay.connect()
        let handled = Inbox<String>()
        let sink = StreamFunction(name: "sink", zipper: address, options: .init(observedTags: [0x36], tracerProvider: providers[2]))
        sink.setHandler { ctx in handled.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await sink.connect()
        let quietLogs = InMemoryLogSink()
        let quiet = Source(name: "quiet", zipper: address, options: .init(logger: Self.debugLogger("yomo", quietLogs), tracerProvider: providers[3]))
        try await quiet.connect()
        try await quiet.write(tag: 0x35, data: Array("relayed".utf8))
        #expect(await handled.wait(for: 1))
        await quiet.close()
        await sink.close()
        await relay.close()
        await zipper.close()
        for provider in providers { await provider.shutdown() }

        let spans = receiver.spans()
        #expect(spans.allSatisfy { $0["name"] as? String == "sink" } && spans.count == 1, "\(spans)")
        let (quietTraceID, quietSpanID) = try Self.writtenIDs(quietLogs)
        let sinkSpan = try #require(spans.first)
        #expect(sinkSpan["trace_id"] as? String == quietTraceID)
        #expect(sinkSpan["parent_span_id"] as? String == quietSpanID)
        // The relay's own log lines carry the ids it forwards.
        let received = try #require(Self.records(relayLogs, "frame received").first, "\(relayLogs.lines)")
        #expect(received["trace_id"] as? String == quietTraceID && received["span_id"] as? String == quietSpanID)
    }

    @Test("a throwing handler's span has error status and the error recorded; pipe spans end")
    func errorsAndPipes() async throws {
        struct Boom: Error {}
        let receiver = try await SpanReceiver.start()
        let provider = receiver.provider(service: "test-all")
        try await withZipper { address, _ in
            let failing = StreamFunction(name: "failing", zipper: address, options: .init(observedTags: [0x41], tracerProvider: provider))
            failing.setHandler { _ in throw Boom() }
            let piped = Inbox<Int>()
            let pipe = StreamFunction(name: "piped", zipper: address, options: .init(observedTags: [0x42], tracerProvider: provider))
            pipe.setPipeHandler { input, _ in for await _ in input { piped.append(1) } }
            try await failing.connect()
            try await pipe.connect()
            let source = Source(name: "source", zipper: address, options: .init(tracerProvider: provider))
            try await source.connect()
            try await source.write(tag: 0x41, data: [1])
            for _ in 0..<3 { try await source.write(tag: 0x42, data: [2]) }
            #expect(await piped.wait(for: 3))
            try await Task.sleep(for: .milliseconds(100))
            await source.close()
            await failing.close()
            await pipe.close()
        }
        await provider.shutdown()
        let spans = receiver.spans()
        let failed = try #require(spans.first { $0["name"] as? String == "failing" })
        #expect((failed["status"] as? [String: Any])?["code"] as? Int == 2, "STATUS_CODE_ERROR")
        #expect((failed["events"] as? [[String: Any]])?.contains { $0["name"] as? String == "exception" } == true)
        let pipeSpans = spans.filter { $0["name"] as? String == "piped" }
        #expect(pipeSpans.count == 3, "every pipe frame's span ends and is exported")
        #expect(pipeSpans.allSatisfy { ($0["attributes"] as? [String: Any])?["sfn_handler_type"] as? String == "pipe_handler" })
    }
}

private struct Boom: Error {}
