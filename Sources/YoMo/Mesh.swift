import FoundationEssentials
import Synchronization
internal import Logging
internal import Tracing
internal import YoMoTracing
internal import YoMoMetrics
internal import NIOCore
internal import YoMoQUIC
internal import YoMoWire

/// The mesh's forwarding rule (Go's zipper): frames that sources and stream
/// functions write go to every downstream zipper; frames that came from an
/// upstream zipper are routed locally only, so no frame loops or is delivered twice.
enum MeshForwarding {
    static func forwards(from clientType: ClientType) -> Bool { clientType != .upstreamZipper }
}

/// The frames waiting for one downstream zipper, bounded in frames and bytes,
/// with the drop count and the once-per-burst log decision. Pure: the link's
/// lock guards it, so it is tested without sockets.
struct MeshBacklog {
    /// A frame and when it was queued: a wait for the link to reconnect starts there.
    struct Queued {
        var frame: DataFrame
        var queuedAt: ContinuousClock.Instant
        /// Kept by the previous run's close (`queuedAt`: that close's time).
        var restored = false
    }

    let limits: ZipperConfiguration.MeshQueue
    private(set) var frames = CircularBuffer<Queued>()
    private(set) var bytes = 0
    private(set) var dropped = 0
    /// Frames the link's client took.
    private(set) var sent = 0
    /// Frames dropped since one was last accepted.
    private(set) var droppedInBurst = 0

    init(limits: ZipperConfiguration.MeshQueue) { self.limits = limits }

    enum Admission: Equatable {
        case queued
        /// Dropped; `firstOfBurst`: the first drop since the link last caught up (log it).
        case dropped(firstOfBurst: Bool)
    }

    mutating func offer(_ frame: DataFrame, at now: ContinuousClock.Instant) -> Admission {
        let size = frame.encodedLength
        guard frames.count < limits.maximumFrames, bytes + size <= limits.maximumBytes else {
            return drop(count: 1)
        }
        frames.append(Queued(frame: frame, queuedAt: now))
        bytes += size
        return .queued
    }

    /// The link took a frame. Returns the size of the burst of drops this ends,
    /// if any: a burst ends only once the queue is down to half, so a link that
    /// keeps up just barely logs one burst, not one per frame.
    mutating func delivered() -> Int? {
        sent += 1
        guard droppedInBurst > 0, frames.count <= limits.maximumFrames / 2 else { return nil }
        defer { droppedInBurst = 0 }
        return droppedInBurst
    }

    /// Frames lost on the way (the link could not take them): counted as drops.
    mutating func drop(count: Int) -> Admission {
        dropped += count
        droppedInBurst += count
        return .dropped(firstOfBurst: droppedInBurst == count)
    }

    mutating func take() -> Queued? {
        guard let queued = frames.popFirst() else { return nil }
        bytes -= queued.frame.encodedLength
        return queued
    }

    /// Every queued frame, in order, leaving the queue empty (a close keeps them).
    mutating func takeAll() -> [DataFrame] {
        defer {
            frames.removeAll()
            bytes = 0
        }
        return frames.map(\.frame)
    }

    /// A frame the previous run kept (`MeshKeptFile`), which closed at
    /// `closedAt`: queued whatever the limits, since it was accepted within
    /// them (by the queue or the link's client, so at most twice them in all).
    mutating func restore(_ frame: DataFrame, closedAt: ContinuousClock.Instant) {
        frames.append(Queued(frame: frame, queuedAt: closedAt, restored: true))
        bytes += frame.encodedLength
    }
}

/// A mesh link as `/metrics` shows it.
struct MeshLinkHealth: Sendable {
    var downstream: String
    var dropped: Int
    /// The last dropped frame that was traced: the drop count's exemplar.
    var lastDropTraced: Exemplar? = nil
    var connected: Bool
    var queuedFrames: Int
    var queuedBytes: Int
    /// Taken by the link's client.
    var sentFrames = 0
    /// Sent, and kept by the link's client until the downstream's receipt
    /// (without receipts: until its acknowledgement).
    var unsettledFrames = 0
}

