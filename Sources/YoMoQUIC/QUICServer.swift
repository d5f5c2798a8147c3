import CNGTCP2
import FoundationEssentials
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

    /// Caps that protect the listener from floods and mute peers.
    public struct Limits: Sendable, Hashable {
        /// Connections at once (handshaking, open, closing); Initials beyond are dropped.
        public var maximumConnections: Int
        /// Connections in their QUIC handshake at once; Initials beyond are dropped.
        public var maximumHandshakes: Int
        /// Handshakes at once of clients whose address is not proven. Beyond,
        /// a new client is answered with a QUIC Retry, holding no state: it
        /// proves it receives at its address by sending its Initial again with
        /// the Retry's token, one round trip later. Initials from spoofed
        /// addresses (a flood) never come back, so they cannot take every
        /// handshake slot from honest clients. 0: every client is asked.
        public var maximumUnvalidatedHandshakes: Int
        /// Handshakes at once from one address (an IPv6 client: its network,
        /// `ipv6PrefixLength`) that a Retry proved, once half of
        /// `maximumHandshakes` are in progress; one more is then closed at once
        /// with CONNECTION_REFUSED, holding nothing, and its client may dial
        /// again. So a host that does answer Retries cannot hold every
        /// handshake slot either, and one with many honest clients is not
        /// slowed while there is room. Addresses not proven are not counted
        /// here (they may be someone else's): `maximumUnvalidatedHandshakes` bounds them.
        public var maximumHandshakesPerAddress: Int
        /// A connection that has not opened its stream this long after its first
        /// packet is closed, even if it answers keep-alives.
        public var streamOpenTimeout: Duration
        /// Connections past their handshake from one IP address at once (an
        /// IPv6 client: from its network, `ipv6PrefixLength`); one more is
        /// closed as its handshake completes, with a reason. Counted only once
        /// the handshake proved the address, so Initials spoofed with someone
        /// else's cannot use up that host's share.
        public var maximumConnectionsPerAddress: Int
        /// IPv6 clients count as one address per network of this many bits,
        /// for `maximumConnectionsPerAddress` and the receive windows' shares:
        /// one host has a /64 at least, and its temporary addresses rotate
        /// within it. 128: each address on its own. IPv4 clients, also
        /// IPv4-mapped on a dual-stack socket, count by their address.
        public var ipv6PrefixLength: Int
        /// Networks whose clients are not held to any per-address share
        /// (`maximumConnectionsPerAddress`, `maximumHandshakesPerAddress`, the
        /// receive windows' shares): each of their connections counts as an
        /// address of its own. For clients you run behind one NAT (a cluster's
        /// egress, an office), rather than raising the shares for everyone.
        /// `10.0.0.0/8`, `fd00::/8`, or an address alone.
        public var trustedNetworks: [String]
        /// Bytes all clients together may send ahead of what the server has
        /// read: the sum of their receive windows. Each connection's window is
        /// its share of it (split among the clients' addresses, then among each
        /// address's connections; at least 32 KiB, at most what the configuration's
        /// windows allow), so a server whose readers wait holds at most this,
        /// plus 32 KiB per connection. `nil`: every connection gets the
        /// configuration's windows whatever their number.
        public var maximumReceiveWindowBytes: Int?

        public init(
            maximumConnections: Int = 16384, maximumHandshakes: Int = 4096, streamOpenTimeout: Duration = .seconds(10),
            maximumConnectionsPerAddress: Int = 1024, maximumReceiveWindowBytes: Int? = 64 << 20, ipv6PrefixLength: Int = 64,
            maximumUnvalidatedHandshakes: Int = 128, maximumHandshakesPerAddress: Int = 64, trustedNetworks: [String] = []
        ) {
            self.trustedNetworks = trustedNetworks
            self.maximumUnvalidatedHandshakes = maximumUnvalidatedHandshakes
            self.maximumHandshakesPerAddress = maximumHandshakesPerAddress
            self.maximumConnections = maximumConnections
            self.maximumHandshakes = maximumHandshakes
            self.streamOpenTimeout = streamOpenTimeout
            self.maximumConnectionsPerAddress = maximumConnectionsPerAddress
            self.ipv6PrefixLength = ipv6PrefixLength
            self.maximumReceiveWindowBytes = maximumReceiveWindowBytes
        }

        public static let `default` = Limits()
    }

    /// Binds `host:port` (port 0 picks a free one).
    ///
    /// `statelessResetKey` (16 bytes or more) derives the stateless reset tokens;
    /// give the same key after a restart so that clients of the previous run get
    /// resets they recognise and reconnect at once. `nil`: a random key per bind.
    public static func bind(
        host: String, port: Int, configuration: QUICConfiguration = .default, tls: ServerTLSConfiguration = .selfSigned,
        limits: Limits = .default, statelessResetKey: [UInt8]? = nil
    ) async throws(QUICError) -> QUICServer {
        try configuration.validate()
        guard limits.maximumConnections > 0, limits.maximumHandshakes > 0, limits.streamOpenTimeout > .zero else {
            throw .invalidConfiguration("server limits must be positive")
        }
        if let bad = limits.trustedNetworks.first(where: { IPNetwork($0) == nil }) {
            throw .invalidConfiguration("trustedNetworks: \"\(bad)\" is not a network such as 10.0.0.0/8 or fd00::/8")
        }
        guard limits.maximumHandshakesPerAddress > 0 else {
            throw .invalidConfiguration("maximumHandshakesPerAddress must be positive, not \(limits.maximumHandshakesPerAddress)")
        }
        guard limits.maximumUnvalidatedHandshakes >= 0 else {
            throw .invalidConfiguration("maximumUnvalidatedHandshakes must not be negative (0: a Retry for every client), not \(limits.maximumUnvalidatedHandshakes)")
        }
        guard (1...128).contains(limits.ipv6PrefixLength) else {
            throw .invalidConfiguration("ipv6PrefixLength must be from 1 to 128, not \(limits.ipv6PrefixLength)")
        }
        if let budget = limits.maximumReceiveWindowBytes, budget < ReceiveWindowBudget.minimum {
            throw .invalidConfiguration("maximumReceiveWindowBytes must be at least \(ReceiveWindowBudget.minimum), not \(budget)")
        }
        if let statelessResetKey, statelessResetKey.count < 16 {
            throw .invalidConfiguration("the stateless reset key must be at least 16 bytes")
        }
        let address = try UDPAddress.resolve(host: host, port: port)[0]
        let credentials = try TLSCredentials(server: tls)
        let fd = try makeUDPSocket(family: address.family)
        // ICMP port unreachable for a peer's address ends its connection (ServerCore.loopError).
        _ = cngtcp2_enable_recverr(fd, address.family)
        // Bound to every address: each answer goes from the one its client wrote to (ServerCore.accept).
        if address.isWildcard { _ = cngtcp2_enable_pktinfo(fd, address.family) }
        // No SO_REUSEADDR: on Linux it lets a second UDP socket bind the same
        // port, and a second zipper started there took over every connection
        // of the first (their packets went to it) while the first ran on, idle.
        let rv = address.withSockaddr { Glibc.bind(fd, $0, $1) }
        if rv != 0 {
            let e = errno
            Glibc.close(fd)
            if e == EADDRINUSE { throw .socket("bind \(address)", errno: e, hint: "another process listens on this UDP port") }
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
            verifyClient: tls.clientCAFile != nil, limits: limits, statelessResetKey: statelessResetKey, debugLog: debug)
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            loop.execute {
                core.start()
                c.resume()
            }
        }
        return QUICServer(core: core)
    }

    /// The executor of the server's loop thread: tasks that prefer it handle
    /// its connections' frames without a thread hop per frame.
    package var taskExecutor: any TaskExecutor { core.loop }

    /// Accepted connections, each with its stream open. Ends after `close()`.
    public var connections: Connections { Connections(core: core) }

    /// `handler` is told the address of each connection closed because its
    /// address had `Limits.maximumConnectionsPerAddress` already (on the
    /// server's loop thread: keep it short).
    package func onRefusedPerAddress(_ handler: @escaping @Sendable (String) -> Void) async {
        let core = self.core
        await core.loop.run(orIfStopped: ()) { core.onRefusedPerAddress = handler }
    }

    /// `handler` is told the address of each handshake closed with
    /// CONNECTION_REFUSED because its address, proven by a Retry, had
    /// `Limits.maximumHandshakesPerAddress` in progress (on the server's loop
    /// thread: keep it short).
    package func onHandshakeRefusedPerAddress(_ handler: @escaping @Sendable (String) -> Void) async {
        let core = self.core
        await core.loop.run(orIfStopped: ()) { core.onHandshakeRefusedPerAddress = handler }
    }

    /// `handler` is told, when new clients begin to be asked for a Retry
    /// (`Limits.maximumUnvalidatedHandshakes` reached) and then at most every
    /// 10 s while it lasts, how many were asked since it was last told (on the
    /// server's loop thread: keep it short).
    package func onRetrying(_ handler: @escaping @Sendable (Int) -> Void) async {
        let core = self.core
        await core.loop.run(orIfStopped: ()) { core.onRetrying = handler }
    }

    /// Takes no new connection from now on (their Initials go unanswered, so
    /// their clients try again); those already here are served until `close()`.
    public func stopAccepting() async {
        let core = self.core
        await core.loop.run(orIfStopped: ()) { core.stopAccepting() }
    }

    /// Closes every connection with application code 0 (the YoMo "listener shut
    /// down" signal) and `reason`, stops listening and ends `connections`. When
    /// it returns the port is free: a new server may bind it at once.
    public func close(reason: String = "") async {
        let core = self.core
        let running = await core.loop.run(orIfStopped: false) {
            core.shutdown(reason: reason)
            return true
        }
        guard running else { return }  // closed before
        // Join the loop thread off the cooperative pool.
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            startLoopThread(stackSize: 1 << 16) {
                core.loop.shutdownAndWait()
                core.closeSocket()
                c.resume()
            }
        }
    }

    /// Hands heap memory that was freed back to the system (glibc keeps it in
    /// per-thread arenas otherwise). A server calls it after many connections left.
    public static func releaseFreedMemory() { _ = malloc_trim(0) }

    /// Closes all of `connections` (this server's) at one moment when each is
    /// quiet: nothing received unread, its reader waiting for more, everything
    /// written to it acknowledged. Checked and done in one turn of the loop
    /// where packets arrive, so no byte reaches any of them, acknowledged and
    /// then left unread, between the check and the close; what their peers
    /// send after it is not acknowledged, so they keep it. False, and none
    /// closed, if one is not quiet now. `receivingOnly`: what they have yet
    /// to send does not matter (the caller keeps it elsewhere).
    package func closeAllIfQuiet(_ connections: [QUICConnection], errorCode: UInt64, reason: String, receivingOnly: Bool = false) async -> Bool {
        let cores = connections.map(\.core)
        return await core.loop.run(orIfStopped: true) {
            guard cores.allSatisfy({ receivingOnly ? $0.isQuietReceiving : $0.isQuiet }) else { return false }
            for connection in cores { connection.closeLocally(code: errorCode, reason: reason) }
            return true
        }
    }

    /// Live connections (including those in their closing or draining period).
    public func connectionCount() async -> Int {
        let core = self.core
        return await core.loop.run(orIfStopped: 0) { core.connectionCount }
    }

    /// Datagram counters: received, dropped, stateless resets and version negotiations sent.
    public var statistics: Statistics {
        let s = core.stats
        return Statistics(
            datagrams: s.datagrams.load(ordering: .relaxed), dropped: s.dropped.load(ordering: .relaxed),
            accepted: s.accepted.load(ordering: .relaxed), versionNegotiations: s.versionNegotiations.load(ordering: .relaxed),
            statelessResets: s.statelessResets.load(ordering: .relaxed), streamTimeouts: s.streamTimeouts.load(ordering: .relaxed),
            refusedOverLimit: s.refusedOverLimit.load(ordering: .relaxed), refusedPerAddress: s.refusedPerAddress.load(ordering: .relaxed),
            receiveWindowBytes: s.receiveWindowBytes.load(ordering: .relaxed), clientAddresses: s.clientAddresses.load(ordering: .relaxed),
            retries: s.retries.load(ordering: .relaxed), invalidTokens: s.invalidTokens.load(ordering: .relaxed),
            refusedHandshakesPerAddress: s.refusedHandshakesPerAddress.load(ordering: .relaxed),
            newTokensAccepted: s.newTokensAccepted.load(ordering: .relaxed))
    }

    public struct Statistics: Sendable, Hashable {
        public var datagrams: Int
        public var dropped: Int
        public var accepted: Int
        public var versionNegotiations: Int
        public var statelessResets: Int
        /// Connections closed for opening no stream within `Limits.streamOpenTimeout`.
        public var streamTimeouts: Int
        /// Initials dropped at `Limits.maximumConnections` or `maximumHandshakes`.
        public var refusedOverLimit: Int
        /// Connections closed at `Limits.maximumConnectionsPerAddress`.
        public var refusedPerAddress: Int
        /// What the clients may send ahead of the server's reading now: their
        /// receive windows summed, under `Limits.maximumReceiveWindowBytes` (0 without it).
        public var receiveWindowBytes: Int
        /// Addresses (IPv6: networks of `Limits.ipv6PrefixLength` bits) with
        /// connections past their handshake now: what the receive windows'
        /// budget is split among first.
        public var clientAddresses: Int
        /// Initials answered with a Retry (`Limits.maximumUnvalidatedHandshakes`).
        public var retries: Int
        /// Initials whose Retry token was not this server's, or too old:
        /// closed with INVALID_TOKEN (also counted in `dropped`).
        public var invalidTokens: Int
        /// Initials of proven addresses over `Limits.maximumHandshakesPerAddress`:
        /// closed with CONNECTION_REFUSED (also counted in `dropped`).
        public var refusedHandshakesPerAddress: Int
        /// Initials whose token, from a NEW_TOKEN frame this server sent on an
        /// earlier connection, proved their address: no Retry needed.
        public var newTokensAccepted: Int = 0
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
