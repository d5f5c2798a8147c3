import NIOCore
import NIOHTTP1
import NIOPosix
import YoMoMetrics

/// A minimal OTLP/HTTP receiver: `POST /v1/traces` with a protobuf body is decoded
/// and handed to `onSpans`; `/v1/logs` and `/v1/metrics` are accepted and
/// ignored, so a program exporting every signal is not bothered with errors.
public final class OTLPHTTPReceiver: Sendable {
    let channel: any Channel
    let group: MultiThreadedEventLoopGroup

    /// The port it listens on.
    public var port: Int { channel.localAddress?.port ?? 0 }

    /// - Parameters:
    ///   - decode: false accepts trace bodies without decoding them (for
    ///     benchmarks: the receiver then costs the sender's machine almost
    ///     nothing); `onSpans` is not called.
    ///   - maximumBodySize: a bigger request is answered 413 and its connection
    ///     closed (an exporter's batch of 512 spans is a few hundred KB).
    ///   - requestTimeout: a connection that has not sent a whole request within
    ///     this long of opening, or of its last answer, is closed (a client that
    ///     trickles; an idle keep-alive connection, which an exporter reopens).
    ///   - maximumConnections: connections past this many are closed as accepted.
    public static func start(
        host: String, port: Int, decode: Bool = true, maximumBodySize: Int = 64 << 20,
        requestTimeout: Duration = .seconds(30), maximumConnections: Int = 64,
        onSpans: @escaping @Sendable ([ReceivedSpan]) -> Void, onError: @escaping @Sendable (String) -> Void
    ) async throws -> OTLPHTTPReceiver {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let guarded = HTTPServerGuard(requestTimeout: requestTimeout, maximumConnections: maximumConnections)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                guarded.initialize(channel) {
                    RequestHandler(decode: decode, maximumBodySize: maximumBodySize, onSpans: onSpans, onError: onError)
                }
            }
        do {
            let channel = try await bootstrap.bind(host: host, port: port).get()
            return OTLPHTTPReceiver(channel: channel, group: group)
        } catch {
            try? await group.shutdownGracefully()
            throw TraceViewError(description: "cannot listen on \(host):\(port): \(bindFailureText(error))")
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

private final class RequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let decode: Bool
    let maximumBodySize: Int
    let onSpans: @Sendable ([ReceivedSpan]) -> Void
    let onError: @Sendable (String) -> Void
    var head: HTTPRequestHead?
    var body = ByteBuffer()

    init(
        decode: Bool, maximumBodySize: Int, onSpans: @escaping @Sendable ([ReceivedSpan]) -> Void,
        onError: @escaping @Sendable (String) -> Void
    ) {
        self.decode = decode
        self.maximumBodySize = maximumBodySize
        self.onSpans = onSpans
        self.onError = onError
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body.clear()
        case .body(var chunk):
            guard head != nil else { return }  // refused already: the rest is dropped
            guard body.readableBytes + chunk.readableBytes <= maximumBodySize else {
                head = nil
                body = ByteBuffer()
                onError("refused a request body over \(maximumBodySize) bytes")
                respond(context: context, status: .payloadTooLarge, message: "body over \(maximumBodySize) bytes", keepAlive: false)
                return
            }
            body.writeBuffer(&chunk)
        case .end:
            guard let head else { return }
            let (status, message) = handle(head)
            respond(context: context, status: status, message: message, keepAlive: head.isKeepAlive)
            self.head = nil
        }
    }

    private func handle(_ head: HTTPRequestHead) -> (HTTPResponseStatus, String) {
        let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
        guard head.method == .POST else { return (.methodNotAllowed, "POST OTLP/HTTP protobuf here") }
        switch path {
        case "/v1/traces":
            if let encoding = head.headers.first(name: "Content-Encoding"), encoding != "identity" {
                onError("received a \(encoding) body: trace-view reads uncompressed bodies (unset OTEL_EXPORTER_OTLP_COMPRESSION)")
                return (.unsupportedMediaType, "compressed bodies are not supported")
            }
            guard decode else { return (.ok, "") }
            do {
                onSpans(try OTLPTraceDecoder.decode(Array(body.readableBytesView)))
                return (.ok, "")
            } catch {
                onError("\(error)")
                return (.badRequest, "\(error)")
            }
        case "/v1/logs", "/v1/metrics":
            return (.ok, "")
        default:
            return (.notFound, "no such OTLP endpoint")
        }
    }

    private func respond(context: ChannelHandlerContext, status: HTTPResponseStatus, message: String, keepAlive: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: status == .ok ? "application/x-protobuf" : "text/plain")
        headers.add(name: "Content-Length", value: "\(message.utf8.count)")
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if !message.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: message)))), promise: nil)
        }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            // The future completes on this handler's event loop, where the context may be used.
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            done.whenComplete { _ in bound.value.close(promise: nil) }
        }
    }
}
