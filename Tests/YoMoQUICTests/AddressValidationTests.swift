import Foundation
import NIOCore
import Synchronization
import Testing
@testable import YoMoQUIC

/// A UDP relay that passes its clients' datagrams to the server, each client
/// from a port of its own on `backHost` (as a NAT does), and drops the answers
/// `answering` does not pass, by size: passing none, to the server its clients
/// are Initials from spoofed addresses, which never hear back and never
/// finish a handshake. `alterClientDatagram` may change what passes.
final class OneWayRelay: @unchecked Sendable {
    let front: Int32
    let frontPort: Int
    private let backHost: UDPAddress
    private let server: UDPAddress
    private let answering: @Sendable (Int) -> Bool
    private let alter: @Sendable (inout [UInt8], Int) -> Void
    private let stopped = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    /// Datagrams from the server, passed back or not.
    let fromServer = Atomic<Int>(0)

    init(
        serverPort: Int, backHost: String = "127.0.0.1", answering: @escaping @Sendable (Int) -> Bool = { _ in false },
        alterClientDatagram: @escaping @Sendable (inout [UInt8], Int) -> Void = { _, _ in }
    ) throws {
        let front = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        _ = try UDPAddress.resolve(host: "127.0.0.1", port: 0)[0].withSockaddr { bind(front, $0, $1) }
        self.front = front
        frontPort = try localAddress(of: front).port
        self.backHost = try UDPAddress.resolve(host: backHost, port: 0)[0]
        server = try UDPAddress.resolve(host: "127.0.0.1", port: serverPort)[0]
        self.answering = answering
        alter = alterClientDatagram
        Thread.detachNewThread { [self] in run() }
    }

    func stop() {
        stopped.store(true, ordering: .sequentiallyConsistent)
        done.wait()
        close(front)
    }

    private func run() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        // One back socket per client port; the client each back socket answers.
        var backs: [Int: Int32] = [:]
        var clientOf: [Int32: UDPAddress] = [:]
        var fds = [pollfd(fd: front, events: Int16(POLLIN), revents: 0)]
        while !stopped.load(ordering: .sequentiallyConsistent) {
            if poll(&fds, nfds_t(fds.count), 50) <= 0 { continue }
            for p in fds where p.revents & Int16(POLLIN) != 0 {
                while true {
                    let (n, from) = receiveDatagram(on: p.fd, into: &buffer)
                    if n <= 0 { break }
                    if p.fd == front {
                        let back = backs[from.port] ?? {
                            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
                            _ = backHost.withSockaddr { bind(fd, $0, $1) }
                            backs[from.port] = fd
                            clientOf[fd] = from
                            fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
                            return fd
                        }()
                        alter(&buffer, n)
                        _ = server.withSockaddr { sendto(back, buffer, n, 0, $0, $1) }
                    } else {
                        fromServer.wrappingAdd(1, ordering: .relaxed)
                        if answering(n), let client = clientOf[p.fd] { _ = client.withSockaddr { sendto(front, buffer, n, 0, $0, $1) } }
                    }
                }
            }
        }
        for fd in backs.values { close(fd) }
        done.signal()
    }
}

@Suite("Address validation: QUIC Retry under a handshake flood", .serialized)
struct AddressValidationTests {
    @Test("a client asked for a Retry (every client, at 0) connects and echoes byte-exact")
    func retryAlways() async throws {
        let server = try await EchoServer(limits: QUICServer.Limits(maximumUnvalidatedHandshakes: 0))
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        #expect(try await Fixture.echo(connection, total: 1 << 20) == 1 << 20)
        #expect(server.server.statistics.retries >= 1)
        #expect(server.server.statistics.invalidTokens == 0)
        await connection.close()
        await server.stop()
    }

