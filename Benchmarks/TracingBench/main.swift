// yomo-tracing-bench: the cost of a span with export on, and export throughput.
//
//   swift run -c release --scratch-path .build-tracing yomo-tracing-bench [--seconds 5] [--python] [--only PART]
//
// Not a test: numbers depend on the machine (docs/tracing.md records them).
import CMallocCounter
import Foundation
import Logging
import Tracing
import YoMoTracing

let arguments = CommandLine.arguments
let seconds = arguments.firstIndex(of: "--seconds").flatMap { Double(arguments[$0 + 1]) } ?? 5
let usePython = arguments.contains("--python")
/// `--only noop|bare|discard|encode|throughput` runs one part (for profiling).
let only = arguments.firstIndex(of: "--only").map { arguments[$0 + 1] }
checkMallocCounter()

let logger: Logger = {
    var logger = Logger(label: "yomo-tracing-bench")
    logger.logLevel = .error
    return logger
}()

/// Where spans go: the native receiver (protobuf-c decode) or the Python one.
final class Receiver {
    let endpoint: String
    private let native: NativeReceiver?
    private let process: Process?
    private let output: String?

    init(python: Bool) throws {
        if python {
            let directory = NSTemporaryDirectory() + "yomo-bench-\(getpid())"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .appendingPathComponent("../../Tests/YoMoTracingTests/otlp_receiver.py").standardized.path
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", script, "--count-only", "--port-file", directory + "/port", "--out", directory + "/out.jsonl"]
            try process.run()
            var port: Int?
            for _ in 0..<500 where port == nil {
                port = (try? String(contentsOfFile: directory + "/port", encoding: .utf8)).flatMap { Int($0) }
                usleep(20_000)
            }
            guard let port else { throw BenchError("python receiver did not start") }
            self.process = process
            output = directory + "/out.jsonl"
            endpoint = "http://127.0.0.1:\(port)"
            native = nil
        } else {
            let native = try NativeReceiver()
            self.native = native
            endpoint = native.endpoint
            process = nil
            output = nil
        }
    }

    var receivedSpans: Int {
        if let native { return native.spans.load(ordering: .relaxed) }
        guard let output, let text = try? String(contentsOfFile: output, encoding: .utf8) else { return 0 }
        return text.split(separator: "\n").reduce(0) { total, line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return total }
            return total + (object["spans"] as? Int ?? 0)
        }
    }

    func stop() {
        if let process, process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

/// Isolates the batch processor's cost from encoding and HTTP.
struct DiscardingExporter: SpanExporter {
    func export(_ spans: [FinishedSpan], timeout: Duration) throws(TracingError) {}
}

func measureSpanCost(_ label: String, provider: TracerProvider, iterations: Int, guarded: Bool = false, attributes: Bool = true, listed: Bool = false) -> Double {
    let tracer = provider.tracer("bench")
    for index in 0..<100_000 {
        let span = tracer.startSpan("warmup")
        span.attributes["index"] = index
        span.end()
    }
    let clock = ContinuousClock()
    let start = clock.now
    let cpuStart = threadCPUNanoseconds()
    let mallocsStart = mallocCount()
    for index in 0..<iterations {
        let span = tracer.startSpan("operation")
        // The idiom for hot paths: skip attribute work for non-recording spans.
        if listed {
            // The data path's way (`setAttribute`, package API): no dictionary.
            span.setAttribute("iteration", .int64(Int64(index)))
            span.setAttribute("payload", .string("value"))
            span.setAttribute("ok", .bool(true))
        } else if attributes && (!guarded || span.isRecording) {
            span.attributes["iteration"] = index
            span.attributes["payload"] = "value"
            span.attributes["ok"] = true
        }
        span.end()
    }
    let elapsed = clock.now - start
    let cpu = Double(threadCPUNanoseconds() - cpuStart) / Double(iterations)
    // Whole process: with a batch processor, the export thread's too.
    let mallocs = Double(mallocCount() - mallocsStart) / Double(iterations)
    let nanoseconds = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
    let perOp = nanoseconds / Double(iterations)
    print(String(format: "%@: %.0f ns/op wall, %.0f ns/op on-thread CPU, %.2f mallocs/op, %d spans (dropped %d)",
                 label, perOp, cpu, mallocs, iterations, provider.droppedSpanCount))
    return perOp
}

/// One hop of the YoMo scheme: extract the parent from frame metadata, start a
/// span, inject it into the outgoing metadata, end it.
func measurePropagation(provider: TracerProvider, iterations: Int) {
    let tracer = provider.tracer("bench")
    var incoming: [String: String] = [:]
    tracer.inject(tracer.startSpan("parent").context, into: &incoming, using: DictionaryInjector())
    let cpuStart = threadCPUNanoseconds()
    for _ in 0..<iterations {
        let span = tracer.startSpan("hop", extractingParentFrom: incoming, using: DictionaryExtractor())
        var outgoing = incoming
        tracer.inject(span.context, into: &outgoing, using: DictionaryInjector())
        span.end()
    }
    let cpu = Double(threadCPUNanoseconds() - cpuStart) / Double(iterations)
    print(String(format: "one hop (extract + startSpan + inject 4 keys + end, no processor): %.0f ns/op on-thread CPU", cpu))
}

/// CPU time of the whole process (all threads).
func processCPUNanoseconds() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &spec)
    return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
}

