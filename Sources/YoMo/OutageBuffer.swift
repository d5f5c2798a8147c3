internal import YoMoWire

/// What a client did with the frames written while it had no connection (see
/// `StreamFunction.Options.outageBufferFrames`). Counts since the client was made.
public struct OutageStatistics: Sendable, Hashable {
    /// Frames written while disconnected and held for the next connection.
    public var buffered = 0
    /// Held frames written to a new connection after a reconnect.
    public var delivered = 0
    /// Writes refused because the buffer was full or disabled, plus held frames
    /// discarded because the client ended before it reconnected.
    public var dropped = 0
    /// Frames written to a connection that died before the zipper acknowledged
    /// them, sent again on the next connection (ahead of the held ones).
    public var resent = 0
    /// Frames held now, and their encoded size.
    public var pendingFrames = 0
    public var pendingBytes = 0

    public init() {}
}

/// The frames a client holds while reconnecting, bounded in frames and bytes, and
/// the counts and log decisions that go with them. Pure: no I/O, no locking (the
/// client's state lock guards it), so it is tested without sockets.
struct OutageBuffer {
    let maximumFrames: Int
    let maximumBytes: Int
    /// New writes are admitted as if the frames put back (sent again after a
    /// lost connection, or taken and not written) were not there: a mesh
    /// link's, whose refusal is a drop, and whose frames sent again were in
    /// memory before the outage anyway (kept for want of a receipt). A
    /// client's refusals push back on its writer instead.
    let admitsBesidesPutBack: Bool
    /// A frame held, since when, and whether the lost connection had it
    /// (sent again) or it was written meanwhile: what its span says.
    struct Waiting {
        var frame: DataFrame
        var since: ContinuousClock.Instant
        var resent: Bool
        /// The client's number for the write (`ClientRuntime.DeliveryMark`), -1 for none.
        var sequence = -1
    }
    private(set) var waiting: [Waiting] = []
    /// Of `waiting`, those put back, and their bytes.
    private var putBackHeld = (frames: 0, bytes: 0)
    private(set) var statistics = OutageStatistics()
    /// Frames held and refused during the current outage (reset by `endOutage`).
    private var outageBuffered = 0
    private var outageDropped = 0
    /// Whether the last write was refused: a burst of refusals logs once.
    private var inDropBurst = false

    init(maximumFrames: Int, maximumBytes: Int, admitsBesidesPutBack: Bool = false) {
        self.maximumFrames = max(0, maximumFrames)
        self.maximumBytes = max(0, maximumBytes)
        self.admitsBesidesPutBack = admitsBesidesPutBack
    }

    var isEnabled: Bool { maximumFrames > 0 && maximumBytes > 0 }
    var isEmpty: Bool { waiting.isEmpty }
    var count: Int { waiting.count }

    enum Admission: Equatable {
        /// Held; `firstOfOutage`: the first held frame since the last connection (log it).
        case buffered(firstOfOutage: Bool)
        /// Refused: the buffer holds `maximumFrames` frames or `maximumBytes` bytes.
        /// `firstOfBurst`: the first refusal since a frame was last held (log it).
        case full(firstOfBurst: Bool)
        /// Refused: buffering is off. `firstOfBurst` as for `full`.
        case disabled(firstOfBurst: Bool)
    }

    /// Holds `frame` if it fits.
    /// `pastLimit`: a frame queued on a connection that ended under its
    /// write, which may have reached the zipper: held even over the limits,
    /// since refusing it would tell its writer it was not sent.
    mutating func admit(_ frame: DataFrame, now: ContinuousClock.Instant = .now, pastLimit: Bool = false, sequence: Int = -1) -> Admission {
        guard isEnabled else {
            statistics.dropped += 1
            outageDropped += 1
            defer { inDropBurst = true }
            return .disabled(firstOfBurst: !inDropBurst)
        }
        let size = frame.encodedLength
        let (heldFrames, heldBytes) = admitsBesidesPutBack
            ? (waiting.count - putBackHeld.frames, statistics.pendingBytes - putBackHeld.bytes) : (waiting.count, statistics.pendingBytes)
        guard pastLimit || (heldFrames < maximumFrames && heldBytes + size <= maximumBytes) else {
            statistics.dropped += 1
            outageDropped += 1
            defer { inDropBurst = true }
            return .full(firstOfBurst: !inDropBurst)
        }
        inDropBurst = false
        waiting.append(Waiting(frame: frame, since: now, resent: false, sequence: sequence))
        statistics.buffered += 1
        statistics.pendingFrames += 1
        statistics.pendingBytes += size
        outageBuffered += 1
        return .buffered(firstOfOutage: outageBuffered == 1)
    }

    /// Hands over every held frame, oldest first, with how long and why each
    /// waited, to be written to a new connection.
    mutating func takeWaiting() -> [Waiting] {
        defer {
            waiting = []
            statistics.pendingFrames = 0
            statistics.pendingBytes = 0
            putBackHeld = (0, 0)
        }
        return waiting
    }

    /// Frames taken that could not be written (the new connection failed too):
    /// they go back in front of anything held since, keeping the write order
    /// and when and why each began to wait. They are held beyond the limits
    /// rather than dropped: they were accepted.
    mutating func putBack(_ unsent: some Collection<Waiting>) {
        let bytes = unsent.reduce(0) { $0 + $1.frame.encodedLength }
        waiting.insert(contentsOf: unsent, at: 0)
        statistics.pendingFrames += unsent.count
        statistics.pendingBytes += bytes
        putBackHeld.frames += unsent.count
        putBackHeld.bytes += bytes
    }

    /// Frames a lost connection never had acknowledged: they go first, whatever
    /// the limits (they were accepted before the outage began).
    mutating func resend(_ unacknowledged: [(frame: DataFrame, sequence: Int)]) {
        putBack(unacknowledged.map { Waiting(frame: $0.frame, since: .now, resent: true, sequence: $0.sequence) })
        statistics.resent += unacknowledged.count
    }

    /// The first `count` frames, put there by `resend`, that the zipper says it
    /// had routed already (a reconnection to the same zipper): not sent
    /// again, and not counted as resent.
    mutating func takeRouted(_ count: Int) -> [(frame: DataFrame, sequence: Int)] {
        let routed = waiting.prefix(count).map { (frame: $0.frame, sequence: $0.sequence) }
        let bytes = routed.reduce(0) { $0 + $1.frame.encodedLength }
        waiting.removeFirst(routed.count)
        statistics.pendingFrames -= routed.count
        statistics.pendingBytes -= bytes
        putBackHeld.frames -= routed.count
        putBackHeld.bytes -= bytes
        statistics.resent -= routed.count
        return routed
    }

    /// `count` taken frames reached a connection.
    mutating func delivered(_ count: Int) { statistics.delivered += count }

    /// A connection is serving again: returns what the outage held and refused,
    /// for the one log line of the flush, and starts counting afresh.
    mutating func endOutage() -> (buffered: Int, dropped: Int) {
        defer {
            outageBuffered = 0
            outageDropped = 0
            inDropBurst = false
        }
        return (outageBuffered, outageDropped)
    }

    /// The client ended without reconnecting: the held frames will never be
    /// sent by it. Returns them, not yet counted: `countDropped` once nobody
    /// keeps them (a mesh link keeps them for its zipper's next start).
    mutating func handOverAll() -> [Waiting] { takeWaiting() }

    /// Frames handed over and dropped.
    mutating func countDropped(_ count: Int) { statistics.dropped += count }
}
