import NIOCore
import Synchronization
import Testing
@testable import YoMoQUIC

/// A server's receive windows under one budget (`Limits.maximumReceiveWindowBytes`):
/// what clients may send ahead of the server's reading, summed over connections.
@Suite("Receive window budget")
struct ReceiveWindowTests {
    /// One simulated connection: what its peer may send up to, has sent, and the reader took.
    private struct Peer {
        var window: ManagedReceiveWindow
        var allowed = ReceiveWindowBudget.minimum
        var received = 0
        var consumed = 0
    }

    @Test("the windows' sum stays within the budget plus the minimum per connection, each share shrinks as connections come, and a peer that sent all it may and was read always gets window back")
    func budgetLogic() {
        var generator = SystemRandomNumberGenerator()
        let budgetBytes = 1 << 20
        var budget = ReceiveWindowBudget(bytes: budgetBytes, maximum: 6 << 20)
        var peers: [Peer] = []
        for step in 0..<20_000 {
            if peers.count < 40, step % 400 == 0 {
                budget.opened()
                peers.append(Peer(window: ManagedReceiveWindow(cap: 2 << 20)))
            }
            let index = Int.random(in: 0..<peers.count, using: &generator)
            var peer = peers[index]
            // The peer sends all it may; the reader takes some of what arrived, or all of it.
            peer.received = peer.allowed
            let unread = peer.received - peer.consumed
            let taken = Bool.random(using: &generator) ? unread : Int.random(in: 0...unread, using: &generator)
            peer.consumed += taken
            let share = budget.share(addresses: 1, connectionsFromAddress: peers.count)
            let returned = peer.window.read(taken, share: share, budget: &budget, now: UInt64(step) * 1_000_000) { 100_000 }
            peer.allowed += returned
            if taken > 0, peer.consumed == peer.received {
                #expect(peer.allowed > peer.received, "a peer that sent all it may, all of it read, gets more window (step \(step))")
            }
            #expect(peer.window.window >= ReceiveWindowBudget.minimum)
            #expect(peer.allowed - peer.consumed <= peer.window.window, "the peer may send no more than its window ahead of the reader")
            peers[index] = peer
            #expect(budget.total == peers.reduce(0) { $0 + $1.window.window })
            #expect(budget.total <= budgetBytes + peers.count * ReceiveWindowBudget.minimum)
        }
        // Forty connections share 1 MiB: once each was read again, none holds much more than its share.
        for index in peers.indices {
            var peer = peers[index]
            peer.received = peer.allowed
            let taken = peer.received - peer.consumed
            peer.consumed += taken
            peer.allowed += peer.window.read(
                taken, share: budget.share(addresses: 1, connectionsFromAddress: 40), budget: &budget, now: 1 << 50) { 100_000 }
            peers[index] = peer
        }
        #expect(peers.allSatisfy { $0.window.window <= budget.share(addresses: 1, connectionsFromAddress: 40) })
    }

    @Test("a lone connection read fast grows its window from the minimum to the configured 2 MiB at once, and toward the maximum when each window is read within two round trips")
    func growth() {
        var budget = ReceiveWindowBudget(bytes: 64 << 20, maximum: 6 << 20)
        budget.opened()
        var window = ManagedReceiveWindow(cap: 2 << 20)
        _ = window.read(100, share: budget.share(addresses: 1, connectionsFromAddress: 1), budget: &budget, now: 0) { 1_000_000 }
        #expect(window.window == 2 << 20)
        // Half a window read every 100 µs with a 1 ms round trip: a fast path.
        for step in 1...10 { _ = window.read(1 << 20, share: 64 << 20, budget: &budget, now: UInt64(step) * 100_000) { 1_000_000 } }
        #expect(window.window == 6 << 20)
        // The same reads a second apart: the window stays where it is.
        var slow = ManagedReceiveWindow(cap: 2 << 20)
        budget.opened()
        for step in 0...10 { _ = slow.read(1 << 20, share: 32 << 20, budget: &budget, now: UInt64(step) * 1_000_000_000) { 1_000_000 } }
        #expect(slow.window == 2 << 20)
    }

    @Test("shares are split by address first: a host with many connections shrinks its own windows, not a lone client's")
    func sharesByAddress() {
        let budget = ReceiveWindowBudget(bytes: 64 << 20, maximum: 6 << 20)
        // One host with 1,000 connections, another with one.
        #expect(budget.share(addresses: 2, connectionsFromAddress: 1000) == (32 << 20) / 1000)
        #expect(budget.share(addresses: 2, connectionsFromAddress: 4000) == ReceiveWindowBudget.minimum)
        #expect(budget.share(addresses: 2, connectionsFromAddress: 1) == 32 << 20)
        // Split by connection alone, the lone client would have had 64 MiB / 1,001: 65 KiB.
        #expect(budget.share(addresses: 1, connectionsFromAddress: 1001) == (64 << 20) / 1001)
    }