/// One downstream of the mesh: the routing path queues frames for it without
/// waiting, and a client of type "upstream zipper" (the SDK's ordinary client:
/// handshake, reconnects, outage buffer) takes them over the link.
final class MeshLink: Sendable {
    /// A frame the client took and has not settled.
    private struct Sent {
        /// Its place among the frames the queue accepted.
        var index: Int
        var client: ClientRuntime
        var mark: ClientRuntime.DeliveryMark
        var sentAt: ContinuousClock.Instant
        /// For the spool, with `keptFile` (the client's copy's storage, not a second copy).
        var frame: DataFrame?
    }

    private struct OnFile {
        var client: ClientRuntime
        var mark: ClientRuntime.DeliveryMark
        /// Its place among the file's frames.
        var place: Int
    }

    private struct State {
        var backlog: MeshBacklog
        var waiter: CheckedContinuation<Void, Never>?
        var client: ClientRuntime?
        var closed = false
        /// Frames the queue accepted, and of those the client took or the link dropped.
        var accepted = 0
        var passed = 0 {
            didSet { inHandBytes = nil }
        }
        /// The bytes of the frame taken from the queue and not yet passed (a
        /// restored one waits for the link to connect): still waiting, for `health`.
        var inHandBytes: Int?
        /// The last dropped frame whose drop has a span.
        var lastDropTraced: Exemplar?
        /// Frames the client took and has not settled, in the order taken.
        var unsettled = CircularBuffer<Sent>()
        /// What the close keeps for the next start (with `keptFile`), oldest first.
        var keptAtClose: [DataFrame] = []
        /// The frames restored from `keptFile` are the first this many accepted.
        var restoredThrough = 0
        /// Whether the link's spool had begun that file (its previous run ended without closing).
        var restoredSpooled = false
        /// The unsettled frames through this place are in `keptFile` (or
        /// were settled when the spool came to them): the receipt patience
        /// may let their senders go of them.
        var spooledThrough = 0
        /// `keptFile`'s size: what was restored from it and what the spool appended.
        var keptFileBytes = 0
        /// Since when the link has had no connection to the downstream (as
        /// `tend` last looked); nil while it has one.
        var offlineSince: ContinuousClock.Instant? = .now
        /// When the spool took no more (the file at its bound, or a write
        /// failed): the patience lets go without it until the file goes, or
        /// for `spoolRetry`; nil while it takes frames.
        var spoolRefusedAt: ContinuousClock.Instant?
        /// Frames in `keptFile` (restored or spooled) that the client took
        /// and the downstream has not yet settled (not patience: the file
        /// goes once they are settled indeed), with their places in it.
        var onFileUnsettled: [OnFile] = []
        /// The frames in `keptFile`, settled or not, and the place of the first restored one.
        var fileFrames = 0
        var restoredFromPlace = 0
        /// Where the file's header keeps its settled count, and the count
        /// last written there; nil for a file the close wrote (it has none).
        var settledCount: (offset: Int, written: Int)?

        /// Whether the link has had no connection since `instant` or earlier.
        func isOffline(since instant: ContinuousClock.Instant) -> Bool {
            offlineSince.map { $0 <= instant } ?? false
        }
    }

    let peer: ZipperConfiguration.MeshPeer
    private let zipperName: String
    /// Whether the link asks the downstream for delivery receipts.
    private let deliveryReceipts: Bool
    /// How long a frame the downstream has not settled holds back the
    /// receipts of its sender (`receiptPatience`).
    private let receiptPatience: Duration

    /// A downstream that is down for long must not hold back every sender's
    /// receipts (all their frames are forwarded to it) until each keeps
    /// `ClientSession.maximumKeptBytes`: once the link has had no connection
    /// for this long, a frame sent (or held) this long ago that it has not
    /// settled and that is on no connection counts as settled for its
    /// sender, as a held frame does once the hold (`unrouted_hold`, 5 s)
    /// drops it. The link still delivers it if the downstream comes back;
    /// with `keptFile` it is first appended there (the spool), and a crash
    /// of this zipper after then does not lose it. A short outage lets go of
    /// nothing: until the forty-ninth round of issue 14 it let go of every
    /// frame older than this that a slow downstream had not settled.
    static let receiptPatience: Duration = .seconds(5)
    /// The zipper's, with the downstream's name and address.
    let logger: Logger
    private let state: Mutex<State>
    /// The zipper's: a frame that waited for the link to reconnect gets a span for the wait.
    private let tracing: DataPathTracer
    /// The queue's bounds (`mesh_queue`), which the link's client holds to as well.
    private let limits: ZipperConfiguration.MeshQueue
    /// Where a graceful close keeps what the link could not deliver, for the
    /// next start (`MeshKeptFile`); nil: dropped at the close, and said.
    private let keptFile: String?
    /// Taken while `keptFile` is written or removed: the close's writing and
    /// the removal once restored frames are settled do not cross.
    private let keptFileWrites = Mutex(())

