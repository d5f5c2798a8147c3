internal import NIOCore
internal import YoMoQUIC
internal import YoMoWire

extension ZipperConfiguration {
    /// Frames that arrive while no stream function observes their tag, held for
    /// one that is on its way back, rather than dropped at once as the Go
    /// zipper does. A function that restarts, or reconnects after a lost
    /// connection, and the functions of a zipper that restarted, come back a
    /// second or so after the sources, whose outage buffers are delivered the
    /// moment they reconnect: without the hold, all of that was dropped.
    ///
    /// A tag's frames are held for `afterLastObserver` after the last stream
    /// function observing it left, and during the zipper's first
    /// `afterLastObserver` for every tag (it cannot know which tags its
    /// functions observed before a restart, nor which come up after their
    /// sources in a new deployment). Tags nobody observes (a pipeline's last
    /// tag) are dropped at once after that, as before.
    public struct UnroutedHold: Hashable, Sendable {
        /// How long a held frame waits for a stream function before it is
        /// dropped (counted and logged). Zero: nothing is held.
        public var duration: Duration
        /// Bytes held at most, all tags together, each frame counted with 512
        /// bytes more for its bookkeeping; a frame beyond it is dropped.
        public var maximumBytes: Int
        /// How long after a tag's last stream function left (or after the
        /// zipper started) its frames are still held: past it, the function is
        /// taken to be gone for good.
        public var afterLastObserver: Duration

        public init(duration: Duration = .seconds(5), maximumBytes: Int = 16 << 20, afterLastObserver: Duration = .seconds(60)) {
            self.duration = duration
            self.maximumBytes = maximumBytes
            self.afterLastObserver = afterLastObserver
        }

        /// Nothing held: frames with no stream function are dropped at once (the Go zipper's behaviour).
        public static let off = UnroutedHold(duration: .zero)

        var isOn: Bool { duration > .zero }

        /// A duration as the config and `yomo serve` write it: `5s`, `500ms`,
        /// `1m`, `1.5s`, or a bare number of seconds (`0`: off). Nil when it is none.
        package static func parseDuration(_ text: String) -> Duration? {
            let trimmed = String(text.filter { $0 != " " })
            for (suffix, scale) in [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("", 1.0)] where trimmed.hasSuffix(suffix) {
                guard let value = Double(trimmed.dropLast(suffix.count)), value.isFinite, value >= 0, value * scale <= 86_400 else { return nil }
                return .milliseconds(Int64((value * scale * 1000).rounded()))
            }
            return nil
        }
    }
}

/// The zipper's held frames: which to hold and for whom, which a stream
/// function that arrives takes, which have waited too long. Times are passed
/// in; the zipper keeps it under its lock.
///
/// A frame is held for two kinds of arrival. For stream functions that left
/// and are expected back, by name: a function observing the tag left within
/// `afterLastObserver` and none of its name observes it now, whether or not
/// other functions receive the frame (a fan-out whose one function restarts).
/// And, when no function at all receives the frame, for whichever arrive
/// before its deadline, each name once: in the zipper's first
/// `afterLastObserver` (it cannot know the names of a previous run), or after
/// the tag's last function left. A held frame is dropped once every name it
/// was held for has taken it, or at its deadline.
struct HeldFrames {
    typealias Instant = ContinuousClock.Instant

    /// For whom a frame is held.
    struct Claim: Equatable {
        /// Stream functions (by name) that left and are expected back.
        var owed: Set<String> = []
        /// Any stream function that arrives before the deadline, each name once.
        var forAnyArrival = false
        /// Names it was owed that finished a copy of it before (`handledBefore`):
        /// as if they had taken it.
        var handledBy: Set<String> = []
    }

    /// Why a frame waits here: said on the span of its wait ("zipper hold"),
    /// so that a trace shows where its time went.
    enum Reason: Equatable {
        /// No stream function observed its tag when it was routed.
        case noFunction
        /// Held by name for a function that left (others may have received it).
        case functionAway
        /// Taken back from a function's connection that ended before its QUIC
        /// stack acknowledged it (or before it was written).
        case notAcknowledged
        /// Taken back from a function's connection that ended before its
        /// handlers finished it (handling receipts).
        case notHandled

        /// Why a frame routed now is held for `claim`.
        init(_ claim: Claim) { self = claim.owed.isEmpty ? .noFunction : .functionAway }

