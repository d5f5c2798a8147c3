import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import Testing
import YoMoQUIC
import YoMoWire

@testable import YoMo

/// The `yomo` executable built beside the tests.
func yomoExecutable() throws -> URL { try builtExecutable("yomo") }

/// A product of the package (`yomo`, `uppercase-sfn`) built beside the tests.
func builtExecutable(_ name: String) throws -> URL {
    let candidates = [
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name),
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".build/debug/\(name)"),
    ]
    guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
        throw YoMoError(.invalidConfiguration, "\(name) executable not found (build all products first): \(candidates.map(\.path))")
    }
    return found
}

/// Waits for a child process without blocking a thread of the cooperative pool
/// (`waitUntilExit` would hold one, starving other tests on a 2-core machine).
func waitForExit(_ process: Process) async {
    while process.isRunning { try? await Task.sleep(for: .milliseconds(5)) }
}

/// Starts `yomo` with `arguments`; the task returns all it printed (stdout) once it ends.
func startYomo(_ arguments: [String]) throws -> (process: Process, output: Task<String, Never>) {
    let process = Process()
    process.executableURL = try yomoExecutable()
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    try process.run()
    return (process, Task.detached { await readToEnd(pipe) })
}

/// All that `pipe` carries until its writers close it, read on a plain thread:
/// a blocking read must not hold a thread of the cooperative pool.
func readToEnd(_ pipe: Pipe) async -> String {
    let data = await withCheckedContinuation { (continuation: CheckedContinuation<Data, Never>) in
        Thread.detachNewThread { continuation.resume(returning: pipe.fileHandleForReading.readDataToEndOfFile()) }
    }
    return String(decoding: data, as: UTF8.self)
}

/// The environment of a `yomo serve` the tests start: its default stateless
/// reset key and functions file go under `stateDirectory`, not into the
/// user's `~/.local/state` (one file per random port otherwise).
func zipperEnvironment(_ extra: [String: String] = [:], stateDirectory: String = zipperStateDirectory()) -> [String: String] {
    ProcessInfo.processInfo.environment
        .merging(["XDG_STATE_HOME": stateDirectory]) { $1 }
        .merging(extra) { $1 }
}

/// A state directory no other zipper of the tests has. `yomo serve` keeps
/// its functions file and held frames file by port there (`zipper-<port>.functions`),
/// and a random port is sometimes one an earlier test's zipper had: shared,
/// the next zipper on it held frames for that test's functions, and gave it
/// that test's held frames. Until the fifty-eighth round of issue 14 the
/// tests shared one: the source's frames were held for a function of an
/// earlier test too, and a test waiting for the source to keep fewer waited
/// in vain (`closeGivesBackWhatTheZipperHoldsCopiesOf`), or past the hold's
/// 5 s, which then dropped what a closing function gave back
/// (`givenBackBacklogOutlivesAZipperCrash`): a few times in ten runs of
/// their suites side by side.
func zipperStateDirectory() -> String {
    NSTemporaryDirectory() + "swift-yomo-tests-state/zipper-" + UUID().uuidString
}

/// Starts `yomo serve --host 127.0.0.1` with `arguments` and `environment`
/// (over `zipperEnvironment()`); the task returns what it wrote to stderr (its
/// log, or why it stopped) once it ends, and removes the state directory
/// it had unless `environment` named one.
func startServe(_ arguments: [String], environment: [String: String] = [:]) throws -> (process: Process, errors: Task<String, Never>) {
    let process = Process()
    process.executableURL = try yomoExecutable()
    process.arguments = ["serve", "--host", "127.0.0.1"] + arguments
    let stateDirectory = zipperStateDirectory()
    process.environment = zipperEnvironment(environment, stateDirectory: stateDirectory)
    let errors = Pipe()
    process.standardError = errors
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    let ownsState = environment["XDG_STATE_HOME"] == nil
    return (process, Task.detached {
        let said = await readToEnd(errors)
        if ownsState { try? FileManager.default.removeItem(atPath: stateDirectory) }
        return said
    })
}

