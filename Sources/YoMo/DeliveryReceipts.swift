import Synchronization
internal import NIOCore
internal import YoMoQUIC
internal import YoMoWire

/// What a zipper has settled of one sender's frames (a client that asked for
/// delivery receipts): a frame is settled once every function connection it
/// was written to has acknowledged it, or ended and what it had not
/// acknowledged left the zipper's hold (`DeliveryDestination`); a frame held
/// for a function on its way back, once it left the hold (`HoldTally`); and
/// at once when a rule dropped it or it had nowhere to go. Frames are not followed one by
/// one: every `DeliveryReceipts.interval` the frames routed since the last
/// checkpoint become one, waiting for each connection they were written to to
/// acknowledge what had been written to it by then. That may wait for other
/// senders' frames written before, never for less than its own.
final class ReceiptLedger: Sendable {
    let connection: QUICFrameConnection

    fileprivate struct Checkpoint {
        /// The sender's stream offset after the last frame it covers.
        var through: Int
        /// Each connection written to, and its stream offset then.
        var waits: [DeliveryDestination.Wait]
        /// Its frames that the zipper held for functions on their way back.
        var held: [HoldTally]
        /// The frame that ended it by waiting for more than an acknowledgement
        /// (`Batch.endsCheckpoint`): where it ended in the stream it was
        /// written to (none if several: a fan-out).
        var ending: DeliveryDestination.Wait?

        /// Each connection reached what was written to it by then, or its
        /// function's receipts say it finished the frame that ended the
        /// checkpoint (the frames before that one settled at acknowledgement).
        /// Until the fifty-fifth round of issue 14 only the first counted: a
        /// copy a function recognized and finished at once, behind its backlog
        /// in the stream, waited until its handlers took the whole backlog,
        /// and the sender sent it again after the next crash
        /// (`yomo-fault-bench chaos --mesh --seed 8`: frames 100–215, sent again
        /// through an upstream's restart, kept by it for 4 s and then handled
        /// again by the function's next instances).
        var isSettled: Bool {
            waits.allSatisfy { wait in
                wait.destination.reached(wait.written)
                    || (ending.map { $0.destination === wait.destination && wait.destination.finishedWhole(endingAt: $0.written) } ?? false)
            } && held.allSatisfy(\.isSettled)
        }
    }

    private struct State {
        /// The sender's stream offset after the last frame routed.
        var routedThrough: Int
        /// Connections written to since the last checkpoint.
        var touched = Batch()
        /// Frames held since the last checkpoint.
        var held: HoldTally?
        var checkpoints = CircularBuffer<Checkpoint>()
        /// The offset after the last frame settled.
        var settled: Int
        /// The offset the client was last told.
        var told: Int
        /// In `DeliveryReceipts`' set of ledgers with something to tell.
        var active = false

        /// What was routed since the last checkpoint, as one: each connection
        /// written to, at its stream offset now, and the frames held.
        mutating func checkpointSinceLast() -> Checkpoint {
            defer {
                touched.removeAll()
                held = nil
            }
            return Checkpoint(
                through: routedThrough, waits: touched.destinations.map { ($0, $0.connection.sendProgress.written) },
                held: held.map { [$0] } ?? [], ending: touched.ending)
        }
    }

    private let state: Mutex<State>

    /// How far the connection this one resumes had routed (its stream's
    /// offset), when this ledger took over what that one had not settled.
    let previousRoutedThrough: Int?

    /// `offset`: where the sender's frames begin (after its handshake), said
    /// in the receipt that announces receipts. `taken`: what the sender's
    /// earlier connection had routed and not settled (`handOver`), whose
    /// client is about to send again what it had not settled: what that one
    /// had routed is not sent again, and its wait becomes this one's first
    /// checkpoint, at `offset` (the client keeps those frames as ending
    /// there), so it is announced settled only through `offset - 1`.
    init(connection: QUICFrameConnection, startingAt offset: Int, resuming taken: Handover? = nil) {
        self.connection = connection
        var state = State(routedThrough: offset, settled: offset, told: offset)
        previousRoutedThrough = taken?.routedThrough
        if let taken, !taken.pending.waits.isEmpty || !taken.pending.held.isEmpty {
            state.checkpoints.append(Checkpoint(through: offset, waits: taken.pending.waits, held: taken.pending.held))
            state.settled = offset - 1
            state.told = offset - 1
            state.active = true
        }
        self.state = Mutex(state)
    }

