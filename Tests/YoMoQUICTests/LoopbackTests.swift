import Foundation
import Synchronization
import NIOCore
import Testing
import YoMoWire
@testable import YoMoQUIC

/// Our client against our server on loopback.
@Suite("Client and server on loopback")
struct LoopbackTests {
    @Test("16 MiB echoed byte-exact, both directions at once")
    func bulkEcho() async throws {
        let server = try await EchoServer()
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        let total = 16 << 20
        let received = try await Fixture.echo(connection, total: total, chunk: 10_000)
        #expect(received == total)
        await connection.close()
        await server.stop()
    }

    @Test("sends refused by a full socket (EAGAIN) are held and resent in order")
    func fullSocketBuffer() async throws {
        let server = try await EchoServer()
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        let core = connection.core
        await onLoop(core.loop) { core.simulateFullSocketEvery = 7 }
        let total = 8 << 20
        let received = try await Fixture.echo(connection, total: total)
        #expect(received == total)
        let blocked = await onLoop(core.loop) { core.blockedSends }
        #expect(blocked > 0, "the simulated full socket should have held sends back")
        await connection.close()
        await server.stop()
    }

    @Test("the server holds and resends datagrams a full socket refused")
    func serverFullSocketBuffer() async throws {
        let server = try await EchoServer()
        let serverCore = server.server.core
        await onLoop(serverCore.loop) { serverCore.simulateFullSocketEvery = 5 }
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        let total = 8 << 20
        let received = try await Fixture.echo(connection, total: total)
        #expect(received == total)
        let events = await onLoop(serverCore.loop) { serverCore.blockedEvents }
        #expect(events > 0)
        await connection.close()
        await server.stop()
    }

    @Test("Path MTU Discovery raises the datagram size above 1200 bytes on loopback", arguments: ["127.0.0.1", "::1"])
    func pathMTUDiscovery(host: String) async throws {
        let server = try await EchoServer(host: host)
        let connection = try await QUICConnection.connect(host: host, port: server.port)
        // 1200 bytes (QUIC's minimum) until probed; probes go out once the
        // handshake is confirmed, with ordinary traffic.
        var size = 0
        for round in 0..<50 {
            let reply = try await echo(connection, ByteBuffer(string: "round \(round)"))
            #expect(String(buffer: reply) == "round \(round)")
            size = await connection.currentMaxDatagramSize()
            if size > 1200 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        // ngtcp2 probes up to 1452 bytes (an Ethernet path's IPv6 payload).
        #expect(size > 1200 && size <= 1452, "max datagram size \(size)")
        // Full-size datagrams then carry data both ways intact.
        let total = 1 << 20
        let echoed = try await Fixture.echo(connection, total: total, chunk: 10_000)
        #expect(echoed == total)
        await connection.close()
        await server.stop()
    }

    @Test("IPv6, localhost and a wildcard listener resolve and connect", arguments: ["::1", "[::1]", "localhost", "0.0.0.0"])
    func addressFamilies(host: String) async throws {
        let listen = switch host {
        case "localhost": "127.0.0.1"
        case "0.0.0.0": "0.0.0.0"
        default: "::1"
        }
        let server = try await EchoServer(host: listen)
        let target = switch host {
        case "localhost": "localhost"
        case "0.0.0.0": "127.0.0.1"
        default: host
        }
        let connection = try await QUICConnection.connect(host: target, port: server.port)
        let reply = try await echo(connection, ByteBuffer(string: "hello \(host)"))
        #expect(String(buffer: reply) == "hello \(host)")
        await connection.close()
        await server.stop()
    }

    @Test("frames round-trip through the frame connection, big and small")
    func frames() async throws {
        let server = try await EchoServer()
        let connection = try await QUICFrameConnection.connect(host: "127.0.0.1", port: server.port)
        var big = ByteBuffer()
        big.writeRepeatingByte(0xAB, count: 300_000)
        let sent: [Frame] = [
            .handshake(HandshakeFrame(name: "sfn", id: "abc-0", clientType: .streamFunction, observedTags: [0x33], authName: "", authPayload: "", version: "2024-01-03", functionDefinition: [], wantedTarget: "")),
            .data(DataFrame(tag: 0x33, payload: ByteBuffer(string: "small"))),
            .data(DataFrame(tag: 0x34, payload: big)),
            .handshakeAck,
            .goaway(GoawayFrame(message: "bye")),
        ]
        for frame in sent { try await connection.write(frame) }
        var received: [Frame] = []
        for try await frame in connection.frames {
            received.append(frame)
            if received.count == sent.count { break }
        }
        #expect(received == sent)
        await connection.close()
        await server.stop()
    }

    /// Under a receive window budget (the default) a connection that was
    /// never read has only its first window, 32 KiB; without one, 2 MiB.
    @Test("a writer waits when the peer does not read, and nothing is lost", arguments: [nil, 64 << 20] as [Int?])
    func backpressure(budget: Int?) async throws {
        let server = try await QUICServer.bind(host: "127.0.0.1", port: 0, limits: .init(maximumReceiveWindowBytes: budget))
        let window = budget == nil ? 2 << 20 : 32 << 10
        var configuration = QUICConfiguration.default
        configuration.sendBufferSize = 256 << 10
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port, configuration: configuration)
        // The server accepts but does not read: after window (2 MiB) + send buffer the writer must block.
        let written = ManagedCounter()
        let writer = Task {
            var sent = 0
            while sent < (8 << 20) {
                try await connection.write(Fixture.pattern(offset: sent, length: 65536))
                sent += 65536
                written.set(sent)
            }
        }
        var iterator = server.connections.makeAsyncIterator()
        let accepted = try #require(await iterator.next())
        // The peer's stream window fills up...
        let deadline = ContinuousClock.now + .seconds(20)
        while written.get() < window && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(written.get() >= window, "the peer's window should have been filled")
        // ...and then the writer can get at most its send buffer (plus one write) further.
        try await Task.sleep(for: .milliseconds(300))
        let stalled = written.get()
        #expect(stalled <= window + (256 << 10) + 65536, "writer should be blocked by flow control, wrote \(stalled)")
        // Now read everything: the writer completes and the bytes are exact.
        let received = try await Fixture.receive(accepted, total: 8 << 20)
        try await writer.value
        #expect(received == 8 << 20)
        await connection.close()
        await server.close()
    }

