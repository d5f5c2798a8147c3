import Foundation
import Logging
import Synchronization
import Tracing
@testable import YoMoTracing

/// Records log lines in memory so tests can count them.
final class CapturedLogs: Sendable {
    struct Record: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]
    }

    private let records = Mutex<[Record]>([])

    var all: [Record] { records.withLock { $0 } }

    func append(_ record: Record) { records.withLock { $0.append(record) } }

    func logger(label: String = "test", level: Logger.Level = .trace) -> Logger {
        var logger = Logger(label: label) { _ in Handler(logs: self) }
        logger.logLevel = level
        return logger
    }

    private struct Handler: LogHandler {
        let logs: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var merged: [String: String] = [:]
            for (key, value) in metadata { merged[key] = "\(value)" }
            for (key, value) in event.metadata ?? [:] { merged[key] = "\(value)" }
            logs.append(Record(level: event.level, message: "\(event.message)", metadata: merged))
        }
    }
}

/// The Python OTLP receiver (otlp_receiver.py) run as a subprocess on a free loopback port.
final class OTLPReceiver {
    let process = Process()
    let directory: URL
    private(set) var port = 0
    var outputPath: String { directory.appendingPathComponent("received.jsonl").path }
    /// `https://` when started with `--tls-cert`.
    var endpoint: String { "\(scheme)://127.0.0.1:\(port)" }
    private let scheme: String

    /// Starts the receiver and returns once it listens. The waits here use
    /// `Task.sleep`: a `usleep` loop would hold one of the cooperative pool's
    /// threads (two on a 2-core machine) for as long as Python takes to start,
    /// and two receivers starting at once in a parallel run stalled every
    /// other test's tasks for seconds (QUIC handshakes and idle timers timed out).
    static func start(arguments: [String] = []) async throws -> OTLPReceiver {
        let receiver = try OTLPReceiver(arguments: arguments)
        let portFile = receiver.directory.appendingPathComponent("port").path
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            if let text = try? String(contentsOfFile: portFile, encoding: .utf8), let value = Int(text) {
                receiver.port = value
                return receiver
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        receiver.stop()
        throw ReceiverError(message: "OTLP receiver did not start (python3 with opentelemetry-proto installed?)")
    }

    private init(arguments: [String]) throws {
        scheme = arguments.contains("--tls-cert") ? "https" : "http"
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("yomo-otlp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let portFile = directory.appendingPathComponent("port").path
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("otlp_receiver.py").path
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, "--port-file", portFile,
                             "--out", directory.appendingPathComponent("received.jsonl").path] + arguments
        process.standardOutput = FileHandle.nullDevice
        try process.run()
    }

    deinit { stop() }

    func stop() {
        if process.isRunning {
            // SIGKILL: the child inherits the test thread's blocked-signal mask,
            // so SIGTERM may never arrive. Poll rather than waitUntilExit, which
            // spins a run loop on this (cooperative) thread.
            kill(process.processIdentifier, SIGKILL)
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning && Date() < deadline { usleep(5_000) }
        }
        try? FileManager.default.removeItem(at: directory)
    }

    func records(type: String) -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: outputPath, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  object["type"] as? String == type else { return nil }
            return object
        }
    }

    var spans: [[String: Any]] { records(type: "span") }
    var requests: [[String: Any]] { records(type: "request") }
    /// Failed TLS handshakes (`--tls-cert`), with the server's reason.
    var tlsErrors: [[String: Any]] { records(type: "tls_error") }

    /// Polls until `condition` holds or `timeout` passes (the receiver is
    /// another process); sleeps without holding a cooperative thread.
    func wait(timeout: Duration = .seconds(10), until condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }
}

struct ReceiverError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// A `[String: String]` carrier standing in for YoMo frame metadata.
typealias Metadata = [String: String]

/// Spans to export directly, so a test can see the error an export throws.
func finishedSpans(_ names: String...) -> [FinishedSpan] {
    let memory = InMemorySpanExporter()
    let tracer = makeProvider(exporter: memory).tracer("direct")
    for name in names { tracer.startSpan(name).end() }
    return memory.spans
}

func makeProvider(
    environment: [String: String] = [:],
    exporter: InMemorySpanExporter,
    serviceName: String = "test-service"
) -> TracerProvider {
    var configuration = TracerProvider.Configuration(environment: environment)
    configuration.serviceName = serviceName
    return TracerProvider(configuration: configuration, processors: [SimpleSpanProcessor(exporter: exporter)])
}

/// The TLS receiver's certificates, made once per test run by
/// `otlp_receiver.py --make-certificates` (certtool): a CA, a server
/// certificate for 127.0.0.1 and a client certificate signed by it, and an
/// unrelated CA.
struct TestCertificates: Sendable {
    let directory: String
    var ca: String { directory + "/ca.pem" }
    var otherCA: String { directory + "/other-ca.pem" }
    var serverCertificate: String { directory + "/server.pem" }
    var serverKey: String { directory + "/server.key" }
    var clientCertificate: String { directory + "/client.pem" }
    var clientKey: String { directory + "/client.key" }

    /// Receiver arguments: HTTPS, and with `requireClientCertificate` mutual TLS.
    func receiverArguments(requireClientCertificate: Bool = false) -> [String] {
        ["--tls-cert", serverCertificate, "--tls-key", serverKey] + (requireClientCertificate ? ["--tls-client-ca", ca] : [])
    }

    static let shared: TestCertificates = {
        let directory = NSTemporaryDirectory() + "yomo-otlp-certs-\(getpid())"
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("otlp_receiver.py").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, "--make-certificates", directory]
        try! process.run()
        // Polled: waitUntilExit spins a run loop on this (cooperative) thread.
        while process.isRunning { usleep(10_000) }
        precondition(process.terminationStatus == 0, "certtool (gnutls-bin) failed to make the test certificates")
        return TestCertificates(directory: directory)
    }()
}

/// 300 ended spans of one scope, each with a listed and a mapped attribute:
/// enough to fill several encoder blocks.
func finishedNumberedSpans(scope: String) -> InMemorySpanExporter {
    let exporter = InMemorySpanExporter()
    let tracer = makeProvider(exporter: exporter).tracer(scope)
    for index in 0..<300 {
        let span = tracer.startSpan("span \(index)")
        span.setAttribute("index", .int64(Int64(index)))
        span.attributes["name"] = "n\(index)"
        span.end()
    }
    return exporter
}
