// Fault figures for docs/reliability.md: fan-out memory at hundreds of
// observers, reconnect time after a zipper restart, zipper memory per idle
// connection. Each runs `yomo serve` as a child process (the build's own, or
// --yomo) on a free loopback port, so its RSS is the zipper's alone.
//
//   swift run -c release yomo-fault-bench fanout --observers 300 --frames 1000 --size 64
//   swift run -c release yomo-fault-bench reconnect --rounds 3
//   swift run -c release yomo-fault-bench reconnect --graceful --rounds 5 --interval-microseconds 200
//   swift run -c release yomo-fault-bench idle --connections 500
//   swift run -c release yomo-fault-bench backlog --frames 4000 --size 65536
//   swift run -c release yomo-fault-bench function --restart-after-ms 1000 --rounds 3
//   swift run -c release yomo-fault-bench function --graceful [--async-handler] --rounds 5 --restart-after-ms 500 --interval-microseconds 500
//   swift run -c release yomo-fault-bench flood --rate 2000 --duration 10
//   swift run -c release yomo-fault-bench flood --rate 2000 --duration 10 --probe-delay-ms 10
//   swift run -c release yomo-fault-bench storm --clients 1000
import ArgumentParser
import Foundation
import Logging
import Synchronization
import YoMo
import YoMoQUIC

@main
struct FaultBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "yomo-fault-bench",
        abstract: "Fault and memory figures of the zipper and its clients.",
        subcommands: [Fanout.self, Fanin.self, Reconnect.self, Idle.self, Backlog.self, Held.self, Function.self, Flood.self, Storm.self, Chaos.self])
}

struct ZipperOptions: ParsableArguments {
    @Option(help: "The yomo executable (default: beside this one).") var yomo: String?
    @Option(help: "UDP port for the zipper.") var port = 19_400
    @Option(help: "Slow-consumer policy of the zipper.") var slowConsumer = "block"
    @Flag(help: "Pass no flags newer than the first release (to run an older yomo as the baseline).") var baseline = false
}

/// `yomo serve` as a child process.
final class ZipperProcess: @unchecked Sendable {
    let process = Process()
    let port: Int

    init(_ options: ZipperOptions, keyFile: String, extraArguments: [String] = []) throws {
        port = options.port
        let yomo = options.yomo ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("yomo").path
        process.executableURL = URL(fileURLWithPath: yomo)
        process.arguments = ["serve", "--host", "127.0.0.1", "--port", "\(port)"]
            + (options.baseline ? [] : ["--slow-consumer", options.slowConsumer, "--stateless-reset-key-file", keyFile]) + extraArguments
            // More flags for the zipper, split at spaces: `--congestion-control cubic`.
            + (ProcessInfo.processInfo.environment["FAULT_BENCH_ZIPPER_ARGS"]?.split(separator: " ").map(String.init) ?? [])
        process.standardError = appendingLog(named: "FAULT_BENCH_ZIPPER_LOG")
        process.standardOutput = FileHandle.nullDevice
        try process.run()
    }

    var address: String { "127.0.0.1:\(port)" }

    /// Resident and peak resident set, in MiB, from /proc.
    var memory: (rss: Double, peak: Double) {
        let status = processStatus("\(process.processIdentifier)")
        return (status("VmRSS:"), status("VmHWM:"))
    }

    /// CPU time the zipper used so far (user and system), from /proc/PID/stat.
    var cpuSeconds: Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/stat", encoding: .utf8),
              let afterName = stat.lastIndex(of: ")") else { return 0 }
        // Fields after the name: state is the 3rd of the line, utime and stime the 14th and 15th.
        let fields = stat[stat.index(after: afterName)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    func kill() {
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
    }
}

/// The file the environment variable `variable` names, for a child's
/// stderr, appended to: a restarted process's lines follow its
/// predecessor's. Without the variable, nowhere.
func appendingLog(named variable: String) -> FileHandle? {
    guard let log = ProcessInfo.processInfo.environment[variable] else { return FileHandle.nullDevice }
    // O_APPEND: every process started on the file writes at its end. Until
    // the fifty-first round of issue 14 each wrote from where the end was
    // when it started, over the others' lines: the zippers' log was garbled
    // and lost lines (a downstream's whole close, in one run).
    let descriptor = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
    guard descriptor >= 0 else { return nil }
    return FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
}

/// Waits until `condition` holds, polling; false after `timeout`.
/// Whether `pid` is a zombie (exited, not yet reaped) or gone.
func hasExited(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return true }
    // pid (comm) state ...: comm may hold spaces and parentheses, so read after the last ')'.
    guard let close = stat.lastIndex(of: ")") else { return false }
    return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
}

func waitUntil(_ timeout: Duration, _ condition: () -> Bool) async -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: timeout)
    while clock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(2))
    }
    return condition()
}

func quietOptions(tags: [UInt32] = []) -> StreamFunction.Options {
    var options = StreamFunction.Options(observedTags: tags)
    options.logger = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }
    options.retryConnect = true
    return options
}

func keyFile() -> String { NSTemporaryDirectory() + "yomo-fault-bench-\(getpid()).key" }

/// Waits until the zipper answers a handshake.
func waitForZipper(_ address: String) async throws {
    for _ in 0..<500 {
        let probe = Source(name: "probe", zipper: address, options: quietOptions())
        if (try? await probe.connect()) != nil {
            await probe.close()
            return
        }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw ValidationError("zipper at \(address) did not come up")
}

struct Fanout: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "N observers of one tag; a source writes M frames; zipper RSS before, at peak, after.")
    @OptionGroup var zipperOptions: ZipperOptions
    @Option var observers = 300
    @Option var frames = 1000
    @Option var size = 64
    @Option var rounds = 3

    func run() async throws {
        let zipper = try ZipperProcess(zipperOptions, keyFile: keyFile())
        defer { zipper.stop() }
        try await waitForZipper(zipper.address)
        let idle = zipper.memory.rss
        print("zipper idle rss=\(String(format: "%.1f", idle)) MiB")
        for round in 1...rounds {
            let received = Atomic<Int>(0)
            var sfns: [StreamFunction] = []
            for index in 0..<observers {
                let sfn = StreamFunction(name: "observer-\(index)", zipper: zipper.address, options: quietOptions(tags: [0x40]))
                sfn.setHandler { _ in received.add(1, ordering: .relaxed) }
                try await sfn.connect()
                sfns.append(sfn)
            }
            let source = Source(name: "fanout-source", zipper: zipper.address, options: quietOptions())
            try await source.connect()
            let payload = [UInt8](repeating: 0x61, count: size)
            let sampler = Task {
                var peak = 0.0
                while !Task.isCancelled {
                    peak = max(peak, zipper.memory.rss)
                    try? await Task.sleep(for: .milliseconds(20))
                }
                return peak
            }
            let clock = ContinuousClock()
            let started = clock.now
            for _ in 0..<frames { try await source.write(tag: 0x40, data: payload) }
            let expected = observers * frames
            let complete = await waitUntil(.seconds(120)) { received.load(ordering: .relaxed) >= expected }
            let elapsed = seconds(clock.now - started)
            sampler.cancel()
            let peak = await sampler.value
            await source.close()
            for sfn in sfns { await sfn.close() }
            // The zipper's closing periods (3 PTO) end, then it trims its heap.
            try await Task.sleep(for: .seconds(3))
            let after = zipper.memory.rss
            print(String(
                format: "round=%d observers=%d frames=%d size=%d delivered=%d/%d complete=%@ deliveries_per_s=%.0f rss_peak=%.1f MiB rss_after=%.1f MiB",
                round, observers, frames, size, received.load(ordering: .relaxed), expected, complete ? "yes" : "no",
                Double(received.load(ordering: .relaxed)) / elapsed, peak, after))
        }
    }
}

