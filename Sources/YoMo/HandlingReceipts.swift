import Synchronization
internal import NIOCore
internal import YoMoWire

/// What a stream function's handlers finished of the frames one connection
/// brought, for a zipper that welcomes its receipts
/// (`ReceiptFrame.welcomesHandling`): that zipper keeps what it wrote to the
/// function until told, and takes back what was not finished if the
/// connection ends (a crash of the function included), where a zipper
/// without them has only what the function's QUIC stack had not acknowledged.
/// Until the thirty-fifth round of issue 14 a frame acknowledged and not yet
/// handled was lost with a function that crashed.
///
/// A frame counts as handled once its handler returned (or threw: the error
/// handler has it); a pipe handler's frame, once the handler asked for the
/// next one. What the handler wrote was queued on the same stream before the
/// receipt that covers its frame, so the zipper reads the answers first: a
/// crash that loses them loses the receipt too. Receipts say the
/// end of the frames handled in order, and the ranges past it whose frames
/// were handled out of order (one slow handler held back the word on every
/// frame after it until the forty-third round).
///
/// Receipts also say the end of the frames handled in order whose answers
/// are settled (`ReceiptFrame.answeredThrough`): the zipper settled what the
/// function wrote before each one's handler finished (its answers, and
/// whatever came before them). A zipper keeps a frame restored from its held
/// frames file there until then: a frame whose answers it held for a sink
/// that was away, let go of at the word handled, was lost with them when the
/// zipper was killed and then the function while it redialled
/// (`yomo-fault-bench chaos --async-handler --seed 32`: 70 frames in one
/// run, sixty-first round of issue 14).
final class HandlingLedger: Sendable {
    /// Ranges of frames handled out of order one receipt names at most; the
    /// rest wait for the next.
    static let rangesPerReceipt = 32
    /// Frames finished on earlier connections that one receipt names at
    /// most (`ReceiptFrame.handledBefore`, `CopyKey.name`: about 50 bytes
    /// each), and that a connection's first receipts name in all, newest first.
    static let idsPerReceipt = 128
    static let idsToldOnReconnect = 1024
    /// How often a function tells what was handled while frames flow. Only
    /// the zipper waits for it (to let go of what it keeps; sources' receipts
    /// do not), so it is less often than the zipper's receipts: each one is
    /// a packet of its own, and every 2 ms cost the loop 0.95 of its rate.
    static let interval: Duration = .milliseconds(5)
    /// Frames handled in order that wait for their answers to be settled
    /// (`answeredThrough`): past this many (a sink away for long), the oldest
    /// are said answered anyway, so a long outage costs no more.
    static let maximumAwaitingAnswers = 4096
    /// One frame given to a handler, for `finished`.
    struct Token: Sendable {
        let ledger: HandlingLedger
        fileprivate let index: Int
        /// The stream offset just past the frame.
        fileprivate let end: Int
        /// Its bytes in the stream.
        fileprivate let length: Int

        /// Its handler finished.
        func finished() { ledger.finished(index) }

        /// A handler took it (the pipe handler, from its queue).
        func taken() { ledger.took(through: end, bytes: length) }

        /// The same frame came again on a later connection as `copy`.
        func forward(to copy: Token) { ledger.forward(index, to: copy) }

        /// Its handler finished (or the ledger let go of it).
        var isFinished: Bool { ledger.isFinished(index) }

        /// The same frame read again on a later connection, waiting for this
        /// one to finish (`forward(to:)`); nil once it finished.
        var copy: Token? { ledger.copy(of: index) }

        /// Where the frame starts in the stream.
        var start: Int { end - length }

        /// Whether a closing function must handle the frame rather than give
        /// it back: the zipper no longer keeps what starts before `unkept`
        /// (`ReceiptFrame.unkeptThrough`), and may have settled for its
        /// sender what ends within `settleable` (`furthestSettleable`).
        func mustBeHandled(unkept: Int, settleable: Int) -> Bool {
            start < unkept || end <= settleable
        }
    }

    /// Where a closing function stands with a zipper that answers its
    /// closing word (`ReceiptFrame.unkeptThrough`).
    enum Closing: Int {
        /// Not closing, or not with such a zipper.
        case no
        /// It said it is closing: frames read now wait for the answer.
        case awaitingAnswer
        /// Answered: frames read now go back to the zipper unhandled.
        case givingBack
    }

