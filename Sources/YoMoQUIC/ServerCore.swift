import CNGTCP2
import Glibc
import Synchronization

/// Accepted connections waiting for the application.
struct AcceptShared {
    var queue: [QUICConnection] = []
    var waiter: CheckedContinuation<QUICConnection?, Never>?
    var finished = false
}

/// The listener: one UDP socket on its own loop, datagrams routed to
/// connections by destination connection id.
final class ServerCore: LoopSource, @unchecked Sendable {
    static let cidLength = 18

    let loop: QUICEventLoop
    let fd: Int32
    let local: UDPAddress
    let configuration: QUICConfiguration
    let credentials: TLSCredentials
    let verifyClient: Bool
    let limits: QUICServer.Limits
    private let resetSecret: [UInt8]
    private let debugLog: Bool

    // Loop thread.
    private var routes: [ConnectionID: ConnectionCore] = [:]
    private var connections: [ObjectIdentifier: ConnectionCore] = [:]
    private var closed = false
    /// Cleared when the listener starts to close: new connections are not taken.
    private var acceptsNew = true
    private var handshaking = 0
    /// Handshakes of clients whose address no Retry proved: past
    /// `Limits.maximumUnvalidatedHandshakes`, new Initials get a Retry.
    private var unvalidatedHandshaking = 0
    /// Handshakes of addresses a Retry proved, by address group: a proven
    /// address is its sender's, so one host can be held to its share.
    private var validatedHandshaking: [AddressGroup: Int] = [:]
    private let retryTokens: RetryTokens
    /// `Limits.trustedNetworks`, parsed (`bind` refused any that does not parse).
    private let trustedNetworks: [IPNetwork]
    /// Told (on the loop), at most every 10 s while it lasts, that new
    /// connections are asked to prove their address, with the Retries sent
    /// since it was last told.
    var onRetrying: (@Sendable (Int) -> Void)?
    private var retriesSaid = 0
    private var retryNoticeTick: UInt64 = 0
    /// Connections past their handshake, by the peer's address group (its IPv4
    /// address or its IPv6 network); the count is published for `statistics`.
    private var establishedByHost: [AddressGroup: EstablishedFromHost] = [:] {
        didSet { stats.clientAddresses.store(establishedByHost.count, ordering: .relaxed) }
    }
    /// Told (on the loop) of each connection closed over its address's share.
    var onRefusedPerAddress: (@Sendable (String) -> Void)?
    /// Told (on the loop) of each proven address's handshake refused over its share.
    var onHandshakeRefusedPerAddress: (@Sendable (String) -> Void)?
    /// The clients' receive windows, held to `Limits.maximumReceiveWindowBytes`
    /// (nil: each its own); their sum is published for `statistics` at each change.
    private var receiveWindows: ReceiveWindowBudget? {
        didSet { stats.receiveWindowBytes.store(receiveWindows?.total ?? 0, ordering: .relaxed) }
    }
    /// Connections holding datagrams the full socket refused.
    private var blocked: [ObjectIdentifier: ConnectionCore] = [:]
    /// Test hooks: simulate a full socket on new connections; count held-back sends.
    var simulateFullSocketEvery = 0
    private(set) var blockedEvents = 0
    private var statelessResetsThisTick = 0
    private var statelessResetTick: UInt64 = 0

    let accepted = Mutex(AcceptShared())
    /// Counters for tests and diagnostics (atomics: bumped per datagram).
    let stats = ServerStats()

    init(
        loop: QUICEventLoop, fd: Int32, local: UDPAddress, configuration: QUICConfiguration, credentials: TLSCredentials,
        verifyClient: Bool, limits: QUICServer.Limits, statelessResetKey: [UInt8]?, debugLog: Bool
    ) {
        self.loop = loop
        self.fd = fd
        self.local = local
        self.configuration = configuration
        self.credentials = credentials
        self.verifyClient = verifyClient
        self.limits = limits
        self.debugLog = debugLog
        receiveWindows = limits.maximumReceiveWindowBytes.map {
            ReceiveWindowBudget(bytes: $0, maximum: max(configuration.maxStreamReceiveWindow, configuration.streamReceiveWindow))
        }
        retryTokens = RetryTokens(statelessResetKey: statelessResetKey)
        trustedNetworks = limits.trustedNetworks.compactMap(IPNetwork.init)
        if let statelessResetKey {
            // The same key after a restart gives the same reset tokens, so clients
            // of the previous run recognise our resets and reconnect at once.
            resetSecret = statelessResetKey
        } else {
            var secret = [UInt8](repeating: 0, count: 32)
            gnutls_rnd(GNUTLS_RND_RANDOM, &secret, 32)
            resetSecret = secret
        }
    }

