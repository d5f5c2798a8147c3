import FoundationEssentials
import Glibc
import Synchronization
internal import Logging
internal import YoMoLogging
internal import ServiceLifecycle
internal import NIOCore
internal import YoMoQUIC
internal import YoMoWire
internal import YoMoTracing
internal import Tracing
internal import YoMoMetrics

/// The connection life of a client: dial, serve frames, reconnect, close. Shared by
/// stream functions (which handle frames) and sources (which only write).
final class ClientRuntime: Sendable {
    /// What a handler's task needs of `Setup`, in one object: the task
    /// captures it with one reference count update instead of one per field
    /// of `Setup` (every frame's task did; with the handler on other threads,
    /// each of those was an atomic operation on a cache line they share).
    final class HandlerSupport: Sendable {
        let tracing: DataPathTracer
        let metrics: DataPathMetrics
        let errorHandler: StreamFunction.ErrorHandler?

        init(_ setup: Setup) {
            tracing = setup.tracing
            metrics = setup.metrics
            errorHandler = setup.errorHandler
        }
    }

    /// What a client's handlers share across its connections: their limits,
    /// the pipe handler's queue, and how their frames are written.
    final class Handlers: Sendable {
        let writer: FrameWriter
        let support: HandlerSupport
        let inFlight = InFlightCounter()
        let limits: InFlightCounter.Limits
        /// A pipe handler's frames wait here, at most 1,024 of them and
        /// `maximumHandlerBytes` of payload and metadata.
        let pipeQueue: AsyncQueue<PipeFrame>?
        /// A stream function: a close takes every frame sent before it (`closeWhenQuiet`).
        let closesWhenQuiet: Bool
        private let draining = Atomic(false)
        /// When and how long the limits held reading: for the log and the metrics.
        private let holds = Mutex(ReadingHolds())
        /// Frames an ended connection brought that waited for the async
        /// handlers' limits, oldest first, and their bytes: the next
        /// connection's reading starts them before its own frames.
        private let unstarted = Mutex((frames: CircularBuffer<UnstartedFrame>(), bytes: 0))

        init(_ setup: Setup, writer: FrameWriter) {
            self.writer = writer
            support = HandlerSupport(setup)
            limits = InFlightCounter.Limits(count: setup.handlerConcurrency, bytes: setup.maximumHandlerBytes)
            pipeQueue = setup.pipeHandler.map { _ in AsyncQueue(capacity: 1024, maximumWeight: setup.maximumHandlerBytes) }
            closesWhenQuiet = setup.handler != nil || setup.pipeHandler != nil
        }

        /// No more frames are taken: one waiting for the limits is turned away;
        /// the pipe handler's input ends after the frames queued, and those an
        /// ended connection left for the async handlers are still started by
        /// the drain (`drainHandlers`), within the close deadline.
        func stopTaking(_ logger: Logger) {
            inFlight.stopAdmitting()
            pipeQueue?.finish()
        }

        /// The close deadline came: the frames an ended connection left for the
        /// async handlers are not handled.
        func dropUnstarted(_ logger: Logger) {
            let dropped = unstarted.withLock { unstarted in
                defer { unstarted = ([], 0) }
                return unstarted.frames.count
            }
            if dropped > 0 {
                // Not told handled: a zipper that keeps what was not handled holds them for the next instance.
                logger.info("closing: frames a lost connection brought that waited for the handlers' limits are not handled", metadata: [
                    "frames": "\(dropped)",
                ])
            }
        }

        /// Keeps a frame of an ended connection for the next one's reading.
        func keepUnstarted(_ frame: UnstartedFrame) {
            unstarted.withLock { unstarted in
                unstarted.frames.append(frame)
                unstarted.bytes += frame.held
            }
        }

        /// The oldest frame kept by `keepUnstarted`.
        var firstUnstarted: UnstartedFrame? { unstarted.withLock { $0.frames.first } }

        /// Removes the oldest frame kept (`firstUnstarted`); false if a close's drain took it (or dropped it) meanwhile.
        func removeFirstUnstarted() -> Bool {
            unstarted.withLock { unstarted in
                guard let first = unstarted.frames.popFirst() else { return false }
                unstarted.bytes -= first.held
                return true
            }
        }

        var hasUnstarted: Bool { unstarted.withLock { !$0.frames.isEmpty } }

        var unstartedCount: Int { unstarted.withLock { $0.frames.count } }

        /// Removes the frames kept by `keepUnstarted` at the end that
        /// `picked` picks, back to the first it does not; returns them, oldest first.
        func removeTrailingUnstarted(where picked: (UnstartedFrame) -> Bool) -> [UnstartedFrame] {
            unstarted.withLock { unstarted in
                var removed: [UnstartedFrame] = []
                while let last = unstarted.frames.last, picked(last) {
                    removed.append(unstarted.frames.removeLast())
                    unstarted.bytes -= last.held
                }
                return removed.reversed()
            }
        }

        /// Handlers are at work on frames and may write more: an async handler
        /// running, or the pipe handler inside a frame or with frames queued.
        var areWorking: Bool {
            let running = inFlight.counted.handlers
            guard let queue = pipeQueue else { return running > 0 }
            return running > 1 || (running == 1 && !queue.consumerWaitsOnEmpty)
        }

        /// Ends the pipe handler's input after the frame it has: those queued
        /// behind it are dropped, not handled (their spans end in error, and
        /// nothing tells them handled, so a zipper that keeps what was not
        /// handled holds them for this function's next instance). How many;
        /// nil without a pipe handler.
        func dropQueuedPipeFrames(_ reason: String) -> Int? {
            guard let queue = pipeQueue else { return nil }
            let frames = queue.discardQueued()
            for frame in frames {
                frame.span?.setStatus(SpanStatus(code: .error, message: reason))
                frame.span?.end()
            }
            return frames.count
        }

        /// Frames taken that wait for a handler: queued for the pipe
        /// handler, or read and held back by the handlers' limits.
        var haveBacklog: Bool { pipeQueue?.isEmpty == false || holds.withLock { $0.isHolding } || hasUnstarted }

        /// True the first time only: that caller waits for the handlers.
        func beginDrain(_ logger: Logger) -> Bool {
            stopTaking(logger)
            return !draining.exchange(true, ordering: .relaxed)
        }

        /// The limits hold reading from now on; said at most every 10 s.
        func readingHeld(_ logger: Logger, _ message: Logger.Message, _ setup: Setup) {
            holds.withLock { $0.began(logger, message, setup) }
        }

        /// Reading goes on: the time it was held is counted.
        func readingResumed() { holds.withLock { $0.ended() } }

        /// What the metrics show: handlers running (the pipe handler is one),
        /// the bytes they hold or that wait for the pipe handler, and how long
        /// the limits held reading, a hold still going on included.
        var statistics: DataPathMetrics.HandlerStatistics {
            let counted = inFlight.counted
            return DataPathMetrics.HandlerStatistics(
                running: counted.handlers,
                heldBytes: counted.bytes + (pipeQueue?.queuedWeight ?? 0) + unstarted.withLock { $0.bytes },
                readingHeldSeconds: holds.withLock { $0.heldTime(at: .now) }.seconds)
        }
    }

    /// A frame read on a connection that ended while it waited for the async
    /// handlers' limits.
    struct UnstartedFrame: Sendable {
        var data: DataFrame
        var token: HandlingLedger.Token?
        /// What its handler will hold (its bytes and its task's).
        var held: Int
    }

    /// The times the handlers' limits held reading: how long in all, for the
    /// metrics, and said in the log at most every 10 s with how often, so a
    /// slowed source can be traced to this function.
    struct ReadingHolds {
        private var since: ContinuousClock.Instant?
        private var total = Duration.zero
        private var said = SaidAtMostEvery(.seconds(10))

        mutating func began(_ logger: Logger, _ message: Logger.Message, _ setup: Setup) {
            let now = ContinuousClock.now
            since = now
            guard let times = said.event(at: now) else { return }
            logger.warning(message, metadata: [
                "max_handler_bytes": "\(setup.maximumHandlerBytes.map { "\($0)" } ?? "none")",
                "handler_concurrency": "\(setup.handlerConcurrency.map { "\($0)" } ?? "none")",
                "times_held": "\(times)",
            ])
        }

        var isHolding: Bool { since != nil }

        mutating func ended() {
            guard let since else { return }
            (total, self.since) = (total + (.now - since), nil)
        }

        /// The time held until `now`, a hold still going on included.
        func heldTime(at now: ContinuousClock.Instant) -> Duration { total + (since.map { now - $0 } ?? .zero) }
    }

    struct Setup: Sendable {
        var settings: ClientSettings
        var tracing = DataPathTracer.disabled
        /// A provider this client made from the environment: shut down when it ends.
        var ownedProvider: TracerProvider? = nil
        var handler: StreamFunction.Handler? = nil
        var pipeHandler: StreamFunction.PipeHandler? = nil
        var errorHandler: StreamFunction.ErrorHandler? = nil
        var cron: (Schedule, StreamFunction.Handler)? = nil
        var handlerConcurrency: Int? = nil
        var maximumHandlerBytes: Int? = nil
        /// Limits of the outage buffer (0: writes fail while reconnecting).
        var outageBufferFrames = 0
        var outageBufferBytes = 0
        /// See `OutageBuffer.admitsBesidesPutBack` (a mesh link's client).
        var outageAdmitsBesidesPutBack = false
        /// The whole close: queued frames delivered, owned provider flushed.
        var shutdownTimeout: Duration = .seconds(5)
        var metrics = DataPathMetrics.disabled
        /// Offered what the outage buffer still holds when the client ends;
        /// true when it keeps them (a mesh link at its zipper's graceful
        /// close), and they are then not dropped (`MeshLink`).
        var keepsUndelivered: (@Sendable ([DataFrame]) -> Bool)? = nil
    }

    private struct State {
        /// Connecting, serving, reconnecting, draining: decided by the pure machine.
        var lifecycle = ClientLifecycle(policy: .default, retryInitialConnect: false, random: SystemRandomNumberGenerator())
        /// `end()` ran: writes fail with `.closed` (the machine may close a moment earlier).
        var ended = false
        var session: ClientSession?
        var reconnectCount = 0
        /// The connection whose unsettled frames head the outage buffer (its
        /// client id, and each frame's end offset there), for the next
        /// handshake: a zipper that still knows it says how far it had routed.
        var resumable: (previousID: String, ends: [Int])?
        /// `<base>-<reconnectCount>`, kept rather than built for every frame written.
        var clientID = ""
        var endReason: YoMoError?
        var endWaiters: [CheckedContinuation<Void, Never>] = []
        var serveTask: Task<Void, Never>?
        var tracing = DataPathTracer.disabled
        /// Set by the first close request: when delivery and the flush must be done.
        var closeDeadline: ContinuousClock.Instant?
        var shutdownTimeout: Duration = .seconds(5)
        var metrics = DataPathMetrics.disabled
        /// This client's line in `/readyz`, removed when it ends.
        var readinessProbe: Int?
        /// Writes made while there is no connection, delivered first after a reconnect.
        var outage = OutageBuffer(maximumFrames: 0, maximumBytes: 0)
        /// The last frame the outage dropped whose drop was traced (a write
        /// refused with the buffer full, a held frame discarded at the end):
        /// the drop count's exemplar.
        var lastOutageDropTraced: Exemplar?
        /// `Setup.keepsUndelivered`.
        var keepsUndelivered: (@Sendable ([DataFrame]) -> Bool)?
        /// Connections that took writes so far (`DeliveryMark`).
        var generation = 0
        /// A new connection takes the outage buffer's frames (`publish`):
        /// writes join them, also while the client closes.
        var publishing = false
        /// The newest of them, and the stream offset through which it carries
        /// everything earlier ones did not settle: its outage frames (the
        /// unsettled ones among them) and what it inherited.
        var carried: (session: ClientSession, through: Int)?
        /// Writes numbered as they come (`DeliveryMark.sequence`).
        var writeSequence = 0
        /// Where each numbered frame a newer connection carried (sent again, or
        /// kept as its zipper had it) ends there: a frame settles when that
        /// connection settles it, not when it settled all it carried. Until
        /// the fiftieth round of issue 14 only the second: a mesh link that
        /// carried a backlog to its downstream's next run kept its senders'
        /// frames until the downstream's function had handled the last, and
        /// an upstream crash meanwhile brought them all again
        /// (`yomo-fault-bench chaos --mesh --seed 13`). Entries of a
        /// connection that ended go at the next connection's carrying.
        var carriedAt: [Int: (session: ClientSession, end: Int)] = [:]
        /// Ended, and the owned tracer provider flushed and shut down: `wait()` may return.
        var finished = false
        /// Set while serving, so that close() stops them taking frames.
        var handlers: Handlers?
        /// Cancels the dial under way (the first connect's, with its retries, or
        /// a redial's wait and dial): close() calls it.
        var cancelDial: (@Sendable () -> Void)?
        /// Frames of earlier connections not told handled (or told a zipper
        /// that died), by transaction id, and when their connection ended: the
        /// zipper, or a source after a zipper's crash, sends them again, and a
        /// copy is not handled twice.
        var mayComeAgain: MayComeAgain = [:]

        /// Numbered frames `session` carried, each ending at its offset there.
        mutating func carry(_ frames: [(sequence: Int, end: Int)], to session: ClientSession) {
            for (sequence, end) in frames where sequence >= 0 { carriedAt[sequence] = (session, end) }
        }

        /// The close deadline, set by the first close request (or the first close).
        mutating func startCloseClock() -> ContinuousClock.Instant {
            if let closeDeadline { return closeDeadline }
            let deadline = ContinuousClock.now + shutdownTimeout
            closeDeadline = deadline
            return deadline
        }
    }

    /// Where a frame went (`sendMarked`): the connection it was written to
    /// and where it ends there, or none (held in the outage buffer), and how
    /// many connections had taken writes by then; and the client's number
    /// for the write, by which a newer connection that carried it says where
    /// (`State.carriedAt`; -1: none).
    struct DeliveryMark: Sendable {
        fileprivate let session: ClientSession?
        fileprivate let end: Int
        fileprivate let generation: Int
        fileprivate var sequence = -1
    }

    /// Where one write goes.
    private enum WriteRoute {
        case session(ClientSession)
        case buffered(firstOfOutage: Bool)
        case refused(YoMoError, logBurst: Bool)
    }