        var attribute: StaticString {
            switch self {
            case .noFunction: "no_function"
            case .functionAway: "function_away"
            case .notAcknowledged: "not_acknowledged"
            case .notHandled: "not_handled"
            }
        }
    }

    struct Entry {
        var frame: DataFrame
        var target: String?
        var bytes: Int
        var deadline: Instant
        var heldAt: Instant
        var reason: Reason
        var owed: Set<String>
        var forAnyArrival: Bool
        /// Names that took it.
        var deliveredTo: Set<String> = []
        /// Whether other functions received it when it was routed.
        var wasRouted: Bool
        /// The receipt checkpoint of its sender that waits for it (a client that asked for receipts).
        var tally: HoldTally?
        /// Its key, if an upstream zipper forwarded it (`CopyKey.digest`):
        /// a function it is delivered to adds it to what its name finished.
        var linkDigest: CopyDigest? = nil

        /// `name` has it (took it, or finished a copy of it): whether it
        /// settles for its sender (every name it was owed has it; its
        /// receipt does not wait for a hold for any that arrives) and whether
        /// it leaves the hold.
        mutating func taken(by name: String) -> (settles: Bool, leaves: Bool) {
            owed.remove(name)
            deliveredTo.insert(name)
            return (owed.isEmpty, owed.isEmpty && !forAnyArrival)
        }

        /// Whether its wait ended short of someone it was held for.
        var missedSomeone: Bool { !owed.isEmpty || (forAnyArrival && deliveredTo.isEmpty) }

        /// Whether it waits for `function`: one of its tags (and target), held
        /// for its name or for any function that arrives, and not yet taken by it.
        func waits(for function: RouteMember) -> Bool {
            function.receives(tag: frame.tag, target: target)
                && (owed.contains(function.name) || (forAnyArrival && !deliveredTo.contains(function.name)))
        }
    }

    /// Frames of one tag whose wait ended short of someone they were held for
    /// (expired, or at the zipper's close).
    struct Dropped: Equatable {
        var tag: UInt32
        var frames = 0
        var bytes = 0
        /// Whether a stream function ever observed the tag here: then the drop
        /// is a loss to report; else the tag may simply have no consumer.
        var wasObserved = false
        /// Of `frames`, those no stream function received at all (`no_route`).
        var unrouted = 0
        /// Names they were held for that did not come back.
        var missing: Set<String> = []

        /// Counts `other`'s frames (of the same tag) in these.
        mutating func add(_ other: Dropped) {
            frames += other.frames
            bytes += other.bytes
            wasObserved = wasObserved || other.wasObserved
            unrouted += other.unrouted
            missing.formUnion(other.missing)
        }
    }

    /// A stream function that left: its name is owed the frames of `tag` it would have received.
    private struct Absence {
        var left: Instant
        var member: RouteMember
    }

    let settings: ZipperConfiguration.UnroutedHold
    let startedAt: Instant
    /// Keep the frames whose wait ended short of someone (`takeDropped`):
    /// with tracing on, each gets a span saying so.
    var keepsDropped = false
    /// The frames dropped since `takeDropped`, while `keepsDropped`.
    private var dropped: [Entry] = []
    private(set) var entries = CircularBuffer<Entry>()
    private(set) var bytes = 0
    /// Frames held per tag (a burst of a tag starts when its count leaves zero).
    private var heldPerTag: [UInt32: Int] = [:]
    /// When each tag's last observer left. Bounded: tags come from peers' handshakes.
    private var lastObserverLeft: [UInt32: Instant] = [:]
    /// By tag, the names that left it (none of their name observes it now).
    /// Bounded like `lastObserverLeft`, in (tag, name) pairs.
    private var absent: [UInt32: [String: Absence]] = [:]
    private var absentPairs = 0
    static let maximumRememberedTags = 4096
    /// Functions taking their held frames: what is routed meanwhile is held
    /// for them too, so nothing overtakes what they take.
    private var arriving: [UInt64: RouteMember] = [:]
    /// Frames by name (`CopyKey.name`, or a transaction id alone from a
    /// function from before), each with a function name that finished it
    /// on a connection that ended, as its later connection said
    /// (`handledBefore`): the newest `maximumHandledCopies` pairs (names
    /// come from peers: at most about 4 MiB).
    private var handledCopies = NewestSet<NamedFrameHandled>(capacity: maximumHandledCopies)
    static let maximumHandledCopies = 16_384
    /// Frames upstream zippers forwarded that functions of a name finished,
    /// as their receipts said (`remember`, `Zipper.route`), by key
    /// (`CopyKey.digest`): the newest `maximumHandledCopies`. A digest, not a
    /// name: a zipper notes one per frame the mesh brings.
    private var handledFromLinks = NewestSet<LinkFrameHandled>(capacity: maximumHandledCopies)