    private struct Entry {
        /// The stream offset just past the frame.
        var end: Int
        var done = false
        /// Where what the function wrote before the frame's handler finished
        /// ends, in this side's stream: answered once the zipper settled it.
        var answersEnd = 0
        /// The frame, read only if the connection ends (`untold`) or the
        /// entry is let go of (`Recent`): nil if not data.
        var frame: DataFrame?
        /// The same frame sent again on a later connection, finished with this one.
        var copy: Token?
    }

    /// Frames read, kept until the zipper was sent a receipt past them: until
    /// then the zipper may send them again, and a copy is recognized.
    private struct State {
        var entries = CircularBuffer<Entry>()
        /// The index `entries.first` has.
        var firstIndex = 0
        /// How many of `entries`, from the first, are handled.
        var handledCount = 0
        /// The offset after the last frame handled in order.
        var handled: Int
        var told: Int
        /// Receipts queued and not yet acknowledged by the zipper's QUIC
        /// stack: where each ends in this side's stream, and what it told.
        var receipts = CircularBuffer<(end: Int, told: Int)>()
        /// Frames handled in order whose answers are not yet settled: where
        /// each starts, and where its answers end (this side's stream).
        var answerWaits = CircularBuffer<(start: Int, answersEnd: Int)>()
        /// The answered end last told (`ReceiptFrame.answeredThrough`).
        var toldAnswered: Int
        /// What a receipt the zipper's QUIC stack acknowledged told: frames
        /// before it will not come again. A receipt only queued may be lost
        /// with the connection, and then the zipper sends those frames again
        /// (a cut just after they were handled, and they were handled twice).
        var confirmed: Int
        /// The ticker waits for a frame (`wakeups`).
        var idle = true
        /// Data frames read on this connection (for tests: what reached the function).
        var received = 0
        /// The taken offset last told (`ReceiptFrame.takenThrough`).
        var toldTaken: Int
        /// Indexes of frames marked handled whose range, if they are past
        /// those handled in order, the zipper has not been told yet.
        var handledUntold: [Int] = []
        /// What the zipper may have settled for senders, as receipts said.
        var settleable: SettleableBound
        /// Frames let go of from `entries` and not yet in `recent`: keyed
        /// outside this lock, which the reading task takes per frame.
        var letGo: [(index: Int, end: Int, frame: DataFrame)] = []

        /// The entry with `index`, if still kept.
        func position(of index: Int) -> CircularBuffer<Entry>.Index? {
            let offset = index - firstIndex
            guard offset >= 0, offset < entries.count else { return nil }
            return entries.index(entries.startIndex, offsetBy: offset)
        }

        mutating func append(_ entry: Entry) -> (index: Int, wake: Bool) {
            entries.append(entry)
            defer { idle = false }
            return (firstIndex + entries.count - 1, idle)
        }
    }

    private let state: Mutex<State>
    /// The newest frames let go of, as keys (`Recent`).
    private let recent = Mutex(Recent())
    /// Indexes of frames whose handlers finished, not yet marked in `state`,
    /// with where the function's writes ended then: handlers do not take the
    /// lock the reading task takes per frame (under load the two contended,
    /// and the loop ran at 0.95 of its rate).
    private let completions = Mutex<[(index: Int, answersEnd: Int)]>([])
    /// Where the data frames written on this connection end, and how far
    /// the zipper settled them (this side's stream offsets).
    private let written = Atomic<Int>(0)
    private let settledWrites = Atomic<Int>(0)
    /// Set once a copy waits for a frame here: completions are then marked at
    /// once (this connection ended, and its ticker no longer marks them).
    private let forwarding = Atomic<Bool>(false)
    /// The end of the frames handlers took, in order, running or finished
    /// (`ReceiptFrame.takenThrough`): what waits after it (a pipe handler's
    /// queue) is kept by its sources too. Moved by the reading task and the
    /// pipe handler, so apart from `state`'s lock.
    private let taken: Atomic<Int>
    /// The bytes of the frames handlers took (`ReceiptFrame.takenBytes`):
    /// `taken` also moves past frames no handler took (copies finished as
    /// they were read), and the zipper measures the pace on this.
    private let bytesTaken = Atomic<Int>(0)
    /// Yielded when the first frame arrives after the ticker went idle.
    let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation
    /// The zipper answers a closing word with what it keeps (its first
    /// receipt had `ReceiptFrame.unkeptThrough`): a closing pipe handler
    /// may give back its queue.
    let zipperAnswersClosing: Bool
    private let closing = Atomic(Closing.no.rawValue)
    /// Where the first frame given back starts (`Int.max`: none is): taken
    /// and handled are never told past it, or the zipper would settle
    /// frames it will give to the function's next instance.
    private let givenBackFrom = Atomic(Int.max)