struct Fanin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N sources write to one stream function whose handlers stall: the zipper's RSS while they wait (what it holds per source), and once they are served.")
    @OptionGroup var zipperOptions: ZipperOptions
    @Option var sources = 100
    @Option var size = 16_384
    @Option(help: "Milliseconds the function's handlers stall while the sources write.") var stallMilliseconds = 3000

    func run() async throws {
        let zipper = try ZipperProcess(zipperOptions, keyFile: keyFile())
        defer { zipper.stop() }
        try await waitForZipper(zipper.address)
        let idle = zipper.memory.rss
        let gate = Gate()
        let received = Atomic<Int>(0)
        var options = quietOptions(tags: [0x42])
        // Small, so that the function stops reading soon and the zipper's own buffers show.
        options.maximumHandlerBytes = 1 << 20
        let sfn = StreamFunction(name: "stalled", zipper: zipper.address, options: options)
        sfn.setHandler { _ in
            await gate.wait()
            received.add(1, ordering: .relaxed)
        }
        try await sfn.connect()
        var clients: [Source] = []
        for index in 0..<sources {
            let source = Source(name: "fanin-\(index)", zipper: zipper.address, options: quietOptions())
            try await source.connect()
            clients.append(source)
        }
        final class Writers: Sendable {
            let written = Atomic<Int>(0)
            let stop = Atomic<Bool>(false)
        }
        let shared = Writers()
        let payload = [UInt8](repeating: 0x62, count: size)
        var writers: [Task<Void, Never>] = []
        for source in clients {
            writers.append(Task {
                while !shared.stop.load(ordering: .relaxed) {
                    guard (try? await source.write(tag: 0x42, data: payload)) != nil else { break }
                    shared.written.add(1, ordering: .relaxed)
                }
            })
        }
        // Writes stop returning once every window on the way is full.
        var stalledFor = 0
        var lastWritten = -1
        while stalledFor < stallMilliseconds {
            try await Task.sleep(for: .milliseconds(100))
            stalledFor += 100
            let now = shared.written.load(ordering: .relaxed)
            if now == lastWritten, stalledFor >= 1000 { break }
            lastWritten = now
        }
        let stalled = zipper.memory.rss
        let writtenWhileStalled = shared.written.load(ordering: .relaxed)
        shared.stop.store(true, ordering: .relaxed)
        let clock = ContinuousClock()
        let opened = clock.now
        let timeline = Task {
            while !Task.isCancelled, ProcessInfo.processInfo.environment["FANIN_TIMELINE"] != nil {
                FileHandle.standardError.write(Data(String(format: "t=%.2f s rss=%.1f MiB delivered=%d\n", seconds(clock.now - opened), zipper.memory.rss, received.load(ordering: .relaxed)).utf8))
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
        gate.open()
        for writer in writers { await writer.value }
        let expected = shared.written.load(ordering: .relaxed)
        let complete = await waitUntil(.seconds(120)) { received.load(ordering: .relaxed) >= expected }
        let drained = seconds(clock.now - opened)
        timeline.cancel()
        let peak = zipper.memory.peak
        for source in clients { await source.close() }
        await sfn.close()
        print(String(
            format: "sources=%d size=%d written_while_stalled=%d (%.1f MiB) delivered=%d/%d complete=%@ rss_idle=%.1f MiB rss_stalled=%.1f MiB per_source=%.2f MiB rss_peak=%.1f MiB drained_in=%.1f s",
            sources, size, writtenWhileStalled, Double(writtenWhileStalled * size) / 1_048_576, received.load(ordering: .relaxed), expected,
            complete ? "yes" : "no", idle, stalled, (stalled - idle) / Double(sources), peak, drained))
    }
}

/// Ascending sequences as runs: "3-7, 9".
func ranges(_ sorted: [Int]) -> [String] {
    var runs: [String] = []
    var start = sorted.first ?? 0
    var last = start
    for value in sorted.dropFirst() + [Int.min] {
        if value == last + 1 { last = value; continue }
        runs.append(start == last ? "\(start)" : "\(start)-\(last)")
        start = value
        last = value
    }
    return sorted.isEmpty ? [] : runs
}

struct Reconnect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "kill -9 (or SIGTERM, --graceful) and restart the zipper while a source writes (every 10 ms by default): time until frames flow again, frames lost.")
    @OptionGroup var zipperOptions: ZipperOptions
    @Option var rounds = 3
    @Option(help: "Microseconds between the source's writes.") var intervalMicroseconds = 10_000
    @Flag(help: "Stop the zipper with SIGTERM (a graceful shutdown, as a rolling restart does) instead of kill -9.") var graceful = false
    @Flag(help: "The source asks for no delivery receipts: it keeps a frame only until the zipper's QUIC stack acknowledged it.") var noReceipts = false
    @Option(help: ArgumentHelp(
        "Run a mesh of two zippers, the source on one, the function on the other, and kill the upstream (the source's) or the downstream (the function's); the other, on the next port, lives on.",
        valueName: "upstream|downstream")) var mesh: MeshRole?

    enum MeshRole: String, ExpressibleByArgument { case upstream, downstream }

    func run() async throws {
        let key = keyFile()
        // With --mesh: the zipper that lives on, on the next port; the killed one forwards to it or is forwarded to.
        var stableOptions = zipperOptions
        stableOptions.port = zipperOptions.port + 1
        let killedArguments: [String]
        var stable: ZipperProcess?
        switch mesh {
        case nil: killedArguments = []
        case .upstream:
            killedArguments = ["--name", "a", "--mesh", "b=127.0.0.1:\(stableOptions.port)"]
            stable = try ZipperProcess(stableOptions, keyFile: key + ".b", extraArguments: ["--name", "b"])
        case .downstream:
            killedArguments = ["--name", "b"]
            stable = try ZipperProcess(stableOptions, keyFile: key + ".a", extraArguments: ["--name", "a", "--mesh", "b=127.0.0.1:\(zipperOptions.port)"])
        }
        defer { stable?.stop() }
        if let stable { try await waitForZipper(stable.address) }
        var zipper = try ZipperProcess(zipperOptions, keyFile: key, extraArguments: killedArguments)
        try await waitForZipper(zipper.address)
        // Where each client connects: with a mesh, the source upstream and the function downstream.
        let sourceZipper = mesh == .downstream ? stable!.address : zipper.address
        let functionZipper = mesh == .upstream ? stable!.address : zipper.address
        let received = Mutex<Set<Int>>([])
        let lastReceivedAt = Mutex<ContinuousClock.Instant?>(nil)
        let clock = ContinuousClock()
        let sfn = StreamFunction(name: "survivor", zipper: functionZipper, options: quietOptions(tags: [0x41]))
        sfn.setHandler { ctx in
            if let sequence = Int(String(decoding: ctx.data, as: UTF8.self)) {
                _ = received.withLock { $0.insert(sequence) }
                lastReceivedAt.withLock { $0 = clock.now }
            }
        }
        try await sfn.connect()
        var sourceOptions = quietOptions()
        sourceOptions.deliveryReceipts = !noReceipts
        let source = Source(name: "writer", zipper: sourceZipper, options: sourceOptions)
        // When the source learnt that its connection was gone.
        let sourceLostAt = Mutex<ContinuousClock.Instant?>(nil)
        source.setErrorHandler { _ in sourceLostAt.withLock { $0 = clock.now } }
        try await source.connect()
        let written = Mutex<[(sequence: Int, at: ContinuousClock.Instant)]>([])
        let writer = Task {
            var sequence = 0
            while !Task.isCancelled {
                sequence += 1
                if (try? await source.write(tag: 0x41, data: Array("\(sequence)".utf8))) != nil {
                    written.withLock { $0.append((sequence, clock.now)) }
                }
                try? await Task.sleep(for: .microseconds(intervalMicroseconds))
            }
        }
        var blindWrites: [Int] = []
        for round in 1...rounds {
            _ = await waitUntil(.seconds(10)) { lastReceivedAt.withLock { $0 }.map { clock.now - $0 < .milliseconds(50) } ?? false }
            sourceLostAt.withLock { $0 = nil }
            if graceful { zipper.stop() } else { zipper.kill() }
            let killedAt = clock.now
            try await Task.sleep(for: .milliseconds(200))
            zipper = try ZipperProcess(zipperOptions, keyFile: key, extraArguments: killedArguments)
            let restartedAt = clock.now
            let back = await waitUntil(.seconds(30)) { lastReceivedAt.withLock { $0 }.map { $0 > restartedAt } ?? false }
            let backAt = lastReceivedAt.withLock { $0 } ?? clock.now
            func ms(_ d: Duration) -> Int { Int(d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000) }
            // Writes that returned success into the dead connection, before the
            // source noticed: the frames that could be lost without a word.
            let noticed = sourceLostAt.withLock { $0 } ?? backAt
            let blind = written.withLock { $0.filter { $0.at > killedAt && $0.at < noticed }.map(\.sequence) }
            blindWrites += blind
            print("round=\(round) back=\(back ? "yes" : "no") frames_again_after_restart_ms=\(ms(backAt - restartedAt)) outage_ms=\(ms(backAt - killedAt)) source_noticed_after_kill_ms=\(ms(noticed - killedAt)) written_ok_unnoticed=\(blind.count)")
        }
        writer.cancel()
        _ = await writer.value
        // Until everything written arrived, or nothing more did for 2 s.
        var lastCount = -1
        while received.withLock({ $0.count }) != lastCount {
            lastCount = received.withLock { $0.count }
            _ = await waitUntil(.seconds(2)) { received.withLock { $0.count } >= written.withLock { $0.count } }
        }
        let reported = written.withLock { $0.count }
        let missing = written.withLock { $0.map(\.sequence) }.filter { !received.withLock { $0 }.contains($0) }
        // Of the writes that returned into a dead connection before the source noticed, those that never arrived.
        let silentlyLost = blindWrites.filter { !received.withLock { $0 }.contains($0) }.count
        print("written_ok=\(reported) received=\(received.withLock { $0.count }) lost=\(missing.count) silently_lost=\(silentlyLost) receipts=\(noReceipts ? "no" : "yes")\(mesh.map { " mesh_killed=\($0)" } ?? "")\(stable.map { String(format: " surviving_zipper_peak_rss=%.1f MiB", $0.memory.peak) } ?? "")")
        if !missing.isEmpty { print("lost sequences: \(ranges(missing).prefix(20).joined(separator: ", "))") }
        await source.close()
        await sfn.close()
        zipper.stop()
        for file in [key, key + ".a", key + ".b"] { try? FileManager.default.removeItem(atPath: file) }
    }
}