    private struct NamedFrameHandled: Hashable {
        let frame: String
        let function: String
    }

    private struct LinkFrameHandled: Hashable {
        let digest: CopyDigest
        let function: String
    }

    init(settings: ZipperConfiguration.UnroutedHold, startedAt: Instant) {
        self.settings = settings
        self.startedAt = startedAt
    }

    var isEmpty: Bool { entries.isEmpty }
    var nextDeadline: Instant? { entries.first?.deadline }
    func count(tag: UInt32) -> Int { heldPerTag[tag] ?? 0 }

    /// What one held frame costs beyond its bytes (its buffers' storage and
    /// headers, the entry), counted against `maximumBytes`: measured at about
    /// 500 bytes for a frame of a few bytes, so without it 16 MiB of tiny
    /// frames held about 160 MiB.
    static let entryOverhead = 512

    /// What holding `frame` counts against `maximumBytes` (a patch to its
    /// metadata keeps its length).
    static func bytes(of frame: DataFrame) -> Int {
        frame.metadata.readableBytes + frame.payload.readableBytes + entryOverhead
    }

    /// `frame` (with `patch` written over its metadata) in buffers of its own,
    /// as the hold keeps frames: a slice of a read buffer, or of what a
    /// connection had not acknowledged, would keep all of that alive. A patch
    /// writes the metadata into a copy already.
    static func owned(_ frame: DataFrame, patch: MetadataPatch? = nil) -> DataFrame {
        let metadata = patch == nil ? ByteBuffer(buffer: frame.metadata) : frame.applying(patch).metadata
        return DataFrame(tag: frame.tag, metadata: metadata, payload: ByteBuffer(buffer: frame.payload))
    }

    /// The data frames in what a connection had not acknowledged, each in
    /// buffers of its own, with how many of its bytes were not acknowledged
    /// (a frame its peer acknowledged whole is left out).
    /// `end`: the stream offset just past the frame.
    static func dataFrames(in unacknowledged: QUICConnection.Unacknowledged) -> [(frame: DataFrame, target: String?, notAcknowledged: Int, end: Int)] {
        dataFramesWritten(in: unacknowledged.bytes).compactMap { data, end in
            guard end > unacknowledged.acknowledgedPrefix else { return nil }
            let notAcknowledged = min(data.encodedLength, end - unacknowledged.acknowledgedPrefix)
            return (owned(data), MetadataView(data.metadata)?.string(.target), notAcknowledged, unacknowledged.streamOffset + end)
        }
    }

    /// The data frames in bytes a zipper wrote (to a connection, or to the
    /// held frames file), each with the offset just past it; other frames are
    /// skipped, and decoding stops at bytes that are no frame.
    static func dataFramesWritten(in bytes: ByteBuffer) -> [(frame: DataFrame, end: Int)] {
        var buffer = bytes
        let start = buffer.readerIndex
        // The zipper wrote these frames whole: any size it let in decodes.
        var decoder = FrameDecoder(maximumFrameSize: Int(Int32.max))
        var frames: [(DataFrame, Int)] = []
        while let frame = try? decoder.decodeFrame(buffer: &buffer) {
            if case .data(let data) = frame { frames.append((data, buffer.readerIndex - start)) }
        }
        return frames
    }

    /// For whom a frame with `tag` and `target` is held, `routed` saying
    /// whether some stream function receives it now; nil: for nobody.
    func claim(tag: UInt32, target: String?, routed: Bool, now clock: @autoclosure () -> Instant) -> Claim? {
        guard settings.isOn else { return nil }
        // The data path's case, without reading the clock: functions connected, none away or arriving.
        if routed && absent.isEmpty && arriving.isEmpty { return nil }
        let now = clock()
        var claim = Claim()
        for (name, absence) in absent[tag] ?? [:]
        where now < absence.left + settings.afterLastObserver && absence.member.receives(tag: tag, target: target) {
            claim.owed.insert(name)
        }
        for member in arriving.values where member.receives(tag: tag, target: target) { claim.owed.insert(member.name) }
        if !routed {
            let lastLeft = lastObserverLeft[tag].map { now < $0 + settings.afterLastObserver } ?? false
            claim.forAnyArrival = lastLeft || now < startedAt + settings.afterLastObserver
        }
        return claim.owed.isEmpty && !claim.forAnyArrival ? nil : claim
    }

