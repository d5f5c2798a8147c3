import Foundation
import Logging
import NIOCore
import Synchronization
import Testing
import YoMoMetrics
import YoMoQUIC
import YoMoTracing
import YoMoWire

@testable import YoMo

/// A `yomo serve` child process on a fixed port, so that it can be killed and
/// started again where its clients look for it. Its start and each restart
/// return once it listens, or throw with what it last logged: a zipper that
/// never came up left its tests' clients redialling until CI's limit.
final class ZipperProcess {
    let port: Int
    /// Flags beyond host and port, kept for a restart.
    let arguments: [String]
    let environment: [String: String]
    /// Its `XDG_STATE_HOME`, its own and kept across restarts (`zipperStateDirectory`).
    let stateDirectory: String
    private let ownsStateDirectory: Bool
    private(set) var process: Process
    /// What the running process logged, read as it comes (a full pipe would stop it).
    private var log: OutputTail
    /// Whether the running process was told to stop (it may exit 0 after SIGTERM).
    private var stopAsked = false

    /// `environment`: variables set for the zipper on top of the test's own.
    init(port: Int, arguments: [String] = [], environment: [String: String] = [:]) async throws {
        self.port = port
        self.arguments = arguments
        ownsStateDirectory = environment["XDG_STATE_HOME"] == nil
        stateDirectory = environment["XDG_STATE_HOME"] ?? zipperStateDirectory()
        // Its "zipper listening" line is how a start is known to have worked.
        let quiet = ["warning", "error", "critical"].contains(environment["YOMO_LOG_LEVEL"] ?? ProcessInfo.processInfo.environment["YOMO_LOG_LEVEL"] ?? "")
        self.environment = environment.merging(["XDG_STATE_HOME": stateDirectory].merging(quiet ? ["YOMO_LOG_LEVEL": "info"] : [:]) { $1 }) { $1 }
        (process, log) = try Self.launch(port: port, arguments: arguments, environment: self.environment)
        try await untilListening()
    }

    var address: String { "127.0.0.1:\(port)" }

    private static func launch(port: Int, arguments: [String], environment: [String: String]) throws -> (Process, OutputTail) {
        let process = Process()
        process.executableURL = try yomoExecutable()
        process.arguments = ["serve", "--host", "127.0.0.1", "--port", "\(port)"] + arguments
        process.environment = zipperEnvironment(environment)
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return (process, OutputTail(reading: errors, marker: "zipper listening"))
    }

    private func untilListening() async throws {
        _ = await eventually(within: .seconds(30)) { log.sawMarker || !process.isRunning }
        guard !log.sawMarker else { return }
        let ended = process.isRunning ? "did not listen within 30 s" : "exited (\(exitDescription))"
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        throw YoMoError(.invalidConfiguration, "yomo serve on port \(port) \(ended); its last lines:\n\(log.lines.joined(separator: "\n"))")
    }

    private var exitDescription: String {
        process.terminationReason == .exit ? "status \(process.terminationStatus)" : "signal \(process.terminationStatus)"
    }

    /// A zipper that ended on its own (a crash, a fatal error) fails its test
    /// with what it said, rather than being taken for one the test stopped.
    private func expectNotEndedOnItsOwn(_ sourceLocation: SourceLocation) {
        // A test may also signal its pid itself.
        guard !process.isRunning, !stopAsked else { return }
        let signalled = process.terminationReason == .uncaughtSignal && [SIGKILL, SIGTERM, SIGINT].contains(process.terminationStatus)
        if !signalled {
            Issue.record("yomo serve on port \(port) ended on its own (\(exitDescription)); its last lines:\n\(log.lines.joined(separator: "\n"))",
                         sourceLocation: sourceLocation)
        }
    }

    /// A hard kill: no CONNECTION_CLOSE, as when a machine dies.
    func kill(sourceLocation: SourceLocation = #_sourceLocation) async {
        expectNotEndedOnItsOwn(sourceLocation)
        stopAsked = true
        Foundation.kill(process.processIdentifier, SIGKILL)
        await waitForExit(process)
    }

    func restart(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        expectNotEndedOnItsOwn(sourceLocation)
        (process, log) = try Self.launch(port: port, arguments: arguments, environment: environment)
        stopAsked = false
        try await untilListening()
    }

    /// SIGTERM, as a service manager stops it: a graceful close.
    func terminate(sourceLocation: SourceLocation = #_sourceLocation) async {
        expectNotEndedOnItsOwn(sourceLocation)
        stopAsked = true
        process.terminate()
        await waitForExit(process)
    }

