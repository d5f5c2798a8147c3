import FoundationEssentials
import Synchronization
public import Logging
internal import YoMoLogging
internal import Tracing
public import ServiceLifecycle
internal import NIOCore
public import YoMoQUIC
public import YoMoTracing
public import YoMoMetrics
internal import YoMoWire

/// A YoMo zipper: accepts sources and stream functions over QUIC and routes each
/// DataFrame to every stream function that observes its tag. Usable in-process
/// (tests, local development) and as `yomo serve`.
public final class Zipper: Sendable {
    public struct Options: Sendable {
        public var logger: Logger
        public var tls: ServerTLSConfiguration
        public var quic: QUICConfiguration
        /// How long a new connection may take to send its handshake.
        public var handshakeTimeout: Duration
        /// Where the zipper's spans go; `nil`: what the environment asks for, else none.
        public var tracerProvider: TracerProvider?
        /// How long `close()` (and SIGTERM in `wait()`) may take in all, the flush
        /// of a tracer provider made from the environment included.
        public var shutdownTimeout: Duration
        /// Where routing metrics go (`yomo.zipper.routed.messages`, …); `nil`: the
        /// process's provider (`YoMoMetrics.bootstrap`), off unless turned on.
        public var meterProvider: MeterProvider?
        /// Which threads read and route the connections' frames (default:
        /// `YOMO_ZIPPER_ROUTING`, else `.loop`).
        public var routing: Routing
        /// A `YOMO_ZIPPER_ROUTING` value that is neither `loop` nor `pool`, when
        /// `routing` came from the environment: the zipper warns about it.
        var ignoredRoutingSetting: String?
        /// `MeshLink.receiptPatience`; tests shorten it.
        var meshReceiptPatience = MeshLink.receiptPatience

        public init(
            logger: Logger = Logger(label: "yomo.zipper"),
            tls: ServerTLSConfiguration = .selfSigned,
            quic: QUICConfiguration = .zipperDefault,
            handshakeTimeout: Duration = .seconds(10),
            tracerProvider: TracerProvider? = nil,
            shutdownTimeout: Duration = .seconds(5),
            meterProvider: MeterProvider? = nil,
            routing: Routing? = nil
        ) {
            if let routing {
                self.routing = routing
            } else {
                let setting = Routing.fromEnvironment(ProcessInfo.processInfo.environment)
                self.routing = setting.routing ?? .loop
                ignoredRoutingSetting = setting.ignored
            }
            self.shutdownTimeout = shutdownTimeout
            self.meterProvider = meterProvider
            self.tracerProvider = tracerProvider
            self.logger = logger
            self.tls = tls
            self.quic = quic
            self.handshakeTimeout = handshakeTimeout
        }
    }

    /// Which threads read and route the connections' frames.
    public enum Routing: String, Sendable {
        /// The QUIC loop thread that receives them: a frame is read, routed and
        /// queued for its destinations where it arrived, with no hop to another
        /// thread and no wake-up per frame. On a 2-core machine this routed 11 %
        /// more frames a second for 13 % less CPU than `.pool`, and took 14 %
        /// off a latency-bound round trip (docs/performance.md).
        case loop
        /// Swift's task pool, beside the loop thread: routing can use another
        /// core, for a zipper with many busy peers on a machine with cores to spare.
        case pool

        /// `YOMO_ZIPPER_ROUTING` (`loop` or `pool`), read once: nil when unset,
        /// and nil with the value as `ignored` when it is neither.
        static func fromEnvironment(_ environment: [String: String]) -> (routing: Routing?, ignored: String?) {
            guard let value = environment["YOMO_ZIPPER_ROUTING"] else { return (nil, nil) }
            guard let routing = Routing(rawValue: value) else { return (nil, value) }
            return (routing, nil)
        }
    }

    private struct Peer: Sendable {
        var connection: QUICFrameConnection
        /// Its connection as the receipts of what is written to it see it.
        var delivery: DeliveryDestination
        var member: RouteMember
        /// Merged into every frame this peer writes (its wanted target).
        var metadata: Metadata
        /// Frames not sent to it under the `drop` policy, since it last kept up.
        var droppedInBurst = 0
        /// Frames whose write found its connection ended, before it left the
        /// routes: held with what it had not acknowledged when it leaves.
        var unwritten: [(frame: DataFrame, target: String?, linkDigest: CopyDigest?)] = []
        /// For each stream function of its name that joined the routes after
        /// it (a restart, another instance), its stream offset then: frames
        /// written to it before that offset, that one lacks (`catchUp`).
        var writtenWhenNamesakeJoined: [UInt64: Int] = [:]
        /// Set for a stream function that acknowledges handling, past its
        /// handshake's answer (it may be told that copies may follow,
        /// `announceCopies`): its stream's offset then, where its frames begin.
        var recognizesCopiesFrom: Int?

        /// Whether frames written to it wait for its handlers (as far as its receipts said).
        var hasBacklog: Bool {
            let written = connection.connection.sendProgress.written
            return written > (recognizesCopiesFrom ?? written) && !delivery.hasHandled(frameEndingAt: written)
        }
    }

    /// A peer a frame goes to: its id, its connection, and that as receipts see it.
    private typealias Destination = (id: UInt64, connection: QUICFrameConnection, delivery: DeliveryDestination)

    /// A frame an ended stream function's connection left, for another
    /// instance of its name that lacks it (`State.catchUp`), and why it waited.
    private struct CatchUp {
        var frame: DataFrame
        var reason: HeldFrames.Reason
        var to: Destination
        /// Its receipt tally at the ended connection's end.
        var tally: HoldTally
        /// Its key, if an upstream zipper forwarded it.
        var linkDigest: CopyDigest?
    }

    private struct State {
        var server: QUICServer?
        var routes = RouteTable()
        var peers: [UInt64: Peer] = [:]
        /// By name, the connections of stream functions that said they are
        /// closing to a zipper that answers: told the ids of the frames held
        /// for their name (`tellHeldCopies`).
        var closingNames: [String: Set<UInt64>] = [:]

        /// Adds a client to the routes; a stream function's namesakes there
        /// note how far they had been written to (`Peer.writtenWhenNamesakeJoined`).
        mutating func joinRoutes(_ member: RouteMember) {
            if member.clientType == .streamFunction {
                for (id, peer) in peers
                where id != member.connectionID && peer.member.clientType == .streamFunction && peer.member.name == member.name {
                    // Namesakes that left since are forgotten: one that restarts often adds one a restart.
                    var joined = peer.writtenWhenNamesakeJoined.filter { peers[$0.key] != nil }
                    joined[member.connectionID] = peer.connection.connection.sendProgress.written
                    peers[id]?.writtenWhenNamesakeJoined = joined
                }
            }
            routes.add(member)
        }

        /// What a stream function's ended connection had not acknowledged (or
        /// its handlers not finished) in tags another instance of its name
        /// observes: each goes to those of them that joined after it was
        /// written, and so lack it (counted in `tally` until written there and
        /// acknowledged). Until the thirty-fifth round of issue 14 they were
        /// counted lost: a function restarted before the zipper noticed its
        /// predecessor's end (a crash while no frame was flowing to it) is
        /// such a namesake.
        /// `acknowledgedThrough`: what the ended connection's QUIC stack had
        /// acknowledged (frames before it were kept for its handlers): why each waited.
        /// A frame of the mesh that the name finished (a copy read after its
        /// original, as `holdAhead` passes over) goes to none of them, and
        /// counts as handled: until the sixtieth round of issue 14 the
        /// namesake that finished it handled it again.
        mutating func catchUp(
            _ frames: [(frame: DataFrame, target: String?, notAcknowledged: Int, end: Int)], acknowledgedThrough: Int, leftBy peer: Peer,
            stillObserved: Set<UInt32>, leftovers: Leftovers, linkDigests: [Int: CopyDigest]
        ) -> [CatchUp] {
            var deliveries: [CatchUp] = []
            for (frame, target, _, end) in frames where stillObserved.contains(frame.tag) {
                if let digest = linkDigests[end], held.handled(digest, byFunctionNamed: peer.member.name) {
                    leftovers.tally(endingAt: end).finishedBefore()
                    // Counted where a namesake lacked it, as a copy routed is where one was there.
                    let lacked = peer.writtenWhenNamesakeJoined.contains { id, joinedAt in end <= joinedAt && peers[id] != nil }
                    if lacked { statistics.handledCopiesNotRouted += 1 }
                    continue
                }
                for (id, joinedAt) in peer.writtenWhenNamesakeJoined where end <= joinedAt {
                    guard let namesake = peers[id], namesake.member.receives(tag: frame.tag, target: target) else { continue }
                    let tally = leftovers.tally(endingAt: end)
                    tally.add()
                    deliveries.append(CatchUp(
                        frame: frame, reason: end <= acknowledgedThrough ? .notHandled : .notAcknowledged,
                        to: (id, namesake.connection, namesake.delivery), tally: tally, linkDigest: linkDigests[end]))
                }
            }
            return deliveries
        }
        var nextConnectionID: UInt64 = 1
        var acceptTask: Task<Void, Never>?
        var closed = false
        var pendingHandshakes = 0
        /// The pending ones by address group (`QUICConnection.addressGroup`).
        var pendingHandshakesByAddress: [String: Int] = [:]
        var statistics = Statistics()
        var readinessProbe: Int?
        /// Unacknowledged bytes of the connections that ended with the zipper's
        /// close, and how many: one line for all, not one per client.
        var lostAtClose = (clients: 0, bytes: 0)
        /// Frames with no stream function, held for one on its way back.
        var held: HeldFrames
        /// The hold reached its byte limit, said for a frame of a tag some
        /// function observed (a warning) and of one none did (info): each once
        /// until a frame is held again.
        var heldFull = (observed: false, unobserved: false)
        var heldDropReports = HeldDropReports()
        var heldLines = HeldLineBudget()
        /// What the held frames file keeps while this run goes on (restored
        /// from it, or left in the hold by clients that closed for good), until
        /// those frames left the hold; nil: no file of this run's stands.
        var heldFile: HeldFileKept?
        /// The last stream functions to leave, by connection: a frame routed to
        /// one just before it left may find its connection ended just after.
        var departed = CircularBuffer<RouteMember>()
        static let departedRemembered = 64
        /// Receipt ledgers of ended connections, by client id, for a reconnection.
        var endedLedgers: [String: ReceiptLedger.Handover] = [:]
        var endedLedgerOrder: [String] = []
        /// How many: a reconnection comes within seconds, and a ledger holds little.
        static let endedLedgersKept = 1024
        /// Names of upstream zippers of the mesh that connected: one that
        /// connects again (after a crash, its sources sending again what it
        /// had not settled) makes the stream functions expect copies.
        var upstreamNamesSeen: Set<String> = []
        static let upstreamNamesRemembered = 1024
        /// Told when a connection has left (`supersedeEarlier` and `drain` wait on them).
        var departureWaiters: [UInt64: [Latch]] = [:]

        /// An upstream zipper named `name` connected: the stream functions to
        /// tell that copies may follow. All, if one of that name connected
        /// before; else those with frames written and not yet handled (this
        /// zipper may have restarted since that one's earlier run forwarded
        /// them: its hold, or its held frames file, gave them again).
        mutating func upstreamConnected(_ name: String) -> [QUICFrameConnection] {
            let first = upstreamNamesSeen.count < Self.upstreamNamesRemembered && upstreamNamesSeen.insert(name).inserted
            return functionsRecognizingCopies { !first || $0.hasBacklog }
        }

        /// The connection of an upstream zipper named `name` ended: the stream
        /// functions to tell that copies may follow, and whether another of
        /// that name is connected already (its predecessor may have routed
        /// originals of its copies up to now). Without one, the upstream may
        /// come back (a crash, a restart) and its sources send again what it
        /// had not settled, which the functions may handle meanwhile: told
        /// only once it came back, a function knew only what it had not
        /// reported handled by then, and handled again the copies of frames
        /// it finished while the upstream was away (until the fifty-fifth
        /// round of issue 14).
        func upstreamLeft(_ name: String) -> (functions: [QUICFrameConnection], successor: Bool) {
            let successor = peers.values.contains { $0.member.clientType == .upstreamZipper && $0.member.name == name }
            return (functionsRecognizingCopies { _ in true }, successor)
        }

        private func functionsRecognizingCopies(where chosen: (Peer) -> Bool) -> [QUICFrameConnection] {
            peers.values.filter { $0.recognizesCopiesFrom != nil && chosen($0) }.map(\.connection)
        }

        /// A latch fired once connection `id` has left.
        mutating func departure(of id: UInt64) -> Latch {
            let latch = Latch()
            departureWaiters[id, default: []].append(latch)
            return latch
        }

        /// The connected peers a frame with `tag` (and `target`) goes to.
        func destinations(tag: UInt32, target: String?) -> [Destination] {
            routes.destinations(tag: tag, target: target).compactMap { id in peers[id].map { (id, $0.connection, $0.delivery) } }
        }

        /// `destinations(tag:target:)` less the functions whose name finished
        /// a frame keyed `copy` (`CopyKey.digest`, of a frame from an upstream
        /// zipper; see `route`), and whether there were such.
        func destinations(tag: UInt32, target: String?, passingOver copy: CopyDigest?) -> (destinations: [Destination], passedOver: Bool) {
            var destinations = destinations(tag: tag, target: target)
            guard let copy, !destinations.isEmpty else { return (destinations, false) }
            let count = destinations.count
            destinations.removeAll { peers[$0.id].map { held.handled(copy, byFunctionNamed: $0.member.name) } ?? false }
            return (destinations, destinations.count < count)
        }

        /// Whether the stream functions to remember changed since the file was written.
        var functionsChanged = false

        /// The stream functions to remember across a restart: those connected
        /// and those still expected back, one per name.
        func functionsToRemember(now: ContinuousClock.Instant) -> [RouteMember] {
            var byName: [String: RouteMember] = [:]
            for function in held.absentFunctions(now: now) { byName[function.name] = function }
            for peer in peers.values where peer.member.clientType == .streamFunction {
                var function = peer.member
                if let away = byName[function.name] { function.observedTags.formUnion(away.observedTags) }
                byName[function.name] = function
            }
            return Array(byName.values)
        }

        enum HoldDecision {
            /// Not held for anyone.
            case none
            /// Held for someone, and it fits: copy it and hold it.
            case hold
            /// Held for someone (`claim`), but the hold is full: refused
            /// (counted), with the level of the line to write about it.
            case refused(Logger.Level?, HeldFrames.Claim)
        }

        /// Whether `frame` is to be held. A full hold refuses it here, before
        /// anyone copies it: a function away for a minute under a fast source
        /// would otherwise have each frame copied in vain. The data path's
        /// case (functions connected, none away) reads no clock.
        mutating func holdDecision(for frame: DataFrame, target: String?, routed: Bool) -> HoldDecision {
            guard let claim = held.claim(tag: frame.tag, target: target, routed: routed, now: .now) else { return .none }
            guard held.fits(HeldFrames.bytes(of: frame)) else { return .refused(refuseHeld(tag: frame.tag), claim) }
            return .hold
        }

        /// Counts a frame the full hold refused; the level of the line to write
        /// about it, nil when one was written since the hold last took a frame.
        /// A pipeline's last tag filling the hold in the zipper's first minute
        /// is no loss to warn about.
        mutating func refuseHeld(tag: UInt32) -> Logger.Level? {
            statistics.heldFramesDropped += 1
            if held.wasObserved(tag: tag) {
                defer { heldFull.observed = true }
                return heldFull.observed ? nil : .warning
            }
            defer { heldFull.unobserved = true }
            return heldFull.unobserved ? nil : .info
        }