    init(
        peer: ZipperConfiguration.MeshPeer, zipperName: String, limits: ZipperConfiguration.MeshQueue, deliveryReceipts: Bool,
        receiptPatience: Duration = MeshLink.receiptPatience, keptFile: String? = nil, tracing: DataPathTracer = .disabled, logger: Logger
    ) {
        self.peer = peer
        self.keptFile = keptFile
        self.tracing = tracing
        self.zipperName = zipperName
        self.deliveryReceipts = deliveryReceipts
        self.receiptPatience = receiptPatience
        var logger = logger
        logger[metadataKey: "mesh_downstream"] = "\(peer.name)"
        logger[metadataKey: "mesh_downstream_addr"] = "\(peer.address)"
        self.logger = logger
        self.limits = limits
        self.state = Mutex(State(backlog: MeshBacklog(limits: limits)))
    }

    /// Frames dropped for this downstream so far.
    var dropped: Int { state.withLock { $0.backlog.dropped } }

    /// Closes the link's connection as a lost one (tests: a path that broke
    /// while both zippers live on).
    func dropConnectionForTesting() async {
        await state.withLock { $0.client }?.dropConnectionForTesting()
    }

    /// The link's client's redials after a lost connection (tests).
    var reconnectsForTesting: Int { state.withLock { $0.client }?.reconnectCountForTesting ?? 0 }

    /// Frames sent and not yet known settled, as the link records them (tests).
    var unsettledRecords: Int { state.withLock { $0.unsettled.count } }

    /// What the link dropped, whether it is connected now, and the frames
    /// waiting for it: in its queue, and held by its client while it reconnects.
    var health: MeshLinkHealth {
        let (client, backlog, lastDropTraced, inHand) = state.withLock { ($0.client, $0.backlog, $0.lastDropTraced, $0.inHandBytes) }
        // The client's own lock, outside the link's.
        let held = client?.outageStatistics
        return MeshLinkHealth(
            downstream: peer.name, dropped: backlog.dropped, lastDropTraced: lastDropTraced, connected: client?.isConnected ?? false,
            queuedFrames: backlog.frames.count + (inHand == nil ? 0 : 1) + (held?.pendingFrames ?? 0),
            queuedBytes: backlog.bytes + (inHand ?? 0) + (held?.pendingBytes ?? 0),
            sentFrames: backlog.sent, unsettledFrames: client?.keptFrames ?? 0)
    }

    /// Whether `clientID` is the id this link's client is dialling with: a
    /// zipper that meets it in a handshake is this link's own downstream.
    func isDialling(asClientID clientID: String) -> Bool {
        state.withLock { $0.client?.clientID == clientID }
    }

    /// Queues a frame for the downstream; never waits. `parent`: the
    /// zipper's span for the frame, under which a drop is traced.
    func forward(_ frame: DataFrame, tracedUnder parent: SpanContext? = nil) {
        let now = ContinuousClock.now
        let (admission, waiter) = state.withLock { state -> (MeshBacklog.Admission, CheckedContinuation<Void, Never>?) in
            guard !state.closed else { return (.queued, nil) }
            let admission = state.backlog.offer(frame, at: now)
            if admission == .queued { state.accepted += 1 }
            defer { state.waiter = nil }
            return (admission, state.waiter)
        }
        waiter?.resume()
        guard case .dropped = admission else { return }
        let span = tracing.droppedFrame(
            under: parent, tag: frame.tag, reason: "mesh_queue_full", destination: .meshDownstream(peer.name),
            cause: "dropped: the queue for mesh downstream \(peer.name) was full (mesh_queue max_frames \(limits.maximumFrames), max_bytes \(limits.maximumBytes))")
        report(admission, tracedBy: span)
    }

