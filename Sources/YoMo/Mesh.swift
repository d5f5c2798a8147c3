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
    private struct State {
        var backlog: MeshBacklog
        var waiter: CheckedContinuation<Void, Never>?
        var client: ClientRuntime?
        var closed = false
        /// Frames the queue accepted, and of those the client took or the link dropped.
        var accepted = 0
        var passed = 0
        /// The last dropped frame whose drop has a span.
        var lastDropTraced: Exemplar?
        /// Frames the client took and has not settled, by their place among the accepted, and when.
        var unsettled = CircularBuffer<(index: Int, client: ClientRuntime, mark: ClientRuntime.DeliveryMark, sentAt: ContinuousClock.Instant)>()
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
    /// `ClientSession.maximumKeptBytes`: past this, a frame it has not settled
    /// counts as settled for its sender, as a held frame does once the hold
    /// (`unrouted_hold`, 5 s) drops it. The link still delivers it if the
    /// downstream comes back; a crash of this zipper after then loses it.
    static let receiptPatience: Duration = .seconds(5)
    private let logger: Logger
    private let state: Mutex<State>
    /// The zipper's: a frame that waited for the link to reconnect gets a span for the wait.
    private let tracing: DataPathTracer
    /// The queue's bounds (`mesh_queue`), which the link's client holds to as well.
    private let limits: ZipperConfiguration.MeshQueue

    init(
        peer: ZipperConfiguration.MeshPeer, zipperName: String, limits: ZipperConfiguration.MeshQueue, deliveryReceipts: Bool,
        receiptPatience: Duration = MeshLink.receiptPatience, tracing: DataPathTracer = .disabled, logger: Logger
    ) {
        self.peer = peer
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

    /// What the link dropped, whether it is connected now, and the frames
    /// waiting for it: in its queue, and held by its client while it reconnects.
    var health: MeshLinkHealth {
        let (client, backlog, lastDropTraced) = state.withLock { ($0.client, $0.backlog, $0.lastDropTraced) }
        // The client's own lock, outside the link's.
        let held = client?.outageStatistics
        return MeshLinkHealth(
            downstream: peer.name, dropped: backlog.dropped, lastDropTraced: lastDropTraced, connected: client?.isConnected ?? false,
            queuedFrames: backlog.frames.count + (held?.pendingFrames ?? 0), queuedBytes: backlog.bytes + (held?.pendingBytes ?? 0),
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
                if let frame = state.backlog.take() { return .some(frame) }
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

    /// Keeps a client to the downstream and feeds it the queue, until `close()`.
    func run() async {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.keepConnected() }
            while let queued = await next() {
                let frame = queued.frame
                guard let client = state.withLock({ $0.client }) else {
                    dropTaken(frame, why: "no client")
                    continue
                }
                do {
                    // Awaits only this link: a slow downstream fills its own queue.
                    // Held while the link reconnects, it waits from when it was queued.
                    let mark = try await client.sendMarked(frame, waitingSince: queued.queuedAt)
                    let sentAt = ContinuousClock.now
                    state.withLock { state in
                        state.passed += 1
                        state.unsettled.append((state.passed, client, mark, sentAt))
                    }
                    delivered()
                } catch {
                    // Reconnecting with a full outage buffer, or the client ended.
                    dropTaken(frame, why: "\(error)")
                }
            }
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

    /// Stops the link: the client closes (delivering what it has) and `run` returns.
    func close() async {
        let (client, waiter) = state.withLock { state -> (ClientRuntime?, CheckedContinuation<Void, Never>?) in
            state.closed = true
            defer { state.waiter = nil }
            return (state.client, state.waiter)
        }
        waiter?.resume()
        await client?.close()
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
    /// Accepted frames settled, all of them before too (or sent longer ago than `receiptPatience`).
    var acknowledgedBytes: Int {
        let patientSince = ContinuousClock.now - receiptPatience
        // The client's lock, not under the link's.
        while let first = state.withLock({ $0.unsettled.first }), first.sentAt < patientSince || first.client.isSettled(first.mark) {
            state.withLock { state in
                if state.unsettled.first?.index == first.index { state.unsettled.removeFirst() }
            }
        }
        return state.withLock { state in (state.unsettled.first?.index).map { $0 - 1 } ?? state.passed }
    }

    var sendProgress: (written: Int, ended: Bool) { state.withLock { ($0.accepted, false) } }
}