    /// What `publish` found.
    private enum Published {
        case serving
        /// close() came meanwhile: the session carries the held frames but no new writes.
        case closing
        /// The new connection failed while the held frames were written to it.
        case failed(any Error)
    }

    let name: String
    let zipper: String
    let clientType: ClientType
    let logger: Logger
    /// The random part of the client id; a reconnect changes only the suffix.
    let clientIDBase = NanoID.generate()
    private let state = Mutex(State())

    init(name: String, zipper: String, clientType: ClientType, logger: Logger) {
        self.name = name
        self.zipper = zipper
        self.clientType = clientType
        // The Go SDK's field names, set once on the logger rather than per record.
        let firstID = NanoID.clientID(base: clientIDBase, reconnectCount: 0)
        state.withLock { $0.clientID = firstID }
        switch clientType {
        case .source: self.logger = logger.yomoSource(id: firstID, zipperAddress: zipper)
        // A zipper's mesh link: the zipper's logger, which names the downstream.
        case .upstreamZipper: self.logger = logger
        default: self.logger = logger.yomoStreamFunction(name: name, id: firstID, zipperAddress: zipper)
        }
    }

    var clientID: String { state.withLock { $0.clientID } }

    var endReason: YoMoError? { state.withLock { $0.endReason } }

    /// A session is up: handshake done, not yet lost.
    var isConnected: Bool { state.withLock { $0.session != nil } }

    var isClosingForTesting: Bool { state.withLock { $0.lifecycle.isClosing } }

    /// The current session's connection has ended, and this client has not let go of it yet
    /// (it does once its in-flight handlers finish, or a write on it fails).
    var sessionEndedForTesting: Bool { state.withLock { $0.session?.connection.connection.closeReason != nil } }

    /// Bytes written on the current session that the zipper has not acknowledged (0 without one).
    var unacknowledgedBytesForTesting: Int { state.withLock { $0.session?.connection.connection.unacknowledgedBytes ?? 0 } }
    /// Frames of the current session kept to be sent again if it dies (0
    /// without one): `yomo.client.unsettled.messages`, and tests.
    var keptFrames: Int { state.withLock { $0.session?.keptFrames ?? 0 } }
    /// Data frames the current connection read (zero without handling receipts).
    var framesReceivedForTesting: Int { state.withLock { $0.session?.handling?.framesReceived ?? 0 } }
    /// Whether the zipper was told, and its QUIC stack acknowledged, that every frame read was handled.
    var handlingToldForTesting: Bool { state.withLock { $0.session?.handling }?.allHandledAndConfirmed ?? false }
    /// Frames a closing function gave back to the zipper (`giveBack`).
    var framesGivenBackForTesting: Int { framesGivenBack.load(ordering: .relaxed) }
    private let framesGivenBack = Atomic(0)
    /// Whether the current session's zipper sends delivery receipts.
    var receiptsForTesting: Bool { state.withLock { $0.session?.receipts ?? false } }

    var outageStatistics: OutageStatistics { state.withLock { $0.outage.statistics } }

    /// Closes the current connection as a lost one (tests: a path that broke
    /// while the zipper lives on).
    func dropConnectionForTesting() async {
        await state.withLock { $0.session }?.connection.close(reason: "dropped by a test")
    }

    /// Connections lost and redialled so far.
    var reconnectCountForTesting: Int { state.withLock { $0.reconnectCount } }

    /// Runs once, between a write's return and its record as unacknowledged:
    /// lets a test end the connection there, which timing alone seldom does.
    private let afterWriteHook = Mutex<(@Sendable () async -> Void)?>(nil)
    private let hasAfterWriteHook = Atomic<Bool>(false)

    func setAfterWriteHookForTesting(_ hook: @escaping @Sendable () async -> Void) {
        afterWriteHook.withLock { $0 = hook }
        hasAfterWriteHook.store(true, ordering: .releasing)
    }

    // MARK: Starting

    /// Connects and serves in the background until `close()` or a final error.
    func start(_ setup: Setup) async throws {
        let session = try await connectFirst(setup)
        registerReadiness()
        // Writable as soon as connect() returns, before the loop below runs.
        _ = await publish(session)
        // The serving loop outlives this call by design (Go's Connect-then-Wait).
        // It ends with the client; only handlers that ignored their cancellation
        // at the close deadline keep it alive after close() returned.
        let task = Task { await self.serve(setup, first: session) }
        state.withLock { $0.serveTask = task }
    }

    /// Connects and serves in the caller's task until shutdown or a final error.
    func run(_ setup: Setup) async throws {
        let session: ClientSession
        do {
            // A graceful shutdown (SIGTERM to a ServiceGroup) must end the dialling
            // too: against a zipper that never answered, run() redialled for good.
            session = try await cancelWhenGracefulShutdown { try await self.connectFirst(setup) }
        } catch {
            if Task.isShuttingDownGracefully, endReason?.code == .closed { return }
            throw error
        }
        registerReadiness()
        // Served in a task of its own, joined by waiting for the end: run()
        // returns at the close deadline even if handlers ignore cancellation.
        let task = Task { await self.serve(setup, first: session) }
        state.withLock { $0.serveTask = task }
        await withTaskCancellationOrGracefulShutdownHandler {
            await waitForEnd()
        } onCancelOrGracefulShutdown: {
            self.beginClose()
        }
        if let reason = endReason, reason.code != .closed { throw reason }
    }

    /// Connects (retrying as the setup says) and serves in the background
    /// without waiting for the first connection: writes are held in the outage
    /// buffer until it is up. For a zipper's mesh links, which must not hold
    /// up the zipper's start.
    func launch(_ setup: Setup) throws {
        try beginRunning(setup)
        let task = Task {
            let session: ClientSession
            do {
                session = try await self.dialInitial(setup)
            } catch {
                await self.endUnconnected(error, setup)
                return
            }
            await self.serve(setup, first: session)
        }
        state.withLock { $0.serveTask = task }
    }

    /// The first connection of `start` and `run`; a failure ends the client.
    private func connectFirst(_ setup: Setup) async throws -> ClientSession {
        try beginRunning(setup)
        do {
            return try await dialInitial(setup)
        } catch {
            // Cancelled (or shut down) before the zipper answered: closed, not lost.
            let cancelled = error is CancellationError || (error as? QUICError)?.kind == .cancelled
            await endUnconnected(cancelled ? YoMoError(.closed, "\(name) closed while connecting") : error, setup)
            throw error
        }
    }

    /// The first connection failed for good: the client ends, its own provider flushed.
    private func endUnconnected(_ error: any Error, _ setup: Setup) async {
        end(ClientCore.describe(error, zipper: setup.settings.zipper, dialling: true))
        await setup.ownedProvider?.shutdown()
        finish()
    }

    private func beginRunning(_ setup: Setup) throws {
        try state.withLock { state in
            guard state.lifecycle.state == .idle else {
                throw YoMoError(.invalidConfiguration, "\(name) is already connected or closed; create a new client to connect again")
            }
            state.lifecycle = ClientLifecycle(
                policy: setup.settings.reconnect, retryInitialConnect: setup.settings.retryInitialConnect,
                random: SystemRandomNumberGenerator())
            _ = state.lifecycle.start()
            state.tracing = setup.tracing
            state.outage = OutageBuffer(
                maximumFrames: setup.outageBufferFrames, maximumBytes: setup.outageBufferBytes,
                admitsBesidesPutBack: setup.outageAdmitsBesidesPutBack)
            state.shutdownTimeout = setup.shutdownTimeout
            state.metrics = setup.metrics
            state.keepsUndelivered = setup.keepsUndelivered
        }
    }

    /// Without it, close() waited out the retry delay or a QUIC handshake with
    /// a zipper that drops every packet.
    private func dialInitial(_ setup: Setup) async throws -> ClientSession {
        try await dialCancelledByClose { try await self.dialUntilConnected(setup) }
    }

    /// Runs a dial (its waits included) in a task of its own, which close()
    /// cancels: the task awaiting it is not close()'s to cancel (the caller's,
    /// or the serving task, which also holds the handlers still running).
    private func dialCancelledByClose<T: Sendable>(_ dial: @escaping @Sendable () async throws -> T) async throws -> T {
        let attempt = Task { try await dial() }
        // A close() that came before the task was stored is seen here.
        let closing = state.withLock { state in
            state.cancelDial = { attempt.cancel() }
            return state.lifecycle.cancelsDials
        }
        if closing { attempt.cancel() }
        defer { state.withLock { $0.cancelDial = nil } }
        return try await withTaskCancellationHandler { try await attempt.value } onCancel: { attempt.cancel() }
    }

    private func dialUntilConnected(_ setup: Setup) async throws -> ClientSession {
        while true {
            do {
                let session = try await ClientCore.dial(setup.settings, clientID: clientID, logger: logger)
                // .serve, or .drain when close() came meanwhile: publish() tells them apart.
                _ = state.withLock { $0.lifecycle.dialSucceeded() }
                logger.info("connected to zipper", metadata: [YoMoLogField.connectionID: "\(session.clientID)"])
                return session
            } catch {
                let action = state.withLock { $0.lifecycle.dialFailed(final: ClientCore.isFinal(error, policy: $0.lifecycle.policy)) }
                if case .end(.closed) = action { throw YoMoError(.closed, "\(name) closed while connecting") }
                guard case .dialAfter(let delay) = action else { throw ClientCore.describe(error, zipper: setup.settings.zipper, dialling: true) }
                logger.warning("cannot connect to zipper, retrying", metadata: ["zipper_addr": "\(setup.settings.zipper)", "error": "\(error)", "retry_in": "\(delay)"])
                // Woken early by close() (closed) or by the caller's cancellation.
                try? await Task.sleep(for: delay)
                if case .end = state.withLock({ $0.lifecycle.waitEnded() }) {
                    throw YoMoError(.closed, "\(name) closed while connecting")
                }
                try Task.checkCancellation()
            }
        }
    }

    // MARK: Serving

    private func serve(_ setup: Setup, first: ClientSession) async {
        let handlers = Handlers(setup, writer: FrameWriter { [self] frame, patch in try await send(frame, patch: patch) })
        state.withLock { $0.handlers = handlers }
        if setup.handler != nil || setup.pipeHandler != nil {
            setup.metrics.observeHandlers { [weak self] in self?.state.withLock { $0.handlers }?.statistics }
        }
        // The tracer is the task's for every handler task the group starts. The
        // group outlives every connection: a handler's frame may come from one
        // and its writes go out on the next.
        await setup.tracing.withTaskTracer { await withDiscardingTaskGroup { group in
            if let pipe = setup.pipeHandler, let queue = handlers.pipeQueue {
                // One pipe handler for the client's life, as in Go: its frames
                // come in order across reconnects.
                handlers.inFlight.enter()
                group.addTask {
                    defer { handlers.inFlight.leave() }
                    // One that throws is started again on the frames after the one it
                    // held (handled: the error handler has it), so the function keeps
                    // serving. Until the forty-second round of issue 14 it ended, the
                    // queue filled, and reading stopped for good while the function
                    // stayed connected (`uppercase-sfn`'s handler threw on a write
                    // the outage buffer refused).
                    while true {
                        let current = PipeCursor()
                        do {
                            try await pipe(PipeInput(queue: queue, cursor: current), PipeOutput(writer: handlers.writer, cursor: current))
                            current.finish()
                            return
                        } catch {
                            // Cancelled at the close deadline: its frame was not handled, and
                            // the zipper gives it to the next instance (counted handled, it was lost).
                            let cancelled = Task.isCancelled || error is CancellationError
                            if !cancelled { current.finish() }
                            let restarts = !queue.isFinished && !cancelled
                            self.report(YoMoError(.handlerFailed, "pipe handler of \(self.name) threw: \(error)\(restarts ? "; started again" : "")"), setup)
                            guard restarts else { return }
                            // One that throws before taking a frame is not spun on.
                            if !current.hasTakenAFrame { try? await Task.sleep(for: Self.pipeHandlerRestartDelay) }
                        }
                    }
                }
            }
            await serveUntilEnd(setup, first: first, handlers, &group)
            // Ended otherwise than by close(): handlers of the last connection may still run.
            await drainHandlers(handlers, setup, &group)
            // Every span ended before the client ended reaches the exporter, and
            // before wait(), run() or close() return: a process that exits right
            // after them loses nothing. Within what is left of the close deadline
            // (a collector that hangs must not hold the process past it).
            if let provider = setup.ownedProvider {
                if let deadline = state.withLock({ $0.closeDeadline }) {
                    await provider.shutdown(timeout: max(deadline - ContinuousClock.now, .milliseconds(250)))
                } else {
                    await provider.shutdown()
                }
            }
            // Before the group's end, which waits for handlers that ignored
            // cancellation: close() returns at its deadline all the same.
            finish()
        } }
    }

    /// `drainHandlers`, on `session`, whose handlers may work off what earlier
    /// connections brought: named to the zipper as they finish, and once more
    /// at the end (see `beginNamingHandledBefore`).
    private func drainHandlers(
        _ handlers: Handlers, _ setup: Setup, _ group: inout DiscardingTaskGroup, namingHandledBeforeOn session: ClientSession
    ) async {
        guard let handling = session.handling else { return await drainHandlers(handlers, setup, &group) }
        let naming = Task { await nameHandledBeforeAsFinished(handling, on: session) }
        await drainHandlers(handlers, setup, &group)
        naming.cancel()
        _ = nameHandledBefore(handling, on: session)
    }

    /// Stops taking frames and lets running handlers finish, their writes
    /// queued, until the close deadline; then cancels those left, says how
    /// many, and stops waiting for them.
    private func drainHandlers(_ handlers: Handlers, _ setup: Setup, _ group: inout DiscardingTaskGroup) async {
        guard handlers.beginDrain(logger) else { return }  // drained already
        let deadline = state.withLock { $0.startCloseClock() }
        // Frames a lost connection brought that waited for the async handlers'
        // limits were read, as a pipe handler's queue: a close handles them
        // too. Some may be the only copy left (settled for their source
        // within the function's pace, and their zipper died): until the
        // forty-fourth round of issue 14 a close dropped them, and a SIGTERM
        // while redialling lost 10 frames (`yomo-fault-bench chaos --seed 33
        // --async-handler`, `--handler-concurrency 3`).
        if let handler = setup.handler, handlers.pipeQueue == nil {
            await startUnstarted(handler, setup, handlers, &group) { next in
                await handlers.inFlight.enterWhileClosing(bytes: next.held, within: handlers.limits, until: deadline)
            }
            handlers.dropUnstarted(logger)
        }
        guard !(await handlers.inFlight.waitUntilEmpty(until: deadline)) else { return }
        var metadata: Logger.Metadata = ["handlers": "\(handlers.inFlight.counted.handlers)", "shutdown_timeout": "\(setup.shutdownTimeout)"]
        if let dropped = handlers.dropQueuedPipeFrames("not handled: the close deadline came") { metadata["pipe_frames_dropped"] = "\(dropped)" }
        logger.warning("handlers still running at the close deadline: cancelled, and closing without them", metadata: metadata)
        group.cancelAll()
    }

