import Synchronization

/// Bytes that several connections together keep after their peers'
/// acknowledgement (`QUICConnection.retainAcknowledged(budget:)`), split as
/// the receive windows are: evenly among the addresses (`AddressGroup`s) the
/// retaining connections come from, and each address's part evenly among its
/// connections. So the sum stays within the budget however many connections
/// retain, a connection alone may keep all of it, and one host that opens
/// many connections shrinks its own shares, not everyone's.
package final class RetentionBudget: Sendable {
    package let bytes: Int
    /// Retaining connections by their address group; `groupCount` mirrors its size
    /// for `share`, read for every buffer kept.
    private let groups = Mutex<[String: Group]>([:])
    private let groupCount = Atomic<Int>(0)

    /// The retaining connections of one address group.
    package final class Group: Sendable {
        fileprivate let key: String
        fileprivate let connections = Atomic<Int>(0)

        fileprivate init(key: String) { self.key = key }
    }

    package init(bytes: Int) {
        self.bytes = bytes
    }

    /// What one connection of `group` may keep now (shrinks as others join; a
    /// connection above it gives up its oldest bytes as it keeps new ones).
    func share(of group: Group) -> Int {
        bytes / max(1, groupCount.load(ordering: .relaxed)) / max(1, group.connections.load(ordering: .relaxed))
    }

    package var retainingConnections: Int { groups.withLock { $0.values.reduce(0) { $0 + $1.connections.load(ordering: .relaxed) } } }

    /// A connection from `key` (an address group's text) begins to retain.
    func join(group key: String) -> Group {
        groups.withLock { groups in
            let group: Group
            if let known = groups[key] {
                group = known
            } else {
                group = Group(key: key)
                groups[key] = group
                groupCount.store(groups.count, ordering: .relaxed)
            }
            group.connections.add(1, ordering: .relaxed)
            return group
        }
    }

    func leave(_ group: Group) {
        groups.withLock { groups in
            // Counted under this lock: a group whose last connection left is in the table, and goes.
            guard group.connections.subtract(1, ordering: .relaxed).newValue == 0 else { return }
            groups[group.key] = nil
            groupCount.store(groups.count, ordering: .relaxed)
        }
    }
}