    deinit {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        if ownsStateDirectory { try? FileManager.default.removeItem(atPath: stateDirectory) }
    }
}

/// What a child process writes to a pipe, read on a plain thread as it comes
/// so that the child never blocks on a full pipe: its last 60 lines, and
/// whether a line with `marker` came.
final class OutputTail: Sendable {
    private struct State {
        var lines: [String] = []
        var sawMarker = false
    }
    private let state = Mutex(State())

    init(reading pipe: Pipe, marker: String) {
        let handle = pipe.fileHandleForReading
        // Kept alive by its reader until the child's end closes the pipe.
        Thread.detachNewThread { [self] in
            var pending = Data()
            while case let chunk = handle.availableData, !chunk.isEmpty {
                pending.append(chunk)
                // The whole lines of what came, then what is left of the last one.
                var lineStart = pending.startIndex
                while let newline = pending[lineStart...].firstIndex(of: UInt8(ascii: "\n")) {
                    let line = String(decoding: pending[lineStart..<newline], as: UTF8.self)
                    lineStart = newline + 1
                    state.withLock {
                        if line.contains(marker) { $0.sawMarker = true }
                        $0.lines.append(line)
                        if $0.lines.count > 60 { $0.lines.removeFirst() }
                    }
                }
                pending = Data(pending[lineStart...])
            }
        }
    }

    var sawMarker: Bool { state.withLock { $0.sawMarker } }
    var lines: [String] { state.withLock { $0.lines } }
}

/// Log records as text lines, for asserting what a client logged.
struct CapturingLogHandler: LogHandler {
    let lines: Inbox<String>
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        lines.append("\(event.level) \(event.message) \(merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
    }
}

/// Writes `text` on `tag` until `received` holds it, at most 200 times, each
/// followed by a wait of up to `every`: while routes come up or a client
/// redials, a single frame may find no observer. False if it never arrived.
/// Writes `text` until `received` holds it (or `expecting`, what a function
/// in between makes of it).
func writeUntilReceived(
    _ source: Source, tag: UInt32, _ text: String, _ received: Inbox<String>, expecting: String? = nil,
    every: Duration = .milliseconds(100)
) async throws -> Bool {
    for _ in 0..<200 {
        try await source.write(tag: tag, data: Array(text.utf8))
        if await eventually(within: every, { received.items.contains(expecting ?? text) }) { return true }
    }
    return false
}

extension ReconnectPolicy {
    /// Redials 50 ms after a loss, then every 100–200 ms: back first after a restart.
    static let redialsAtOnce = ReconnectPolicy(
        firstRetryDelay: .milliseconds(50) ... .milliseconds(50), initialDelay: .milliseconds(100), maximumDelay: .milliseconds(200))
    /// Redials 2 s after a loss, then every second: back last after a restart.
    static let redialsLate = ReconnectPolicy(firstRetryDelay: .seconds(2) ... .seconds(2), initialDelay: .seconds(1), maximumDelay: .seconds(1))
}

/// Waits (polling, with an upper bound) until `condition` holds.
func eventually(within timeout: Duration = .seconds(20), _ condition: () -> Bool) async -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: timeout)
    while clock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return condition()
}

/// `eventually` for a condition that waits itself (a scrape of /metrics):
/// checked every 20 ms.
func eventuallyAsync(within timeout: Duration = .seconds(20), _ condition: () async -> Bool) async -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: timeout)
    while clock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return await condition()
}