    /// Delivers what was written, then closes; gives up waiting for the zipper's
    /// acknowledgements at the close deadline (a frozen zipper must not hold a
    /// close for its whole idle timeout). `redialsIfLost`: a connection lost
    /// meanwhile is not said to have reached the deadline (the caller
    /// redials to deliver what it had not acknowledged).
    private func closeDelivering(_ session: ClientSession, reason: String, _ setup: Setup, redialsIfLost: Bool = false) async {
        let deadline = state.withLock { $0.startCloseClock() }
        let delivered = await session.connection.closeAfterDelivery(reason: reason, until: deadline)
        if redialsIfLost, let end = session.connection.connection.closeReason, Self.isLoss(end) { return }
        // A close that handlers held until the deadline has none left to wait
        // for the end of its stream: said only when frames were not
        // acknowledged (until the fifty-fourth round of issue 14 it was said
        // after every such close, with `unacknowledged_bytes=0`).
        let unacknowledged = session.connection.connection.unacknowledgedBytes
        if !delivered, unacknowledged > 0 {
            logger.warning("close deadline reached before the zipper acknowledged every frame", metadata: [
                "unacknowledged_bytes": "\(unacknowledged)",
                "shutdown_timeout": "\(setup.shutdownTimeout)",
            ])
        }
    }

    private func serveUntilEnd(_ setup: Setup, first: ClientSession, _ handlers: Handlers, _ group: inout DiscardingTaskGroup) async {
        var session: ClientSession? = first
        var delay = Duration.zero
        while true {
            if let current = session {
                let ended: (any Error)?
                switch await publish(current) {
                case .closing:
                    // close() came while dialling: deliver what was held and written, and
                    // what handlers still running from the last connection write, then close.
                    state.withLock { $0.session = current }
                    if let handling = current.handling {
                        _ = beginNamingHandledBefore(handling, state.withLock { $0.mayComeAgain }, on: current)
                    }
                    let copies = current.handling.map { handling in (handling, Task { await self.takeCopiesOnly(current, handling, handlers, setup) }) }
                    await drainHandlers(handlers, setup, &group, namingHandledBeforeOn: current)
                    if let (handling, reading) = copies {
                        current.connection.stopReading()
                        await reading.value
                        tellHandledOnce(handling, on: current)
                    }
                    state.withLock { $0.session = nil }
                    await closeDelivering(current, reason: ClientCore.finalCloseReason(of: clientType), setup, redialsIfLost: true)
                    // Lost under the close (its zipper died again) with answers
                    // or unsettled frames left: redialled to deliver them, below,
                    // as after a loss while serving. Until the fifty-sixth round of
                    // issue 14 the close ended here and dropped them, though the
                    // frames they answered were told handled (`yomo-fault-bench
                    // chaos --mesh --seed 9`: 3 frames lost).
                    if let lost = current.connection.connection.closeReason,
                       redialsToDeliver(after: lost, current, handlersWorking: false, setup) {
                        ended = lost
                    } else {
                        _ = state.withLock { $0.lifecycle.drained() }
                        end(YoMoError(.closed, "\(name) closed"))
                        return
                    }
                case .failed(let error):
                    ended = error
                case .serving:
                    ended = await serveSession(current, setup, handlers, &group)
                }
                // Closing: the handlers' last writes go out on this connection,
                // and then the word of what they handled: the zipper holds the rest
                // for this function's next instance, and would send it the handled ones too.
                // Unless the connection was lost under the close (a zipper killed
                // meanwhile): then they go out on the next one, as below.
                let closing = state.withLock { $0.lifecycle.isClosing }
                if closing, let ended, redialsToDeliver(after: ended, current, handlersWorking: handlers.areWorking, setup) {
                    // The handlers run on; their writes wait for the next connection.
                    deliverAfterLossUnderClose()
                } else if closing {
                    await drainHandlers(handlers, setup, &group, namingHandledBeforeOn: current)
                    if let handling = current.handling { tellHandledOnce(handling, on: current) }
                }
                state.withLock { if $0.session === current { $0.session = nil } }
                // A stream the zipper finished without a reason is redialled, as in Go.
                let action = state.withLock { $0.lifecycle.connectionLost(final: ended.map { ClientCore.isFinal($0, policy: setup.settings.reconnect) } ?? false) }
                let reason = ClientCore.describe(ended ?? YoMoError(.closedByPeer, "zipper closed the stream"), zipper: current.zipper)
                switch action {
                case .end(.closed):
                    // The handlers' last writes are queued: deliver them before closing.
                    await closeDelivering(current, reason: ClientCore.finalCloseReason(of: clientType), setup)
                    end(YoMoError(.closed, "\(name) closed"))
                    return
                case .dialAfter(let wait):
                    // Frames the dead connection took without the zipper acknowledging
                    // them go out again first on the next one: none is lost silently
                    // (a frame whose acknowledgement alone was lost arrives twice).
                    let shutDown = ended.map { ClientCore.describe($0, zipper: current.zipper).code == .listenerShutdown } ?? false
                    let taken = current.takeUnacknowledged(zipperShutDown: shutDown)
                    let unacknowledged = taken.map { ($0.frame, $0.sequence) }
                    state.withLock {
                        if !unacknowledged.isEmpty { $0.outage.resend(unacknowledged) }
                        $0.resumable = current.receipts && !shutDown && !taken.isEmpty ? (current.clientID, taken.map(\.end)) : nil
                    }
                    logger.warning("connection to zipper lost, reconnecting", metadata: [
                        "zipper_addr": "\(current.zipper)", "error": "\(reason)", "retry_in": "\(wait)",
                        "unacknowledged_frames_to_resend": "\(unacknowledged.count)",
                    ])
                    // Lost under a close: watched from now, with what it kept held to be sent again.
                    let (lostUnderClose, deadline) = state.withLock {
                        ($0.lifecycle.state == .delivering(attempt: 1), $0.closeDeadline)
                    }
                    if lostUnderClose, let deadline { Task { await self.stopDelivering(at: deadline, handlers) } }
                    setup.errorHandler?(reason)
                    await current.connection.close(reason: ClientCore.closeReason(after: ended, otherwise: "reconnecting"))
                    session = nil
                    state.withLock {
                        $0.reconnectCount += 1
                        $0.clientID = NanoID.clientID(base: clientIDBase, reconnectCount: $0.reconnectCount)
                    }
                    delay = wait
                default:
                    logger.error("connection to zipper ended", metadata: ["zipper_addr": "\(current.zipper)", "error": "\(reason)"])
                    await current.connection.close(reason: ClientCore.closeReason(after: ended, otherwise: "ended"))
                    finalEnd(action, reason, setup)
                    return
                }
            }
            do {
                guard let redialled = try await redial(after: delay, setup) else {
                    end(YoMoError(.closed, "\(name) closed"))
                    return
                }
                carryOver(to: redialled)
                session = redialled
                // .serve, or .drain when close() came meanwhile: publish() tells them
                // apart. Writes from now on join the held frames it sends first.
                _ = state.withLock { state in
                    state.publishing = true
                    return state.lifecycle.dialSucceeded()
                }
                logger.info("reconnected to zipper", metadata: [YoMoLogField.connectionID: "\(clientID)"])
                setup.metrics.reconnected()
            } catch {
                let action = state.withLock { $0.lifecycle.dialFailed(final: ClientCore.isFinal(error, policy: $0.lifecycle.policy)) }
                let reason = ClientCore.describe(error, zipper: setup.settings.zipper, dialling: true)
                switch action {
                case .dialAfter(let wait):
                    logger.warning("reconnect failed", metadata: ["zipper_addr": "\(setup.settings.zipper)", "error": "\(error)", "retry_in": "\(wait)"])
                    delay = wait
                case .end(.closed):
                    end(YoMoError(.closed, "\(name) closed"))
                    return
                default:
                    logger.error("reconnect failed for good", metadata: ["zipper_addr": "\(setup.settings.zipper)", "error": "\(reason)"])
                    finalEnd(action, reason, setup)
                    return
                }
            }
        }
    }

    /// The connection was lost while draining for a close, with something
    /// left to deliver: what the handlers still write, what the zipper had
    /// not settled. The serving loop redials for it until the close deadline
    /// (and watches that deadline once it has taken back what the lost
    /// connection kept).
    private func deliverAfterLossUnderClose() {
        if state.withLock({ $0.lifecycle.lostWhileDraining() }) == .deliverBeforeClosing {
            logger.info("closing: the connection was lost under the close; reconnecting until the close deadline to deliver what is left")
        }
    }

    /// Whether a closing client whose connection `ended` so redials to
    /// deliver what is left: a loss the policy redials after, with handlers
    /// that may still write, frames kept unsettled, or frames held.
    private func redialsToDeliver(after ended: any Error, _ session: ClientSession, handlersWorking: Bool, _ setup: Setup) -> Bool {
        Self.isLoss(ended) && !ClientCore.isFinal(ended, policy: setup.settings.reconnect)
            && (handlersWorking || session.keptFrames > 0 || state.withLock { $0.outage.count > 0 })
    }

    /// The connection ended by a loss, not by this side's close.
    private static func isLoss(_ error: any Error) -> Bool {
        guard let quic = error as? QUICError else { return true }
        return quic.kind != .closedLocally
    }

    /// Waits `delay`, then dials; nil when close() came first.
    private func redial(after delay: Duration, _ setup: Setup) async throws -> ClientSession? {
        let clientID = self.clientID
        return try await dialCancelledByClose { [self] () async throws -> ClientSession? in
            try? await Task.sleep(for: delay)
            if case .end = state.withLock({ $0.lifecycle.waitEnded() }) { return nil }
            let resuming = state.withLock { $0.resumable?.previousID }
            return try await ClientCore.dial(setup.settings, clientID: clientID, resuming: resuming, logger: logger)
        }
    }

    /// A new connection: what the zipper had routed of the previous one's
    /// unsettled frames (it still knew that connection) is not sent again,
    /// but kept until the zipper settles it.
    private func carryOver(to session: ClientSession) {
        let routed = state.withLock { state -> [DataFrame] in
            defer { state.resumable = nil }
            guard let resumable = state.resumable, let through = session.previousRoutedThrough else { return [] }
            let routed = state.outage.takeRouted(resumable.ends.prefix { $0 <= through }.count)
            // Kept as ending where the new connection's frames begin.
            state.carry(routed.map { ($0.sequence, session.start) }, to: session)
            return routed.map(\.frame)
        }
        if !routed.isEmpty {
            session.inherit(routed)
            logger.info("the zipper had these frames of the lost connection already: not sent again", metadata: ["frames": "\(routed.count)"])
        }
    }

    /// Ends the client for a reason it did not choose, and tells the error handler.
    private func finalEnd(_ action: ClientLifecycle<SystemRandomNumberGenerator>.Action, _ reason: YoMoError, _ setup: Setup) {
        let error = if case .end(.gaveUp(let attempts)) = action {
            YoMoError(.notConnected, "\(name) gave up reconnecting to \(setup.settings.zipper) after \(attempts) attempts: \(reason.message)")
        } else {
            reason
        }
        end(error)
        setup.errorHandler?(error)
    }

    /// Writes the frames held during the outage to `session`, oldest first, then
    /// makes it the one writes go to. Writes made meanwhile are held too (there is
    /// no session yet), so they follow in order; the loop ends when none are left.
    private func publish(_ session: ClientSession) async -> Published {
        let tracing = state.withLock { $0.tracing }
        var delivered = 0
        var carriedThrough = 0
        // Entries of connections that ended: their frames are carried here, if anywhere.
        state.withLock { state in
            state.carriedAt = state.carriedAt.filter { $0.value.session.connection.connection.closeReason == nil }
            state.publishing = true
        }
        defer { state.withLock { $0.publishing = false } }
        while true {
            let (frames, closing, summary) = state.withLock { state -> ([OutageBuffer.Waiting], Bool, (buffered: Int, dropped: Int)?) in
                let closing = state.lifecycle.isClosing || state.ended
                let frames = state.outage.takeWaiting()
                guard frames.isEmpty else { return (frames, closing, nil) }
                state.generation += 1
                state.carried = (session, max(session.start, carriedThrough))
                // Closing too: the handlers still running write on it. Set
                // later, the writes in between found the client closing with
                // no connection, and were refused.
                state.session = session
                return ([], closing, state.outage.endOutage())
            }
            if frames.isEmpty {
                if let summary, summary.buffered > 0 || summary.dropped > 0 {
                    logger.info("delivered the frames written while disconnected", metadata: [
                        "delivered": "\(delivered)", "dropped": "\(summary.dropped)",
                    ])
                }
                return closing ? .closing : .serving
            }
            var carried: [(sequence: Int, end: Int)] = []
            for (index, waiting) in frames.enumerated() {
                do {
                    // Its wait, on a span of its own after the writer's (a frame sent again: another).
                    let frame = tracing.outageFrame(
                        waiting.frame, waited: .now - waiting.since, resent: waiting.resent, meshLink: clientType == .upstreamZipper)
                    let end = try await session.connection.write(.data(frame))
                    session.recordWrite(frame, endingAt: end, sequence: waiting.sequence, logger: logger)
                    carried.append((waiting.sequence, end))
                    carriedThrough = end
                } catch {
                    state.withLock {
                        $0.outage.delivered(index)
                        $0.outage.putBack(frames[index...])
                        $0.carry(carried, to: session)
                    }
                    return .failed(error)
                }
            }
            state.withLock {
                $0.outage.delivered(frames.count)
                $0.carry(carried, to: session)
            }
            delivered += frames.count
        }
    }

    /// How long a pipe handler that threw without taking a frame waits before it is started again.
    static let pipeHandlerRestartDelay: Duration = .seconds(1)

    /// How long a stream function recognizes a frame it finished on a
    /// connection that ended, if it comes again: longer than a source's
    /// redial takes after its zipper's crash.
    static let copiesWindow: Duration = .seconds(60)

