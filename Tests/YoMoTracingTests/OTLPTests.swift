import Foundation
import Logging
import Testing
import Tracing
@testable import YoMoTracing

@Suite struct OTLPConfigurationTests {
    @Test func endpointHeadersTimeoutCompression() {
        let defaults = OTLPExporterConfiguration(signal: .traces, environment: [:])
        #expect(defaults.url == "http://localhost:4318/v1/traces")
        #expect(defaults.timeout == .seconds(10))
        #expect(defaults.compression == .none)
        #expect(defaults.userAgent == "swift-yomo/0.1.0")
        #expect(defaults.headers.isEmpty)

        let generic = OTLPExporterConfiguration(signal: .traces, environment: [
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=secret%3D1,x-team = core",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-team=traces",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        ])
        #expect(generic.url == "http://collector:4318/v1/traces")
        #expect(generic.headers.map { "\($0.name)=\($0.value)" } == ["api-key=secret=1", "x-team=traces"])
        #expect(generic.timeout == .milliseconds(2500))
        #expect(generic.compression == .gzip)

        let specific = OTLPExporterConfiguration(signal: .traces, environment: [
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "100",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "none",
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        ])
        #expect(specific.url == "http://traces:9999/custom")
        #expect(specific.timeout == .milliseconds(100))
        #expect(specific.compression == .none)
        #expect(OTLPExporterConfiguration(signal: .logs, environment: [:]).url == "http://localhost:4318/v1/logs")
    }
}

@Suite struct RetryPolicyTests {
    let policy = OTLPRetryPolicy()

    func result(status: Int, curl: UInt32 = 0, retryAfter: String? = nil) -> HTTPAttemptResult {
        HTTPAttemptResult(status: status, curlCode: curl, curlMessage: "", body: [], retryAfter: retryAfter)
    }

    @Test func retriesOnlyTheRetryableStatuses() {
        for status in [200, 202, 204] {
            #expect(policy.decide(result(status: status), attempt: 0, nowSeconds: 0, random: 0.5) == .success)
        }
        for status in [400, 401, 403, 404, 413, 500, 501] {
            #expect(policy.decide(result(status: status), attempt: 0, nowSeconds: 0, random: 0.5) == .fail)
        }
        for status in [429, 502, 503, 504] {
            guard case .retry = policy.decide(result(status: status), attempt: 0, nowSeconds: 0, random: 0.5) else {
                Issue.record("status \(status) should be retried")
                continue
            }
        }
    }

    @Test func connectionFailuresRetryOtherCurlErrorsDoNot() {
        // 7: CURLE_COULDNT_CONNECT, 1: CURLE_UNSUPPORTED_PROTOCOL
        #expect(policy.decide(result(status: 0, curl: 7), attempt: 0, nowSeconds: 0, random: 0) == .retry(after: .milliseconds(250)))
        #expect(policy.decide(result(status: 0, curl: 1), attempt: 0, nowSeconds: 0, random: 0) == .fail)
    }