    /// The offset the first receipt announces.
    var announced: Int { state.withLock { $0.told } }

    /// Whether it waits for something already (what a resumed connection had not settled).
    var isWaiting: Bool { state.withLock { !$0.checkpoints.isEmpty } }

    /// The most frames forwarded to mesh links in one checkpoint (`Batch.forwardedToMesh`).
    static let framesPerLinkCheckpoint = 16

    /// What an ended connection had routed and not settled, kept for the
    /// sender's next connection (not the ledger: it would keep the ended
    /// connection alive).
    struct Handover {
        fileprivate let routedThrough: Int
        fileprivate let pending: Checkpoint

        /// What the hold's frames of the connection report to: those still held are its.
        var heldTallies: Set<ObjectIdentifier> { Set(pending.held.map(ObjectIdentifier.init)) }
    }

    /// What this ledger's connection routed and had not settled, for the
    /// ledger of the sender's next connection; this one waits for nothing more.
    func handOver() -> Handover {
        state.withLock { state in
            var pending = state.checkpointSinceLast()
            for checkpoint in state.checkpoints {
                pending.waits += checkpoint.waits
                pending.held += checkpoint.held
            }
            // A connection waited for through its furthest offset covers the
            // rest (a function behind its sources has a checkpoint a frame).
            var furthest: [ObjectIdentifier: DeliveryDestination.Wait] = [:]
            for wait in pending.waits where (furthest[ObjectIdentifier(wait.destination)]?.written ?? -1) < wait.written {
                furthest[ObjectIdentifier(wait.destination)] = wait
            }
            pending.waits = Array(furthest.values)
            state.checkpoints.removeAll()
            state.settled = state.routedThrough
            return Handover(routedThrough: state.routedThrough, pending: pending)
        }
    }

    /// Connections frames were written to, each once, in the order first
    /// written: gathered by a sender's serving task alone (no lock per
    /// frame), and in the ledger since its last checkpoint.
    struct Batch {
        fileprivate var destinations: [DeliveryDestination] = []
        // A fan-out to hundreds of functions looks each up per frame.
        private var seen: Set<ObjectIdentifier> = []
        /// A frame in it waits for more than an acknowledgement (a function's
        /// backlog, or the hold): it ends a checkpoint of its own, so that the
        /// frames before it are not kept until it is taken.
        private(set) var endsCheckpoint = false
        /// Where that frame ended in the stream it was written to (none if
        /// written to several).
        fileprivate var ending: DeliveryDestination.Wait?
        private var endingCount = 0
        fileprivate var linkFrames = 0

        mutating func add(_ destination: DeliveryDestination) {
            // The usual case: one function, the same as the frame before.
            if destinations.last === destination { return }
            if seen.insert(ObjectIdentifier(destination)).inserted { destinations.append(destination) }
        }

        /// A frame was written to `destination`, ending at `end` in its stream.
        mutating func add(_ destination: DeliveryDestination, endingAt end: Int) {
            if !destination.settlesAtAcknowledgement(through: end) {
                endsCheckpoint = true
                endingCount += 1
                ending = endingCount == 1 ? (destination, end) : nil
            }
            add(destination)
        }

        /// A frame was held for a function on its way back.
        mutating func held() { endsCheckpoint = true }

        /// A frame went to the mesh links: at most `framesPerLinkCheckpoint`
        /// such frames make a checkpoint. A link settles what its downstream
        /// settled, in order, and a downstream's function finishes copies of
        /// frames it handled as they come, behind its backlog; a burst (a
        /// source sending its backlog again through an upstream's next run)
        /// routed as one checkpoint settled only once the backlog was taken.
        mutating func forwardedToMesh() {
            linkFrames += 1
            if linkFrames >= ReceiptLedger.framesPerLinkCheckpoint { endsCheckpoint = true }
        }

        fileprivate mutating func removeAll() {
            destinations.removeAll(keepingCapacity: true)
            seen.removeAll(keepingCapacity: true)
            endsCheckpoint = false
            ending = nil
            endingCount = 0
            linkFrames = 0
        }
    }

