import ArgumentParser
import Dispatch
import FoundationEssentials
import Glibc
import Logging
import Synchronization
import YoMo

/// Round trips through a zipper and a stream function: a source writes frames with
/// `--tag`, a stream function in this process observes `--reply-tag` (an
/// `uppercase-sfn` in between turns one into the other).
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure round trips source → zipper → stream function → zipper → observer.",
        discussion: "Last line: frames=N size=S throughput=F p50_us=A p99_us=B lost=L (throughput in frames/s)."
    )

    @Option(help: "Zipper address.") var zipper = "localhost:9000"
    @Option(help: "Frames to send.") var frames = 10_000
    @Option(help: "Payload bytes per frame (at least 12).") var size = 16
    @Option(help: "Frames in flight at most.") var inflight = 1
    @Option(help: "Frames sent per second at most, evenly paced (default: as fast as --inflight allows).") var rate: Double?
    @Option(help: "Tag of the frames sent.", transform: parseTag) var tag: UInt32 = 0x33
    @Option(name: .customLong("reply-tag"), help: "Tag of the replies observed.", transform: parseTag) var replyTag: UInt32 = 0x34
    @Option(help: "Seconds the whole run may take (sending included); frames without a reply by then count as lost.") var timeout = 60.0
    @Option(help: "Credential, e.g. token:secret.") var credential: String?
    @Option(help: "Serve /metrics, /healthz and /readyz on HOST:PORT (default: YOMO_METRICS_LISTEN, else off).") var metrics: String?

    func validate() throws {
        guard size >= 12 else { throw ValidationError("--size must be at least 12 (the sequence number takes 12 bytes)") }
        guard frames > 0, inflight > 0 else { throw ValidationError("--frames and --inflight must be positive") }
        if let rate, !(rate > 0 && rate.isFinite) { throw ValidationError("--rate must be a positive number of frames per second") }
    }

    func run() async throws {
        let logging = bootstrapLogging(service: "yomo-bench")
        let metricsInstallation = try await YoMoMetrics.bootstrap(serviceName: "yomo-bench", listen: metrics)
        let recorder = Recorder(count: frames)
        var options = StreamFunction.Options(observedTags: [replyTag], credential: credential)
        options.logger = Logger(label: "yomo.bench")
        let observer = StreamFunction(name: "yomo-bench-observer", zipper: zipper, options: options)
        observer.setHandler { ctx in recorder.received(ctx.dataBuffer.getString(at: ctx.dataBuffer.readerIndex, length: 12)) }
        try await observer.connect()
        let source = Source(name: "yomo-bench-source", zipper: zipper, options: options)
        try await source.connect()

        let filler = [UInt8](repeating: UInt8(ascii: "x"), count: size - 12)
        let clock = ContinuousClock()
        let started = clock.now
        let deadline = started.advanced(by: .milliseconds(Int64(timeout * 1000)))
        // The deadline bounds everything below, also a wait for room in a full
        // in-flight window (no function attached: no reply ever frees it).
        let finished = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                try? await Task.sleep(until: deadline, clock: clock)
                recorder.stop()
                return false
            }
            group.addTask {
                for sequence in 0..<frames {
                    if let rate {
                        // Paced from the start, so a late frame does not delay the ones after it.
                        try? await Task.sleep(until: started.advanced(by: .seconds(Double(sequence) / rate)), clock: clock)
                    }
                    guard await recorder.waitForRoom(inflight) else { return false }
                    let digits = String(sequence)
                    let payload = Array((String(repeating: "0", count: 12 - digits.count) + digits).utf8) + filler
                    recorder.sent(sequence)
                    do {
                        try await source.write(tag: tag, data: payload)
                    } catch {
                        // Still print the summary: the frames not sent count as lost.
                        Logger(label: "yomo.bench").error("write failed, stopping", metadata: ["error": "\(error)"])
                        return false
                    }
                }
                return await recorder.waitForAll()
            }
            defer { group.cancelAll() }
            let first = await group.next() ?? false
            recorder.stop()
            return first
        }
        let elapsed = clock.now - started
        await source.close()
        await observer.close()

        let (latencies, received) = recorder.results()
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let sorted = latencies.sorted()
        func percentile(_ p: Double) -> Int {
            sorted.isEmpty ? 0 : Int(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] / 1000)
        }
        await metricsInstallation.shutdown()
        await logging.shutdown()
        let lost = frames - received
        print("frames=\(frames) size=\(size) throughput=\(Int(Double(received) / seconds)) p50_us=\(percentile(0.5)) p99_us=\(percentile(0.99)) lost=\(lost)")
        if !finished || lost > 0 { throw ExitCode(1) }
    }
}

func parseTag(_ text: String) throws -> UInt32 {
    guard let value = UInt32(yomoTag: text) else { throw ValidationError("\(text) is not a tag (e.g. 0x33 or 51)") }
    return value
}

/// Send times and latencies by sequence number; the in-flight window.
final class Recorder: Sendable {
    private struct State {
        var sentAt: [ContinuousClock.Instant?]
        var latencies: [Int64] = []
        var inFlight = 0
        var received = 0
        var roomWaiter: (limit: Int, continuation: CheckedContinuation<Bool, Never>)?
        var allWaiter: CheckedContinuation<Bool, Never>?
        /// The run's time is up: waits return false at once.
        var stopped = false
    }

    private let state: Mutex<State>
    private let total: Int
    private let clock = ContinuousClock()

    init(count: Int) {
        total = count
        state = Mutex(State(sentAt: Array(repeating: nil, count: count)))
    }

    func sent(_ sequence: Int) {
        let now = clock.now
        state.withLock { state in
            state.sentAt[sequence] = now
            state.inFlight += 1
        }
    }

    func received(_ sequenceText: String?) {
        let now = clock.now
        guard let sequenceText, let sequence = Int(sequenceText) else { return }
        let (room, all) = state.withLock { state -> (CheckedContinuation<Bool, Never>?, CheckedContinuation<Bool, Never>?) in
            guard sequence < state.sentAt.count, let sentAt = state.sentAt[sequence] else { return (nil, nil) }
            state.sentAt[sequence] = nil  // a duplicate reply counts once
            let elapsed = (now - sentAt).components
            state.latencies.append(elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000)
            state.inFlight -= 1
            state.received += 1
            var room: CheckedContinuation<Bool, Never>?
            if let waiter = state.roomWaiter, state.inFlight < waiter.limit {
                room = waiter.continuation
                state.roomWaiter = nil
            }
            var all: CheckedContinuation<Bool, Never>?
            if state.received == total {
                all = state.allWaiter
                state.allWaiter = nil
            }
            return (room, all)
        }
        room?.resume(returning: true)
        all?.resume(returning: true)
    }

    /// True once fewer than `limit` frames are in flight; false when stopped.
    func waitForRoom(_ limit: Int) async -> Bool {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool? in
                if state.stopped { return false }
                if state.inFlight < limit { return true }
                state.roomWaiter = (limit, continuation)
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }

    /// True once every frame got its reply; false when stopped first.
    func waitForAll() async -> Bool {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool? in
                if state.received == total { return true }
                if state.stopped { return false }
                state.allWaiter = continuation
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }

    /// Time is up: every wait, now and later, returns false.
    func stop() {
        let (room, all) = state.withLock { state in
            state.stopped = true
            defer {
                state.roomWaiter = nil
                state.allWaiter = nil
            }
            return (state.roomWaiter?.continuation, state.allWaiter)
        }
        room?.resume(returning: false)
        all?.resume(returning: false)
    }

    func results() -> ([Int64], Int) { state.withLock { ($0.latencies, $0.received) } }
}
