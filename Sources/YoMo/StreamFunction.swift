import FoundationEssentials
import Synchronization
public import Logging
public import ServiceLifecycle
internal import NIOCore
public import YoMoQUIC
public import YoMoTracing
public import YoMoMetrics
internal import YoMoWire

/// A YoMo stream function: connects to a zipper, receives the DataFrames of the
/// tags it observes, and hands each to your handler (the Go SDK's
/// `yomo.NewStreamFunction`).
///
/// ```swift
/// let sfn = StreamFunction(name: "upper", zipper: "localhost:9000", options: .init(observedTags: [0x33]))
/// sfn.setHandler { ctx in
///     try await ctx.write(tag: 0x34, data: ctx.data.map { ($0 >= 97 && $0 <= 122) ? $0 - 32 : $0 })
/// }
/// try await sfn.connect()
/// await sfn.wait()
/// ```
public final class StreamFunction: Sendable {
    public struct Options: Sendable {
        /// The tags whose frames this function gets (`WithObserveDataTags`).
        public var observedTags: [UInt32]
        /// `name:payload`, e.g. `token:secret` (`WithCredential`).
        public var credential: String?
        /// Only frames written with this target reach this function (wanted target).
        public var wantedTarget: String
        /// TLS (`WithClientTLSConfig`); `nil` means what `YOMO_TLS_*` ask for, and by
        /// default no verification, like Go.
        public var tls: TLSConfiguration?
        /// QUIC settings (`WithClientQuicConfig`).
        public var quic: QUICConfiguration
        /// The SDK's log records go here (`WithLogger`).
        public var logger: Logger
        /// How dropped connections are dialled again.
        public var reconnect: ReconnectPolicy
        /// Whether `connect()` itself retries until the zipper answers (`WithReConnect`).
        public var retryConnect: Bool
        /// At most this many async handlers run at once; `nil` is unlimited, like Go.
        public var handlerConcurrency: Int?
        /// At most this many bytes of frames are held by running async handlers:
        /// each counts its payload, its metadata and ``handlerOverheadBytes`` for
        /// its task. Past it the function reads no more frames until handlers
        /// finish, so the zipper's slow-consumer policy applies (by default the
        /// source is slowed) instead of this process growing without bound. A
        /// frame is always taken when nothing is held. `nil` is unlimited, like Go.
        public var maximumHandlerBytes: Int?
        /// How long to wait for the zipper's answer to the handshake.
        public var handshakeTimeout: Duration
        /// Where spans go (`WithSfnTracerProvider`). `nil`: what the environment asks
        /// for (`OTEL_EXPORTER_OTLP_ENDPOINT`, …), else no tracing at all; a provider
        /// made that way is flushed and shut down when the client closes.
        public var tracerProvider: TracerProvider?
        /// While reconnecting, `write` holds up to this many frames and delivers them,
        /// in order, before any later write once connected again; beyond it `write`
        /// throws `.outageBufferFull`. 0 turns holding off: `write` throws `.notConnected`.
        public var outageBufferFrames: Int
        /// The same bound in bytes (encoded frames); 0 turns holding off.
        public var outageBufferBytes: Int
        /// How long `close()` (and SIGTERM in `wait()`) may take in all: delivering
        /// the frames still queued, then flushing the tracer provider the client
        /// made from the environment. At the deadline, what is left is dropped,
        /// counted and reported in one log line.
        public var shutdownTimeout: Duration
        /// Where the data path's metrics go (`messaging.process.duration`, …).
        /// `nil`: the process's provider (`YoMoMetrics.bootstrap`), which records
        /// nothing unless an executable turned metrics on.
        public var meterProvider: MeterProvider?
        /// Ask the zipper for delivery receipts: a frame written is kept, to be
        /// sent again after a reconnect, until the zipper says it reached the
        /// functions it goes to (or was held or dropped by its rules), not only
        /// until the zipper's QUIC stack took it: a zipper that crashes then
        /// loses none of it. Zippers of this SDK send receipts; Go's do not,
        /// and then a frame is kept until acknowledged, as without them.
        /// At least once either way: a frame can arrive twice after a crash.
        /// `nil`: what `YOMO_DELIVERY_RECEIPTS` says (`false`, `0`, `no` or
        /// `off` ask for none), else on.
        public var deliveryReceipts: Bool?

        /// What ``maximumHandlerBytes`` counts for a running handler besides its
        /// frame: its task and context (measured: `yomo-fault-bench backlog`).
        public static let handlerOverheadBytes = 4096

