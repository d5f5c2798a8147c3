/// When a dropped connection is dialled again.
///
/// The first retry waits `initialDelay` (1 s, as the Go SDK); each later one
/// multiplies the delay by `multiplier` up to `maximumDelay`, then spreads it by
/// ±`jitter` so that many clients cut off at once do not return at once.
public struct ReconnectPolicy: Hashable, Sendable {
    public var initialDelay: Duration
    public var maximumDelay: Duration
    public var multiplier: Double
    /// Fraction of the delay to randomise, 0 to 1.
    public var jitter: Double
    /// Give up after this many failed attempts in a row; `nil` retries forever.
    public var maximumAttempts: Int?

    public init(
        initialDelay: Duration = .seconds(1),
        maximumDelay: Duration = .seconds(30),
        multiplier: Double = 2,
        jitter: Double = 0.2,
        maximumAttempts: Int? = nil
    ) {
        precondition(multiplier >= 1, "multiplier must be at least 1")
        precondition((0...1).contains(jitter), "jitter must be between 0 and 1")
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.multiplier = multiplier
        self.jitter = jitter
        self.maximumAttempts = maximumAttempts
    }

    public static let `default` = ReconnectPolicy()

    /// The delay before attempt `attempt` (1 is the first retry).
    public func delay(beforeAttempt attempt: Int, using generator: inout some RandomNumberGenerator) -> Duration {
        guard attempt > 1 else { return initialDelay }
        let initial = initialDelay.seconds
        let capped = min(initial * pow(multiplier, attempt - 1), maximumDelay.seconds)
        let spread = jitter == 0 ? 1 : Double.random(in: (1 - jitter)...(1 + jitter), using: &generator)
        return .nanoseconds(Int64((capped * spread * 1e9).rounded()))
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
    var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