    /// At most this many frames are noted as ones that may come again
    /// after the zipper's word (about 100 bytes each): past them a copy may
    /// be handled again, at least once.
    static let copiesNotedAtMost = 16_384
    /// Every this many frames looked up, those noted that were finished
    /// `copiesWindow` ago are forgotten: the lookups end with them.
    static let copiesPrunedEvery = 4096

    /// The frames that may come again, by `CopyKey`: the token a copy
    /// finishes with, and since when it is known.
    typealias MayComeAgain = [CopyKey: (token: HandlingLedger.Token, since: ContinuousClock.Instant)]

    /// What `mayComeAgain` still needs at `now`: a frame a handler has yet
    /// to finish, and one finished within `copiesWindow`.
    static func stillToRecognize(_ mayComeAgain: MayComeAgain, at now: ContinuousClock.Instant) -> MayComeAgain {
        mayComeAgain.filter { now - $0.value.since < copiesWindow || !$0.value.token.isFinished }
    }

    /// What a connection's reading does about copies besides looking each
    /// frame up in `mayComeAgain`.
    struct CopyWatch {
        /// Set by the zipper's word that copies may follow
        /// (`ReceiptFrame.copiesMayFollow`): until then every frame read is
        /// noted too, since an original may come after the word (a backlog
        /// the zipper held, a sender's earlier connection still routing), and
        /// its copy after it.
        var notingUntil: ContinuousClock.Instant?
        var lookupsSincePrune = 0
    }

    /// Reads frames until the session ends; returns why (nil: the stream ended).
    /// The handlers it starts go into `group` and may outlive it: a lost
    /// connection is redialled at once, not after the slowest handler.
    private func serveSession(
        _ session: ClientSession, _ setup: Setup, _ handlers: Handlers, _ group: inout DiscardingTaskGroup
    ) async -> (any Error)? {
        let (writer, inFlight, queue, handlerLimits) = (handlers.writer, handlers.inFlight, handlers.pipeQueue, handlers.limits)
        var ended: (any Error)?
        let handlingLedger = session.handling
        var mayComeAgain = handlingLedger == nil ? [:] : state.withLock { $0.mayComeAgain }
        var copyWatch = CopyWatch()
        // Admissions this connection's end turns away; once one is, every
        // frame read after it waits for the next connection too (in order).
        let scope = inFlight.newScope()
        var carrying = false
        var readingAhead = false
        // A closing pipe handler's frames read after its word, until the zipper's answer.
        var awaitingAnswer: [(frame: PipeFrame, weight: Int)] = []
        // The same for async handlers.
        var parked: [UnstartedFrame] = []
        // What the zipper said it holds for this closing function's name (`giveBackHeldCopies`).
        var heldAtZipper: Set<String> = []
        // A frame no handler gets counts as taken once nothing read before it waits for the pipe handler.
        func passedOver() {
            if let handlingLedger, queue?.isEmpty ?? true { handlingLedger.took(through: session.frames.consumedBytes) }
        }
        // The cron loop and the receipts of what was handled are this session's: they stop when it ends.
        await withDiscardingTaskGroup { sessionTasks in
            if let (schedule, handler) = setup.cron {
                sessionTasks.addTask { await self.runCron(schedule, handler, writer: writer, setup: setup) }
            }
            if let handlingLedger {
                sessionTasks.addTask { await self.tellHandled(handlingLedger, on: session) }
            }
            if let queue {
                sessionTasks.addTask {
                    // What an ended connection still holds unread is in memory
                    // already: read into the pipe handler's queue past its
                    // limits, so that the function redials now, not once its
                    // handler has worked through them. Until the forty-third
                    // round of issue 14 a 20 ms handler behind 1,700 frames
                    // stayed away from the next zipper for 35 s, its answers
                    // waiting to be sent again, and a crash of the function
                    // meanwhile lost them (`yomo-fault-bench chaos --seed 32`).
                    await session.connection.connection.waitUntilEnded()
                    if !Task.isCancelled { queue.letAllIn() }
                }
            } else if setup.handler != nil {
                sessionTasks.addTask {
                    // The same for async handlers at their limits: what the
                    // ended connection holds is kept for the next one, not
                    // read at the handlers' pace before the redial (they may
                    // not run more at once than `handlerConcurrency`). Until
                    // the forty-fourth round of issue 14 their answers waited
                    // for that redial.
                    await session.connection.connection.waitUntilEnded()
                    if !Task.isCancelled { inFlight.interruptAdmissions(scope: scope) }
                }
            }
            if let handlingLedger, beginNamingHandledBefore(handlingLedger, mayComeAgain, on: session) {
                sessionTasks.addTask { await self.nameHandledBeforeAsFinished(handlingLedger, on: session) }
            }
            // Frames an earlier connection brought still wait for the pipe
            // handler, and the zipper (or a source) may send again those it
            // was not told were handled: reading goes on past the full queue
            // by one more of its budgets, so that such a copy behind new
            // frames is recognized now, not after the backlog. A function
            // killed meanwhile left the copies to its next instance, which
            // handled them again (`yomo-fault-bench chaos --seed 32`, the
            // forty-fourth round of issue 14).
            if let queue, !queue.isEmpty, !mayComeAgain.isEmpty {
                queue.allowReadAhead()
                readingAhead = true
            }
            // First what an earlier connection left waiting for the async handlers.
            func admitUnstarted(_ next: UnstartedFrame) async -> Bool {
                if inFlight.tryEnter(bytes: next.held, within: handlerLimits) { return true }
                handlers.readingHeld(logger, "async handlers are at their limit: reading no frames until one finishes", setup)
                let admission = await inFlight.enter(bytes: next.held, within: handlerLimits, scope: scope)
                handlers.readingResumed()
                carrying = admission == .connectionEnded
                return admission == .admitted
            }
            if let handler = setup.handler, queue == nil {
                await startUnstarted(handler, setup, handlers, &group, admit: admitUnstarted)
            }
            do {
                reading: while let frame = try await session.frames.next() {
                    switch frame {
                    case .data(let data):
                        var token: HandlingLedger.Token?
                        if let handlingLedger {
                            let received = handlingLedger.received(end: session.frames.consumedBytes, length: data.encodedLength, frame: data)
                            token = received
                            if forwardIfCopy(data, as: received, from: &mayComeAgain, &copyWatch, setup) {
                                passedOver()
                                continue
                            }
                        }
                        // An async handler's metadata is read in place (decoded
                        // only if the handler reads it); a pipe handler's, or
                        // metadata the view cannot read, is decoded here.
                        let view = queue == nil ? MetadataView(data.metadata) : nil
                        var metadata = Metadata()
                        if view == nil {
                            do {
                                metadata = try Metadata(decoding: data.metadata)
                            } catch {
                                report(YoMoError(.invalidMetadata, "frame with tag 0x\(String(data.tag, radix: 16)) skipped: \(error)"), setup)
                                token?.finished()
                                passedOver()
                                continue
                            }
                        }
                        let length = data.payload.readableBytes
                        // The tid is passed, not read from a captured `var`: that costs a
                        // dynamic exclusivity check on every access in this loop.
                        func logReceived(_ span: YoMoSpan?, tid: @autoclosure () -> String?) {
                            setup.tracing.debug(logger, under: span, "frame received", metadata: YoMoLogField.frame(
                                tid: tid() ?? "", tag: data.tag, dataLength: length))
                        }
                        if let queue {
                            let span = setup.tracing.functionSpan(
                                name: name, handlerType: "pipe_handler", tag: data.tag, length: length, metadata: &metadata)
                            logReceived(span, tid: metadata[Metadata.ReservedKey.tid])
                            if setup.metrics.isEnabled { setup.metrics.consumer(tag: data.tag, handlerType: "pipe_handler").consumed.add() }
                            let pipeFrame = PipeFrame(tag: data.tag, dataBuffer: data.payload, metadata: metadata, span: span, handled: token)
                            if let handlingLedger, handlingLedger.zipperAnswersClosing {
                                switch handlingLedger.closingState {
                                case .no: break
                                case .awaitingAnswer:
                                    awaitingAnswer.append((pipeFrame, length + data.metadata.readableBytes))
                                    continue
                                case .givingBack:
                                    givenBack(count: 1, spans: span.map { [$0] } ?? [], setup)
                                    continue
                                }
                            }
                            if readingAhead, mayComeAgain.isEmpty || queue.isEmpty {
                                queue.endReadAhead()  // no copy to look for, or the earlier frames are taken
                                readingAhead = false
                            }
                            var waited = false
                            let taken = await queue.send(pipeFrame, weight: length + data.metadata.readableBytes) {
                                waited = true
                                handlers.readingHeld(logger, "the pipe handler is at its limit: reading no frames until it takes one", setup)
                            }
                            if waited { handlers.readingResumed() }
                            if !taken {
                                span?.end()
                                notHandledWhileClosing(tag: data.tag)
                                break reading
                            }
                        } else if let handler = setup.handler {
                            // What the handler holds until it returns: its frame and its task.
                            let held = length + data.metadata.readableBytes + StreamFunction.Options.handlerOverheadBytes
                            if !carrying, let handlingLedger, handlingLedger.zipperAnswersClosing {
                                switch handlingLedger.closingState {
                                case .no: break
                                case .awaitingAnswer:
                                    parked.append(UnstartedFrame(data: data, token: token, held: held))
                                    continue
                                case .givingBack:
                                    givenBack(count: 1, spans: givenBackSpans([data], setup), setup)
                                    continue
                                }
                            }
                            if !carrying, !inFlight.tryEnter(bytes: held, within: handlerLimits) {
                                handlers.readingHeld(logger, "async handlers are at their limit: reading no frames until one finishes", setup)
                                let admission = await inFlight.enter(bytes: held, within: handlerLimits, scope: scope)
                                handlers.readingResumed()
                                switch admission {
                                case .admitted: break
                                case .closing:
                                    notHandledWhileClosing(tag: data.tag)
                                    break reading
                                case .connectionEnded:
                                    carrying = true
                                    logger.info("the connection ended while frames waited for the async handlers' limits: they wait for the next connection, dialled now")
                                case .woken:
                                    // The closing word was said: it waits for the zipper's answer with what follows.
                                    parked.append(UnstartedFrame(data: data, token: token, held: held))
                                    continue
                                }
                            }
                            if carrying {
                                handlers.keepUnstarted(UnstartedFrame(data: data, token: token, held: held))
                                continue
                            }
                            startAsyncHandler(handler, data, view: view, metadata: metadata, held: held, token: token, setup, handlers, &group)
                        } else {
                            token?.finished()
                            passedOver()
                        }
                    case .goaway(let goaway):
                        throw YoMoError(.goaway, "zipper went away: \(goaway.message.peerText(limit: ClientCore.peerMessageLimit))")
                    case .rejected(let rejected):
                        throw YoMoError(.rejected, "zipper rejected \(name): \(rejected.message.peerText(limit: ClientCore.peerMessageLimit))")
                    case .receipt(let receipt):
                        if session.receipts { session.settle(through: Int(clamping: receipt.settledThrough)) }
                        if receipt.copiesMayFollow, let handlingLedger {
                            expectCopies(of: handlingLedger, on: session, into: &mayComeAgain, &copyWatch)
                        }
                        if !receipt.heldCopies.isEmpty, let handlingLedger {
                            giveBackHeldCopies(receipt.heldCopies, handlingLedger, &heldAtZipper, handlers, setup)
                        }
                        if receipt.closing, let unkept = receipt.unkeptThrough, let handlingLedger,
                           handlingLedger.closingState == .awaitingAnswer {
                            let bounds = GivingBack(handlingLedger, unkept: Int(clamping: unkept))
                            if let queue {
                                await giveBack(bounds, queue, readSince: awaitingAnswer, answerEnd: session.frames.consumedBytes, setup)
                                awaitingAnswer = []
                            } else if let handler = setup.handler {
                                giveBack(bounds, parked: parked, answerEnd: session.frames.consumedBytes, handlers, setup)
                                parked = []
                                await startUnstarted(handler, setup, handlers, &group, admit: admitUnstarted)
                            }
                        }
                        handlingLedger?.passed(end: session.frames.consumedBytes)
                        passedOver()
                    case .handshake, .handshakeAck, .connectTo:
                        logger.debug("ignoring unexpected frame", metadata: ["frame": "\(frame.type)"])
                        handlingLedger?.passed(end: session.frames.consumedBytes)
                        passedOver()
                    }
                }
            } catch {
                ended = error
            }
            sessionTasks.cancelAll()  // the cron loop, the receipts of what was handled
        }
        if let queue, !awaitingAnswer.isEmpty {
            // No answer came (the connection ended under the close): handled, as before giving back.
            queue.letAllIn()
            await queueForPipeHandler(awaitingAnswer, queue)
        }
        // The same for async handlers: as a frame that waited for their limits.
        for frame in parked { handlers.keepUnstarted(frame) }
        queue?.limitAgain()
        if let handlingLedger {
            let untold = handlingLedger.untold(acknowledged: session.connection.connection.acknowledgedBytes)
            // What an earlier connection brought and did not come again on this
            // one stays known while a handler has yet to finish it, and for
            // `copiesWindow` after: a source whose zipper died redials after
            // its own delay, maybe past the next zipper's death too (two kills
            // in a row handled 316 frames of a backlog twice,
            // `yomo-fault-bench chaos --seed 32`). Before, only the last
            // connection's were known.
            let now = ContinuousClock.now
            let earlier = Self.stillToRecognize(mayComeAgain, at: now)
            state.withLock { $0.mayComeAgain = earlier.merging(untold.mapValues { ($0, now) }) { _, latest in latest } }
        }
        return ended
    }

    /// Starts async handlers on the frames an ended connection left, oldest
    /// first, each once `admit` let it in by the limits (entered them); stops
    /// at the first it does not. The serving loop and a close's drain admit
    /// each their own way.
    private func startUnstarted(
        _ handler: @escaping StreamFunction.Handler, _ setup: Setup, _ handlers: Handlers, _ group: inout DiscardingTaskGroup,
        admit: (UnstartedFrame) async -> Bool
    ) async {
        while let next = handlers.firstUnstarted, await admit(next) {
            guard handlers.removeFirstUnstarted() else {
                handlers.inFlight.leave(bytes: next.held)  // taken meanwhile: by a close's drain, or the serving loop
                return
            }
            startUnstarted(handler, next, setup, handlers, &group)
        }
    }

