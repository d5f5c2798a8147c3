package import NIOCore
import Glibc
import NIOHTTP1
import Synchronization
import YoMoTracing

/// What one client may hold of a small HTTP server on a port that anyone who
/// reaches it can open: the metrics endpoint, and `yomo trace-view`'s receiver.
package struct HTTPServerGuard: Sendable {
    private let open: ConnectionCount
    private let requestTimeout: TimeAmount

    /// - Parameters:
    ///   - requestTimeout: a connection that has not sent a whole request within
    ///     this long of opening, or of its last answer, is closed (a client that
    ///     trickles a request, or an idle keep-alive connection).
    ///   - maximumConnections: connections past this many at once are closed as
    ///     they are accepted.
    package init(requestTimeout: Duration, maximumConnections: Int) {
        open = ConnectionCount(maximum: maximumConnections)
        self.requestTimeout = TimeAmount.nanoseconds(Int64(clamping: requestTimeout.clampedNanoseconds))
    }

    /// For a server's `childChannelInitializer`: closes a connection past the
    /// limit, else sets up the HTTP server pipeline, the request deadline (which
    /// also closes the connection on a parse error), then the handler
    /// `makeHandler` gives.
    package func initialize(
        _ channel: any Channel, _ makeHandler: () -> any ChannelHandler
    ) -> EventLoopFuture<Void> {
        guard open.admit() else { return channel.close() }
        let open = open
        channel.closeFuture.whenComplete { _ in open.release() }
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.configureHTTPServerPipeline()
            try channel.pipeline.syncOperations.addHandler(RequestDeadline(requestTimeout))
            try channel.pipeline.syncOperations.addHandler(makeHandler())
        }
    }
}

/// A server's open connections, against its limit.
private final class ConnectionCount: Sendable {
    private let count = Atomic<Int>(0)
    private let maximum: Int

    init(maximum: Int) { self.maximum = maximum }

    func admit() -> Bool {
        if count.add(1, ordering: .relaxed).newValue <= maximum { return true }
        count.subtract(1, ordering: .relaxed)
        return false
    }

    func release() { count.subtract(1, ordering: .relaxed) }
}

/// Closes the connection unless a whole request arrives within the timeout of
/// its opening or of the last answer's end, and on any error; passes
/// everything else through.
private final class RequestDeadline: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let timeout: TimeAmount
    private var deadline: Scheduled<Void>?

    init(_ timeout: TimeAmount) { self.timeout = timeout }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        context.fireChannelInactive()
    }

    /// A request the HTTP parser refused (swift-nio's error handler answered
    /// 400, with `Connection: close`, and leaves the closing to us) or a
    /// broken connection: done with it.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .end = unwrapInboundIn(data) {
            deadline?.cancel()
            deadline = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // The next request gets its own time, from this answer on.
        if case .end = unwrapOutboundIn(data) { arm(context) }
        context.write(data, promise: promise)
    }

    private func arm(_ context: ChannelHandlerContext) {
        deadline?.cancel()
        let channel = context.channel
        deadline = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }
}

/// Why binding a listener failed, in the words of `strerror` ("Address already
/// in use") rather than NIO's description of the system call.
package func bindFailureText(_ error: any Error) -> String {
    guard let io = error as? IOError else { return "\(error)" }
    return String(cString: strerror(io.errnoCode))
}
