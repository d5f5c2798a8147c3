import CNGTCP2
import Foundation
import Glibc

/// A QUIC listener for YoMo: accepts many connections on one UDP socket and hands
/// each over once the client opened its bidirectional stream.
///
/// Runs on its own thread; malformed datagrams are dropped, unknown short-header
/// packets answered with a stateless reset, unsupported versions with version
/// negotiation.
public final class QUICServer: Sendable {
    let core: ServerCore

    /// The bound address and port (useful with port 0).
    public let host: String
    public let port: Int

    private init(core: ServerCore) {
        self.core = core
        self.host = core.local.host
        self.port = core.local.port
    }

    /// Binds `host:port` (port 0 picks a free one).
    public static func bind(
        host: String, port: Int, configuration: QUICConfiguration = .default, tls: ServerTLSConfiguration = .selfSigned
    ) async throws(QUICError) -> QUICServer {
        try configuration.validate()
        let address = try UDPAddress.resolve(host: host, port: port)[0]
        let credentials = try TLSCredentials(server: tls)
        let fd = try makeUDPSocket(family: address.family)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 4)
        let rv = address.withSockaddr { Glibc.bind(fd, $0, $1) }
        if rv != 0 {
            let e = errno
            Glibc.close(fd)
            throw .socket("bind \(address)", errno: e)
        }
        let local: UDPAddress
        do throws(QUICError) { local = try localAddress(of: fd) } catch {
            Glibc.close(fd)
            throw error
        }
        let loop = QUICEventLoop(name: "yomo-quic-server-\(local.port)")
        let debug = ProcessInfo.processInfo.environment["YOMO_QUIC_DEBUG"] != nil
        let core = ServerCore(
            loop: loop, fd: fd, local: local, configuration: configuration, credentials: credentials,
            verifyClient: tls.clientCAFile != nil, debugLog: debug)
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            loop.execute {
                core.start()
                c.resume()
            }
        }
        return QUICServer(core: core)
    }

    /// Accepted connections, each with its stream open. Ends after `close()`.
    public var connections: Connections { Connections(core: core) }

    /// Closes every connection with application code 0 (the YoMo "listener shut
    /// down" signal), stops listening and ends `connections`.
    public func close() async {
        let core = self.core
        let running = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let queued = core.loop.execute {
                core.shutdown()
                c.resume(returning: true)
            }
            if !queued { c.resume(returning: false) }  // closed before
        }
        guard running else { return }
        // Join the loop thread off the cooperative pool.
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                core.loop.shutdownAndWait()
                c.resume()
            }
        }
    }

    /// Live connections (including those in their closing or draining period).
    public func connectionCount() async -> Int {
        let core = self.core
        return await withCheckedContinuation { c in
            if !core.loop.execute({ c.resume(returning: core.connectionCount) }) { c.resume(returning: 0) }
        }
    }

    /// Datagram counters: received, dropped, stateless resets and version negotiations sent.
    public var statistics: Statistics {
        let s = core.stats
        return Statistics(
            datagrams: s.datagrams.load(ordering: .relaxed), dropped: s.dropped.load(ordering: .relaxed),
            accepted: s.accepted.load(ordering: .relaxed), versionNegotiations: s.versionNegotiations.load(ordering: .relaxed),
            statelessResets: s.statelessResets.load(ordering: .relaxed))
    }

    public struct Statistics: Sendable, Hashable {
        public var datagrams: Int
        public var dropped: Int
        public var accepted: Int
        public var versionNegotiations: Int
        public var statelessResets: Int
    }

    public struct Connections: AsyncSequence, Sendable {
        public typealias Element = QUICConnection
        public typealias Failure = Never
        let core: ServerCore

        public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(core: core) }

        public struct AsyncIterator: AsyncIteratorProtocol {
            public typealias Element = QUICConnection
            public typealias Failure = Never
            let core: ServerCore

            public mutating func next() async -> QUICConnection? {
                await next(isolation: nil)
            }

            public mutating func next(isolation actor: isolated (any Actor)?) async -> QUICConnection? {
                let core = self.core
                return await withCheckedContinuation { (c: CheckedContinuation<QUICConnection?, Never>) in
                    let immediate = core.accepted.withLock { a -> QUICConnection?? in
                        if !a.queue.isEmpty { return .some(a.queue.removeFirst()) }
                        if a.finished { return .some(nil) }
                        a.waiter = c
                        return .none
                    }
                    if let immediate { c.resume(returning: immediate) }
                }
            }
        }
    }
}
