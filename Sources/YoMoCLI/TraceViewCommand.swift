import ArgumentParser
import FoundationEssentials
import Glibc
import Synchronization
import YoMo
import YoMoMetrics
import YoMoTraceView

/// `yomo trace-view`: a local OTLP/HTTP receiver that prints each finished trace
/// as a waterfall — point `OTEL_EXPORTER_OTLP_ENDPOINT` at it instead of Jaeger.
struct TraceView: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trace-view",
        abstract: "Receive OTLP/HTTP traces and print each finished one as a waterfall.",
        discussion: "Run programs with OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 to see their traces here."
    )

    @Option(help: "host:port to listen on.") var listen = "127.0.0.1:4318"
    @Option(help: "A trace is printed once no span of it arrived for this many milliseconds.") var quietMs = 1500
    @Option(help: "Exit after printing this many traces.") var maxTraces: Int?
    @Option(help: "Exit after this many seconds.") var seconds: Double?
    @Flag(help: "Accept spans without decoding or printing them (a near-free receiver for benchmarks).") var discard = false
    @Flag(inversion: .prefixedNo, help: "Colour errors (default: when stdout is a terminal).") var colour = isatty(STDOUT_FILENO) != 0

    func run() async throws {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]) else {
            throw ValidationError("--listen must be host:port")
        }
        let host = listen[..<colon].trimming { $0 == "[" || $0 == "]" }
        let assembler = TraceAssembler()
        let receiver = try await OTLPHTTPReceiver.start(
            host: host, port: port, decode: !discard,
            onSpans: { assembler.add($0) },
            onError: { message in
                let line = Array("trace-view: \(message)\n".utf8)
                _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
            })
        print("trace-view: listening on http://\(host):\(receiver.port) (OTLP/HTTP protobuf, POST /v1/traces)")
        fflush(nil)
        let renderer = WaterfallRenderer(colour: colour)
        let clock = ContinuousClock()
        let deadline = seconds.map { clock.now.advanced(by: .milliseconds(Int64($0 * 1000))) }
        var printed = 0
        let stopped = StopFlag()
        let signals = SignalWatcher()
        defer { signals.cancel() }
        Task {
            await signals.wait()
            stopped.set()
        }
        while !stopped.isSet {
            if deadline.map({ clock.now >= $0 }) == true { break }
            if let maxTraces, printed >= maxTraces { break }
            try? await Task.sleep(for: .milliseconds(100))
            for trace in assembler.takeFinished(quiet: .milliseconds(Int64(quietMs))) {
                print(renderer.render(trace))
                print()
                printed += 1
            }
            fflush(nil)
        }
        // What arrived but is not quiet yet is shown too, rather than lost.
        for trace in assembler.takeFinished(quiet: .zero) {
            print(renderer.render(trace))
            print()
        }
        fflush(nil)
        await receiver.close()
    }
}

final class StopFlag: Sendable {
    private let flag = Mutex(false)
    func set() { flag.withLock { $0 = true } }
    var isSet: Bool { flag.withLock { $0 } }
}