/// CPU time of the calling thread: unlike wall time, not inflated when other
/// processes (or the export thread) compete for the cores.
func threadCPUNanoseconds() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &spec)
    return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
}

func runSpanCost(receiver: Receiver) async {
    print("== span cost: startSpan + 3 attributes + end ==")
    let iterations = 1_000_000
    _ = measureSpanCost("tracing off (noop provider)", provider: .noop, iterations: iterations)
    _ = measureSpanCost("tracing off, attributes guarded by isRecording", provider: .noop, iterations: iterations, guarded: true)
    if only == "noop" { return }
    let bare = TracerProvider(configuration: .init(environment: [:]), processors: [], logger: logger)
    _ = measureSpanCost("recording, no processor", provider: bare, iterations: iterations)
    _ = measureSpanCost("recording, no processor, no attributes", provider: bare, iterations: iterations, attributes: false)
    _ = measureSpanCost("recording, no processor, listed attributes (data path)", provider: bare, iterations: iterations, listed: true)
    measurePropagation(provider: bare, iterations: iterations)
    if only == "bare" { return }
    let discarding = TracerProvider(
        configuration: .init(environment: [:]),
        processors: [BatchSpanProcessor(exporter: DiscardingExporter(), logger: logger)],
        logger: logger
    )
    _ = measureSpanCost("batch processor, discarding exporter", provider: discarding, iterations: iterations)
    await discarding.shutdown()
    if only == "discard" { return }

    let defaults = TracerProvider.otlp(serviceName: "bench", environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint], logger: logger)
    _ = measureSpanCost("export on, default queue (2048)", provider: defaults, iterations: iterations)
    _ = measureSpanCost("export on, default queue, listed attributes (data path)", provider: defaults, iterations: iterations, listed: true)
    _ = measureSpanCost("export on, default queue, no attributes", provider: defaults, iterations: iterations, attributes: false)
    await defaults.shutdown()
}

func runThroughput(receiver: Receiver) async {
    print("== export throughput: spans produced as fast as possible for \(seconds) s, default BSP settings ==")
    let before = receiver.receivedSpans
    let provider = TracerProvider.otlp(serviceName: "bench", environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint], logger: logger)
    let tracer = provider.tracer("bench")
    let clock = ContinuousClock()
    let start = clock.now
    let processCPUStart = processCPUNanoseconds()
    let producerCPUStart = threadCPUNanoseconds()
    let deadline = start + .milliseconds(Int(seconds * 1000))
    var produced = 0
    while clock.now < deadline {
        for _ in 0..<1_000 {
            let span = tracer.startSpan("operation")
            span.attributes["iteration"] = produced
            span.attributes["payload"] = "value"
            span.attributes["ok"] = true
            span.end()
            produced += 1
        }
    }
    let dropped = provider.droppedSpanCount
    let producerCPU = threadCPUNanoseconds() - producerCPUStart
    await provider.shutdown()
    let otherCPU = processCPUNanoseconds() - processCPUStart - producerCPU
    let elapsed = clock.now - start
    let elapsedSeconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    // The Python receiver writes asynchronously; give it a moment to settle.
    var received = receiver.receivedSpans - before
    for _ in 0..<50 where received < produced - dropped {
        usleep(100_000)
        received = receiver.receivedSpans - before
    }
    print(String(format: "produced %d spans in %.2f s (%.0f spans/s)", produced, elapsedSeconds, Double(produced) / elapsedSeconds))
    print(String(format: "received %d spans: %.0f spans/s; dropped %d (%.1f%%)",
                 received, Double(received) / elapsedSeconds, dropped, 100 * Double(dropped) / Double(max(produced, 1))))
    // Load-independent: CPU the rest of the process (export thread, plus the
    // native receiver when it runs in-process) spent per received span.
    let perSpan = Double(otherCPU) / Double(max(received, 1))
    print(String(format: "export thread%@ CPU: %.2f µs per received span (= %.0f spans/s per core)",
                 usePython ? "" : " + in-process receiver", perSpan / 1000, 1e9 / max(perSpan, 1)))
}