    /// Starts an async handler on a frame an ended connection left, let in by the limits.
    private func startUnstarted(
        _ handler: @escaping StreamFunction.Handler, _ frame: UnstartedFrame, _ setup: Setup, _ handlers: Handlers,
        _ group: inout DiscardingTaskGroup
    ) {
        // Decoded once already, when it was read.
        let (view, metadata) = Self.readMetadata(of: frame.data)
        startAsyncHandler(handler, frame.data, view: view, metadata: metadata, held: frame.held, token: frame.token, setup, handlers, &group)
    }

    /// An unstarted frame's metadata as the serving loop read it: in place,
    /// or decoded where the view cannot read it.
    private static func readMetadata(of data: DataFrame) -> (view: MetadataView?, decoded: Metadata) {
        let view = MetadataView(data.metadata)
        return (view, view == nil ? (try? Metadata(decoding: data.metadata)) ?? Metadata() : Metadata())
    }

    /// An async handler's function span: from the metadata read in place
    /// (`trace`, its canonical values, when read), or from the decoded one.
    private func asyncHandlerSpan(
        _ data: DataFrame, view: MetadataView?, trace: MetadataView.CanonicalTrace?, decoded metadata: Metadata, _ setup: Setup
    ) -> YoMoSpan? {
        let length = data.payload.readableBytes
        if let view {
            return setup.tracing.functionSpan(name: name, handlerType: "async_handler", tag: data.tag, length: length, view: view, trace: trace)
        }
        return setup.tracing.functionSpan(name: name, handlerType: "async_handler", tag: data.tag, length: length, received: metadata)
    }

    /// Starts an async handler on a frame the limits let in.
    private func startAsyncHandler(
        _ handler: @escaping StreamFunction.Handler, _ data: DataFrame, view: MetadataView?, metadata: Metadata, held: Int,
        token: HandlingLedger.Token?, _ setup: Setup, _ handlers: Handlers, _ group: inout DiscardingTaskGroup
    ) {
        let (writer, inFlight, handling) = (handlers.writer, handlers.inFlight, handlers.support)
        var metadata = metadata
        let length = data.payload.readableBytes
        token?.taken()
        // The trace values as numbers, read once for the parent and the patch.
        let trace = setup.tracing.tracer.isEnabled ? view?.canonicalTrace : nil
        let span = asyncHandlerSpan(data, view: view, trace: trace, decoded: metadata, setup)
        setup.tracing.debug(logger, under: span, "frame received", metadata: YoMoLogField.frame(
            tid: (view.map { $0.string(.tid) } ?? metadata[Metadata.ReservedKey.tid]) ?? "", tag: data.tag, dataLength: length))
        // The span's ids go into the decoded metadata only if the
        // handler reads it, unless the received bytes cannot carry them.
        let resendable = setup.tracing.resendable(view, after: span, over: trace)
        if resendable == nil {
            if let view { metadata = view.decoded }
            setup.tracing.inject(span, into: &metadata)
        }
        let context = Context(
            tag: data.tag, data: data.payload, metadata: metadata, writer: writer, resendable: resendable)
        let consumer = setup.metrics.isEnabled ? setup.metrics.consumer(tag: data.tag, handlerType: "async_handler") : nil
        let tag = data.tag
        let handled = token
        group.addTask {
            defer { inFlight.leave(bytes: held) }
            // After the error handler, and after the handler's writes were queued:
            // the receipt that covers the frame follows them on the stream.
            // Not when cancelled at the close deadline: the zipper gives that
            // frame to the next instance (as a pipe handler's, forty-second round).
            defer { if !Task.isCancelled { handled?.finished() } }
            let started = ContinuousClock.now
            do {
                try await handling.tracing.run(span) { try await handler(context) }
                if let consumer {
                    consumer.consumed.add()
                    consumer.duration.record(secondsSince(started), spanContext: span?.spanContext)
                }
            } catch {
                if let consumer {
                    consumer.consumed.add()
                    handling.metrics.recordFailure(
                        tag: tag, handlerType: "async_handler", seconds: secondsSince(started), error: error,
                        spanContext: span?.spanContext)
                }
                // Under the frame's span: the error line and the error
                // handler's own logs carry the frame's trace id.
                handling.tracing.withCurrent(span) {
                    self.report(YoMoError(.handlerFailed, "handler of \(self.name) threw on tag 0x\(String(tag, radix: 16)): \(error)"), handling.errorHandler)
                }
            }
        }
    }

    /// Tells the zipper, every `HandlingLedger.interval` while frames are
    /// being handled, through where its frames are handled.
    private func tellHandled(_ handling: HandlingLedger, on session: ClientSession) async {
        for await _ in handling.wakeups {
            repeat {
                do { try await Task.sleep(for: HandlingLedger.interval) } catch { return }
            } while tellHandledOnce(handling, on: session)
        }
    }

    /// Tells the zipper the transaction ids of frames earlier connections
    /// brought that the handlers finished (the newest
    /// `HandlingLedger.idsToldOnReconnect`): the zipper, or a source after
    /// its crash, may send them again, and if this connection ends before
    /// the function reads such a copy, the zipper does not give it to the
    /// next instance. Until the forty-fourth round of issue 14 only a copy
    /// read told it, and a function killed (or frozen) just after its redial
    /// left hundreds to be handled again (`yomo-fault-bench chaos --seed 32`).
    private func tellHandledBefore(
        _ handling: HandlingLedger, _ mayComeAgain: MayComeAgain,
        on session: ClientSession
    ) {
        let finished = mayComeAgain.filter { $0.value.token.isFinished }
            .sorted { $0.value.since > $1.value.since }.prefix(HandlingLedger.idsToldOnReconnect).map(\.key.name)
        guard !finished.isEmpty else { return }
        let named = writeHandledBefore(Array(finished), handling, on: session)
        logger.debug("told the zipper the frames of earlier connections already handled", metadata: ["frames": "\(named)"])
    }

    /// Names the frames `names` (`CopyKey.name`) in receipts of at most
    /// `HandlingLedger.idsPerReceipt` names, as many as can be queued; how
    /// many were. Nothing more handled or taken than the zipper was told:
    /// these receipts only name frames.
    private func writeHandledBefore(_ names: [String], _ handling: HandlingLedger, on session: ClientSession) -> Int {
        let told = handling.toldSoFar
        var named = 0
        while named < names.count {
            let batch = Array(names[named..<min(named + HandlingLedger.idsPerReceipt, names.count)])
            guard (try? session.connection.tryWrite(control: handling.receipt(told, handledBefore: batch), limit: DeliveryReceipts.queueLimit)) == true else { break }
            named += batch.count
        }
        return named
    }

    /// Names to the zipper the frames of earlier connections its handlers
    /// finished (`tellHandledBefore`), and has this connection name the rest
    /// as they finish (`nameHandledBefore`): whether there are such. A
    /// closing function works them off while the zipper holds for its next
    /// instance the copies an upstream zipper or a source sends again
    /// meanwhile, routing it nothing: until the fifty-sixth round of issue 14
    /// the next instance handled them again (`yomo-fault-bench chaos --mesh
    /// --seed 9`: 287 frames).
    private func beginNamingHandledBefore(_ handling: HandlingLedger, _ mayComeAgain: MayComeAgain, on session: ClientSession) -> Bool {
        tellHandledBefore(handling, mayComeAgain, on: session)
        // In the order the handlers take them: each connection's, the oldest first.
        let unfinished = mayComeAgain.filter { !$0.value.token.isFinished }
            .sorted { ($0.value.since, $0.value.token.start) < ($1.value.since, $1.value.token.start) }
        handling.nameWhenFinished(unfinished.map { (name: $0.key.name, token: $0.value.token) })
        return !unfinished.isEmpty
    }

    /// Names what `nameHandledBefore` has to name every `HandlingLedger.interval`, until nothing is left or cancelled.
    private func nameHandledBeforeAsFinished(_ handling: HandlingLedger, on session: ClientSession) async {
        repeat {
            do { try await Task.sleep(for: HandlingLedger.interval) } catch { return }
        } while nameHandledBefore(handling, on: session)
    }

    /// Names the frames of earlier connections finished since it last did
    /// (`HandlingLedger.earlierFinished`); whether some are left to name.
    private func nameHandledBefore(_ handling: HandlingLedger, on session: ClientSession) -> Bool {
        let (finished, waiting) = handling.earlierFinished()
        let named = writeHandledBefore(finished, handling, on: session)
        guard named == finished.count else {
            // A zipper that stopped reading: the next round names them.
            handling.unnamed(Array(finished[named...]))
            return true
        }
        return waiting
    }

    /// A receipt if the frames handled in order moved; false when nothing is
    /// left to wait for. Receipts are cumulative: one that cannot be queued
    /// now (a zipper that stopped reading) is replaced by the next.
    @discardableResult
    private func tellHandledOnce(_ handling: HandlingLedger, on session: ClientSession) -> Bool {
        let quic = session.connection.connection
        let (tell, waiting) = handling.advance(acknowledged: quic.acknowledgedBytes)
        if let tell,
           (try? session.connection.tryWrite(control: handling.receipt(tell), limit: DeliveryReceipts.queueLimit)) == true {
            // Read after the write: at or past the receipt's end (a handler's write may follow it).
            handling.told(tell, receiptEnd: quic.sendProgress.written)
        }
        return waiting
    }

    /// Asks the zipper to route nothing more to this function
    /// (`ReceiptFrame.closing`), telling what is handled so far. False if it
    /// could not be queued now.
    private func tellClosing(_ handling: HandlingLedger, on session: ClientSession) -> Bool {
        let quic = session.connection.connection
        let tell = handling.advance(acknowledged: quic.acknowledgedBytes).tell
        let notice = handling.receipt(tell ?? handling.toldSoFar, closing: true)
        guard (try? session.connection.tryWrite(control: notice, limit: DeliveryReceipts.queueLimit)) == true else { return false }
        if let tell { handling.told(tell, receiptEnd: quic.sendProgress.written) }
        return true
    }

    /// A closing function that redialled to deliver its handlers' answers
    /// reads what the zipper gives it (the frames it held for the function,
    /// among them those this process took on an earlier connection) as
    /// copies only: each is finished with its original, at once if that one
    /// was handled, and told; anything else is left unhandled, and the zipper
    /// takes it back for the next instance. The zipper is asked to route
    /// nothing new here. Until the forty-second round of issue 14 it read
    /// nothing, and the next instance handled again what this one had
    /// handled during its close (`yomo-fault-bench chaos --seed 32`, 60 s:
    /// all of its 473 frames handled twice). A zipper that answers the word
    /// takes back what waits for the handlers too, as far as copies of it
    /// came (`giveBack`). Ends when reading stops.
    private func takeCopiesOnly(_ session: ClientSession, _ handling: HandlingLedger, _ handlers: Handlers, _ setup: Setup) async {
        let queue = handlers.pipeQueue
        var mayComeAgain = state.withLock { $0.mayComeAgain }
        var copyWatch = CopyWatch()
        var heldAtZipper: Set<String> = []
        if handling.zipperAnswersClosing { handling.awaitAnswer() }
        _ = tellClosing(handling, on: session)
        do {
            while let frame = try await session.frames.next() {
                let end = session.frames.consumedBytes
                switch frame {
                case .data(let data):
                    _ = forwardIfCopy(
                        data, as: handling.received(end: end, length: data.encodedLength, frame: data), from: &mayComeAgain, &copyWatch, setup)
                case .receipt(let receipt):
                    if session.receipts { session.settle(through: Int(clamping: receipt.settledThrough)) }
                    if receipt.copiesMayFollow { expectCopies(of: handling, on: session, into: &mayComeAgain, &copyWatch) }
                    if !receipt.heldCopies.isEmpty { giveBackHeldCopies(receipt.heldCopies, handling, &heldAtZipper, handlers, setup) }
                    if receipt.closing, let unkept = receipt.unkeptThrough, handling.closingState == .awaitingAnswer {
                        let bounds = GivingBack(handling, unkept: Int(clamping: unkept))
                        if let queue {
                            await giveBack(bounds, queue, readSince: [], answerEnd: end, setup)
                        } else {
                            // Nothing read here waits: what an ended connection left goes back from its tail.
                            giveBack(bounds, parked: [], answerEnd: end, handlers, setup)
                        }
                    }
                    handling.passed(end: end)
                default:
                    handling.passed(end: end)
                }
                tellHandledOnce(handling, on: session)
            }
        } catch {
            // The connection ended: nothing more to read.
        }
        // What came again and was not taken stays known, as after any connection.
        state.withLock { $0.mayComeAgain = mayComeAgain }
    }

    /// Whether `data` came again: the zipper (or a source, after the zipper
    /// crashed) sent a frame an earlier connection brought, or one this
    /// connection brought since the zipper's word (`expectCopies`), which is
    /// then finished as `copy` when that one's handler is, not handled
    /// again. While `watch` notes, a frame that is not a copy is noted as
    /// one that may come again.
    private func forwardIfCopy(
        _ data: DataFrame, as copy: HandlingLedger.Token,
        from mayComeAgain: inout MayComeAgain,
        _ watch: inout CopyWatch, _ setup: Setup
    ) -> Bool {
        guard !mayComeAgain.isEmpty || watch.notingUntil != nil, let key = CopyKey(data) else { return false }
        watch.lookupsSincePrune += 1
        if watch.lookupsSincePrune >= Self.copiesPrunedEvery {
            watch.lookupsSincePrune = 0
            let now = ContinuousClock.now
            mayComeAgain = Self.stillToRecognize(mayComeAgain, at: now)
        }
        guard let original = mayComeAgain[key]?.token else {
            if let until = watch.notingUntil {
                let now = ContinuousClock.now
                if now >= until {
                    watch.notingUntil = nil
                } else if mayComeAgain.count < Self.copiesNotedAtMost {
                    mayComeAgain[key] = (copy, now)
                }
            }
            return false
        }
        original.forward(to: copy)
        // The copy stands for the frame now: a third one (the zipper's hold
        // and a resend of the source's, or a second upstream restart) is
        // finished with it. Until the fifty-first round of issue 14 the entry
        // went with the first copy, and a later one, read while the function
        // noted frames after the zipper's word, was handled again
        // (`yomo-fault-bench chaos --mesh --seed 3`: 709 frames answered twice by
        // one process in 30 s).
        mayComeAgain[key] = (copy, ContinuousClock.now)
        if setup.metrics.isEnabled { setup.metrics.skippedCopy() }
        logger.debug("frame already taken: not handled again", metadata: YoMoLogField.frame(
            tid: key.tid, tag: data.tag, dataLength: data.payload.readableBytes))
        return true
    }