    /// The first drop of a burst said, in a line with that frame's trace id;
    /// a traced one kept as the drop count's exemplar.
    private func report(_ admission: MeshBacklog.Admission, tracedBy span: YoMoSpan?) {
        if let spanContext = span?.context.spanContext, let exemplar = Exemplar(spanContext: spanContext) { state.withLock { $0.lastDropTraced = exemplar } }
        switch admission {
        case .queued, .dropped(firstOfBurst: false): break
        case .dropped(firstOfBurst: true):
            tracing.withCurrent(span) {
                logger.warning("mesh downstream is slow or unreachable: dropping frames for it until it catches up", metadata: [
                    "max_frames": "\(limits.maximumFrames)", "max_bytes": "\(limits.maximumBytes)",
                ])
            }
        }
    }

    /// A frame taken from the queue is dropped (counted, and its trace
    /// ended with a span that says `why`): nothing to wait for.
    private func dropTaken(_ frame: DataFrame, why: String) {
        let admission = state.withLock { state in
            state.passed += 1
            return state.backlog.drop(count: 1)
        }
        let span = tracing.droppedFrame(
            frame, reason: "mesh_link_down", destination: .meshDownstream(peer.name),
            cause: "dropped: the link to mesh downstream \(peer.name) could not take it: \(why)")
        report(admission, tracedBy: span)
    }

    private func delivered() {
        if let count = state.withLock({ $0.backlog.delivered() }) {
            logger.warning("mesh downstream caught up", metadata: ["dropped": "\(count)"])
        }
    }