/// The exporter's encoding alone: batches of 512 data-path spans (remote
/// parent, the zipper's two listed attributes) encoded over and over, by the
/// protobuf-c reference and by the writer the exporter uses.
func runEncode() {
    print("== export encoding: batches of 512 data-path spans ==")
    let exporter = InMemorySpanExporter()
    let provider = TracerProvider(
        configuration: .init(environment: ["OTEL_SERVICE_NAME": "bench"]),
        processors: [SimpleSpanProcessor(exporter: exporter)], logger: logger)
    let tracer = provider.tracer("yomo")
    let parent = SpanContext(traceID: .random(), spanID: .random(), isRemote: true)
    for index in 0..<512 {
        let span = tracer.startSpan("zipper routing", parent: parent, context: .topLevel, ofKind: .internal, at: DefaultTracerClock.now)
        span.setAttribute("routing_data_tag", .int64(0x33))
        span.setAttribute("routing_data_len", .int64(Int64(1024 + index % 3)))
        span.end()
    }
    let listed = exporter.spans
    // As the data path starts its spans: literal attributes, set as they start.
    for index in 0..<512 {
        let span = tracer.startSpan(
            "uppercase", parent: parent, context: .topLevel, ofKind: .consumer, at: DefaultTracerClock.now,
            fixedAttributes: FixedAttributes(
                .init("sfn_handler_type", .string("async_handler")),
                .init("recv_data_tag", .int64(0x33)), .init("recv_data_len", .int64(Int64(1024 + index % 3)))))
        span.end()
    }
    let literal = Array(exporter.spans.dropFirst(listed.count))
    let arena = ProtobufArena()
    var writer = OTLPTraceWriter()
    for spans in [listed, literal] {
        guard writer.encodeRequest(spans) == OTLPTraceEncoding.encodeRequest(spans, arena: arena) else {
            fatalError("writer and protobuf-c bytes differ")
        }
    }
    func measure(_ label: String, _ spans: [FinishedSpan], _ encode: () -> [UInt8]) {
        let reference = OTLPTraceEncoding.encodeRequest(spans, arena: arena)
        for _ in 0..<200 { _ = encode() }
        var rounds = 0
        let cpuStart = threadCPUNanoseconds()
        let mallocsStart = mallocCount()
        while threadCPUNanoseconds() - cpuStart < UInt64(seconds * 4e8) {
            for _ in 0..<100 { _ = encode() }
            rounds += 100
        }
        let perSpan = Double(threadCPUNanoseconds() - cpuStart) / Double(rounds * spans.count)
        let mallocs = Double(mallocCount() - mallocsStart) / Double(rounds * spans.count)
        print(String(format: "%@: %.0f ns/span CPU, %.3f mallocs/span, %d bytes/span",
                     label, perSpan, mallocs, reference.count / spans.count))
    }
    measure("protobuf-c tree in a reused arena, then pack (reference)", listed) {
        OTLPTraceEncoding.encodeRequest(listed, arena: arena)
    }
    measure("OTLPTraceWriter, reused buffer (exporter), attributes set after start", listed) { writer.encodeRequest(listed) }
    measure("OTLPTraceWriter, reused buffer (exporter), literal attributes (the data path's)", literal) { writer.encodeRequest(literal) }
}

if only == "encode" {
    runEncode()
    exit(0)
}

let receiver = try Receiver(python: usePython)
print("receiver: \(usePython ? "python (opentelemetry-proto)" : "native (protobuf-c)") at \(receiver.endpoint)")
if only != "throughput" { await runSpanCost(receiver: receiver) }
if only == nil { runEncode() }
if only == nil || only == "throughput" { await runThroughput(receiver: receiver) }
receiver.stop()

/// Heap allocations (malloc, calloc, realloc, posix_memalign) so far, in every thread.
func mallocCount() -> Int {
    Int(yomo_bench_malloc_calls())
}

/// A counter that silently stayed at 0 would report every path as allocation-free,
/// so check once that an allocation made inside a shared library reaches it:
/// libc's `realpath` mallocs its result (`strdup` would not do: the optimizer
/// knows it as an allocator and drops a `free(strdup(…))` pair).
func checkMallocCounter() {
    #if canImport(Glibc)
    let before = mallocCount()
    free(realpath("/", nil))
    if mallocCount() == before {
        FileHandle.standardError.write(Data("yomo-tracing-bench: the malloc counter does not see allocations; mallocs/op would read 0\n".utf8))
        exit(1)
    }
    #endif
}