    @Test func retryAfterSecondsAndHTTPDate() {
        #expect(policy.decide(result(status: 503, retryAfter: "1"), attempt: 3, nowSeconds: 0, random: 0.9) == .retry(after: .seconds(1)))
        let now: Int64 = 784_111_777 - 7
        #expect(policy.decide(result(status: 429, retryAfter: "Sun, 06 Nov 1994 08:49:37 GMT"), attempt: 0, nowSeconds: now, random: 0)
            == .retry(after: .seconds(7)))
        #expect(OTLPRetryPolicy.parseHTTPDate("Sun, 06 Nov 1994 08:49:37 GMT") == 784_111_777)
        #expect(OTLPRetryPolicy.parseHTTPDate("Thu, 01 Jan 1970 00:00:00 GMT") == 0)
        #expect(OTLPRetryPolicy.parseHTTPDate("Tue, 29 Feb 2028 12:00:00 GMT") == 1_835_438_400)
        #expect(OTLPRetryPolicy.parseHTTPDate("yesterday") == nil)
        #expect(OTLPRetryPolicy.parseRetryAfter("-5", nowSeconds: 0) == nil)
        // A date in the past means "now".
        #expect(OTLPRetryPolicy.parseRetryAfter("Thu, 01 Jan 1970 00:00:00 GMT", nowSeconds: 100) == .seconds(0))
        // Unparseable Retry-After falls back to backoff.
        #expect(policy.decide(result(status: 503, retryAfter: "soon"), attempt: 0, nowSeconds: 0, random: 1) == .retry(after: .milliseconds(500)))
    }

    /// A random draw is a system call: an export that succeeds, or fails for
    /// good, draws none; a backoff draws one; a Retry-After needs none.
    @Test func jitterAndClockAreReadOnlyForARetry() {
        var draws = 0, clockReads = 0
        func draw() -> Double { draws += 1; return 0.5 }
        func clock() -> Int64 { clockReads += 1; return 0 }
        #expect(policy.decide(result(status: 200), attempt: 0, nowSeconds: clock(), random: draw()) == .success)
        #expect(policy.decide(result(status: 400), attempt: 0, nowSeconds: clock(), random: draw()) == .fail)
        #expect(draws == 0 && clockReads == 0)
        #expect(policy.decide(result(status: 503, retryAfter: "2"), attempt: 0, nowSeconds: clock(), random: draw()) == .retry(after: .seconds(2)))
        #expect(draws == 0 && clockReads == 1)
        #expect(policy.decide(result(status: 503), attempt: 0, nowSeconds: clock(), random: draw()) == .retry(after: .milliseconds(375)))
        #expect(draws == 1)
    }

    @Test func backoffGrowsWithJitterAndIsCapped() {
        func delay(_ attempt: Int, _ random: Double) -> Duration? {
            if case .retry(let delay) = policy.decide(result(status: 503), attempt: attempt, nowSeconds: 0, random: random) {
                return delay
            }
            return nil
        }
        #expect(delay(0, 0) == .milliseconds(250))
        #expect(delay(0, 1) == .milliseconds(500))
        #expect(delay(1, 1) == .seconds(1))
        #expect(delay(2, 0.5) == .milliseconds(1500))
        #expect(delay(10, 1) == .seconds(5))
        #expect(delay(60, 1) == .seconds(5))
    }
}

/// End to end against otlp_receiver.py, which decodes bodies with the official
/// opentelemetry-proto package. Serialized: each test runs its own receiver
/// process and the machine has two cores.
@Suite(.serialized) struct OTLPReceiverTests {
    func environment(_ receiver: OTLPReceiver, _ extra: [String: String] = [:]) -> [String: String] {
        ["OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint].merging(extra) { $1 }
    }

    @Test func exportsSpansWithParentsAttributesResourceAndScope() async throws {
        let receiver = try await OTLPReceiver.start()
        defer { receiver.stop() }
        let logs = CapturedLogs()
        let provider = TracerProvider.jaeger(
            serviceName: "yomo-sfn",
            environment: environment(receiver, [
                "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
                "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=secret%20value",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
            ]),
            logger: logs.logger()
        )
        let tracer = provider.tracer(scope: InstrumentationScope(name: "StreamFunction", version: "0.1.0"))

        // A remote parent from frame metadata (YoMo keys only, as the Go zipper sends).
        let metadata: [String: String] = ["yomo-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736", "yomo-span-id": "00f067aa0ba902b7"]
        var context = ServiceContext.topLevel
        tracer.extract(metadata, into: &context, using: DictionaryExtractor())
        struct HandlerError: Error {}
        await #expect(throws: HandlerError.self) {
            try await tracer.withSpan("uppercase", context: context, ofKind: .consumer) { span in
                span.attributes["sfn_handler_type"] = "async_handler"
                span.attributes["recv_data_tag"] = 0x33
                span.attributes["recv_data_len"] = 11
                span.attributes["ratio"] = 0.5
                span.attributes["ok"] = true
                span.attributes["tags"] = ["a", "b"]
                span.attributes["sizes"] = [1, 2, 3]
                span.addEvent(SpanEvent(name: "decoded", attributes: ["bytes": 11]))
                await tracer.withSpan("user child") { child in
                    await Task.yield()
                    child.attributes["nested"] = true
                }
                throw HandlerError()
            }
        }
        await provider.shutdown()

        #expect(await receiver.wait { receiver.spans.count == 2 })
        let spans = Dictionary(uniqueKeysWithValues: receiver.spans.map { ($0["name"] as! String, $0) })
        let sfn = try #require(spans["uppercase"])
        let child = try #require(spans["user child"])
        #expect(sfn["trace_id"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(sfn["parent_span_id"] as? String == "00f067aa0ba902b7")
        #expect(sfn["kind"] as? Int == 5)  // SPAN_KIND_CONSUMER
        #expect(sfn["flags"] as? Int == 0x301)  // sampled, parent known remote
        #expect(child["trace_id"] as? String == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(child["parent_span_id"] as? String == sfn["span_id"] as? String)
        #expect(child["flags"] as? Int == 0x101)

        let attributes = try #require(sfn["attributes"] as? [String: Any])
        #expect(attributes["sfn_handler_type"] as? String == "async_handler")
        #expect(attributes["recv_data_tag"] as? Int == 0x33)
        #expect(attributes["recv_data_len"] as? Int == 11)
        #expect(attributes["ratio"] as? Double == 0.5)
        #expect(attributes["ok"] as? Bool == true)
        #expect(attributes["tags"] as? [String] == ["a", "b"])
        #expect(attributes["sizes"] as? [Int] == [1, 2, 3])
        let status = try #require(sfn["status"] as? [String: Any])
        #expect(status["code"] as? Int == 2)  // STATUS_CODE_ERROR
        let events = try #require(sfn["events"] as? [[String: Any]])
        #expect(events.map { $0["name"] as? String } == ["decoded", "exception"])

        let resource = try #require(sfn["resource"] as? [String: Any])
        #expect(resource["service.name"] as? String == "yomo-sfn")
        #expect(resource["telemetry.sdk.name"] as? String == "swift-yomo")
        #expect(resource["telemetry.sdk.language"] as? String == "swift")
        #expect(resource["deployment.environment"] as? String == "test")
        #expect(resource["process.pid"] as? Int == Int(getpid()))
        #expect(resource["host.name"] != nil)
        let scope = try #require(sfn["scope"] as? [String: Any])
        #expect(scope["name"] as? String == "StreamFunction")
        #expect(scope["version"] as? String == "0.1.0")

        let request = try #require(receiver.requests.first)
        let headers = try #require(request["headers"] as? [String: String])
        #expect(request["path"] as? String == "/v1/traces")
        #expect(headers["content-type"] == "application/x-protobuf")
        #expect(headers["content-encoding"] == "gzip")
        #expect(headers["user-agent"] == "swift-yomo/0.1.0")
        #expect(headers["x-api-key"] == "secret value")
        #expect(logs.all.filter { $0.level >= .warning }.isEmpty)
    }