    /// Set once the socket is closed: by `QUICServer.close()` once the loop has
    /// stopped (so the port is free when it returns), else by `deinit`.
    private let socketClosed = Atomic<Bool>(false)

    deinit { closeSocket() }

    /// Closes the listening socket once. Only after the loop has stopped: a
    /// connection still running could otherwise send on a reused descriptor.
    func closeSocket() {
        if !socketClosed.exchange(true, ordering: .acquiringAndReleasing) { close(fd) }
    }

    func start() {
        loop.register(fd: fd, source: self)
    }

    func loopReadable() {
        let rx = loop.rxBuffer
        var from = sockaddr_storage()
        var fromLength = socklen_t(0)
        var to = sockaddr_storage()
        var segment = 0
        var touched: [ObjectIdentifier: ConnectionCore] = [:]
        for _ in 0..<256 {
            let n = cngtcp2_recv_to(fd, rx.baseAddress!.assumingMemoryBound(to: UInt8.self), rx.count, &from, &fromLength, &segment, &to)
            if n < 0 {
                if -n == EAGAIN || -n == EWOULDBLOCK { break }
                continue
            }
            let address = UDPAddress(storage: from, length: fromLength)
            // Set only on a wildcard listener (cngtcp2_enable_pktinfo).
            let destination = to.ss_family == sa_family_t(AF_UNSPEC) ? nil : UDPAddress(storage: to, length: socklen_t(MemoryLayout<sockaddr_storage>.size))
            var offset = 0
            let step = max(1, segment)
            while offset < n {
                let length = min(step, n - offset)
                if let core = dispatch(UnsafeRawBufferPointer(rebasing: rx[offset..<(offset + length)]), from: address, to: destination) {
                    touched[ObjectIdentifier(core)] = core
                }
                offset += length
            }
        }
        for core in touched.values { core.afterReceive() }
    }

    /// Reads the ICMP errors the socket queued (`IP_RECVERR`): a port
    /// unreachable for a connection's peer is a refusal counted by it (two in a
    /// row with nothing received between end it). Without this a killed
    /// client's connection lived on until the idle timeout, and what the
    /// zipper wrote to it meanwhile went nowhere. Each error counts (a burst
    /// of datagrams to the dead port makes a burst of errors): a peer that
    /// died with the path full draws only probes, further apart each time.
    /// Drained whole: the error is level-triggered while the queue holds any.
    /// A datagram too big for the path is news for its connection
    /// (`ConnectionCore.pathTooBig`).
    func loopError() {
        readICMPErrors(fd) { error in
            for core in connections.values where core.isRemote(error.address) {
                switch error {
                case .unreachable: core.peerRefused()
                case .tooBig(_, let mtu): core.pathTooBig(mtu: mtu)
                }
            }
            return true
        }
    }

    /// `core` found its path dropping bigger datagrams: its host's other
    /// connections send within `limit` too.
    func datagramLimitLowered(to limit: Int, by core: ConnectionCore) {
        for other in sameHost(as: core) {
            if other.lowerDatagramLimit(to: limit, because: .sameHost) { other.flush() }
        }
    }

    /// `core` sends smaller datagrams on trial after a stall: so do its host's
    /// other connections at once (each would otherwise stall first), and
    /// `core`'s verdict is theirs (`datagramLimitLowered`, or this with
    /// `ended` true: a lossy path, and they go back).
    func smallerDatagramsOnTrial(by core: ConnectionCore, ended: Bool = false) {
        for other in sameHost(as: core) {
            if ended { other.endFollowedTrial() } else { other.followTrial() }
        }
    }

    private func sameHost(as core: ConnectionCore) -> [ConnectionCore] {
        connections.values.filter { $0 !== core && $0.remote.isSameHost(as: core.remote) }
    }