    /// The frames through `offset` were routed, written to `batch`'s
    /// connections (taken, leaving it empty). True: the ledger has something
    /// to tell now and had not (wake the ticker).
    func routed(through offset: Int, _ batch: inout Batch?) -> Bool {
        state.withLock { state in
            state.routedThrough = offset
            for destination in batch?.destinations ?? [] { state.touched.add(destination) }
            if let ending = batch?.ending { state.touched.ending = ending }
            state.touched.linkFrames += batch?.linkFrames ?? 0
            // Its own checkpoint: a burst routed within one receipt interval
            // (a source sending its backlog again after a zipper's crash) was
            // settled as one, when its last frame was taken, while the
            // function forgot the first ones once handled; the next crash
            // brought those to it again (`yomo-fault-bench chaos --faults
            // zipper-kill`, a 20 ms pipe handler: 92 of 1,143 frames handled
            // twice in 10 s; forty-second round of issue 14).
            if batch?.endsCheckpoint == true || state.touched.linkFrames >= Self.framesPerLinkCheckpoint {
                state.checkpoints.append(state.checkpointSinceLast())
            }
            batch?.removeAll()
            defer { state.active = true }
            return !state.active
        }
    }

    /// Makes a checkpoint of what was routed since the last one and settles
    /// what can be: the offset to tell the client if it moved, and whether the
    /// ledger still waits for anything (false: leaves the active set).
    func advance() -> (tell: Int?, waiting: Bool) {
        state.withLock { state in
            if state.routedThrough > (state.checkpoints.last?.through ?? state.settled) {
                state.checkpoints.append(state.checkpointSinceLast())
            }
            while let first = state.checkpoints.first, first.isSettled {
                state.settled = first.through
                state.checkpoints.removeFirst()
            }
            let untold = state.settled > state.told
            let waiting = !state.checkpoints.isEmpty || untold
            if !waiting { state.active = false }
            return (untold ? state.settled : nil, waiting)
        }
    }

    /// A frame of this sender is held: the tally its checkpoint will wait for
    /// (the hold releases it when the frame leaves, see `HoldTally`).
    func heldFrame() -> HoldTally {
        state.withLock { state in
            let tally = state.held ?? HoldTally()
            state.held = tally
            tally.add()
            return tally
        }
    }

    /// The client was told `offset` (its receipt was queued).
    func told(_ offset: Int) {
        state.withLock { $0.told = max($0.told, offset) }
    }

    /// Whether `routed` made the ledger active again since `advance` found it idle.
    var isActive: Bool { state.withLock { $0.active } }
}

/// The frames of one checkpoint that the zipper held for stream functions on
/// their way back: settled once each left the hold (dropped, kept in the
/// held frames file, or taken by every function it was held for) and what
/// was written of them reached those functions' QUIC stacks. A frame taken
/// is waited for here before it is released, so the count never reaches
/// zero between the two.
final class HoldTally: Sendable {
    private let state = Mutex<(held: Int, waits: [DeliveryDestination.Wait], finishedBefore: Bool)>((0, [], false))

    func add() { state.withLock { $0.held += 1 } }

    /// One frame more: itself, for the hold.
    func adding() -> HoldTally {
        add()
        return self
    }

    /// One frame left the hold.
    func release() { state.withLock { $0.held -= 1 } }

    /// A frame of it was written to `destination`, ending at `written`.
    func wait(for destination: DeliveryDestination, written: Int) {
        state.withLock { state in
            if let index = state.waits.firstIndex(where: { $0.destination === destination }) {
                state.waits[index].written = max(state.waits[index].written, written)
            } else {
                state.waits.append((destination, written))
            }
        }
    }

    var isSettled: Bool {
        // Not under this lock: a destination that ended asks its own tally.
        let (held, waits) = state.withLock { ($0.held, $0.waits) }
        return held == 0 && Self.reached(waits)
    }

    /// Whether it left the hold and every stream function it was written to
    /// said its handlers finished it (their handling receipts), not only that
    /// they took it, or ended without and the function its leftover went to
    /// next finished it (`DeliveryDestination.finished`). A frame held for
    /// two names and taken by one is not.
    var wasHandled: Bool {
        let (held, waits, finishedBefore) = state.withLock { ($0.held, $0.waits, $0.finishedBefore) }
        // A tally of several frames (those a connection's end had not written) waits for those that went somewhere.
        return held == 0 && (waits.isEmpty ? finishedBefore : waits.allSatisfy { $0.destination.finished(frameEndingAt: $0.written) })
    }

    /// Its frame, left by a connection that ended, was not held again: the
    /// functions it was owed had finished it (a copy, read after the
    /// original). Until the fifty-ninth round of issue 14 such a frame never
    /// counted as handled, and a held frames file that led to it kept it
    /// until a crash gave it to the next instance again
    /// (`yomo-fault-bench chaos --mesh --seed 12`: 109 frames).
    func finishedBefore() { state.withLock { $0.finishedBefore = true } }