    /// `offset`: the stream offset after the handshake's answer.
    init(startingAt offset: Int, zipperAnswersClosing: Bool = false, at now: ContinuousClock.Instant = .now) {
        var settleable = SettleableBound(from: offset)
        // The dial's first receipt says nothing taken yet: the zipper's first sample.
        settleable.note(taken: offset, progress: 0, at: now)
        state = Mutex(State(handled: offset, told: offset, toldAnswered: offset, confirmed: offset, toldTaken: offset, settleable: settleable))
        taken = Atomic(offset)
        self.zipperAnswersClosing = zipperAnswersClosing
        (wakeups, wake) = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
    }

    var closingState: Closing { Closing(rawValue: closing.load(ordering: .relaxed)) ?? .no }

    /// The function's data frames written on this connection end at `end`
    /// (called in stream order, under the session's lock).
    func wrote(through end: Int) { written.store(end, ordering: .relaxed) }

    /// The zipper settled this side's frames through `offset` (in order).
    func writesSettled(through offset: Int) { settledWrites.store(offset, ordering: .relaxed) }

    /// It says it is closing to a zipper that answers: frames read from now
    /// on wait for the answer.
    func awaitAnswer() { closing.store(Closing.awaitingAnswer.rawValue, ordering: .relaxed) }

    /// The zipper answered: the frames from `start` on (those queued and
    /// not yet taken, and every one read from now) go back to it unhandled.
    func giveBack(from start: Int) {
        givenBackFrom.store(start, ordering: .relaxed)
        closing.store(Closing.givingBack.rawValue, ordering: .relaxed)
    }

    /// The furthest the zipper may have settled of this connection's
    /// frames for their senders, by the pace it reckoned from the receipts.
    var furthestSettleable: Int { state.withLock { $0.settleable.furthest } }

    /// `tell` as a receipt to send; the pace it tells is noted.
    func receipt(_ tell: Tell, closing: Bool = false, handledBefore: [String] = [], at now: ContinuousClock.Instant = .now) -> Frame {
        state.withLock { $0.settleable.note(taken: tell.taken, progress: tell.takenBytes ?? tell.taken, at: now) }
        return tell.receipt(closing: closing, handledBefore: handledBefore)
    }

    /// A frame of `length` bytes ending at `end` was read and goes to a handler.
    func received(end: Int, length: Int, frame: DataFrame?) -> Token {
        let (index, wakes) = state.withLock { state in
            state.received += 1
            return state.append(Entry(end: end, frame: frame))
        }
        if wakes { wake.yield() }
        return Token(ledger: self, index: index, end: end, length: length)
    }

    /// Handlers took the frames through `end` (never moves back), the last
    /// of them `bytes` long (0: no handler took it, as a copy).
    func took(through end: Int, bytes: Int = 0) {
        if bytes > 0 {
            bytesTaken.add(bytes, ordering: .relaxed)
        } else if closing.load(ordering: .relaxed) != Closing.no.rawValue {
            // Frames read since the closing word wait for the zipper's answer
            // (or go back), untaken: one passed over after them (a receipt, a
            // copy) moved what was taken past them, the zipper settled them for
            // their senders, and the function had to handle them all (a
            // function whose async handlers were at their limits, receipts
            // among its frames: `yomo-fault-bench chaos --mesh --seed 1
            // --async-handler`, 372 frames worked off for 3.8 s).
            return
        }
        taken.max(min(end, givenBackFrom.load(ordering: .relaxed)), ordering: .relaxed)
    }

    /// What a receipt tells: the end of the frames handled in order, and of
    /// those taken; the ranges past them handled out of order.
    struct Tell: Equatable {
        var handled: Int
        var taken: Int
        /// The end of the frames handled in order whose answers are settled
        /// (nil: as `handled`; `answeredEnd`).
        var answered: Int?
        var handledAhead: [Range<Int>] = []
        /// The entries `handledAhead` covers, by index: told once it is queued.
        var aheadIndexes: [ClosedRange<Int>] = []
        /// The bytes handlers took so far (not compared: it moves with `taken`).
        var takenBytes: Int?