    @Test("a client that connected once skips the Retry on its next connection: the server's NEW_TOKEN proves its address, once; another server's token is ignored")
    func newTokenSkipsRetry() async throws {
        let server = try await EchoServer(limits: QUICServer.Limits(maximumUnvalidatedHandshakes: 0))
        let address = try UDPAddress.resolve(host: "127.0.0.1", port: server.port)[0]
        // A token of another server that had this port (another key): ignored, as if there were none.
        let stale = RetryTokens(statelessResetKey: [UInt8](repeating: 3, count: 32))
        NewTokens.keep(try #require(stale.makeRegular(for: address, now: RetryTokens.now())), for: address)
        let first = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        #expect(try await Fixture.echo(first, total: 1 << 16) == 1 << 16)
        #expect(server.server.statistics.newTokensAccepted == 0 && server.server.statistics.invalidTokens == 0)
        // One Retry at least (an Initial sent again before the Retry came gets one too).
        let retries = server.server.statistics.retries
        #expect(retries >= 1)
        #expect(await until { NewTokens.has(for: address) }, "the server sent a NEW_TOKEN after the handshake")
        await first.close()
        // A new connection, from another port: its Initial carries the token.
        let second = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        #expect(try await Fixture.echo(second, total: 1 << 16) == 1 << 16)
        #expect(server.server.statistics.retries == retries, "no Retry for the second")
        #expect(server.server.statistics.newTokensAccepted == 1)
        await second.close()
        // A token is used once: the one the second connection was sent is for the third.
        #expect(await until { NewTokens.has(for: address) })
        _ = NewTokens.take(for: address)
        let third = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        #expect(server.server.statistics.retries > retries, "without a token, a Retry again")
        await third.close()
        await server.stop()
    }

    @Test("Initials that never finish their handshake hold no more than their share of slots: an honest client still connects at once")
    func floodOfUnfinishedHandshakes() async throws {
        // Handshake slots held 30 s by each flooder (the server's handshake timeout).
        var configuration = QUICConfiguration.default
        configuration.handshakeTimeout = .seconds(30)
        let flooders = 40
        let server = try await EchoServer(
            configuration: configuration, limits: QUICServer.Limits(maximumHandshakes: 16, maximumUnvalidatedHandshakes: 4))
        let relay = try OneWayRelay(serverPort: server.port)
        let flood = dials(flooders, through: relay)
        // Every flooder's first Initial reached the server: 4 hold a slot, the others were asked to prove their address.
        #expect(await until(.seconds(20)) { server.server.statistics.retries + server.server.statistics.accepted >= flooders },
                "\(server.server.statistics)")
        #expect(server.server.statistics.accepted == 4, "\(server.server.statistics)")
        #expect(server.server.statistics.refusedOverLimit == 0)
        // An honest client proves its address and gets a slot, well within its 3 s handshake timeout.
        try await honestClientGetsIn(server, past: flood, relay: relay)
    }