    /// Whether it was written to some connection (else it left the hold by its rules: dropped).
    var wasWritten: Bool { state.withLock { !$0.waits.isEmpty } }

    /// Whether every connection acknowledged what was written to it by then,
    /// or ended and what it had not acknowledged left the hold.
    static func reached(_ waits: [DeliveryDestination.Wait]) -> Bool {
        waits.allSatisfy { $0.destination.reached($0.written) }
    }
}

/// A connection the zipper writes frames to, as receipts wait for it. What it
/// had not acknowledged when it ended is taken back from the QUIC layer and
/// held for the function's return, in the zipper's memory only: a frame
/// written there is settled once acknowledged, or once the connection's end
/// was dealt with and every frame held at it left the hold. Until the
/// thirty-fourth round of issue 14 the end alone settled them, and a zipper
/// that crashed while it held them lost them.
final class DeliveryDestination: Sendable {
    typealias Wait = (destination: DeliveryDestination, written: Int)

    let connection: any DeliveryProgress
    /// Set when the zipper dealt with the connection's end: the frames it held then.
    private let leftovers = Mutex<Leftovers?>(nil)
    /// How far an acknowledgement settles: everything (`Int.max`), or, for
    /// a function that says what its handlers took, what they took plus its
    /// recent pace's worth (`TakingPace`).
    private let settlesAtAcknowledgement: Atomic<Int>
    private let pace = Mutex(TakingPace())
    /// The function said it is closing (`settleOnlyWhatIsTaken`).
    private let settlesOnlyTaken = Atomic(false)
    /// What its handlers finished out of order, past what they settled in order.
    private let handledAhead = Mutex(HandledAhead())
    /// The end of what its handlers finished in order, as its receipts said.
    private let handledInOrder = Atomic(0)
    /// The end of what its handlers finished in order and the zipper settled
    /// their answers of, as its receipts said (`ReceiptFrame.answeredThrough`);
    /// -1 while it has not said (a function from before: `handledInOrder`).
    private let answeredInOrder = Atomic(-1)
    /// A stream function that says what its handlers finished: else a frame
    /// is finished once it reached the connection (`reached`).
    private let reportsHandling: Bool
    /// Its connection ended as its client closed for good (`Zipper.closedForGood`).
    private let endedForGood = Atomic(false)
    /// Names (`CopyKey.name`, or ids alone from a function from before) of
    /// frames its handlers finished on an earlier connection
    /// (`ReceiptFrame.handledBefore`): copies of them written here are not
    /// taken back at the end.
    private let handledBefore = Mutex<Set<String>>([])
    /// Past this many names a new one is not kept (its copy may go to the
    /// next instance: at least once), nor one longer than `maximumIDLength`
    /// (this SDK's and Go's ids are 21 bytes, a name at most 26 more), so a
    /// function that names frames without end costs the zipper at most 128 KiB.
    static let maximumHandledBefore = 2048
    static let maximumIDLength = 64

    /// `reportsTaking`: a stream function that may say what its handlers
    /// took: nothing settles at acknowledgement until its first receipt says
    /// how far (or, without `takenThrough`, that it is from before them).
    /// Frames the zipper held for it are written before it reads that
    /// receipt; they were settled at acknowledgement, and a backlog among
    /// them was lost to a double fault.
    init(_ connection: any DeliveryProgress, reportsTaking: Bool = false) {
        self.connection = connection
        reportsHandling = reportsTaking
        settlesAtAcknowledgement = Atomic(reportsTaking ? 0 : .max)
    }

    /// Whether a frame written ending at `end` is settled once acknowledged,
    /// as far as the function's last receipt tells.
    func settlesAtAcknowledgement(through end: Int) -> Bool {
        settlesAtAcknowledgement.load(ordering: .relaxed) >= end
    }

    /// Whether what was written to it through stream offset `written` is settled.
    func reached(_ written: Int) -> Bool {
        if connection.acknowledgedBytes >= written, settlesAtAcknowledgement.load(ordering: .relaxed) >= written { return true }
        guard connection.sendProgress.ended, let leftovers = leftovers.withLock({ $0 }) else { return false }
        return leftovers.settled(through: written)
    }