        func receipt(closing: Bool = false, handledBefore: [String] = []) -> Frame {
            .receipt(ReceiptFrame(
                settledThrough: UInt64(handled), closing: closing, takenThrough: UInt64(taken),
                handledAhead: handledAhead.map { UInt64($0.lowerBound)..<UInt64($0.upperBound) }, handledBefore: handledBefore,
                takenBytes: takenBytes.map { UInt64($0) }, answeredThrough: UInt64(answeredEnd)))
        }

        var answeredEnd: Int { answered ?? handled }

        static func == (lhs: Tell, rhs: Tell) -> Bool {
            lhs.handled == rhs.handled && lhs.taken == rhs.taken && lhs.handledAhead == rhs.handledAhead
                && lhs.answeredEnd == rhs.answeredEnd
        }
    }

    /// A frame ending at `end` that no handler gets (not data, or skipped and
    /// reported): handled once those before it are.
    func passed(end: Int) {
        let wakes = state.withLock { state -> Bool in
            if state.handledCount == state.entries.count {
                state.handled = max(state.handled, end)
                defer { state.idle = false }
                return state.idle && state.handled > state.told
            }
            return state.append(Entry(end: end, done: true)).wake
        }
        if wakes { wake.yield() }
    }

    /// A frame arrived again on a later connection as `copy` (the zipper or a
    /// source sent it again after this connection ended): finished when this
    /// one is, at once if it was.
    func forward(_ index: Int, to copy: Token) {
        forwarding.store(true, ordering: .sequentiallyConsistent)
        let (finishedAlready, copies) = state.withLock { state -> (Bool, [Token]) in
            let copies = markCompletions(&state)
            guard let position = state.position(of: index) else { return (true, copies) }
            if state.entries[position].done { return (true, copies) }
            state.entries[position].copy = copy
            return (false, copies)
        }
        for other in copies { other.finished() }
        if finishedAlready { copy.finished() }
    }

    fileprivate func copy(of index: Int) -> Token? {
        state.withLock { state in state.position(of: index).flatMap { state.entries[$0].done ? nil : state.entries[$0].copy } }
    }

    fileprivate func isFinished(_ index: Int) -> Bool {
        let (done, copies) = state.withLock { state -> (Bool, [Token]) in
            let copies = markCompletions(&state)
            guard let position = state.position(of: index) else { return (true, copies) }
            return (state.entries[position].done, copies)
        }
        for copy in copies { copy.finished() }
        return done
    }

    private func finished(_ index: Int) {
        let answersEnd = written.load(ordering: .relaxed)
        completions.withLock { $0.append((index, answersEnd)) }
        guard forwarding.load(ordering: .sequentiallyConsistent) else { return }
        for copy in state.withLock({ markCompletions(&$0) }) { copy.finished() }
    }

    /// Marks the frames whose handlers finished: the copies that waited for them.
    private func markCompletions(_ state: inout State) -> [Token] {
        let finished = completions.withLock { completions -> [(index: Int, answersEnd: Int)] in
            defer { completions.removeAll(keepingCapacity: true) }
            return completions
        }
        var copies: [Token] = []
        for (index, answersEnd) in finished {
            guard let position = state.position(of: index) else { continue }
            var entry = state.entries[position]
            entry.done = true
            entry.answersEnd = answersEnd
            state.entries[position] = entry
            state.handledUntold.append(index)
            if let copy = entry.copy { copies.append(copy) }
        }
        return copies
    }

    /// The runs of frames handled past those handled in order that the
    /// zipper was not told of (at most `rangesPerReceipt`), each from the end
    /// of the unhandled frame before it: as stream ranges and entry indexes.
    private static func handledAhead(_ state: inout State) -> (ranges: [Range<Int>], indexes: [ClosedRange<Int>]) {
        let boundary = state.firstIndex + state.handledCount
        let endIndex = state.firstIndex + state.entries.count
        state.handledUntold.removeAll { $0 < boundary || $0 >= endIndex }
        guard !state.handledUntold.isEmpty else { return ([], []) }
        state.handledUntold.sort()
        var ranges: [Range<Int>] = []
        var indexes: [ClosedRange<Int>] = []
        for index in state.handledUntold where ranges.count < rangesPerReceipt {
            if let last = indexes.last, last.contains(index) { continue }
            // The entry at `boundary` is not handled (else it would be in order), so a run starts after it.
            var (first, final) = (index, index)
            while first - 1 > boundary, state.entries[state.position(of: first - 1)!].done { first -= 1 }
            while final + 1 < endIndex, state.entries[state.position(of: final + 1)!].done { final += 1 }
            ranges.append(state.entries[state.position(of: first - 1)!].end..<state.entries[state.position(of: final)!].end)
            indexes.append(first...final)
        }
        return (ranges, indexes)
    }

