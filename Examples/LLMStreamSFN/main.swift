// In the spirit of the Go SDK's stream-llm-inf-response example: an initializer
// loads a (pretend) model once, slowly; each request is answered with several
// response chunks streamed back as separate frames, in order.
//
//   llm-stream-sfn [--zipper HOST:PORT] [--observe 0x10] [--emit 0x11] [--chunks 5]
import ArgumentParser
import Foundation
import Logging
import Synchronization
import YoMo
import YoMoLogging

@main
struct LLMStreamSFN: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "llm-stream-sfn", abstract: "Streams several response chunks per request.")

    @Option var zipper = "localhost:9000"
    @Option var name = "llm"
    @Option(transform: parseTag) var observe: UInt32 = 0x10
    @Option(transform: parseTag) var emit: UInt32 = 0x11
    @Option(help: "Response chunks per request.") var chunks = 5
    @Option var credential: String?
    @Option(help: "Serve /metrics, /healthz and /readyz on HOST:PORT (default: YOMO_METRICS_LISTEN, else off).") var metrics: String?

    func run() async throws {
        let logging = YoMoLogging.bootstrap(serviceName: name)
        let metricsInstallation = try await YoMoMetrics.bootstrap(serviceName: name, listen: metrics)
        let logger = Logger(label: "llm-stream-sfn")
        let model = Model()
        let sfn = StreamFunction(name: name, zipper: zipper, options: .init(observedTags: [observe], credential: credential, retryConnect: true))
        sfn.setInit {
            // Runs once, before the first request: the place for a slow model load.
            try await model.load()
            logger.info("model loaded")
        }
        let (emit, chunks) = (emit, chunks)
        sfn.setHandler { ctx in
            let prompt = String(decoding: ctx.data, as: UTF8.self)
            for (index, token) in try model.respond(to: prompt, chunks: chunks).enumerated() {
                // Each chunk is its own frame; they leave in the order written.
                try await ctx.write(tag: emit, data: Array("[\(index)] \(token)".utf8))
                try await Task.sleep(for: .milliseconds(20))  // "inference" time per token
            }
        }
        sfn.setErrorHandler { logger.error("\($0)") }
        try await sfn.connect()
        await sfn.wait()
        // The component already spent its shutdown budget; OTLP logs get 1 s more.
        await metricsInstallation.shutdown()
        await logging.shutdown(timeout: .seconds(1))
    }
}

/// A stand-in for a model: slow to load, then answers word by word.
final class Model: Sendable {
    struct NotLoaded: Error {}
    private let loaded = Mutex(false)

    func load() async throws {
        try await Task.sleep(for: .milliseconds(500))
        loaded.withLock { $0 = true }
    }

    func respond(to prompt: String, chunks: Int) throws -> [String] {
        guard loaded.withLock({ $0 }) else { throw NotLoaded() }
        let words = ["You", "asked:", "\"\(prompt)\".", "Here", "is", "a", "streamed", "answer."]
        return (0..<chunks).map { words[$0 % words.count] }
    }
}

func parseTag(_ text: String) throws -> UInt32 {
    guard let value = UInt32(yomoTag: text) else { throw ValidationError("\(text) is not a tag (e.g. 0x33 or 51)") }
    return value
}