    @Test func retriesAfter503WithRetryAfter() async throws {
        let receiver = try await OTLPReceiver.start(arguments: ["--fail-first", "1", "--fail-status", "503", "--retry-after", "1"])
        defer { receiver.stop() }
        let logs = CapturedLogs()
        let provider = TracerProvider.otlp(serviceName: "retry", environment: environment(receiver), logger: logs.logger())
        provider.tracer("t").startSpan("retried").end()
        await provider.shutdown()

        let requests = receiver.requests
        #expect(requests.map { $0["status"] as? Int } == [503, 200])
        if requests.count == 2, let first = requests[0]["time"] as? Double, let second = requests[1]["time"] as? Double {
            #expect(second - first >= 0.9)
        }
        #expect(receiver.spans.map { $0["name"] as? String } == ["retried"])
        #expect(logs.all.filter { $0.level >= .warning }.isEmpty)
    }

    @Test func retryAfterHTTPDateInThePastRetriesAtOnce() async throws {
        let receiver = try await OTLPReceiver.start(arguments: [
            "--fail-first", "2", "--fail-status", "429", "--retry-after", "Thu, 01 Jan 1970 00:00:00 GMT",
        ])
        defer { receiver.stop() }
        let provider = TracerProvider.otlp(serviceName: "date", environment: environment(receiver), logger: CapturedLogs().logger())
        provider.tracer("t").startSpan("dated").end()
        await provider.shutdown()
        let requests = receiver.requests
        #expect(requests.map { $0["status"] as? Int } == [429, 429, 200])
        if let first = requests.first?["time"] as? Double, let last = requests.last?["time"] as? Double {
            #expect(last - first < 0.4, "a past HTTP-date means no wait (backoff alone would wait ≥ 0.75 s)")
        }
        #expect(receiver.spans.count == 1)
    }

    @Test func doesNotRetry400AndLogsOneLine() async throws {
        let receiver = try await OTLPReceiver.start(arguments: ["--status", "400"])
        defer { receiver.stop() }
        let logs = CapturedLogs()
        let provider = TracerProvider.otlp(serviceName: "bad", environment: environment(receiver), logger: logs.logger())
        provider.tracer("t").startSpan("rejected").end()
        await provider.shutdown()

        #expect(receiver.requests.count == 1)
        let problems = logs.all.filter { $0.level >= .warning }
        #expect(problems.count == 1)
        #expect(problems.first?.message.contains("HTTP 400") == true)
        #expect(problems.first?.message.contains("not retrying") == true)
    }

