import Glibc

/// When a QUIC loop polls for a while instead of going straight to sleep.
///
/// A sleeping loop thread costs each hop an eventfd write and a wake-up (on a
/// VM, tens of microseconds), so a latency-bound chain of hops (source →
/// zipper → function → zipper) pays it several times per round trip. Polling
/// briefly after work that is likely to be answered soon saves it; the loop
/// yields the core between polls, so anything else runnable goes first.
///
/// Set with `YOMO_QUIC_POLL_US` (the window in microseconds: default 50, at
/// most 1000, 0 turns polling off) and `YOMO_QUIC_POLL` (`answers`, the
/// default, or `always`), read once per process.
struct LoopPolling: Sendable, Equatable {
    enum Trigger: Sendable, Equatable {
        /// After handing received data to the application (a reader): its
        /// forward or reply usually comes within microseconds.
        case afterHandOff
        /// After any work: also catches a peer's answer to what was just
        /// sent. Lowest latency, more CPU under a light load.
        case afterAnyWork
    }

    var nanoseconds: UInt64
    var trigger: Trigger

    static let defaultMicroseconds: UInt64 = 50
    static let maximumMicroseconds: UInt64 = 1000

    static let off = LoopPolling(nanoseconds: 0, trigger: .afterHandOff)

    static let fromEnvironment = LoopPolling(
        window: getenv("YOMO_QUIC_POLL_US").map { String(cString: $0) },
        trigger: getenv("YOMO_QUIC_POLL").map { String(cString: $0) }
    )

    init(nanoseconds: UInt64, trigger: Trigger) {
        self.nanoseconds = nanoseconds
        self.trigger = trigger
    }

    /// From the two variables' values (nil: unset). A value that does not
    /// parse falls back to the default, with a line on stderr: a typo must not
    /// silently turn polling off, nor stop a process from starting.
    init(window: String?, trigger: String?) {
        var micros = Self.defaultMicroseconds
        if let window {
            if let value = UInt64(window) {
                micros = min(value, Self.maximumMicroseconds)
            } else {
                trace("YOMO_QUIC_POLL_US=\(window) is not a number of microseconds; using \(Self.defaultMicroseconds)")
            }
        }
        var chosen = Trigger.afterHandOff
        switch trigger {
        case nil, "", "answers": break
        case "always": chosen = .afterAnyWork
        case let other?: trace("YOMO_QUIC_POLL=\(other) is neither answers nor always; using answers")
        }
        self.init(nanoseconds: micros * 1000, trigger: chosen)
    }
}

/// Stops a loop from polling where nothing answers (say, an observer that
/// only receives): after `missLimit` polls in a row ended with nothing, the
/// loop polls only once in `probeEvery` chances, until a poll is answered.
struct PollBackoff {
    static let missLimit = 8
    static let probeEvery = 16

    /// Polls in a row that ended with nothing, plus chances skipped since.
    private(set) var misses = 0

    mutating func shouldPoll() -> Bool {
        guard misses >= Self.missLimit else { return true }
        misses += 1
        return (misses - Self.missLimit) % Self.probeEvery == 0
    }

    mutating func record(answered: Bool) {
        misses = answered ? 0 : misses + 1
    }
}
