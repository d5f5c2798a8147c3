import Synchronization

/// Bytes that several connections together keep after their peers'
/// acknowledgement (`QUICConnection.retainAcknowledged(budget:)`): each keeps
/// an even share, so the sum stays within the budget however many connections
/// retain, and a connection alone may keep all of it.
package final class RetentionBudget: Sendable {
    package let bytes: Int
    private let connections = Atomic<Int>(0)

    package init(bytes: Int) {
        self.bytes = bytes
    }

    /// What one connection may keep now (shrinks as others join; a connection
    /// above it gives up its oldest bytes as it keeps new ones).
    package var share: Int { bytes / max(1, connections.load(ordering: .relaxed)) }

    package var retainingConnections: Int { connections.load(ordering: .relaxed) }

    func join() { connections.add(1, ordering: .relaxed) }

    func leave() { connections.subtract(1, ordering: .relaxed) }
}
