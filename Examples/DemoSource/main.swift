// A source that keeps writing frames, for demos: one frame every --interval
// milliseconds (or --count frames, then it stops).
//
//   demo-source [--zipper HOST:PORT] [--tag 0x33] [--interval 1000] [--count N]
import ArgumentParser
import Foundation
import Logging
import YoMo
import YoMoLogging

@main
struct DemoSource: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "demo-source", abstract: "Writes a frame every interval.")

    @Option var zipper = "localhost:9000"
    @Option var name = "demo-source"
    @Option(transform: { text in
        guard let value = UInt32(yomoTag: text) else { throw ValidationError("\(text) is not a tag (e.g. 0x33 or 51)") }
        return value
    }) var tag: UInt32 = 0x33
    @Option(help: "Milliseconds between frames.") var interval = 1000
    @Option(help: "Stop after this many frames (default: run until Ctrl-C).") var count: Int?
    @Option var credential: String?
    @Option(help: "Serve /metrics, /healthz and /readyz on HOST:PORT (default: YOMO_METRICS_LISTEN, else off).") var metrics: String?

    func run() async throws {
        let logging = YoMoLogging.bootstrap(serviceName: name)
        let metricsInstallation = try await YoMoMetrics.bootstrap(serviceName: name, listen: metrics)
        let logger = Logger(label: "demo-source")
        let source = Source(name: name, zipper: zipper, options: .init(credential: credential, retryConnect: true))
        source.setErrorHandler { logger.warning("\($0)") }
        try await source.connect()
        var written = 0
        while count.map({ written < $0 }) ?? true {
            let text = "hello yomo #\(written)"
            do {
                try await source.write(tag: tag, data: Array(text.utf8))
                logger.info("wrote", metadata: ["tag": "0x\(String(tag, radix: 16))", "data": "\(text)"])
                written += 1
            } catch let error as YoMoError where error.code == .outageBufferFull || error.code == .notConnected {
                // Reconnecting: writes are held until the buffer fills up.
                logger.warning("not connected, retrying", metadata: ["error": "\(error)"])
            }
            try await Task.sleep(for: .milliseconds(interval))
        }
        await source.close()
        // The component already spent its shutdown budget; OTLP logs get 1 s more.
        await metricsInstallation.shutdown()
        await logging.shutdown(timeout: .seconds(1))
    }
}