    /// Routes one datagram; returns the connection that took it. `destination`:
    /// the address it was sent to, on a listener bound to every address.
    private func dispatch(_ datagram: UnsafeRawBufferPointer, from address: UDPAddress, to destination: UDPAddress?) -> ConnectionCore? {
        stats.datagrams.add(1, ordering: .relaxed)
        switch NGPacket.decode(datagram, shortDCIDLength: Self.cidLength) {
        case .invalid:
            stats.dropped.add(1, ordering: .relaxed)
            return nil
        case .versionNegotiation(_, let dcid, let scid):
            // Only answer datagrams big enough to be an Initial (anti-amplification).
            if datagram.count >= 1200 {
                let tx = loop.txBuffer
                let n = NGPacket.writeVersionNegotiation(into: UnsafeMutableRawBufferPointer(rebasing: tx[0..<1500]), dcid: dcid, scid: scid)
                if n > 0 {
                    stats.versionNegotiations.add(1, ordering: .relaxed)
                    send(UnsafeRawBufferPointer(rebasing: tx[0..<n]), to: address, from: destination)
                }
            }
            return nil
        case .long(_, let dcid, _):
            if let core = routes[dcid] {
                core.receive(datagram, from: address)
                return core
            }
            guard !closed, acceptsNew, NGPacket.isInitial(datagram), datagram.count >= 1200,
                  let initial = NGPacket.initial(datagram) else {
                stats.dropped.add(1, ordering: .relaxed)
                return nil
            }
            // Handshakes hold state until they time out, and Initials from
            // spoofed addresses never finish theirs: past a few of those, a
            // client proves its address with a Retry first (no state held),
            // so a flood cannot take every handshake slot from honest clients.
            var retried: (token: NGConnection.Retried, group: AddressGroup)?
            // A NEW_TOKEN token of an earlier connection proves the address as a Retry would.
            var newToken: (token: [UInt8], group: AddressGroup)?
            if initial.hasNewToken, retryTokens.isValidRegular(initial.token, from: address, now: RetryTokens.now()) {
                let group = addressGroup(of: address)
                guard hasRoomForProven(group, initial, from: address, to: destination) else { return nil }
                stats.newTokensAccepted.add(1, ordering: .relaxed)
                newToken = (initial.token, group)
            } else if initial.hasRetryToken {
                guard let original = retryTokens.originalDCID(of: initial, from: address, now: RetryTokens.now()) else {
                    stats.invalidTokens.add(1, ordering: .relaxed)
                    closeStatelessly(
                        initial, error: UInt64(NGTCP2_INVALID_TOKEN),
                        reason: "Retry token not valid here (another server's, expired, or from another address)", to: address, from: destination)
                    return nil
                }
                let group = addressGroup(of: address)
                retried = (NGConnection.Retried(originalDCID: original, token: initial.token), group)
                guard hasRoomForProven(group, initial, from: address, to: destination) else { return nil }
            } else if unvalidatedHandshaking >= limits.maximumUnvalidatedHandshakes {
                sendRetry(answering: initial, to: address, from: destination)
                return nil
            }
            // Beyond the caps, Initials are dropped: state cannot grow without
            // bound, and a client over the connection cap times out its
            // handshake and retries later.
            guard handshaking < limits.maximumHandshakes, connections.count < limits.maximumConnections else {
                stats.dropped.add(1, ordering: .relaxed)
                stats.refusedOverLimit.add(1, ordering: .relaxed)
                return nil
            }
            return accept(datagram, initial, from: address, to: destination, retried: retried, newToken: newToken)
        case .short(let dcid):
            if let core = routes[dcid] {
                core.receive(datagram, from: address)
                return core
            }
            sendStatelessReset(for: dcid, triggerLength: datagram.count, to: address, from: destination)
            return nil
        }
    }

