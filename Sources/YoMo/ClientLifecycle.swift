/// The life of a client's connection as a pure state machine, in the manner of
/// async-http-client's `HTTP1ConnectionStateMachine`: the runtime reports what
/// happened (`mutating func` per event) and does the returned `Action`. No I/O,
/// no clock, and the randomness of the reconnect delays comes from an injected
/// generator, so every path is tested without sockets.
///
/// ```text
/// idle ─start─▶ connecting ─dialSucceeded─▶ serving ─connectionLost─▶ reconnecting ─dialSucceeded─▶ serving
///                   │ dialFailed (retry)        │ closeRequested             │ dialFailed (retry, backoff)
///                   ▼                           ▼                            ▼
///                 closed ◀──────drained────── draining ◀──closeRequested── (any waiting state)
/// ```
struct ClientLifecycle<Random: RandomNumberGenerator & Sendable>: Sendable {
    enum State: Hashable, Sendable {
        case idle
        /// The first connection (`connect()` / `run()`): attempt `attempt` is due or under way.
        case connecting(attempt: Int)
        case serving
        /// Redial `attempt` after a loss is due or under way.
        case reconnecting(attempt: Int)
        /// `close()` came: handlers finish and writes go out, then the connection closes.
        case draining
        case closed
    }

    enum Action: Hashable, Sendable {
        case dial
        /// Wait this long, report `waitEnded()`, then do what it says.
        case dialAfter(Duration)
        /// Publish the new session and read its frames.
        case serve
        /// A session came up while closing: deliver what is held, close it, report `drained()`.
        case drain
        /// Stop reading the live session; the serving loop then drains.
        case stopReading
        /// Wake a wait before a (re)dial: the client closes instead of dialling.
        case cancelWait
        case end(Ending)
        case none
    }

    enum Ending: Hashable, Sendable {
        /// `close()`, graceful shutdown.
        case closed
        /// A final error: rejected, goaway, the zipper's close, or the first connect failing.
        case failed
        /// `maximumAttempts` redials failed in a row.
        case gaveUp(attempts: Int)
    }

    private(set) var state = State.idle
    let policy: ReconnectPolicy
    let retryInitialConnect: Bool
    private var random: Random

    init(policy: ReconnectPolicy, retryInitialConnect: Bool, random: Random) {
        self.policy = policy
        self.retryInitialConnect = retryInitialConnect
        self.random = random
    }

    /// Draining or closed: no new work, writes without a session fail.
    var isClosing: Bool { state == .draining || state == .closed }

    mutating func start() -> Action {
        guard state == .idle else { return .none }
        state = .connecting(attempt: 1)
        return .dial
    }

    mutating func dialSucceeded() -> Action {
        switch state {
        case .connecting, .reconnecting:
            state = .serving
            return .serve
        case .draining:
            return .drain
        case .idle, .serving, .closed:
            return .none
        }
    }

    mutating func dialFailed(final: Bool) -> Action {
        switch state {
        case .connecting(let attempt):
            guard !final, retryInitialConnect, policy.maximumAttempts.map({ attempt < $0 }) ?? true else {
                state = .closed
                return .end(.failed)
            }
            state = .connecting(attempt: attempt + 1)
            return .dialAfter(policy.delay(beforeAttempt: attempt, using: &random))
        case .reconnecting(let attempt):
            guard !final else {
                state = .closed
                return .end(.failed)
            }
            return scheduleRedial(attempt + 1)
        case .draining:
            state = .closed
            return .end(.closed)
        case .idle, .serving, .closed:
            return .none
        }
    }

    /// The serving session ended; `final`: the zipper meant it (no reconnect).
    mutating func connectionLost(final: Bool) -> Action {
        switch state {
        case .serving:
            guard !final else {
                state = .closed
                return .end(.failed)
            }
            return scheduleRedial(1)
        case .draining:
            state = .closed
            return .end(.closed)
        case .idle, .connecting, .reconnecting, .closed:
            return .none
        }
    }

    /// A `dialAfter` wait is over (or was cancelled).
    mutating func waitEnded() -> Action {
        switch state {
        case .connecting, .reconnecting:
            return .dial
        case .draining:
            state = .closed
            return .end(.closed)
        case .idle, .serving, .closed:
            return .none
        }
    }

    mutating func closeRequested() -> Action {
        switch state {
        case .idle:
            state = .closed
            return .end(.closed)
        case .serving:
            state = .draining
            return .stopReading
        case .connecting, .reconnecting:
            state = .draining
            return .cancelWait
        case .draining, .closed:
            return .none
        }
    }

    /// The last session was closed after delivering its writes.
    mutating func drained() -> Action {
        guard state == .draining else { return .none }
        state = .closed
        return .end(.closed)
    }

    /// The runtime ended for a reason of its own (a cancelled task): nothing more happens.
    mutating func ended() { state = .closed }

    private mutating func scheduleRedial(_ attempt: Int) -> Action {
        if let maximum = policy.maximumAttempts, attempt > maximum {
            state = .closed
            return .end(.gaveUp(attempts: maximum))
        }
        state = .reconnecting(attempt: attempt)
        return .dialAfter(policy.delay(beforeAttempt: attempt, using: &random))
    }
}
