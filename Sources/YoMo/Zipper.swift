import Foundation
import Synchronization
public import Logging
internal import YoMoLogging
public import ServiceLifecycle
internal import NIOCore
public import YoMoQUIC
public import YoMoTracing
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

        public init(
            logger: Logger = Logger(label: "yomo.zipper"),
            tls: ServerTLSConfiguration = .selfSigned,
            quic: QUICConfiguration = .zipperDefault,
            handshakeTimeout: Duration = .seconds(10),
            tracerProvider: TracerProvider? = nil
        ) {
            self.tracerProvider = tracerProvider
            self.logger = logger
            self.tls = tls
            self.quic = quic
            self.handshakeTimeout = handshakeTimeout
        }
    }

    private struct Peer: Sendable {
        var connection: QUICFrameConnection
        var member: RouteMember
        /// Merged into every frame this peer writes (its wanted target).
        var metadata: Metadata
    }

    private struct State {
        var server: QUICServer?
        var routes = RouteTable()
        var peers: [UInt64: Peer] = [:]
        var nextConnectionID: UInt64 = 1
        var acceptTask: Task<Void, Never>?
        var closed = false
    }

    public let configuration: ZipperConfiguration
    let options: Options
    let logger: Logger
    private let authority: HandshakeAuthority
    private let tracing: DataPathTracer
    private let ownedProvider: TracerProvider?
    private let state = Mutex(State())

    public init(configuration: ZipperConfiguration = ZipperConfiguration(), options: Options = Options()) {
        self.configuration = configuration
        self.options = options
        self.logger = options.logger.yomoZipper(address: "\(configuration.host):\(configuration.port)")
        self.authority = HandshakeAuthority(version: configuration.version, authentication: configuration.authentication)
        (tracing, ownedProvider) = DataPathTracer.resolve(options.tracerProvider, serviceName: configuration.name, scope: "Zipper")
    }

    /// The port it listens on (the bound one when configured with port 0), once started.
    public var port: Int? { state.withLock { $0.server?.port } }

    /// `host:port` clients can dial, once started.
    public var address: String? {
        state.withLock { state in state.server.map { "\(configuration.host.contains(":") ? "[\(configuration.host)]" : configuration.host):\($0.port)" } }
    }

    /// Number of connected clients.
    public var connectionCount: Int { state.withLock { $0.peers.count } }

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
            Task { await server.close() }
        }
    }

    /// Closes every connection with the listener-shutdown signal (code 0) and stops listening.
    public func close() async {
        let (server, task) = state.withLock { state -> (QUICServer?, Task<Void, Never>?) in
            state.closed = true
            return (state.server, state.acceptTask)
        }
        await server?.close()
        await task?.value
        await ownedProvider?.shutdown()
    }

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
        let server = try await QUICServer.bind(
            host: configuration.host, port: configuration.port, configuration: options.quic, tls: options.tls)
        state.withLock { $0.server = server }
        logger.info("zipper listening", metadata: [
            "zipper_addr": "\(configuration.host):\(server.port)", "zipper_name": "\(configuration.name)",
            "auth": "\(configuration.authentication.map { "\($0)" } ?? "none")",
        ])
        return server
    }

    private func accept(_ server: QUICServer) async {
        await withDiscardingTaskGroup { group in
            for await quic in server.connections {
                group.addTask { await self.serve(QUICFrameConnection(quic)) }
            }
        }
    }

    private func serve(_ connection: QUICFrameConnection) async {
        var frames = FrameReader(connection)
        let handshake: HandshakeFrame
        do {
            let first = try await frames.first(
                within: options.handshakeTimeout,
                orFail: YoMoError(.protocolViolation, "no handshake within \(options.handshakeTimeout)"))
            guard case .handshake(let frame)? = first else {
                await connection.close(reason: "expected a handshake first")
                return
            }
            handshake = frame
        } catch {
            logger.info("connection dropped before its handshake", metadata: ["remote": "\(connection.remoteAddress)", "error": "\(error)"])
            await connection.close(reason: "\(error)")
            return
        }
        var connectionLogger = logger
        connectionLogger[metadataKey: YoMoLogField.connectionID] = "\(handshake.id)"
        connectionLogger[metadataKey: YoMoLogField.connectionName] = "\(handshake.name)"
        if let rejection = authority.rejection(for: handshake) {
            connectionLogger.warning("handshake rejected", metadata: ["reason": "\(rejection)", "remote": "\(connection.remoteAddress)"])
            try? await connection.write(.rejected(RejectedFrame(message: rejection)))
            await connection.closeAfterDelivery(reason: rejection)
            return
        }
        var connectionMetadata = Metadata()
        connectionMetadata[Metadata.ReservedKey.wantedTarget] = handshake.wantedTarget
        let id = state.withLock { state -> UInt64 in
            let id = state.nextConnectionID
            state.nextConnectionID += 1
            let member = RouteMember(
                connectionID: id, name: handshake.name, clientID: handshake.id, clientType: handshake.clientType,
                observedTags: Set(handshake.observedTags), wantedTarget: handshake.wantedTarget)
            state.routes.add(member)
            state.peers[id] = Peer(connection: connection, member: member, metadata: connectionMetadata)
            return id
        }
        defer { state.withLock { state in
            state.routes.remove(id)
            state.peers[id] = nil
        } }
        connectionLogger.info("client connected", metadata: [
            "client_type": "\(handshake.clientType)", "observed_tags": "\(handshake.observedTags.map { "0x" + String($0, radix: 16) })",
        ])
        do {
            try await connection.write(.handshakeAck)
            while let frame = try await frames.next() {
                guard case .data(let data) = frame else { continue }
                guard !RouteTable.isReserved(data.tag) else {
                    let reason = "tag 0x\(String(data.tag, radix: 16)) is reserved"
                    connectionLogger.warning("closing client that wrote a reserved tag", metadata: ["tag": "\(data.tag)"])
                    await connection.close(reason: reason)
                    return
                }
                try await route(data, from: id, connectionMetadata: connectionMetadata, logger: connectionLogger)
            }
            connectionLogger.info("client disconnected")
        } catch {
            connectionLogger.info("client disconnected", metadata: ["error": "\(error)"])
        }
        await connection.close(reason: "")
    }

    /// Sends a frame to every observer; awaiting each write is what makes a slow
    /// stream function slow its senders down instead of losing frames.
    private func route(_ data: DataFrame, from id: UInt64, connectionMetadata: Metadata, logger: Logger) async throws {
        var metadata: Metadata
        do {
            metadata = try Metadata(decoding: data.metadata)
        } catch {
            logger.warning("frame with bad metadata skipped", metadata: ["tag": "\(data.tag)", "error": "\(error)"])
            return
        }
        var merged = connectionMetadata
        merged.merge(metadata)
        let span = tracing.zipperSpan(tag: data.tag, length: data.payload.readableBytes, metadata: &merged)
        defer { span?.end() }
        let destinations = state.withLock { state in
            state.routes.destinations(tag: data.tag, target: merged[Metadata.ReservedKey.target]).compactMap { state.peers[$0]?.connection }
        }
        tracing.debug(logger, under: span, "routing frame", metadata: YoMoLogField.frame(
            tid: merged[Metadata.ReservedKey.tid] ?? "", tag: data.tag, dataLength: data.payload.readableBytes
        ).merging(["destinations": "\(destinations.count)"]) { first, _ in first })
        guard !destinations.isEmpty else { return }
        // Metadata encoded once for every destination; the payload is never copied.
        let outgoing = Frame.data(DataFrame(tag: data.tag, metadata: merged, payload: data.payload))
        for destination in destinations {
            do {
                try await destination.write(outgoing)
            } catch {
                tracing.debug(logger, under: span, "destination gone",
                              metadata: ["remote": "\(destination.remoteAddress)", "error": "\(error)"])
            }
        }
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