    /// Moves past the frames handled in order: the offset to tell the zipper
    /// if it moved, and whether anything is left to wait for (false: idle
    /// until woken). `acknowledged`: this side's stream offset the zipper's
    /// QUIC stack acknowledged (its receipts before it arrived).
    func advance(acknowledged: Int) -> (tell: Tell?, waiting: Bool) {
        let taken = self.taken.load(ordering: .relaxed)
        let takenBytes = bytesTaken.load(ordering: .relaxed)
        let settledWrites = self.settledWrites.load(ordering: .relaxed)
        let (result, copies) = state.withLock { state -> ((tell: Tell?, waiting: Bool), [Token]) in
            let copies = markCompletions(&state)
            Self.confirm(&state, acknowledged: acknowledged)
            while let first = state.entries.first, first.end <= state.confirmed, state.handledCount > 0 {
                if let frame = state.entries.removeFirst().frame { state.letGo.append((state.firstIndex, first.end, frame)) }
                state.firstIndex += 1
                state.handledCount -= 1
            }
            var position = state.entries.index(state.entries.startIndex, offsetBy: state.handledCount)
            while position != state.entries.endIndex, state.entries[position].done {
                if state.entries[position].answersEnd > settledWrites {
                    state.answerWaits.append((state.handled, state.entries[position].answersEnd))
                }
                state.handled = state.entries[position].end
                state.handledCount += 1
                position = state.entries.index(after: position)
            }
            // Frames no handler gets may be handled before the pipe handler took those before them.
            let ahead = Self.handledAhead(&state)
            while let first = state.answerWaits.first,
                  first.answersEnd <= settledWrites || state.answerWaits.count > Self.maximumAwaitingAnswers {
                state.answerWaits.removeFirst()
            }
            let answered = state.answerWaits.first?.start ?? state.handled
            let tell = Tell(
                handled: state.handled, taken: min(max(taken, state.handled), givenBackFrom.load(ordering: .relaxed)), answered: answered,
                handledAhead: ahead.ranges, aheadIndexes: ahead.indexes, takenBytes: takenBytes)
            let untold = tell.handled > state.told || tell.taken > state.toldTaken || answered > state.toldAnswered || !ahead.ranges.isEmpty
            // A receipt not yet acknowledged: its frames are forgotten once it is.
            let waiting = untold || state.handledCount < state.entries.count || !state.receipts.isEmpty || !state.answerWaits.isEmpty
            if !waiting { state.idle = true }
            return ((untold ? tell : nil, waiting), copies)
        }
        for copy in copies { copy.finished() }
        keepLetGo()
        return result
    }

    /// Moves the frames let go of into `recent`, as keys.
    private func keepLetGo() {
        recent.withLock { recent in
            let letGo = state.withLock { state in
                defer { state.letGo.removeAll(keepingCapacity: true) }
                return state.letGo
            }
            recent.keep(letGo)
        }
    }

    /// The zipper was sent `tell`, in a receipt ending at `receiptEnd` in this side's stream.
    func told(_ tell: Tell, receiptEnd: Int) {
        state.withLock { state in
            state.toldTaken = max(state.toldTaken, tell.taken)
            state.toldAnswered = max(state.toldAnswered, tell.answeredEnd)
            if !tell.aheadIndexes.isEmpty {
                state.handledUntold.removeAll { index in tell.aheadIndexes.contains { $0.contains(index) } }
            }
            guard tell.handled > state.told else { return }
            state.told = tell.handled
            state.receipts.append((receiptEnd, tell.handled))
        }
    }

    private static func confirm(_ state: inout State, acknowledged: Int) {
        while let first = state.receipts.first, first.end <= acknowledged {
            state.confirmed = max(state.confirmed, first.told)
            state.receipts.removeFirst()
        }
    }

    /// Data frames read on this connection.
    var framesReceived: Int { state.withLock { $0.received } }

