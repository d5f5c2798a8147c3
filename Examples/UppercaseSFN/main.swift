// The README's example stream function: uppercases the ASCII letters of each
// payload (length kept) and writes the result with the emit tag.
//
//   uppercase-sfn [--zipper HOST:PORT] [--name upper] [--observe 0x33] [--emit 0x34] [--pipe] [--credential C]
//                 [--handler-delay-ms N] [--handler-concurrency N]
import ArgumentParser
import Logging
import YoMo
import YoMoLogging

// Not an async main: runAsyncMain keeps the main thread parked instead of
// exiting it, which keeps ~2 MB of unwind tables out of memory.
@main
enum Main {
    static func main() { runAsyncMain { await UppercaseSFN.main() } }
}

struct UppercaseSFN: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "uppercase-sfn", abstract: "A stream function that uppercases payloads.")

    @Option var zipper = "localhost:9000"
    @Option var name = "upper"
    @Option(transform: tag) var observe: UInt32 = 0x33
    @Option(transform: tag) var emit: UInt32 = 0x34
    @Flag(help: "Use the pipe handler (frames in order) instead of the async handler.") var pipe = false
    @Option var credential: String?
    @Option(help: "Each handler waits this long before it answers: a slow handler, for fault drills.") var handlerDelayMs = 0
    @Option(help: "At most this many async handlers at once (default: no limit).") var handlerConcurrency: Int?
    @Option(help: "Serve /metrics, /healthz and /readyz on HOST:PORT (default: YOMO_METRICS_LISTEN, else off).") var metrics: String?

    func run() async throws {
        // Text at info on stderr by default; YOMO_LOG_LEVEL, YOMO_LOG_FORMAT=json|logfmt;
        // every record written while handling a frame carries its trace_id and span_id.
        let logging = YoMoLogging.bootstrap(serviceName: name)
        let metricsInstallation = try await YoMoMetrics.bootstrap(serviceName: name, listen: metrics)
        let sfn = StreamFunction(
            name: name, zipper: zipper,
            options: .init(observedTags: [observe], credential: credential, retryConnect: true, handlerConcurrency: handlerConcurrency))
        let emit = self.emit
        let delay = Duration.milliseconds(handlerDelayMs)
        if pipe {
            sfn.setPipeHandler { input, output in
                for await frame in input {
                    if delay > .zero { try await Task.sleep(for: delay) }
                    try await output.write(tag: emit, data: uppercased(frame.data))
                }
            }
        } else {
            sfn.setHandler { ctx in
                if delay > .zero { try await Task.sleep(for: delay) }
                try await ctx.write(tag: emit, data: uppercased(ctx.data))
            }
        }
        sfn.setErrorHandler { error in
            Logger(label: "uppercase-sfn").error("\(error)")
        }
        try await sfn.connect()
        await sfn.wait()
        // The component already spent its shutdown budget; OTLP logs get 1 s more.
        await metricsInstallation.shutdown()
        await logging.shutdown(timeout: .seconds(1))
    }
}

func uppercased(_ bytes: [UInt8]) -> [UInt8] {
    bytes.map { (97...122).contains($0) ? $0 - 32 : $0 }
}

func tag(_ text: String) throws -> UInt32 {
    guard let value = UInt32(yomoTag: text) else { throw ValidationError("\(text) is not a tag (e.g. 0x33 or 51)") }
    return value
}