    @Test func logsPartialSuccess() async throws {
        let receiver = try await OTLPReceiver.start(arguments: ["--partial-reject", "2"])
        defer { receiver.stop() }
        let logs = CapturedLogs()
        let provider = TracerProvider.otlp(serviceName: "partial", environment: environment(receiver), logger: logs.logger())
        for _ in 0..<3 { provider.tracer("t").startSpan("span").end() }
        await provider.shutdown()
        let warning = try #require(logs.all.first { $0.message.contains("partially rejected") })
        #expect(warning.metadata["rejected_spans"] == "2")
        #expect(warning.metadata["error_message"] == "test rejection")
    }

    @Test func cleanShutdownFlushesEverySpanEndedBeforeIt() async throws {
        let receiver = try await OTLPReceiver.start(arguments: ["--count-only"])
        defer { receiver.stop() }
        // A long schedule delay: only batch-size triggers and shutdown export.
        let provider = TracerProvider.otlp(
            serviceName: "flush",
            environment: environment(receiver, ["OTEL_BSP_SCHEDULE_DELAY": "600000"]),
            logger: CapturedLogs().logger()
        )
        let tracer = provider.tracer("t")
        var ended = 0
        for batch in 0..<6 {
            for _ in 0..<300 { tracer.startSpan("span").end() }
            ended += 300
            if batch % 2 == 1 { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(provider.droppedSpanCount == 0)
        await provider.shutdown()
        let received = receiver.requests.reduce(0) { $0 + ($1["spans"] as? Int ?? 0) }
        #expect(received == ended)
        #expect(receiver.requests.allSatisfy { ($0["spans"] as? Int ?? 0) <= 512 })
    }

    @Test func receiverDownKeepsEndingSpansFastAndCountsDrops() async throws {
        // A port nothing listens on: bind a receiver, note its port, stop it.
        let gone = try await OTLPReceiver.start()
        let endpoint = gone.endpoint
        gone.stop()
        let logs = CapturedLogs()
        let provider = TracerProvider.otlp(
            serviceName: "down",
            environment: [
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_TIMEOUT": "600",
                "OTEL_BSP_MAX_QUEUE_SIZE": "256",
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64",
            ],
            logger: logs.logger()
        )
        let tracer = provider.tracer("t")
        let spanCount = 50_000
        let elapsed = ContinuousClock().measure {
            for _ in 0..<spanCount {
                let span = tracer.startSpan("s")
                span.attributes["i"] = 1
                span.end()
            }
        }
        let perSpan = elapsed / spanCount
        #expect(perSpan < .microseconds(50), "ending spans must not wait for the exporter: \(perSpan) per span")
        // Only the queue and the batches the exporter took (one per failed
        // export, each up to the 600 ms timeout) escape dropping.
        #expect(provider.droppedSpanCount >= spanCount * 9 / 10)
        // Memory stays bounded: at most the queue (plus the batch in flight) is kept.
        #expect(provider.queuedSpanCount <= 256)
        await provider.shutdown()
        #expect(logs.all.contains { $0.level == .warning && $0.message.contains("Dropped spans") })
        #expect(logs.all.contains { $0.level == .error && $0.message.contains("connection failed") })
    }
}

@Suite struct ProtobufArenaTests {
    @Test func resetReusesTheBlocksInOrderAndKeepsAlignment() {
        let arena = ProtobufArena(blockSize: 1024)
        func fill() -> [UnsafeMutableRawPointer] {
            // Enough to need three blocks, one allocation larger than a block.
            (0..<40).map { index in
                let alignment = [1, 2, 4, 8, 16][index % 5]
                let pointer = arena.allocateBytes(index == 17 ? 3000 : 60, alignment: alignment)
                #expect(Int(bitPattern: pointer) % alignment == 0)
                pointer.storeBytes(of: UInt8(index), as: UInt8.self)
                return pointer
            }
        }
        let first = fill()
        arena.reset()
        let second = fill()
        #expect(first == second, "after reset the same requests get the same memory")
        #expect(Set(second).count == second.count)
        for (index, pointer) in second.enumerated() { #expect(pointer.load(as: UInt8.self) == UInt8(index)) }
    }

    @Test func bodiesEncodedInOneArenaTwiceAreIdentical() throws {
        let exporter = finishedNumberedSpans(scope: "arena")
        let arena = ProtobufArena(blockSize: 4096)
        let once = OTLPTraceEncoding.encodeRequest(exporter.spans, arena: arena)
        let again = OTLPTraceEncoding.encodeRequest(exporter.spans, arena: arena)
        let fresh = OTLPTraceEncoding.encodeRequest(exporter.spans)
        #expect(once == again)
        #expect(once == fresh)
        #expect(once.count > 300 * 20)
    }
}