    /// The zipper said a sender whose frames it wrote here may send them
    /// again (`ReceiptFrame.copiesMayFollow`: an upstream zipper of the mesh
    /// connected anew, after a crash, and its source sends what it had not
    /// settled). The frames this connection brought that the zipper was not
    /// told of, or told of last (`HandlingLedger.untold`), are noted
    /// (`CopyKey`), and so is every
    /// frame read for `copiesWindow`: a copy of one is finished
    /// with it, not handled again. Until the fiftieth round of issue 14 only
    /// copies on a later connection were recognized, and a downstream's
    /// function handled again every frame of its backlog that its upstream
    /// zipper's crash brought again (`yomo-fault-bench chaos --mesh --seed
    /// 13`, a 20 ms pipe handler: 4,094 copies of 2,773 frames in 30 s).
    private func expectCopies(
        of handling: HandlingLedger, on session: ClientSession,
        into mayComeAgain: inout MayComeAgain,
        _ watch: inout CopyWatch
    ) {
        let now = ContinuousClock.now
        var noted = 0
        for (key, token) in handling.untold(acknowledged: session.connection.connection.acknowledgedBytes)
        where mayComeAgain.count < Self.copiesNotedAtMost && mayComeAgain[key] == nil {
            mayComeAgain[key] = (token, now)
            noted += 1
        }
        watch.notingUntil = now + Self.copiesWindow
        logger.info("the zipper says frames written here may come again: copies of those this connection brought are not handled twice", metadata: [
            "frames": "\(noted)",
        ])
    }

    /// The zipper answered this closing function's word with what it no
    /// longer keeps (`unkept`): the frames that wait for the pipe handler go
    /// back to the zipper unhandled, from the first of those at the queue's
    /// end that this connection brought (or an earlier one, whose copy this
    /// one read) starting past `unkept` and past what the zipper may have
    /// settled for its sender (those its next instance gets, as if this one
    /// had crashed, but without waiting for them), and so does every frame
    /// read from now on. `readSince`: the frames read since the word, after
    /// those queued. Until the fifty-third round of issue 14 a pipe handler
    /// slower than its source worked off its queue until the close deadline
    /// (`yomo-fault-bench chaos --mesh --seed 1`: every SIGTERM took 5 s), and
    /// until the fifty-fourth the frames an earlier connection brought too
    /// (`--mesh --seed 3`: 908 of them queued when a SIGTERM came 1.6 s after
    /// the zipper's graceful restart, and it took 5 s).
    private func giveBack(
        _ bounds: GivingBack, _ queue: AsyncQueue<PipeFrame>, readSince: [(frame: PipeFrame, weight: Int)], answerEnd: Int, _ setup: Setup
    ) async {
        var back = queue.removeTrailing { bounds.goesBack($0.handled) }
        // Frames read since the word come after those queued, in order: past the
        // first that goes back, every later one does too (both bounds are offsets).
        let handled = back.isEmpty ? readSince.prefix { !bounds.goesBack($0.frame.handled) } : []
        back += readSince.dropFirst(handled.count).map(\.frame)
        bounds.ledger.giveBack(from: bounds.start(of: back.map(\.handled)) ?? answerEnd)
        await queueForPipeHandler(handled, queue)
        givenBack(count: back.count, spans: back.compactMap(\.span), setup)
        // Said when there were any: every close of a pipe function whose zipper answers comes here.
        guard !back.isEmpty else { return }
        logger.info("closing: the frames queued for the pipe handler go back to the zipper, for this function's next instance", metadata: [
            "frames": "\(back.count)", "handled_first": "\(queue.count)",
        ])
    }

    /// The same for async handlers: of the frames read since the word
    /// (`parked`, in order), those from the first that goes back on return
    /// to the zipper unhandled; those before it wait for the handlers as
    /// frames an ended connection left (`Handlers.keepUnstarted`), and if
    /// there are none, such frames go back from their tail too. Until the
    /// fifty-fourth round of issue 14 a function whose async handlers were at
    /// their limits (`handlerConcurrency`) worked off what its connection had
    /// brought until the close deadline, and cancelled the handlers still
    /// running there (`yomo-fault-bench chaos --mesh --seed 1 --async-handler`,
    /// `--handler-concurrency 2`, a 20 ms handler: each of three SIGTERMs 5 s).
    private func giveBack(_ bounds: GivingBack, parked: [UnstartedFrame], answerEnd: Int, _ handlers: Handlers, _ setup: Setup) {
        let kept = parked.prefix { !bounds.goesBack($0.token) }
        var back = kept.isEmpty ? handlers.removeTrailingUnstarted { bounds.goesBack($0.token) } : []
        for frame in kept { handlers.keepUnstarted(frame) }
        back += parked.dropFirst(kept.count)
        bounds.ledger.giveBack(from: bounds.start(of: back.map(\.token)) ?? answerEnd)
        givenBack(count: back.count, spans: givenBackSpans(back.map(\.data), setup), setup)
        guard !back.isEmpty else { return }
        logger.info("closing: the frames waiting for the async handlers go back to the zipper, for this function's next instance", metadata: [
            "frames": "\(back.count)", "handled_first": "\(handlers.unstartedCount)",
        ])
    }

    /// The zipper holds, for this closing function's name, the frames `told`
    /// names (`ReceiptFrame.heldCopies`, with those it told before, `held`;
    /// `CopyKey.name`, or an id alone from a zipper from before): copies an upstream zipper or a source sent again of what an
    /// earlier connection brought, routed nothing here. Such frames still
    /// waiting for the handlers go back unhandled, from the tail of what
    /// waits, as far as every one has its copy there (its next instance gets
    /// them from the hold, in order, after what this one handles). Until the
    /// fifty-sixth round of issue 14 a function closed while it redialled
    /// worked them off until its deadline (`yomo-fault-bench chaos --mesh
    /// --seed 9`: 5 s, twice).
    private func giveBackHeldCopies(
        _ told: [String], _ handling: HandlingLedger, _ held: inout Set<String>, _ handlers: Handlers, _ setup: Setup
    ) {
        // Closing (async handlers with nothing unread say so without waiting for an answer).
        guard handling.closingState != .no || state.withLock({ $0.lifecycle.isClosing }) else { return }
        for name in told where held.count < Self.heldCopiesKept { held.insert(name) }
        let names = held
        // Of an earlier connection (this one's own go back by `giveBack`), with its copy held.
        func goesBack(_ token: HandlingLedger.Token?, _ key: @autoclosure () -> CopyKey?) -> Bool {
            guard let token, token.ledger !== handling, let key = key() else { return false }
            return key.isNamed(in: names)
        }
        let count: Int
        if let queue = handlers.pipeQueue {
            let back = queue.removeTrailing { goesBack($0.handled, CopyKey($0)) }
            givenBack(count: back.count, spans: back.compactMap(\.span), setup)
            count = back.count
        } else {
            let back = handlers.removeTrailingUnstarted { goesBack($0.token, CopyKey($0.data)) }
            givenBack(count: back.count, spans: givenBackSpans(back.map(\.data), setup), setup)
            count = back.count
        }
        guard count > 0 else { return }
        logger.info("closing: frames an earlier connection left go back unhandled: the zipper holds their copies for this function's next instance", metadata: [
            "frames": "\(count)",
        ])
    }

    /// Names of held copies a closing function keeps at most (`CopyKey.name`, about 50 bytes each).
    static let heldCopiesKept = 65_536

    /// Queues frames read while closing for the pipe handler, in order; one
    /// a finished queue turns away (the close deadline came) is not handled.
    private func queueForPipeHandler(_ frames: some Sequence<(frame: PipeFrame, weight: Int)>, _ queue: AsyncQueue<PipeFrame>) async {
        for (frame, weight) in frames where !(await queue.send(frame, weight: weight)) {
            frame.span?.end()
            notHandledWhileClosing(tag: frame.tag)
        }
    }

    /// Counts frames given back to the zipper unhandled, and ends their
    /// spans (a pipe handler's frame has one from its reading; an async
    /// handler's, which would have begun with its handler, from
    /// `givenBackSpans`).
    private func givenBack(count: Int, spans: [YoMoSpan] = [], _ setup: Setup) {
        framesGivenBack.add(count, ordering: .relaxed)
        if setup.metrics.isEnabled, count > 0 { setup.metrics.gaveBack(count) }
        for span in spans {
            span.setAttribute("yomo.given_back", true)
            span.end()
        }
    }

    /// Function spans for async handlers' frames given back before a handler
    /// began on them: the trace shows this instance had each frame and gave
    /// it back, then the zipper's hold, then the next instance. Until the
    /// fifty-fifth round of issue 14 it went from the zipper to the hold as
    /// if this instance had never had it.
    private func givenBackSpans(_ frames: [DataFrame], _ setup: Setup) -> [YoMoSpan] {
        guard setup.tracing.tracer.isEnabled else { return [] }
        return frames.compactMap { data in
            let (view, metadata) = Self.readMetadata(of: data)
            return asyncHandlerSpan(data, view: view, trace: view?.canonicalTrace, decoded: metadata, setup)
        }
    }

    /// What a closing function gives back at its zipper's answer: a frame
    /// that starts past what the zipper no longer keeps (`unkept`,
    /// `ReceiptFrame.unkeptThrough`) and ends past what it may have settled
    /// for its sender (`HandlingLedger.furthestSettleable`), as this
    /// connection (`ledger`) brought it.
    struct GivingBack {
        let ledger: HandlingLedger
        let unkept: Int
        let settleable: Int

        init(_ ledger: HandlingLedger, unkept: Int) {
            self.ledger = ledger
            self.unkept = unkept
            settleable = ledger.furthestSettleable
        }

        /// The frame as this connection brought it: itself, or the first copy
        /// of it read here, for one an earlier connection brought (what the
        /// zipper keeps, and takes back unfinished); nil if none came. Later
        /// copies start further on, so they go back if it does.
        func here(_ token: HandlingLedger.Token?) -> HandlingLedger.Token? {
            var token = token
            while let current = token, current.ledger !== ledger { token = current.copy }
            return token
        }

        func goesBack(_ token: HandlingLedger.Token?) -> Bool {
            here(token).map { !$0.mustBeHandled(unkept: unkept, settleable: settleable) } ?? false
        }

        /// Where the first of `tokens` starts here: nothing is told taken or
        /// handled past it. (A copy of a frame the function keeps may come after it.)
        func start(of tokens: [HandlingLedger.Token?]) -> Int? {
            tokens.compactMap { here($0)?.start }.min()
        }
    }

    /// close() came while a frame waited for the handlers' limits: it is not
    /// handled, as the frames the connection had not yet read.
    private func notHandledWhileClosing(tag: UInt32) {
        logger.info("closing: a frame that waited for the handlers' limits is not handled", metadata: [
            "tag": "0x\(String(tag, radix: 16))",
        ])
    }

    private func runCron(_ schedule: Schedule, _ handler: @escaping StreamFunction.Handler, writer: FrameWriter, setup: Setup) async {
        let clock = ContinuousClock()
        var next = clock.now
        while !Task.isCancelled {
            let delay: Duration
            if let interval = schedule.interval {
                next = next.advanced(by: interval)
                delay = next - clock.now
            } else {
                let now = Date().timeIntervalSince1970
                guard let fire = schedule.nextFire(afterUnixSeconds: Int64(now.rounded(.down))) else { return }
                delay = .milliseconds(Int64((Double(fire) - now) * 1000))
            }
            do { try await Task.sleep(for: max(delay, .zero)) } catch { return }
            var metadata = Metadata()
            metadata[Metadata.ReservedKey.tid] = NanoID.generate()
            metadata[Metadata.ReservedKey.sourceID] = clientID
            let span = setup.tracing.functionSpan(name: name, handlerType: "cron_handler", tag: 0, length: 0, metadata: &metadata)
            do {
                let context = Context(tag: 0, data: ByteBuffer(), metadata: metadata, writer: writer)
                try await setup.tracing.run(span) { try await handler(context) }
            } catch {
                report(YoMoError(.handlerFailed, "cron handler of \(name) threw: \(error)"), setup)
            }
        }
    }

    private func report(_ error: YoMoError, _ setup: Setup) {
        report(error, setup.errorHandler)
    }

    private func report(_ error: YoMoError, _ errorHandler: StreamFunction.ErrorHandler?) {
        logger.error("\(error.message)")
        errorHandler?(error)
    }

    // MARK: Writing

    /// Sends on the current connection; while reconnecting, holds the frame in the
    /// outage buffer, or fails when that is full or disabled. `patch` is written
    /// over the frame's metadata as it is encoded (or, for a frame held, first).
    func send(_ frame: DataFrame, patch: MetadataPatch? = nil) async throws {
        _ = try await sendMarked(frame, patch: patch)
    }