    @Test("a host that answers Retries holds at most its share of handshakes: the rest are refused at once, and another host's client gets in")
    func handshakesPerAddress() async throws {
        var configuration = QUICConfiguration.default
        configuration.handshakeTimeout = .seconds(30)
        let server = try await EchoServer(
            configuration: configuration,
            limits: QUICServer.Limits(maximumHandshakes: 16, maximumUnvalidatedHandshakes: 0, maximumHandshakesPerAddress: 4))
        // From 127.0.0.2, Retries pass back (under 200 bytes) and the server's handshake flight does not:
        // each dial proves its address, then never finishes, holding its slot 30 s.
        let relay = try OneWayRelay(serverPort: server.port, backHost: "127.0.0.2", answering: { $0 < 200 })
        let flood = dials(24, through: relay)
        #expect(await until(.seconds(20)) { server.server.statistics.accepted + server.server.statistics.refusedHandshakesPerAddress >= 24 },
                "\(server.server.statistics)")
        // Free while half the 16 slots were free, then held to its share of 4: 8.
        #expect(server.server.statistics.accepted == 8, "\(server.server.statistics)")
        #expect(server.server.statistics.refusedOverLimit == 0)
        // One more from that host is told why, at once.
        let refused = await #expect(throws: QUICError.self) { _ = try await QUICConnection.connect(host: "127.0.0.1", port: relay.frontPort) }
        #expect(String(describing: refused).contains("transport error 0x2 (CONNECTION_REFUSED): too many handshakes in progress from 127.0.0.2 (4)"),
                "\(String(describing: refused))")
        // A client from 127.0.0.1 proves its address in turn and finds slots free.
        try await honestClientGetsIn(server, past: flood, relay: relay)
    }

    @Test("a Retry token that is not the server's is refused at once with INVALID_TOKEN, and the server keeps no state for it")
    func forgedToken() async throws {
        let server = try await EchoServer(limits: QUICServer.Limits(maximumUnvalidatedHandshakes: 0))
        // Flips a byte of the token in Initials that carry one: it no longer opens with the server's key.
        let relay = try OneWayRelay(serverPort: server.port, answering: { _ in true }) { datagram, count in
            guard let offset = retryTokenOffset(datagram, count) else { return }
            datagram[offset + 10] ^= 0xFF
        }
        let clock = ContinuousClock()
        let started = clock.now
        let error = await #expect(throws: QUICError.self) {
            _ = try await QUICConnection.connect(host: "127.0.0.1", port: relay.frontPort)
        }
        // Refused, not left to the 3 s handshake timeout: INVALID_TOKEN, a transport
        // error (which this SDK's clients dial again after).
        #expect(clock.now - started < .seconds(2), "\(String(describing: error))")
        #expect(error?.isRemote == true && error?.applicationErrorCode == nil, "\(String(describing: error))")
        #expect(String(describing: error).contains("transport error 0xb (INVALID_TOKEN): Retry token not valid here"), "\(String(describing: error))")
        #expect(server.server.statistics.invalidTokens >= 1)
        #expect(server.server.statistics.accepted == 0)
        #expect(await server.server.connectionCount() == 0)
        relay.stop()
        await server.stop()
    }
}