@Suite("Faults: zipper loss, restart and shutdown", .serialized)
struct FaultTests {
    @Test("frames written while the zipper is away arrive once, in order, after it returns; a full or disabled buffer throws")
    func outageBuffer() async throws {
        let zipper = try await ZipperProcess(port: try await freePort())
        var quic = QUICConfiguration.default
        quic.idleTimeout = .seconds(3)

        let received = Inbox<String>()
        let sinkLost = Inbox<YoMoError>()
        let sink = StreamFunction(
            name: "sink", zipper: zipper.address,
            options: .init(observedTags: [0x33], quic: quic, retryConnect: true, handlerConcurrency: 1))
        sink.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        sink.setErrorHandler { sinkLost.append($0) }
        try await sink.connect()

        // The held source redials only after 3 s, so the sink (default policy) is
        // back first and the held frames have somewhere to go.
        let slow = ReconnectPolicy(
            firstRetryDelay: .seconds(3) ... .seconds(3), initialDelay: .seconds(3), maximumDelay: .seconds(3))
        let logs = Inbox<String>()
        let logger = Logger(label: "test.sources") { _ in CapturingLogHandler(lines: logs) }
        // The sources' outage buffers on /metrics too.
        let meters = MeterProvider(configuration: .init(serviceName: "sources", environment: [:]))
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: meters)
        defer { Task { await endpoint.close() } }
        func metric(_ name: String, source: String) async -> Double? {
            let page = await httpGet("http://127.0.0.1:\(endpoint.port)/metrics")?.body ?? ""
            return seriesValue(page, name, labels: ["yomo_source_name=\"\(source)\""])
        }
        func source(_ name: String, frames: Int = 1000) -> (Source, Inbox<YoMoError>) {
            let lost = Inbox<YoMoError>()
            let source = Source(
                name: name, zipper: zipper.address,
                options: .init(
                    quic: quic, logger: logger, reconnect: slow, retryConnect: true, outageBufferFrames: frames, meterProvider: meters))
            source.setErrorHandler { lost.append($0) }
            return (source, lost)
        }
        let (held, heldLost) = source("held")
        let (unbuffered, unbufferedLost) = source("unbuffered", frames: 0)
        let (small, smallLost) = source("small", frames: 3)
        for client in [held, unbuffered, small] { try await client.connect() }

        // Routes are up once one frame made it through.
        #expect(try await writeUntilReceived(held, tag: 0x33, "before", received))
        // A later "before" may still be in flight when an earlier one arrived: the
        // source would then resend it after the restart (at least once), which the
        // counts below do not expect. The loss comes once the zipper has them all,
        // and has said (a delivery receipt) that the function has them.
        #expect(await eventually { held.client.unacknowledgedBytesForTesting == 0 && held.client.keptFrames == 0 })

        await zipper.kill()
        for lost in [sinkLost, heldLost, unbufferedLost, smallLost] {
            #expect(await eventually { lost.count > 0 }, "each client notices the loss")
        }

        let outage = (0..<50).map { "outage-\($0)" }
        for text in outage { try await held.write(tag: 0x33, data: Array(text.utf8)) }
        #expect(held.outageStatistics.pendingFrames == 50)

        let disabled = await #expect(throws: YoMoError.self) { try await unbuffered.write(tag: 0x33, data: [1]) }
        #expect(disabled?.code == .notConnected)
        #expect(disabled?.message.contains("outage buffer is disabled") == true, "\(String(describing: disabled))")

        for value: UInt8 in 0..<3 { try await small.write(tag: 0x35, data: [value]) }
        for value: UInt8 in 3..<5 {
            let full = await #expect(throws: YoMoError.self) { try await small.write(tag: 0x35, data: [value]) }
            #expect(full?.code == .outageBufferFull)
        }
        #expect(small.outageStatistics.buffered == 3)
        #expect(small.outageStatistics.dropped == 2)
        #expect(await metric("yomo_client_outage_dropped_messages_total", source: "small") == 2)
        #expect(await metric("yomo_client_outage_held_messages", source: "small") == 3)
        #expect(await metric("yomo_client_outage_held_messages", source: "held") == 50)
        #expect((await metric("yomo_client_outage_held_size_bytes", source: "held") ?? 0) > 50 * 8)
        #expect(await metric("yomo_client_outage_dropped_messages_total", source: "unbuffered") == 1)

        let clock = ContinuousClock()
        try await zipper.restart()
        let restarted = clock.now
        #expect(await eventually(within: .seconds(10)) { sink.client.isConnected })
        let sinkBack = clock.now - restarted
        // The first redial came 50–250 ms after the loss, later ones at most ~1.2 s apart.
        #expect(sinkBack < .milliseconds(2500), "the sink was back \(sinkBack) after the restart")