struct Function: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "kill -9 (or SIGTERM, --graceful) a stream function (uppercase-sfn) and start it again while a source writes (every 10 ms by default): frames it never turned into output.")
    @OptionGroup var zipperOptions: ZipperOptions
    @Option(help: "The uppercase-sfn executable (default: beside this one).") var function: String?
    @Option var rounds = 3
    @Option(help: "How long the function is away before it starts again.") var restartAfterMs = 1000
    @Option(help: "The zipper's unrouted_hold duration (`yomo serve --unrouted-hold`); none: its default.") var hold: String?
    @Option(help: "Microseconds between the source's writes.") var intervalMicroseconds = 10_000
    @Flag(help: "Stop the function with SIGTERM (a graceful close, as a rolling restart does) instead of kill -9.") var graceful = false
    @Flag(help: "Run uppercase-sfn with its async handler instead of its pipe handler.") var asyncHandler = false
    @Option(help: "Each of the function's handlers waits this long before it answers (uppercase-sfn --handler-delay-ms): frames in its handlers when it is killed.") var handlerDelayMs = 0

    func run() async throws {
        let key = keyFile()
        defer { try? FileManager.default.removeItem(atPath: key) }
        let zipper = try ZipperProcess(zipperOptions, keyFile: key, extraArguments: hold.map { ["--unrouted-hold", $0] } ?? [])
        defer { zipper.stop() }
        try await waitForZipper(zipper.address)
        let executable = function ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("uppercase-sfn").path
        func startFunction() throws -> Process {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = ["--zipper", zipper.address, "--observe", "0x41", "--emit", "0x42"] + (asyncHandler ? [] : ["--pipe"])
                + (handlerDelayMs > 0 ? ["--handler-delay-ms", "\(handlerDelayMs)"] : [])
            process.standardError = FileHandle.nullDevice
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            return process
        }
        var process = try startFunction()
        let received = Mutex<Set<Int>>([])
        // Answers that came more than once: a frame the function handled twice.
        let duplicates = Mutex(0)
        let sink = StreamFunction(name: "sink", zipper: zipper.address, options: quietOptions(tags: [0x42]))
        sink.setHandler { ctx in
            if let sequence = Int(String(decoding: ctx.data, as: UTF8.self)), !received.withLock({ $0.insert(sequence).inserted }) {
                duplicates.withLock { $0 += 1 }
            }
        }
        try await sink.connect()
        let source = Source(name: "writer", zipper: zipper.address, options: quietOptions())
        try await source.connect()
        let written = Mutex(0)
        let writer = Task {
            while !Task.isCancelled {
                let sequence = written.withLock { $0 } + 1
                guard (try? await source.write(tag: 0x41, data: Array("\(sequence)".utf8))) != nil else { continue }
                written.withLock { $0 = sequence }
                try? await Task.sleep(for: .microseconds(intervalMicroseconds))
            }
        }
        for round in 1...rounds {
            let flowing = await waitUntil(.seconds(10)) { received.withLock { $0.contains(written.withLock { $0 } - 5) } }
            let before = written.withLock { $0 }
            kill(process.processIdentifier, graceful ? SIGTERM : SIGKILL)
            process.waitUntilExit()
            try await Task.sleep(for: .milliseconds(restartAfterMs))
            process = try startFunction()
            let restartedAt = written.withLock { $0 }
            _ = await waitUntil(.seconds(30)) { received.withLock { $0.contains(restartedAt + 20) } }
            let after = written.withLock { $0 }
            let missing = received.withLock { got in (before...after).filter { !got.contains($0) }.count }
            print("round=\(round) flowing_before=\(flowing ? "yes" : "no") written_around_the_kill=\(after - before + 1) missing=\(missing)")
        }
        writer.cancel()
        _ = await writer.value
        let total = written.withLock { $0 }
        _ = await waitUntil(.seconds(5)) { received.withLock { $0.contains(total) } }
        let missing = received.withLock { got in (1...total).filter { !got.contains($0) } }
        print("written=\(total) missing=\(missing.count)\(missing.isEmpty ? "" : " \(missing.prefix(20))") duplicates=\(duplicates.withLock { $0 })")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        await source.close()
        await sink.close()
    }
}