    /// The connection ended and what it had not acknowledged is dealt with:
    /// `left` has the frames held then (each released as it leaves the
    /// hold). Set once they are all in it: a receipt that saw it earlier
    /// would settle what is still being held.
    func ended(leaving left: Leftovers) {
        leftovers.withLock { $0 = left }
    }

    /// What its end left, for a frame held after it (a write that found it ended).
    var leftoversOfEnd: Leftovers? { leftovers.withLock { $0 } }

    /// The function's handlers took the frames through `taken` (its receipt,
    /// `ReceiptFrame.takenThrough`), `bytes` of frames in all if it says
    /// (`ReceiptFrame.takenBytes`): from now on an acknowledgement settles
    /// only that far and the pace's allowance beyond, the pace measured on
    /// `bytes` (else on `taken`).
    func took(through taken: Int, bytes: Int? = nil, at now: ContinuousClock.Instant = .now) {
        let through = pace.withLock { $0.settleable(taken: taken, progress: bytes ?? taken, at: now) }
        settlesAtAcknowledgement.store(settlesOnlyTaken.load(ordering: .relaxed) ? taken : through, ordering: .relaxed)
    }

    /// The function said it is closing: from its next receipt on an
    /// acknowledgement settles only what it took, nothing of its pace
    /// beyond. It may give back what waits in it, from past the furthest
    /// the pace settled before (`SettleableBound`), while its handlers still
    /// take what comes before that: the pace they keep must not settle the
    /// frames given back, which only the zipper has then.
    func settleOnlyWhatIsTaken() {
        settlesOnlyTaken.store(true, ordering: .relaxed)
    }

    /// The function's receipts do not say what its handlers took (it is from
    /// before the forty-first round): an acknowledgement settles all.
    func tellsNothingTaken() {
        settlesAtAcknowledgement.store(.max, ordering: .relaxed)
    }

    /// The function's receipt: its handlers finished every frame before
    /// `settled` and those in `ranges` (`ReceiptFrame.handledAhead`), kept
    /// only within what was written to it (`written`).
    func handled(through settled: Int, ahead ranges: [Range<UInt64>], written: Int) {
        handledInOrder.max(settled, ordering: .relaxed)
        handledAhead.withLock { kept in
            kept.settled(through: settled)
            for range in ranges {
                let (lower, upper) = (max(Int(clamping: range.lowerBound), settled), min(Int(clamping: range.upperBound), written))
                if lower < upper { kept.add(lower..<upper) }
            }
        }
    }

    /// Its client closed for good: its answers are with the zipper's held
    /// frames file or on their way, no longer with it.
    func closedForGood() { endedForGood.store(true, ordering: .relaxed) }

    /// The function's receipt: what its handlers finished in order through
    /// `end` has its answers settled.
    func answered(through end: Int) { answeredInOrder.max(end, ordering: .relaxed) }

    /// The function's receipt named frames its handlers finished on an earlier connection.
    func handledBefore(_ names: [String]) {
        handledBefore.withLock { kept in
            for name in names where kept.count < Self.maximumHandledBefore && name.utf8.count <= Self.maximumIDLength { kept.insert(name) }
        }
    }

    var handledBeforeCount: Int { handledBefore.withLock { $0.count } }

    /// Frames an upstream zipper of the mesh forwarded that were written
    /// here, by where each ends and its key (`CopyKey.digest`), until the function's
    /// receipts say its handlers finished them (`finishedLinkFrames`); the
    /// oldest forgotten past `maximumLinkFramesNamed`.
    private let linkFrames = Mutex(CircularBuffer<(end: Int, digest: CopyDigest)>())
    static let maximumLinkFramesNamed = 16_384

    /// A frame an upstream zipper forwarded, keyed `digest`, was written here ending at `end`.
    func wroteLinkFrame(endingAt end: Int, digest: CopyDigest) {
        linkFrames.withLock { frames in
            if frames.count == Self.maximumLinkFramesNamed { frames.removeFirst() }
            frames.append((end, digest))
        }
    }

    /// The keys of the frames from upstream zippers written here that end at
    /// `ends`, by end: what a connection that ended had not finished of the
    /// mesh's frames (once per connection's end).
    func linkDigests(endingAt ends: [Int]) -> [Int: CopyDigest] {
        guard !ends.isEmpty else { return [:] }
        let wanted = Set(ends)
        return linkFrames.withLock { frames in
            var digests: [Int: CopyDigest] = [:]
            for frame in frames where wanted.contains(frame.end) { digests[frame.end] = frame.digest }
            return digests
        }
    }

