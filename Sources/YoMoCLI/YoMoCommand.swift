import ArgumentParser
import Foundation
import Logging
import YoMo

@main
struct YoMoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "yomo",
        abstract: "swift-yomo: run a YoMo zipper, benchmark a pipeline.",
        subcommands: [Serve.self, Bench.self, TraceView.self]
    )
}

/// Log level from YOMO_LOG_LEVEL (default info), to stderr.
func bootstrapLogging() {
    let level = ProcessInfo.processInfo.environment["YOMO_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0.lowercased()) } ?? .info
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
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
        bootstrapLogging()
        var configuration = try config.map { try ZipperConfiguration(contentsOfFile: $0) } ?? ZipperConfiguration()
        if let host { configuration.host = host }
        if let port { configuration.port = port }
        if let token { configuration.authentication = .token(token) }
        let zipper = Zipper(configuration: configuration)
        try await zipper.start()
        await zipper.wait()
    }
}