struct Idle: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Zipper RSS per idle connected client.")
    @OptionGroup var zipperOptions: ZipperOptions
    @Option var connections = 500

    func run() async throws {
        let zipper = try ZipperProcess(zipperOptions, keyFile: keyFile())
        defer { zipper.stop() }
        try await waitForZipper(zipper.address)
        try await Task.sleep(for: .milliseconds(500))
        let before = zipper.memory.rss
        var sources: [Source] = []
        for index in 0..<connections {
            let source = Source(name: "idle-\(index)", zipper: zipper.address, options: quietOptions())
            try await source.connect()
            sources.append(source)
        }
        try await Task.sleep(for: .seconds(2))
        let after = zipper.memory.rss
        print(String(format: "connections=%d rss_before=%.1f MiB rss_after=%.1f MiB per_connection=%.1f KiB",
                     connections, before, after, (after - before) * 1024 / Double(connections)))
        for source in sources { await source.close() }
        try await Task.sleep(for: .seconds(2))
        print(String(format: "after the clients left: rss=%.1f MiB", zipper.memory.rss))
    }
}

/// A process's `/proc/<process>/status` read once: each kB field asked for,
/// in MiB (0 when missing).
func processStatus(_ process: String) -> (String) -> Double {
    let status = (try? String(contentsOfFile: "/proc/\(process)/status", encoding: .utf8)) ?? ""
    return { name in
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(name) }) else { return 0 }
        return Double(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0").map { $0 / 1024 } ?? 0
    }
}

/// This process's resident set, in MiB.
func ownRSS() -> Double { processStatus("self")("VmRSS:") }

/// A duration in seconds.
func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

/// Opens once; every waiter, before or after, goes on.
final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { continuation in
            let open = state.withLock { state in
                if !state.open { state.waiters.append(continuation) }
                return state.open
            }
            if open { continuation.resume() }
        }
    }

    func open() {
        for waiter in state.withLock({ state in defer { state.waiters = [] }; state.open = true; return state.waiters }) {
            waiter.resume()
        }
    }
}

struct Backlog: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A stream function whose async handlers stall while a source writes: what the function holds, in frames and RSS.")
    @OptionGroup var zipperOptions: ZipperOptions
    @Option var frames = 4000
    @Option var size = 65536
    @Option(help: "The function's maximumHandlerBytes in bytes; 0: unbounded.") var maximumHandlerBytes = -1
    @Flag(help: "A pipe handler that waits on its first frame, instead of async handlers that each wait.") var pipe = false
    @Option(help: "Stalled functions of different names, each observing every frame (the zipper's memory under a stalled fan-out).")
    var functions = 1

    func run() async throws {
        let zipper = try ZipperProcess(zipperOptions, keyFile: keyFile())
        defer { zipper.stop() }
        try await waitForZipper(zipper.address)
        let gate = Gate()
        let counts = HandlerCounts()
        var options = quietOptions(tags: [0x40])
        if maximumHandlerBytes >= 0 { options.maximumHandlerBytes = maximumHandlerBytes == 0 ? nil : maximumHandlerBytes }
        var sfns: [StreamFunction] = []
        for index in 0..<functions {
            let sfn = StreamFunction(name: index == 0 ? "stalled" : "stalled-\(index)", zipper: zipper.address, options: options)
            stall(sfn, gate: gate, counts: counts)
            try await sfn.connect()
            sfns.append(sfn)
        }
        let source = Source(name: "backlog-source", zipper: zipper.address, options: quietOptions())
        try await source.connect()
        try await Task.sleep(for: .milliseconds(500))
        let zipperCPUBefore = zipper.cpuSeconds
        let before = ownRSS()
        let zipperBefore = zipper.memory.rss
        let payload = [UInt8](repeating: 0x61, count: size)
        let written = Atomic<Int>(0)
        let writer = Task {
            for _ in 0..<frames {
                try await source.write(tag: 0x40, data: payload)
                written.add(1, ordering: .relaxed)
            }
        }
        // Until every frame is in a handler, or nothing moved for 2 s (the functions stopped reading).
        let deliveries = frames * functions
        var peak = before
        var last = -1
        var still = ContinuousClock.now
        while counts.entered.load(ordering: .relaxed) < deliveries {
            peak = max(peak, ownRSS())
            let now = counts.entered.load(ordering: .relaxed) + written.load(ordering: .relaxed)
            if now != last { (last, still) = (now, .now) } else if ContinuousClock.now - still > .seconds(2) { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        peak = max(peak, ownRSS())
        let zipperMemory = zipper.memory
        // Under `--slow-consumer drop`, most of it is spent on frames dropped for the stalled functions.
        let zipperCPU = zipper.cpuSeconds - zipperCPUBefore
        print(String(
            format: "frames=%d size=%d functions=%d maximum_handler_bytes=%@ %@ stalled: handlers=%d written=%d rss_before=%.1f MiB rss_peak=%.1f MiB held=%.1f MiB zipper_rss_before=%.1f MiB zipper_rss=%.1f MiB zipper_peak=%.1f MiB zipper_cpu=%.2f s",
            frames, size, functions, options.maximumHandlerBytes.map { "\($0)" } ?? "none", pipe ? "pipe" : "async", counts.entered.load(ordering: .relaxed),
            written.load(ordering: .relaxed), before, peak, peak - before, zipperBefore, zipperMemory.rss, zipperMemory.peak, zipperCPU))
        let clock = ContinuousClock()
        let released = clock.now
        gate.open()
        try await writer.value
        let complete = await waitUntil(.seconds(120)) { counts.finished.load(ordering: .relaxed) >= deliveries }
        print(String(format: "released: handled=%d/%d complete=%@ in %.2f s", counts.finished.load(ordering: .relaxed), deliveries,
                     complete ? "yes" : "no", seconds(clock.now - released)))
        await source.close()
        for sfn in sfns { await sfn.close() }
    }

    private func stall(_ sfn: StreamFunction, gate: Gate, counts: HandlerCounts) {
        if pipe {
            sfn.setPipeHandler { input, _ in
                for await _ in input {
                    counts.entered.add(1, ordering: .relaxed)
                    await gate.wait()
                    counts.finished.add(1, ordering: .relaxed)
                }
            }
        } else {
            sfn.setHandler { _ in
                counts.entered.add(1, ordering: .relaxed)
                await gate.wait()
                counts.finished.add(1, ordering: .relaxed)
            }
        }
    }
}

/// Handlers entered and finished, across functions.
final class HandlerCounts: Sendable {
    let entered = Atomic<Int>(0)
    let finished = Atomic<Int>(0)
}

struct Held: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A source writes N small frames of a tag no function observes, in the zipper's first minute: the zipper holds them for one (unrouted_hold); its RSS before and after, against the hold's 16 MiB.")
    @OptionGroup var zipperOptions: ZipperOptions
    @Option var frames = 200_000
    @Option var size = 8

    func run() async throws {
        // Held long enough that none expires during the run.
        let zipper = try ZipperProcess(zipperOptions, keyFile: keyFile(), extraArguments: ["--unrouted-hold", "120s"])
        defer { zipper.stop() }
        try await waitForZipper(zipper.address)
        let idle = zipper.memory.rss
        let cpuBefore = zipper.cpuSeconds
        let source = Source(name: "spray", zipper: zipper.address, options: quietOptions())
        try await source.connect()
        let payload = [UInt8](repeating: 0x61, count: size)
        for _ in 0..<frames { try await source.write(tag: 0x71, data: payload) }
        // close() returns once the zipper acknowledged every frame, so routed them (held, or refused by the full hold).
        await source.close()
        try await Task.sleep(for: .milliseconds(500))
        let after = zipper.memory
        print(String(
            format: "frames=%d size=%d zipper rss idle=%.1f MiB after=%.1f MiB (growth %.1f MiB) peak=%.1f MiB cpu=%.2f s",
            frames, size, idle, after.rss, after.rss - idle, after.peak, zipper.cpuSeconds - cpuBefore))
    }
}