/// A stream function in a process of its own (the `uppercase-sfn` example:
/// 0x33 upper-cased into 0x34), so that a test can freeze or kill it.
/// `pipe`: its pipe handler (in the order received) instead of its async
/// handler; `handlerDelayMs`: each handler waits that long before it answers.
func startFunctionProcess(zipper: String, pipe: Bool = false, handlerDelayMs: Int? = nil) throws -> Process {
    let process = Process()
    process.executableURL = try builtExecutable("uppercase-sfn")
    process.arguments = ["--zipper", zipper] + (pipe ? ["--pipe"] : []) + (handlerDelayMs.map { ["--handler-delay-ms", "\($0)"] } ?? [])
    process.standardError = FileHandle.nullDevice
    try process.run()
    return process
}

/// A port for a server a test starts later (a `yomo serve`, or a zipper
/// given its peer's port first): free now, and no other socket of these tests
/// is given it. It is below the kernel's ephemeral range, from which every
/// client's socket and every server on port 0 takes its port: a port from
/// there, free a moment ago, was once a source's by the time the zipper bound
/// it ("Address already in use"), or a killed zipper's by its restart. Each
/// test process walks the range from its own start, one port after another.
func freePort() async throws -> Int {
    for _ in 0..<1000 {
        let port = TestPorts.next()
        if let probe = try? await QUICServer.bind(host: "127.0.0.1", port: port) {
            await probe.close()
            return port
        }
    }
    throw YoMoError(.invalidConfiguration, "no free UDP port below the ephemeral range in 1,000 tries")
}

enum TestPorts {
    /// The kernel's lowest ephemeral port (`ip_local_port_range`); 32768 if unread.
    static let ephemeralLow: Int = {
        let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        return text.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } ?? 32768
    }()
    /// Ports from 20000 (fewer if the ephemeral range starts lower) up to it.
    static let range: Range<Int> = {
        let low = min(20000, max(1024, ephemeralLow - 4096))
        return low..<ephemeralLow
    }()
    /// Where this process starts: another test process starts elsewhere.
    private static let start = Int(getpid()) &* 2_654_435_761 % range.count
    private static let taken = Atomic<Int>(0)

    static func next() -> Int {
        let index = taken.add(1, ordering: .relaxed).oldValue
        return range.lowerBound + (start + index) % range.count
    }
}

@Suite("Connection life", .serialized)
struct LifecycleTests {
    @Test("a killed and restarted zipper: the stream function reconnects and serves again")
    func reconnect() async throws {
        let zipper = try await ZipperProcess(port: try await freePort())
        let address = zipper.address

        var quic = QUICConfiguration.default
        quic.idleTimeout = .seconds(3)
        let reconnectFast = ReconnectPolicy(initialDelay: .milliseconds(200), maximumDelay: .seconds(1))
        let received = Inbox<String>()
        let lost = Inbox<YoMoError>()
        let sfn = StreamFunction(
            name: "survivor", zipper: address,
            options: .init(observedTags: [0x33], quic: quic, reconnect: reconnectFast, retryConnect: true))
        sfn.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        sfn.setErrorHandler { lost.append($0) }
        try await sfn.connect()

        func sendUntilReceived(_ text: String) async throws -> Bool {
            let source = Source(name: "source", zipper: address, options: .init(quic: quic, reconnect: reconnectFast, retryConnect: true))
            try await source.connect()
            defer { Task { await source.close() } }
            // The function may still be reconnecting: write until it sees one.
            for _ in 0..<100 {
                try await source.write(tag: 0x33, data: Array(text.utf8))
                for _ in 0..<20 {
                    if received.items.contains(text) { return true }
                    try await Task.sleep(for: .milliseconds(5))
                }
            }
            return false
        }

        #expect(try await sendUntilReceived("before"))
        // A hard kill: no CONNECTION_CLOSE, as when a machine dies.
        await zipper.kill()
        try await zipper.restart()
        #expect(try await sendUntilReceived("after"))
        #expect(lost.items.contains { $0.code == .notConnected }, "the lost connection is reported: \(lost.items)")
        #expect(sfn.endReason == nil, "still serving")
        await sfn.close()
        await zipper.kill()
    }

