import ArgumentParser
import Foundation
import Logging
import YoMo
import YoMoLogging

@main
struct YoMoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "yomo",
        abstract: "swift-yomo: run a YoMo zipper, benchmark a pipeline.",
        subcommands: [Serve.self, Bench.self, TraceView.self]
    )
}

/// Logs as YOMO_LOG_LEVEL / YOMO_LOG_FORMAT ask (default: text at info on
/// stderr), with trace ids on every record, and OTLP logs when OTEL_* ask.
func bootstrapLogging(service: String) -> YoMoLogging.Installation {
    YoMoLogging.bootstrap(serviceName: service)
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a zipper.")

    @Option(name: .shortAndLong, help: "A zipper YAML config (name, host, port, auth).")
    var config: String?

    @Option(help: "Address to listen on (overrides the config).")
    var host: String?

    @Option(help: "UDP port to listen on (overrides the config; default 9000).")
    var port: Int?

    @Option(help: "Require clients to present credential token:<TOKEN>.")
    var token: String?

    func run() async throws {
        let logging = bootstrapLogging(service: "yomo-zipper")
        var configuration = try config.map { try ZipperConfiguration(contentsOfFile: $0) } ?? ZipperConfiguration()
        if let host { configuration.host = host }
        if let port { configuration.port = port }
        if let token { configuration.authentication = .token(token) }
        let zipper = Zipper(configuration: configuration)
        try await zipper.start()
        await zipper.wait()
        await logging.shutdown()
    }
}