    /// The next queued frame; nil once closed.
    private func next() async -> MeshBacklog.Queued? {
        while true {
            let frame = state.withLock { state -> MeshBacklog.Queued?? in
                if let frame = state.backlog.take() {
                    state.inHandBytes = frame.frame.encodedLength
                    return .some(frame)
                }
                return state.closed ? .some(nil) : nil
            }
            if let frame { return frame }
            await withCheckedContinuation { continuation in
                let ready = state.withLock { state -> Bool in
                    if state.closed || !state.backlog.frames.isEmpty { return true }
                    state.waiter = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        }
    }

    /// The client the queue goes to; between two (the first not yet made, or
    /// the last ended and the next waiting out its delay) the frame in hand
    /// waits for the next, rather than be dropped: a restored queue is fed
    /// from the start. `connected`: one connected to the downstream, for a
    /// restored frame: the file may hold more than the client's outage
    /// buffer takes, and a frame written on a connection is settled by
    /// itself (one carried after an outage settles with all it carried),
    /// which the file's settled count follows. Nil once the link closed.
    private func nextClient(connected: Bool) async -> ClientRuntime? {
        while true {
            let (client, closed) = state.withLock { ($0.client, $0.closed) }
            if let client, !connected || client.isConnected { return client }
            if closed || Task.isCancelled { return nil }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Keeps a client to the downstream and feeds it the queue, until `close()`.
    func run() async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.keepConnected() }
            group.addTask { await self.tend() }
            while let queued = await next() {
                var frame = queued.frame
                var waitingSince = queued.queuedAt
                guard let client = await nextClient(connected: queued.restored) else {
                    keepOrDrop(frame, why: "the link closed")
                    continue
                }
                if queued.restored {
                    // Its wait across the restart, and for the link to connect, in its trace; a wait for the link after that is its own.
                    frame = tracing.keptFrame(frame, waited: .now - queued.queuedAt, spooled: state.withLock { $0.restoredSpooled })
                    waitingSince = .now
                }
                do {
                    // Awaits only this link: a slow downstream fills its own queue.
                    // Held while the link reconnects, it waits from when it was queued.
                    let mark = try await client.sendMarked(frame, waitingSince: waitingSince)
                    let sentAt = ContinuousClock.now
                    state.withLock { state in
                        state.passed += 1
                        state.unsettled.append(Sent(index: state.passed, client: client, mark: mark, sentAt: sentAt, frame: keptFile == nil ? nil : frame))
                        if state.passed <= state.restoredThrough {
                            state.onFileUnsettled.append(OnFile(client: client, mark: mark, place: state.restoredFromPlace + state.passed - 1))
                        }
                    }
                    delivered()
                } catch {
                    // Reconnecting with a full outage buffer, or the client ended.
                    keepOrDrop(frame, why: "\(error)")
                }
            }
        }
    }

    /// A frame taken from the queue that no client sent: kept for the next
    /// start at the close (`keepAtClose`), else dropped (counted, its trace
    /// ended). Either way it has passed the queue.
    private func keepOrDrop(_ frame: DataFrame, why: String) {
        if keepAtClose([frame]) {
            state.withLock { $0.passed += 1 }
        } else {
            dropTaken(frame, why: why)
        }
    }

    /// At the zipper's graceful close, with `keptFile`: frames the link could
    /// not deliver are kept (in front of those kept already, which are newer)
    /// instead of dropped. False otherwise: the caller drops them.
    private func keepAtClose(_ frames: [DataFrame]) -> Bool {
        guard keptFile != nil else { return false }
        return state.withLock { state in
            guard state.closed else { return false }
            state.keptAtClose.insert(contentsOf: frames, at: 0)
            return true
        }
    }

    /// One client after another: a client ends for good when the downstream
    /// rejects it or shuts down (as Go's clients do), but a mesh link must come
    /// back when that zipper does.
    private func keepConnected() async {
        let policy = ReconnectPolicy.default
        var attempt = 0
        let address: ZipperAddress
        do {
            address = try ZipperAddress(peer.address)
        } catch {
            logger.error("mesh link not started: bad address", metadata: ["error": "\(error)"])
            return
        }
        while !state.withLock({ $0.closed }) {
            let client = ClientRuntime(name: zipperName, zipper: peer.address, clientType: .upstreamZipper, logger: logger)
            let installed = state.withLock { state -> Bool in
                guard !state.closed else { return false }
                state.client = client
                return true
            }
            guard installed else { return }
            var quic = QUICConfiguration.zipperDefault
            quic.keepAliveInterval = .seconds(1)
            let settings = ClientSettings(
                name: zipperName, clientType: .upstreamZipper, observedTags: [],
                credential: peer.credential.map(Credential.init), wantedTarget: "",
                zipper: address, quic: quic,
                tls: .fromEnvironment(ProcessInfo.processInfo.environment), reconnect: policy,
                // With receipts the link's client keeps what it sent until the
                // downstream's functions have it, and sends it again to a
                // downstream that crashed and came back (since the
                // thirty-fourth round of issue 14; before, those were lost).
                retryInitialConnect: true, handshakeTimeout: .seconds(3), deliveryReceipts: deliveryReceipts)
            // Frames taken while reconnecting wait here, bounded like the queue.
            var setup = ClientRuntime.Setup(
                settings: settings, outageBufferFrames: limits.maximumFrames, outageBufferBytes: limits.maximumBytes,
                outageAdmitsBesidesPutBack: true)
            setup.tracing = tracing
            // What it still holds when the zipper's close ends it goes to the next start.
            setup.keepsUndelivered = { [weak self] frames in self?.keepAtClose(frames) ?? false }
            logger.info("mesh link starting")
            do {
                try client.launch(setup)
            } catch {
                logger.error("mesh link cannot start", metadata: ["error": "\(error)"])
                return
            }
            await client.waitForEnd()
            state.withLock { if $0.client === client { $0.client = nil } }
            if state.withLock({ $0.closed }) { return }
            attempt += 1
            // A rejected link (a wrong credential) waits longer: retrying fast would only flood both logs.
            let delay = client.endReason?.code == .rejected ? .seconds(5) : policy.delay(beforeAttempt: min(attempt, 8) + 1)
            logger.warning("mesh link down, starting over", metadata: [
                "error": "\(client.endReason.map { "\($0)" } ?? "none")", "retry_in": "\(delay)",
            ])
            try? await Task.sleep(for: delay)
            if Task.isCancelled { return }
        }
    }

    /// Stops the link: the client closes (delivering what it has) and `run`
    /// returns. With `keptFile`, what is still queued is kept for the next
    /// start, and so is what the client could not deliver by its close deadline.
    func close() async {
        let (client, waiter) = state.withLock { state -> (ClientRuntime?, CheckedContinuation<Void, Never>?) in
            state.closed = true
            if keptFile != nil { state.keptAtClose = state.backlog.takeAll() }
            defer { state.waiter = nil }
            return (state.client, state.waiter)
        }
        waiter?.resume()
        await client?.close()
    }

    /// After `close()`: writes what the link kept to `keptFile`, or removes
    /// the file when it kept nothing (what an earlier run kept was
    /// delivered, or is among what is kept now). Returns the frames kept.
    func keepForNextStart() throws(YoMoError) -> Int {
        // A zipper closed without having served (its bind failed) leaves the file as it found it.
        guard let keptFile, state.withLock({ $0.closed }) else { return 0 }
        let (undelivered, sent) = state.withLock { state in
            defer { state.keptAtClose = [] }
            return (state.keptAtClose, Array(state.unsettled))
        }
        let frames = Self.unsettled(sent, besides: undelivered) + undelivered
        try keptFileWrites.withLock { (_: inout ()) throws(YoMoError) in
            if frames.isEmpty {
                MeshKeptFile.remove(keptFile)
            } else {
                // The frames are the sources' data: readable by the zipper's user alone.
                try writeFileAtomically(keptFile, MeshKeptFile.encode(frames, closedAt: HeldFramesFile.now()), mode: 0o600, what: "mesh kept frames file")
            }
        }
        return frames.count
    }

    /// What the downstream took and had not settled by the close's end,
    /// oldest first, but for frames also among `undelivered` (sent again
    /// after a lost connection and handed over undelivered): its receipts
    /// no longer reach this run, and the senders were told the zipper shut
    /// down, so they let go of it too. Until the fiftieth round of issue 14
    /// only what the link had not delivered was kept, and a downstream that
    /// crashed after this zipper's graceful stop, its function behind, lost
    /// what it had acknowledged (`yomo-fault-bench chaos --mesh --seed 5`
    /// with a 20 ms pipe handler at 3 % loss: 643–645 frames). Kept: the
    /// downstream may get some twice, if it had them after all.
    private static func unsettled(_ sent: [Sent], besides undelivered: [DataFrame]) -> [DataFrame] {
        let handedOver = Set(undelivered)
        return sent.compactMap { record in
            guard let frame = record.frame, !handedOver.contains(frame), !record.client.isSettled(record.mark, endedSettles: false) else { return nil }
            return frame
        }
    }

    /// At the start, before `run()`: queues what the previous run kept in
    /// `keptFile` ahead of everything else. The file stays until the
    /// downstream settled them (a crash before finds them again; the
    /// downstream may then get some twice). Returns the frames, the
    /// close's time (or the spool's beginning) and whether the spool began
    /// the file, or nil with no file; throws for a file that cannot be
    /// read or understood (removed: its frames are lost).
    func restoreKept() throws(YoMoError) -> (frames: Int, closedAt: Int64, spooled: Bool)? {
        guard let keptFile else { return nil }
        let bytes: [UInt8]?
        do throws(YoMoError) {
            bytes = try MeshKeptFile.read(keptFile, queue: limits)
        } catch {
            MeshKeptFile.remove(keptFile)
            throw error
        }
        guard let bytes else { return nil }
        guard let (closedAt, spooled, settled, all) = MeshKeptFile.decode(bytes) else {
            MeshKeptFile.remove(keptFile)
            throw YoMoError(.invalidConfiguration, "mesh kept frames file \(keptFile) is not understood")
        }
        // Those the downstream had settled are not sent again.
        let frames = all.dropFirst(settled)
        guard !frames.isEmpty else {
            MeshKeptFile.remove(keptFile)
            return nil
        }
        // The wall clock is the only one two runs share: the close's time on this run's clock.
        let closed = ContinuousClock.now - .milliseconds(max(0, HeldFramesFile.now() - closedAt))
        state.withLock { state in
            for frame in frames { state.backlog.restore(frame, closedAt: closed) }
            state.accepted += frames.count
            state.restoredThrough = state.accepted
            state.restoredSpooled = spooled
            state.keptFileBytes = bytes.count
            state.fileFrames = all.count
            state.restoredFromPlace = settled
            if spooled, let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) {
                state.settledCount = (newline - MeshKeptFile.settledDigits, settled)
            }
        }
        return (frames.count, closedAt, spooled)
    }