    @Test("a second zipper on a port in use exits saying so, and the first keeps its clients")
    func portInUse() async throws {
        let zipper = try await ZipperProcess(port: try await freePort())
        let received = Inbox<String>()
        let lost = Inbox<YoMoError>()
        let sfn = StreamFunction(name: "first", zipper: zipper.address, options: .init(observedTags: [0x33], retryConnect: true))
        sfn.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        sfn.setErrorHandler { lost.append($0) }
        try await sfn.connect()
        let source = Source(name: "source", zipper: zipper.address)
        try await source.connect()
        #expect(try await writeUntilReceived(source, tag: 0x33, "before", received))

        let (second, said) = try startServe(["--port", "\(zipper.port)", "--stateless-reset-key-file", "none"])
        let exited = await eventually(within: .seconds(20)) { !second.isRunning }
        if !exited { second.terminate() }
        #expect(exited, "the second zipper ran on the port in use")
        #expect(exited && second.terminationStatus != 0)
        let text = await said.value
        #expect(text.contains("bind 127.0.0.1:\(zipper.port): Address already in use"), "\(text)")

        // The first zipper's connections were not taken over: frames still flow,
        // on the same connections.
        #expect(try await writeUntilReceived(source, tag: 0x33, "after", received))
        #expect(lost.items.isEmpty, "\(lost.items)")
        await source.close()
        await sfn.close()
        await zipper.kill()
    }

    @Test("the tests' zipper processes: a start that cannot listen throws what the zipper said, rather than leaving clients to redial; ports for them come from below the ephemeral range, never twice")
    func zipperProcessStartFails() async throws {
        let busy = try await QUICServer.bind(host: "127.0.0.1", port: try await freePort())
        let error = await #expect(throws: YoMoError.self) { try await ZipperProcess(port: busy.port) }
        #expect(error?.message.contains("bind 127.0.0.1:\(busy.port): Address already in use") == true, "\(String(describing: error))")
        await busy.close()
        var ports: [Int] = []
        for _ in 0..<20 { ports.append(try await freePort()) }
        #expect(Set(ports).count == ports.count)
        #expect(ports.allSatisfy { $0 < TestPorts.ephemeralLow })
    }

    @Test("a zipper on an IPv6 address writes it in brackets, in its address and its log lines, and serves clients there")
    func ipv6Address() async throws {
        let records = Inbox<String>()
        let logger = Logger(label: "test.zipper") { _ in CapturingLogHandler(lines: records) }
        let zipper = Zipper(configuration: ZipperConfiguration(host: "::1", port: 0), options: .init(logger: logger))
        try await zipper.start()
        let address = try #require(zipper.address)
        #expect(address.hasPrefix("[::1]:"), "\(address)")
        let listening = records.items.first { $0.contains("zipper listening") } ?? ""
        #expect(listening.contains("zipper_addr=\(address)"), "\(listening)")
        let source = Source(name: "v6", zipper: address)
        try await source.connect()
        #expect(zipper.connectionCount == 1)
        await source.close()
        await zipper.close()
    }

    @Test("a connect() that fails says it could not connect, not that a connection was lost")
    func connectFailureWording() async throws {
        let port = try await freePort()
        let source = Source(name: "s", zipper: "127.0.0.1:\(port)")
        let error = await #expect(throws: YoMoError.self) { try await source.connect() }
        #expect(error?.code == .notConnected)
        #expect(error?.message.hasPrefix("cannot connect to zipper 127.0.0.1:\(port): ") == true, "\(String(describing: error))")
        #expect(source.endReason?.message == error?.message)
    }