    /// Whether every frame read was handled and a receipt the zipper's QUIC
    /// stack acknowledged told so (for tests).
    var allHandledAndConfirmed: Bool {
        state.withLock { $0.handledCount == $0.entries.count && $0.handledUntold.isEmpty && $0.confirmed >= $0.handled }
    }

    /// Frames earlier connections brought that were not finished when this
    /// one began, in the order the handlers take them, and the ids of those
    /// finished since that no receipt could name yet (`earlierFinished`).
    private let earlier = Mutex<(waiting: ArraySlice<(name: String, token: Token)>, unnamed: [String])>(([], []))
    /// Of `earlier`'s frames, how many from the first are looked at each
    /// time: the handlers take them in order, and async ones finish out of
    /// order only within their concurrency.
    static let earlierLookedAtOnce = 64

    /// This connection names the frames `unfinished` as they finish
    /// (`ReceiptFrame.handledBefore`), oldest first.
    func nameWhenFinished(_ unfinished: [(name: String, token: Token)]) {
        earlier.withLock { $0.waiting = unfinished[...] }
    }

    /// The ids of earlier connections' frames finished since the last call
    /// (and of those a receipt could not name before: see `unnamed`), and
    /// whether some are still to finish.
    func earlierFinished() -> (names: [String], waiting: Bool) {
        let window = earlier.withLock { $0.waiting.prefix(Self.earlierLookedAtOnce) }
        // Asked outside the lock: a token asks its own ledger.
        let finished = Set(window.filter { $0.token.isFinished }.map(\.name))
        return earlier.withLock { earlier in
            if !finished.isEmpty {
                let rest = earlier.waiting.prefix(Self.earlierLookedAtOnce).filter { !finished.contains($0.name) }
                earlier.waiting = (rest + earlier.waiting.dropFirst(Self.earlierLookedAtOnce))[...]
            }
            let names = earlier.unnamed + window.map(\.name).filter(finished.contains)
            earlier.unnamed = []
            return (names, !earlier.waiting.isEmpty)
        }
    }

    /// Whether no frame of `earlier` finished without being named yet: a
    /// closing function's quiet moment waits for that.
    var earlierNamed: Bool {
        let (window, unnamed) = earlier.withLock { ($0.waiting.prefix(Self.earlierLookedAtOnce), $0.unnamed) }
        return unnamed.isEmpty && !window.contains { $0.token.isFinished }
    }

    /// A receipt could not take these ids now: the next call returns them first.
    func unnamed(_ names: [String]) {
        earlier.withLock { $0.unnamed = names + $0.unnamed }
    }

    /// What the zipper was last told.
    var toldSoFar: Tell {
        let takenBytes = bytesTaken.load(ordering: .relaxed)
        return state.withLock { Tell(handled: $0.told, taken: $0.toldTaken, answered: $0.toldAnswered, takenBytes: takenBytes) }
    }

    /// Whether every frame read was handled (or given back) and told. Past
    /// the first frame given back, a frame may still be handled (the copy of
    /// one an earlier connection brought and the function keeps): one
    /// finished since the last `advance` is marked here, so it counts as
    /// not yet told.
    var isQuiet: Bool {
        let givenBackFrom = givenBackFrom.load(ordering: .relaxed)
        let (quiet, copies) = state.withLock { state -> (Bool, [Token]) in
            let copies = markCompletions(&state)
            let boundary = state.firstIndex + state.handledCount
            let aheadUntold = state.handledUntold.contains { $0 >= boundary }
            return ((state.handledCount == state.entries.count || state.handled >= givenBackFrom) && state.handled <= state.told && !aheadUntold, copies)
        }
        for copy in copies { copy.finished() }
        return quiet
    }