    /// The keys of the frames from upstream zippers that the function's
    /// handlers finished, as its receipt says (`settled`, and the ranges
    /// `ahead`), forgotten here: the zipper remembers them for the
    /// function's name (`HeldFrames.remember`).
    func finishedLinkFrames(through settled: Int, ahead ranges: [Range<UInt64>]) -> [CopyDigest] {
        linkFrames.withLock { frames in
            guard let first = frames.first, first.end <= settled || !ranges.isEmpty else { return [] }
            var finished: [CopyDigest] = []
            while let first = frames.first, first.end <= settled {
                finished.append(first.digest)
                frames.removeFirst()
            }
            guard !ranges.isEmpty, !frames.isEmpty else { return finished }
            // A range runs from the end of the frame before its first to the end of its last.
            var rest = CircularBuffer<(end: Int, digest: CopyDigest)>(initialCapacity: frames.count)
            for frame in frames {
                if ranges.contains(where: { Int(clamping: $0.lowerBound) < frame.end && frame.end <= Int(clamping: $0.upperBound) }) {
                    finished.append(frame.digest)
                } else {
                    rest.append(frame)
                }
            }
            frames = rest
            return finished
        }
    }

    /// The connection ended, and `frames` are what it had not settled: those
    /// whose ids the function named as finished on an earlier connection are
    /// added to what it finished (the zipper or a source sent them again,
    /// and the function had not read them yet). How many.
    func finishedBefore(among frames: [(frame: DataFrame, target: String?, notAcknowledged: Int, end: Int)], written: Int) -> Int {
        let names = handledBefore.withLock { $0 }
        guard !names.isEmpty else { return 0 }
        let ranges = frames.compactMap { frame -> Range<UInt64>? in
            guard CopyKey(frame.frame)?.isNamed(in: names) == true else { return nil }
            return UInt64(frame.end - frame.frame.encodedLength)..<UInt64(frame.end)
        }
        if !ranges.isEmpty { handled(through: 0, ahead: ranges, written: written) }
        return ranges.count
    }

    /// What its handlers finished out of order, as its receipts told so far.
    var finishedAhead: HandledAhead { handledAhead.withLock { $0 } }

    /// The bytes those ranges cover (without copying them).
    var finishedAheadBytes: Int { handledAhead.withLock { $0.bytes } }

    /// Whether its handlers finished the frame written ending at `end`, and
    /// everything written before it was acknowledged (what a checkpoint
    /// holds beside that frame settled at acknowledgement).
    func finishedWhole(endingAt end: Int) -> Bool {
        connection.acknowledgedBytes >= end && hasHandled(frameEndingAt: end)
    }

    /// Whether its handlers finished the frame written ending at `end`, as
    /// its receipts said (never, for a connection without them). A range
    /// handled out of order that holds the frame's last byte holds the frame:
    /// ranges start where a frame ends.
    func hasHandled(frameEndingAt end: Int) -> Bool {
        end <= handledInOrder.load(ordering: .relaxed) || handledAhead.withLock { $0.contains(end - 1..<end) }
    }

    /// Whether the frame that ended at `end` here was finished: by this
    /// connection's handlers, or, once it ended without them, where its
    /// leftover went (the function's next instance). Until the forty-fifth
    /// round of issue 14 only the first counted, and a restored held frames
    /// file kept what a closing function had dropped unhandled and its next
    /// instance handled; a crash then gave those to the instance after
    /// (`yomo-fault-bench chaos --seed 32`: blocks of 47–58 frames handled twice).
    /// A function that says what it answered (`answered(through:)`) finished
    /// a frame once the zipper settled its answers too: until the sixty-first
    /// round the held frames file let go of a frame whose answers the zipper
    /// held for a sink that was away, and a crash of the zipper and then of
    /// the function lost both (`chaos --async-handler --seed 32`: 70 frames).
    func finished(frameEndingAt end: Int) -> Bool {
        guard reportsHandling else { return reached(end) }
        let answered = answeredInOrder.load(ordering: .relaxed)
        if answered < 0 ? hasHandled(frameEndingAt: end) : end <= answered { return true }
        guard connection.sendProgress.ended else { return false }
        // Handled here, its answers unsettled when the connection ended: not
        // left for another instance. A function that closed for good ended
        // once its writes were acknowledged, and what of them the hold kept went
        // to the held frames file at its end: finished. One that died may have
        // left its answers in this zipper's memory alone: not finished, so a
        // crash of this zipper gives the frame to the next instance again.
        if answered >= 0, hasHandled(frameEndingAt: end) { return endedForGood.load(ordering: .relaxed) }
        guard let leftovers = leftovers.withLock({ $0 }) else { return false }
        return leftovers.handled(endingAt: end)
    }
}