    enum HoldResult: Equatable {
        /// Held; `first` when it is the only frame of its tag held (a burst starts).
        case held(first: Bool)
        /// Not held: `maximumBytes` is reached.
        case full
        /// Not held: every name it was held for finished a copy of it before.
        case handledBefore
    }

    /// Whether a frame counted as `bytes` fits within `maximumBytes` now.
    func fits(_ bytes: Int) -> Bool { self.bytes + bytes <= settings.maximumBytes }

    /// Holds `frame` for `claim` (its buffers should be its own: a slice of a
    /// read buffer would keep all of it).
    mutating func hold(
        _ frame: DataFrame, target: String?, bytes: Int, for claim: Claim, routed: Bool, now: Instant, linkDigest: CopyDigest? = nil,
        tally: @autoclosure () -> HoldTally? = nil
    ) -> HoldResult {
        let claim = lessCopiesHandled(claim, of: frame)
        if claim.owed.isEmpty && !claim.forAnyArrival { return .handledBefore }
        guard fits(bytes) else { return .full }
        // As `take` does: its sender's receipt waits for the names it is owed, not for any arrival.
        let waitedFor = claim.handledBy.isEmpty || !claim.owed.isEmpty
        let entry = Entry(
            frame: frame, target: target, bytes: bytes, deadline: now + settings.duration, heldAt: now,
            reason: Reason(claim),
            owed: claim.owed, forAnyArrival: claim.forAnyArrival, deliveredTo: claim.handledBy, wasRouted: routed,
            tally: waitedFor ? tally() : nil, linkDigest: linkDigest)
        entries.append(entry)
        return count(entry)
    }

    /// Whether the stream functions named `function` finished a frame an
    /// upstream zipper forwarded with the key `digest`: a copy of it is not
    /// theirs to handle.
    func handled(_ digest: CopyDigest, byFunctionNamed function: String) -> Bool {
        !handledFromLinks.isEmpty && handledFromLinks.contains(LinkFrameHandled(digest: digest, function: function))
    }

    /// The functions named `function` finished the frames upstream zippers
    /// forwarded with the keys `digests`: copies that come later are not
    /// theirs (`handled`, `lessCopiesHandled`). What is held is not looked
    /// at: a zipper whose connected function finishes what the mesh brings
    /// tells this per receipt, and the hold may have thousands of frames
    /// (`Benchmarks/mesh-loop.sh`, a zipper in its first minute: 0.5 of the
    /// rate through two zippers with the look).
    mutating func remember(_ digests: [CopyDigest], handledBy function: String) {
        for digest in digests { handledFromLinks.insert(LinkFrameHandled(digest: digest, function: function)) }
    }

    /// What `remember` was told, oldest first (`FinishedFramesFile`).
    var finishedFromLinks: [(digest: CopyDigest, function: String)] { handledFromLinks.elements.map { ($0.digest, $0.function) } }

    /// What a previous run was told (`finishedFromLinks`), oldest first.
    mutating func remember(_ finished: [(digest: CopyDigest, function: String)]) {
        for (digest, function) in finished { handledFromLinks.insert(LinkFrameHandled(digest: digest, function: function)) }
    }

    /// `claim` without the names it owes `frame` that finished a copy of it before.
    func lessCopiesHandled(_ claim: Claim, of frame: DataFrame) -> Claim {
        guard !claim.owed.isEmpty, !handledCopies.isEmpty || !handledFromLinks.isEmpty else { return claim }
        var names: Set<String> = []
        if !handledCopies.isEmpty, let key = CopyKey(frame) {
            let (name, tid) = (key.name, key.tid)
            for function in claim.owed
            where handledCopies.contains(NamedFrameHandled(frame: name, function: function))
                || handledCopies.contains(NamedFrameHandled(frame: tid, function: function)) {
                names.insert(function)
            }
        }
        if !handledFromLinks.isEmpty, let digest = CopyKey.digest(of: frame) {
            for name in claim.owed where handled(digest, byFunctionNamed: name) { names.insert(name) }
        }
        guard !names.isEmpty else { return claim }
        var less = claim
        less.handledBy = claim.owed.intersection(names)
        less.owed.subtract(names)
        return less
    }