struct Flood: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "QUIC dials whose answers go nowhere (Initials from spoofed addresses) at a rate: can an honest source still connect, how long does it take, what does the zipper spend?")
    @OptionGroup var zipperOptions: ZipperOptions
    @Option(help: "Flood dials started per second.") var rate = 2000
    @Option(help: "How long the flood lasts, in seconds.") var duration = 10
    @Option(help: "An honest source dials every this many milliseconds.") var probeIntervalMs = 250
    @Option(help: "The honest source's path delays each datagram this many milliseconds each way (a round trip of twice as much), through a relay: what a Retry's extra round trip costs a dial.")
    var probeDelayMs = 0
    @Flag(help: "Also run a source and a stream function through the zipper, as fast as they go, for --duration before the flood and during it: the data path's rate under the flood.")
    var loop = false

    func run() async throws {
        let zipper = try ZipperProcess(zipperOptions, keyFile: keyFile())
        defer { zipper.stop() }
        try await waitForZipper(zipper.address)
        let dataPath = loop ? try await FloodLoop(zipper: zipper.address) : nil
        let before = try await dataPath?.rate(for: .seconds(duration))
        let relay = try AnswerDroppingRelay(towards: zipper.port)
        defer { relay.stop() }
        let delayed = probeDelayMs > 0 ? try DelayRelay(towards: zipper.port, delay: .milliseconds(probeDelayMs)) : nil
        defer { delayed?.stop() }
        let probeAddress = delayed.map { "127.0.0.1:\($0.port)" } ?? zipper.address
        let cpuBefore = zipper.cpuSeconds
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: .seconds(duration))
        let dials = Atomic<Int>(0)
        let port = relay.port
        // Each dial sends its Initial (and its retransmissions) through the
        // relay, which drops every answer: to the zipper, a spoofed client.
        let flood = Task {
            await withDiscardingTaskGroup { group in
                let interval = Duration.seconds(1) / rate
                var next = clock.now
                while clock.now < end {
                    group.addTask {
                        var quic = QUICConfiguration.default
                        quic.handshakeTimeout = .seconds(1)
                        _ = try? await QUICConnection.connect(host: "127.0.0.1", port: port, configuration: quic)
                    }
                    dials.add(1, ordering: .relaxed)
                    next = next.advanced(by: interval)
                    try? await clock.sleep(until: next)
                }
            }
        }
        let during = Task { try await dataPath?.rate(for: .seconds(duration)) }
        var times: [Double] = []
        var failed = 0
        var peak = 0.0
        while clock.now < end {
            let started = clock.now
            var options = quietOptions()
            options.retryConnect = false
            let probe = Source(name: "honest", zipper: probeAddress, options: options)
            if (try? await probe.connect()) != nil { times.append(seconds(clock.now - started) * 1000) } else { failed += 1 }
            await probe.close()
            peak = max(peak, zipper.memory.rss)
            try await Task.sleep(until: started.advanced(by: .milliseconds(probeIntervalMs)))
        }
        let cpu = zipper.cpuSeconds - cpuBefore
        await flood.value
        if let before, let during = try await during.value {
            print(String(format: "data path: %.0f frames/s before the flood, %.0f during it (%.3f)", before, during, during / before))
        }
        await dataPath?.close()
        times.sort()
        func percentile(_ p: Double) -> Double { times.isEmpty ? 0 : times[min(times.count - 1, Int(Double(times.count) * p))] }
        print(String(
            format: "flood: dials=%d in %d s; answers small (Retry, close)=%d big (handshake)=%d; honest: connected=%d failed=%d dial p50=%.1f ms p90=%.1f ms max=%.1f ms; zipper cpu=%.2f s rss peak=%.1f MiB",
            dials.load(ordering: .relaxed), duration, relay.smallAnswers.load(ordering: .relaxed), relay.bigAnswers.load(ordering: .relaxed),
            times.count, failed, percentile(0.5), percentile(0.9), times.last ?? 0, cpu, peak))
    }
}

/// A UDP socket bound to a free port of 127.0.0.1.
private func boundLoopbackSocket() -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    var address = loopbackAddress(port: 0)
    _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    return fd
}

/// Whether nothing holds UDP `port` of 127.0.0.1 now.
func loopbackPortIsFree(_ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    defer { close(fd) }
    var address = loopbackAddress(port: port)
    return withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
}

private func loopbackAddress(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    return address
}

private func localPort(of fd: Int32) -> Int {
    var local = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: local.sin_port))
}

/// Passes datagrams between its clients and the zipper, each way `delay`
/// later, each client from a back socket of its own (as a NAT does): a path
/// with a round trip of twice `delay` on loopback.
final class DelayRelay: @unchecked Sendable {
    let port: Int
    private let front: Int32
    private let zipper: sockaddr_in
    private let delay: Duration
    private let stopped = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)

    init(towards zipperPort: Int, delay: Duration) throws {
        front = boundLoopbackSocket()
        zipper = loopbackAddress(port: zipperPort)
        self.delay = delay
        port = localPort(of: front)
        Thread.detachNewThread { [self] in run() }
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        done.wait()
        close(front)
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var backs: [UInt16: Int32] = [:]
        var clientOf: [Int32: sockaddr_in] = [:]
        // Datagrams waiting out their delay, in arrival order (one delay for all: also in due order).
        var due: [(at: ContinuousClock.Instant, from: Int32, to: sockaddr_in, bytes: [UInt8])] = []
        let clock = ContinuousClock()
        while !stopped.load(ordering: .relaxed) {
            let now = clock.now
            while let first = due.first, first.at <= now {
                var to = first.to
                _ = withUnsafePointer(to: &to) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(first.from, first.bytes, first.bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
                due.removeFirst()
            }
            var fds = [pollfd(fd: front, events: Int16(POLLIN), revents: 0)] + backs.values.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            let wait = due.first.map { max(0, Int32(($0.at - clock.now).components.attoseconds / 1_000_000_000_000_000) + 1) } ?? 50
            if poll(&fds, nfds_t(fds.count), min(wait, 50)) <= 0 { continue }
            for entry in fds where entry.revents & Int16(POLLIN) != 0 {
                while true {
                    var from = sockaddr_in()
                    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                    let n = withUnsafeMutablePointer(to: &from) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(entry.fd, &buffer, buffer.count, Int32(MSG_DONTWAIT), $0, &length) }
                    }
                    if n <= 0 { break }
                    let at = clock.now.advanced(by: delay)
                    if entry.fd == front {
                        let back = backs[from.sin_port] ?? {
                            let fd = boundLoopbackSocket()
                            backs[from.sin_port] = fd
                            clientOf[fd] = from
                            return fd
                        }()
                        due.append((at, back, zipper, Array(buffer[0..<n])))
                    } else if let client = clientOf[entry.fd] {
                        due.append((at, front, client, Array(buffer[0..<n])))
                    }
                }
            }
        }
        for fd in backs.values { close(fd) }
        done.signal()
    }
}