    /// How often the link forgets what is settled, spools what its patience
    /// is to let go, and looks whether the frames in `keptFile` are settled.
    static let tendingInterval: Duration = .milliseconds(100)

    /// How long the spool rests after it could not write, before it tries again.
    static let spoolRetry: Duration = .seconds(30)

    /// Until the close: forgets the frames settled (or let go by the
    /// patience), which only senders with receipts ask about otherwise:
    /// until the forty-ninth round of issue 14 a link whose senders had
    /// none (Go's sources) kept a record of every frame it sent. With
    /// `keptFile` (which the close writes anew or removes): spools, and
    /// removes the file once the downstream settled every frame in it.
    private func tend() async {
        while !Task.isCancelled, !state.withLock({ $0.closed }) {
            // The client's lock, not under the link's.
            let connected = state.withLock { $0.client }?.isConnected ?? false
            state.withLock { state in
                if connected {
                    state.offlineSince = nil
                } else if state.offlineSince == nil {
                    state.offlineSince = .now
                }
            }
            if let keptFile { spool(into: keptFile) }
            _ = acknowledgedBytes
            if let keptFile { removeKeptFileIfSettled(keptFile) }
            try? await Task.sleep(for: Self.tendingInterval)
        }
    }

    /// Appends to `keptFile` the frames the receipt patience is to let their
    /// senders go of (the link without a connection for `receiptPatience`,
    /// and they sent longer ago, neither settled by the downstream nor on a
    /// connection still up), before it does: a crash of this zipper before
    /// the downstream settles them finds them there. Until the forty-ninth round of issue 14 nothing
    /// had them but this process (`yomo-fault-bench chaos --mesh --seed 13`
    /// with a 20 ms handler: a downstream away for over 5 s, then this
    /// zipper killed, lost 93 frames in each of eight runs).
    private func spool(into keptFile: String) {
        let patientSince = ContinuousClock.now - receiptPatience
        let (candidates, restoredThrough) = state.withLock { state -> ([Sent], Int) in
            if let refusedAt = state.spoolRefusedAt, ContinuousClock.now - refusedAt >= Self.spoolRetry { state.spoolRefusedAt = nil }
            guard state.spoolRefusedAt == nil, state.isOffline(since: patientSince) else { return ([], 0) }
            let spooledThrough = state.spooledThrough
            return (Array(state.unsettled.lazy.drop { $0.index <= spooledThrough }.prefix { $0.sentAt < patientSince }), state.restoredThrough)
        }
        var coveredThrough: Int?
        var frames = ByteBuffer()
        var spooled: [(client: ClientRuntime, mark: ClientRuntime.DeliveryMark)] = []
        // In the order the patience goes, and as far: the client's lock, not under the link's.
        for sent in candidates {
            if !sent.client.isSettled(sent.mark) {
                if sent.client.isOnLiveConnection(sent.mark) { break }
                // A restored frame is in the file already.
                if sent.index > restoredThrough, let frame = sent.frame {
                    frame.encode(into: &frames)
                    spooled.append((sent.client, sent.mark))
                }
            }
            coveredThrough = sent.index
        }
        guard let coveredThrough else { return }
        guard frames.readableBytes > 0 else {
            // Settled meanwhile, or in the file already.
            state.withLock { $0.spooledThrough = max($0.spooledThrough, coveredThrough) }
            return
        }
        let header = MeshKeptFile.spoolHeader(startedAt: HeldFramesFile.now())
        let outcome = keptFileWrites.withLock { _ -> Result<Int, YoMoError>? in
            let (closed, size) = state.withLock { ($0.closed, $0.keptFileBytes) }
            // The close writes the file.
            guard !closed else { return nil }
            let limit = MeshKeptFile.maximumBytes(limits)
            guard size + frames.readableBytes <= limit else {
                return .failure(YoMoError(.outageBufferFull, "mesh kept frames file \(keptFile) would be over \(limit) bytes (twice mesh_queue max_bytes)"))
            }
            return Result { () throws(YoMoError) in
                try appendToFile(keptFile, header: header, Array(frames.readableBytesView), mode: 0o600, what: "mesh kept frames file")
            }
        }
        switch outcome {
        case nil:
            return
        case .success(let size):
            state.withLock { state in
                if state.keptFileBytes == 0 {
                    // The spool began the file.
                    state.fileFrames = 0
                    state.settledCount = (header.count - 1 - MeshKeptFile.settledDigits, 0)
                }
                state.keptFileBytes = size
                state.spooledThrough = max(state.spooledThrough, coveredThrough)
                state.onFileUnsettled += spooled.enumerated().map { OnFile(client: $1.client, mark: $1.mark, place: state.fileFrames + $0) }
                state.fileFrames += spooled.count
            }
        case .failure(let error):
            state.withLock { $0.spoolRefusedAt = .now }
            // Said once until the file goes, or the spool tries again: the patience goes on, as it did before the spool.
            logger.warning("the mesh link cannot keep on disk what its receipt patience lets go: a crash of this zipper before the downstream has those frames loses them", metadata: [
                "error": "\(error.message)", "frames": "\(spooled.count)",
            ])
        }
    }