/// What a connection's end left held, frame by frame, by where each ended in
/// its stream: a checkpoint that waited for the connection through an offset
/// waits only for the frames up to it. Until the forty-first round of issue
/// 14 one tally stood for all of them, and a source kept every frame a
/// function's end left (hundreds, behind a slow function) until its next
/// instance had taken the last; when that one died halfway and then the
/// zipper, the frames it had handled came again to a third that never saw
/// them (`yomo-fault-bench chaos --seed 32`: 315 frames handled twice).
final class Leftovers: Sendable {
    private struct State {
        /// In order of `end`; 0: a frame never written there, which every wait includes.
        var frames: [(end: Int, tally: HoldTally)] = []
        /// How many of `frames`, from the first, were seen settled.
        var settled = 0

        /// Where the frame ending at `end` is, or would go, in `frames`: a
        /// binary search (a restored held frames file asks for each of its
        /// frames every 100 ms).
        func place(of end: Int) -> Int {
            var (low, high) = (0, frames.count)
            while low < high {
                let middle = (low + high) / 2
                if frames[middle].end < end { low = middle + 1 } else { high = middle }
            }
            return low
        }
    }

    private let state = Mutex(State())

    /// The tally of the frame that ended at `end` in the connection's stream
    /// (0 for frames never written there: they share one).
    func tally(endingAt end: Int) -> HoldTally {
        state.withLock { state in
            let index = state.place(of: end)
            if index < state.frames.count, state.frames[index].end == end { return state.frames[index].tally }
            let tally = HoldTally()
            state.frames.insert((end, tally), at: index)
            state.settled = min(state.settled, index)
            return tally
        }
    }

    /// Whether the frame left that ended at `end` was handled where it went.
    func handled(endingAt end: Int) -> Bool {
        let tally = state.withLock { state -> HoldTally? in
            let index = state.place(of: end)
            return index < state.frames.count && state.frames[index].end == end ? state.frames[index].tally : nil
        }
        // Asked outside the lock, as below.
        return tally?.wasHandled ?? false
    }

    /// Whether every frame left that ended at or before `written` has
    /// settled: left the hold and reached wherever it went.
    func settled(through written: Int) -> Bool {
        // Asked outside the lock: a tally asks the destinations it went to,
        // which may ask leftovers of their own.
        let (start, pending) = state.withLock { state in
            (state.settled, state.frames[state.settled...].prefix { $0.end <= written }.map(\.tally))
        }
        let newlySettled = pending.prefix { $0.isSettled }.count
        if newlySettled > 0 { state.withLock { $0.settled = max($0.settled, start + newlySettled) } }
        return newlySettled == pending.count
    }
}

/// A stream function's pace of taking frames, as its receipts tell it: a
/// frame acknowledged by a function that keeps up is settled for its source at
/// once (it would be taken within milliseconds, and waiting for the word
/// would keep every source's frames a receipt's interval longer: 0.95 of the
/// loop's rate at 10 ms), while a backlog waits until taken. Until the
/// forty-first round of issue 14 all was settled at acknowledgement, and a
/// zipper's crash followed by the function's lost the backlog the function
/// had acknowledged (`yomo-fault-bench chaos --seed 32`).
struct TakingPace {
    /// How much of the function's pace an acknowledgement settles ahead of
    /// what it took: what a double fault (its zipper, then it) may lose.
    static let allowance: Duration = .milliseconds(50)
    /// Samples are kept this far apart at least.
    static let spacing: Duration = .milliseconds(10)

    /// Earlier receipts: the oldest is the newest at least `allowance` old, if any is.
    private var samples: [(at: ContinuousClock.Instant, progress: Int)] = []

