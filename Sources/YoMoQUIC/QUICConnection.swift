import CNGTCP2
import FoundationEssentials
import Glibc
public import NIOCore

/// A QUIC connection carrying one bidirectional stream of bytes: the transport
/// under a YoMo frame connection.
///
/// Writes wait while more than `QUICConfiguration.sendBufferSize` bytes are
/// unacknowledged (nothing is dropped); `inbound` yields received bytes in order
/// and returns the receive window to the peer as they are consumed.
public final class QUICConnection: Sendable {
    let core: ConnectionCore

    /// The peer's address, e.g. `127.0.0.1:9000`.
    public let remoteAddress: String
    /// On a server: what the peer counts as for the per-address limits, its
    /// IP address or IPv6 network (`2001:db8:1:2::/64`), as its handshake
    /// proved it; nil on a client.
    package let addressGroup: String?

    /// Made on the connection's loop thread (a server's connections once their stream opened).
    init(core: ConnectionCore) {
        self.core = core
        self.remoteAddress = core.peerDescription
        self.addressGroup = core.countedForHost?.group.description
    }

    deinit {
        // Dropping the last reference closes the connection (and frees it).
        let core = self.core
        core.loop.execute { core.closeLocally(code: QUICError.yomoCloseCode, reason: "") }
    }

    /// Connects to `host:port` (a name, an IPv4 or an IPv6 address), completes the
    /// QUIC + TLS handshake (ALPN `configuration.alpn`) and opens the stream.
    public static func connect(
        host: String, port: Int, configuration: QUICConfiguration = .default, tls: TLSConfiguration = .default
    ) async throws(QUICError) -> QUICConnection {
        try configuration.validate()
        let addresses = try await UDPAddress.resolveOffPool(host: host, port: port)
        return try await connect(toAny: addresses, host: host, configuration: configuration, tls: tls)
    }

    /// Tries each address in turn (`resolve` puts IPv4 first, as Go's resolver does). A
    /// refused port (ICMP unreachable) moves on at once; so does an address
    /// that never answers (a black-holed IPv6 route), after the handshake
    /// timeout: before, it ended the attempt, and retries met it again. TLS
    /// and protocol failures end the attempt.
    static func connect(
        toAny addresses: [UDPAddress], host: String, configuration: QUICConfiguration, tls: TLSConfiguration
    ) async throws(QUICError) -> QUICConnection {
        let credentials = try TLSCredentials(client: tls)
        var lastError: QUICError?
        for address in addresses {
            do throws(QUICError) {
                return try await connect(to: address, host: host, configuration: configuration, tls: tls, credentials: credentials)
            } catch {
                lastError = error
                guard [.socket, .handshakeTimeout, .idleTimeout].contains(error.kind) else { throw error }
            }
        }
        throw lastError ?? .addressResolution(host, "no addresses")
    }

    /// Dials `address` with the token its server gave an earlier connection
    /// (no Retry for this one), if one is kept. A server that does not know
    /// the token (it restarted with another key, or another server took its
    /// port) should ignore it (RFC 9000 §8.1.3), but some (aioquic) refuse
    /// the connection with INVALID_TOKEN: then it is dialled again at once
    /// without one, so a stale token never costs a dial.
    private static func connect(
        to address: UDPAddress, host: String, configuration: QUICConfiguration, tls: TLSConfiguration, credentials: TLSCredentials
    ) async throws(QUICError) -> QUICConnection {
        let token = NewTokens.take(for: address)
        do throws(QUICError) {
            return try await dial(address, token: token, host: host, configuration: configuration, tls: tls, credentials: credentials)
        } catch where !token.isEmpty && error.kind == .closedByPeer && error.transportErrorCode == UInt64(NGTCP2_INVALID_TOKEN) {
            return try await dial(address, token: [], host: host, configuration: configuration, tls: tls, credentials: credentials)
        }
    }