/// Passes datagrams from its port to the zipper and drops the answers,
/// counting them: those under 200 bytes are Retries (or closes), the rest
/// the zipper's handshake flights.
final class AnswerDroppingRelay: @unchecked Sendable {
    let port: Int
    let smallAnswers = Atomic<Int>(0)
    let bigAnswers = Atomic<Int>(0)
    private let front: Int32
    private let back: Int32
    private let stopped = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)

    init(towards zipperPort: Int) throws {
        let (front, back) = (boundLoopbackSocket(), boundLoopbackSocket())
        (self.front, self.back) = (front, back)
        var zipper = loopbackAddress(port: zipperPort)
        // The back socket sends only to the zipper.
        _ = withUnsafePointer(to: &zipper) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(back, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        port = localPort(of: front)
        Thread.detachNewThread { [self] in run() }
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        done.wait()
        close(front)
        close(back)
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var fds = [front, back].map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        while !stopped.load(ordering: .relaxed) {
            if poll(&fds, 2, 50) <= 0 { continue }
            if fds[0].revents & Int16(POLLIN) != 0 {
                while case let n = recv(front, &buffer, buffer.count, Int32(MSG_DONTWAIT)), n > 0 { _ = send(back, buffer, n, 0) }
            }
            if fds[1].revents & Int16(POLLIN) != 0 {
                while case let n = recv(back, &buffer, buffer.count, Int32(MSG_DONTWAIT)), n > 0 {
                    if n < 200 { smallAnswers.add(1, ordering: .relaxed) } else { bigAnswers.add(1, ordering: .relaxed) }
                }
            }
        }
        done.signal()
    }
}

/// A source writing 64-byte frames to a stream function through the zipper,
/// as fast as backpressure lets it, counting what the function receives.
final class FloodLoop: Sendable {
    private let source: Source
    private let function: StreamFunction
    private let received = Atomic<Int>(0)

    init(zipper: String) async throws {
        function = StreamFunction(name: "flood-loop", zipper: zipper, options: quietOptions(tags: [0x33]))
        source = Source(name: "flood-loop-source", zipper: zipper, options: quietOptions())
        function.setHandler { [self] _ in received.add(1, ordering: .relaxed) }
        try await function.connect()
        try await source.connect()
    }

    /// Frames per second the function received while the source wrote for `duration`.
    func rate(for duration: Duration) async throws -> Double {
        let clock = ContinuousClock()
        let start = received.load(ordering: .relaxed)
        let end = clock.now.advanced(by: duration)
        let payload = [UInt8](repeating: 0x61, count: 64)
        while clock.now < end { try await source.write(tag: 0x33, data: payload) }
        return Double(received.load(ordering: .relaxed) - start) / seconds(duration)
    }

    func close() async {
        await source.close()
        await function.close()
    }
}