        /// Holds for `function`'s name the frames its ended connection had not
        /// acknowledged (or never took), each with its unacknowledged bytes,
        /// for the tags no namesake still observes (one that does received
        /// every frame since: the held ones would come after newer ones).
        /// Each held is added to its tally at its connection's end.
        mutating func holdForReturn(
            _ frames: [(frame: DataFrame, target: String?, notAcknowledged: Int, reason: HeldFrames.Reason, tally: HoldTally, linkDigest: CopyDigest?)],
            of function: RouteMember, stillObserved: Set<UInt32>
        ) -> UnacknowledgedAtEnd {
            var outcome = UnacknowledgedAtEnd(bytes: 0)
            let kept = frames.filter { !stillObserved.contains($0.frame.tag) && function.receives(tag: $0.frame.tag, target: $0.target) }
            let results = held.holdAhead(
                kept.map { ($0.frame, $0.target, HeldFrames.bytes(of: $0.frame), $0.reason, $0.tally, $0.linkDigest) }, for: function, now: .now)
            for ((frame, _, notAcknowledged, _, _, _), result) in zip(kept, results) {
                switch result {
                case .held:
                    statistics.heldFrames += 1
                    statistics.unacknowledgedFramesHeld += 1
                    outcome.heldFrames += 1
                    outcome.heldUnacknowledgedBytes += notAcknowledged
                    heldFull = (false, false)
                case .full:
                    if let level = refuseHeld(tag: frame.tag) { (outcome.refusedLevel, outcome.refusedTag) = (level, frame.tag) }
                case .handledBefore:
                    statistics.heldCopiesSettled += 1
                    outcome.finishedBeforeUnacknowledgedBytes += notAcknowledged
                }
            }
            return outcome
        }

        /// Counts held frames that were dropped.
        mutating func countHeldDropped(_ dropped: [HeldFrames.Dropped]) {
            statistics.heldFramesDropped += dropped.reduce(0) { $0 + $1.frames }
        }
    }

    /// What the zipper refused or dropped since it started.
    public struct Statistics: Hashable, Sendable {
        /// Handshakes refused (rejected, malformed, too big, over a limit, timed out).
        public var rejectedHandshakes = 0
        /// Frames not delivered to a slow consumer under the `drop` policy.
        public var droppedFrames = 0
        /// Destinations closed under the `disconnect` policy.
        public var slowConsumerDisconnects = 0
        /// Connections closed for breaking the protocol after their handshake.
        public var protocolViolations = 0
        /// Frames not forwarded to a mesh downstream because it is slow or
        /// unreachable (its queue, or its link's buffer while reconnecting, was
        /// full), summed over the downstreams.
        public var meshDroppedFrames = 0
        /// Bytes written to clients whose connections ended before they
        /// acknowledged them (a function frozen, killed or cut off): the
        /// frames in them were lost with the connection.
        public var unacknowledgedBytesLost = 0
        /// Bytes stream functions that acknowledge handling acknowledged and
        /// had not handled when their connections ended, past their share of
        /// `Limits.maximumUnhandledBytes` (so not kept for their next
        /// instance): lost if the function ended without handling them (a
        /// crash), an upper bound (a cut connection's live function handles them).
        public var unhandledBytesLost = 0
        /// Frames written to stream functions whose connections ended before
        /// they acknowledged them (frozen, killed, cut off), held for their
        /// return rather than lost (also counted in `heldFrames`).
        public var unacknowledgedFramesHeld = 0
        /// Frames held because no stream function observed their tag
        /// (`ZipperConfiguration.unroutedHold`).
        public var heldFrames = 0
        /// Connections that went on with smaller datagrams because their path
        /// dropped the bigger ones (a path MTU that shrank): said by ICMP,
        /// found by a stall, or by another connection to the same host.
        public var pathMTUBlackHoles = 0
        /// Held frames a stream function then received.
        public var heldFramesDelivered = 0
        /// Frames not held, or let go from the hold, because the stream
        /// functions they were held for said they finished a copy of each
        /// on an earlier connection (`ReceiptFrame.handledBefore`).
        public var heldCopiesSettled = 0
        /// Frames an upstream zipper of the mesh forwarded that were not
        /// written to a stream function because an instance of its name had
        /// finished a frame with the same key (`CopyKey.digest`): a copy,
        /// sent again through the upstream's next run, or one a function's
        /// ended connection left that its namesakes lacked. Counted once per frame.
        public var handledCopiesNotRouted = 0
        /// Frames a stream function's ended connection had not acknowledged
        /// (or its handlers not finished) that went to another instance of its
        /// name, one that joined after they were written (a restart the zipper
        /// saw before the predecessor's end).
        public var framesGivenToNamesakes = 0
        /// Connections closed because a frame they were sending stalled while
        /// others waited for room (`Limits.stalledFrameTimeout`).
        public var stalledFrames = 0
        /// Frames with no stream function that were dropped although the hold
        /// was on: no function came within its duration, the hold was full,
        /// or the zipper closed.
        public var heldFramesDropped = 0
        /// Connections closed as their handshake completed because their IP
        /// address had `Limits.maximumConnectionsPerAddress` already.
        public var connectionsRefusedPerAddress = 0
        /// What the clients may send ahead of the zipper's reading now: their
        /// receive windows summed, held to `Limits.maximumReceiveWindowBytes`
        /// (0 without it). A gauge, not a count.
        public var receiveWindowBytes = 0
        /// New clients answered with a QUIC Retry to prove their address
        /// first, while `Limits.maximumUnvalidatedHandshakes` handshakes of
        /// unproven addresses were in progress (a flood, or a burst of clients).
        public var addressValidationRetries = 0
        /// Initials whose Retry token was not this zipper's (forged, or from
        /// before a restart that changed the stateless reset key), too old, or
        /// replayed from another address: closed with INVALID_TOKEN, and the
        /// client dials again.
        public var invalidRetryTokens = 0
        /// QUIC handshakes refused with CONNECTION_REFUSED because their
        /// address, proven by a Retry, had `maximumPendingHandshakesPerAddress`
        /// in progress already.
        public var quicHandshakesRefusedPerAddress = 0
        /// Clients whose address a token from an earlier connection proved
        /// (a QUIC NEW_TOKEN this zipper sent): no Retry, and no round trip for one.
        public var addressTokensAccepted = 0
        /// Delivery receipts sent to clients that asked for them
        /// (`ZipperConfiguration.deliveryReceipts`).
        public var deliveryReceipts = 0
        /// Words to stream functions that frames written to them may come
        /// again, by transaction id (`ReceiptFrame.copiesMayFollow`): an
        /// upstream zipper of the mesh connected, or its earlier connection
        /// ended after that, or frames held for the function went to it.
        /// One per function told.
        public var copiesAnnounced = 0
    }

    public let configuration: ZipperConfiguration
    let options: Options
    let logger: Logger
    private let authority: HandshakeAuthority
    private let tracing: DataPathTracer
    private let ownedProvider: TracerProvider?
    private let metrics: DataPathMetrics
    private let state: Mutex<State>
    /// When a refusal over an address's share is said.
    private let perAddressRefusals = Mutex(SaidAtMostEvery(.seconds(10)))
    /// When a QUIC handshake refused over its address's share is said.
    private let perAddressHandshakeRefusals = Mutex(SaidAtMostEvery(.seconds(10)))
    /// Room for frames still arriving, shared by every connection.
    let incompleteFrames: IncompleteFrameBudget
    /// What stream functions acknowledged and had not handled, kept for their
    /// crash: shared by their hosts, then their connections (`Limits.maximumUnhandledBytes`).
    private let unhandledBudget: RetentionBudget
    /// One per downstream zipper of the mesh (empty without a mesh).
    private let links: [MeshLink]
    /// The links as receipts wait for them.
    private let linkDeliveries: [DeliveryDestination]
    /// Tells the clients that asked which of their frames are settled.
    private let receipts = DeliveryReceipts()
    /// Wakes the task that drops held frames at their deadline when the hold
    /// stops being empty.
    private let heldWakeups: (stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation)
    /// Taken while the held frames file is written or removed: the close's
    /// writing and a restored file's trimming (`keepUntilSettled`) use one
    /// temporary file, and the later of the two stands.
    private let heldFileWrites = Mutex(())
    /// Wakes the task that writes `functionsFile` when stream functions come or go.
    private let functionsChanges: (stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation)
    /// One writer of `functionsFile` at a time (the task, or the close), so the
    /// last snapshot taken is the last one written.
    private let functionsFileWriter = Mutex(false)
    /// Wakes the task that writes the finished frames file when functions
    /// finished more of the mesh's frames.
    private let finishedChanges: (stream: AsyncStream<Void>, continuation: AsyncStream<Void>.Continuation)
    /// One writer of the finished frames file at a time, as for `functionsFileWriter`.
    private let finishedFileWriter = Mutex(false)

    public init(configuration: ZipperConfiguration = ZipperConfiguration(), options: Options = Options()) {
        self.configuration = configuration
        self.options = options
        state = Mutex(State(held: HeldFrames(settings: configuration.unroutedHold, startedAt: .now)))
        incompleteFrames = IncompleteFrameBudget(
            bytes: max(1, configuration.limits.maximumIncompleteFrameBytes),
            stallTimeout: max(.nanoseconds(1), configuration.limits.stalledFrameTimeout))
        unhandledBudget = RetentionBudget(bytes: configuration.limits.maximumUnhandledBytes)
        heldWakeups = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        functionsChanges = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        finishedChanges = AsyncStream.makeStream(bufferingPolicy: .bufferingNewest(1))
        let logger = options.logger.yomoZipper(address: ZipperAddress.format(host: configuration.host, port: configuration.port))
        self.logger = logger
        self.authority = HandshakeAuthority(version: configuration.version, authentication: configuration.authentication)
        // A local too: the mesh links below take it in a closure, before `self` is whole.
        let (tracing, ownedProvider) = DataPathTracer.resolve(options.tracerProvider, serviceName: configuration.name, scope: "Zipper")
        (self.tracing, self.ownedProvider) = (tracing, ownedProvider)
        metrics = DataPathMetrics(
            provider: options.meterProvider ?? GlobalMeterProvider.provider, scope: "Zipper", component: ["yomo.zipper.name": configuration.name])
        links = configuration.downstreams.map { peer in
            MeshLink(
                peer: peer, zipperName: configuration.name, limits: configuration.meshQueue,
                deliveryReceipts: configuration.deliveryReceipts, receiptPatience: options.meshReceiptPatience,
                keptFile: configuration.functionsFile.map { MeshKeptFile.path(besides: $0, downstream: peer.name) }, tracing: tracing,
                logger: logger)
        }
        linkDeliveries = links.map { DeliveryDestination($0) }
        metrics.observeTracing(options.tracerProvider ?? ownedProvider)
        if let value = options.ignoredRoutingSetting {
            logger.warning("YOMO_ZIPPER_ROUTING is neither loop nor pool: ignored", metadata: ["value": "\(value)", "routing": "\(options.routing)"])
        }
        if !links.isEmpty {
            let links = self.links
            metrics.observeMeshLinks { links.map(\.health) }
        }
        metrics.observeClientConnections { [weak self] in self?.clientConnections() ?? [] }
        let incompleteFrames = self.incompleteFrames
        metrics.observeIncompleteFrames { (incompleteFrames.heldBytes, incompleteFrames.waitingConnections) }
        if configuration.limits.maximumReceiveWindowBytes != nil {
            metrics.observeReceiveWindows { [weak self] in self?.statistics.receiveWindowBytes ?? 0 }
        }
        metrics.observeAddressValidation { [weak self] in
            self.map {
                let statistics = $0.statistics
                return (statistics.addressValidationRetries, statistics.invalidRetryTokens, statistics.quicHandshakesRefusedPerAddress,
                        statistics.addressTokensAccepted)
            } ?? (0, 0, 0, 0)
        }
        if configuration.deliveryReceipts {
            let receipts = self.receipts
            metrics.observeReceipts { receipts.receiptsSent }
        }
        if configuration.unroutedHold.isOn {
            metrics.observeHeldFrames { [weak self] in self?.state.withLock { ($0.held.entries.count, $0.held.bytes) } ?? (0, 0) }
        }
    }

    /// The port it listens on (the bound one when configured with port 0), once started.
    public var port: Int? { state.withLock { $0.server?.port } }

    /// `host:port` clients can dial, once started.
    public var address: String? {
        state.withLock { state in state.server.map { ZipperAddress.format(host: configuration.host, port: $0.port) } }
    }

    /// Number of connected clients.
    public var connectionCount: Int { state.withLock { $0.peers.count } }

    /// Refusals and drops so far.
    public var statistics: Statistics {
        var (statistics, server) = state.withLock { ($0.statistics, $0.server) }
        statistics.meshDroppedFrames = links.reduce(0) { $0 + $1.dropped }
        let quic = server?.statistics
        statistics.connectionsRefusedPerAddress = quic?.refusedPerAddress ?? 0
        statistics.receiveWindowBytes = quic?.receiveWindowBytes ?? 0
        statistics.addressValidationRetries = quic?.retries ?? 0
        statistics.invalidRetryTokens = quic?.invalidTokens ?? 0
        statistics.quicHandshakesRefusedPerAddress = quic?.refusedHandshakesPerAddress ?? 0
        statistics.addressTokensAccepted = quic?.newTokensAccepted ?? 0
        statistics.deliveryReceipts = receipts.receiptsSent
        return statistics
    }

    /// The connections a frame of `tag` is routed to now (tests).
    func routesForTesting(tag: UInt32) -> [UInt64] { state.withLock { $0.routes.destinations(tag: tag, target: nil) } }

    /// Holds receipts back (tests: a path that lost them).
    func pauseReceiptsForTesting(_ paused: Bool) { receipts.pausedForTesting.store(paused, ordering: .relaxed) }

    /// QUIC connections the listener holds, including those that never handshake.
    public func quicConnectionCount() async -> Int { await state.withLock { $0.server }?.connectionCount() ?? 0 }

    /// Binds and accepts connections in the background until `close()`.
    public func start() async throws {
        let server = try await bind()
        let task = Task { await self.accept(server) }
        state.withLock { $0.acceptTask = task }
    }

    /// Binds and serves in the caller's task until cancelled (a `Service`'s `run()`).
    public func run() async throws {
        let server = try await bind()
        await withTaskCancellationOrGracefulShutdownHandler {
            await accept(server)
        } onCancelOrGracefulShutdown: {
            // Closing ends `connections`, which ends the accept loop.
            self.state.withLock { $0.closed = true }
            self.rememberFunctionsBeforeClosing()
            Task { await self.drainAndClose(server) }
        }
        reportWhatTheCloseLost()
    }

    /// Closes every connection with the listener-shutdown signal (code 0) and stops listening.
    public func close() async {
        let (server, task) = state.withLock { state -> (QUICServer?, Task<Void, Never>?) in
            state.closed = true
            return (state.server, state.acceptTask)
        }
        let deadline = ContinuousClock.now + options.shutdownTimeout
        rememberFunctionsBeforeClosing()
        if let probe = state.withLock({ $0.readinessProbe }) { Readiness.shared.remove(probe) }
        if let server { await drainAndClose(server) }
        await task?.value
        reportWhatTheCloseLost()
        await ownedProvider?.shutdown(timeout: max(deadline - ContinuousClock.now, .milliseconds(250)))
    }

    /// A graceful close's end: the drain, within half of `shutdownTimeout`,
    /// then every connection closed with the listener-shutdown signal.
    private func drainAndClose(_ server: QUICServer) async {
        await drain(server, until: .now + options.shutdownTimeout / 2)
        await server.close(reason: Self.shutdownReason)
    }