    /// Removes `keptFile` once the downstream settled every frame in it
    /// (its receipts; without them, its acknowledgement): all restored ones
    /// taken by a client, and all spooled ones. Until then, in a file the
    /// spool began, counts in its header those settled from its start.
    private func removeKeptFileIfSettled(_ keptFile: String) {
        let pending = state.withLock { state -> [OnFile]? in
            state.keptFileBytes == 0 || state.passed < state.restoredThrough ? nil : state.onFileUnsettled
        }
        guard let pending else { return }
        // The client's lock, not under the link's.
        let settled = pending.prefix { $0.client.isSettled($0.mark, endedSettles: false) }.count
        guard settled > 0 || pending.isEmpty else { return }
        enum Change { case remove, count(offset: Int, value: Int) }
        // The close writes the file under `keptFileWrites` too, after this.
        keptFileWrites.withLock { _ in
            let change = state.withLock { state -> Change? in
                guard !state.closed else { return nil }
                state.onFileUnsettled.removeFirst(settled)
                guard let first = state.onFileUnsettled.first else {
                    state.keptFileBytes = 0
                    state.fileFrames = 0
                    state.settledCount = nil
                    state.spoolRefusedAt = nil
                    return .remove
                }
                guard let settledCount = state.settledCount, first.place > settledCount.written else { return nil }
                state.settledCount?.written = first.place
                return .count(offset: settledCount.offset, value: first.place)
            }
            switch change {
            case nil: break
            case .remove: MeshKeptFile.remove(keptFile)
            case .count(let offset, let value):
                // A count that could not be written costs copies after a crash, not frames.
                try? overwriteInFile(keptFile, at: offset, Array(MeshKeptFile.settledField(value).utf8), what: "mesh kept frames file")
            }
        }
    }
}

