/// When a dropped connection is dialled again.
///
/// The first retry comes quickly, after a random delay in `firstRetryDelay`
/// (50–250 ms): a zipper that restarts or a path that blips is usually back at
/// once, and the randomness keeps many clients cut off together from returning
/// in one burst. Each later retry waits `initialDelay` times `multiplier` per
/// attempt, capped at `maximumDelay` (1 s: the Go SDK's fixed retry interval,
/// so a client is back within about a second of a zipper's return however long
/// it was away), spread by ±`jitter`.
public struct ReconnectPolicy: Hashable, Sendable {
    /// The range the first retry's delay is drawn from, uniformly.
    public var firstRetryDelay: ClosedRange<Duration>
    /// The delay before the second retry.
    public var initialDelay: Duration
    public var maximumDelay: Duration
    public var multiplier: Double
    /// Fraction of the delay to randomise, 0 to 1.
    public var jitter: Double
    /// Give up after this many failed attempts in a row; `nil` retries forever.
    public var maximumAttempts: Int?
    /// Whether a connection the zipper closed because it shuts down (a
    /// graceful stop or restart: application code 0) is dialled again, as a
    /// lost one is. `false` ends the client there, as the Go SDK's clients do.
    public var redialsAfterZipperShutdown: Bool

    /// Values that cannot work (a negative delay, a multiplier below 1, a
    /// jitter outside 0…1) are refused by `connect()` with the field named.
    public init(
        firstRetryDelay: ClosedRange<Duration> = .milliseconds(50) ... .milliseconds(250),
        initialDelay: Duration = .milliseconds(500),
        maximumDelay: Duration = .seconds(1),
        multiplier: Double = 2,
        jitter: Double = 0.2,
        maximumAttempts: Int? = nil,
        redialsAfterZipperShutdown: Bool = true
    ) {
        self.firstRetryDelay = firstRetryDelay
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.multiplier = multiplier
        self.jitter = jitter
        self.maximumAttempts = maximumAttempts
        self.redialsAfterZipperShutdown = redialsAfterZipperShutdown
    }

    public static let `default` = ReconnectPolicy()

    /// The delay before attempt `attempt` (1 is the first retry).
    public func delay(beforeAttempt attempt: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        guard attempt > 1 else {
            let low = firstRetryDelay.lowerBound.seconds, high = firstRetryDelay.upperBound.seconds
            let drawn = low == high ? low : Double.random(in: low...high, using: &generator)
            return .clamped(seconds: drawn)
        }
        let initial = initialDelay.seconds
        let capped = min(initial * pow(multiplier, attempt - 2), maximumDelay.seconds)
        let spread = (0...1).contains(jitter) && jitter > 0 ? Double.random(in: (1 - jitter)...(1 + jitter), using: &generator) : 1
        return .clamped(seconds: capped * spread)
    }

    public func delay(beforeAttempt attempt: Int) -> Duration {
        var generator = SystemRandomNumberGenerator()
        return delay(beforeAttempt: attempt, using: &generator)
    }

    private func pow(_ base: Double, _ exponent: Int) -> Double {
        var result = 1.0
        for _ in 0..<min(exponent, 64) { result *= base }
        return result
    }
}

extension Duration {
    /// Never negative, and saturated where nanoseconds would leave Int64 (a
    /// policy's fields may hold anything; the delay must not trap).
    static func clamped(seconds: Double) -> Duration {
        guard seconds > 0 else { return .zero }  // also NaN
        guard seconds < 9e9 else { return .seconds(9_000_000_000) }
        return .nanoseconds(Int64((seconds * 1e9).rounded()))
    }

    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
