import Foundation
import NIOCore
import Synchronization
import Testing
@testable import YoMoQUIC

/// A UDP relay between a client and the server that can switch the source port
/// (and address, `newHost`) it uses towards the server: what a NAT rebinding
/// looks like to the server.
final class RebindingRelay: @unchecked Sendable {
    let front: Int32
    let backs: [Int32]
    let frontPort: Int
    private let server: UDPAddress
    private let active = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)
    /// Datagrams from the server received on each back socket.
    let fromOldPort = Atomic<Int>(0)
    let fromNewPort = Atomic<Int>(0)
    private let done = DispatchSemaphore(value: 0)

    init(serverPort: Int, newHost: String = "127.0.0.1") throws {
        func socketOn(_ host: String, _ port: Int) throws -> Int32 {
            // Plain socket: with GRO the relay would forward coalesced trains as one datagram.
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            let address = try UDPAddress.resolve(host: host, port: port)[0]
            _ = address.withSockaddr { bind(fd, $0, $1) }
            return fd
        }
        front = try socketOn("127.0.0.1", 0)
        backs = [try socketOn("127.0.0.1", 0), try socketOn(newHost, 0)]
        frontPort = try localAddress(of: front).port
        server = try UDPAddress.resolve(host: "127.0.0.1", port: serverPort)[0]
        Thread.detachNewThread { [self] in run() }
    }

    func rebind() { active.store(1, ordering: .sequentiallyConsistent) }

    func stop() {
        stopped.store(true, ordering: .sequentiallyConsistent)
        done.wait()
        close(front)
        for fd in backs { close(fd) }
    }

    private func run() {
        var client = UDPAddress()
        var buffer = [UInt8](repeating: 0, count: 65536)
        var fds = ([front] + backs).map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        while !stopped.load(ordering: .sequentiallyConsistent) {
            if poll(&fds, nfds_t(fds.count), 50) <= 0 { continue }
            for (i, p) in fds.enumerated() where p.revents & Int16(POLLIN) != 0 {
                while true {
                    let (n, from) = receiveDatagram(on: p.fd, into: &buffer)
                    if n <= 0 { break }
                    if i == 0 {
                        client = from
                        let back = backs[active.load(ordering: .sequentiallyConsistent)]
                        _ = server.withSockaddr { sendto(back, buffer, n, 0, $0, $1) }
                    } else {
                        if i == 1 {
                            fromOldPort.wrappingAdd(1, ordering: .relaxed)
                        } else {
                            fromNewPort.wrappingAdd(1, ordering: .relaxed)
                        }
                        _ = client.withSockaddr { sendto(front, buffer, n, 0, $0, $1) }
                    }
                }
            }
        }
        done.signal()
    }
}

@Suite("Server follows a migrating client")
struct MigrationTests {
    @Test("after a NAT rebinding the server answers on the new address")
    func natRebinding() async throws {
        let server = try await EchoServer()
        let relay = try RebindingRelay(serverPort: server.port)
        var configuration = QUICConfiguration.default
        configuration.idleTimeout = .seconds(5)
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: relay.frontPort, configuration: configuration)
        print("migration: connected")
        #expect(String(buffer: try await echo(connection, ByteBuffer(string: "before"))) == "before")
        relay.rebind()
        print("migration: rebound")
        let total = 4 << 20
        let received = try await Fixture.echo(connection, total: total)
        #expect(received == total)
        #expect(relay.fromNewPort.load(ordering: .relaxed) > 100, "the server should send to the new address")
        await connection.close()
        relay.stop()
        await server.stop()
    }

    @Test("a client that moved to another address and left no longer counts for the address it came from")
    func movedAndLeft() async throws {
        let server = try await EchoServer()
        let relay = try RebindingRelay(serverPort: server.port, newHost: "127.0.0.2")
        var configuration = QUICConfiguration.default
        configuration.idleTimeout = .seconds(5)
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: relay.frontPort, configuration: configuration)
        #expect(String(buffer: try await echo(connection, ByteBuffer(string: "before"))) == "before")
        #expect(server.server.statistics.clientAddresses == 1)
        relay.rebind()
        #expect(try await Fixture.echo(connection, total: 256 << 10) == 256 << 10)
        #expect(relay.fromNewPort.load(ordering: .relaxed) > 0, "the server should answer the new address")
        // Still counted once, for the address its handshake proved.
        #expect(server.server.statistics.clientAddresses == 1)
        await connection.close()
        // Before, its count was looked up by the new address at the end: the
        // old address's entry stayed, counting among the addresses the
        // receive windows' budget is shared by, for as long as the server ran.
        #expect(await until { server.server.statistics.clientAddresses == 0 }, "\(server.server.statistics)")
        relay.stop()
        await server.stop()
    }
}