    @Test("a frozen receive window lets the peer send only what it already allowed, however much is read; thawed, it returns what was read meanwhile and the rest comes")
    func frozenWindowThaws() async throws {
        let window = 64 << 10
        var configuration = QUICConfiguration.default
        configuration.streamReceiveWindow = window
        let server = try await QUICServer.bind(host: "127.0.0.1", port: 0)
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port, configuration: configuration)
        try await connection.write(ByteBuffer(string: "x"))
        var iterator = server.connections.makeAsyncIterator()
        let accepted = try #require(await iterator.next())
        await connection.freezeReceiveWindow()
        let received = Atomic(0)
        let reader = Task { for try await chunk in connection.inbound { received.add(chunk.readableBytes, ordering: .relaxed) } }
        let total = 4 * window
        let writer = Task { try await accepted.write(ByteBuffer(repeating: 0x61, count: total)) }
        // All the window allowed arrives and is read; the window does not move.
        #expect(await until { received.load(ordering: .relaxed) == window }, "\(received.load(ordering: .relaxed))")
        #expect(accepted.unacknowledgedBytes > 0)
        await connection.thawReceiveWindow()
        // Without what was read while frozen, nothing more would be read to return: it would stall here.
        #expect(await until { received.load(ordering: .relaxed) == total }, "\(received.load(ordering: .relaxed))")
        try await writer.value
        reader.cancel()
        await connection.close()
        await server.close()
    }

    @Test("close with 0x13 and a reason reaches the peer")
    func closeWithReason() async throws {
        let server = try await QUICServer.bind(host: "127.0.0.1", port: 0)
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        try await connection.write(ByteBuffer(string: "x"))
        var iterator = server.connections.makeAsyncIterator()
        let accepted = try #require(await iterator.next())
        await accepted.close(errorCode: 0x13, reason: "sfn finished")
        let error = await #expect(throws: QUICError.self) {
            for try await _ in connection.inbound {}
        }
        #expect(error?.kind == .closedByPeer)
        #expect(error?.applicationErrorCode == 0x13)
        #expect(error?.reason == "sfn finished")
        #expect(error?.isListenerShutdown == false)
        #expect(error.map { "\($0)" }?.contains("sfn finished") == true)
        await server.close()
    }

    @Test("listener shutdown reaches clients as code 0")
    func listenerShutdown() async throws {
        let server = try await EchoServer()
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        _ = try await echo(connection, ByteBuffer(string: "ping"))
        await server.stop()
        let error = await #expect(throws: QUICError.self) {
            for try await _ in connection.inbound {}
        }
        #expect(error?.kind == .closedByPeer)
        #expect(error?.isListenerShutdown == true)
        await #expect(throws: QUICError.self) { try await connection.write(ByteBuffer(string: "late")) }
    }

    @Test("after the server closed: accepted connections fail and close() and a second server.close() return")
    func useAfterServerClose() async throws {
        let server = try await QUICServer.bind(host: "127.0.0.1", port: 0)
        let client = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        try await client.write(ByteBuffer(string: "x"))
        var iterator = server.connections.makeAsyncIterator()
        let accepted = try #require(await iterator.next())
        await server.close()
        await server.close()
        #expect(await iterator.next() == nil)
        #expect(await server.connectionCount() == 0)
        let error = await #expect(throws: QUICError.self) { try await accepted.write(ByteBuffer(string: "late")) }
        #expect(error?.kind == .closedLocally)
        await accepted.close()
        await client.close()
    }

    @Test("keep-alive PINGs hold an idle link open past the peer's idle timeout", arguments: [true, false])
    func keepAlive(enabled: Bool) async throws {
        var serverConfiguration = QUICConfiguration.default
        serverConfiguration.idleTimeout = .seconds(1)  // like the Go zipper's 5 s, shorter
        let server = try await EchoServer(configuration: serverConfiguration)
        var configuration = QUICConfiguration.default
        configuration.keepAliveInterval = enabled ? .milliseconds(300) : nil
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port, configuration: configuration)
        let clock = ContinuousClock()
        // The last packet arrives during the echo, so the idle timeout cannot end it sooner than this after.
        let beforeEcho = clock.now
        _ = try await echo(connection, ByteBuffer(string: "a"))
        if enabled {
            try await Task.sleep(for: .milliseconds(2500))  // silence: 2.5 idle timeouts
            #expect(String(buffer: try await echo(connection, ByteBuffer(string: "b"))) == "b")
        } else {
            // Without PINGs the idle timeout (the smaller side's, 1 s) ends it: waited
            // for, not slept through and then probed (a late probe can meet the
            // server's stateless reset instead).
            while connection.closeReason == nil, clock.now < beforeEcho.advanced(by: .seconds(20)) {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(clock.now - beforeEcho >= .seconds(1), "not before the idle timeout")
            #expect(connection.closeReason?.kind == .idleTimeout, "\(String(describing: connection.closeReason))")
            let error = await #expect(throws: QUICError.self) { _ = try await echo(connection, ByteBuffer(string: "b")) }
            #expect(error?.kind == .idleTimeout)
        }
        await connection.close()
        await server.stop()
    }

    @Test("a malformed byte stream fails the frame reader with a WireError")
    func malformedFrames() async throws {
        let server = try await QUICServer.bind(host: "127.0.0.1", port: 0)
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        // A DataFrame tag byte with a negative y3 length.
        try await connection.write(ByteBuffer(bytes: [0xBF, 0x7F, 0x01, 0x02]))
        var iterator = server.connections.makeAsyncIterator()
        let accepted = QUICFrameConnection(try #require(await iterator.next()))
        await #expect(throws: WireError.self) {
            for try await _ in accepted.frames {}
        }
        await connection.close()
        await server.close()
    }

    @Test("address resolution failure says so")
    func resolutionFailure() async throws {
        let error = await #expect(throws: QUICError.self) {
            _ = try await QUICConnection.connect(host: "no-such-host.invalid", port: 9000)
        }
        #expect(error?.kind == .addressResolution)
        #expect(error.map { "\($0)" }?.contains("no-such-host.invalid") == true)
    }

    @Test("a closed port fails fast (ICMP unreachable), not after the handshake timeout")
    func refused() async throws {
        // Bind and close to get a port nobody listens on.
        let probe = try makeUDPSocket(family: AF_INET)
        var address = try UDPAddress.resolve(host: "127.0.0.1", port: 0)[0]
        _ = address.withSockaddr { bind(probe, $0, $1) }
        address = try localAddress(of: probe)
        close(probe)
        // A handshake timeout far above what a loaded machine needs to see the ICMP error.
        var configuration = QUICConfiguration.default
        configuration.handshakeTimeout = .seconds(30)
        let start = ContinuousClock.now
        let error = await #expect(throws: QUICError.self) {
            _ = try await QUICConnection.connect(host: "127.0.0.1", port: address.port, configuration: configuration)
        }
        #expect(error?.kind == .socket)
        #expect(ContinuousClock.now - start < .seconds(10))
    }

    @Test("wrong ALPN is refused with \"no application protocol\"")
    func alpnMismatch() async throws {
        let server = try await EchoServer()
        var configuration = QUICConfiguration.default
        configuration.alpn = "not-yomo"
        let error = await #expect(throws: QUICError.self) {
            _ = try await QUICConnection.connect(host: "127.0.0.1", port: server.port, configuration: configuration)
        }
        #expect(error?.kind == .tlsAlert)
        #expect(error?.tlsAlertName == "no application protocol")
        await server.stop()
    }

    @Test("a cancelled connect to a peer that drops every packet ends at once, not at the handshake timeout")
    func cancelledConnect() async throws {
        let (silent, port) = try silentUDPSocket()
        defer { close(silent) }
        var configuration = QUICConfiguration.default
        configuration.handshakeTimeout = .seconds(60)
        let attempt = Task { () throws(QUICError) -> QUICConnection in
            try await QUICConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
        }
        // Cancelled once its first Initial has arrived: the handshake is under way.
        var buffer = [UInt8](repeating: 0, count: 2048)
        while recv(silent, &buffer, buffer.count, Int32(MSG_DONTWAIT)) <= 0 { try await Task.sleep(for: .milliseconds(5)) }
        attempt.cancel()
        // Before, this waited out the 60 s handshake timeout and failed with it.
        let outcome = await attempt.result
        if case .failure(let error) = outcome {
            #expect((error as? QUICError)?.kind == .cancelled, "\(error)")
        } else {
            Issue.record("connected to a peer that never answered")
        }
    }

    @Test("an address that never answers is passed over for the next one after the handshake timeout; IPv4 comes first")
    func silentAddressPassedOver() async throws {
        let (silent, silentPort) = try silentUDPSocket()
        defer { close(silent) }
        let server = try await EchoServer()
        let addresses = [
            try UDPAddress.resolve(host: "127.0.0.1", port: silentPort)[0], try UDPAddress.resolve(host: "127.0.0.1", port: server.port)[0],
        ]
        var configuration = QUICConfiguration.default
        configuration.handshakeTimeout = .milliseconds(300)
        // Before, the silent address's handshake timeout ended the attempt.
        let connection = try await QUICConnection.connect(toAny: addresses, host: "127.0.0.1", configuration: configuration, tls: .default)
        #expect(String(buffer: try await echo(connection, ByteBuffer(string: "second"))) == "second")
        await connection.close()
        await server.stop()

        let v6 = try UDPAddress.resolve(host: "::1", port: 1)[0], v4 = try UDPAddress.resolve(host: "127.0.0.1", port: 2)[0]
        let v6b = try UDPAddress.resolve(host: "::1", port: 3)[0], v4b = try UDPAddress.resolve(host: "127.0.0.2", port: 4)[0]
        #expect([v6, v4, v6b, v4b].preferringIPv4().map(\.description) == ["127.0.0.1:2", "127.0.0.2:4", "[::1]:1", "[::1]:3"])
    }

    @Test("handshake timeout when nobody answers")
    func handshakeTimeout() async throws {
        let (silent, port) = try silentUDPSocket()
        defer { close(silent) }
        // Two attempts side by side with different timeouts: each must end at
        // its own, in that order. (The order, not an upper bound on the time,
        // since a loaded machine may deliver a failure late, never early.)
        let clock = ContinuousClock()
        let start = clock.now
        let outcomes = await withTaskGroup(of: (timeout: Duration, kind: QUICError.Kind?, elapsed: Duration).self) { group in
            for timeout: Duration in [.milliseconds(1500), .milliseconds(500)] {
                group.addTask {
                    var configuration = QUICConfiguration.default
                    configuration.handshakeTimeout = timeout
                    var kind: QUICError.Kind?
                    do throws(QUICError) {
                        _ = try await QUICConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
                    } catch {
                        kind = error.kind
                    }
                    return (timeout, kind, clock.now - start)
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(outcomes.map(\.timeout) == [.milliseconds(500), .milliseconds(1500)], "\(outcomes)")
        for outcome in outcomes {
            #expect(outcome.kind == .handshakeTimeout)
            #expect(outcome.elapsed >= outcome.timeout, "\(outcome)")
        }
    }

    @Test("connection statistics: RTT, congestion window and byte counts after traffic")
    func statistics() async throws {
        let server = try await EchoServer()
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        // The slowest echo bounds what a packet's round trip can have been: on a
        // quiet machine that leaves the 100 ms bound, on a loaded one it follows the load.
        let clock = ContinuousClock()
        var slowestEcho = Duration.zero
        func timedEcho(_ bytes: ByteBuffer) async throws {
            let start = clock.now
            _ = try await echo(connection, bytes)
            slowestEcho = max(slowestEcho, clock.now - start)
        }
        for _ in 0..<5 { try await timedEcho(ByteBuffer(repeating: 0x61, count: 20_000)) }
        // Refreshed by the loop at most every 100 ms while it sends.
        var statistics = connection.statistics
        // (Until the first RTT sample ngtcp2 reports its 333 ms initial estimate and no minimum.)
        for _ in 0..<100 where statistics.minimumRTT == .zero {
            try await timedEcho(ByteBuffer(string: "ping"))
            try await Task.sleep(for: .milliseconds(20))
            statistics = connection.statistics
        }
        #expect(statistics.smoothedRTT > .zero)
        #expect(statistics.smoothedRTT < max(.milliseconds(100), slowestEcho * 2),
                "loopback, measured: \(statistics.smoothedRTT), slowest echo \(slowestEcho)")
        #expect(statistics.minimumRTT > .zero && statistics.minimumRTT <= statistics.smoothedRTT * 4)
        #expect(statistics.congestionWindow > 0)
        #expect(statistics.bytesSent > 100_000)
        #expect(statistics.bytesReceived > 100_000)
        #expect(statistics.datagramsSent > 50 && statistics.datagramsReceived > 50)
        await connection.close()
    }

    @Test("the congestion controller chosen is the one ngtcp2 runs: BBR paces at a rate it reports, CUBIC and Reno set none", arguments: QUICConfiguration.CongestionControl.all)
    func congestionControlChosen(_ controller: QUICConfiguration.CongestionControl) async throws {
        try await withEchoConnection(controller) { connection in
            let echoed = try await Fixture.echo(connection, total: 1 << 20)
            #expect(echoed == 1 << 20)
            // Refreshed by the loop at most every 100 ms while it sends.
            var statistics = connection.statistics
            for _ in 0..<100 where statistics.smoothedRTT == .zero || (controller == .bbr && statistics.pacingRate == 0) {
                _ = try await echo(connection, ByteBuffer(repeating: 0x61, count: 20_000))
                try await Task.sleep(for: .milliseconds(20))
                statistics = connection.statistics
            }
            #expect(statistics.smoothedRTT > .zero)
            if controller == .bbr {
                #expect(statistics.pacingRate > 100_000, "\(statistics)")
            } else {
                #expect(statistics.pacingRate == 0, "\(statistics)")
            }
        }
    }

    @Test("on a lossy path (every fifth packet lost) every byte arrives with each congestion controller", arguments: QUICConfiguration.CongestionControl.all)
    func lossyPathEachController(_ controller: QUICConfiguration.CongestionControl) async throws {
        try await withEchoConnection(controller) { connection in
            let core = connection.core
            await onLoop(core.loop) { core.simulateLossEvery = 5 }
            let echoed = try await Fixture.echo(connection, total: 1 << 20)
            #expect(echoed == 1 << 20)
        }
    }

    /// An echo server and a connection to it, both with `controller`.
    private func withEchoConnection(
        _ controller: QUICConfiguration.CongestionControl, _ body: (QUICConnection) async throws -> Void
    ) async throws {
        var configuration = QUICConfiguration.default
        configuration.congestionControl = controller
        let server = try await EchoServer(configuration: configuration)
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port, configuration: configuration)
        try await body(connection)
        await connection.close()
        await server.stop()
    }

    @Test("lost packets (a simulated lossy path) are counted, and every byte still arrives")
    func lossIsCounted() async throws {
        let server = try await EchoServer()
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        let core = connection.core
        await onLoop(core.loop) { core.simulateLossEvery = 9 }
        let total = 2 << 20
        #expect(try await Fixture.echo(connection, total: total) == total)
        var statistics = connection.statistics
        for _ in 0..<100 where statistics.packetsLost == 0 {
            _ = try await echo(connection, ByteBuffer(string: "ping"))
            try await Task.sleep(for: .milliseconds(20))
            statistics = connection.statistics
        }
        #expect(statistics.packetsLost > 0)
        await connection.close()
        await server.stop()
    }

    @Test("peer killed mid-stream: ICMP port unreachable ends the connection at once, not after the idle timeout")
    func peerKilledIsUnreachable() async throws {
        let (peer, port) = try await PythonPeer.echoServer()
        defer { peer.stop() }
        var configuration = QUICConfiguration.default
        configuration.idleTimeout = .seconds(30)
        configuration.keepAliveInterval = .milliseconds(300)
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: port, configuration: configuration)
        _ = try await echo(connection, ByteBuffer(string: "alive"))
        let writer = Task { try? await Fixture.send(connection, total: 1 << 30) }
        peer.stop()  // SIGKILL: no CONNECTION_CLOSE, and its port closes
        let start = ContinuousClock.now
        let error = await #expect(throws: QUICError.self) {
            for try await _ in connection.inbound {}
        }
        let elapsed = ContinuousClock.now - start
        writer.cancel()
        #expect(error?.kind == .socket)
        #expect(error?.description.contains("unreachable") == true, "\(String(describing: error))")
        // Half the idle timeout: a loaded machine (parallel test runs) reported it after 5 s.
        #expect(elapsed < .seconds(15), "reported after \(elapsed), long before the 30 s idle timeout")
        await #expect(throws: QUICError.self) { try await connection.write(ByteBuffer(string: "x")) }
    }

    @Test("what a frozen peer had not acknowledged is kept whole, from the first frame it lacks, big frames' headers included")
    func unacknowledgedKeptWhole() async throws {
        let (peer, quic) = try await connectToFreezablePeer()
        defer { peer.thawAndStop() }
        let connection = QUICFrameConnection(quic)
        let core = connection.connection.core
        // A server's connections keep it; this client is the side a frozen peer can be made for.
        #expect(await onLoop(core.loop) { core.keepsUnacknowledgedAtEnd } == false, "a client's own are not kept by default")
        await onLoop(core.loop) { core.keepsUnacknowledgedAtEnd = true }
        #expect(connection.connection.takeUnacknowledged() == nil, "nothing while it lives")
        // Frame i ends at ends[i]; big payloads go out as a header and the
        // caller's buffer (two parts), small ones coalesced.
        let ends = Mutex<[Int]>([])
        let writer = Task {
            var index = 0
            while true {
                let size = index % 3 == 2 ? 16 : 5000
                var payload = ByteBuffer(string: "\(index):")
                payload.writeRepeatingByte(UInt8(ascii: "x"), count: size)
                guard let end = try? await connection.write(DataFrame(tag: 0x33, payload: payload), patch: nil, endingAfterQueueingThrows: false)
                else { return }
                ends.withLock { $0.append(end) }
                index += 1
            }
        }
        while ends.withLock({ $0.count }) < 200 { try await Task.sleep(for: .milliseconds(5)) }
        kill(peer.process.processIdentifier, SIGSTOP)
        await #expect(throws: QUICError.self) { for try await _ in connection.connection.inbound {} }
        await writer.value
        let acknowledged = connection.connection.acknowledgedBytes
        let lacking = ends.withLock { ends in ends.indices.filter { ends[$0] > acknowledged } }
        #expect(!lacking.isEmpty, "the frozen peer acknowledged everything")
        let kept = try #require(connection.connection.takeUnacknowledged())
        #expect(connection.connection.takeUnacknowledged() == nil, "taken once")
        let recovered = try labelledFrames(in: kept)
        let keptWhole = recovered.filter { $0.end > kept.acknowledgedPrefix }.map(\.index)
        #expect(keptWhole == lacking, "every frame the peer lacked, whole and in order")
    }

    @Test("a retention keeps what the peer acknowledged until its application releases it, no more than its limit, and what is taken at the end begins after the last release, even one read after the end")
    func retentionUntilReleased() async throws {
        let (peer, connection, reader) = try await connectKeepingAtEnd()
        defer {
            reader.cancel()
            peer.thawAndStop()
        }
        let limit = 256 << 10
        connection.connection.retainAcknowledged(budget: RetentionBudget(bytes: limit))
        // Big payloads go out as a header and the caller's buffer (two parts), small ones coalesced.
        var ends: [Int] = []
        for index in 0..<200 {
            var payload = ByteBuffer(string: "\(index):")
            payload.writeRepeatingByte(UInt8(ascii: "x"), count: index % 3 == 2 ? 16 : 5000)
            ends.append(try await connection.write(DataFrame(tag: 0x33, payload: payload), patch: nil))
        }
        #expect(await until { connection.connection.unacknowledgedBytes == 0 }, "the peer acknowledged everything")
        let retained = connection.connection.retainedBytes
        #expect(retained > 0 && retained <= limit, "kept \(retained) of \(ends.last!) acknowledged bytes")
        // Past the limit the oldest went as if released.
        let overflowed = connection.connection.releasedBytes
        #expect(overflowed > 0 && overflowed < ends.last!, "delivered through \(overflowed)")
        // The limit counts the buffers' memory, so fewer bytes than it are kept.
        let firstKept = try #require(ends.firstIndex { $0 > overflowed })
        #expect(firstKept < 190, "kept from frame \(firstKept) on")
        let (releasedThrough, releasedLate) = (firstKept + (199 - firstKept) / 3, firstKept + 2 * (199 - firstKept) / 3)
        connection.connection.releaseRetained(through: ends[releasedThrough])
        #expect(connection.connection.releasedBytes == ends[releasedThrough])
        #expect(connection.connection.retainedBytes < retained)
        #expect(connection.connection.takeUnacknowledged() == nil, "nothing while it lives")
        await connection.connection.close(reason: "done")
        // The peer's last word, read after the end, still counts.
        connection.connection.releaseRetained(through: ends[releasedLate])
        let kept = try #require(connection.connection.takeUnacknowledged())
        let recovered = try labelledFrames(in: kept)
        #expect(recovered.filter { $0.end > kept.acknowledgedPrefix }.map(\.index) == Array((releasedLate + 1)..<200), "what was not released, whole and in order")
    }

    @Test("a retention begun on the connection's own loop (where a zipper's connection task runs) keeps every buffer the peer acknowledges after it, the first ones of a burst too")
    func retentionBegunOnTheLoop() async throws {
        let (peer, connection, reader) = try await connectKeepingAtEnd()
        defer {
            reader.cancel()
            peer.thawAndStop()
        }
        let core = connection.connection.core
        // As the zipper does for a stream function, on the loop: retain, then a
        // burst (the frames it held for the function), sent at once; the peer's
        // acknowledgements are waiting when the loop next reads its socket.
        let frames = 300
        let ends = await onLoop(core.loop) { () -> [Int] in
            connection.connection.retainAcknowledged(budget: RetentionBudget(bytes: 64 << 20))
            let ends = (0..<frames).compactMap { index in
                try? connection.tryWrite(DataFrame(tag: 0x33, payload: ByteBuffer(string: "\(index):" + String(repeating: "x", count: 80))), limit: .max, patch: nil)
            }
            core.flush()
            usleep(50_000)
            return ends
        }
        #expect(ends.count == frames)
        #expect(await until { connection.connection.unacknowledgedBytes == 0 }, "the peer acknowledged everything")
        await connection.connection.close(reason: "done")
        let kept = try #require(connection.connection.takeUnacknowledged())
        let recovered = try labelledFrames(in: kept).filter { $0.end > kept.acknowledgedPrefix }
        // Until the fifty-second round of issue 14 the loop learned of the retention
        // from a task run after its next events: acknowledgements read before it
        // kept nothing, and a zipper took back none of those frames at a function's
        // end (39 lost in `yomo-fault-bench chaos --mesh --seed 1`).
        #expect(recovered.map(\.index) == Array(0..<frames), "kept from \(recovered.first.map { "\($0.index)" } ?? "none") of \(ends.count)")
    }

    @Test("peer frozen mid-stream (no packets, no ICMP): idle timeout within the configured time")
    func idleTimeoutAfterPeerFreezes() async throws {
        let (peer, connection) = try await connectToFreezablePeer()
        defer { peer.thawAndStop() }
        _ = try await echo(connection, ByteBuffer(string: "alive"))
        let writer = Task { try? await Fixture.send(connection, total: 1 << 30) }
        kill(peer.process.processIdentifier, SIGSTOP)  // its socket stays open: no ICMP
        let start = ContinuousClock.now
        let error = await #expect(throws: QUICError.self) {
            for try await _ in connection.inbound {}
        }
        let elapsed = ContinuousClock.now - start
        writer.cancel()
        #expect(error?.kind == .idleTimeout)
        // ngtcp2 uses max(idle timeout, 3 PTO); on loopback the PTO is tiny. Bounded
        // well under the default 40 s, which an ignored setting would give; a loaded
        // machine (parallel test runs) reported the 1 s after 4–5 s.
        #expect(elapsed < .seconds(10), "reported after \(elapsed)")
        await #expect(throws: QUICError.self) { try await connection.write(ByteBuffer(string: "x")) }
    }
}