        public init(
            observedTags: [UInt32] = [],
            credential: String? = nil,
            wantedTarget: String = "",
            tls: TLSConfiguration? = nil,
            quic: QUICConfiguration = .default,
            logger: Logger = Logger(label: "yomo"),
            reconnect: ReconnectPolicy = .default,
            retryConnect: Bool = false,
            handlerConcurrency: Int? = nil,
            maximumHandlerBytes: Int? = 64 << 20,
            handshakeTimeout: Duration = .seconds(10),
            tracerProvider: TracerProvider? = nil,
            outageBufferFrames: Int = 1000,
            outageBufferBytes: Int = 8 << 20,
            shutdownTimeout: Duration = .seconds(5),
            meterProvider: MeterProvider? = nil,
            deliveryReceipts: Bool? = nil
        ) {
            self.meterProvider = meterProvider
            self.deliveryReceipts = deliveryReceipts
            self.observedTags = observedTags
            self.credential = credential
            self.wantedTarget = wantedTarget
            self.tls = tls
            self.quic = quic
            self.logger = logger
            self.reconnect = reconnect
            self.retryConnect = retryConnect
            self.handlerConcurrency = handlerConcurrency
            self.maximumHandlerBytes = maximumHandlerBytes
            self.handshakeTimeout = handshakeTimeout
            self.tracerProvider = tracerProvider
            self.outageBufferFrames = outageBufferFrames
            self.outageBufferBytes = outageBufferBytes
            self.shutdownTimeout = shutdownTimeout
        }
    }

    public typealias Handler = @Sendable (Context) async throws -> Void
    public typealias PipeHandler = @Sendable (PipeInput, PipeOutput) async throws -> Void
    public typealias ErrorHandler = @Sendable (YoMoError) -> Void
    public typealias Initializer = @Sendable () async throws -> Void

    public let name: String
    let client: ClientRuntime
    private let state: Mutex<State>

    private struct State {
        var options: Options
        /// Where an environment-made tracer provider reads its settings (tests set it).
        var environment: [String: String]?
        var handler: Handler?
        var pipeHandler: PipeHandler?
        var errorHandler: ErrorHandler?
        var initializer: Initializer?
        var cron: (Schedule, Handler)?
    }

    public init(name: String, zipper: String = "localhost:9000", options: Options = Options()) {
        self.name = name
        self.state = Mutex(State(options: options))
        self.client = ClientRuntime(name: name, zipper: zipper, clientType: .streamFunction, logger: options.logger)
    }

    // MARK: Configuration (before connect)

    /// The tags to observe (`SetObserveDataTags`).
    public func setObserveDataTags(_ tags: [UInt32]) { state.withLock { $0.options.observedTags = tags } }
    public func setObserveDataTags(_ tags: UInt32...) { setObserveDataTags(tags) }

    /// Only frames written with this target reach this function.
    public func setWantedTarget(_ target: String) { state.withLock { $0.options.wantedTarget = target } }

    /// Runs once before the first frame, e.g. to load a model (`Init`). If it
    /// throws, `connect()` fails with that error.
    public func setInit(_ initializer: @escaping Initializer) { state.withLock { $0.initializer = initializer } }

    /// Handles each frame; frames are handled concurrently (`SetHandler`).
    public func setHandler(_ handler: @escaping Handler) { state.withLock { $0.handler = handler } }

    /// Gets frames in arrival order as a sequence and writes results whose order
    /// is kept on the wire (`SetPipeHandler`). Replaces the async handler.
    public func setPipeHandler(_ handler: @escaping PipeHandler) { state.withLock { $0.pipeHandler = handler } }

    /// Gets every error that does not end the function: a throwing handler, a
    /// frame with bad metadata, a lost connection (`SetErrorHandler`).
    public func setErrorHandler(_ handler: @escaping ErrorHandler) { state.withLock { $0.errorHandler = handler } }

    /// Runs `handler` on a schedule (`@every 1s` or a cron line) while connected
    /// (`SetCronHandler`); its context has no incoming data.
    public func setCronHandler(_ schedule: String, _ handler: @escaping Handler) throws {
        let parsed = try Schedule(schedule)
        state.withLock { $0.cron = (parsed, handler) }
    }

    public var wantedTarget: String { state.withLock { $0.options.wantedTarget } }

    // MARK: Lifecycle

    /// Runs the initializer, connects and starts serving in the background;
    /// returns once the zipper accepted the handshake (`Connect`).
    public func connect() async throws {
        let setup = try await prepare()
        try await client.start(setup)
    }

    /// Returns when the function has closed: `close()`, a final error, SIGINT or
    /// SIGTERM (`Wait`); a tracer provider it made from the environment has been
    /// flushed and shut down by then.
    public func wait() async {
        await client.waitForEndOrSignal()
    }

    /// Stops taking frames, lets in-flight handlers finish and their writes go
    /// out, then closes the connection (`Close`).
    public func close() async {
        await client.close()
    }