    /// Opens when told; readers wait until then.
    private final class Gate: Sendable {
        private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))
        func wait() async {
            await withCheckedContinuation { continuation in
                let open = state.withLock { state in
                    if !state.open { state.waiters.append(continuation) }
                    return state.open
                }
                if open { continuation.resume() }
            }
        }
        func open() {
            for waiter in state.withLock({ state in defer { state.waiters = [] }; state.open = true; return state.waiters }) { waiter.resume() }
        }
    }

    /// Eight clients each write 4 MiB to a server that reads their first bytes
    /// and then waits: what its QUIC stack took from them and nobody read.
    /// Then it reads everything, which must arrive whole.
    private func unreadWhileTheServerWaits(budget: Int?) async throws -> (unread: Int, windows: Int) {
        let clients = 8
        let total = 4 << 20
        let server = try await QUICServer.bind(
            host: "127.0.0.1", port: 0, limits: QUICServer.Limits(maximumReceiveWindowBytes: budget))
        let gate = Gate()
        final class Readings: Sendable {
            let consumed: Mutex<[Int]>
            let intact = Mutex(0)
            init(_ clients: Int) { consumed = Mutex([Int](repeating: 0, count: clients)) }
        }
        let readings = Readings(clients)
        let readers = Task {
            await withDiscardingTaskGroup { group in
                var index = 0
                for await connection in server.connections {
                    let slot = index
                    index += 1
                    group.addTask {
                        var received = 0
                        do {
                            for try await chunk in connection.inbound {
                                guard Fixture.matches(chunk, offset: received) else { return }
                                received += chunk.readableBytes
                                readings.consumed.withLock { $0[slot] = received }
                                if received >= total { break }
                                // The first bytes opened the stream: now wait, as a zipper whose function stalls.
                                await gate.wait()
                            }
                        } catch { return }
                        if received == total { readings.intact.withLock { $0 += 1 } }
                    }
                    if index == clients { break }
                }
            }
        }
        var connections: [QUICConnection] = []
        for _ in 0..<clients { connections.append(try await QUICConnection.connect(host: "127.0.0.1", port: server.port)) }
        let writers = connections.map { connection in Task { try await Fixture.send(connection, total: total) } }
        // Until the clients' bytes stop being taken: every window is full.
        var acknowledged = -1
        var unchanged = 0
        let deadline = ContinuousClock.now + .seconds(30)
        while unchanged < 6, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
            let now = connections.reduce(0) { $0 + $1.acknowledgedBytes }
            unchanged = now == acknowledged ? unchanged + 1 : 0
            acknowledged = now
        }
        let unread = acknowledged - readings.consumed.withLock { $0.reduce(0, +) }
        let windows = server.statistics.receiveWindowBytes
        gate.open()
        for writer in writers { try await writer.value }
        await readers.value
        #expect(readings.intact.withLock { $0 } == clients, "every byte arrives, in order, once the server reads again")
        for connection in connections { await connection.close() }
        await server.close()
        #expect(server.statistics.receiveWindowBytes == 0, "closed connections give their windows back")
        return (unread, windows)
    }

    @Test("clients of a server that stopped reading hold at most the budget there, plus 32 KiB per connection, where each would hold its whole 2 MiB window")
    func budgetHoldsWaitingConnections() async throws {
        let budget = 512 << 10
        let bound = budget + 8 * ReceiveWindowBudget.minimum
        let (unread, windows) = try await unreadWhileTheServerWaits(budget: budget)
        #expect(unread > 0)
        #expect(unread <= bound, "unread bytes the server took: \(unread), bound \(bound)")
        #expect(windows <= bound && windows >= unread)
    }

    @Test("without a budget, each waiting connection holds its whole window: the fault the budget bounds")
    func withoutBudget() async throws {
        let (unread, windows) = try await unreadWhileTheServerWaits(budget: nil)
        #expect(unread >= 8 * (2 << 20) - 8 * (64 << 10), "unread: \(unread)")
        #expect(windows == 0)
    }

    @Test("a budget smaller than the minimum window is refused")
    func tooSmall() async {
        await #expect(throws: QUICError.self) {
            _ = try await QUICServer.bind(host: "127.0.0.1", port: 0, limits: QUICServer.Limits(maximumReceiveWindowBytes: 1024))
        }
    }
}