    /// `function`'s receipt says its handlers finished the frames `names`
    /// (`CopyKey.name`, or ids alone from a function from before) on a
    /// connection of its that ended (`ReceiptFrame.handledBefore`): what is
    /// held for it of those is its no longer, as if it took it, and a copy
    /// held for its name later will not be. The zipper (an upstream's, a
    /// source's resend) may hold such copies while it is closing and has
    /// asked for nothing more: until the fifty-sixth round of issue 14 its
    /// next instance handled again what it finished of its earlier
    /// connection's queue (`yomo-fault-bench chaos --mesh --seed 9`, 287
    /// frames). Returns how many held frames it settled.
    mutating func handledBefore(_ names: [String], by function: RouteMember) -> Int {
        var named: Set<String> = []
        for name in names where !name.isEmpty && name.utf8.count <= DeliveryDestination.maximumIDLength {
            named.insert(name)
            handledCopies.insert(NamedFrameHandled(frame: name, function: function.name))
        }
        guard !named.isEmpty, !entries.isEmpty else { return 0 }
        var settled = 0
        var kept = CircularBuffer<Entry>(initialCapacity: entries.count)
        for var entry in entries {
            if entry.waits(for: function), CopyKey(entry.frame)?.isNamed(in: named) == true {
                settled += 1
                let (settles, left) = entry.taken(by: function.name)
                if settles {
                    entry.tally?.release()
                    entry.tally = nil
                }
                if left {
                    forget(entry)
                    continue
                }
            }
            kept.append(entry)
        }
        if settled > 0 { entries = kept }
        return settled
    }

    /// The names (`CopyKey.name`) of the frames held that `function` would take, in order.
    func names(waitingFor function: RouteMember) -> [String] {
        entries.compactMap { entry in entry.waits(for: function) ? CopyKey(entry.frame)?.name : nil }
    }

    /// Holds `frames`, which `function` lacks, for its name alone and ahead of
    /// any frame already held that it would take: those are newer (held while
    /// it was taking these, in a connection that then ended). Ahead of them,
    /// they share the first one's deadline, so that deadlines stay in order;
    /// else they wait the whole duration. Frames beyond `maximumBytes` are
    /// refused. Each one held is added to `tally` (its connection's end, for
    /// the receipts of the frames written to it); one the name finished
    /// before (a copy) is not held, and its tally counts it finished.
    mutating func holdAhead(
        _ frames: [(frame: DataFrame, target: String?, bytes: Int, reason: Reason, tally: HoldTally?, linkDigest: CopyDigest?)],
        for function: RouteMember, now: Instant
    ) -> [HoldResult] {
        let name = function.name
        let newer = entries.firstIndex { $0.waits(for: function) }
        let deadline = newer.map { entries[$0].deadline } ?? now + settings.duration
        var results: [HoldResult] = []
        var ahead: [Entry] = []
        for (frame, target, bytes, reason, tally, linkDigest) in frames {
            if lessCopiesHandled(Claim(owed: [name]), of: frame).owed.isEmpty {
                // Not held again: what waits on it counts it handled (`HoldTally.finishedBefore`).
                tally?.finishedBefore()
                results.append(.handledBefore)
                continue
            }
            guard fits(bytes) else {
                results.append(.full)
                continue
            }
            tally?.add()
            let entry = Entry(
                frame: frame, target: target, bytes: bytes, deadline: deadline, heldAt: now, reason: reason, owed: [name],
                forAnyArrival: false, wasRouted: true, tally: tally, linkDigest: linkDigest)
            ahead.append(entry)
            results.append(count(entry))
        }
        entries.insert(contentsOf: ahead, at: newer ?? entries.endIndex)
        return results
    }

    /// `function`'s connection ended: what is held for its name waits the
    /// whole duration from now, its next instance's restart. A closing
    /// function asks to be routed nothing more and then finishes its frames,
    /// up to its `shutdownTimeout`: until the fifty-second round of issue 14
    /// the hold counted from that request, and a close that took 4 s, plus a
    /// restart of 0.7 s, let 1,321 frames held for it expire 0.1 s before the
    /// next instance came (`yomo-fault-bench chaos --mesh --seed 2`, 3 % loss).
    /// Their order is kept: they move behind frames held for others that wait less.
    mutating func restartClock(for function: RouteMember, now: Instant) {
        let deadline = now + settings.duration
        var moved = false
        for index in entries.indices where entries[index].deadline < deadline && entries[index].waits(for: function) {
            entries[index].deadline = deadline
            moved = true
        }
        guard moved else { return }
        // In deadline order again (`expire` takes from the front), each deadline's frames as they were.
        let sorted = entries.enumerated().sorted { ($0.element.deadline, $0.offset) < ($1.element.deadline, $1.offset) }
        entries = CircularBuffer(sorted.map(\.element))
    }

