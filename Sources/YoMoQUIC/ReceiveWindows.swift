/// What all of a server's clients together may send ahead of what it has
/// read: the sum of their receive windows, held to a budget
/// (`QUICServer.Limits.maximumReceiveWindowBytes`). Without it every
/// connection whose reader waits (its frames wait for a slow stream function,
/// or for room to assemble them) pins its whole window, 2 MiB and up to 6 MiB
/// after ngtcp2's growth, so a zipper's memory grew with its connection count:
/// 200 sources of one stalled function held 380–450 MiB.
///
/// On the server's loop thread only.
struct ReceiveWindowBudget {
    /// The smallest window, and each connection's first: a peer can always
    /// send, and the server's memory is at most `bytes` plus this much per connection.
    static let minimum = 32 << 10

    let bytes: Int
    /// The largest window a connection grows to (`maxStreamReceiveWindow`).
    let maximum: Int
    /// Every connection's window, summed: grows only while under `bytes`.
    private(set) var total = 0

    init(bytes: Int, maximum: Int) {
        self.bytes = bytes
        self.maximum = max(maximum, Self.minimum)
    }

    mutating func opened() { total += Self.minimum }
    mutating func closed(_ window: ManagedReceiveWindow) { total -= window.window }

    /// Up to `wanted` more bytes of window, if the budget has them.
    fileprivate mutating func take(upTo wanted: Int) -> Int {
        let taken = max(0, min(wanted, bytes - total))
        total += taken
        return taken
    }

    fileprivate mutating func giveBack(_ bytes: Int) { total -= bytes }

    /// A connection's fair share, at least the minimum: the budget split evenly
    /// among the addresses clients come from, and each address's part among
    /// its connections, so that one host opening many connections shrinks
    /// its own windows, not everyone's.
    func share(addresses: Int, connectionsFromAddress: Int) -> Int {
        max(Self.minimum, bytes / max(1, addresses) / max(1, connectionsFromAddress))
    }
}

/// One connection's window under a `ReceiveWindowBudget`: its share of the
/// budget (`ReceiveWindowBudget.share`), and no more than it has shown it can
/// use. It starts at `ReceiveWindowBudget.minimum` (the transport parameter
/// the client sees), grows to `cap` at the first read when the budget allows,
/// and `cap` doubles toward the maximum when two window updates come within
/// two round trips, as ngtcp2's own growth does (a fast path far away needs
/// more bytes in flight).
/// A window above its share (more connections came) shrinks as the reader
/// takes bytes, by not giving them back: a window already granted cannot be
/// taken back.
struct ManagedReceiveWindow {
    private(set) var window = ReceiveWindowBudget.minimum
    private(set) var cap: Int
    /// Bytes read and not yet given back to the peer.
    private var unextended = 0
    private var lastExtendedAt: UInt64?

    init(cap: Int) { self.cap = max(cap, ReceiveWindowBudget.minimum) }

    /// The reader took `consumed` more bytes: how many bytes of window to give
    /// the peer now (0: not yet; given back once half a window was read, so a
    /// window update goes out about as often as ngtcp2 sends one).
    mutating func read(
        _ consumed: Int, share: Int, budget: inout ReceiveWindowBudget, now: UInt64, smoothedRTT: () -> UInt64
    ) -> Int {
        unextended += consumed
        let target = min(cap, share)
        var grown = 0
        if window > target {
            let shrink = min(window - target, unextended)
            window -= shrink
            unextended -= shrink
            budget.giveBack(shrink)
        } else if window < target {
            grown = budget.take(upTo: target - window)
            window += grown
        }
        guard grown > 0 || unextended * 2 >= window, unextended + grown > 0 else { return 0 }
        if unextended * 2 >= window {
            // Half a window read again within two round trips: the path can carry more.
            if let last = lastExtendedAt, now &- last < 2 &* smoothedRTT() { cap = min(cap * 2, budget.maximum) }
            lastExtendedAt = now
        }
        defer { unextended = 0 }
        return unextended + grown
    }
}