    /// Before a graceful close lets its connections go: what can be kept is
    /// kept. Connections that only send (sources, upstream zippers) close
    /// first, with the shutdown signal: what this zipper had not acknowledged
    /// stays with their clients, which send it again to the zipper that
    /// replaces this one, and what it had is routed. Then the stream functions
    /// get until `deadline` to acknowledge everything written to them (their
    /// own writes still routed), or until nothing moved for `drainStallLimit`
    /// (a function that froze), and are closed together at a moment when all
    /// are quiet. Until the thirtieth round of issue 14 every connection
    /// closed at once and frames inside the zipper were lost. With a held
    /// frames file (`keepsHoldAtClose`) what the functions have yet to take
    /// or handle goes into it, for the next start to give them, so past
    /// `backlogGrace` (a function that keeps up finishes what is on its way
    /// within it, and leaves nothing to give again) they are closed at the
    /// first moment when nothing they wrote is unread: until
    /// the fifty-fifth round of issue 14 a function slower than its sources
    /// held every such close to `deadline` (`yomo-fault-bench chaos --mesh
    /// --seed 8`: each SIGTERM of the downstream 2.5 s, its function's
    /// backlog of 1,239 frames kept in the file all the same), and closed it
    /// there whatever it was writing.
    private func drain(_ server: QUICServer, until deadline: ContinuousClock.Instant) async {
        await server.stopAccepting()
        let started = ContinuousClock.now
        let senders = state.withLock { state -> [(connection: QUICFrameConnection, left: Latch)] in
            state.peers.compactMap { id, peer in
                peer.member.clientType == .streamFunction ? nil : (peer.connection, state.departure(of: id))
            }
        }
        for sender in senders { await sender.connection.close(errorCode: 0, reason: Self.shutdownReason) }
        // A sender's task may be held routing to a slow function (`block`).
        await Latch.waitForAll(senders.map(\.left), until: deadline)
        var counters: [Int] = []
        var movedAt = ContinuousClock.now
        var functionsClosed = false
        var keptForFunctions = 0
        while ContinuousClock.now < deadline {
            let keeps = keepsHoldAtClose && ContinuousClock.now - started >= Self.backlogGrace
            let (pending, kept, progress, functions) = drainProgress(keepingFunctionsBacklog: keeps)
            if pending == 0, !functionsClosed {
                // Functions write too (a pipeline): closed all at one quiet
                // moment, a frame one of them writes is either routed already
                // or kept by its client for the next zipper, never acknowledged
                // here and left unrouted. The mesh links then send what they hold.
                functionsClosed = await server.closeAllIfQuiet(
                    functions, errorCode: 0, reason: Self.shutdownReason, receivingOnly: keeps)
                keptForFunctions = kept
                if functionsClosed { continue }
            } else if pending == 0 {
                logger.info(keptForFunctions == 0 ? "closing: every frame taken was delivered"
                            : "closing: every frame taken was delivered, or kept for the stream functions that had yet to take it", metadata: [
                    "senders_closed": "\(senders.count)", "took": "\(ContinuousClock.now - started)",
                ])
                return
            }
            if progress != counters {
                counters = progress
                movedAt = .now
            } else if ContinuousClock.now - movedAt >= Self.drainStallLimit {
                break
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
        logger.info("closing: stream functions or mesh links had not taken everything written to them", metadata: [
            "senders_closed": "\(senders.count)", "took": "\(ContinuousClock.now - started)",
        ])
    }

    /// How long a graceful close waits for stream functions that acknowledge nothing more.
    static let drainStallLimit: Duration = .seconds(1)

    /// How long a graceful close with a held frames file waits for its
    /// stream functions to take and handle what it wrote them before it
    /// keeps the rest in the file.
    static let backlogGrace: Duration = .milliseconds(250)

    /// Whether the close keeps what the stream functions had yet to take or
    /// handle, with the hold, in the held frames file for the next start.
    private var keepsHoldAtClose: Bool { configuration.functionsFile != nil && configuration.unroutedHold.isOn }

    /// What the stream functions and mesh links have yet to take (0 when
    /// nothing; with `keepingFunctionsBacklog`, what the functions wrote and
    /// what the links hold), what the functions have yet to take or handle
    /// when that is kept (`kept`), counters that change while they take it,
    /// and the functions' connections.
    private func drainProgress(keepingFunctionsBacklog: Bool) -> (pending: Int, kept: Int, progress: [Int], functions: [QUICConnection]) {
        let functions = state.withLock { state in
            state.peers.values.filter { $0.member.clientType == .streamFunction }.map { ($0.connection.connection, $0.unwritten.count) }
        }
        // Read outside the zipper's lock: each connection's counters have their own.
        var pending = 0, kept = 0, acknowledged = 0, read = 0
        for (quic, unwritten) in functions {
            // Unread: what a function wrote, not yet routed.
            pending += quic.unreadBytes
            let backlog = quic.unacknowledgedBytes + unwritten + quic.retainedBytes
            if keepingFunctionsBacklog { kept += backlog } else { pending += backlog }
            acknowledged += quic.acknowledgedBytes + quic.releasedBytes
            read += quic.statistics.bytesReceived
        }
        var progress = [acknowledged, read]
        for link in links {
            let queued = link.health.queuedFrames
            pending += queued
            progress.append(queued)
        }
        return (pending, kept, progress, functions.map(\.0))
    }

    /// What the zipper's close lost: unacknowledged bytes, held frames.
    private func reportWhatTheCloseLost() {
        reportLostAtClose()
        keepMeshForNextStart()
        keepHeldForNextStart()
        writeFinishedFile(atClose: true)
        dropHeldAtClose()
    }

    /// What this run's functions finished of the mesh's frames, for the next
    /// start (`FinishedFramesFile`): written while the zipper runs, at most
    /// once a second after they finished more (`keepFinishedWhileRunning`),
    /// and at the close, which removes the file if there is nothing to keep.
    /// Until the sixtieth round of issue 14 only the close wrote it, and a
    /// crash of the zipper lost it: its upstream's next run, killed while the
    /// zipper held frames for a function away, sent them again after the
    /// zipper's own kill, and the function's next instance handled them twice
    /// (`yomo-fault-bench chaos --mesh --async-handler --seed 10`: 41 frames).
    private func writeFinishedFile(atClose: Bool) {
        guard let functionsFile = configuration.functionsFile else { return }
        let path = FinishedFramesFile.path(besides: functionsFile)
        finishedFileWriter.withLock { failed in
            // The close writes the last: a running write after it would bring back an older one.
            guard let finished = state.withLock({ state in atClose || !state.closed ? state.held.finishedFromLinks : nil }) else { return }
            guard !finished.isEmpty else {
                if atClose { HeldFramesFile.remove(path) }
                return
            }
            do throws(YoMoError) {
                try writeFileAtomically(path, FinishedFramesFile.encode(finished, closedAt: HeldFramesFile.now()), mode: 0o600, what: "finished frames file")
                failed = false
            } catch {
                if !failed {
                    logger.warning("what the stream functions finished of the mesh's frames cannot be kept for the next start: copies may reach them again",
                                   metadata: ["error": "\(error.message)"])
                }
                failed = true
            }
        }
    }

    /// Writes the finished frames file while the zipper runs, at most once a
    /// second after its functions finished more of the mesh's frames; ends
    /// when the zipper closes (cancelled).
    private func keepFinishedWhileRunning() async {
        guard configuration.functionsFile != nil else { return }
        for await _ in finishedChanges.stream {
            writeFinishedFile(atClose: false)
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// Remembers again what the previous run's functions finished of the
    /// mesh's frames, if it closed (or last wrote them) within
    /// `afterLastObserver`; before the held frames come back, which then
    /// leave out those. A file too old or not understood goes; one used is
    /// written anew at once, with this run's time.
    private func restoreFinished() {
        guard let functionsFile = configuration.functionsFile else { return }
        let path = FinishedFramesFile.path(besides: functionsFile)
        let bytes: [UInt8]?
        do throws(YoMoError) {
            bytes = try readWholeFile(path, maximumBytes: 8 << 20, what: "finished frames file")
        } catch {
            HeldFramesFile.remove(path)
            logger.warning("what the previous run's stream functions finished of the mesh's frames cannot be read: copies may reach them again",
                           metadata: ["error": "\(error.message)"])
            return
        }
        guard let bytes else { return }
        guard let (closedAt, finished) = FinishedFramesFile.decode(bytes), !finished.isEmpty,
              Duration.milliseconds(HeldFramesFile.now() - closedAt) <= configuration.unroutedHold.afterLastObserver
        else {
            HeldFramesFile.remove(path)
            return
        }
        state.withLock { $0.held.remember(finished) }
        finishedChanges.continuation.yield()
    }

    /// What the zipper held for stream functions, kept for its next start
    /// (`HeldFramesFile`), which holds it again; what cannot be kept is
    /// dropped and said, as before.
    private func keepHeldForNextStart() {
        guard let functionsFile = configuration.functionsFile, configuration.unroutedHold.isOn else { return }
        let path = HeldFramesFile.path(besides: functionsFile)
        // The close has ended the routing: nothing comes between the look and the take.
        let frames = state.withLock { $0.held.entries.filter(\.missedSomeone).map { ($0.frame, $0.linkDigest != nil) } }
        guard !frames.isEmpty else {
            // A file this run restored and still keeps: what it held has left
            // the hold, and the drain saw it acknowledged.
            if state.withLock({ state in defer { state.heldFile = nil }; return state.heldFile != nil }) {
                heldFileWrites.withLock { _ in HeldFramesFile.remove(path) }
            }
            return
        }
        do throws(YoMoError) {
            // The frames are the sources' data: readable by the zipper's user alone.
            try heldFileWrites.withLock { (_: inout ()) throws(YoMoError) in
                try writeFileAtomically(path, HeldFramesFile.encode(frames, closedAt: HeldFramesFile.now()), mode: 0o600, what: "held frames file")
            }
        } catch {
            logger.warning("the frames held for stream functions cannot be kept for the next start", metadata: ["error": "\(error.message)"])
            return
        }
        _ = state.withLock { state in
            state.heldFile = nil
            return state.held.takeUndelivered()
        }
        logger.info("closing: frames held for stream functions are kept for the next start", metadata: [
            "frames": "\(frames.count)", "file": "\(path)",
        ])
    }

    /// Holds again what the previous run held for stream functions when it
    /// closed, if it closed within `afterLastObserver`; the file is read once.
    private func restoreHeldFrames() {
        guard let functionsFile = configuration.functionsFile, configuration.unroutedHold.isOn else { return }
        let path = HeldFramesFile.path(besides: functionsFile)
        let bytes: [UInt8]?
        do throws(YoMoError) {
            bytes = try readWholeFile(path, maximumBytes: configuration.unroutedHold.maximumBytes + (1 << 20), what: "held frames file")
        } catch {
            HeldFramesFile.remove(path)
            logger.warning("the frames the previous run held for stream functions cannot be read: they are lost", metadata: ["error": "\(error.message)"])
            return
        }
        guard let bytes else { return }
        guard let (closedAt, frames) = HeldFramesFile.decodeLinks(bytes), !frames.isEmpty else {
            HeldFramesFile.remove(path)
            logger.warning("the held frames file of the previous run is not understood: its frames are lost", metadata: ["file": "\(path)"])
            return
        }
        let age = Duration.milliseconds(HeldFramesFile.now() - closedAt)
        guard age <= configuration.unroutedHold.afterLastObserver else {
            HeldFramesFile.remove(path)
            logger.warning("frames the previous run held for stream functions are dropped: it closed too long ago", metadata: [
                "frames": "\(frames.count)", "closed_ago": "\(age)", "after_last_observer": "\(configuration.unroutedHold.afterLastObserver)",
            ])
            return
        }
        var restored: [RestoredFrame] = []
        for (frame, fromLink) in frames {
            let tally = HoldTally()
            // The mesh's frames keep their keys: what a function finishes of them is remembered.
            let linkKey = fromLink ? CopyKey.digest(of: frame) : nil
            if hold(frame, patch: nil, target: MetadataView(frame.metadata)?.string(.target), ledger: nil, restored: tally, copyKey: linkKey, logger: logger).held {
                restored.append(RestoredFrame(frame: frame, tally: tally, fromLink: linkKey != nil))
            }
        }
        logger.info("holding again the frames the previous run held for stream functions", metadata: [
            "frames": "\(restored.count)", "of": "\(frames.count)", "closed_ago": "\(age)",
        ])
        guard !restored.isEmpty else {
            HeldFramesFile.remove(path)
            return
        }
        state.withLock { $0.heldFile = HeldFileKept(frames: restored, closedAt: closedAt) }
        keepUntilSettled(path)
    }

    /// A client of this SDK closed for good (`ClientCore.finalCloseReason`)
    /// while frames it wrote were held for stream functions on their way
    /// back: it no longer keeps them to send again, so the held frames file
    /// keeps them from now on, for the next start if this run crashes, until
    /// they leave the hold. Until the forty-fifth round of issue 14 they were
    /// in the zipper's memory alone: a stream function SIGTERMed just after
    /// delivering 92 answers for a sink that was away, and its zipper killed
    /// a moment later, lost them (`yomo-fault-bench chaos --seed 32`). The
    /// file's time becomes now: these frames were held until now.
    private func keepLeftInHold(by handover: ReceiptLedger.Handover, logger: Logger) {
        guard let functionsFile = configuration.functionsFile, configuration.unroutedHold.isOn else { return }
        let tallies = handover.heldTallies
        guard !tallies.isEmpty else { return }
        let path = HeldFramesFile.path(besides: functionsFile)
        // The frames adopted, and whether `keepUntilSettled` runs already (a file was kept before).
        let adoption = heldFileWrites.withLock { _ -> (frames: [RestoredFrame], trimRuns: Bool)? in
            let adoption = state.withLock { state -> (frames: [RestoredFrame], kept: HeldFileKept, trimRuns: Bool)? in
                guard !state.closed else { return nil }
                let adopted = state.held.adopt(tallies: tallies).map { RestoredFrame(frame: $0.frame, tally: $0.tally, fromLink: $0.fromLink) }
                guard !adopted.isEmpty else { return nil }
                let trimRuns = state.heldFile != nil
                var kept = state.heldFile ?? HeldFileKept(frames: [], closedAt: 0)
                kept.frames += adopted
                kept.closedAt = HeldFramesFile.now()
                state.heldFile = kept
                return (adopted, kept, trimRuns)
            }
            guard let adoption else { return nil }
            do throws(YoMoError) {
                try adoption.kept.write(to: path)
            } catch {
                logger.warning("frames a client that closed left in the hold cannot be kept in the held frames file: a crash of the zipper would lose them", metadata: [
                    "frames": "\(adoption.frames.count)", "error": "\(error.message)",
                ])
            }
            return (adoption.frames, adoption.trimRuns)
        }
        guard let adoption else { return }
        logger.info("the client closed with frames of its held for stream functions: kept in the held frames file until they leave the hold", metadata: [
            "frames": "\(adoption.frames.count)", "file": "\(path)",
        ])
        if !adoption.trimRuns { keepUntilSettled(path) }
    }

    /// A frame of the held frames file, held again, and the tally that says
    /// when it left the hold and reached the functions it was held for.
    private struct RestoredFrame: Sendable {
        var frame: DataFrame
        var tally: HoldTally
        /// An upstream zipper forwarded it.
        var fromLink: Bool
    }

    /// The frames the held frames file keeps while the zipper runs, and the
    /// time it says they were last held.
    private struct HeldFileKept: Sendable {
        var frames: [RestoredFrame]
        var closedAt: Int64

        /// Writes them as the held frames file at `path`, in place of what it had.
        func write(to path: String) throws(YoMoError) {
            try writeFileAtomically(path, HeldFramesFile.encode(frames.map { ($0.frame, $0.fromLink) }, closedAt: closedAt), mode: 0o600, what: "held frames file")
        }
    }

    /// How often at most a restored held frames file is written anew without
    /// the frames that left the hold since.
    static let restoredFileTrimInterval: Duration = .milliseconds(500)

    /// Keeps the held frames file as long as a frame restored from it is not
    /// handled, its answers settled, by the functions it went to (nor
    /// dropped by the hold's rules), then removes it:
    /// until then a crash of this run finds it again at the next start. The
    /// sources forgot these frames when the file kept them; until the
    /// thirty-ninth round of issue 14 it was removed as it was read, and a
    /// zipper killed before it delivered them lost them. Meanwhile it is
    /// written anew, at most every `restoredFileTrimInterval`, without those
    /// a function said it handled (or the hold dropped): until the
    /// forty-third round it kept all of them until the
    /// last left, and a crash then gave the next start frames the functions
    /// had handled (`yomo-fault-bench chaos --seed 32 --seconds 60`: 753
    /// restored, 176 handled, the zipper killed; handled again after).
    /// A close writes the file anew (or removes it) itself.
    ///
    /// Runs while `State.heldFile` is set: the frames it keeps are those of a
    /// restored file and those clients that closed left in the hold
    /// (`keepLeftInHold`), which may come while it runs.
    private func keepUntilSettled(_ path: String) {
        Task { [weak self] in
            var written = ContinuousClock.now
            while let zipper = self {
                guard let kept = zipper.state.withLock({ $0.closed ? nil : $0.heldFile?.frames }) else { return }
                // Read outside the zipper's lock: a destination asks its own.
                // A frame leaves it only once the functions it went to said they
                // handled it and their answers are settled, or the hold dropped it:
                // settled at a function's taking, a frame is at that function alone,
                // and a crash of the zipper and then of that function before it
                // delivered the answers lost it (14 frames in a run). Until the
                // sixty-first round of issue 14 the whole file went once all had
                // settled so, and a handled frame whose answers the zipper held
                // went at the word handled (`chaos --async-handler --seed 32`: 70 frames).
                // Each tally asked once a pass: it asks the destinations it went to, and their leftovers.
                let leaving = Set(kept.filter { frame in
                    frame.tally.wasHandled || (frame.tally.isSettled && !frame.tally.wasWritten)
                }.map { ObjectIdentifier($0.tally) })
                let allLeave = kept.allSatisfy { leaving.contains(ObjectIdentifier($0.tally)) }
                if !leaving.isEmpty, allLeave || .now - written >= Self.restoredFileTrimInterval {
                    let stands = zipper.heldFileWrites.withLock { _ -> Bool in
                        // Frames kept meanwhile stay.
                        let remaining = zipper.state.withLock { state -> HeldFileKept? in
                            guard !state.closed, var file = state.heldFile else { return nil }
                            file.frames.removeAll { leaving.contains(ObjectIdentifier($0.tally)) }
                            state.heldFile = file.frames.isEmpty ? nil : file
                            return file
                        }
                        guard let remaining else { return false }
                        guard !remaining.frames.isEmpty else {
                            HeldFramesFile.remove(path)
                            return false
                        }
                        do throws(YoMoError) {
                            try remaining.write(to: path)
                        } catch {
                            zipper.logger.warning("the held frames file cannot be written anew without the frames that left the hold", metadata: ["error": "\(error.message)"])
                        }
                        return true
                    }
                    guard stands else { return }
                    written = .now
                }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// One line for what the connections closed with the zipper had not
    /// acknowledged, rather than one per client (thousands at a shutdown).
    private func reportLostAtClose() {
        let lost = state.withLock { state in
            defer { state.lostAtClose = (0, 0) }
            return state.lostAtClose
        }
        guard lost.clients > 0 else { return }
        logger.warning("frames written to clients were not acknowledged before the zipper closed their connections: lost with them", metadata: [
            "clients": "\(lost.clients)", "unacknowledged_bytes": "\(lost.bytes)",
        ])
    }

    /// Sent with application code 0, YoMo's "listener shut down".
    static let shutdownReason = "zipper shutting down"
    /// How a close for a stalled frame begins: this SDK's clients redial on
    /// it and send the frame again (any other close with a reason is final,
    /// but for `busyReason`'s and a shutdown's).
    static let stalledFrameReason = "frame stalled:"
    /// Opens the reason of a connection refused while the zipper is busy
    /// with handshakes: a client should dial again later, not give up.
    static let busyReason = "too many handshakes in progress"


    /// Returns on SIGINT or SIGTERM, having closed the zipper (or at once if it was closed).
    public func wait() async {
        if state.withLock({ $0.closed }) { return }
        let signals = SignalWatcher()
        await signals.wait()
        signals.cancel()
        logger.info("signal received, closing")
        await close()
    }

    private func bind() async throws -> QUICServer {
        try validate()
        var quic = options.quic
        // The block policy's bound: writers wait above it.
        quic.sendBufferSize = configuration.slowConsumer.maximumBufferedBytes
        let limits = QUICServer.Limits(
            maximumConnections: configuration.limits.maximumConnections,
            maximumHandshakes: configuration.limits.maximumQUICHandshakes,
            streamOpenTimeout: options.handshakeTimeout,
            maximumConnectionsPerAddress: configuration.limits.maximumConnectionsPerAddress,
            maximumReceiveWindowBytes: configuration.limits.maximumReceiveWindowBytes,
            ipv6PrefixLength: configuration.limits.ipv6PrefixLength,
            maximumUnvalidatedHandshakes: configuration.limits.maximumUnvalidatedHandshakes,
            maximumHandshakesPerAddress: configuration.limits.maximumPendingHandshakesPerAddress,
            trustedNetworks: configuration.limits.trustedNetworks)
        let server = try await QUICServer.bind(
            host: configuration.host, port: configuration.port, configuration: quic, tls: options.tls,
            limits: limits, statelessResetKey: try configuration.loadStatelessResetKey())
        await server.onRefusedPerAddress { [weak self] address in self?.refusedPerAddress(address) }
        await server.onRetrying { [weak self] retries in self?.askingForRetries(retries) }
        await server.onHandshakeRefusedPerAddress { [weak self] address in self?.handshakeRefusedPerAddress(address) }
        let expected = rememberedFunctions()
        let probe = Readiness.shared.register("zipper \(configuration.name)") { [weak self] in
            self?.state.withLock { $0.server != nil && !$0.closed } ?? false
        }
        state.withLock {
            $0.server = server
            $0.readinessProbe = probe
            // Every tag is held in the first `afterLastObserver` after the start: the functions of a previous run are on their way.
            $0.held = HeldFrames(settings: configuration.unroutedHold, startedAt: .now)
            $0.held.keepsDropped = tracing.tracer.isEnabled
            // And those it remembers are owed their tags' frames by name.
            $0.held.expectBack(expected, now: $0.held.startedAt)
        }
        logger.info("zipper listening", metadata: [
            "zipper_addr": "\(ZipperAddress.format(host: configuration.host, port: server.port))", "zipper_name": "\(configuration.name)",
            "auth": "\(configuration.authentication.map { "\($0)" } ?? "none")",
            "mesh": "\(links.map { "\($0.peer.name)=\($0.peer.address)" })",
        ])
        if !expected.isEmpty {
            logger.info("expecting the stream functions of the previous run back: their frames are held for each until it is", metadata: [
                "functions": "\(Self.names(Set(expected.map(\.name))))", "hold": "\(configuration.unroutedHold.afterLastObserver)",
            ])
        }
        restoreFinished()
        restoreHeldFrames()
        restoreMeshKept()
        return server
    }

    /// Queues for each mesh link what the previous run's close kept for it
    /// (`MeshKeptFile`), ahead of anything new. A file for a downstream no
    /// longer in the mesh is removed, and what it kept said lost.
    private func restoreMeshKept() {
        guard let functionsFile = configuration.functionsFile else { return }
        for link in links {
            do throws(YoMoError) {
                guard let (frames, closedAt, spooled) = try link.restoreKept() else { continue }
                if spooled {
                    link.logger.info("delivering to the mesh downstream first what the previous run, which ended without closing, had kept on disk", metadata: [
                        "frames": "\(frames)", "kept_since": "\(Duration.milliseconds(HeldFramesFile.now() - closedAt))",
                    ])
                } else {
                    link.logger.info("delivering to the mesh downstream first what the previous run had not", metadata: [
                        "frames": "\(frames)", "closed_ago": "\(Duration.milliseconds(HeldFramesFile.now() - closedAt))",
                    ])
                }
            } catch {
                link.logger.warning("the frames the previous run kept for the mesh downstream cannot be read: they are lost", metadata: [
                    "error": "\(error.message)",
                ])
            }
        }
        // The functions file's directory, with its slash, and its name: the kept files' prefix.
        let slash = functionsFile.lastIndex(of: "/")
        let directory = slash.map { String(functionsFile[...$0]) } ?? "./"
        let prefix = String(functionsFile[(slash.map(functionsFile.index(after:)) ?? functionsFile.startIndex)...]) + MeshKeptFile.infix
        let configured = Set(links.map { MeshKeptFile.fileName($0.peer.name) })
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for name in names where name.hasPrefix(prefix) && !configured.contains(String(name.dropFirst(prefix.count))) {
            let path = directory + name
            let frames = (try? MeshKeptFile.read(path, queue: configuration.meshQueue)).flatMap { $0.flatMap(MeshKeptFile.decode) }?.frames.count
            MeshKeptFile.remove(path)
            logger.warning("frames the previous run kept for a mesh downstream no longer in the mesh are dropped", metadata: [
                "file": "\(path)", "frames": "\(frames.map { "\($0)" } ?? "unknown")",
            ])
        }
    }

    /// What the mesh links could not deliver by the close's end, kept for the
    /// next start (with `functionsFile`). Until the forty-eighth round of
    /// issue 14 it was dropped (said), though its sources had let go of it: a
    /// zipper stopped while its downstream was away for longer than the
    /// link's receipt patience lost what it had taken meanwhile
    /// (`yomo-fault-bench chaos --mesh`, 510 frames over a lossy loopback).
    private func keepMeshForNextStart() {
        for link in links {
            do throws(YoMoError) {
                let kept = try link.keepForNextStart()
                if kept > 0 {
                    link.logger.info("closing: frames the mesh downstream had not taken are kept for the next start", metadata: ["frames": "\(kept)"])
                }
            } catch {
                link.logger.warning("the frames the mesh downstream had not taken cannot be kept for the next start: they are lost", metadata: [
                    "error": "\(error.message)",
                ])
            }
        }
    }

    /// The stream functions `functionsFile` remembers from the previous run
    /// (none when the hold is off). A file that cannot be read costs what it
    /// held, not the start.
    private func rememberedFunctions() -> [RouteMember] {
        guard let path = configuration.functionsFile, configuration.unroutedHold.isOn else { return [] }
        do {
            guard let (functions, skipped) = try RememberedFunctions.read(from: path) else { return [] }
            if skipped > 0 {
                logger.warning("lines of the stream functions file were not understood and are skipped", metadata: [
                    "file": "\(path)", "lines": "\(skipped)",
                ])
            }
            return functions
        } catch {
            logger.warning("the stream functions of the previous run are not known: their frames are not held for them", metadata: [
                "error": "\(error.message)",
            ])
            return []
        }
    }

    /// Writes `functionsFile` when the stream functions changed, at most once a
    /// second; ends when the zipper closes (cancelled).
    private func rememberFunctions() async {
        guard configuration.functionsFile != nil, configuration.unroutedHold.isOn else { return }
        for await _ in functionsChanges.stream {
            writeFunctionsFile()
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// Writes the functions to remember if they changed; warns at the first
    /// failure after a success (the flag under `functionsFileWriter`).
    private func writeFunctionsFile() {
        guard let path = configuration.functionsFile, configuration.unroutedHold.isOn else { return }
        functionsFileWriter.withLock { failed in
            let functions = state.withLock { state -> [RouteMember]? in
                guard state.functionsChanged else { return nil }
                state.functionsChanged = false
                return state.functionsToRemember(now: .now)
            }
            guard let functions else { return }
            do throws(YoMoError) {
                try RememberedFunctions.write(functions, to: path)
                if failed { logger.info("the stream functions are remembered again", metadata: ["functions_file": "\(path)"]) }
                failed = false
            } catch {
                if !failed {
                    logger.warning("the stream functions cannot be remembered across a restart: after one, a function back later than another of its tag may miss frames", metadata: [
                        "error": "\(error.message)",
                    ])
                }
                failed = true
                // Tried again at rememberFunctions' pace (a second), not only at
                // the next change: a disk that was full, a directory made later.
                state.withLock { $0.functionsChanged = true }
                functionsChanges.continuation.yield()
            }
        }
    }

    /// The functions as they are before the close ends their connections:
    /// they are the ones a restarted zipper expects back.
    private func rememberFunctionsBeforeClosing() { writeFunctionsFile() }

    private func accept(_ server: QUICServer) async {
        let (departures, departed) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        await withDiscardingTaskGroup { group in
            for link in links {
                group.addTask { await link.run() }
            }
            group.addTask { await self.expireHeldFrames() }
            group.addTask { await self.receipts.run() }
            group.addTask { await self.rememberFunctions() }
            group.addTask { await self.keepFinishedWhileRunning() }
            group.addTask {
                // After a wave of clients leaves, hand the memory their buffers
                // used back to the system: glibc keeps freed heap in its per-thread
                // arenas, so a zipper that once fanned out to hundreds of peers
                // would otherwise stay at its peak size.
                for await _ in departures {
                    try? await Task.sleep(for: .milliseconds(250))
                    QUICServer.releaseFreedMemory()
                    // Again once the QUIC closing periods (3 PTO) have freed the
                    // connections themselves.
                    try? await Task.sleep(for: .seconds(2))
                    QUICServer.releaseFreedMemory()
                }
            }
            // On the loop: a frame is routed on the thread that received it.
            let executor = options.routing == .loop ? server.taskExecutor : nil
            for await quic in server.connections {
                group.addTask(executorPreference: executor) {
                    await self.serve(QUICFrameConnection(quic))
                    departed.yield()
                }
            }
            departed.finish()
            // The listener is closed: so are the links to the mesh.
            for link in links { await link.close() }
            // Stop the trimming (mid-sleep) and whatever connection is still
            // winding down, so close() is not held.
            group.cancelAll()
        }
    }

    private func serve(_ connection: QUICFrameConnection) async {
        let remote = connection.remoteAddress
        let group = connection.connection.addressGroup ?? remote
        let limits = configuration.limits
        let refusal = state.withLock { state -> (reason: String, label: String)? in
            guard state.pendingHandshakes < limits.maximumPendingHandshakes else {
                return ("\(Self.busyReason) (\(limits.maximumPendingHandshakes))", "pending_handshakes_limit")
            }
            // Held to its share once half the slots are taken (see the limit).
            guard state.pendingHandshakes < limits.maximumPendingHandshakes / 2
                    || state.pendingHandshakesByAddress[group, default: 0] < limits.maximumPendingHandshakesPerAddress else {
                return ("\(Self.busyReason) from \(group) (\(limits.maximumPendingHandshakesPerAddress))", "pending_handshakes_per_address")
            }
            state.pendingHandshakes += 1
            state.pendingHandshakesByAddress[group, default: 0] += 1
            return nil
        }
        if let refusal {
            countRefusal(refusal.label)
            logger.warning("connection refused", metadata: ["remote": "\(remote)", "reason": "\(refusal.reason)"])
            await connection.close(reason: refusal.reason)
            return
        }
        let handshake = await readHandshake(connection)
        state.withLock { state in
            state.pendingHandshakes -= 1
            state.pendingHandshakesByAddress[group, default: 1] -= 1
            if state.pendingHandshakesByAddress[group] == 0 { state.pendingHandshakesByAddress[group] = nil }
        }
        guard let (handshake, frames) = handshake else { return }
        var frameReader = frames

        var connectionLogger = logger
        connectionLogger[metadataKey: YoMoLogField.connectionID] = "\(handshake.id.forLog)"
        connectionLogger[metadataKey: YoMoLogField.connectionName] = "\(handshake.name.forLog)"
        if let rejection = authority.rejection(for: handshake) {
            countRefusal("rejected")
            connectionLogger.warning("handshake rejected", metadata: ["reason": "\(rejection.logged.forLog)", "remote": "\(remote)"])
            _ = try? await connection.write(.rejected(RejectedFrame(message: rejection.message)))
            // A peer that does not acknowledge the RejectedFrame gets the handshake timeout, no more.
            await connection.closeAfterDelivery(reason: rejection.message, until: .now + options.handshakeTimeout)
            return
        }
        if handshake.clientType == .upstreamZipper, let link = links.first(where: { $0.isDialling(asClientID: handshake.id) }) {
            await refuseSelfLink(link, connection, connectionLogger)
            return
        }
        await supersedeEarlier(handshake, logger: connectionLogger)
        frameReader.setMaximumFrameSize(configuration.limits.maximumFrameSize)
        frameReader.share(incompleteFrames) { [self, connectionLogger] received, size in
            // From the budget's watch, not this task: the close ends this task's read.
            let reason = "\(Self.stalledFrameReason) \(received) of \(size) bytes, nothing more for \(configuration.limits.stalledFrameTimeout) while other connections waited for room"
            state.withLock { $0.statistics.stalledFrames += 1 }
            metrics.stalledFrame()
            connectionLogger.warning("closing client whose frame stalled", metadata: ["reason": "\(reason)", "remote": "\(remote)"])
            Task { await connection.close(reason: reason) }
        }
        let forwardsToMesh = !links.isEmpty && MeshForwarding.forwards(from: handshake.clientType)
        let fromUpstream = handshake.clientType == .upstreamZipper
        var connectionMetadata = Metadata()
        connectionMetadata[Metadata.ReservedKey.wantedTarget] = handshake.wantedTarget
        // A stream function that says which frames its handlers finished: what
        // was written to it is kept until then, so that a crash of the function
        // gives the hold what its handlers had not finished, not only what its
        // QUIC stack had not acknowledged (see `HandshakeFrame.acknowledgesHandling`).
        let welcomesHandling = configuration.deliveryReceipts && handshake.wantsReceipts && handshake.clientType == .streamFunction
            && handshake.acknowledgesHandling && configuration.unroutedHold.isOn && unhandledBudget.bytes > 0
        let delivery = DeliveryDestination(connection.connection, reportsTaking: welcomesHandling)
        let joined = state.withLock { state -> (UInt64, RouteMember, [HeldFrames.Taken], [QUICFrameConnection])? in
            // Closing: its frames would find no one to take them.
            guard !state.closed else { return nil }
            let id = state.nextConnectionID
            state.nextConnectionID += 1
            let member = RouteMember(
                connectionID: id, name: handshake.name, clientID: handshake.id, clientType: handshake.clientType,
                observedTags: Set(handshake.observedTags), wantedTarget: handshake.wantedTarget)
            state.peers[id] = Peer(connection: connection, delivery: delivery, member: member, metadata: connectionMetadata)
            // Frames held for this function go first: it joins the routes once they are written.
            if member.clientType == .streamFunction {
                state.held.arrived(member)
                if !state.closed { state.functionsChanged = true }
            }
            let held = state.held.take(for: member)
            if held.isEmpty { state.joinRoutes(member) } else { state.held.beginArriving(member) }
            return (id, member, held, member.clientType == .upstreamZipper ? state.upstreamConnected(member.name) : [])
        }
        guard let (id, member, held, expectingCopies) = joined else {
            connectionLogger.info("closing: a client that finished its handshake while the zipper closes is told to dial again")
            await connection.close(errorCode: 0, reason: Self.shutdownReason)
            return
        }
        // Before any frame of this connection is routed to them.
        announceCopies(to: expectingCopies, because: "an upstream zipper connected", logger: connectionLogger)
        // A client that asked is told which of its frames are settled (see `ReceiptLedger`);
        // one that resumes its previous connection takes over that one's ledger.
        let ledger = configuration.deliveryReceipts && handshake.wantsReceipts
            ? ReceiptLedger(connection: connection, startingAt: frameReader.consumedBytes, resuming: endedLedger(resumedBy: handshake)) : nil
        if let ledger, ledger.isWaiting { receipts.wake(ledger) }
        // The frames the connection had not acknowledged when it ended (taken below).
        var unacknowledged: [(frame: DataFrame, target: String?, notAcknowledged: Int, end: Int)] = []
        // What it had acknowledged and not handled past its share of the budget (taken below).
        var unhandledGivenUp = 0
        // The stream offset its QUIC stack acknowledged: frames before it were kept for their handlers.
        var acknowledgedThrough = 0
        defer {
            // One lock for the leaving and the hold of what it had not
            // acknowledged: a frame routed meanwhile, held for its name as one
            // away, would overtake them.
            var waiters: [Latch] = []
            var catchUps: [CatchUp] = []
            var expectingCopies: (functions: [QUICFrameConnection], successor: Bool) = ([], false)
            let endedAt = ContinuousClock.now
            let leftovers = Leftovers()
            let (left, wasEmpty, slowConsumerClosed) = state.withLock { state -> (UnacknowledgedAtEnd, Bool, Bool) in
                // Gone already: closed as a slow consumer, whose backlog is not kept.
                let leaving = state.peers[id]
                let unwritten = leaving?.unwritten
                // What it had not acknowledged is dealt with here: receipts waiting
                // for it wait for what is held now, once all of it is counted.
                defer { delivery.ended(leaving: leftovers) }
                // Out of the routes before its end: it said it was closing (or was closed as a slow consumer).
                let leftRoutesBefore = state.routes.members[id] == nil
                state.routes.remove(id)
                state.peers[id] = nil
                if state.closingNames[member.name]?.remove(id) != nil, state.closingNames[member.name]?.isEmpty == true {
                    state.closingNames[member.name] = nil
                }
                if member.clientType == .upstreamZipper { expectingCopies = state.upstreamLeft(member.name) }
                waiters = state.departureWaiters.removeValue(forKey: id) ?? []
                let wasEmpty = state.held.isEmpty
                // Receipts written to a client are not data: with them, only data frames count.
                let unacknowledgedBytes = ledger == nil
                    ? connection.connection.unacknowledgedBytes : unacknowledged.reduce(0) { $0 + $1.notAcknowledged }
                var left = UnacknowledgedAtEnd(bytes: unacknowledgedBytes)
                left.handlingAcknowledged = welcomesHandling
                if member.clientType == .streamFunction {
                    let stillObserved = state.routes.tagsObserved(byName: member.name)
                    state.held.observerLeft(member, stillObserved: stillObserved, now: .now)
                    // Frames were held for its name while it finished: their wait starts now.
                    if leftRoutesBefore { state.held.restartClock(for: member, now: .now) }
                    if !state.closed { state.functionsChanged = true }
                    // At the zipper's own close (its drain out of time: a function
                    // slower than its sources), only if the held frames file keeps
                    // what is held, for the next start to give the function. Before
                    // the forty-first round of issue 14 that was lost (said), while
                    // the sources, told the zipper shut down, had let it go.
                    let keptAtClose = keepsHoldAtClose
                    if let unwritten, !state.closed || keptAtClose {
                        let closing = state.closed
                        if !closing {
                            if state.departed.count >= State.departedRemembered { state.departed.removeFirst() }
                            state.departed.append(member)
                        }
                        // A frame acknowledged whole was kept because its handlers had not
                        // finished it: at the close too, it goes into the held frames file.
                        // The function may still finish it (a copy it recognizes, when
                        // the next start gives it again), or end before it does: until
                        // the forty-second round of issue 14 the close trusted it to,
                        // its sources let go, and a backlog of hundreds was lost when
                        // the function then stopped (`yomo-fault-bench chaos --seed 32`).
                        let taken = configuration.unroutedHold.isOn ? unacknowledged : []
                        // The mesh's frames among them stay the mesh's: what a next instance finishes of them is remembered.
                        let linkDigests = delivery.linkDigests(endingAt: taken.map(\.end))
                        let takenBack = taken.map {
                            ($0.frame, $0.target, $0.notAcknowledged, $0.end <= acknowledgedThrough ? HeldFrames.Reason.notHandled : .notAcknowledged,
                             leftovers.tally(endingAt: $0.end), linkDigests[$0.end])
                        }
                        let frames = takenBack + unwritten.map {
                            ($0.frame, $0.target, 0, HeldFrames.Reason.notAcknowledged, leftovers.tally(endingAt: 0), $0.linkDigest)
                        }
                        left = state.holdForReturn(frames, of: member, stillObserved: stillObserved)
                        left.handlingAcknowledged = welcomesHandling
                        if let leaving, !closing {
                            catchUps = state.catchUp(
                                taken, acknowledgedThrough: acknowledgedThrough, leftBy: leaving, stillObserved: stillObserved, leftovers: leftovers,
                                linkDigests: linkDigests)
                        }
                        // A namesake has the rest of the frames in tags it observes, or gets them now (not at the close).
                        let withNamesakes = closing ? 0 : taken.reduce(0) { $0 + (stillObserved.contains($1.frame.tag) ? $1.notAcknowledged : 0) }
                        left.lostBytes = max(0, unacknowledgedBytes - left.heldUnacknowledgedBytes - left.finishedBeforeUnacknowledgedBytes - withNamesakes)
                    }
                }
                left.unhandledLostBytes = unhandledGivenUp
                state.statistics.unacknowledgedBytesLost += left.lostBytes
                state.statistics.unhandledBytesLost += unhandledGivenUp
                if left.lostBytes + unhandledGivenUp > 0, state.closed {
                    state.lostAtClose.clients += 1
                    state.lostAtClose.bytes += left.lostBytes + unhandledGivenUp
                }
                return (left, wasEmpty, leaving == nil)
            }
            // Its backlog is not kept: each frame its QUIC stack had not acknowledged
            // ends its trace here (those acknowledged, its handlers may still finish).
            if slowConsumerClosed, tracing.tracer.isEnabled {
                let cause = "dropped: slow consumer \(member.name) was disconnected before acknowledging it (slow_consumer policy disconnect)"
                for (frame, _, _, end) in unacknowledged where end > acknowledgedThrough {
                    tracing.droppedFrame(frame, reason: "slow_consumer_disconnected", destination: .function(member.name), cause: cause)
                }
            }
            if member.clientType == .streamFunction { functionsChanges.continuation.yield() }
            report(left, wasEmpty: wasEmpty, clientType: handshake.clientType, logger: connectionLogger)
            if !catchUps.isEmpty { giveToNamesakes(catchUps, name: member.name, since: endedAt, logger: connectionLogger) }
            announceCopies(
                to: expectingCopies.functions,
                because: expectingCopies.successor ? "the earlier connection of an upstream zipper that connected again ended"
                    : "an upstream zipper's connection ended; its sources may send again through its next run what it had not settled",
                logger: connectionLogger)
            for waiter in waiters { waiter.fire() }
        }
        // Whether the client closed for good: what it left in the hold is the zipper's alone.
        var closedForGood = false
        // Runs before the defer above: the ledger is kept for the client's next
        // connection before this one counts as gone (a reconnection waits for that).
        defer {
            if let ledger {
                receipts.remove(ledger)
                let handover = rememberEnded(ledger, of: handshake.id)
                if closedForGood { keepLeftInHold(by: handover, logger: connectionLogger) }
            }
        }
        if member.clientType == .streamFunction { functionsChanges.continuation.yield() }
        metrics.connection(handshake.clientType, delta: 1)
        defer { metrics.connection(handshake.clientType, delta: -1) }
        connectionLogger.info("client connected", metadata: [
            "client_type": "\(handshake.clientType)", "remote": "\(remote)",
            "observed_tags": "\(handshake.observedTags.map { "0x" + String($0, radix: 16) })",
        ])
        connection.logPathMTUFindings(logger: connectionLogger, metadata: ["remote": "\(remote)"]) { [self] in
            state.withLock { $0.statistics.pathMTUBlackHoles += 1 }
            metrics.pathMTUBlackHole()
        }
        // Why this side closes, sent to the peer in the CONNECTION_CLOSE.
        var closeReason = ""
        // A closing word is answered once: a function that repeats it without
        // reading would otherwise grow what waits for it without bound.
        var closingAnswered = false
        do {
            do {
                // The first receipt, before the acknowledgement, tells the client receipts will come.
                if let ledger {
                    try await connection.write(.receipt(ReceiptFrame(
                        settledThrough: UInt64(ledger.announced), previousRoutedThrough: ledger.previousRoutedThrough.map(UInt64.init),
                        welcomesHandling: welcomesHandling, unkeptThrough: welcomesHandling ? 0 : nil)))
                }
                try await connection.write(.handshakeAck)
                // From the function's first frame on, where its receipts begin.
                if welcomesHandling {
                    connection.connection.retainAcknowledged(budget: unhandledBudget)
                    // Not before: its dial reads the first receipt as where receipts begin.
                    let framesFrom = connection.connection.sendProgress.written
                    state.withLock { $0.peers[id]?.recognizesCopiesFrom = framesFrom }
                }
            } catch {
                if !held.isEmpty { abandonArrival(of: member, at: delivery, delivered: 0, unwritten: held) }
                throw error
            }
            if !held.isEmpty {
                // What was held for it may be held twice (a sender sent again what
                // the hold had, after a crash upstream): it recognizes the second.
                if welcomesHandling { announceCopies(to: [connection], because: nil, logger: connectionLogger) }
                try await deliverHeld(held, to: member, connection, delivery, logger: connectionLogger)
            }
            // The task's context is the same for every frame: read once, not per span.
            let taskContext = ServiceContext.current ?? .topLevel
            // Routed on the loop thread, a burst of received frames would hold
            // it until the burst is routed: nothing sent, no other connection
            // served, every copy for every destination queued at once (a fan-out
            // to 300 peers peaked at 77–97 MiB instead of 53–55). After every
            // `bytesRoutedPerYield` queued, the task steps aside for the loop.
            let yieldsToLoop = options.routing == .loop
            var routedSinceYield = 0
            // The function connections the frames were written to since the ledger was last told.
            var routedSinceTold: ReceiptLedger.Batch? = ledger != nil ? ReceiptLedger.Batch() : nil
            // The stream offset after the last frame routed, and the ledger told
            // of it all when the connection ends: a reconnection learns how far.
            var routedThrough = frameReader.consumedBytes
            defer { if let ledger { _ = ledger.routed(through: routedThrough, &routedSinceTold) } }
            while let frame = try await frameReader.next() {
                guard case .data(let data) = frame else {
                    // A function's receipt: its handlers finished the frames before this offset
                    // (never past what was written to it: those would count as delivered).
                    if welcomesHandling, case .receipt(let handled) = frame {
                        let quic = connection.connection
                        let written = quic.sendProgress.written
                        let settled = min(Int(clamping: handled.settledThrough), written)
                        quic.releaseRetained(through: settled)
                        delivery.handled(through: settled, ahead: handled.handledAhead, written: written)
                        if let answered = handled.answeredThrough { delivery.answered(through: min(Int(clamping: answered), settled)) }
                        if !handled.handledBefore.isEmpty {
                            delivery.handledBefore(handled.handledBefore)
                            settleCopiesHeld(handled.handledBefore, handledBy: member, logger: connectionLogger)
                        }
                        // What it finished of the mesh's frames, remembered for its name (see `route`).
                        let finishedFromLinks = delivery.finishedLinkFrames(through: settled, ahead: handled.handledAhead)
                        if !finishedFromLinks.isEmpty {
                            state.withLock { $0.held.remember(finishedFromLinks, handledBy: member.name) }
                            if configuration.functionsFile != nil { finishedChanges.continuation.yield() }
                        }
                        if let taken = handled.takenThrough {
                            delivery.took(through: min(Int(clamping: taken), written), bytes: handled.takenBytes.map { Int(clamping: $0) })
                        } else {
                            delivery.tellsNothingTaken()
                        }
                        if handled.closing {
                            delivery.settleOnlyWhatIsTaken()
                            stopRouting(to: member, logger: connectionLogger)
                            if !closingAnswered, answerClosing(connection, logger: connectionLogger) {
                                tellHeldCopies(to: member, connection)
                            }
                            closingAnswered = true
                        }
                    }
                    continue
                }
                guard !RouteTable.isReserved(data.tag) else {
                    closeReason = "tag 0x\(String(data.tag, radix: 16)) is reserved (0xF000-0xFFFF)"
                    state.withLock { $0.statistics.protocolViolations += 1 }
                    connectionLogger.warning("closing client that wrote a reserved tag", metadata: ["tag": "\(data.tag)", "remote": "\(remote)"])
                    break
                }
                let queued = try await route(
                    data, from: id, connectionMetadata: connectionMetadata, forwardsToMesh: forwardsToMesh, fromUpstream: fromUpstream,
                    taskContext: taskContext, logger: connectionLogger, ledger: ledger, written: &routedSinceTold)
                if let ledger {
                    routedThrough = frameReader.consumedBytes
                    // Told once per burst the reader took in, not per frame: the
                    // ledger's lock is not on the data path.
                    if !frameReader.hasWholeFrame || routedSinceTold?.endsCheckpoint == true,
                       ledger.routed(through: routedThrough, &routedSinceTold) {
                        receipts.wake(ledger)
                    }
                }
                if yieldsToLoop {
                    routedSinceYield += queued
                    if routedSinceYield >= Self.bytesRoutedPerYield {
                        routedSinceYield = 0
                        await Task.yield()
                    }
                }
            }
            if closeReason.isEmpty {
                connectionLogger.info("client disconnected")
                // Its stream's end (a close that delivers first), or its close.
                closedForGood = Self.closedForGood(connection.connection.closeReason, handshake.clientType)
            }
        } catch let error as WireError {
            closeReason = "bad frame: \(error.message)"
            state.withLock { $0.statistics.protocolViolations += 1 }
            connectionLogger.warning("closing client that sent a bad frame", metadata: ["error": "\(error)", "remote": "\(remote)"])
        } catch {
            connectionLogger.info("client disconnected", metadata: ["error": "\(error)"])
            closedForGood = (error as? QUICError).map { Self.closedForGood($0, handshake.clientType) } ?? false
        }
        if closedForGood { delivery.closedForGood() }
        await connection.close(reason: closeReason)
        // Frames written to a stream function and never acknowledged (it froze,
        // crashed or was cut off) are held for its return when it leaves (the
        // defer above); until the twenty-sixth round of issue 14 they went with
        // the connection, as in Go.
        // Decoded here, not under the lock the defer takes.
        if member.clientType == .streamFunction, configuration.unroutedHold.isOn || ledger != nil,
           let taken = connection.connection.takeUnacknowledged() {
            unacknowledged = HeldFrames.dataFrames(in: taken)
            // Copies of frames it had finished on an earlier connection, not yet read here.
            let copies = delivery.finishedBefore(among: unacknowledged, written: connection.connection.sendProgress.written)
            if copies > 0 {
                connectionLogger.debug("frames it had finished on an earlier connection are not taken back", metadata: ["frames": "\(copies)"])
            }
            // Finished out of order: not for its next instance (nor lost).
            let finishedAhead = delivery.finishedAhead
            if finishedAhead.bytes > 0 {
                let before = unacknowledged.count
                unacknowledged.removeAll { finishedAhead.contains(($0.end - $0.frame.encodedLength)..<$0.end) }
                connectionLogger.debug("frames its handlers finished out of order are not taken back", metadata: [
                    "frames": "\(before - unacknowledged.count)", "kept": "\(unacknowledged.count)",
                ])
            }
        }
        if welcomesHandling { (unhandledGivenUp, acknowledgedThrough) = (connection.connection.givenUpBytes, connection.connection.acknowledgedBytes) }
    }

    /// Whether a connection ended as a client of this SDK that closes for
    /// good ends it: its stream's end (a close that delivers first, `peer`
    /// nil) or its close with `ClientCore.finalCloseReason`; not a redial's
    /// close, nor a mesh link's (its zipper keeps what it forwards).
    private static func closedForGood(_ peer: QUICError?, _ clientType: ClientType) -> Bool {
        guard clientType != .upstreamZipper else { return false }
        guard let peer else { return true }
        return peer.isRemote && peer.applicationErrorCode == QUICError.yomoCloseCode && peer.reason == ClientCore.finalCloseReason(of: clientType)
    }

    /// The ledgers of connections that ended, by client id, for the client's
    /// next connection (the newest `endedLedgersKept`).
    private func rememberEnded(_ ledger: ReceiptLedger, of clientID: String) -> ReceiptLedger.Handover {
        let handover = ledger.handOver()
        state.withLock { state in
            if state.endedLedgers.updateValue(handover, forKey: clientID) == nil { state.endedLedgerOrder.append(clientID) }
            while state.endedLedgerOrder.count > State.endedLedgersKept {
                state.endedLedgers[state.endedLedgerOrder.removeFirst()] = nil
            }
        }
        return handover
    }

    /// The ledger of the connection `handshake` says it resumes: the same
    /// client (its id's part before `-<reconnect count>`), taken once.
    private func endedLedger(resumedBy handshake: HandshakeFrame) -> ReceiptLedger.Handover? {
        guard !handshake.resumes.isEmpty,
              let resumed = Self.reconnection(of: handshake.resumes), let current = Self.reconnection(of: handshake.id),
              resumed.base == current.base else { return nil }
        return state.withLock { $0.endedLedgers.removeValue(forKey: handshake.resumes) }
    }

    /// A function named frames it finished on an earlier connection: the
    /// copies held for its name are settled (see `HeldFrames.handledBefore`).
    private func settleCopiesHeld(_ names: [String], handledBy member: RouteMember, logger: Logger) {
        let settled = state.withLock { state in
            let settled = state.held.handledBefore(names, by: member)
            state.statistics.heldCopiesSettled += settled
            return settled
        }
        guard settled > 0 else { return }
        logger.debug("frames held for this stream function's name were handled before: let go, not given to it again", metadata: [
            "frames": "\(settled)",
        ])
    }

    /// A stream function said it is closing (`ReceiptFrame.closing`): nothing
    /// more is routed to it. Its tags' frames go to its namesakes, or are held
    /// for its return, as after its end; it finishes the frames on their way
    /// and closes at a quiet moment, which a steady source never gave while
    /// frames kept coming (every such close took its whole shutdownTimeout;
    /// fortieth round of issue 14). Its end does the rest.
    private func stopRouting(to member: RouteMember, logger: Logger) {
        let stopped = state.withLock { state -> Bool in
            guard state.routes.members[member.connectionID] != nil else { return false }
            state.routes.remove(member.connectionID)
            state.held.observerLeft(member, stillObserved: state.routes.tagsObserved(byName: member.name), now: .now)
            return true
        }
        if stopped { logger.info("stream function closing: no more frames are routed to it") }
    }

    /// Answers a closing function's word (`ReceiptFrame.unkeptThrough`): what
    /// it acknowledged and has not finished is kept from now on past its
    /// share of `limits.max_unhandled_bytes`, and given to its next instance
    /// when its connection ends, except what went past the share before. So
    /// it may give back the frames it queued instead of working them off: a
    /// pipe handler slower than its source took the whole shutdownTimeout at
    /// every SIGTERM until the fifty-third round of issue 14. Queued past any
    /// limit (25 bytes): it must reach the function after what was written
    /// before, which its window now lets through.
    private func answerClosing(_ connection: QUICFrameConnection, logger: Logger) -> Bool {
        guard let unkept = connection.connection.pinRetention() else { return false }
        let answer = Frame.receipt(ReceiptFrame(settledThrough: 0, closing: true, unkeptThrough: UInt64(unkept)))
        _ = try? connection.tryWrite(control: answer, limit: .max)
        if connection.connection.givenUpBytes > 0 {
            logger.info("stream function closing: frames it acknowledged went past its share of the unhandled budget before, and it is told to handle them", metadata: [
                "unkept_through": "\(unkept)",
            ])
        }
        return true
    }

    /// Tells a closing function the names (`CopyKey.name`) of the frames held
    /// for its name (`ReceiptFrame.heldCopies`), now and as more are held: copies an
    /// upstream zipper or a source sends again of what an earlier connection
    /// of its brought, which it has queued and may give back instead of
    /// handling. Until the fifty-sixth round of issue 14 a function closed
    /// while it redialled worked off that queue until its deadline, 5 s
    /// (`yomo-fault-bench chaos --mesh --seed 9`).
    private func tellHeldCopies(to member: RouteMember, _ connection: QUICFrameConnection) {
        let names = state.withLock { state -> [String] in
            state.closingNames[member.name, default: []].insert(member.connectionID)
            return state.held.names(waitingFor: member)
        }
        tellHeldCopies(names, to: connection)
    }

    private func tellHeldCopies(_ names: [String], to connection: QUICFrameConnection) {
        for start in stride(from: 0, to: names.count, by: Self.heldCopiesPerReceipt) {
            let batch = Array(names[start..<min(start + Self.heldCopiesPerReceipt, names.count)])
            _ = try? connection.tryWrite(control: .receipt(ReceiptFrame(settledThrough: 0, heldCopies: batch)), limit: .max)
        }
    }

    static let heldCopiesPerReceipt = 128

    /// A frame whose write found a stream function's connection ended: held
    /// for its return after what it had not acknowledged (with it, if it has
    /// not left the routes yet), as a frame routed after it left would be.
    private func holdUnwritten(
        _ frame: DataFrame, patch: MetadataPatch?, target: String?, linkDigest: CopyDigest?, for id: UInt64, at delivery: DeliveryDestination,
        logger: Logger
    ) {
        let owned = HeldFrames.owned(frame, patch: patch)
        let (left, wasEmpty) = state.withLock { state -> (UnacknowledgedAtEnd, Bool) in
            var left = UnacknowledgedAtEnd(bytes: 0)
            guard !state.closed else { return (left, false) }
            // Before it leaves: held with what it had not acknowledged, at its end.
            if var peer = state.peers[id] {
                if peer.member.clientType == .streamFunction, state.held.fits(HeldFrames.bytes(of: owned)) {
                    peer.unwritten.append((owned, target, linkDigest))
                    state.peers[id] = peer
                }
                return (left, false)
            }
            guard let function = state.departed.first(where: { $0.connectionID == id }) else { return (left, false) }
            let wasEmpty = state.held.isEmpty
            // After: its end's tally (set in the lock that made it departed) waits for this one too.
            left = state.holdForReturn(
                [(owned, target, 0, .notAcknowledged, delivery.leftoversOfEnd?.tally(endingAt: 0) ?? HoldTally(), linkDigest)], of: function,
                stillObserved: state.routes.tagsObserved(byName: function.name))
            return (left, wasEmpty)
        }
        // No line per frame: these are few, and the connection's end says what it held.
        report(left, wasEmpty: wasEmpty, clientType: .streamFunction, logger: logger, says: false)
    }

    /// Writes what a stream function's ended connection left to the
    /// namesakes that lack it (`State.catchUp`), in order, after what they
    /// got since they joined; each frame leaves its tally once written (and
    /// waits there for its acknowledgement).
    /// Each one's wait, from the connection's end (`since`), is a `zipper hold`
    /// span between the zipper's span and the namesake's, as for a frame held.
    private func giveToNamesakes(_ deliveries: [CatchUp], name: String, since: ContinuousClock.Instant, logger: Logger) {
        Task {
            var given = 0
            for delivery in deliveries {
                let tally = delivery.tally
                defer { tally.release() }
                let frame = tracing.heldFrame(delivery.frame, waited: .now - since, reason: delivery.reason.attribute, function: name)
                guard let end = try? await delivery.to.connection.write(frame, patch: nil, endingAfterQueueingThrows: false) else { continue }
                if let digest = delivery.linkDigest { delivery.to.delivery.wroteLinkFrame(endingAt: end, digest: digest) }
                tally.wait(for: delivery.to.delivery, written: end)
                given += 1
                if metrics.isEnabled { metrics.router(tag: frame.tag).delivered.add() }
            }
            state.withLock { $0.statistics.framesGivenToNamesakes += given }
            logger.info("frames this stream function had not acknowledged or handled went to another instance of its name that lacked them", metadata: [
                "frames": "\(given)", "of": "\(deliveries.count)",
            ])
        }
    }

    /// What a connection had not acknowledged when it ended: held for its
    /// return, or lost.
    struct UnacknowledgedAtEnd {
        /// Unacknowledged bytes not held.
        var lostBytes: Int
        var heldFrames = 0
        /// Of the frames held, the bytes the peer had not acknowledged.
        var heldUnacknowledgedBytes = 0
        /// Of the frames not held because their function's name had finished
        /// them (copies), the bytes the peer had not acknowledged: not lost.
        /// Until the sixtieth round of issue 14 they were counted and said lost.
        var finishedBeforeUnacknowledgedBytes = 0
        /// The hold was full for some.
        var refusedLevel: Logger.Level?
        var refusedTag: UInt32 = 0
        /// A stream function that said which frames its handlers finished: what
        /// it had not acknowledged includes what it had not handled.
        var handlingAcknowledged = false
        /// Bytes it acknowledged and had not handled, past its share of
        /// `Limits.maximumUnhandledBytes`: not kept, so not held.
        var unhandledLostBytes = 0

        init(bytes: Int) { lostBytes = bytes }
    }

    /// Says what a connection's end did with what it had not acknowledged.
    private func report(_ left: UnacknowledgedAtEnd, wasEmpty: Bool, clientType: ClientType, logger: Logger, says: Bool = true) {
        if left.heldFrames > 0 {
            if wasEmpty { heldWakeups.continuation.yield() }
            metrics.heldUnacknowledged(left.heldFrames)
            if says {
                logger.info(left.handlingAcknowledged
                    ? "frames written to this stream function were not acknowledged or not handled before its connection ended: held for its return"
                    : "frames written to this stream function were not acknowledged before its connection ended: held for its return", metadata: [
                    "frames": "\(left.heldFrames)", "hold": "\(configuration.unroutedHold.duration)",
                ])
            }
        }
        logHoldFull(left.refusedLevel, tag: left.refusedTag, logger: logger)
        if left.unhandledLostBytes > 0 {
            metrics.lostUnhandled(left.unhandledLostBytes)
            if !state.withLock({ $0.closed }) {
                logger.warning(
                    "frames this stream function acknowledged and had not handled were past its share of limits.max_unhandled_bytes: lost with it unless it handled them",
                    metadata: ["unhandled_bytes": "\(left.unhandledLostBytes)", "retaining_functions": "\(unhandledBudget.retainingConnections + 1)"])
            }
        }
        guard left.lostBytes > 0 else { return }
        metrics.lostUnacknowledged(left.lostBytes, clientType: clientType)
        // At the zipper's close, one line for every client (reportLostAtClose).
        guard !state.withLock({ $0.closed }) else { return }
        logger.warning(
            "frames written to this client were not acknowledged before its connection ended: lost with it",
            metadata: ["unacknowledged_bytes": "\(left.lostBytes)"])
    }

    /// Bytes a connection's task queues for its destinations on the loop
    /// thread before it lets the loop send them and serve other connections.
    static let bytesRoutedPerYield = 256 * 1024

    /// A client that reconnects (its id the same before `-<reconnect count>`,
    /// the count higher, the same name and type) has given up on its earlier
    /// connection, which this side may not know for seconds yet: its idle
    /// timer started later (a path that failed one way, a client whose
    /// address changed). That connection ends now, and the new one waits
    /// until it has left (`supersedeWait`), so that what a stream
    /// function's earlier connection had not acknowledged is held for the new
    /// one and delivered first, in order. Before, the new connection was a
    /// second instance of the name, and those frames were lost.
    private func supersedeEarlier(_ handshake: HandshakeFrame, logger: Logger) async {
        guard let (base, count) = Self.reconnection(of: handshake.id) else { return }
        let earlier = state.withLock { state -> [(id: String, connection: QUICFrameConnection, waiter: Latch)] in
            var earlier: [(id: String, connection: QUICFrameConnection, waiter: Latch)] = []
            for (id, peer) in state.peers where peer.member.name == handshake.name && peer.member.clientType == handshake.clientType {
                guard let previous = Self.reconnection(of: peer.member.clientID), previous.base == base, previous.count < count else { continue }
                earlier.append((peer.member.clientID, peer.connection, state.departure(of: id)))
            }
            return earlier
        }
        guard !earlier.isEmpty else { return }
        for (id, connection, _) in earlier {
            logger.info("closing the connection this client reconnected from", metadata: ["earlier_conn_id": "\(id.forLog)"])
            await connection.close(reason: "superseded: its client reconnected")
        }
        await Latch.waitForAll(earlier.map(\.waiter), until: .now + supersedeWait)
    }

    /// Tells stream functions that frames written to them may come again
    /// (`ReceiptFrame.copiesMayFollow`): an upstream zipper of the mesh that
    /// crashed and started again connects anew, and its sources send it what
    /// it had not settled, which this zipper may have written to a function
    /// that has not handled it yet (a backlog), or held for it, beside the
    /// originals it held already. The function recognizes them by
    /// transaction id. Queued past any limit: a word of 15 bytes,
    /// once per such connection, and it must go before the copies. `reason`:
    /// for the info line (none: the caller says it otherwise).
    private func announceCopies(to functions: [QUICFrameConnection], because reason: String?, logger: Logger) {
        guard !functions.isEmpty else { return }
        let word = Frame.receipt(ReceiptFrame(settledThrough: 0, copiesMayFollow: true))
        let told = functions.reduce(0) { told, function in told + ((try? function.tryWrite(control: word, limit: .max)) == true ? 1 : 0) }
        state.withLock { $0.statistics.copiesAnnounced += told }
        guard let reason else { return }
        logger.info("\(reason): the stream functions are told that frames written to them may come again, so that they handle each once", metadata: [
            "functions": "\(told)",
        ])
    }

    /// How long a reconnection waits for its earlier connection to leave: a
    /// task that routes for it may be held up by a slow destination (under
    /// `block`), and the client's own handshake timeout must not run out
    /// first. Past it, the new connection comes in as a second instance.
    private var supersedeWait: Duration { min(options.handshakeTimeout / 2, .seconds(2)) }

    /// `<base>-<reconnect count>`, the client ids of YoMo's SDKs (PROTOCOL.md).
    static func reconnection(of clientID: String) -> (base: Substring, count: Int)? {
        guard let dash = clientID.lastIndex(of: "-"), dash > clientID.startIndex,
              let count = Int(clientID[clientID.index(after: dash)...]) else { return nil }
        return (clientID[..<dash], count)
    }

    /// A mesh entry that names this zipper's own address under another name
    /// (a zipper not given its entry's name skips no entry): the link reached
    /// this zipper, and would bring every frame back to be delivered twice. The
    /// link is stopped for good; the configuration must change.
    private func refuseSelfLink(_ link: MeshLink, _ connection: QUICFrameConnection, _ logger: Logger) async {
        countRefusal("mesh_self")
        let message = "mesh entry \(link.peer.name) (\(link.peer.address)) is this zipper (\(configuration.name)) itself"
        logger.error("\(message): its link is stopped, or every frame would be delivered here twice; give this zipper the entry's name (name:, --name) so that it skips its own entry, or remove the entry")
        _ = try? await connection.write(.rejected(RejectedFrame(message: message)))
        await connection.closeAfterDelivery(reason: message, until: .now + options.handshakeTimeout)
        await link.close()
    }

    /// Each mesh link's state (empty without a mesh).
    var meshLinkHealth: [MeshLinkHealth] { links.map(\.health) }

    func dropMeshLinkConnectionsForTesting() async {
        for link in links { await link.dropConnectionForTesting() }
    }

    var meshLinkReconnectsForTesting: [Int] { links.map(\.reconnectsForTesting) }

    /// Each link's records of frames sent and not yet known settled (tests).
    var meshLinkUnsettledRecords: [Int] { links.map(\.unsettledRecords) }

    /// One round of delivery receipts now: what was routed since the last
    /// becomes a checkpoint of its own (tests).
    func receiptRoundForTesting() { receipts.round() }

    /// Each connected client's connection, as the zipper sees it.
    func clientConnections() -> [ClientConnectionHealth] {
        // Read outside the zipper's lock: each connection's statistics have their own.
        let peers = state.withLock { $0.peers.values.map { ($0.member, $0.connection.connection, $0.delivery) } }
        return peers.map { member, quic, delivery in
            let ahead = delivery.finishedAheadBytes
            let retains = quic.retainedBytes > 0
            return ClientConnectionHealth(
                member: member, statistics: quic.statistics, unacknowledgedBytes: quic.unacknowledgedBytes,
                retainedBytes: quic.retainedBytes, finishedAheadBytes: ahead,
                unfinishedBytes: retains ? max(0, quic.sendProgress.written - quic.releasedBytes - ahead) : 0,
                handledBeforeCount: delivery.handledBeforeCount, unreadBytes: quic.unreadBytes)
        }
    }

    /// A connection closed over its address's share: counted with the other
    /// refusals; said at once, then at most every 10 s with how many since.
    private func refusedPerAddress(_ address: String) {
        countRefusal("connections_per_address")
        guard let said = perAddressRefusals.withLock({ $0.event(at: .now) }) else { return }
        logger.warning("connection refused: its address has its share of connections", metadata: [
            "remote": "\(address)", "limit": "\(configuration.limits.maximumConnectionsPerAddress)", "refused": "\(said)",
        ])
    }

    /// A proven address's QUIC handshake refused over its share: said at once,
    /// then at most every 10 s with how many since (counted by the server:
    /// `yomo.zipper.address_validation.refused`).
    private func handshakeRefusedPerAddress(_ address: String) {
        guard let said = perAddressHandshakeRefusals.withLock({ $0.event(at: .now) }) else { return }
        logger.warning("handshake refused: its address has its share of handshakes in progress", metadata: [
            "remote": "\(address)", "limit": "\(configuration.limits.maximumPendingHandshakesPerAddress)", "refused": "\(said)",
        ])
    }

    /// New clients are asked to prove their address: said when it begins and
    /// at most every 10 s while it lasts (the server says so no more often).
    private func askingForRetries(_ retries: Int) {
        logger.warning("many handshakes from unproven addresses: new clients prove theirs with a QUIC Retry first", metadata: [
            "limit": "\(configuration.limits.maximumUnvalidatedHandshakes)", "retries": "\(retries)",
        ])
    }

    /// A connection refused before or at its handshake: `statistics` and the metric.
    private func countRefusal(_ reason: String) {
        state.withLock { $0.statistics.rejectedHandshakes += 1 }
        metrics.rejected(reason: reason)
    }

    /// Reads the first frame, which must be a handshake, within the handshake
    /// timeout and the handshake size limit. On failure: logged once with the
    /// remote address, the connection closed with the reason, and nil.
    private func readHandshake(_ connection: QUICFrameConnection) async -> (HandshakeFrame, FrameReader)? {
        let remote = connection.remoteAddress
        var frames = FrameReader(connection)
        frames.setMaximumFrameSize(configuration.limits.maximumHandshakeSize)
        let reason: String
        let category: String
        do {
            let first = try await frames.first(
                within: options.handshakeTimeout,
                orFail: YoMoError(.protocolViolation, "no handshake within \(options.handshakeTimeout)"))
            switch first {
            case .handshake(let frame)?:
                return (frame, frames)
            case nil:
                logger.info("connection closed before its handshake", metadata: ["remote": "\(remote)"])
                await connection.close(reason: "")
                return nil
            case let other?:
                reason = "expected a handshake first, got a \(other.type)"
                category = "not_a_handshake"
            }
        } catch let error as YoMoError {
            reason = error.message
            category = "timeout"
        } catch let error as WireError where error.code == .frameTooLarge {
            reason = "handshake too large: \(error.message) (limit \(configuration.limits.maximumHandshakeSize) bytes before the handshake)"
            category = "too_large"
        } catch let error as WireError {
            reason = "bad handshake: \(error.message)"
            category = "malformed"
        } catch {
            logger.info("connection dropped before its handshake", metadata: ["remote": "\(remote)", "error": "\(error)"])
            await connection.close(reason: "")
            return nil
        }
        countRefusal(category)
        logger.warning("connection refused before its handshake", metadata: ["remote": "\(remote)", "reason": "\(reason)"])
        await connection.close(reason: reason)
        return nil
    }

    /// Delivers the RejectedFrame, but never waits longer than the handshake
    /// timeout for a peer that does not acknowledge it.
    /// Sends a frame to every observer; awaiting each write is what makes a slow
    /// stream function slow its senders down instead of losing frames.
    /// With `forwardsToMesh`, the frame is also queued (never awaited) for every
    /// mesh downstream, carrying this zipper's span ids.
    /// Returns the bytes it queued (the frame's size times its destinations).
    ///
    /// A frame from an upstream zipper (`fromUpstream`) is keyed
    /// (`CopyKey.digest`) where it is written, and the function's receipts
    /// that say it finished it have the zipper remember that key for the
    /// function's name; a copy of it the mesh brings later (an upstream's
    /// next run, its source sending again what it had not settled) is not
    /// written to a function of that name, nor held for it. Until the
    /// fifty-eighth round of issue 14 only the instance that handled a frame
    /// knew it, and the next one, after it died, handled the copy again
    /// (`yomo-fault-bench chaos --mesh`, blocks of 100–330 frames).
    private func route(
        _ data: DataFrame, from id: UInt64, connectionMetadata: Metadata, forwardsToMesh: Bool, fromUpstream: Bool = false,
        taskContext: ServiceContext, logger: Logger, ledger: ReceiptLedger?, written: inout ReceiptLedger.Batch?
    ) async throws -> Int {
        guard let (metadata, span) = outgoingMetadata(
            of: data, connectionMetadata: connectionMetadata, taskContext: taskContext, logger: logger) else { return 0 }
        defer { tracing.endZipperSpan(span, tag: data.tag, length: data.payload.readableBytes) }
        let router = metrics.isEnabled ? metrics.router(tag: data.tag) : nil
        let started = router != nil ? ContinuousClock.now : nil
        defer {
            if let router, let started { router.duration.record(secondsSince(started), spanContext: span?.spanContext) }
        }
        let target = metadata.value(.target, connectionMetadata)
        // Metadata made once for every destination (or patched as each copy is
        // encoded); the payload is never copied.
        let (frame, patch) = metadata.frame(tag: data.tag, payload: data.payload)
        let linkKey = fromUpstream ? CopyKey.digest(of: data) : nil
        var (destinations, decision, passedOver) = state.withLock { state in
            let (destinations, passedOver) = state.destinations(tag: data.tag, target: target, passingOver: linkKey)
            if passedOver { state.statistics.handledCopiesNotRouted += 1 }
            return (destinations, state.holdDecision(for: frame, target: target, routed: !destinations.isEmpty || passedOver), passedOver)
        }
        var held = false
        var refusal: SpanContext?
        switch decision {
        case .none: break
        case .hold:
            (held, destinations, refusal) = hold(
                frame, patch: patch, target: target, ledger: ledger, forwarded: forwardsToMesh && !links.isEmpty, copyKey: linkKey, logger: logger)
            if held { written?.held() }
        case .refused(let level, let claim):
            logHoldFull(level, tag: frame.tag, logger: logger)
            if tracing.tracer.isEnabled { refusal = traceRefusedByFullHold(frame.applying(patch), for: claim) }
        }
        // no_route: no observer here, none held for (the mesh may still take the frame).
        if !held && destinations.isEmpty && !passedOver { router?.noRoute.add(exemplar: refusal) }
        tracing.debug(logger, under: span, in: taskContext, "routing frame", metadata: YoMoLogField.frame(
            tid: metadata.value(.tid, connectionMetadata) ?? "", tag: data.tag, dataLength: data.payload.readableBytes
        ).merging([
            "destinations": "\(destinations.count)", "mesh": "\(forwardsToMesh ? links.count : 0)", "held": "\(held)",
        ]) { first, _ in first })
        guard !destinations.isEmpty || forwardsToMesh else { return 0 }
        if forwardsToMesh, !links.isEmpty {
            // The mesh queues frames: they leave with the patch already written.
            let whole = frame.applying(patch)
            for link in links { link.forward(whole, tracedUnder: span?.spanContext) }
            // A sender's receipt waits for its links' downstreams too.
            if written != nil {
                for delivery in linkDeliveries { written?.add(delivery) }
                written?.forwardedToMesh()
            }
        }
        let slow = configuration.slowConsumer
        for (destinationID, destination, delivery) in destinations {
            do {
                if slow.policy == .block {
                    // A throw: not queued (one queued as its connection ended
                    // is among what it had not acknowledged).
                    let end = try await destination.write(frame, patch: patch, endingAfterQueueingThrows: false)
                    written?.add(delivery, endingAt: end)
                    if let linkKey { delivery.wroteLinkFrame(endingAt: end, digest: linkKey) }
                    router?.delivered.add()
                } else if let end = try destination.tryWrite(frame, limit: slow.maximumBufferedBytes, patch: patch) {
                    written?.add(delivery, endingAt: end)
                    if let linkKey { delivery.wroteLinkFrame(endingAt: end, digest: linkKey) }
                    router?.delivered.add()
                    resumed(destinationID, logger: logger)
                } else if slow.policy == .drop {
                    let drop = dropped(destinationID, tag: frame.tag, tracedUnder: span?.spanContext, logger: logger)
                    router?.dropped.add(exemplar: drop)
                } else {
                    let drop = await disconnect(destinationID, destination, tag: frame.tag, tracedUnder: span?.spanContext, logger: logger)
                    router?.dropped.add(exemplar: drop)
                }
            } catch {
                router?.failed.add()
                // Its receipt waits for the connection's end to be dealt with (held there, or lost).
                written?.add(delivery)
                if configuration.unroutedHold.isOn {
                    holdUnwritten(frame, patch: patch, target: target, linkDigest: linkKey, for: destinationID, at: delivery, logger: logger)
                }
                tracing.debug(logger, under: span, in: taskContext, "destination gone",
                              metadata: ["remote": "\(destination.remoteAddress)", "error": "\(error)"])
            }
        }
        return (frame.payload.readableBytes + frame.metadata.readableBytes) * (destinations.count + (forwardsToMesh ? links.count : 0))
    }

    /// The frame's metadata as it leaves: the sender connection's metadata merged
    /// in (the frame's own values win) and this zipper's span handed on. Usually
    /// written over a copy of the received bytes (new span ids have the old ones'
    /// width); decoded and encoded again only when that cannot be done. Nil for
    /// metadata that does not decode (the frame is skipped, and logged).
    private func outgoingMetadata(
        of data: DataFrame, connectionMetadata: Metadata, taskContext: ServiceContext, logger: Logger
    ) -> (RoutedMetadata, HopSpan?)? {
        let length = data.payload.readableBytes
        var span: HopSpan?
        // Connection metadata is only ever the wanted target; trace keys in it
        // would change the parent, which only the decoding path handles.
        let connectionCarriesTrace = !connectionMetadata.isEmpty
            && MetadataView.Key.traceKeys.contains { connectionMetadata[$0.string] != nil }
        if let view = MetadataView(data.metadata), !connectionCarriesTrace {
            var changes = Metadata()
            for (key, value) in connectionMetadata where !(MetadataView.Key(key).map(view.contains) ?? false) {
                changes[key] = value
            }
            // Nil: this zipper's span is handed on by the decoding path below.
            var patch: MetadataView.TracePatch? = MetadataView.TracePatch()
            var present: MetadataView.CanonicalTrace?
            if tracing.tracer.isEnabled {
                if let trace = view.canonicalTrace, let started = tracing.zipperSpan(trace: trace, context: taskContext) {
                    // The usual case: digits over digits, no Metadata built.
                    (span, patch, present) = (started.span, started.patch, trace)
                } else {
                    var trace = view.traceMetadata
                    span = tracing.zipperSpan(metadata: &trace, context: taskContext)
                    changes.merge(trace)
                }
            }
            if let patch {
                // Nothing else to change: the digits are written as each copy of the frame is encoded.
                if changes.isEmpty, !patch.isEmpty, let inPlace = view.patch(patch, over: present) {
                    return (.patched(view, inPlace), span)
                }
                if let bytes = view.applying(changes, trace: patch, over: present) { return (.view(view, bytes), span) }
            }
        }
        var merged = connectionMetadata
        do {
            merged.merge(try Metadata(decoding: data.metadata))
        } catch {
            tracing.endZipperSpan(span, tag: data.tag, length: length)
            logger.warning("frame with bad metadata skipped", metadata: ["tag": "\(data.tag)", "error": "\(error)"])
            return nil
        }
        if let spanContext = span?.spanContext {
            tracing.inject(spanContext, into: &merged)
        } else {
            span = tracing.zipperSpan(metadata: &merged, context: taskContext)
        }
        return (.decoded(merged, merged.encoded()), span)
    }

    /// Holds a frame `State.holdDecision` found room for, for the stream
    /// functions on their way back that it is held for (see `HeldFrames`);
    /// logs the first of a tag's burst, and the first frame the full hold
    /// refused. Returns whether it was held, the functions to route it to now,
    /// and the span that says it was refused (a full hold), if one was recorded.
    /// `restored`: the tally of the frames of the held frames file, when it is one of them.
    /// `forwarded`: the frame goes to mesh links too, whose settling its sender's
    /// receipt waits for; a hold for whichever function comes (no name owed) is
    /// then not waited for as well. It was: in a zipper's first minute every
    /// frame it forwarded was held so, and its sender kept it for the hold's
    /// 5 s, sent those 5 s again after this zipper's crash, and filled its
    /// outage buffer (`yomo-fault-bench chaos --mesh`, fortieth round of issue 14).
    private func hold(
        _ frame: DataFrame, patch: MetadataPatch?, target: String?, ledger: ReceiptLedger?, restored: HoldTally? = nil,
        forwarded: Bool = false, copyKey: CopyDigest? = nil, logger: Logger
    ) -> (held: Bool, destinations: [Destination], refusal: SpanContext?) {
        let owned = HeldFrames.owned(frame, patch: patch)
        // Closing functions of the names it is held for: told its id.
        var closing: [QUICFrameConnection] = []
        typealias Outcome = (
            held: Bool, destinations: [Destination], wasEmpty: Bool, firstFor: HeldFrames.Claim?, firstRefused: Logger.Level?, refused: HeldFrames.Claim?
        )
        let outcome = state.withLock { state -> Outcome in
            let (destinations, passedOver) = state.destinations(tag: frame.tag, target: target, passingOver: copyKey)
            let routed = !destinations.isEmpty || passedOver
            // Checked again: a function may have arrived or left since the caller looked.
            guard let claim = state.held.claim(tag: frame.tag, target: target, routed: routed, now: .now) else {
                return (false, destinations, false, nil, nil, nil)
            }
            let wasEmpty = state.held.isEmpty
            let waitedFor = !(forwarded && claim.owed.isEmpty)
            switch state.held.hold(
                owned, target: target, bytes: HeldFrames.bytes(of: frame), for: claim, routed: routed, now: .now, linkDigest: copyKey,
                tally: waitedFor ? ledger?.heldFrame() ?? restored?.adding() : nil) {
            case .held(let first):
                state.statistics.heldFrames += 1
                state.heldFull = (false, false)
                if !state.closingNames.isEmpty {
                    closing = claim.owed.flatMap { state.closingNames[$0] ?? [] }.compactMap { state.peers[$0]?.connection }
                }
                return (true, destinations, wasEmpty, first ? claim : nil, nil, nil)
            case .full:
                return (false, destinations, false, nil, state.refuseHeld(tag: frame.tag), claim)
            case .handledBefore:
                // Its functions have it: nothing waits, and it is no frame without a route.
                state.statistics.heldCopiesSettled += 1
                return (true, destinations, false, nil, nil, nil)
            }
        }
        // The hold filled since the caller looked: refused all the same, its span the no_route count's exemplar.
        var refusal: SpanContext?
        if let claim = outcome.refused, tracing.tracer.isEnabled { refusal = traceRefusedByFullHold(owned, for: claim) }
        if outcome.wasEmpty { heldWakeups.continuation.yield() }
        if !closing.isEmpty, let name = CopyKey(owned)?.name {
            for connection in closing { tellHeldCopies([name], to: connection) }
        }
        if let claim = outcome.firstFor, mayLogAboutHeldFrames() {
            let duration = configuration.unroutedHold.duration
            if claim.owed.isEmpty || outcome.destinations.isEmpty {
                logger.info("no stream function observes this tag now: holding its frames for one on its way back", metadata: [
                    "tag": "\(DataPathMetrics.tagName(frame.tag))", "hold": "\(duration)",
                ])
            } else {
                logger.info("a stream function observing this tag is away: holding its frames for it, the others receive them", metadata: [
                    "tag": "\(DataPathMetrics.tagName(frame.tag))", "hold": "\(duration)",
                    "functions": "\(Self.names(claim.owed))",
                ])
            }
        }
        logHoldFull(outcome.firstRefused, tag: frame.tag, logger: logger)
        return (outcome.held, outcome.destinations, refusal)
    }

    /// The line for the first frame a full hold refused (`level` nil: one was
    /// written since the hold last took a frame).
    private func logHoldFull(_ level: Logger.Level?, tag: UInt32, logger: Logger) {
        guard let level else { return }
        logger.log(level: level, "frames held for stream functions reached their limit: frames for stream functions on their way back are dropped until some are taken or expire", metadata: [
            "tag": "\(DataPathMetrics.tagName(tag))", "max_bytes": "\(configuration.unroutedHold.maximumBytes)",
        ])
    }

    /// Names for a log line: sorted, at most five (they come from peers).
    static func names(_ names: Set<String>) -> String {
        let sorted = names.sorted()
        let shown = sorted.prefix(5).joined(separator: ",")
        return sorted.count > 5 ? shown + ",… (\(sorted.count))" : shown
    }

    /// Writes the frames held for a stream function that arrived, then any held
    /// while they were written, and only then lets routing send it new ones, so
    /// that it receives them in order.
    private func deliverHeld(
        _ first: [HeldFrames.Taken], to member: RouteMember, _ connection: QUICFrameConnection, _ delivery: DeliveryDestination, logger: Logger
    ) async throws {
        var batch = first
        var delivered = 0, writtenOfBatch = 0
        do {
            while !batch.isEmpty {
                writtenOfBatch = 0
                for taken in batch {
                    // Its wait, on a span of its own between the zipper's span and the function's.
                    let frame = tracing.heldFrame(taken.frame, waited: .now - taken.heldAt, reason: taken.reason.attribute, function: member.name)
                    // Queued counts as delivered: if the connection ends
                    // unacknowledged, the frame is held for the function again.
                    let end = try await connection.write(frame, patch: nil, endingAfterQueueingThrows: false)
                    taken.written(to: delivery, endingAt: end)
                    delivered += 1
                    writtenOfBatch += 1
                    if metrics.isEnabled { metrics.router(tag: frame.tag).delivered.add() }
                }
                batch = state.withLock { state in
                    let more = state.held.take(for: member)
                    if more.isEmpty {
                        state.joinRoutes(member)
                        state.held.endArriving(member)
                    }
                    return more
                }
            }
        } catch {
            abandonArrival(of: member, at: delivery, delivered: delivered, unwritten: Array(batch[writtenOfBatch...]))
            throw error
        }
        state.withLock { $0.statistics.heldFramesDelivered += delivered }
        logger.info("delivered the frames held for this stream function", metadata: ["frames": "\(delivered)"])
    }

    /// A function's connection ended while it took its held frames: those not
    /// written are held for it again when it leaves, after what it had not
    /// acknowledged and ahead of what was held for it meanwhile (in order);
    /// until the twenty-sixth round of issue 14 they were dropped.
    private func abandonArrival(of member: RouteMember, at delivery: DeliveryDestination, delivered: Int, unwritten taken: [HeldFrames.Taken]) {
        // Held again for the function at its connection's end: their receipts wait for that.
        for frame in taken { frame.abandoned(at: delivery) }
        state.withLock { state in
            state.held.endArriving(member)
            state.statistics.heldFramesDelivered += delivered
            if !state.closed, var peer = state.peers[member.connectionID] {
                peer.unwritten += taken.map { ($0.frame, MetadataView($0.frame.metadata)?.string(.target), $0.linkDigest) }
                state.peers[member.connectionID] = peer
            } else {
                state.statistics.heldFramesDropped += taken.count
            }
        }
    }

    /// Drops held frames whose wait is over, waking when the hold fills and
    /// 100 ms after each next deadline, so that frames held within 100 ms of
    /// each other are dropped (and said) together; ends when the zipper
    /// closes (cancelled).
    private func expireHeldFrames() async {
        var lastRound = ContinuousClock.now
        for await _ in heldWakeups.stream {
            while let wake = state.withLock({ state in
                [state.held.nextDeadline, state.heldDropReports.nextDue].compactMap { $0 }.min()
            }) {
                do {
                    try await Task.sleep(until: max(wake, lastRound) + .milliseconds(100), clock: .continuous)
                } catch {
                    return
                }
                lastRound = .now
                let (dropped, report, frames) = state.withLock { state in
                    let dropped = state.held.expire(now: lastRound)
                    state.countHeldDropped(dropped)
                    return (dropped, state.heldDropReports.add(dropped, now: lastRound) + state.heldDropReports.due(now: lastRound), state.held.takeDropped())
                }
                let spans = traceDropped(frames, cause: "dropped: no stream function it was held for came within \(configuration.unroutedHold.duration)")
                countNoRoute(dropped, exemplars: spans)
                for tag in report { logDropped(tag) }
            }
        }
    }

    /// A frame the full hold refused (it was to be held for `claim`) ends its
    /// trace with a span that says so.
    private func traceRefusedByFullHold(_ frame: DataFrame, for claim: HeldFrames.Claim) -> SpanContext? {
        tracing.droppedHeldFrame(
            frame, waited: .zero, reason: HeldFrames.Reason(claim).attribute, missing: claim.owed,
            cause: "dropped: the hold was full (unrouted_hold.max_bytes \(configuration.unroutedHold.maximumBytes))")?.context.spanContext
    }

    /// Each held frame dropped ends its trace with a span that says so.
    /// Returns, by tag, the span of the last one recorded (an exemplar).
    private func traceDropped(_ frames: [HeldFrames.Entry], cause: String) -> [UInt32: SpanContext] {
        let now = ContinuousClock.now
        var last: [UInt32: SpanContext] = [:]
        for entry in frames {
            let span = tracing.droppedHeldFrame(
                entry.frame, waited: now - entry.heldAt, reason: entry.reason.attribute, missing: entry.owed, cause: cause)
            if let spanContext = span?.context.spanContext { last[entry.frame.tag] = spanContext }
        }
        return last
    }

    /// Held frames finally dropped that no stream function received: `no_route`,
    /// with a dropped frame's span of the tag as the exemplar.
    private func countNoRoute(_ dropped: [HeldFrames.Dropped], exemplars: [UInt32: SpanContext]) {
        guard metrics.isEnabled else { return }
        for tag in dropped where tag.unrouted > 0 {
            metrics.router(tag: tag.tag).noRoute.add(Double(tag.unrouted), exemplar: exemplars[tag.tag])
        }
    }

    /// Whether a per-tag line about held frames is within its budget; says
    /// once how many were not written in the last window.
    private func mayLogAboutHeldFrames() -> Bool {
        let (allowed, suppressed, budget) = state.withLock { state in
            let (allowed, suppressed) = state.heldLines.allow(now: .now)
            return (allowed, suppressed, (state.heldLines.limit, state.heldLines.window))
        }
        if suppressed > 0 {
            logger.warning("lines about held frames were not written: more tags than the budget in its window (the counts are in Zipper.statistics and the metrics)", metadata: [
                "lines": "\(suppressed)", "budget": "\(budget.0) per \(budget.1)",
            ])
        }
        return allowed
    }

    private func logDropped(_ tag: HeldFrames.Dropped) {
        guard mayLogAboutHeldFrames() else { return }
        var metadata: Logger.Metadata = [
            "tag": "\(DataPathMetrics.tagName(tag.tag))", "frames": "\(tag.frames)", "bytes": "\(tag.bytes)",
            "hold": "\(configuration.unroutedHold.duration)",
        ]
        if !tag.missing.isEmpty { metadata["functions"] = "\(Self.names(tag.missing))" }
        if tag.wasObserved {
            logger.warning("no stream function came back for this tag in time: frames held for it were dropped", metadata: metadata)
        } else {
            // A tag no function here has observed: maybe the end of a pipeline, whose frames Go drops at once.
            logger.info("no stream function came for this tag: frames held for it were dropped", metadata: metadata)
        }
    }

    /// The frames still held when the zipper closes: dropped, in one line
    /// (with the drops not yet reported).
    private func dropHeldAtClose() {
        let (dropped, unreported, frames) = state.withLock { state in
            let dropped = state.held.removeAll()
            state.countHeldDropped(dropped)
            return (dropped, state.heldDropReports.removeAll(), state.held.takeDropped())
        }
        let spans = traceDropped(frames, cause: "dropped: the zipper closed")
        for tag in unreported { logDropped(tag) }
        guard !dropped.isEmpty else { return }
        countNoRoute(dropped, exemplars: spans)
        logger.warning("frames held for stream functions were dropped: the zipper closed", metadata: [
            "frames": "\(dropped.reduce(0) { $0 + $1.frames })", "tags": "\(dropped.map { DataPathMetrics.tagName($0.tag) })",
        ])
    }

    /// A frame not sent to a slow consumer (the `drop` policy): counted, its
    /// trace ended with a span that says so, and the first of a burst said
    /// in a line that carries that frame's trace id.
    /// Returns the span's ids (an exemplar for the count).
    private func dropped(_ id: UInt64, tag: UInt32, tracedUnder parent: SpanContext?, logger: Logger) -> SpanContext? {
        let (member, first) = state.withLock { state -> (RouteMember?, Bool) in
            state.statistics.droppedFrames += 1
            guard var peer = state.peers[id] else { return (nil, false) }
            peer.droppedInBurst += 1
            state.peers[id] = peer
            return (peer.member, peer.droppedInBurst == 1)
        }
        guard let member else { return nil }
        let limit = configuration.slowConsumer.maximumBufferedBytes
        let span = tracing.droppedFrame(
            under: parent, tag: tag, reason: "slow_consumer", destination: .function(member.name),
            cause: "dropped: slow consumer: more than \(limit) bytes unacknowledged by \(member.name) (slow_consumer policy drop)")
        if first {
            tracing.withCurrent(span) {
                logger.warning("slow consumer: dropping frames for it until it catches up", metadata: [
                    YoMoLogField.toID: "\(member.clientID.forLog)", YoMoLogField.toName: "\(member.name.forLog)",
                    "max_buffered_bytes": "\(limit)",
                ])
            }
        }
        return span?.context.spanContext
    }

    /// Ends a burst of drops: one line with how many frames it missed.
    private func resumed(_ id: UInt64, logger: Logger) {
        guard configuration.slowConsumer.policy == .drop else { return }
        let ended = state.withLock { state -> (RouteMember, Int)? in
            guard var peer = state.peers[id], peer.droppedInBurst > 0 else { return nil }
            defer { peer.droppedInBurst = 0; state.peers[id] = peer }
            return (peer.member, peer.droppedInBurst)
        }
        if let (member, count) = ended {
            logger.warning("slow consumer caught up", metadata: [
                YoMoLogField.toID: "\(member.clientID.forLog)", YoMoLogField.toName: "\(member.name.forLog)", "dropped": "\(count)",
            ])
        }
    }

    /// Closes a slow consumer (the `disconnect` policy). The frame that found
    /// it slow ends its trace with a span that says so, and the line that
    /// says it carries that frame's trace id.
    /// Returns the span's ids (an exemplar for the count).
    private func disconnect(
        _ id: UInt64, _ destination: QUICFrameConnection, tag: UInt32, tracedUnder parent: SpanContext?, logger: Logger
    ) async -> SpanContext? {
        let member = state.withLock { state -> RouteMember? in
            guard let peer = state.peers.removeValue(forKey: id) else { return nil }
            state.routes.remove(id)
            state.statistics.slowConsumerDisconnects += 1
            return peer.member
        }
        guard let member else { return nil }
        let reason = "slow consumer: more than \(configuration.slowConsumer.maximumBufferedBytes) bytes unacknowledged"
        let span = tracing.droppedFrame(
            under: parent, tag: tag, reason: "slow_consumer_disconnected", destination: .function(member.name),
            cause: "dropped: \(reason) by \(member.name), disconnected (slow_consumer policy disconnect)")
        tracing.withCurrent(span) {
            logger.warning("disconnecting slow consumer", metadata: [
                YoMoLogField.toID: "\(member.clientID.forLog)", YoMoLogField.toName: "\(member.name.forLog)", "reason": "\(reason)",
            ])
        }
        await destination.close(reason: reason)
        return span?.context.spanContext
    }
}

extension QUICConfiguration {
    /// The Go zipper's timers: idle timeout 5 s, keep-alive 2 s.
    public static var zipperDefault: QUICConfiguration {
        var configuration = QUICConfiguration.default
        configuration.idleTimeout = .seconds(5)
        configuration.keepAliveInterval = .seconds(2)
        return configuration
    }
}

extension Zipper: Service {}

/// A routed frame's outgoing metadata and where its values are read from.
/// A struct, not an enum with payloads: taking a case's payload out went
/// through the runtime's generic tuple copy and destroy (callgrind: 270–600
/// instructions per round trip).
private struct RoutedMetadata {
    /// Values are read from the received bytes in place (`view`), or else
    /// from the decoded merge.
    private let view: MetadataView?
    private let decoded: Metadata?
    /// The metadata sent, and the digits each write of it writes over it.
    private let bytes: ByteBuffer
    private let patch: MetadataPatch?

    /// The received bytes, with the patch written over them wherever the frame is encoded.
    static func patched(_ view: MetadataView, _ patch: MetadataPatch) -> Self {
        Self(view: view, decoded: nil, bytes: view.bytes, patch: patch)
    }

    /// Read in place, sent as these bytes.
    static func view(_ view: MetadataView, _ bytes: ByteBuffer) -> Self {
        Self(view: view, decoded: nil, bytes: bytes, patch: nil)
    }

    static func decoded(_ metadata: Metadata, _ bytes: ByteBuffer) -> Self {
        Self(view: nil, decoded: metadata, bytes: bytes, patch: nil)
    }

    /// The frame to send, and what each write of it must write over its metadata.
    func frame(tag: UInt32, payload: ByteBuffer) -> (DataFrame, MetadataPatch?) {
        (DataFrame(tag: tag, metadata: bytes, payload: payload), patch)
    }

    /// A key's value after the merge: the frame's, else the connection's.
    func value(_ key: MetadataView.Key, _ connectionMetadata: Metadata) -> String? {
        if let view { return view.string(key) ?? connectionMetadata[key.string] }
        return decoded?[key.string]
    }
}

extension String {
    /// A peer-supplied string as it goes into a log line: at most 64 characters,
    /// with the full length said when cut, and no control characters.
    var forLog: String { peerText(limit: 64) }
}