    /// A frame taken for a function, with its receipt tally: once written,
    /// the taker waits for it there, and releases it if `settles` (every
    /// function it was held for by name took it, and one took it if it was
    /// held for any that arrives).
    struct Taken {
        var frame: DataFrame
        var tally: HoldTally?
        var settles: Bool
        var heldAt: Instant
        var reason: Reason
        var linkDigest: CopyDigest?

        /// Written to `destination`, ending at `end`.
        func written(to destination: DeliveryDestination, endingAt end: Int) {
            // A frame of the mesh's, routed or held: what the function finishes of it is remembered.
            if let linkDigest { destination.wroteLinkFrame(endingAt: end, digest: linkDigest) }
            guard let tally else { return }
            tally.wait(for: destination, written: end)
            if settles { tally.release() }
        }

        /// Not written: `destination`'s connection ended first, and the frame
        /// is held again at its end, where its receipt waits for it.
        func abandoned(at destination: DeliveryDestination) {
            guard let tally else { return }
            tally.wait(for: destination, written: .max)
            if settles { tally.release() }
        }
    }

    /// Takes, in the order they were held, the frames held for `member` that
    /// it would have been routed (its tags; a targeted frame only if its
    /// target is the member's).
    mutating func take(for member: RouteMember) -> [Taken] {
        guard !entries.isEmpty, member.clientType == .streamFunction else { return [] }
        var taken: [Taken] = []
        var kept = CircularBuffer<Entry>(initialCapacity: entries.count)
        for var entry in entries {
            if entry.waits(for: member) {
                // Its sender's receipt waits for the names it was held for, not
                // for the deadline of a hold for any that arrives: one function
                // has it, and the sender's later frames are not kept that long.
                let (settles, left) = entry.taken(by: member.name)
                taken.append(Taken(
                    frame: entry.frame, tally: entry.tally, settles: settles, heldAt: entry.heldAt, reason: entry.reason, linkDigest: entry.linkDigest))
                if left {
                    forget(entry)
                    continue
                }
                if settles { entry.tally = nil }
            }
            kept.append(entry)
        }
        if !taken.isEmpty { entries = kept }
        return taken
    }

    /// Ends the waits that are over: the frames that missed someone, by tag in
    /// the order they expired.
    mutating func expire(now: Instant) -> [Dropped] {
        var dropped: [Dropped] = []
        while let first = entries.first, first.deadline <= now {
            entries.removeFirst()
            end(first, into: &dropped)
        }
        return dropped
    }

    /// Ends every wait (the zipper closes).
    mutating func removeAll() -> [Dropped] {
        var dropped: [Dropped] = []
        while let first = entries.popFirst() { end(first, into: &dropped) }
        return dropped
    }

    /// The frames still held for someone that a sender's receipt checkpoints
    /// (`tallies`) wait for, taken over when that sender closed for good:
    /// no one will send them again, so each gets a tally of its own, returned
    /// with it for the held frames file to follow until it leaves the hold
    /// (`Zipper.keepLeftInHold`); the sender's are released.
    mutating func adopt(tallies: Set<ObjectIdentifier>) -> [(frame: DataFrame, tally: HoldTally, fromLink: Bool)] {
        var adopted: [(frame: DataFrame, tally: HoldTally, fromLink: Bool)] = []
        for index in entries.indices {
            guard entries[index].missedSomeone, let sender = entries[index].tally, tallies.contains(ObjectIdentifier(sender)) else { continue }
            let own = HoldTally().adding()
            entries[index].tally = own
            sender.release()
            adopted.append((entries[index].frame, own, entries[index].linkDigest != nil))
        }
        return adopted
    }

    /// Takes out, in order, the frames still held for someone (a graceful
    /// close keeps them for the zipper's next start); those every name took are let go.
    mutating func takeUndelivered() -> [DataFrame] {
        var frames: [DataFrame] = []
        while let first = entries.popFirst() {
            forget(first)
            first.tally?.release()
            if first.missedSomeone { frames.append(first.frame) }
        }
        return frames
    }

