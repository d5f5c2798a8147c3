import FoundationEssentials
import Synchronization
internal import Logging
public import NIOCore
internal import YoMoQUIC
internal import YoMoWire
internal import YoMoMetrics

/// A YoMo source: connects to a zipper and writes DataFrames, each with the
/// source's id and a fresh tid (the Go SDK's `yomo.NewSource`).
public final class Source: Sendable {
    public typealias Options = StreamFunction.Options
    public typealias ErrorHandler = @Sendable (YoMoError) -> Void

    public let name: String
    let client: ClientRuntime
    private let state: Mutex<(options: Options, errorHandler: ErrorHandler?)>

    public init(name: String, zipper: String = "localhost:9000", options: Options = Options()) {
        self.name = name
        self.state = Mutex((options, nil))
        self.client = ClientRuntime(name: name, zipper: zipper, clientType: .source, logger: options.logger)
    }

    /// Gets errors that do not end the source, such as a lost connection.
    public func setErrorHandler(_ handler: @escaping ErrorHandler) { state.withLock { $0.errorHandler = handler } }

    /// Connects; returns once the zipper accepted the handshake.
    public func connect() async throws {
        var (options, errorHandler) = state.withLock { ($0.options, $0.errorHandler) }
        options.observedTags = []  // sources receive nothing
        // Before a tracer provider is made.
        let settings = try ClientSettings(name: name, clientType: .source, zipper: client.zipper, options: options)
        let (tracing, ownedProvider) = DataPathTracer.resolve(options.tracerProvider, serviceName: name, scope: "Source")
        let metrics = DataPathMetrics(
            provider: options.meterProvider ?? GlobalMeterProvider.provider, scope: "Source", component: ["yomo.source.name": name])
        metrics.observeTracing(options.tracerProvider ?? ownedProvider)
        let setup = ClientRuntime.Setup(
            settings: settings,
            tracing: tracing,
            ownedProvider: ownedProvider,
            errorHandler: errorHandler,
            outageBufferFrames: options.outageBufferFrames,
            outageBufferBytes: options.outageBufferBytes,
            shutdownTimeout: options.shutdownTimeout,
            metrics: metrics
        )
        try await client.start(setup)
    }

    /// This source's client id (`<nanoid>-<reconnect count>`), the `yomo-source-id` of its frames.
    public var id: String { client.clientID }

    /// Writes `data` with `tag`; waits while the zipper is slow. While reconnecting,
    /// the frame is held and sent after the reconnect (`Options.outageBufferFrames`);
    /// throws `.outageBufferFull` when that is full, `.closed` after `close()`.
    public func write(tag: UInt32, data: some Sequence<UInt8>) async throws {
        try await client.writeFresh(tag: tag, payload: ByteBuffer(bytes: data), target: nil)
    }

    public func write(tag: UInt32, buffer: ByteBuffer) async throws {
        try await client.writeFresh(tag: tag, payload: buffer, target: nil)
    }

    /// Writes a frame that only stream functions with wanted target `target` get.
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

    /// Delivers what was written, closes, and flushes a tracer provider the source
    /// made from the environment before returning.
    public func close() async { await client.close() }

    /// Why the source ended, once it has.
    public var endReason: YoMoError? { client.endReason }

    /// What happened to the frames written while reconnecting.
    public var outageStatistics: OutageStatistics { client.outageStatistics }
}