    /// `send`, saying where the frame went, so that its delivery can be
    /// followed (`isSettled`): a mesh link's receipts wait for it.
    /// `waitingSince`: when the frame began to wait before this call (a mesh
    /// link's queue); a frame held for the next connection waits from then.
    func sendMarked(_ frame: DataFrame, patch: MetadataPatch? = nil, waitingSince: ContinuousClock.Instant? = nil) async throws -> DeliveryMark {
        // A zipper closes the connection on a frame past its limit, and the
        // client ends (redialling would send it again): refused here instead.
        guard frame.encodedLength <= FrameDecoder.defaultMaximumFrameSize else {
            throw YoMoError(.frameTooLarge, """
                frame of \(frame.encodedLength) bytes (tag 0x\(String(frame.tag, radix: 16)), payload \(frame.payload.readableBytes) bytes) \
                is larger than \(FrameDecoder.defaultMaximumFrameSize) bytes, the largest a zipper takes: not sent
                """)
        }
        let (firstRoute, metrics, firstGeneration, sequence) = state.withLock { state in
            let sequence = state.writeSequence
            state.writeSequence += 1
            return (routeWrite(frame, patch, waitingSince: waitingSince, sequence: sequence, &state), state.metrics, state.generation, sequence)
        }
        var (route, generation) = (firstRoute, firstGeneration)
        let started = metrics.isEnabled ? ContinuousClock.now : nil
        func sent() {
            guard let started else { return }
            let producer = metrics.producer(tag: frame.tag)
            producer.sent.add()
            producer.duration.record(secondsSince(started))
        }
        while true {
            switch route {
            case .session(let session):
                let failure: any Error
                // A throw: not queued. Queued on a connection that ended meanwhile,
                // the frame is kept with the rest, or, if those were taken already,
                // held past the outage buffer's limits: it may have reached the
                // zipper, so it is not refused. Until the forty-second round of
                // issue 14 such a write threw, and was refused by a full outage
                // buffer while its frame was delivered (`yomo-fault-bench chaos
                // --faults zipper-kill`: 35 of 166 writes refused were delivered).
                var queued = false
                do {
                    let end = try await session.connection.write(frame, patch: patch, endingAfterQueueingThrows: false)
                    queued = true
                    if hasAfterWriteHook.load(ordering: .relaxed),
                       let hook = afterWriteHook.withLock({ hook in defer { hook = nil }; return hook }) {
                        hasAfterWriteHook.store(false, ordering: .relaxed)
                        await hook()
                    }
                    if session.recordWrite(frame, patch: patch, endingAt: end, sequence: sequence, logger: logger) {
                        sent()
                        return DeliveryMark(session: session, end: end, generation: generation, sequence: sequence)
                    }
                    // Queued, but the serving loop had already taken the ended
                    // connection's unacknowledged frames: this one was not among
                    // them (until the twenty-fifth round of issue 14, lost unsaid).
                    failure = YoMoError(.notConnected, "the connection ended while this frame was written")
                } catch {
                    failure = error
                }
                // The connection ended under this write: the serving loop will see
                // it too. Hold the frame for the next one instead of losing it (if
                // it was queued before the end, the zipper may get it twice).
                // A final end (the zipper closed with a reason) is not followed
                // by a reconnect: holding the frame would only drop it later.
                // Lost under a close: the serving loop may not have seen it yet.
                if Self.isLoss(failure), state.withLock({ state in
                    state.lifecycle.state == .draining && state.session === session
                        && !ClientCore.isFinal(failure, policy: state.lifecycle.policy)
                }) {
                    deliverAfterLossUnderClose()
                }
                route = state.withLock { state in
                    let final = ClientCore.isFinal(failure, policy: state.lifecycle.policy)
                    if state.session === session { state.session = nil }
                    // While redialling to deliver before the close, a handler's answer waits with the rest.
                    if state.lifecycle.cancelsDials || state.ended {
                        return .refused(YoMoError(.closed, "\(name) closed while this frame was written"), logBurst: false)
                    }
                    if final { return .refused(ClientCore.describe(failure, zipper: session.zipper), logBurst: false) }
                    generation = state.generation
                    return self.routeWrite(frame, patch, waitingSince: waitingSince, pastLimit: queued, sequence: sequence, &state)
                }
            case .buffered(let first):
                if first {
                    let limits = state.withLock { ($0.outage.maximumFrames, $0.outage.maximumBytes) }
                    logger.warning("not connected to zipper: holding writes until reconnected", metadata: [
                        "max_frames": "\(limits.0)", "max_bytes": "\(limits.1)",
                    ])
                }
                return DeliveryMark(session: nil, end: 0, generation: generation, sequence: sequence)
            case .refused(let error, let logBurst):
                if logBurst { logger.warning("dropping writes while reconnecting", metadata: ["error": "\(error)"]) }
                throw error
            }
        }
    }

    /// Whether the frame `mark` follows is settled: its connection's zipper
    /// settled it (with receipts; else acknowledged it), or a newer
    /// connection that carried it settled it there, or settled all it
    /// carried (a frame whose place there is not known). True once the
    /// client ended: what it still held is dropped, and said.
    func isSettled(_ mark: DeliveryMark, endedSettles: Bool = true) -> Bool {
        if let session = mark.session, session.isSettled(through: mark.end) { return true }
        let (ended, generation, carried, carriedAt) = state.withLock {
            ($0.ended, $0.generation, $0.carried, mark.sequence >= 0 ? $0.carriedAt[mark.sequence] : nil)
        }
        if ended { return endedSettles }
        // Not settled where it was written: anything not settled there is
        // carried to the next connection, whose own wait covers it.
        guard generation > mark.generation, let carried else { return false }
        if let carriedAt {
            if carriedAt.session.isSettled(through: carriedAt.end) { return true }
            if carriedAt.session.connection.connection.closeReason == nil { return false }
        }
        return carried.session.isSettled(through: carried.through)
    }

    /// Whether the frame `mark` follows was written to a connection that is
    /// still up: the one it was written to, or, that one gone, the newer one
    /// that carried it. The zipper has it, or will once it reads it, and its
    /// receipt waits on the zipper's own pace and rules (a function's pace,
    /// its hold), as a local function's backlog does, not on the path.
    /// Until the forty-eighth round of issue 14 a mesh link's receipt
    /// patience let its senders go of such frames too, and until the
    /// forty-ninth of those written to a connection that carried them or
    /// not yet acknowledged (a downstream that reads slowly).
    func isOnLiveConnection(_ mark: DeliveryMark) -> Bool {
        if let connection = mark.session?.connection.connection, connection.closeReason == nil { return true }
        let (generation, carried) = state.withLock { ($0.generation, $0.carried) }
        guard generation > mark.generation, let carried else { return false }
        return carried.session.connection.connection.closeReason == nil
    }

    /// Where the frames written so far end: on the current connection, or,
    /// with none, what the next one carries.
    func currentMark() -> DeliveryMark {
        state.withLock { state in
            let session = state.session
            return DeliveryMark(session: session, end: session?.dataWrittenThrough ?? 0, generation: state.generation)
        }
    }

    /// Waits until every frame written before the call is settled (see
    /// `isSettled`); frames written meanwhile are not waited for. Polls every
    /// millisecond: receipts come every 2 ms while frames flow.
    func flush(timeout: Duration) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        try state.withLock { state throws(YoMoError) in
            if state.ended { throw YoMoError(.closed, "\(name) is closed") }
            if state.lifecycle.state == .idle {
                throw YoMoError(.notConnected, "\(name) is not connected to a zipper: call connect() first")
            }
        }
        // Everything written on the connection so far, or, with none, what the next one carries.
        let mark = currentMark()
        while !isSettled(mark, endedSettles: false) {
            if state.withLock({ $0.ended }) {
                throw YoMoError(.closed, "\(name) ended before every frame written was settled")
            }
            guard clock.now < deadline else {
                throw YoMoError(.timedOut, """
                    \(name): the frames written are not all settled after \(timeout) \
                    (\(keptFrames) kept on the connection, \(outageStatistics.pendingFrames) waiting to be sent again)
                    """)
            }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    private func routeWrite(
        _ frame: DataFrame, _ patch: MetadataPatch?, waitingSince: ContinuousClock.Instant?, pastLimit: Bool = false, sequence: Int,
        _ state: inout State
    ) -> WriteRoute {
        if state.ended || state.lifecycle.state == .closed {
            return .refused(YoMoError(.closed, "\(name) is closed"), logBurst: false)
        }
        switch state.lifecycle.state {
        case .idle:
            return .refused(YoMoError(.notConnected, "\(name) is not connected to a zipper: call connect() first"), logBurst: false)
        case .draining where state.session == nil && !state.publishing:
            return .refused(YoMoError(.closed, "\(name) is closing and has no connection to write on"), logBurst: false)
        case .draining, .connecting, .serving, .reconnecting, .delivering, .closed:
            // While delivering before the close, a running handler's writes
            // join the held frames, and so do those while the connection that
            // came back takes them (until the fifty-sixth round of issue 14
            // refused: the handler threw, its frame counted handled;
            // `yomo-fault-bench chaos --mesh --seed 10`: one frame lost).
            if let session = state.session { return .session(session) }
            switch state.outage.admit(frame.applying(patch), now: waitingSince ?? .now, pastLimit: pastLimit, sequence: sequence) {
            case .buffered(let first):
                return .buffered(firstOfOutage: first)
            case .full(let first):
                let held = state.outage.statistics
                return .refused(YoMoError(.outageBufferFull, """
                    \(name) is reconnecting to \(zipper) and its outage buffer is full \
                    (\(held.pendingFrames) frames, \(held.pendingBytes) bytes held; \
                    limits: outageBufferFrames \(state.outage.maximumFrames), outageBufferBytes \(state.outage.maximumBytes))
                    """), logBurst: first)
            case .disabled(let first):
                return .refused(YoMoError(.notConnected, """
                    \(name) is reconnecting to \(zipper), and writes are not held meanwhile \
                    (the outage buffer is disabled: outageBufferFrames or outageBufferBytes is 0)
                    """), logBurst: first)
            }
        }
    }

    /// Writes a frame with a fresh tid and this client's id as the source id; a
    /// source traces it with its own span.
    func writeFresh(tag: UInt32, payload: ByteBuffer, target: String?) async throws {
        let tracing = state.withLock { $0.tracing }
        guard !RouteTable.isReserved(tag) else {
            throw YoMoError(.reservedTag, "tag 0x\(String(tag, radix: 16)) is reserved (0xF000-0xFFFF belong to the system)")
        }
        var metadata = Metadata(minimumCapacity: 6)  // with room for the trace keys
        metadata[Metadata.ReservedKey.sourceID] = clientID
        metadata[Metadata.ReservedKey.tid] = NanoID.generate()
        if let target { metadata[Metadata.ReservedKey.target] = target }
        guard clientType == .source else {
            tracing.injectCurrent(into: &metadata)
            try await send(DataFrame(tag: tag, metadata: metadata, payload: payload))
            return
        }
        let span = tracing.sourceSpan(name: name)
        do {
            try await send(DataFrame(tag: tag, metadata: tracing.metadata(metadata, carrying: span), payload: payload))
            tracing.debug(logger, under: span, in: ServiceContext.current ?? .topLevel, "frame written", metadata: YoMoLogField.frame(
                tid: metadata[Metadata.ReservedKey.tid] ?? "", tag: tag, dataLength: payload.readableBytes))
            tracing.endSourceSpan(span, name: name, tag: tag, length: payload.readableBytes)
        } catch {
            tracing.endSourceSpan(span, name: name, tag: tag, length: payload.readableBytes, failing: error)
            // A write the outage buffer refused: its failed span is the drop count's exemplar.
            if (error as? YoMoError)?.code == .outageBufferFull, let spanContext = span?.spanContext, let exemplar = Exemplar(spanContext: spanContext) {
                state.withLock { $0.lastOutageDropTraced = exemplar }
            }
            throw error
        }
    }

    // MARK: Ending

    /// Stops reading (in-flight handlers finish, their writes go out, the
    /// connection closes), or stops waiting to redial; `close()` also waits.
    func beginClose() {
        let (action, session, handlers, deadline, held, shutdownTimeout) = state.withLock { state in
            let deadline = state.startCloseClock()
            let held = state.outage.count
            // Handlers still at work on a lost connection's frames write their answers
            // for the next one: closing at once lost them (a zipper killed, then the
            // function SIGTERMed while it redialled; thirty-ninth round's chaos probe).
            let awaited = held > 0 || state.handlers?.areWorking == true
            return (state.lifecycle.closeRequested(holdingFrames: awaited), state.session, state.handlers, deadline, held, state.shutdownTimeout)
        }
        if case .stopReading = action, let session, let handlers, handlers.closesWhenQuiet {
            Task { await self.closeWhenQuiet(session, handlers, deadline: deadline) }
            return
        }
        // Reading may be held by the handlers' limits rather than waiting for a frame.
        handlers?.stopTaking(logger)
        switch action {
        case .stopReading: session?.connection.stopReading()
        case .cancelWait: cancelWaitForClose()
        case .deliverBeforeClosing:
            // Dropping them at once would lose what a source wrote during a blip
            // only because it is done writing: the reconnect goes on until the deadline.
            if held > 0 {
                logger.info("closing: reconnecting until the close deadline to deliver the frames held", metadata: [
                    "held_frames": "\(held)", "shutdown_timeout": "\(shutdownTimeout)",
                ])
            } else {
                logger.info("closing: reconnecting until the close deadline to deliver what the handlers still running write", metadata: [
                    "handlers": "\(handlers?.inFlight.counted.handlers ?? 0)", "shutdown_timeout": "\(shutdownTimeout)",
                ])
            }
            Task { await self.stopDelivering(at: deadline, handlers) }
        case .end:  // never connected
            end(YoMoError(.closed, "\(name) closed"))
            finish()
        default: break
        }
    }

    /// Ends the redialling that delivers before a close at the deadline, or
    /// sooner once nothing is held and no handler is left that may write.
    private func stopDelivering(at deadline: ContinuousClock.Instant, _ handlers: Handlers?) async {
        if let handlers {
            while ContinuousClock.now < deadline {
                // The handlers first: one that wrote and finished in between has its frame held.
                let working = handlers.areWorking
                let (delivering, held) = state.withLock { ($0.lifecycle.isDelivering, $0.outage.count) }
                guard delivering else { return }
                if !working && held == 0 { break }
                try? await Task.sleep(for: .milliseconds(5))
            }
        } else {
            try? await Task.sleep(until: deadline, clock: .continuous)
        }
        if state.withLock({ $0.lifecycle.stopDelivering() }) == .cancelWait { cancelWaitForClose() }
    }

    /// A stream function's close that loses nothing the zipper sent it: the
    /// zipper may send only what the window already allows; every frame that
    /// arrives is handled and every write acknowledged; the connection closes
    /// at a moment when nothing received is unread, so the zipper takes back
    /// whatever it could not send and holds it for this function's return.
    /// Until the thirtieth round of issue 14 reading stopped at once, and
    /// frames that arrived after it were acknowledged and never handled (a
    /// few per graceful restart under a steady source). At the deadline, the
    /// old way.
    private func closeWhenQuiet(_ session: ClientSession, _ handlers: Handlers, deadline: ContinuousClock.Instant) async {
        let connection = session.connection.connection
        await connection.freezeReceiveWindow()
        let inFlight = handlers.inFlight
        // Quiet: no async handler running; the pipe handler (counted for the
        // client's life) waiting for its next frame with none queued.
        // And the zipper told that every frame was handled, those of earlier
        // connections named: else it gives them to the function's next instance.
        let handling = session.handling
        let quiet: @Sendable () -> Bool = if let queue = handlers.pipeQueue {
            { queue.consumerWaitsOnEmpty && inFlight.counted.handlers <= 1 && handling.map { $0.isQuiet && $0.earlierNamed } ?? true }
        } else {
            { inFlight.counted.handlers == 0 && !handlers.hasUnstarted && handling.map { $0.isQuiet && $0.earlierNamed } ?? true }
        }
        // A zipper that welcomed handling receipts is asked to route nothing
        // more here, so the quiet moment comes once the frames on their way
        // are handled. Under a steady source whose handlers overlap it never
        // came: every such close took the whole shutdownTimeout and cancelled
        // handlers (fortieth round of issue 14). Not while frames wait here
        // beyond the handlers: the zipper would hold what comes meanwhile for
        // the function's return from then on, and a backlog worked off until
        // the deadline, plus a restart, outlasts the hold (a pipe handler slower
        // than its source lost 1,772 of 4,002 frames so). Zippers that do not
        // know the request read a plain receipt.
        var closingSaid = handling == nil
        // A zipper that answers the word keeps what waits here for the
        // handlers (a pipe handler's queue; what async handlers at their
        // limits have yet to read) for this function's next instance: said
        // at once, and the window thawed, so that the answer comes through
        // behind what the zipper had written (read meanwhile, then given
        // back, as is the queue: `giveBack`). Async handlers with nothing
        // waiting handle what is on its way, as before: were no instance to
        // come back, the zipper's hold would drop what they gave back.
        let answers = handling?.zipperAnswersClosing == true
        while ContinuousClock.now < deadline {
            let waiting = handlers.haveBacklog || connection.unreadBytes > 0
            // (Once frames wait for the answer, so is the word said again if it could not be queued.)
            let givesBack = answers && (handlers.pipeQueue != nil || waiting || handling?.closingState != .no)
            if let handling, !closingSaid, givesBack || !waiting {
                if givesBack { handling.awaitAnswer() }
                closingSaid = tellClosing(handling, on: session)
                if closingSaid, givesBack {
                    await connection.thawReceiveWindow()
                    // A frame waiting for the async handlers' limits waits for the answer: the reading goes on to it.
                    if handlers.pipeQueue == nil { inFlight.wakeAdmissions() }
                }
            }
            if handlers.pipeQueue == nil {
                _ = await inFlight.waitUntilEmpty(until: closingSaid ? deadline : min(deadline, .now + .milliseconds(5)))
            }
            if let handling {
                _ = nameHandledBefore(handling, on: session)
                tellHandledOnce(handling, on: session)
            }
            let closed = await connection.closeIfQuiet(errorCode: QUICError.yomoCloseCode, reason: ClientCore.finalCloseReason(of: clientType), quiet: quiet)
            if closed {
                guard let lost = connection.closeReason, lost.kind != .closedLocally else { return }
                // Lost under the close: what it had received is still read and
                // handled, but not past the deadline. Until the forty-second round
                // of issue 14 a pipe handler slower than its source read on through
                // thousands of frames, and the process outlived its SIGTERM by
                // minutes (`yomo-fault-bench chaos --seed 32`).
                try? await Task.sleep(until: deadline, clock: .continuous)
                break
            }
            try? await Task.sleep(for: .milliseconds(1))
        }
        handlers.stopTaking(logger)
        session.connection.stopReading()
    }

    /// Wakes the wait before a redial, or ends the dial. Once serving, not the
    /// serving task: its handlers get until the deadline to finish.
    private func cancelWaitForClose() {
        let (task, handlers, cancelDial) = state.withLock { ($0.serveTask, $0.handlers, $0.cancelDial) }
        cancelDial?()
        if handlers == nil { task?.cancel() }
    }

    /// Returns once the client has ended and flushed the tracer provider it owns.
    /// Not after its serving task: that also waits for handlers that ignored
    /// cancellation at the close deadline.
    func close() async {
        beginClose()
        await waitForEnd()
    }

    /// The client is over: writes fail with `.closed` from now on. Waiters wake in
    /// `finish()`, once the owned tracer provider has been flushed.
    private func end(_ reason: YoMoError) {
        let (held, keep) = state.withLock { state -> ([OutageBuffer.Waiting], (@Sendable ([DataFrame]) -> Bool)?) in
            state.ended = true
            state.lifecycle.ended()
            if state.endReason == nil { state.endReason = reason }
            return (state.outage.handOverAll(), state.keepsUndelivered)
        }
        guard !held.isEmpty else { return }
        // Called outside the client's lock: the keeper takes its own.
        if let keep, keep(held.map(\.frame)) { return }
        let (discarded, tracing) = state.withLock { state in
            state.outage.countDropped(held.count)
            return (held, state.tracing)
        }
        // Each ends its trace with its wait, in error; the line carries the first one's trace id.
        let now = ContinuousClock.now
        let spans = discarded.map { waiting in
            tracing.droppedOutageFrame(
                waiting.frame, waited: now - waiting.since, resent: waiting.resent, meshLink: clientType == .upstreamZipper,
                cause: "dropped: the client ended before it reconnected: \(reason.message)")
        }
        // Frames not sampled have no span: the exemplar is the last recorded one.
        let recorded = spans.compactMap { $0 }
        if let exemplar = recorded.lazy.compactMap({ $0.context.spanContext.flatMap { Exemplar(spanContext: $0) } }).last {
            state.withLock { $0.lastOutageDropTraced = exemplar }
        }
        tracing.withCurrent(recorded.first) {
            logger.warning("dropped the frames written while disconnected: the client ended before it reconnected", metadata: [
                "dropped": "\(discarded.count)", "error": "\(reason)",
            ])
        }
    }

    /// `/readyz` says this client is ready while it has a connection; its QUIC
    /// health and its outage buffer go to the metrics.
    private func registerReadiness() {
        let metrics = state.withLock { $0.metrics }
        metrics.observeQUIC { [weak self] in
            self?.state.withLock { $0.session }?.connection.connection.statistics
        }
        metrics.observeOutage { [weak self] in
            self?.state.withLock { ($0.outage.statistics, $0.lastOutageDropTraced) } ?? (OutageStatistics(), nil)
        }
        metrics.observeUnsettled { [weak self] in self?.keptFrames ?? 0 }
        let id = Readiness.shared.register("\(clientType) \(name)") { [weak self] in self?.isConnected ?? false }
        state.withLock { $0.readinessProbe = id }
    }

    private func finish() {
        if let probe = state.withLock({ $0.readinessProbe }) { Readiness.shared.remove(probe) }
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.finished = true
            state.handlers = nil  // their writer holds this client
            defer { state.endWaiters.removeAll() }
            return state.endWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the client has ended and flushed its own tracer provider.
    func waitForEnd() async {
        await withCheckedContinuation { continuation in
            let finished = state.withLock { state -> Bool in
                if state.finished { return true }
                state.endWaiters.append(continuation)
                return false
            }
            if finished { continuation.resume() }
        }
    }

    /// Returns when the client ends or the process gets SIGINT or SIGTERM (then closes it).
    func waitForEndOrSignal() async {
        let signals = SignalWatcher()
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { await self.waitForEnd(); return false }
            group.addTask { await signals.wait(); return true }
            if await group.next() == true {
                logger.info("signal received, closing")
                await close()
            }
            signals.cancel()
            group.cancelAll()
            await group.waitForAll()
        }
    }
}

/// Counts running handlers so shutdown can wait for them, and a limit can hold reading.
final class InFlightCounter: Sendable {
    /// A handler is let in while fewer than `count` run and they hold fewer
    /// than `bytes`; `nil` is no limit.
    struct Limits: Sendable {
        var count: Int?
        var bytes: Int?