    /// The end of what an acknowledgement settles now: `taken`, and what the
    /// function took in the last `allowance` (its pace over a longer span
    /// when samples are older, scaled to `allowance`), measured on
    /// `progress`: the bytes its handlers took (`ReceiptFrame.takenBytes`),
    /// or `taken` for a function that does not say. Until the fifty-first
    /// round of issue 14 always `taken`, which also jumps past copies the
    /// function finished as it read them: a burst of them after a
    /// reconnection read as a pace of hundreds of frames, and settled as
    /// many beyond what was taken (`yomo-fault-bench chaos --mesh --seed 3`,
    /// two frames lost to a double fault).
    mutating func settleable(taken: Int, progress: Int, at now: ContinuousClock.Instant) -> Int {
        // A receipt sooner than `spacing` after the last sample is measured against those kept.
        if samples.last.map({ now - $0.at >= Self.spacing }) ?? true { samples.append((now, progress)) }
        while samples.count > 1, now - samples[1].at >= Self.allowance { samples.removeFirst() }
        guard let oldest = samples.first, progress > oldest.progress else { return taken }
        let span = now - oldest.at
        let sinceOldest = progress - oldest.progress
        guard span > Self.allowance else { return taken + sinceOldest }
        return taken + Int(Double(sinceOldest) * (Self.allowance / span))
    }
}

/// The zipper's receipts: one task wakes every `interval` while some sender
/// has frames not yet settled or not yet told, and sends each its receipt.
/// Receipts are cumulative, so one that cannot be queued now (a client that
/// stopped reading) is replaced by the next.
final class DeliveryReceipts: Sendable {
    /// How often receipts go out while frames flow: a client keeps about this
    /// long of its frames (plus a round trip) beyond the zipper's
    /// acknowledgement. At 10 ms the kept frames of a saturated loop's clients
    /// outgrew the caches: 0.95 of the rate; at 2 ms no cost is seen.
    static let interval: Duration = .milliseconds(2)
    /// A receipt is not queued behind more than this many unacknowledged bytes.
    static let queueLimit = 64 << 10

    private let active = Mutex<[ObjectIdentifier: ReceiptLedger]>([:])
    private let wakeups: (stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation)
    private let sent = Atomic<Int>(0)
    /// Tests hold receipts back, as a path that lost them would.
    let pausedForTesting = Atomic<Bool>(false)

    init() {
        wakeups = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    /// Receipts sent so far.
    var receiptsSent: Int { sent.load(ordering: .relaxed) }

    /// `ledger` has something to tell.
    func wake(_ ledger: ReceiptLedger) {
        let wasIdle = active.withLock { active in
            defer { active[ObjectIdentifier(ledger)] = ledger }
            return active.isEmpty
        }
        if wasIdle { wakeups.continuation.yield() }
    }

    /// Sends receipts until cancelled.
    func run() async {
        for await _ in wakeups.stream {
            while !active.withLock({ $0.isEmpty }) {
                do { try await Task.sleep(for: Self.interval) } catch { return }
                round()
            }
        }
    }

    /// One round: each ledger's checkpoint, and its receipt if it moved.
    func round() {
        guard !pausedForTesting.load(ordering: .relaxed) else { return }
        for ledger in active.withLock({ Array($0.values) }) {
            let (tell, waiting) = ledger.advance()
            if let tell {
                let receipt = Frame.receipt(ReceiptFrame(settledThrough: UInt64(tell)))
                if (try? ledger.connection.tryWrite(control: receipt, limit: Self.queueLimit)) == true {
                    ledger.told(tell)
                    sent.add(1, ordering: .relaxed)
                }
            }
            if ledger.connection.connection.sendProgress.ended {
                remove(ledger)
            } else if !waiting {
                // Unless a frame routed since made it active again (it woke us then).
                active.withLock { active in
                    if !ledger.isActive { active[ObjectIdentifier(ledger)] = nil }
                }
            }
        }
    }

    /// The sender's connection ended: nothing more to tell it.
    func remove(_ ledger: ReceiptLedger) {
        _ = active.withLock { $0.removeValue(forKey: ObjectIdentifier(ledger)) }
    }
}

/// What receipts read of a connection frames are written to: a QUIC
/// connection (unit tests of the logic give their own).
protocol DeliveryProgress: AnyObject, Sendable {
    /// Bytes of its stream the peer acknowledged. A stream function that
    /// acknowledges handling is not waited for beyond this: while it lives,
    /// it and the zipper (which keeps what its handlers have not finished)
    /// both have the frame, and when it ends, what was not finished is held
    /// and waited for as its connection's leftovers.
    var acknowledgedBytes: Int { get }
    /// Bytes written to its stream so far, and whether it ended.
    var sendProgress: (written: Int, ended: Bool) { get }
}

extension QUICConnection: DeliveryProgress {}