struct Storm: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N sources on one host reconnect at once after a zipper restart (SIGTERM; kill -9 with --kill): how long until each has written through the new zipper, and how many gave up.")
    @OptionGroup var zipperOptions: ZipperOptions
    @Option var clients = 1000
    @Flag(help: "kill -9 the zipper instead of SIGTERM.") var kill = false

    func run() async throws {
        let key = keyFile()
        let first = try ZipperProcess(zipperOptions, keyFile: key)
        // Stopped on every way out, as the one after the restart is.
        var zipper = first
        defer { if first.process.isRunning { first.stop() } }
        try await waitForZipper(zipper.address)
        let arrived = Mutex<Set<Int>>([])
        let function = StreamFunction(name: "storm", zipper: zipper.address, options: quietOptions(tags: [0x42]))
        function.setHandler { context in
            if let index = Int(String(decoding: context.data, as: UTF8.self)) { _ = arrived.withLock { $0.insert(index) } }
        }
        try await function.connect()
        let sources = (0..<clients).map { Source(name: "storm-\($0)", zipper: zipper.address, options: quietOptions()) }
        // Fifty at a time: the fleet was up before the restart.
        for batch in stride(from: 0, to: clients, by: 50) {
            try await withThrowingDiscardingTaskGroup { group in
                for source in sources[batch..<min(batch + 50, clients)] { group.addTask { try await source.connect() } }
            }
        }
        if kill { zipper.kill() } else { zipper.stop() }
        try await Task.sleep(for: .milliseconds(200))
        zipper = try ZipperProcess(zipperOptions, keyFile: key)
        defer { zipper.stop() }
        let clock = ContinuousClock()
        let restarted = clock.now
        // Each writes once: held while it redials, delivered once it is back.
        let refused = await withTaskGroup(of: Bool.self) { group in
            for (index, source) in sources.enumerated() {
                group.addTask { (try? await source.write(tag: 0x42, data: Array("\(index)".utf8))) == nil }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        var halfBack: Duration?
        _ = await waitUntil(.seconds(120)) {
            let count = arrived.withLock { $0.count }
            if halfBack == nil && count >= clients / 2 { halfBack = clock.now - restarted }
            return count >= clients
        }
        let elapsed = clock.now - restarted
        let ended = sources.filter { $0.endReason != nil }
        print(String(
            format: "storm: clients=%d %@ back=%d in %.2f s (half in %.2f s) ended_for_good=%d writes_refused=%d zipper cpu=%.2f s rss=%.1f MiB",
            clients, kill ? "kill -9" : "SIGTERM", arrived.withLock { $0.count }, seconds(elapsed),
            halfBack.map(seconds) ?? -1, ended.count, refused, zipper.cpuSeconds, zipper.memory.rss))
        if let first = ended.first?.endReason { print("first ended: \(first)") }
        for source in sources { await source.close() }
        await function.close()
    }
}

struct Chaos: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Faults at random and overlapping (kill -9, SIGTERM and SIGSTOP of the zipper and of a stream function, uppercase-sfn) while a source writes through the function to a sink; once they stop: the frames the sink never received, and those it received twice.")
    @OptionGroup var zipperOptions: ZipperOptions
    @Option(help: "The uppercase-sfn executable (default: beside this one).") var function: String?
    @Option(help: "How long faults go on.") var seconds = 60
    @Option(help: "The random generator's seed (default: from the clock); the same seed draws the same faults at the same moments.") var seed: UInt64?
    @Option(help: "The faults to draw from, comma-separated (default: all; the mesh-* ones with --mesh only).") var faults: String?
    @Option(help: "Microseconds between the source's writes.") var intervalMicroseconds = 10_000
    @Option(help: "After the faults, how long the source's flush may take, and how long the sink may go without a new frame before the missing ones count as lost (a slow function drains its backlog meanwhile).") var settleSeconds = 60
    @Option(help: "The longest a process stays down (killed, stopped) or stopped before it is back; over the idle timeout (5 s), a stopped one loses its connections.") var maxAwayMs = 1500
    @Flag(help: "Run uppercase-sfn with its async handler instead of its pipe handler.") var asyncHandler = false
    @Flag(help: "The sink observes the source's tag itself: uppercase-sfn (still faulted) is off the path.") var direct = false
    @Flag(help: "A mesh of two zippers: the source's (the zipper-* faults) forwards to a second one on the next port (the mesh-* faults), where the function and the sink are.") var mesh = false

    enum Fault: String, CaseIterable {
        case zipperKill = "zipper-kill", zipperTerm = "zipper-term", zipperStop = "zipper-stop"
        case functionKill = "function-kill", functionTerm = "function-term", functionStop = "function-stop"
        case meshKill = "mesh-kill", meshTerm = "mesh-term", meshStop = "mesh-stop"
        var target: Target {
            if rawValue.hasPrefix("zipper") { return .zipper }
            return rawValue.hasPrefix("function") ? .function : .downstream
        }
        var isKill: Bool { [.zipperKill, .functionKill, .meshKill].contains(self) }
        var isStop: Bool { [.zipperStop, .functionStop, .meshStop].contains(self) }
    }

    /// The processes faults hit: the source's zipper, the function, and with
    /// `--mesh` the zipper the source's forwards to.
    enum Target: String, Comparable {
        case zipper, function, downstream = "mesh downstream"
        static func < (a: Target, b: Target) -> Bool { a.rawValue < b.rawValue }
    }

    /// SplitMix64: a seeded generator, so that a run that lost frames can be drawn again.
    struct SeededGenerator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// A child process that a fault may replace: the one running now.
    final class Child: @unchecked Sendable {
        private let current: Mutex<Process>
        private let start: @Sendable () throws -> Process
        init(_ start: @escaping @Sendable () throws -> Process) throws {
            self.start = start
            current = Mutex(try start())
        }
        var pid: Int32 { current.withLock { $0.processIdentifier } }
        func signal(_ signal: Int32) { kill(pid, signal) }
        /// Waits for the exit without blocking a cooperative thread; kill -9 after `limit`.
        func waitForExit(limit: Duration = .seconds(30)) async {
            let process = current.withLock { $0 }
            // A zombie has exited: Foundation may reap it late (seen over 30 s
            // in a busy run, which the bench took for a process that ignored its SIGTERM).
            if !(await waitUntil(limit) { !process.isRunning || hasExited(process.processIdentifier) }) {
                print("pid \(process.processIdentifier) still running \(limit) after its signal: killed")
                if let file = ProcessInfo.processInfo.environment["FAULT_BENCH_STACKS"] {
                    // What it was doing: every thread's stack, appended to FILE (gdb in batch mode).
                    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(process.processIdentifier)/task")) ?? []
                    var signals = "pid \(process.processIdentifier)\n"
                    for task in tasks.sorted() {
                        let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/task/\(task)/status", encoding: .utf8)) ?? ""
                        signals += "task \(task): " + status.split(separator: "\n").filter { $0.hasPrefix("Sig") || $0.hasPrefix("ShdPnd") || $0.hasPrefix("State") || $0.hasPrefix("Name") }.joined(separator: " | ") + "\n"
                    }
                    try? signals.write(toFile: file + ".signals.\(process.processIdentifier)", atomically: true, encoding: .utf8)
                    let gdb = Process()
                    gdb.executableURL = URL(fileURLWithPath: "/usr/bin/gdb")
                    gdb.arguments = ["-p", "\(process.processIdentifier)", "-batch", "-ex", "thread apply all bt"]
                    if !FileManager.default.fileExists(atPath: file) { _ = FileManager.default.createFile(atPath: file, contents: nil) }
                    let handle = FileHandle(forWritingAtPath: file)
                    handle?.seekToEndOfFile()
                    gdb.standardOutput = handle
                    gdb.standardError = handle
                    if (try? gdb.run()) != nil { _ = await waitUntil(.seconds(60)) { !gdb.isRunning } }
                }
                kill(process.processIdentifier, SIGKILL)
                _ = await waitUntil(.seconds(5)) { !process.isRunning }
            }
        }
        func restart() throws { let next = try start(); current.withLock { $0 = next } }
    }

    func run() async throws {
        let drawable = Fault.allCases.filter { mesh || $0.target != .downstream }
        let chosen = try (faults ?? drawable.map(\.rawValue).joined(separator: ",")).split(separator: ",").map { name in
            guard let fault = Fault(rawValue: String(name)), drawable.contains(fault) else {
                throw ValidationError("no fault \(name); one of \(drawable.map(\.rawValue))")
            }
            return fault
        }
        let seed = seed ?? UInt64(Date().timeIntervalSince1970 * 1000)
        var random = SeededGenerator(state: seed)
        let key = keyFile()
        let functionsFile = NSTemporaryDirectory() + "yomo-fault-bench-\(getpid()).functions"
        // The zipper's log, for the drops it announced (its own, when none is asked for).
        let zipperLog = ProcessInfo.processInfo.environment["FAULT_BENCH_ZIPPER_LOG"] ?? NSTemporaryDirectory() + "yomo-fault-bench-\(getpid()).zipper.log"
        setenv("FAULT_BENCH_ZIPPER_LOG", zipperLog, 1)
        defer {
            for file in [key, functionsFile, functionsFile + ".held", key + ".b", functionsFile + ".b", functionsFile + ".b.held"] {
                try? FileManager.default.removeItem(atPath: file)
            }
        }
        let options = zipperOptions
        let downstreamOptions = {
            var next = zipperOptions
            next.port += 1
            return next
        }()
        let downstreamAddress = "127.0.0.1:\(downstreamOptions.port)"
        let meshArguments = mesh ? ["--name", "a", "--mesh", "b=\(downstreamAddress)"] : []
        // A zipper left on the port (a previous run's) answered this run's
        // probes in place of its own, which could not bind, and the zipper
        // faults hit nothing (forty-fourth round).
        for port in [options.port] + (mesh ? [downstreamOptions.port] : []) where !loopbackPortIsFree(port) {
            throw ValidationError("UDP port \(port) of 127.0.0.1 is taken (a zipper a previous run left?): --port another, or stop it")
        }
        let zipper = try Child {
            try ZipperProcess(options, keyFile: key, extraArguments: ["--functions-file", functionsFile] + meshArguments).process
        }
        let downstream = mesh ? try Child {
            try ZipperProcess(downstreamOptions, keyFile: key + ".b", extraArguments: ["--name", "b", "--functions-file", functionsFile + ".b"]).process
        } : nil
        let address = "127.0.0.1:\(zipperOptions.port)"
        // Nothing of this run is left behind when it cannot start.
        func abandon(_ reason: String) -> ValidationError {
            zipper.signal(SIGKILL)
            downstream?.signal(SIGKILL)
            return ValidationError(reason)
        }
        try await waitForZipper(address)
        if mesh { try await waitForZipper(downstreamAddress) }
        // The function and the sink: on the zipper the source's forwards to, with --mesh.
        let functionAddress = mesh ? downstreamAddress : address
        let executable = function ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("uppercase-sfn").path
        guard FileManager.default.isExecutableFile(atPath: executable) else { throw abandon("no executable at \(executable)") }
        let pipe = !asyncHandler
        let observed = direct ? "0x4f" : "0x41"
        let upper = try Child {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = ["--zipper", functionAddress, "--observe", observed, "--emit", "0x42"] + (pipe ? ["--pipe"] : [])
                + (ProcessInfo.processInfo.environment["FAULT_BENCH_FUNCTION_ARGS"]?.split(separator: " ").map(String.init) ?? [])
            process.standardError = appendingLog(named: "FAULT_BENCH_FUNCTION_LOG")
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            return process
        }
        let received = Mutex<Set<Int>>([])
        let duplicates = Mutex<[Int]>([])
        // The sink does not acknowledge handling, so it recognizes no copy:
        // every answer that reaches it counts, and a frame answered twice
        // shows. Until the fifty-first round of issue 14 it did, and
        // recognized copies as any function does: after the word that copies
        // may follow (fiftieth round) it finished most second answers unseen
        // (a seed-3 run: 709 frames answered twice by one function process,
        // 16 counted).
        var sinkOptions = quietOptions(tags: [direct ? 0x41 : 0x42])
        sinkOptions.deliveryReceipts = false
        let sink = StreamFunction(name: "sink", zipper: functionAddress, options: sinkOptions)
        // FAULT_BENCH_SINK_LOG=FILE: a line a frame the sink gets (time, sequence, tid), to follow a copy through the function's debug log.
        let sinkLog = ProcessInfo.processInfo.environment["FAULT_BENCH_SINK_LOG"] != nil ? appendingLog(named: "FAULT_BENCH_SINK_LOG") : nil
        sink.setHandler { ctx in
            let text = String(decoding: ctx.data, as: UTF8.self)
            sinkLog?.write(Data("\(Date().timeIntervalSince1970) \(text) \(ctx.tid ?? "-")\n".utf8))
            if let sequence = Int(text), !received.withLock({ $0.insert(sequence).inserted }) {
                duplicates.withLock { $0.append(sequence) }
            }
        }
        try await sink.connect()
        let source = Source(name: "writer", zipper: address, options: quietOptions())
        try await source.connect()
        // Before the faults: the whole path answers.
        try await source.write(tag: 0x41, data: Array("0".utf8))
        guard await waitUntil(.seconds(30), { received.withLock { $0.contains(0) } }) else {
            upper.signal(SIGKILL)
            throw abandon("the path did not answer before the faults")
        }
        let written = Mutex(0)
        let refused = Mutex<[Int]>([])
        let writer = Task {
            var sequence = 0
            while !Task.isCancelled {
                sequence += 1
                do {
                    try await source.write(tag: 0x41, data: Array("\(sequence)".utf8))
                    written.withLock { $0 = sequence }
                } catch {
                    refused.withLock { $0.append(sequence) }
                }
                try? await Task.sleep(for: .microseconds(intervalMicroseconds))
            }
        }
        let clock = ContinuousClock()
        let started = clock.now
        var applied: [String: Int] = [:]
        // At most one fault at a time on each process; those of different processes may overlap.
        var running: [Target: Task<Void, Never>] = [:]
        // How long each SIGTERM took to end its process.
        let termExits = Locked<[Target: [Duration]]>([:])
        while clock.now - started < .seconds(seconds) {
            try await Task.sleep(for: .milliseconds(Int.random(in: 100...2500, using: &random)))
            let fault = chosen.randomElement(using: &random)!
            if let task = running[fault.target] { await task.value }
            let child = switch fault.target {
            case .zipper: zipper
            case .function: upper
            case .downstream: downstream!
            }
            let away = Duration.milliseconds(Int.random(in: 0...maxAwayMs, using: &random))
            let at = clock.now - started
            print(String(format: "%7.2f s %@ for %d ms (written %d, pid %d)", Double(at.components.seconds) + Double(at.components.attoseconds) / 1e18,
                         fault.rawValue, Int(away.components.seconds * 1000 + away.components.attoseconds / 1_000_000_000_000_000), written.withLock { $0 }, child.pid))
            applied[fault.rawValue, default: 0] += 1
            running[fault.target] = Task {
                if fault.isStop {
                    child.signal(SIGSTOP)
                    try? await Task.sleep(for: away)
                    child.signal(SIGCONT)
                } else {
                    let signalled = clock.now
                    child.signal(fault.isKill ? SIGKILL : SIGTERM)
                    await child.waitForExit()
                    if !fault.isKill { termExits.update { $0[fault.target, default: []].append(clock.now - signalled) } }
                    try? await Task.sleep(for: away)
                    do { try child.restart() } catch { print("restart failed: \(error)") }
                }
            }
        }
        for task in running.values { await task.value }
        writer.cancel()
        _ = await writer.value
        let total = written.withLock { $0 }
        let settleStart = clock.now
        var flushed = "yes"
        do { try await source.flush(timeout: .seconds(settleSeconds)) } catch { flushed = "no (\(error))" }
        // Until every frame arrived, or none more did for settleSeconds: a function
        // slower than the source still drains its backlog after the faults.
        var all = false
        var lastCount = -1
        while !all, received.withLock({ $0.count }) != lastCount {
            lastCount = received.withLock { $0.count }
            all = await waitUntil(.seconds(settleSeconds)) {
                received.withLock { got in (1...total).allSatisfy { got.contains($0) || refused.withLock { $0 }.contains($0) } }
            }
        }
        let settled = clock.now - settleStart
        let refusedSet = Set(refused.withLock { $0 })
        let missing = received.withLock { got in (1...total).filter { !got.contains($0) && !refusedSet.contains($0) } }
        let twice = duplicates.withLock { $0 }.sorted()
        print("seed=\(seed) faults=\(applied.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ","))")
        // Writes refused after the last that returned are not among the `total` written.
        let refusedWritten = refusedSet.filter { $0 <= total }.count
        print("written_ok=\(total - refusedWritten) refused=\(refusedWritten) refused_after_the_last=\(refusedSet.count - refusedWritten) received=\(received.withLock { $0.count } - 1) missing=\(missing.count) duplicates=\(twice.count) flushed=\(flushed) all_arrived=\(all ? "yes" : "no") settle_ms=\(settled.components.seconds * 1000 + settled.components.attoseconds / 1_000_000_000_000_000)")
        if !missing.isEmpty {
            print("missing sequences: \(ranges(missing).prefix(30).joined(separator: ", "))")
            // A function away longer than the hold (`--max-away-ms` over 5 s) loses frames by rule: the
            // zipper says so (a killed zipper may die before it said the last of them).
            print("dropped_by_zipper_said=\(framesDroppedSaid(in: zipperLog)) (frames its warnings say it dropped, answers too; in \(zipperLog))")
        }
        if !twice.isEmpty { print("received more than once: \(ranges(Array(Set(twice)).sorted()).prefix(30).joined(separator: ", "))") }
        // A graceful close that waits out its deadline shows here (5 s: shutdownTimeout).
        for (target, times) in termExits.update({ $0 }).sorted(by: { $0.key < $1.key }) {
            let ms = times.map { Double($0.components.seconds) * 1000 + Double($0.components.attoseconds) / 1e15 }.sorted()
            print(String(format: "sigterm_to_exit_ms %@: median %.0f, max %.0f (%d)", target.rawValue, ms[ms.count / 2], ms.last!, ms.count))
        }
        await source.close()
        await sink.close()
        upper.signal(SIGKILL)
        zipper.signal(SIGTERM)
        downstream?.signal(SIGTERM)
        await zipper.waitForExit(limit: .seconds(10))
        await downstream?.waitForExit(limit: .seconds(10))
        await upper.waitForExit(limit: .seconds(5))
    }
}

/// A value shared with tasks that outlive the statement that made them.
final class Locked<Value: Sendable>: Sendable {
    private let value: Mutex<Value>
    init(_ value: Value) { self.value = Mutex(value) }
    func update<T: Sendable>(_ body: (inout Value) -> T) -> T { value.withLock { body(&$0) } }
}

/// The frames a zipper's warnings say it dropped (`frames=N` of each WARN line about a drop).
func framesDroppedSaid(in log: String) -> Int {
    guard let text = try? String(contentsOfFile: log, encoding: .utf8) else { return 0 }
    // The count is `frames=` in most warnings, `dropped=` in a client's (a mesh link's) at its end.
    return text.split(separator: "\n").filter { $0.contains("WARN") && $0.contains("dropped") }.reduce(0) { total, line in
        let fields = line.split(separator: " ")
        guard let field = fields.first(where: { $0.hasPrefix("frames=") }) ?? fields.first(where: { $0.hasPrefix("dropped=") }) else { return total }
        return total + (Int(field.drop { $0 != "=" }.dropFirst()) ?? 0)
    }
}
