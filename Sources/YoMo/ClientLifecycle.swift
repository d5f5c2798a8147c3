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
///
/// reconnecting ─closeRequested (frames held)─▶ delivering ─dialSucceeded─▶ draining (deliver, then close)
///                                                 │ closeDeadlinePassed
///                                                 ▼
///                                              draining (the dial is cancelled: the held frames are dropped)
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
        /// `close()` came while reconnecting with frames held: redial on (attempt
        /// `attempt` is due or under way) to deliver them, until the close deadline.
        case delivering(attempt: Int)
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
        /// Keep redialling to deliver the held frames; at the close deadline
        /// report `closeDeadlinePassed()`.
        case deliverBeforeClosing
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

    /// Redialling after close() to deliver what is held.
    var isDelivering: Bool {
        if case .delivering = state { return true }
        return false
    }

    /// Draining or closed (or delivering before closing): no new work; writes
    /// fail, but for a running handler's while delivering.
    var isClosing: Bool {
        if case .delivering = state { return true }
        return state == .draining || state == .closed
    }

    /// Whether a dial must stop: closing, and not redialling to deliver held frames.
    var cancelsDials: Bool { state == .draining || state == .closed }

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
        case .delivering:
            state = .draining
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
        case .delivering(let attempt):
            guard !final, policy.maximumAttempts.map({ attempt < $0 }) ?? true else {
                state = .closed
                return .end(.closed)
            }
            state = .delivering(attempt: attempt + 1)
            return .dialAfter(policy.delay(beforeAttempt: attempt + 1, using: &random))
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
        case .delivering(let attempt):
            // Lost under a close (`lostWhileDraining`): redial to deliver.
            guard !final else {
                state = .closed
                return .end(.closed)
            }
            state = .delivering(attempt: attempt + 1)
            return .dialAfter(policy.delay(beforeAttempt: attempt + 1, using: &random))
        case .idle, .connecting, .reconnecting, .closed:
            return .none
        }
    }

    /// The connection was lost (not closed by this side, not by the zipper's
    /// word) while draining: what the handlers still write, and what the
    /// zipper had not settled, is delivered on a new connection until the
    /// close deadline, as when `close()` came while reconnecting.
    mutating func lostWhileDraining() -> Action {
        guard state == .draining else { return .none }
        state = .delivering(attempt: 0)
        return .deliverBeforeClosing
    }

    /// A `dialAfter` wait is over (or was cancelled).
    mutating func waitEnded() -> Action {
        switch state {
        case .connecting, .reconnecting, .delivering:
            return .dial
        case .draining:
            state = .closed
            return .end(.closed)
        case .idle, .serving, .closed:
            return .none
        }
    }

    /// `holdingFrames`: writes are held for the next connection (the outage
    /// buffer, frames to send again), or handlers still at work will write
    /// some: a reconnect is then pursued until the close deadline to deliver
    /// them, rather than dropping them at once.
    mutating func closeRequested(holdingFrames: Bool = false) -> Action {
        switch state {
        case .idle:
            state = .closed
            return .end(.closed)
        case .serving:
            state = .draining
            return .stopReading
        case .reconnecting(let attempt) where holdingFrames:
            state = .delivering(attempt: attempt)
            return .deliverBeforeClosing
        case .connecting, .reconnecting:
            state = .draining
            return .cancelWait
        case .draining, .delivering, .closed:
            return .none
        }
    }

    /// The close deadline came while still redialling to deliver held frames,
    /// or nothing is left to deliver (the handlers that were at work wrote nothing).
    mutating func stopDelivering() -> Action {
        guard case .delivering = state else { return .none }
        state = .draining
        return .cancelWait
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