    /// Whether a handshake from a proven address (a Retry's token, or a
    /// NEW_TOKEN's) fits its address's share; if not, it is refused at once.
    /// Held to the share only once half the slots are taken: a host with many
    /// clients (a restart's reconnect storm) is not slowed while there is
    /// room for everyone.
    private func hasRoomForProven(
        _ group: AddressGroup, _ initial: NGPacket.Initial, from address: UDPAddress, to destination: UDPAddress?
    ) -> Bool {
        guard handshaking >= limits.maximumHandshakes / 2,
              validatedHandshaking[group, default: 0] >= limits.maximumHandshakesPerAddress else { return true }
        stats.refusedHandshakesPerAddress.add(1, ordering: .relaxed)
        onHandshakeRefusedPerAddress?(group.description)
        closeStatelessly(
            initial, error: UInt64(NGTCP2_CONNECTION_REFUSED),
            reason: "too many handshakes in progress from \(group) (\(limits.maximumHandshakesPerAddress))", to: address, from: destination)
        return false
    }

    private func accept(
        _ datagram: UnsafeRawBufferPointer, _ initial: NGPacket.Initial, from address: UDPAddress, to destination: UDPAddress?,
        retried: (token: NGConnection.Retried, group: AddressGroup)?, newToken: (token: [UInt8], group: AddressGroup)?
    ) -> ConnectionCore? {
        let core = ConnectionCore(loop: loop, fd: fd, connectedSocket: false, remote: address, isServer: true, configuration: configuration)
        core.server = self
        // On a host with several addresses the kernel would answer from the one
        // its route prefers, and a client whose socket is connected to another
        // drops every answer: its handshake timed out, again and again.
        core.sourceAddress = destination
        core.simulateFullSocketEvery = simulateFullSocketEvery
        let scid = ConnectionID.random(length: Self.cidLength)
        do throws(QUICError) {
            let ng = try NGConnection.server(
                local: local, remote: address, initial: initial, retried: retried?.token, newToken: newToken?.token,
                settings: NGSettings(
                    quic: configuration, isServer: true, debugLog: debugLog,
                    managedReceiveWindow: receiveWindows == nil ? nil : ReceiveWindowBudget.minimum),
                credentials: credentials, verifyClient: verifyClient, resetSecret: resetSecret, scid: scid, delegate: core)
            core.attach(ng)
        } catch {
            stats.dropped.add(1, ordering: .relaxed)
            return nil
        }
        connections[ObjectIdentifier(core)] = core
        if receiveWindows != nil {
            core.managedWindow = ManagedReceiveWindow(cap: configuration.streamReceiveWindow)
            receiveWindows?.opened()
        }
        handshaking += 1
        core.countedAsHandshaking = true
        if let group = retried?.group ?? newToken?.group {
            validatedHandshaking[group, default: 0] += 1
            core.validatedHandshakeGroup = group
        } else {
            unvalidatedHandshaking += 1
        }
        // The id the client's Initials go to (after a Retry, the one it chose).
        core.routes = [initial.dcid, scid]
        routes[initial.dcid] = core
        routes[scid] = core
        core.streamDeadline = monotonicNow() &+ limits.streamOpenTimeout.nanoseconds
        loop.addTimed(core)
        core.onStreamOpened = { [weak self, unowned core] in self?.streamOpened(core) }
        stats.accepted.add(1, ordering: .relaxed)
        core.receive(datagram, from: address)
        return core
    }

    private func streamOpened(_ core: ConnectionCore) {
        let connection = QUICConnection(core: core)
        let waiter = accepted.withLock { a -> CheckedContinuation<QUICConnection?, Never>? in
            if let w = a.waiter {
                a.waiter = nil
                return w
            }
            a.queue.append(connection)
            return nil
        }
        waiter?.resume(returning: connection)
    }

    private func sendStatelessReset(for dcid: ConnectionID, triggerLength: Int, to address: UDPAddress, from source: UDPAddress?) {
        // At most 100 resets per 100 ms: a flood of junk must not turn into a flood of replies.
        let now = monotonicNow()
        if now - statelessResetTick > 100_000_000 {
            statelessResetTick = now
            statelessResetsThisTick = 0
        }
        guard statelessResetsThisTick < 100 else { return }
        statelessResetsThisTick += 1
        let tx = loop.txBuffer
        let n = NGPacket.writeStatelessReset(
            into: UnsafeMutableRawBufferPointer(rebasing: tx[0..<1500]), dcid: dcid, secret: resetSecret, triggerLength: triggerLength)
        if n > 0 {
            stats.statelessResets.add(1, ordering: .relaxed)
            send(UnsafeRawBufferPointer(rebasing: tx[0..<n]), to: address, from: source)
        }
    }