    private static func dial(
        _ address: UDPAddress, token: [UInt8], host: String, configuration: QUICConfiguration, tls: TLSConfiguration,
        credentials: TLSCredentials
    ) async throws(QUICError) -> QUICConnection {
        let fd = try makeUDPSocket(family: address.family)
        // A datagram too big for the path is reported in the error queue with the path's MTU (ConnectionCore.loopError).
        _ = cngtcp2_enable_recverr(fd, address.family)
        let rv = address.withSockaddr { Glibc.connect(fd, $0, $1) }
        if rv != 0 {
            let e = errno
            Glibc.close(fd)
            throw .socket("connect \(address)", errno: e)
        }
        let local: UDPAddress
        do throws(QUICError) { local = try localAddress(of: fd) } catch {
            Glibc.close(fd)
            throw error
        }
        let isIPLiteral = isIPAddress(host)
        let sni = tls.serverName ?? (isIPLiteral ? nil : host)
        let verifyName = tls.serverName ?? withoutBrackets(host)
        let loop = QUICEventLoop.nextSharedLoop()
        // The core owns (and closes) the socket from here on.
        let core = ConnectionCore(loop: loop, fd: fd, connectedSocket: true, remote: address, isServer: false, configuration: configuration)
        let debug = ProcessInfo.processInfo.environment["YOMO_QUIC_DEBUG"] != nil
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Result<Void, QUICError>, Never>) in
                loop.execute {
                    // Cancelled before it began: send nothing (deinit closes the socket).
                    if core.isEstablishingCancelled {
                        c.resume(returning: .failure(.cancelled))
                        return
                    }
                    do throws(QUICError) {
                        var settings = NGSettings(quic: configuration, isServer: false, debugLog: debug)
                        settings.token = token
                        let ng = try NGConnection.client(
                            local: local, remote: address, settings: settings,
                            credentials: credentials, sni: sni, verifyName: verifyName, verify: tls.verifyPeer, delegate: core)
                        core.attach(ng)
                    } catch {
                        c.resume(returning: .failure(error))
                        return
                    }
                    core.onEstablished = { c.resume(returning: $0) }
                    loop.register(fd: fd, source: core)
                    loop.addTimed(core)
                    core.flush()
                }
            }
        } onCancel: {
            loop.execute { core.cancelEstablishing() }
        }
        try result.get()
        return QUICConnection(core: core)
    }

    /// Queues `bytes` on the stream; waits while the send buffer is full.
    /// Throws the connection's error once it has ended.
    /// Returns the stream offset just past `bytes` (see `acknowledgedBytes`).
    @discardableResult
    public nonisolated(nonsending) func write(_ bytes: ByteBuffer) async throws(QUICError) -> Int {
        try await core.write(bytes)
    }

    /// Sends FIN after everything written so far (the peer's reader then ends) and
    /// waits until the peer acknowledged all of it. Writing afterwards is an error.
    public func finishWriting() async throws(QUICError) {
        try await core.finishWriting()
    }

    /// Received bytes, in order. Ends (`nil`) at the peer's FIN; throws the
    /// connection's error (idle timeout, closed by peer with code and reason, ...).
    /// One iterator at a time.
    public var inbound: Inbound { Inbound(core: core) }

    /// Closes the connection with a QUIC application error code (YoMo: `0x13`) and
    /// reason. Unsent data is discarded. Returns once the CONNECTION_CLOSE is sent.
    public func close(errorCode: UInt64 = QUICError.yomoCloseCode, reason: String = "") async {
        let core = self.core
        // The server's loop gone: nothing left to close.
        await core.loop.run(orIfStopped: ()) { core.closeLocally(code: errorCode, reason: reason) }
    }

    /// From now on the peer may send only what the receive window already
    /// allows: a client that is closing bounds what it must still take.
    package func freezeReceiveWindow() async {
        let core = self.core
        await core.loop.run(orIfStopped: ()) { core.freezeReceiveWindow() }
    }

    /// The receive window moves again after `freezeReceiveWindow()`: a closing
    /// client whose peer routes nothing more to it reads what is on its way.
    package func thawReceiveWindow() async {
        let core = self.core
        await core.loop.run(orIfStopped: ()) { core.thawReceiveWindow() }
    }

    /// Closes with `errorCode` and `reason` only if, at that moment, nothing
    /// received is unread, the reader waits for more, every byte written was
    /// acknowledged and `quiet()` holds; checked where packets arrive, so no
    /// byte is acknowledged to the peer after the check and left unread.
    /// True if it closed (or had ended before).
    package func closeIfQuiet(errorCode: UInt64, reason: String, quiet: @escaping @Sendable () -> Bool) async -> Bool {
        let core = self.core
        return await core.loop.run(orIfStopped: true) { core.closeIfQuiet(code: errorCode, reason: reason, quiet: quiet) }
    }

    /// The largest UDP payload the connection sends now: 1200 bytes until Path
    /// MTU Discovery confirms more. (Tests and diagnostics; read on the loop.)
    func currentMaxDatagramSize() async -> Int {
        let core = self.core
        return await core.loop.run(orIfStopped: 0) { core.ng.map(core.datagramSize) ?? 0 }
    }

    /// The connection found that the path drops its bigger datagrams (its
    /// MTU shrank after Path MTU Discovery) and sends smaller ones from now on.
    package struct DatagramSizeLowered: Sendable, Hashable {
        /// The largest datagram sent until now, and from now on.
        package var from: Int
        package var to: Int
        package var cause: Cause

        package enum Cause: Sendable, Hashable {
            /// An ICMP error (fragmentation needed, packet too big) or the
            /// local interface said a datagram was too big: `to` fits the MTU it gave.
            case tooBig
            /// Nothing sent was acknowledged for this long while the peer was
            /// still heard from (no ICMP came), and then 1200-byte datagrams,
            /// which every QUIC path carries, got through with little loss:
            /// `to` is 1200 bytes. (Small ones lost as well mean a lossy path,
            /// or a path that was down: `SmallerDatagramsTried`.)
            case unacknowledged(for: Duration)
            /// Another connection of the server to the same host found it.
            case sameHost
        }
    }

    /// Calls `handler` on the connection's loop thread (keep it short) when the
    /// connection finds that the path drops its bigger datagrams (a shrunk
    /// path MTU) and sends smaller ones from then on.
    package func onDatagramSizeLowered(_ handler: @escaping @Sendable (DatagramSizeLowered) -> Void) {
        let core = self.core
        _ = core.loop.execute { core.onDatagramLimitLowered = handler }
    }

    /// A stall was tried with smaller datagrams and was not a smaller MTU:
    /// the size went back to `size`.
    package struct SmallerDatagramsTried: Sendable, Hashable {
        package var size: Int
        package var cause: Cause

        package enum Cause: Sendable, Hashable {
            /// A twentieth or more of the smaller datagrams were lost too.
            case lossyPath(lost: Int, sent: Int)
            /// The first acknowledgement came long after the first smaller
            /// datagram, or before any: the path was down both ways and is back.
            case pathWasDown
        }
    }

    /// Calls `handler` on the connection's loop thread (keep it short) when a
    /// stall's trial of smaller datagrams ends without finding a smaller MTU.
    package func onSmallerDatagramsTried(_ handler: @escaping @Sendable (SmallerDatagramsTried) -> Void) {
        let core = self.core
        _ = core.loop.execute { core.onSmallerDatagramsTried = handler }
    }

    /// Bytes written but not yet acknowledged by the peer: what may be lost if
    /// the connection dies now.
    public var unacknowledgedBytes: Int { core.unacknowledgedBytes }

    /// Bytes received (and so acknowledged to the peer) that the reader has
    /// not taken yet.
    package var unreadBytes: Int { core.unreadBytes }

    /// What the peer had not acknowledged when the connection ended, kept for
    /// whoever wants to send it again elsewhere (the zipper, toward a stream
    /// function that comes back); nil while the connection lives, when all was
    /// acknowledged, or once taken. Only the first call gets it. Kept for a
    /// server's connections only.
    package func takeUnacknowledged() -> Unacknowledged? { core.takeUnacknowledged() }

    /// Returns once the connection has ended (closed by either side, lost,
    /// timed out), or the task is cancelled.
    package func waitUntilEnded() async { await core.waitUntilEnded() }

    /// From now on, bytes the peer acknowledged stay here until its
    /// application releases them (`releaseRetained(through:)`), and what
    /// `takeUnacknowledged()` gives at the end begins after what was released:
    /// a stream function that says which frames its handlers finished. Past
    /// its share of `budget`, the oldest go as if released (a peer that says
    /// it releases and does not costs no more, and neither do many peers, nor
    /// many connections from one host: the share is its address group's part).
    package func retainAcknowledged(budget: RetentionBudget) {
        // A connection no address group counts (a client's own) is a group of its own.
        core.retainAcknowledged(budget: budget, group: addressGroup ?? "connection \(ObjectIdentifier(core).hashValue)")
    }

    /// The peer's application is done with the stream's bytes before `offset`.
    package func releaseRetained(through offset: Int) { core.releaseRetained(through: offset) }

    /// The stream offset before which the peer is done with every byte: what
    /// its application released, with a retention (or what went past its
    /// limit); else what its QUIC stack acknowledged.
    package var releasedBytes: Int { core.retentionProgress?.settled ?? acknowledgedBytes }

    /// A peer that is closing is told what is kept of what it acknowledged:
    /// from now on nothing more of it goes past the retention's share (the
    /// caller writes nothing more beyond what it had). Where what went past the
    /// share before ends (0: nothing did); nil without a retention.
    package func pinRetention() -> Int? { core.pinRetention() }

    /// Bytes acknowledged and kept for the peer's application to release (0 without a retention).
    package var retainedBytes: Int { core.retentionProgress?.bytes ?? 0 }

    /// Bytes the peer acknowledged and its application had not released that
    /// went past the retention's share: not taken at the end, so a peer that
    /// ended without handling them lost them. Still readable after the end.
    package var givenUpBytes: Int { core.retentionProgress?.givenUp ?? 0 }

    /// Stream bytes the peer had not acknowledged when the connection ended.
    package struct Unacknowledged: Sendable {
        /// The bytes, from the start of the write the first unacknowledged byte
        /// belongs to, in order.
        package var parts: [ByteBuffer]
        /// How many leading bytes of `parts` the peer did acknowledge (a write
        /// that ends within them reached it whole).
        package var acknowledgedPrefix: Int
        /// The stream offset `parts` begin at.
        package var streamOffset: Int

        package init(parts: [ByteBuffer], acknowledgedPrefix: Int, streamOffset: Int = 0) {
            self.parts = parts
            self.acknowledgedPrefix = acknowledgedPrefix
            self.streamOffset = streamOffset
        }

        /// The bytes in one buffer.
        package var bytes: ByteBuffer {
            var all = ByteBufferAllocator().buffer(capacity: parts.reduce(0) { $0 + $1.readableBytes })
            for part in parts { all.writeImmutableBuffer(part) }
            return all
        }
    }

    /// The stream offset up to which the peer acknowledged every byte; still
    /// readable after the connection ended. A write's returned offset at or
    /// below it reached the peer's QUIC stack.
    public var acknowledgedBytes: Int { core.acknowledgedTotal.load(ordering: .relaxed) }

    /// The connection's health, refreshed by its loop at most every 100 ms
    /// while it sends (zero before the first refresh).
    public var statistics: Statistics {
        var snapshot = core.healthSnapshot.withLock { $0 }
        snapshot.bytesSent = core.bytesSent.load(ordering: .relaxed)
        snapshot.bytesReceived = core.bytesReceived.load(ordering: .relaxed)
        snapshot.datagramsSent = core.datagramsSent.load(ordering: .relaxed)
        snapshot.datagramsReceived = core.datagramsReceived.load(ordering: .relaxed)
        return snapshot
    }

    public struct Statistics: Sendable, Hashable {
        public var smoothedRTT: Duration = .zero
        public var minimumRTT: Duration = .zero
        /// Bytes the congestion controller allows in flight.
        public var congestionWindow = 0
        public var bytesInFlight = 0
        /// Probe timeouts in a row (a sign of loss or a silent peer).
        public var probeTimeouts = 0
        /// UDP payload bytes sent and received on this connection.
        public var bytesSent = 0
        public var bytesReceived = 0
        /// UDP datagrams (QUIC packets, one each here) sent and received.
        public var datagramsSent = 0
        public var datagramsReceived = 0
        /// Packets with the stream's data that ngtcp2 declared lost (spurious
        /// losses included): what was sent again.
        public var packetsLost = 0
        /// The largest UDP payload the connection sends now: 1200 bytes until
        /// Path MTU Discovery confirms more, and less again for good once the
        /// path was found to drop the bigger datagrams (what an ICMP error's
        /// MTU allows, or 1200 bytes).
        public var maximumDatagramSize = 0
        /// Bytes per second the congestion controller paces at: BBR's
        /// estimate of the path's rate times its gain; 0 for CUBIC and Reno,
        /// which set none (ngtcp2 then paces from the window and the RTT).
        public var pacingRate = 0

        public init() {}
    }

    /// The stream offset after the last byte written, and whether the
    /// connection ended, read together: what a write made so far must wait
    /// for (`acknowledgedBytes` reaching the offset) or never will.
    package var sendProgress: (written: Int, ended: Bool) {
        core.sendShared.withLock { ($0.enqueuedTotal, $0.error != nil) }
    }

    /// Why the connection ended, once it has.
    public var closeReason: QUICError? {
        core.sendShared.withLock { $0.error }
    }

    public struct Inbound: AsyncSequence, Sendable {
        public typealias Element = ByteBuffer
        public typealias Failure = QUICError
        let core: ConnectionCore

        public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(core: core) }

        public struct AsyncIterator: AsyncIteratorProtocol {
            public typealias Element = ByteBuffer
            public typealias Failure = QUICError
            let core: ConnectionCore

            public mutating func next() async throws(QUICError) -> ByteBuffer? {
                try await core.receive()
            }

            public mutating func next(isolation actor: isolated (any Actor)?) async throws(QUICError) -> ByteBuffer? {
                try await core.receive()
            }
        }
    }
}

/// `host` without the brackets around an IPv6 literal (`[::1]` → `::1`), as
/// `trimmingCharacters(in: "[]")` did (not in FoundationEssentials).
func withoutBrackets(_ host: String) -> String {
    let isBracket: (Character) -> Bool = { $0 == "[" || $0 == "]" }
    return String(host.drop(while: isBracket).reversed().drop(while: isBracket).reversed())
}

func isIPAddress(_ host: String) -> Bool {
    let h = withoutBrackets(host)
    var v4 = in_addr()
    var v6 = in6_addr()
    return inet_pton(AF_INET, h, &v4) == 1 || inet_pton(AF_INET6, h, &v6) == 1
}