/// A mesh link as the receipts of the frames it forwards see it: the frames
/// a sender's checkpoint waits for are those the link's queue had accepted
/// by then, settled in the order accepted once the downstream settled them
/// (its receipts; a downstream without them, its acknowledgement) or the link
/// dropped them (counted). Until the thirty-fourth round of issue 14 a frame
/// counted as settled once queued, and a zipper that crashed lost what its
/// links had not yet delivered.
extension MeshLink: DeliveryProgress {
    /// Accepted frames settled, all of them before too (or sent longer ago
    /// than `receiptPatience` and not on a connection still up, and, with
    /// `keptFile`, spooled: a downstream that has a frame, or reads it at
    /// its own pace, settles it by its own rules, its functions' pace or its
    /// hold, and the sender keeps it meanwhile, as it keeps a local
    /// function's backlog). Until the forty-eighth round of issue 14 the
    /// patience let go of those too: the senders of a downstream whose
    /// function worked off seconds of backlog forgot its frames after 5 s,
    /// and a crash of this zipper and then of the downstream lost them.
    var acknowledgedBytes: Int {
        let patientSince = ContinuousClock.now - receiptPatience
        let spools = keptFile != nil
        // The client's lock, not under the link's.
        while let (first, patient) = state.withLock({ state in
            state.unsettled.first.map {
                ($0, state.isOffline(since: patientSince) && (!spools || $0.index <= state.spooledThrough || state.spoolRefusedAt != nil))
            }
        }),
            first.client.isSettled(first.mark)
                || (patient && first.sentAt < patientSince && !first.client.isOnLiveConnection(first.mark)) {
            state.withLock { state in
                if state.unsettled.first?.index == first.index { state.unsettled.removeFirst() }
            }
        }
        return state.withLock { state in (state.unsettled.first?.index).map { $0 - 1 } ?? state.passed }
    }

    var sendProgress: (written: Int, ended: Bool) { state.withLock { ($0.accepted, false) } }
}