    /// Counts a frame taken into `entries` (`forget` undoes it).
    private mutating func count(_ entry: Entry) -> HoldResult {
        bytes += entry.bytes
        heldPerTag[entry.frame.tag, default: 0] += 1
        return .held(first: heldPerTag[entry.frame.tag] == 1)
    }

    private mutating func forget(_ entry: Entry) {
        bytes -= entry.bytes
        let left = (heldPerTag[entry.frame.tag] ?? 1) - 1
        heldPerTag[entry.frame.tag] = left > 0 ? left : nil
    }

    /// The frames whose wait ended short of someone since the last call
    /// (only while `keepsDropped`), in the order they were dropped.
    mutating func takeDropped() -> [Entry] {
        defer { dropped = [] }
        return dropped
    }

    private mutating func end(_ entry: Entry, into dropped: inout [Dropped]) {
        forget(entry)
        entry.tally?.release()
        guard entry.missedSomeone else { return }
        if keepsDropped { self.dropped.append(entry) }
        let tag = entry.frame.tag
        let index = dropped.firstIndex { $0.tag == tag } ?? {
            dropped.append(Dropped(tag: tag, wasObserved: wasObserved(tag: tag)))
            return dropped.count - 1
        }()
        dropped[index].add(Dropped(
            tag: tag, frames: 1, bytes: entry.bytes,
            unrouted: !entry.wasRouted && entry.deliveredTo.isEmpty ? 1 : 0, missing: entry.owed))
    }

    /// Whether a stream function observing `tag` ever left here (a frame of a
    /// tag none did may simply have no consumer).
    func wasObserved(tag: UInt32) -> Bool { lastObserverLeft[tag] != nil }

    /// A stream function left; `stillObserved`: the tags another connection of
    /// its name still observes (those it is not owed).
    mutating func observerLeft(_ member: RouteMember, stillObserved: Set<UInt32> = [], now: Instant) {
        forgetStaleAbsences(now: now)
        for tag in member.observedTags {
            if lastObserverLeft[tag] == nil, lastObserverLeft.count >= Self.maximumRememberedTags {
                // Forget the older half, the tags without their functions longest:
                // one sort per half of the bound, not a scan per tag (a handshake
                // may name 4096 tags, and this runs under the zipper's lock).
                let older = lastObserverLeft.sorted { $0.value < $1.value }.prefix(lastObserverLeft.count / 2)
                for (oldTag, _) in older { lastObserverLeft[oldTag] = nil }
            }
            lastObserverLeft[tag] = now
            guard !stillObserved.contains(tag) else { continue }
            if absent[tag]?[member.name] == nil {
                if absentPairs >= Self.maximumRememberedTags { forgetOlderAbsences() }
                absentPairs += 1
            }
            absent[tag, default: [:]][member.name] = Absence(left: now, member: member)
        }
    }

    /// A stream function arrived: its name is no longer away from its tags.
    mutating func arrived(_ member: RouteMember) {
        for tag in member.observedTags where absent[tag]?.removeValue(forKey: member.name) != nil {
            absentPairs -= 1
            if absent[tag]?.isEmpty == true { absent[tag] = nil }
        }
    }

    /// The stream functions of a previous run (`RememberedFunctions`): each is
    /// owed its tags' frames from `now`, as if it had just left.
    mutating func expectBack(_ functions: [RouteMember], now: Instant) {
        for function in functions { observerLeft(function, now: now) }
    }

    /// The stream functions away now and still expected back, one per name
    /// (its tags together).
    func absentFunctions(now: Instant) -> [RouteMember] {
        var byName: [String: RouteMember] = [:]
        for (tag, names) in absent {
            for (name, absence) in names where now < absence.left + settings.afterLastObserver {
                // Only the tags it is away from: a namesake may still observe others.
                var function = byName[name] ?? absence.member
                if byName[name] == nil { function.observedTags = [] }
                function.observedTags.insert(tag)
                byName[name] = function
            }
        }
        return Array(byName.values)
    }

    private mutating func forgetStaleAbsences(now: Instant) {
        for (tag, names) in absent {
            let current = names.filter { now < $0.value.left + settings.afterLastObserver }
            absentPairs -= names.count - current.count
            absent[tag] = current.isEmpty ? nil : current
        }
    }