    /// Answers `initial` with a Retry: smaller than the Initial, so no
    /// amplification, and nothing is kept.
    private func sendRetry(answering initial: NGPacket.Initial, to address: UDPAddress, from source: UDPAddress?) {
        let scid = ConnectionID.random(length: Self.cidLength)
        guard let token = retryTokens.make(answering: initial, from: address, retrySCID: scid, now: RetryTokens.now()) else { return }
        let tx = loop.txBuffer
        let n = NGPacket.writeRetry(into: UnsafeMutableRawBufferPointer(rebasing: tx[0..<1500]), answering: initial, scid: scid, token: token)
        guard n > 0 else { return }
        stats.retries.add(1, ordering: .relaxed)
        send(UnsafeRawBufferPointer(rebasing: tx[0..<n]), to: address, from: source)
        retriesSaid += 1
        let tick = monotonicNow()
        if tick &- retryNoticeTick >= 10_000_000_000 || retryNoticeTick == 0 {
            retryNoticeTick = tick
            onRetrying?(retriesSaid)
            retriesSaid = 0
        }
    }

    /// Ends `initial`'s dial at once, keeping nothing: INVALID_TOKEN for a
    /// Retry token that is not ours (forged, or from before a restart with
    /// another key), too old, or replayed from another address;
    /// CONNECTION_REFUSED for a proven address over its share of handshakes.
    private func closeStatelessly(_ initial: NGPacket.Initial, error: UInt64, reason: String, to address: UDPAddress, from source: UDPAddress?) {
        stats.dropped.add(1, ordering: .relaxed)
        let tx = loop.txBuffer
        let n = NGPacket.writeStatelessClose(
            into: UnsafeMutableRawBufferPointer(rebasing: tx[0..<1500]), answering: initial, error: error, reason: reason)
        if n > 0 { send(UnsafeRawBufferPointer(rebasing: tx[0..<n]), to: address, from: source) }
    }

    private func send(_ packet: UnsafeRawBufferPointer, to address: UDPAddress, from source: UDPAddress?) {
        _ = address.send(packet, segment: 0, on: fd, from: source)
    }

    // MARK: Called by connections

    func addRoute(_ cid: ConnectionID, _ core: ConnectionCore) { routes[cid] = core }
    func removeRoute(_ cid: ConnectionID) { routes[cid] = nil }

    func watchWritable(_ core: ConnectionCore) {
        blockedEvents += 1
        if blocked.isEmpty { loop.setWantsWritable(fd: fd, true) }
        blocked[ObjectIdentifier(core)] = core
    }

    func loopWritable() {
        for (id, core) in blocked where core.retryBlockedSends() {
            blocked[id] = nil
        }
        if blocked.isEmpty { loop.setWantsWritable(fd: fd, false) }
    }

    /// A connection left its handshake (done or failed).
    func handshakeEnded(_ core: ConnectionCore) {
        guard core.countedAsHandshaking else { return }
        core.countedAsHandshaking = false
        handshaking -= 1
        if let group = core.validatedHandshakeGroup {
            core.validatedHandshakeGroup = nil
            validatedHandshaking[group, default: 1] -= 1
            if validatedHandshaking[group] == 0 { validatedHandshaking[group] = nil }
        } else {
            unvalidatedHandshaking -= 1
        }
    }

    /// A connection completed its handshake: its address is proven, and
    /// counted against its share, or the connection is closed, with a reason,
    /// once the handshake callback has returned.
    func handshakeCompleted(_ core: ConnectionCore) {
        handshakeEnded(core)
        // Its next connection from this address skips the Retry (under a flood, a round trip).
        if let token = retryTokens.makeRegular(for: core.remote, now: RetryTokens.now()) { core.ng?.submitNewToken(token) }
        let group = addressGroup(of: core.remote)
        let count = establishedByHost[group]?.connections ?? 0
        guard count < limits.maximumConnectionsPerAddress else {
            stats.refusedPerAddress.add(1, ordering: .relaxed)
            onRefusedPerAddress?(group.description)
            let reason = "too many connections from \(group) (limit \(limits.maximumConnectionsPerAddress))"
            loop.execute { core.closeLocally(code: QUICError.yomoCloseCode, reason: reason) }
            return
        }
        let fromHost = establishedByHost[group] ?? EstablishedFromHost(group)
        fromHost.connections += 1
        establishedByHost[group] = fromHost
        core.countedForHost = fromHost
    }