/// An aioquic echo peer to freeze with SIGSTOP (no packets, no ICMP), and a
/// connection to it that notices within its 1 s idle timeout.
/// The data frames in what a connection kept at its end, each by the number
/// its payload starts with (`"<n>:"`) and the offset just past it.
private func labelledFrames(in kept: QUICConnection.Unacknowledged) throws -> [(index: Int, end: Int)] {
    var bytes = kept.bytes
    var decoder = FrameDecoder()
    var recovered: [(index: Int, end: Int)] = []
    let start = bytes.readerIndex
    while let frame = try decoder.decodeFrame(buffer: &bytes) {
        guard case .data(let data) = frame else { continue }
        let label = String(decoding: data.payload.readableBytesView.prefix { $0 != UInt8(ascii: ":") }, as: UTF8.self)
        recovered.append((try #require(Int(label)), bytes.readerIndex - start))
    }
    #expect(bytes.readableBytes == 0, "ends at a frame's end")
    return recovered
}

private func connectToFreezablePeer() async throws -> (PythonPeer, QUICConnection) {
    let (peer, port) = try await PythonPeer.echoServer()
    var configuration = QUICConfiguration.default
    configuration.idleTimeout = .seconds(1)
    configuration.keepAliveInterval = .milliseconds(300)
    do {
        return (peer, try await QUICConnection.connect(host: "127.0.0.1", port: port, configuration: configuration))
    } catch {
        peer.stop()
        throw error
    }
}

/// A connection to a freezable peer that keeps at its end what the peer had
/// not acknowledged (a server's connections do), and a task reading what the
/// peer echoes back.
private func connectKeepingAtEnd() async throws -> (peer: PythonPeer, connection: QUICFrameConnection, reader: Task<Void, any Error>) {
    let (peer, quic) = try await connectToFreezablePeer()
    let connection = QUICFrameConnection(quic)
    let core = connection.connection.core
    await onLoop(core.loop) { core.keepsUnacknowledgedAtEnd = true }
    let reader = Task { for try await _ in connection.connection.inbound {} }
    return (peer, connection, reader)
}

extension PythonPeer {
    /// Resumes a peer that may be frozen, then stops it.
    func thawAndStop() {
        kill(process.processIdentifier, SIGCONT)
        stop()
    }
}

final class ManagedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func set(_ v: Int) { lock.lock(); value = v; lock.unlock() }
    func get() -> Int { lock.lock(); defer { lock.unlock() }; return value }
}

/// A UDP socket bound on loopback that never answers (the caller closes it), and its port.
func silentUDPSocket() throws(QUICError) -> (descriptor: Int32, port: Int) {
    let silent = try makeUDPSocket(family: AF_INET)
    var address = try UDPAddress.resolve(host: "127.0.0.1", port: 0)[0]
    _ = address.withSockaddr { bind(silent, $0, $1) }
    address = try localAddress(of: silent)
    return (silent, address.port)
}