    @Test("with redialsAfterZipperShutdown off, a zipper that shuts down ends its clients with that reason, as Go's do")
    func listenerShutdownEndsLikeGo() async throws {
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0))
        try await zipper.start()
        let goLike = ReconnectPolicy(redialsAfterZipperShutdown: false)
        let sfn = StreamFunction(name: "f", zipper: try #require(zipper.address), options: .init(observedTags: [1], reconnect: goLike))
        sfn.setHandler { _ in }
        try await sfn.connect()
        await zipper.close()
        #expect(await eventually(within: .seconds(10)) { sfn.endReason != nil })
        #expect(sfn.endReason?.code == .listenerShutdown, "\(String(describing: sfn.endReason))")
        #expect(sfn.endReason?.message.contains("zipper shutting down") == true, "\(String(describing: sfn.endReason))")
        await sfn.wait()  // returns at once: the function has ended
    }

    @Test("a zipper that shuts down and starts again on its port: its function redials and serves, its error handler told why")
    func listenerShutdownIsRedialled() async throws {
        let port = try await freePort()
        let configuration = ZipperConfiguration(host: "127.0.0.1", port: port)
        let first = Zipper(configuration: configuration)
        try await first.start()
        let received = Inbox<String>()
        let errors = Inbox<YoMoError>()
        let sfn = StreamFunction(name: "f", zipper: "127.0.0.1:\(port)", options: .init(observedTags: [0x21]))
        sfn.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        sfn.setErrorHandler { errors.append($0) }
        try await sfn.connect()
        await first.close()
        #expect(await errors.wait(for: 1))
        #expect(errors.items.first?.code == .listenerShutdown, "\(errors.items)")
        #expect(sfn.endReason == nil, "\(String(describing: sfn.endReason))")

        let second = Zipper(configuration: configuration)
        try await second.start()
        #expect(await eventually { second.connectionCount == 1 }, "the function came back")
        let source = Source(name: "s", zipper: "127.0.0.1:\(port)")
        try await source.connect()
        try await source.write(tag: 0x21, data: Array("after".utf8))
        #expect(await received.wait(for: 1))
        #expect(received.items == ["after"])
        await source.close()
        await sfn.close()
        await second.close()
    }

    @Test("close lets in-flight handlers finish and their writes reach the zipper")
    func gracefulClose() async throws {
        try await withZipper { address, _ in
            let started = Inbox<Int>()
            let slow = StreamFunction(name: "slow", zipper: address, options: .init(observedTags: [0x10]))
            slow.setHandler { ctx in
                started.append(1)
                try await Task.sleep(for: .milliseconds(300))
                try await ctx.write(tag: 0x11, data: ctx.data)
            }
            try await slow.connect()
            let results = Inbox<[UInt8]>()
            let observer = StreamFunction(name: "observer", zipper: address, options: .init(observedTags: [0x11]))
            observer.setHandler { ctx in results.append(ctx.data) }
            try await observer.connect()
            let source = Source(name: "source", zipper: address)
            try await source.connect()
            for value: UInt8 in 1...5 { try await source.write(tag: 0x10, data: [value]) }
            #expect(await started.wait(for: 5))
            await slow.close()  // while all five handlers sleep
            #expect(await results.wait(for: 5))
            #expect(Set(results.items) == [[1], [2], [3], [4], [5]])
            let error = await #expect(throws: YoMoError.self) { try await slow.write(tag: 0x11, data: [9]) }
            #expect(error?.code == .closed)
            await source.close()
            await observer.close()
        }
    }

    @Test("the initializer runs once before the first frame; if it throws, connect fails")
    func initializer() async throws {
        try await withZipper { address, _ in
            let runs = Inbox<Int>()
            let sfn = StreamFunction(name: "model", zipper: address, options: .init(observedTags: [0x20]))
            sfn.setInit { runs.append(1) }
            sfn.setHandler { _ in #expect(runs.count == 1) }
            try await sfn.connect()
            #expect(runs.count == 1)
            await sfn.close()

            struct ModelMissing: Error {}
            let broken = StreamFunction(name: "broken", zipper: address, options: .init(observedTags: [0x20]))
            broken.setInit { throw ModelMissing() }
            broken.setHandler { _ in }
            let error = await #expect(throws: YoMoError.self) { try await broken.connect() }
            #expect(error?.code == .initializerFailed)
            #expect(error?.message.contains("ModelMissing") == true)
        }
    }

    @Test("the handler concurrency limit holds, and unlimited handlers run concurrently")
    func concurrencyLimit() async throws {
        try await withZipper { address, _ in
            for (limit, expectedPeak) in [(2, 2), (nil, 8)] as [(Int?, Int)] {
                let running = Mutex((now: 0, peak: 0))
                let done = Inbox<Int>()
                let sfn = StreamFunction(name: "busy", zipper: address, options: .init(observedTags: [0x30], handlerConcurrency: limit))
                sfn.setHandler { _ in
                    running.withLock { $0.now += 1; $0.peak = max($0.peak, $0.now) }
                    try await Task.sleep(for: .milliseconds(100))
                    running.withLock { $0.now -= 1 }
                    done.append(1)
                }
                try await sfn.connect()
                let source = Source(name: "source", zipper: address)
                try await source.connect()
                for _ in 0..<8 { try await source.write(tag: 0x30, data: [0]) }
                #expect(await done.wait(for: 8))
                #expect(running.withLock { $0.peak } == expectedPeak, "limit \(String(describing: limit))")
                await source.close()
                await sfn.close()
            }
        }
    }

    @Test("a cron handler runs on its schedule and can write")
    func cron() async throws {
        try await withZipper { address, _ in
            let ticks = Inbox<String>()
            let observer = StreamFunction(name: "observer", zipper: address, options: .init(observedTags: [0x90]))
            observer.setHandler { ctx in ticks.append(String(decoding: ctx.data, as: UTF8.self)) }
            try await observer.connect()
            let ticker = StreamFunction(name: "ticker", zipper: address)
            try ticker.setCronHandler("@every 100ms") { ctx in try await ctx.write(tag: 0x90, data: Array("tick".utf8)) }
            try await ticker.connect()
            #expect(await ticks.wait(for: 3, timeout: .seconds(10)))
            await ticker.close()
            await observer.close()
            #expect(throws: YoMoError.self) { try ticker.setCronHandler("@every soon") { _ in } }
        }
    }

    @Test("a stream function runs in a ServiceGroup and stops on graceful shutdown")
    func serviceGroup() async throws {
        try await withZipper { address, _ in
            let sfn = StreamFunction(name: "service", zipper: address, options: .init(observedTags: [0x33]))
            sfn.setHandler { _ in }
            let group = ServiceGroup(services: [sfn], gracefulShutdownSignals: [], logger: Logger(label: "test"))
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try await group.run() }
                let clock = ContinuousClock()
                let deadline = clock.now.advanced(by: .seconds(10))
                while sfn.client.isConnected == false, clock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
                #expect(sfn.client.isConnected)
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
            }
            #expect(sfn.endReason?.code == .closed)
        }
    }

    @Test("a stream function in a ServiceGroup stops on graceful shutdown while its zipper never answers",
          arguments: ["refused", "silent"])
    func serviceGroupWhileDialling(zipper: String) async throws {
        let silent = try SilentUDPPeer()
        // A closed port (ICMP unreachable), or an address that drops every packet.
        let address = zipper == "refused" ? "127.0.0.1:\(try await freePort())" : "127.0.0.1:\(silent.port)"
        let lines = Inbox<String>()
        var options = StreamFunction.Options(observedTags: [0x33], retryConnect: true)
        options.logger = Logger(label: "test.sfn") { _ in CapturingLogHandler(lines: lines) }
        let sfn = StreamFunction(name: "service", zipper: address, options: options)
        sfn.setHandler { _ in }
        let group = ServiceGroup(services: [sfn], gracefulShutdownSignals: [], logger: Logger(label: "test"))
        let outcome = Mutex<Result<Void, any Error>?>(nil)
        let running = Task {
            do { try await group.run(); outcome.withLock { $0 = .success(()) } } catch { outcome.withLock { $0 = .failure(error) } }
        }
        // Shut down while it dials: its first Initial arrived, or a dial failed.
        if zipper == "silent" {
            await silent.nextDatagram()
        } else {
            #expect(await eventually { lines.items.contains { $0.contains("cannot connect to zipper, retrying") } })
        }
        await group.triggerGracefulShutdown()
        // Before, run() went on redialling: the group never returned.
        let ended = await eventually(within: .seconds(20)) { outcome.withLock { $0 != nil } }
        #expect(ended, "the group still runs 20 s after its graceful shutdown")
        if !ended { running.cancel() }
        #expect(throws: Never.self) { try outcome.withLock { $0 }?.get() }
        #expect(sfn.endReason?.code == .closed, "\(String(describing: sfn.endReason))")
    }
}