    /// What `address` counts as for the per-address shares.
    private func addressGroup(of address: UDPAddress) -> AddressGroup {
        AddressGroup(address, ipv6PrefixLength: limits.ipv6PrefixLength, trusted: trustedNetworks)
    }

    /// A connection that ended (or is gone) no longer counts for its address.
    func releaseHostShare(of core: ConnectionCore) {
        guard let fromHost = core.countedForHost else { return }
        core.countedForHost = nil
        fromHost.connections -= 1
        // By the group it was counted in: a client that migrated since (a NAT
        // rebinding) has another address now.
        if fromHost.connections == 0 { establishedByHost[fromHost.group] = nil }
    }

    /// The reader took `consumed` bytes of a connection under the budget: the
    /// window to give back to its peer now.
    func receiveWindowExtension(for core: ConnectionCore, consumed: Int, ng: NGConnection) -> Int {
        guard var window = core.managedWindow, var budget = receiveWindows else { return consumed }
        // Shared among connections past their handshake: Initials spoofed by
        // the thousand complete none, so they cannot shrink anyone's share.
        let share = budget.share(addresses: establishedByHost.count, connectionsFromAddress: core.countedForHost?.connections ?? 1)
        let returned = window.read(
            consumed, share: share, budget: &budget, now: monotonicNow(), smoothedRTT: { ng.smoothedRTT })
        (core.managedWindow, receiveWindows) = (window, budget)
        return returned
    }

    /// A connection that ended (or is gone) gives its window back to the budget.
    func releaseReceiveWindow(of core: ConnectionCore) {
        guard let window = core.managedWindow else { return }
        core.managedWindow = nil
        receiveWindows?.closed(window)
    }

    func remove(_ core: ConnectionCore) {
        handshakeEnded(core)
        releaseHostShare(of: core)
        releaseReceiveWindow(of: core)
        blocked[ObjectIdentifier(core)] = nil
        for cid in core.routes where routes[cid] === core { routes[cid] = nil }
        core.routes = []
        connections[ObjectIdentifier(core)] = nil
    }

    var connectionCount: Int { connections.count }

    // MARK: Shutdown

    /// Answers no new Initial: a client dialling a zipper about to close
    /// retries later (its Initial again), reaching the one that replaces it.
    func stopAccepting() { acceptsNew = false }

    /// Closes every connection with code 0 (listener shut down) and stops listening.
    func shutdown(reason: String) {
        guard !closed else { return }
        closed = true
        for core in Array(connections.values) {
            core.closeLocally(code: 0, reason: reason)
            core.release()
        }
        loop.unregister(fd: fd)
        let waiter = accepted.withLock { a -> CheckedContinuation<QUICConnection?, Never>? in
            a.finished = true
            let w = a.waiter
            a.waiter = nil
            return w
        }
        waiter?.resume(returning: nil)
    }
}

/// Connections past their handshake from one address (on the server's loop):
/// each of them holds it, so its share is read without a lookup.
final class EstablishedFromHost {
    let group: AddressGroup
    var connections = 0

    init(_ group: AddressGroup) { self.group = group }
}

final class ServerStats: Sendable {
    let datagrams = Atomic<Int>(0)
    let dropped = Atomic<Int>(0)
    let accepted = Atomic<Int>(0)
    let versionNegotiations = Atomic<Int>(0)
    let statelessResets = Atomic<Int>(0)
    /// Connections closed because they opened no stream in time.
    let streamTimeouts = Atomic<Int>(0)
    /// Initials dropped because a connection or handshake cap was reached.
    let refusedOverLimit = Atomic<Int>(0)
    /// Connections closed because their address had its share already.
    let refusedPerAddress = Atomic<Int>(0)
    let clientAddresses = Atomic<Int>(0)
    let retries = Atomic<Int>(0)
    let invalidTokens = Atomic<Int>(0)
    let newTokensAccepted = Atomic<Int>(0)
    let refusedHandshakesPerAddress = Atomic<Int>(0)
    /// The clients' receive windows summed, under a budget (0 without one).
    let receiveWindowBytes = Atomic<Int>(0)
}
