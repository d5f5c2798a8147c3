import Synchronization
import Testing
@testable import YoMoQUIC

/// The room frames still arriving share (`IncompleteFrameBudget`): who gets it,
/// in which order, and who loses it.
@Suite("Incomplete frame budget")
struct IncompleteFrameBudgetTests {
    private let noStall: @Sendable (Int, Int) -> Void = { _, _ in }

    @Test("first come, first served: a small frame does not pass a big one that waits, and both go in when room is given back")
    func firstComeFirstServed() async throws {
        let budget = IncompleteFrameBudget(bytes: 10)
        let first = try await budget.reserve(6, onStall: noStall)
        let big = Task { try await budget.reserve(6, onStall: noStall) }
        #expect(await until { budget.waitingConnections == 1 })
        let small = Task { try await budget.reserve(1, onStall: noStall) }
        #expect(await until { budget.waitingConnections == 2 }, "the small frame waits behind the big one, though it would fit")
        #expect(budget.heldBytes == 6)
        first.release()
        let admitted = (try await big.value, try await small.value)
        #expect(budget.heldBytes == 7)
        #expect(budget.waitingConnections == 0)
        _ = admitted
    }

    @Test("a frame bigger than the whole budget goes in alone, and others wait for it")
    func biggerThanTheBudget() async throws {
        let budget = IncompleteFrameBudget(bytes: 10)
        let huge = try await budget.reserve(25, onStall: noStall)
        #expect(budget.heldBytes == 25)
        let next = Task { try await budget.reserve(1, onStall: noStall) }
        #expect(await until { budget.waitingConnections == 1 })
        huge.release()
        _ = try await next.value
        #expect(budget.heldBytes == 1)
    }

    @Test("a waiter cancelled at the head lets those behind it in, and takes nothing")
    func cancelledWaiter() async throws {
        let budget = IncompleteFrameBudget(bytes: 10)
        let holder = try await budget.reserve(6, onStall: noStall)
        let head = Task { try await budget.reserve(6, onStall: noStall) }
        #expect(await until { budget.waitingConnections == 1 })
        let behind = Task { try await budget.reserve(3, onStall: noStall) }
        #expect(await until { budget.waitingConnections == 2 })
        head.cancel()
        await #expect(throws: CancellationError.self) { try await head.value }
        _ = try await behind.value
        #expect(budget.heldBytes == 9)
        withExtendedLifetime(holder) {}
    }

    @Test("while others wait, a frame that received nothing for the stall timeout loses its room; one that progresses keeps it")
    func stalledFrameLosesItsRoom() async throws {
        let budget = IncompleteFrameBudget(bytes: 10, stallTimeout: .milliseconds(500))
        let stalledCalls = Mutex<[(String, Int, Int)]>([])
        let progressing = try await budget.reserve(5) { received, size in stalledCalls.withLock { $0.append(("progressing", received, size)) } }
        let stalled = try await budget.reserve(5) { received, size in stalledCalls.withLock { $0.append(("stalled", received, size)) } }
        stalled.progress(received: 1234)
        let keepGoing = Task {
            var received = 0
            while !Task.isCancelled {
                received += 100
                progressing.progress(received: received)
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        let waiter = Task { try await budget.reserve(5, onStall: noStall) }
        _ = try await waiter.value
        keepGoing.cancel()
        let calls = stalledCalls.withLock { $0 }
        #expect(calls.count == 1)
        #expect(calls.first?.0 == "stalled")
        #expect(calls.first?.1 == 1234)
        #expect(calls.first?.2 == 5)
        #expect(budget.heldBytes == 10, "the progressing frame and the waiter")
        withExtendedLifetime((progressing, stalled)) {}
    }

    @Test("nobody waiting: a frame may stall as long as it likes")
    func stallWithoutWaiters() async throws {
        let budget = IncompleteFrameBudget(bytes: 10, stallTimeout: .milliseconds(50))
        let stalled = Mutex(false)
        let holder = try await budget.reserve(8) { _, _ in stalled.withLock { $0 = true } }
        // Someone waits briefly and leaves (cancelled): the watch must end without taking the room.
        let waiter = Task { try await budget.reserve(5, onStall: noStall) }
        #expect(await until { budget.waitingConnections == 1 })
        waiter.cancel()
        _ = try? await waiter.value
        #expect(budget.waitingConnections == 0)
        // The watch wakes at the next stall timeout, finds nobody waiting and ends.
        #expect(await until { !budget.isWatchingForStalls })
        #expect(stalled.withLock { $0 } == false)
        #expect(budget.heldBytes == 8)
        withExtendedLifetime(holder) {}
    }
}