    /// The frames that may come again, by `CopyKey`: those the zipper (or a
    /// source, if the zipper crashed) may send again. Asked when the
    /// connection ended, or when the zipper says copies may follow.
    /// `acknowledged`: as for `advance`, then. Every frame still kept counts,
    /// and the newest let go of (`Recent`): the zipper's QUIC stack
    /// acknowledged the receipt that told them handled, but a zipper that
    /// died then may not yet have settled them for their senders, who send
    /// them again. Until the fifty-seventh round of issue 14 only frames
    /// past the last receipt acknowledged counted, and such a frame was
    /// handled twice: the likeliest reading of frame "0" handled twice in a
    /// fresh-clone `.ci/run` (`HandlerLifecycleTests.lostAtHandlerLimitRedialsAtOnce`).
    func untold(acknowledged: Int) -> [CopyKey: Token] {
        // `recent`'s lock first, as `keepLetGo` takes them: a frame let go of
        // is in `letGo` or in `recent`, never on its way between.
        let (kept, letGo, recent) = recent.withLock { recent in
            let (kept, letGo) = state.withLock { state in
                Self.confirm(&state, acknowledged: acknowledged)
                return (state.entries.enumerated().map { ($0.offset + state.firstIndex, $0.element.end, $0.element.frame) }, state.letGo)
            }
            return (kept, letGo, recent.frames)
        }
        var byKey: [CopyKey: Token] = [:]
        for (index, end, key) in recent {
            // Let go of: finished, and a token the ledger no longer has says so.
            byKey[key] = Token(ledger: self, index: index, end: end, length: 0)
        }
        let frames = letGo + kept.compactMap { index, end, frame in frame.map { (index: index, end: end, frame: $0) } }
        for (index, end, frame) in frames {
            guard let key = CopyKey(frame) else { continue }
            byKey[key] = Token(ledger: self, index: index, end: end, length: 0)
        }
        return byKey
    }

    /// The newest frames handled and told whose receipt the zipper's QUIC
    /// stack acknowledged (`untold`), at most `kept`: a zipper settles
    /// frames for their senders within its receipts' interval (2 ms) and a
    /// round trip after it read a function's receipt, and 2,048 frames are
    /// 20 ms at 100,000 a second. Each is kept as its key (about 100 bytes
    /// with a 21-byte id), not as the slices of the bytes it arrived in,
    /// which would keep the whole read.
    struct Recent {
        static let kept = 2048
        private(set) var frames = CircularBuffer<(index: Int, end: Int, key: CopyKey)>()

        mutating func keep(_ letGo: [(index: Int, end: Int, frame: DataFrame)]) {
            for (index, end, frame) in letGo.suffix(Self.kept) {
                guard let key = CopyKey(frame) else { continue }
                if frames.count == Self.kept { frames.removeFirst() }
                frames.append((index, end, key))
            }
        }
    }
}

/// What a frame that came again is recognized by: its transaction id, tag
/// and payload's shape. The id alone does not tell a copy from another
/// frame of the transaction: a stream function's answers carry the id of
/// the frame they answer, so a function observing both tags, or the answers
/// of one that splits a frame in several, reads one id on several frames.
/// Until the fifty-seventh round of issue 14 copies were recognized by id
/// alone, and after the zipper's word that copies may follow, such a frame
/// was taken for a copy of the one before it and not handled.
struct CopyKey: Hashable, Sendable {
    let tid: String
    let tag: UInt32
    /// The payload's length and its first and last bytes (`shape(of:)`):
    /// two answers of one transaction with the same tag and shape are
    /// taken for one frame.
    let shape: UInt64

    init(tid: String, tag: UInt32, shape: UInt64) {
        self.tid = tid
        self.tag = tag
        self.shape = shape
    }

    /// The key of `frame`; nil without a transaction id.
    init?(_ frame: DataFrame) {
        guard let tid = MetadataView(frame.metadata)?.string(.tid), !tid.isEmpty else { return nil }
        self.init(tid: tid, tag: frame.tag, shape: Self.shape(of: frame.payload))
    }

    /// The key of a frame queued for a pipe handler; nil without a transaction id.
    init?(_ frame: PipeFrame) {
        guard let tid = frame.metadata[Metadata.ReservedKey.tid], !tid.isEmpty else { return nil }
        self.init(tid: tid, tag: frame.tag, shape: Self.shape(of: frame.dataBuffer))
    }

    /// How receipts name the frame (`ReceiptFrame.handledBefore`,
    /// `heldCopies`): its id, tag and shape, joined by U+001F. A peer from
    /// before the fifty-seventh round of issue 14 names a frame by its id
    /// alone, which `isNamed(in:)` still takes; such a peer finds no frame
    /// by this name, and so at worst handles a copy twice, as before.
    var name: String { "\(tid)\u{1F}\(String(tag, radix: 16))\u{1F}\(String(shape, radix: 16))" }

    /// Whether `names` name the frame: by `name`, or by its id alone (a peer from before).
    func isNamed(in names: Set<String>) -> Bool { names.contains(name) || names.contains(tid) }

