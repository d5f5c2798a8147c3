import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import YoMoTracing

/// Who is ready: each component of the process (a stream function connected
/// to its zipper, a zipper listening) registers a probe; `/readyz` answers 200
/// only while every probe says yes.
public final class Readiness: Sendable {
    private let probes = Mutex<[(id: Int, name: String, probe: @Sendable () -> Bool)]>([])
    private let nextID = Atomic<Int>(0)

    public init() {}

    /// Adds a probe; the returned id removes it (`remove`).
    @discardableResult
    public func register(_ name: String, _ probe: @escaping @Sendable () -> Bool) -> Int {
        let id = nextID.add(1, ordering: .relaxed).newValue
        probes.withLock { $0.append((id, name, probe)) }
        return id
    }

    public func remove(_ id: Int) { probes.withLock { $0.removeAll { $0.id == id } } }

    /// Ready when at least one component registered and all are ready; the
    /// lines say which is which.
    public func check() -> (ready: Bool, lines: [String]) {
        let all = probes.withLock { $0 }
        var ready = !all.isEmpty
        var lines: [String] = all.isEmpty ? ["no component registered"] : []
        for entry in all {
            let ok = entry.probe()
            ready = ready && ok
            lines.append("\(entry.name): \(ok ? "ready" : "not ready")")
        }
        return (ready, lines)
    }

    /// The process's registry, served by `MetricsEndpoint` by default.
    public static let shared = Readiness()
}

/// The pull endpoint: `GET /metrics` (Prometheus text, or OpenMetrics with
/// exemplars when the scraper's `Accept` asks for it), `GET /healthz` (200
/// while the process runs), `GET /readyz` (200 when every registered component
/// is ready, else 503).
public final class MetricsEndpoint: Sendable {
    let channel: any Channel
    let group: MultiThreadedEventLoopGroup

    /// The bound port (useful with port 0).
    public var port: Int { channel.localAddress?.port ?? 0 }

    /// What one client may hold of the endpoint, which is plain HTTP on a port
    /// that anyone who reaches it can open (it shares the process with a
    /// zipper or stream function).
    public struct Limits: Sendable {
        /// A connection that has not sent a whole request within this long of
        /// opening, or of its last answer, is closed: a client that trickles a
        /// request, or an idle keep-alive connection (a scraper reconnects).
        public var requestTimeout: Duration
        /// Connections past this many at once are closed as they are accepted.
        public var maximumConnections: Int

        public init(requestTimeout: Duration = .seconds(10), maximumConnections: Int = 64) {
            self.requestTimeout = requestTimeout
            self.maximumConnections = maximumConnections
        }
    }

    /// Binds `host:port`; a failure to bind is a clear error.
    public static func start(
        host: String, port: Int, provider: MeterProvider, readiness: Readiness = .shared, limits: Limits = Limits()
    ) async throws -> MetricsEndpoint {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let guarded = HTTPServerGuard(requestTimeout: limits.requestTimeout, maximumConnections: limits.maximumConnections)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                guarded.initialize(channel) { EndpointHandler(provider: provider, readiness: readiness) }
            }
        do {
            let channel = try await bootstrap.bind(host: host, port: port).get()
            return MetricsEndpoint(channel: channel, group: group)
        } catch {
            try? await group.shutdownGracefully()
            throw MetricsError("cannot serve metrics on \(host):\(port): \(bindFailureText(error))")
        }
    }

    private init(channel: any Channel, group: MultiThreadedEventLoopGroup) {
        self.channel = channel
        self.group = group
    }

    public func close() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }
}

/// A metrics setting or endpoint failed.
public struct MetricsError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

private final class EndpointHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let provider: MeterProvider
    let readiness: Readiness
    var head: HTTPRequestHead?

    init(provider: MeterProvider, readiness: Readiness) {
        self.provider = provider
        self.readiness = readiness
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(context: context, head: head)
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
        let status: HTTPResponseStatus
        let contentType: String
        let body: String
        switch (head.method, path) {
        case (.GET, "/metrics"):
            let format = PrometheusExposition.Format(accept: head.headers.first(name: "accept"))
            status = .ok
            contentType = format.contentType
            body = PrometheusExposition.render(provider.collect(), resource: provider.configuration.resource, format: format)
        case (.GET, "/healthz"):
            (status, contentType, body) = (.ok, "text/plain; charset=utf-8", "ok\n")
        case (.GET, "/readyz"):
            let (ready, lines) = readiness.check()
            (status, contentType, body) = (ready ? .ok : .serviceUnavailable, "text/plain; charset=utf-8", lines.joined(separator: "\n") + "\n")
        case (.GET, _):
            (status, contentType, body) = (.notFound, "text/plain; charset=utf-8", "not found: try /metrics, /healthz or /readyz\n")
        default:
            (status, contentType, body) = (.methodNotAllowed, "text/plain; charset=utf-8", "only GET\n")
        }
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: contentType)
        headers.add(name: "content-length", value: String(body.utf8.count))
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