extension AddressValidationTests {
    @Test("a NEW_TOKEN token opens under the same key only, from the same address on any port, within the hour; it is no Retry token")
    func newTokens() throws {
        let key = [UInt8](repeating: 9, count: 32)
        let client = try UDPAddress.resolve(host: "192.0.2.7", port: 4433)[0]
        let now = RetryTokens.now()
        let token = try #require(RetryTokens(statelessResetKey: key).makeRegular(for: client, now: now))
        let initial = NGPacket.Initial(version: 1, dcid: .random(length: 8), scid: .random(length: 8), token: token)
        #expect(initial.hasNewToken && !initial.hasRetryToken)
        let later = now + 60_000_000_000
        #expect(RetryTokens(statelessResetKey: key).isValidRegular(token, from: client, now: later), "a restart with the same key")
        #expect(RetryTokens(statelessResetKey: key).isValidRegular(token, from: try UDPAddress.resolve(host: "192.0.2.7", port: 50_000)[0], now: later),
                "another port of the same host: a client's next connection")
        #expect(!RetryTokens(statelessResetKey: key).isValidRegular(token, from: try UDPAddress.resolve(host: "192.0.2.8", port: 4433)[0], now: later))
        #expect(!RetryTokens(statelessResetKey: [UInt8](repeating: 8, count: 32)).isValidRegular(token, from: client, now: later))
        #expect(!RetryTokens(statelessResetKey: key).isValidRegular(token, from: client, now: now + RetryTokens.regularLifetime.nanoseconds + 1_000_000_000))
        // A Retry token is not taken for one.
        let retry = try #require(RetryTokens(statelessResetKey: key).make(answering: initial, from: client, retrySCID: .random(length: 18), now: now))
        #expect(!RetryTokens(statelessResetKey: key).isValidRegular(retry, from: client, now: later))
    }

    @Test("a Retry token opens under the same key only, from the same address, for the same id, within 10 s")
    func tokens() throws {
        let key = [UInt8](repeating: 7, count: 32)
        let client = try UDPAddress.resolve(host: "192.0.2.7", port: 4433)[0]
        let first = NGPacket.Initial(version: 1, dcid: .random(length: 8), scid: .random(length: 8), token: [])
        let retrySCID = ConnectionID.random(length: 18)
        let now = RetryTokens.now()
        let token = try #require(RetryTokens(statelessResetKey: key).make(answering: first, from: client, retrySCID: retrySCID, now: now))
        // The client's next Initial: to the Retry's id, with the token.
        let next = NGPacket.Initial(version: 1, dcid: retrySCID, scid: first.scid, token: token)
        #expect(next.hasRetryToken)
        // Another run of the server with the same key (a restart) takes it, and learns the first id.
        #expect(RetryTokens(statelessResetKey: key).originalDCID(of: next, from: client, now: now + 1_000_000_000) == first.dcid)
        // Not under another key, nor a random one.
        #expect(RetryTokens(statelessResetKey: [UInt8](repeating: 8, count: 32)).originalDCID(of: next, from: client, now: now) == nil)
        #expect(RetryTokens(statelessResetKey: nil).originalDCID(of: next, from: client, now: now) == nil)
        let server = RetryTokens(statelessResetKey: key)
        // Not from another address or port.
        #expect(server.originalDCID(of: next, from: try UDPAddress.resolve(host: "192.0.2.8", port: 4433)[0], now: now) == nil)
        #expect(server.originalDCID(of: next, from: try UDPAddress.resolve(host: "192.0.2.7", port: 4434)[0], now: now) == nil)
        // Not to another connection id.
        let elsewhere = NGPacket.Initial(version: 1, dcid: .random(length: 18), scid: first.scid, token: token)
        #expect(server.originalDCID(of: elsewhere, from: client, now: now) == nil)
        // Not once 10 s have passed.
        #expect(server.originalDCID(of: next, from: client, now: now + 11_000_000_000) == nil)
    }
}

/// `count` dials through `relay`, each waiting up to 30 s for its handshake.
private func dials(_ count: Int, through relay: OneWayRelay) -> [Task<QUICConnection?, Never>] {
    let port = relay.frontPort
    return (0..<count).map { _ in
        Task {
            var dialling = QUICConfiguration.default
            dialling.handshakeTimeout = .seconds(30)
            return try? await QUICConnection.connect(host: "127.0.0.1", port: port, configuration: dialling)
        }
    }
}

/// A client dials `server` directly (its 3 s handshake timeout) and echoes
/// through it; then the flood's dials, the relay and the server end.
private func honestClientGetsIn(_ server: EchoServer, past flood: [Task<QUICConnection?, Never>], relay: OneWayRelay) async throws {
    let honest = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
    #expect(String(buffer: try await echo(honest, ByteBuffer(string: "through"))) == "through")
    await honest.close()
    for task in flood { task.cancel() }
    for task in flood { _ = await task.value }
    relay.stop()
    await server.stop()
}

/// Where the token of a QUIC v1 Initial starts when it carries a Retry token
/// (ngtcp2's start with 0xB6), or nil.
private func retryTokenOffset(_ datagram: [UInt8], _ count: Int) -> Int? {
    guard count > 7, datagram[0] & 0xB0 == 0x80 else { return nil }
    var offset = 5
    offset += 1 + Int(datagram[offset])  // destination id
    guard offset < count else { return nil }
    offset += 1 + Int(datagram[offset])  // source id
    guard offset < count else { return nil }
    let lengthBytes = 1 << Int(datagram[offset] >> 6)
    var length = Int(datagram[offset] & 0x3F)
    for i in 1..<lengthBytes { length = length << 8 | Int(datagram[offset + i]) }
    offset += lengthBytes
    guard length > 20, offset + length <= count, datagram[offset] == 0xB6 else { return nil }
    return offset
}