        func admit(count running: Int, bytes held: Int) -> Bool {
            running < (count ?? .max) && held < (bytes ?? .max)
        }
    }

    private struct Waiter {
        var id: Int
        var limits: Limits
        /// A frame waiting to be let in, which `stopAdmitting()` turns away.
        var admission: Bool
        /// The reading it waits for (`newScope()`), which `interruptAdmissions` turns away.
        var scope: Int?
        var continuation: CheckedContinuation<Bool, Never>
    }

    private struct State {
        var count = 0
        var bytes = 0
        var admitting = true
        var nextWaiterID = 0
        var waiters: [Waiter] = []
        var nextScope = 0
        /// Scopes up to this one are interrupted (each connection's reading
        /// has a newer one than those before it).
        var interruptedScope = -1
    }

    /// Why `enter(bytes:within:scope:)` returned.
    enum Admission {
        case admitted
        /// `stopAdmitting()`: the client is closing.
        case closing
        /// `interruptAdmissions(scope:)`: that reading's connection ended.
        case connectionEnded
        /// `wakeAdmissions()`: a closing function said its word, and the
        /// frame waits for its zipper's answer instead.
        case woken
    }

    private let state = Mutex(State())

    /// Counts one more, at once, whatever the limits.
    func enter() { state.withLock { $0.count += 1 } }

    /// Counts one more holding `bytes` if `limits` let it in now.
    /// `whileClosing`: after `stopAdmitting()` too.
    func tryEnter(bytes: Int, within limits: Limits, whileClosing: Bool = false) -> Bool {
        state.withLock { state in
            guard state.admitting || whileClosing, limits.admit(count: state.count, bytes: state.bytes) else { return false }
            state.count += 1
            state.bytes += bytes
            return true
        }
    }

    /// A scope for one connection's reading, for `interruptAdmissions`.
    func newScope() -> Int {
        state.withLock { state in
            defer { state.nextScope += 1 }
            return state.nextScope
        }
    }

    /// Counts one more holding `bytes`, once `limits` let it in; not when
    /// `stopAdmitting()` came first, nor `interruptAdmissions(scope:)`.
    func enter(bytes: Int, within limits: Limits, scope: Int? = nil) async -> Admission {
        while !tryEnter(bytes: bytes, within: limits) {
            guard await waitUntil(limits, admission: true, scope: scope, deadline: nil) else {
                return state.withLock { state in
                    if !state.admitting { return .closing }
                    if let scope, scope <= state.interruptedScope { return .connectionEnded }
                    return .woken
                }
            }
        }
        return .admitted
    }

    /// Counts one more holding `bytes` once `limits` let it in, after
    /// `stopAdmitting()` too (a frame already read that a close still
    /// handles); false if `deadline` comes first.
    func enterWhileClosing(bytes: Int, within limits: Limits, until deadline: ContinuousClock.Instant) async -> Bool {
        while !tryEnter(bytes: bytes, within: limits, whileClosing: true) {
            guard await waitUntil(limits, admission: false, scope: nil, deadline: deadline) else { return false }
        }
        return true
    }

    /// Turns away the frames of `scope` waiting to be let in, now and from
    /// now on: their connection ended. Others go on waiting.
    func interruptAdmissions(scope: Int) {
        let turnedAway = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            state.interruptedScope = max(state.interruptedScope, scope)
            let turnedAway = state.waiters.filter { $0.scope == scope }.map(\.continuation)
            state.waiters.removeAll { $0.scope == scope }
            return turnedAway
        }
        for waiter in turnedAway { waiter.resume(returning: false) }
    }

    func leave(bytes: Int = 0) {
        let ready = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            state.count -= 1
            state.bytes -= bytes
            guard !state.waiters.isEmpty else { return [] }
            let (count, held) = (state.count, state.bytes)
            let ready = state.waiters.filter { $0.limits.admit(count: count, bytes: held) }.map(\.continuation)
            state.waiters.removeAll { $0.limits.admit(count: count, bytes: held) }
            return ready
        }
        for waiter in ready { waiter.resume(returning: true) }
    }

    /// Turns away the frames waiting to be let in now, which wait for a
    /// closing function's answer instead (`Admission.woken`).
    func wakeAdmissions() { turnAwayAdmissions(stopping: false) }

    /// Lets nothing more in: a frame waiting for the limits is turned away (the client is closing).
    func stopAdmitting() { turnAwayAdmissions(stopping: true) }

    /// Resumes every frame waiting to be let in with a refusal; `enter` says
    /// why (`stopping`: `.closing` from now on, else `.woken`).
    private func turnAwayAdmissions(stopping: Bool) {
        let turnedAway = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            if stopping { state.admitting = false }
            let turnedAway = state.waiters.filter(\.admission).map(\.continuation)
            state.waiters.removeAll(where: \.admission)
            return turnedAway
        }
        for waiter in turnedAway { waiter.resume(returning: false) }
    }

    /// How many are counted now, and the bytes they hold, read together.
    var counted: (handlers: Int, bytes: Int) { state.withLock { ($0.count, $0.bytes) } }

    /// True once nothing is counted; false if `deadline` comes first.
    func waitUntilEmpty(until deadline: ContinuousClock.Instant) async -> Bool {
        await waitUntil(Limits(count: 1, bytes: nil), admission: false, scope: nil, deadline: deadline)
    }

    private func waitUntil(_ limits: Limits, admission: Bool, scope: Int?, deadline: ContinuousClock.Instant?) async -> Bool {
        let id = state.withLock { state in
            defer { state.nextWaiterID += 1 }
            return state.nextWaiterID
        }
        // The timer resumes this waiter alone, if it is still waiting.
        let timer = deadline.map { deadline in
            Task { [self] in
                try? await Task.sleep(until: deadline, clock: .continuous)
                let expired = state.withLock { state -> CheckedContinuation<Bool, Never>? in
                    guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                    return state.waiters.remove(at: index).continuation
                }
                expired?.resume(returning: false)
            }
        }
        defer { timer?.cancel() }
        return await withCheckedContinuation { continuation in
            let now = state.withLock { state -> Bool? in
                if admission && !state.admitting { return false }
                if let scope, scope <= state.interruptedScope { return false }
                if limits.admit(count: state.count, bytes: state.bytes) { return true }
                // Past the deadline the timer has looked already (or is about to find nothing).
                if let deadline, ContinuousClock.now >= deadline { return false }
                state.waiters.append(Waiter(id: id, limits: limits, admission: admission, scope: scope, continuation: continuation))
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }
}

/// Opens once, for good: `wait()` returns once `fire()` was called, before or
/// after (a signal; a connection that has left, or a deadline). One waiter.
final class Latch: Sendable {
    private let state = Mutex<(done: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    func fire() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.done = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            let done = state.withLock { state -> Bool in
                if state.done { return true }
                state.waiter = continuation
                return false
            }
            if done { continuation.resume() }
        }
    }

    /// Waits until every latch has fired, or `deadline` came (then fires them).
    static func waitForAll(_ latches: [Latch], until deadline: ContinuousClock.Instant) async {
        let giveUp = Task {
            try? await Task.sleep(until: deadline)
            for latch in latches { latch.fire() }
        }
        for latch in latches { await latch.wait() }
        giveUp.cancel()
    }
}

