import Glibc
import Synchronization
internal import CNGTCP2
internal import YoMoTracing

/// SIGINT and SIGTERM, for `wait()` (a zipper's, a client's) and `yomo
/// trace-view`: `wait()` returns at the first one after `init`, or at
/// `cancel()`.
package final class SignalWatcher: Sendable {
    private let latch = Latch()
    private let id: Int

    package init() { id = SignalRelay.shared.add(latch) }

    package func wait() async { await latch.wait() }

    /// Stops watching; the signals do what they did before once no watcher is left.
    package func cancel() {
        SignalRelay.shared.remove(id)
        latch.fire()
    }
}

/// Catches SIGINT and SIGTERM while some `SignalWatcher` watches: a handler
/// writes each to a pipe, and a thread of its own reads the pipe and fires
/// the watchers. Not Dispatch's signal sources: on Linux they needed the
/// signal ignored first (SIG_IGN), which discards a signal already pending,
/// such as a SIGTERM sent while the process still started up with the signal
/// blocked (a parent that spawns it from a Swift task passes its blocked mask
/// on); and Dispatch installs its handler once per process, so after a
/// watcher restored the default, a second `wait()` in the same process left
/// the signal ignored for good. Both were found by `yomo-fault-bench chaos`:
/// a stream function SIGTERMed just after its start ran until SIGKILL.
final class SignalRelay: Sendable {
    static let shared = SignalRelay()
    static let numbers: [Int32] = [SIGINT, SIGTERM]

    private struct State {
        var watchers: [Int: Latch] = [:]
        var nextID = 0
        /// What the signals did before the first watcher, restored after the last.
        var previous: [Int32: sigaction] = [:]
        var readerStarted = false
    }

    private let state = Mutex(State())
    private let readEnd: Int32
    private let writeEnd: Int32

    private init() {
        var ends: [Int32] = [-1, -1]
        // Without a pipe a watcher never hears a signal: nothing else to fall back on.
        precondition(pipe(&ends) == 0, "pipe failed: \(errno)")
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        // A handler must never block: a full pipe (signals nobody read) drops the byte.
        _ = fcntl(ends[1], F_SETFL, fcntl(ends[1], F_GETFL) | O_NONBLOCK)
        (readEnd, writeEnd) = (ends[0], ends[1])
    }

    /// How many watchers there are (tests wait for one before they signal).
    var watcherCount: Int { state.withLock { $0.watchers.count } }

    func add(_ latch: Latch) -> Int {
        let (id, startReader) = state.withLock { state -> (Int, Bool) in
            if state.watchers.isEmpty {
                for number in Self.numbers {
                    var previous = sigaction()
                    _ = cngtcp2_relay_signal(number, writeEnd, &previous)
                    state.previous[number] = previous
                }
            }
            state.nextID += 1
            state.watchers[state.nextID] = latch
            defer { state.readerStarted = true }
            return (state.nextID, !state.readerStarted)
        }
        // Started after the handlers are in: a signal pending since start-up is
        // delivered to this thread as soon as it unblocks it, and must find them.
        if startReader { startThread { [self] in readSignals() } }
        return id
    }

    func remove(_ id: Int) {
        state.withLock { state in
            guard state.watchers.removeValue(forKey: id) != nil, state.watchers.isEmpty else { return }
            for (number, previous) in state.previous {
                var previous = previous
                _ = sigaction(number, &previous, nil)
            }
            state.previous = [:]
        }
    }

    private func readSignals() {
        // Whatever mask the process inherited, one thread takes these signals:
        // this one, which only passes them on.
        var set = sigset_t()
        sigemptyset(&set)
        for number in Self.numbers { sigaddset(&set, number) }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        var byte: UInt8 = 0
        while true {
            let count = read(readEnd, &byte, 1)
            if count == 1 {
                deliver(Int32(byte))
            } else if count < 0 && errno == EINTR {
                continue
            } else {
                return
            }
        }
    }

    private func deliver(_ number: Int32) {
        let latches = state.withLock { Array($0.watchers.values) }
        // Caught just as the last watcher left: it does what it did before.
        guard !latches.isEmpty else {
            kill(getpid(), number)
            return
        }
        for latch in latches { latch.fire() }
    }
}