    /// `frame`'s key as two 64-bit hashes of its id's bytes, tag and shape
    /// (FNV-1a and a multiply-rotate mix), made without a string: what a
    /// zipper remembers per frame the mesh brought (`HeldFrames.remember`).
    /// Nil without a transaction id.
    static func digest(of frame: DataFrame) -> CopyDigest? {
        let shape = shape(of: frame.payload)
        return MetadataView(frame.metadata)?.withValueBytes(.tid) { tid -> CopyDigest? in
            guard !tid.isEmpty else { return nil }
            var fnv = FNV1a()
            var mix: UInt64 = 0x9e37_79b9_7f4a_7c15
            func add(_ byte: UInt8) {
                fnv.add(byte)
                mix = ((mix ^ UInt64(byte)) &* 0xff51_afd7_ed55_8ccd).rotated(by: 29)
            }
            for byte in tid { add(byte) }
            withUnsafeBytes(of: frame.tag.littleEndian) { for byte in $0 { add(byte) } }
            withUnsafeBytes(of: shape.littleEndian) { for byte in $0 { add(byte) } }
            return CopyDigest(fnv: fnv.hash, mix: mix)
        } ?? nil
    }

    /// How many bytes from each end of a payload its shape reads: a lookup
    /// costs the same for any payload.
    static let endBytes = 32

    /// The payload's length and up to `endBytes` from each end, hashed
    /// (FNV-1a: the same in every process).
    static func shape(of payload: ByteBuffer) -> UInt64 {
        var hash = FNV1a()
        let length = payload.readableBytes
        withUnsafeBytes(of: UInt64(length).littleEndian) { for byte in $0 { hash.add(byte) } }
        payload.withUnsafeReadableBytes { bytes in
            for byte in bytes.prefix(endBytes) { hash.add(byte) }
            for byte in bytes.suffix(Swift.min(endBytes, Swift.max(length - endBytes, 0))) { hash.add(byte) }
        }
        return hash.hash
    }
}

/// How far a zipper may have settled a function's frames for their senders:
/// it settles, at acknowledgement, what the function took and its pace's
/// worth beyond (`TakingPace`), reckoned from each receipt it reads, and what
/// it settled stays settled. A closing function that gives back its queue
/// handles the frames within it: the zipper keeps those for the function's
/// next instance, but if it then crashed, their senders would not send them
/// again. Never short of the zipper's reckoning: the zipper's pace counts
/// from one of its samples (the newest `TakingPace.allowance` old, samples
/// `TakingPace.spacing` apart); this counts, unscaled, from a receipt sent no
/// later than that one arrived, however far apart receipts went and however
/// long each was on its way (within `wayThere`).
struct SettleableBound {
    /// What a receipt's way to the zipper may take beyond another's.
    static let wayThere: Duration = .milliseconds(20)
    private static let lead = TakingPace.allowance + TakingPace.spacing + wayThere
    private static let back = TakingPace.spacing + wayThere
    /// Every receipt's sample from the one counted from last on.
    private var samples: [(at: ContinuousClock.Instant, progress: Int)] = []
    private(set) var furthest: Int

    init(from offset: Int) { furthest = offset }

    /// A receipt says `taken` (`ReceiptFrame.takenThrough`) and `progress`
    /// (what the zipper measures the pace on), sent at `now`.
    mutating func note(taken: Int, progress: Int, at now: ContinuousClock.Instant) {
        samples.append((now, progress))
        // The zipper counts from no earlier than `lead` old less `back`: any
        // receipt that old it kept, or one at most `spacing` before it.
        if let recent = samples.lastIndex(where: { now - $0.at >= Self.lead }),
           let counted = samples[...recent].lastIndex(where: { samples[recent].at - $0.at >= Self.back }) {
            samples.removeFirst(counted)
        }
        furthest = max(furthest, taken + max(0, progress - samples[0].progress))
    }
}

/// A frame's `CopyKey` hashed to 128 bits (`CopyKey.digest(of:)`): two
/// frames with one digest are taken for copies, which a pair of distinct
/// frames is with odds of about 2^-128.
struct CopyDigest: Hashable, Sendable {
    let fnv: UInt64
    let mix: UInt64
}

/// FNV-1a, 64 bits: the same in every process, as keys sent in receipts must be.
struct FNV1a {
    private(set) var hash: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func add(_ byte: UInt8) { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
}

extension UInt64 {
    fileprivate func rotated(by count: UInt64) -> UInt64 { (self << count) | (self >> (64 - count)) }
}
