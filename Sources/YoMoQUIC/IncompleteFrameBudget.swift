import NIOCore
import Synchronization

/// Memory for frames that arrive in pieces, shared by the connections of one
/// server: a frame bigger than one received chunk (64 KiB) is assembled in a
/// buffer of its full size, and without a bound across connections, N peers
/// each sending most of a 16 MiB frame pin N × 16 MiB.
///
/// A connection whose next frame does not fit waits, reading nothing more,
/// so QUIC flow control holds its peer back; frames are admitted first come,
/// first served, and a frame bigger than the whole budget is admitted when no
/// other frame holds any. While connections wait, a frame that received no
/// byte for `stallTimeout` loses its room: its `onStall` closes its connection.
public final class IncompleteFrameBudget: Sendable {
    /// Frames up to this size are not counted: a connection holds at most one
    /// such buffer, which QUIC's windows already bound.
    public static let countedFrameSize = 64 << 10

    public let bytes: Int
    public let stallTimeout: Duration

    private struct Holder {
        var bytes: Int
        var lastProgress: ContinuousClock.Instant
        var onStall: @Sendable (_ received: Int, _ size: Int) -> Void
        var received: Int
    }

    private struct Waiter {
        var id: UInt64
        var bytes: Int
        var onStall: @Sendable (_ received: Int, _ size: Int) -> Void
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        let limit: Int
        var held = 0
        var nextID: UInt64 = 0
        var holders: [UInt64: Holder] = [:]
        var waiters = CircularBuffer<Waiter>()
        var watching = false
        /// Waiters cancelled before they were queued.
        var cancelledEarly: Set<UInt64> = []

        /// Admits waiters from the head while they fit; returns whom to resume.
        mutating func admit() -> [CheckedContinuation<Void, any Error>] {
            var admitted: [CheckedContinuation<Void, any Error>] = []
            while let head = waiters.first, holders.isEmpty || head.bytes <= budgetLeft {
                waiters.removeFirst()
                held += head.bytes
                holders[head.id] = Holder(bytes: head.bytes, lastProgress: .now, onStall: head.onStall, received: 0)
                admitted.append(head.continuation)
            }
            return admitted
        }

        var budgetLeft: Int { limit - held }

        /// Takes `id`'s room back (nil: it had none, or gave it back already).
        mutating func giveBack(_ id: UInt64) -> Holder? {
            guard let holder = holders.removeValue(forKey: id) else { return nil }
            held -= holder.bytes
            return holder
        }
    }

    private let state: Mutex<State>

    /// `bytes`: the most that frames being assembled may reserve at once.
    public init(bytes: Int, stallTimeout: Duration = .seconds(10)) {
        precondition(bytes > 0 && stallTimeout > .zero)
        self.bytes = bytes
        self.stallTimeout = stallTimeout
        state = Mutex(State(limit: bytes))
    }

    /// Bytes reserved by frames being assembled now.
    public var heldBytes: Int { state.withLock { $0.held } }
    /// Connections waiting for room for their next frame.
    public var waitingConnections: Int { state.withLock { $0.waiters.count } }
    /// A task checks for stalled frames (only while someone waits).
    var isWatchingForStalls: Bool { state.withLock { $0.watching } }

    /// A frame's room: given back by `release()` (or when the last reference goes).
    final class Reservation: Sendable {
        let id: UInt64
        let budget: IncompleteFrameBudget

        init(id: UInt64, budget: IncompleteFrameBudget) {
            self.id = id
            self.budget = budget
        }

        /// The frame received `total` of its bytes so far.
        func progress(received total: Int) { budget.progress(id, received: total) }

        /// Gives the room back (again: nothing).
        func release() { budget.release(id) }

        deinit { budget.release(id) }
    }

    /// Waits until `size` bytes fit, first come first served; throws
    /// `CancellationError` when the task is cancelled while it waits.
    func reserve(
        _ size: Int, onStall: @escaping @Sendable (_ received: Int, _ size: Int) -> Void
    ) async throws -> Reservation {
        let id = state.withLock { state -> UInt64 in
            defer { state.nextID += 1 }
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let queued = state.withLock { state -> (admitted: [CheckedContinuation<Void, any Error>], watch: Bool)? in
                    if state.cancelledEarly.remove(id) != nil { return nil }
                    state.waiters.append(Waiter(id: id, bytes: size, onStall: onStall, continuation: continuation))
                    let admitted = state.admit()
                    let watch = !state.waiters.isEmpty && !state.watching
                    if watch { state.watching = true }
                    return (admitted, watch)
                }
                guard let queued else { return continuation.resume(throwing: CancellationError()) }
                for waiter in queued.admitted { waiter.resume() }
                if queued.watch { watchForStalls() }
            }
        } onCancel: {
            let (cancelled, admitted) = state.withLock { state -> (CheckedContinuation<Void, any Error>?, [CheckedContinuation<Void, any Error>]) in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else {
                    // Not queued yet (admitted ones are holders: nothing to undo).
                    if state.holders[id] == nil { state.cancelledEarly.insert(id) }
                    return (nil, [])
                }
                let cancelled = state.waiters.remove(at: index).continuation
                // The head may have left: those behind it may fit now.
                return (cancelled, state.admit())
            }
            cancelled?.resume(throwing: CancellationError())
            for waiter in admitted { waiter.resume() }
        }
        return Reservation(id: id, budget: self)
    }

    private func progress(_ id: UInt64, received: Int) {
        state.withLock { state in
            guard state.holders[id] != nil else { return }
            state.holders[id]!.lastProgress = .now
            state.holders[id]!.received = received
        }
    }

    private func release(_ id: UInt64) {
        let admitted = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            guard state.giveBack(id) != nil else { return [] }
            return state.admit()
        }
        for waiter in admitted { waiter.resume() }
    }

    /// While anyone waits: every `stallTimeout`, frames that received nothing
    /// for that long give their room back and their connections are closed.
    private func watchForStalls() {
        Task { [weak self, stallTimeout] in
            while true {
                try? await Task.sleep(for: stallTimeout)
                guard let self else { return }
                if !self.takeBackStalled() { return }
            }
        }
    }

    /// False when nobody waits any more (the watch ends).
    private func takeBackStalled() -> Bool {
        let now = ContinuousClock.now
        let (stalled, admitted, goOn) = state.withLock { state in
            guard !state.waiters.isEmpty else {
                state.watching = false
                return ([Holder](), [CheckedContinuation<Void, any Error>](), false)
            }
            let stalled = state.holders.filter { now - $0.value.lastProgress >= stallTimeout }.keys.compactMap { state.giveBack($0) }
            let admitted = state.admit()
            let goOn = !state.waiters.isEmpty
            if !goOn { state.watching = false }
            return (stalled, admitted, goOn)
        }
        for holder in stalled { holder.onStall(holder.received, holder.bytes) }
        for waiter in admitted { waiter.resume() }
        return goOn
    }
}