        #expect(await eventually { held.client.isConnected })
        try await held.write(tag: 0x33, data: Array("after".utf8))
        #expect(await eventually { received.items.contains("after") })
        // The stream is ordered: a duplicate would have come before "after".
        #expect(received.items.filter { $0.hasPrefix("outage-") } == outage)
        let index = received.items.firstIndex(of: "after")
        #expect(received.items.lastIndex(of: "outage-49").map { $0 < index! } == true, "held frames go before later writes")
        #expect(held.outageStatistics == {
            var expected = OutageStatistics()
            expected.buffered = 50
            expected.delivered = 50
            return expected
        }())
        #expect(await metric("yomo_client_outage_held_messages", source: "held") == 0)
        #expect(await metric("yomo_client_outage_dropped_messages_total", source: "held") == 0)
        // One line when holding starts, one on delivery with the count, one per
        // burst of refused writes: not one per frame.
        func lines(_ text: String, of client: Source) -> [String] {
            logs.items.filter { $0.contains(text) && $0.contains("source_id=\(client.client.clientIDBase)") }
        }
        #expect(lines("holding writes until reconnected", of: held).count == 1)
        #expect(lines("delivered the frames written while disconnected", of: held).map { $0.contains("delivered=50") } == [true])
        #expect(lines("dropping writes while reconnecting", of: small).count == 1, "\(logs.items)")
        #expect(lines("dropping writes while reconnecting", of: unbuffered).count == 1)
        print("measurement: sink reconnected \(sinkBack) after the zipper restart")

        for client in [held, unbuffered, small] { await client.close() }
        await sink.close()
        let afterClose = await #expect(throws: YoMoError.self) { try await held.write(tag: 0x33, data: [0]) }
        #expect(afterClose?.code == .closed)
        await zipper.kill()
    }

    @Test("a frame whose write returns just after the client took its dead connection's unacknowledged frames is sent again, not lost")
    func writeRacingTheConnectionsEnd() async throws {
        let zipper = try await ZipperProcess(port: try await freePort())
        let received = Inbox<String>()
        let sink = StreamFunction(name: "sink", zipper: zipper.address, options: .init(observedTags: [0x35], retryConnect: true))
        sink.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await sink.connect()
        let fast = ReconnectPolicy.redialsAtOnce
        let source = Source(name: "writer", zipper: zipper.address, options: .init(reconnect: fast, retryConnect: true))
        try await source.connect()
        #expect(try await writeUntilReceived(source, tag: 0x35, "before", received))
        // Between the next write's return and its record: the zipper dies and
        // the source's serving loop takes what its connection left unacknowledged.
        let pid = zipper.process.processIdentifier
        source.client.setAfterWriteHookForTesting {
            kill(pid, SIGKILL)
            _ = await eventually { source.client.reconnectCountForTesting > 0 }
        }
        try await source.write(tag: 0x35, data: Array("raced".utf8))
        #expect(source.client.reconnectCountForTesting > 0, "the connection ended inside the write")
        await waitForExit(zipper.process)
        try await zipper.restart()
        #expect(await eventually { received.items.contains("raced") }, "\(received.items)")
        await source.close()
        await sink.close()
        await zipper.kill()
    }

    @Test("a frame queued on a connection that ended under its write is not refused by a full outage buffer: it may have reached the zipper, and it arrives")
    func queuedWriteIsNotRefused() async throws {
        let zipper = try await ZipperProcess(port: try await freePort())
        let received = Inbox<String>()
        let sink = StreamFunction(name: "sink", zipper: zipper.address, options: .init(observedTags: [0x35], retryConnect: true))
        sink.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await sink.connect()
        let source = Source(
            name: "writer", zipper: zipper.address, options: .init(reconnect: .redialsAtOnce, retryConnect: true, outageBufferFrames: 1))
        try await source.connect()
        #expect(try await writeUntilReceived(source, tag: 0x35, "before", received))
        // Between the next write's return and its record: the zipper dies, the
        // source takes what its connection left, and other writes fill the
        // outage buffer (what the connection left may have filled it already).
        let pid = zipper.process.processIdentifier
        let fillers = Inbox<String>()
        source.client.setAfterWriteHookForTesting {
            kill(pid, SIGKILL)
            _ = await eventually { source.client.reconnectCountForTesting > 0 }
            for index in 0..<5 {
                guard (try? await source.write(tag: 0x35, data: Array("filler-\(index)".utf8))) != nil else { return }
                fillers.append("filler-\(index)")
            }
        }
        // Before, it was refused (`outageBufferFull`) though queued.
        await #expect(throws: Never.self) { try await source.write(tag: 0x35, data: Array("raced".utf8)) }
        #expect(fillers.count < 5, "the outage buffer was full")
        #expect(source.outageStatistics.pendingFrames == 2, "held past the limit of one: \(source.outageStatistics)")
        await waitForExit(zipper.process)
        try await zipper.restart()
        #expect(await eventually { Set(received.items).isSuperset(of: fillers.items + ["raced"]) }, "\(received.items)")
        await source.close()
        await sink.close()
        await zipper.kill()
    }

    @Test("a zipper that shuts down first: wait() returns after the function's own tracer provider exported every span")
    func spansFlushedBeforeWaitReturns() async throws {
        let receiver = try await SpanReceiver.start()
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0), options: .init(logger: Logger(label: "test.zipper")))
        try await zipper.start()
        let address = try #require(zipper.address)

        let handled = Inbox<Int>()
        // Ends with the zipper, as Go's clients do, so that wait() returns.
        let sfn = StreamFunction(
            name: "flushed-sfn", zipper: address,
            options: .init(observedTags: [0x50], reconnect: ReconnectPolicy(redialsAfterZipperShutdown: false)))
        // A provider the function makes itself from the environment (it owns it);
        // the default 5 s schedule delay: nothing is exported before shutdown.
        sfn.setEnvironmentForTesting(["OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint])
        sfn.setHandler { _ in handled.append(1) }
        try await sfn.connect()
        let source = Source(name: "source", zipper: address, options: .init(tracerProvider: .noop))
        try await source.connect()
        for value in 0..<200 { try await source.write(tag: 0x50, data: Array("\(value)".utf8)) }
        #expect(await handled.wait(for: 200))
        await source.close()

        await zipper.close()
        await sfn.wait()
        let spans = receiver.spans().filter {
            ($0["resource"] as? [String: Any])?["service.name"] as? String == "flushed-sfn"
        }
        #expect(spans.count == 200, "spans at the receiver when wait() returned")
        #expect(sfn.endReason?.code == .listenerShutdown)
    }

    @Test("a zipper closing the connection with a reason: endReason, the error handler and the log line carry it")
    func closeReason() async throws {
        let server = try await QUICServer.bind(host: "127.0.0.1", port: 0)
        // A stand-in zipper: acknowledges the handshake, and once the client has
        // written a frame, closes with YoMo's code and a reason.
        let serving = Task {
            for await connection in server.connections {
                let frames = QUICFrameConnection(connection)
                var reader = frames.frames.makeAsyncIterator()
                guard case .handshake? = try? await reader.next() else { continue }
                _ = try? await frames.write(.handshakeAck)
                guard case .data? = try? await reader.next() else { continue }
                await frames.close(errorCode: QUICError.yomoCloseCode, reason: "zipper draining for maintenance")
            }
        }
        defer { serving.cancel() }

        let lines = Inbox<String>()
        let errors = Inbox<YoMoError>()
        let logger = Logger(label: "test.sfn") { _ in CapturingLogHandler(lines: lines) }
        let sfn = StreamFunction(name: "told", zipper: "127.0.0.1:\(server.port)", options: .init(observedTags: [1], logger: logger))
        sfn.setHandler { _ in }
        sfn.setErrorHandler { errors.append($0) }
        try await sfn.connect()
        try await sfn.write(tag: 2, data: [1])
        await sfn.wait()

        let reason = try #require(sfn.endReason)
        #expect(reason.code == .closedByPeer)
        #expect(reason.message.contains("zipper draining for maintenance"), "\(reason)")
        #expect(errors.items.contains { $0.message.contains("zipper draining for maintenance") }, "\(errors.items)")
        #expect(lines.items.contains { $0.contains("connection to zipper ended") && $0.contains("zipper draining for maintenance") }, "\(lines.items)")
        await server.close()
    }

    @Test("yomo bench refuses a --rate that is not a positive number of frames per second")
    func benchRateValidation() async throws {
        for rate in ["0", "nan", "inf"] {
            let process = Process()
            process.executableURL = try yomoExecutable()
            process.arguments = ["bench", "--zipper", "127.0.0.1:9", "--rate", rate]
            let errorOutput = Pipe()
            process.standardOutput = FileHandle.nullDevice
            process.standardError = errorOutput
            try process.run()
            await waitForExit(process)
            let text = String(decoding: errorOutput.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(process.terminationStatus != 0, "--rate \(rate) was accepted")
            #expect(text.contains("--rate must be a positive number"), "\(text)")
        }
    }

    @Test("yomo bench --timeout bounds the run while the in-flight window is full, and prints lost=N")
    func benchTimeout() async throws {
        try await withZipper { address, _ in
            let process = Process()
            process.executableURL = try yomoExecutable()
            process.arguments = ["bench", "--zipper", address, "--frames", "500", "--inflight", "8", "--timeout", "2"]
            let output = Pipe()
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            let clock = ContinuousClock()
            let started = clock.now
            try process.run()
            let exited = await eventually(within: .seconds(30)) { !process.isRunning }
            if !exited { kill(process.processIdentifier, SIGKILL) }
            await waitForExit(process)
            let elapsed = clock.now - started
            #expect(exited, "bench ignored --timeout 2 (killed after 30 s)")
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(text.contains("frames=500 ") && text.contains("lost=500"), "\(text)")
            #expect(process.terminationStatus == 1)
            print("measurement: bench --timeout 2 took \(elapsed)")
        }
    }
}