    /// Forgets the older half of the absences, as `observerLeft` does for tags.
    private mutating func forgetOlderAbsences() {
        let pairs = absent.flatMap { tag, names in names.map { (tag: tag, name: $0.key, left: $0.value.left) } }
        for pair in pairs.sorted(by: { $0.left < $1.left }).prefix(pairs.count / 2) {
            absent[pair.tag]?[pair.name] = nil
            if absent[pair.tag]?.isEmpty == true { absent[pair.tag] = nil }
            absentPairs -= 1
        }
    }

    mutating func beginArriving(_ member: RouteMember) { arriving[member.connectionID] = member }

    mutating func endArriving(_ member: RouteMember) { arriving[member.connectionID] = nil }
}

/// When to log held frames that were dropped: a tag's first drop at once, its
/// later ones at most every `interval`, as one line with the count since, so
/// that frames expiring one by one do not make a line each.
struct HeldDropReports {
    typealias Instant = ContinuousClock.Instant
    typealias Dropped = HeldFrames.Dropped

    let interval: Duration
    private var tags: [UInt32: (reportedAt: Instant, pending: Dropped?)] = [:]

    init(interval: Duration = .seconds(10)) {
        self.interval = interval
    }

    /// When the earliest pending count is due.
    var nextDue: Instant? {
        tags.values.lazy.filter { $0.pending != nil }.map { $0.reportedAt + interval }.min()
    }

    /// Adds a round's drops; returns what to log now.
    mutating func add(_ dropped: [Dropped], now: Instant) -> [Dropped] {
        var report: [Dropped] = []
        for drop in dropped {
            guard let known = tags[drop.tag], now < known.reportedAt + interval else {
                var total = tags[drop.tag]?.pending ?? Dropped(tag: drop.tag)
                total.add(drop)
                tags[drop.tag] = (now, nil)
                report.append(total)
                continue
            }
            var pending = known.pending ?? Dropped(tag: drop.tag)
            pending.add(drop)
            tags[drop.tag] = (known.reportedAt, pending)
        }
        return report
    }

    /// Pending counts whose interval has passed; forgets tags with nothing pending for an interval.
    mutating func due(now: Instant) -> [Dropped] {
        var report: [Dropped] = []
        for (tag, entry) in tags where now >= entry.reportedAt + interval {
            if let pending = entry.pending {
                report.append(pending)
                tags[tag] = (now, nil)
            } else {
                tags[tag] = nil
            }
        }
        return report.sorted { $0.tag < $1.tag }
    }

    /// Every pending count (the zipper closes).
    mutating func removeAll() -> [Dropped] {
        defer { tags = [:] }
        return tags.values.compactMap(\.pending).sorted { $0.tag < $1.tag }
    }
}

/// A budget of log lines about held frames: the lines are per tag, and tags
/// come from peers, so a source writing thousands of tags nobody observes
/// would otherwise make thousands of lines. At most `limit` per `window`;
/// the rest are counted and said in one line when the next window opens.
struct HeldLineBudget {
    typealias Instant = ContinuousClock.Instant

    let limit: Int
    let window: Duration
    private var windowStart: Instant?
    private var used = 0
    private var suppressed = 0

    init(limit: Int = 20, window: Duration = .seconds(10)) {
        self.limit = limit
        self.window = window
    }

    /// Whether a line may be written now, and how many were suppressed in the
    /// window that just ended (to be said once).
    mutating func allow(now: Instant) -> (allowed: Bool, suppressedBefore: Int) {
        var suppressedBefore = 0
        if windowStart.map({ now >= $0 + window }) ?? true {
            suppressedBefore = suppressed
            (windowStart, used, suppressed) = (now, 0, 0)
        }
        guard used < limit else {
            suppressed += 1
            return (false, suppressedBefore)
        }
        used += 1
        return (true, suppressedBefore)
    }
}

/// The newest `capacity` distinct elements inserted: past it, the oldest is
/// forgotten first.
struct NewestSet<Element: Hashable> {
    let capacity: Int
    private var members = Set<Element>()
    private var order = CircularBuffer<Element>()

    init(capacity: Int) { self.capacity = capacity }

    var isEmpty: Bool { members.isEmpty }

    func contains(_ element: Element) -> Bool { members.contains(element) }

    /// Oldest first.
    var elements: CircularBuffer<Element> { order }

    mutating func insert(_ element: Element) {
        guard members.insert(element).inserted else { return }
        order.append(element)
        if order.count > capacity, let oldest = order.popFirst() { members.remove(oldest) }
    }
}