    /// Writes a frame with a fresh tid (`Write`).
    public func write(tag: UInt32, data: some Sequence<UInt8>) async throws {
        try await client.writeFresh(tag: tag, payload: ByteBuffer(bytes: data), target: nil)
    }

    public func writeWithTarget(tag: UInt32, data: some Sequence<UInt8>, target: String) async throws {
        try await client.writeFresh(tag: tag, payload: ByteBuffer(bytes: data), target: target)
    }

    /// Waits until every frame written before the call has reached the stream
    /// functions it goes to: settled by the zipper's delivery receipts (their
    /// QUIC stacks have it, or the zipper's rules dropped it), or, from a
    /// zipper without receipts (Go's, `delivery_receipts: false`),
    /// acknowledged by the zipper. Across a reconnection it waits for the
    /// frames sent again. A zipper that crashes after this returns has lost
    /// none of them. Throws `.timedOut` after `timeout` (the frames are still
    /// kept and sent again if needed), `.closed` if the client ended first,
    /// `.notConnected` before `connect()`.
    public func flush(timeout: Duration = .seconds(10)) async throws {
        try await client.flush(timeout: timeout)
    }

    /// Why the function ended, once it has.
    public var endReason: YoMoError? { client.endReason }

    /// What happened to the frames written while reconnecting.
    public var outageStatistics: OutageStatistics { client.outageStatistics }

    /// Tests: the environment an environment-made tracer provider reads.
    func setEnvironmentForTesting(_ environment: [String: String]) { state.withLock { $0.environment = environment } }

    /// Connects and serves until cancelled, graceful shutdown, or a final error,
    /// which it throws (a swift-service-lifecycle `Service`'s `run()`).
    public func run() async throws {
        let setup = try await prepare()
        try await client.run(setup)
    }

    private func prepare() async throws -> ClientRuntime.Setup {
        let (options, handler, pipe, errorHandler, initializer, cron, environment) = state.withLock {
            ($0.options, $0.handler, $0.pipeHandler, $0.errorHandler, $0.initializer, $0.cron, $0.environment)
        }
        guard handler != nil || pipe != nil || cron != nil else {
            throw YoMoError(.invalidConfiguration, "stream function \(name) has no handler: call setHandler, setPipeHandler or setCronHandler first")
        }
        // Before the initializer runs and a tracer provider is made.
        let settings = try ClientSettings(name: name, clientType: .streamFunction, zipper: client.zipper, options: options)
        if let initializer {
            do {
                try await initializer()
            } catch {
                throw YoMoError(.initializerFailed, "stream function \(name): initializer failed: \(error)")
            }
        }
        let (tracing, ownedProvider) = DataPathTracer.resolve(
            options.tracerProvider, serviceName: name, scope: "StreamFunction", environment: environment ?? ProcessEnvironment.current)
        let metrics = DataPathMetrics(
            provider: options.meterProvider ?? GlobalMeterProvider.provider, scope: "StreamFunction",
            component: ["messaging.consumer.group.name": name])
        metrics.observeTracing(options.tracerProvider ?? ownedProvider)
        return ClientRuntime.Setup(
            settings: settings,
            tracing: tracing,
            ownedProvider: ownedProvider,
            handler: handler,
            pipeHandler: pipe,
            errorHandler: errorHandler,
            cron: cron,
            handlerConcurrency: options.handlerConcurrency,
            maximumHandlerBytes: options.maximumHandlerBytes,
            outageBufferFrames: options.outageBufferFrames,
            outageBufferBytes: options.outageBufferBytes,
            shutdownTimeout: options.shutdownTimeout,
            metrics: metrics
        )
    }
}

extension ClientSettings {
    /// `YOMO_DELIVERY_RECEIPTS`: on unless it says `false`, `0`, `no` or `off`.
    static func deliveryReceipts(_ environment: [String: String]) -> Bool {
        guard let value = environment["YOMO_DELIVERY_RECEIPTS"]?.lowercased() else { return true }
        return !["false", "0", "no", "off"].contains(value)
    }

    init(name: String, clientType: ClientType, zipper: String, options: StreamFunction.Options) throws {
        try options.validate("\(clientType) \(name)")
        self.init(
            name: name,
            clientType: clientType,
            observedTags: options.observedTags,
            credential: options.credential.map(Credential.init),
            wantedTarget: options.wantedTarget,
            zipper: try ZipperAddress(zipper),
            quic: options.quic,
            tls: options.tls ?? .fromEnvironment(ProcessInfo.processInfo.environment),
            reconnect: options.reconnect,
            retryInitialConnect: options.retryConnect,
            handshakeTimeout: options.handshakeTimeout,
            deliveryReceipts: options.deliveryReceipts ?? Self.deliveryReceipts(ProcessInfo.processInfo.environment)
        )
    }
}

extension StreamFunction: Service {}
