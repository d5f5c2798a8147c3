internal import YoMoWire

/// What the zipper knows of one connected client, from its handshake.
struct RouteMember: Hashable, Sendable {
    var connectionID: UInt64
    var name: String
    var clientID: String
    var clientType: ClientType
    var observedTags: Set<UInt32>
    var wantedTarget: String

    /// Whether a frame with `tag` and `target` goes to this client: a stream
    /// function observing the tag, and with a target, only one that wants it.
    func receives(tag: UInt32, target: String?) -> Bool {
        guard clientType == .streamFunction, observedTags.contains(tag) else { return false }
        guard let target, !target.isEmpty else { return true }
        return wantedTarget == target
    }
}

/// The zipper's routing rules, without I/O: which connections get a DataFrame.
///
/// - every stream function that observes the frame's tag gets it, same-name
///   instances included (fan-out, no load balancing, as Go since v1.16);
/// - with `yomo-target` set, only those whose wanted target equals it;
/// - sources and upstream zippers receive nothing.
struct RouteTable: Sendable {
    private(set) var members: [UInt64: RouteMember] = [:]
    private var observers: [UInt32: [UInt64]] = [:]
    /// Stream functions connected per name (same-name instances are allowed).
    private var functionsNamed: [String: Int] = [:]

    mutating func add(_ member: RouteMember) {
        remove(member.connectionID)
        members[member.connectionID] = member
        guard member.clientType == .streamFunction else { return }
        functionsNamed[member.name, default: 0] += 1
        for tag in member.observedTags {
            observers[tag, default: []].append(member.connectionID)
        }
    }

    mutating func remove(_ connectionID: UInt64) {
        guard let member = members.removeValue(forKey: connectionID) else { return }
        if member.clientType == .streamFunction {
            let left = (functionsNamed[member.name] ?? 1) - 1
            functionsNamed[member.name] = left > 0 ? left : nil
        }
        for tag in member.observedTags {
            observers[tag]?.removeAll { $0 == connectionID }
            if observers[tag]?.isEmpty == true { observers[tag] = nil }
        }
    }

    /// The tags the connected stream functions named `name` observe.
    func tagsObserved(byName name: String) -> Set<UInt32> {
        guard functionsNamed[name] != nil else { return [] }
        return members.values.reduce(into: []) { tags, member in
            if member.clientType == .streamFunction && member.name == name { tags.formUnion(member.observedTags) }
        }
    }

    /// The connections a frame with `tag` (and `target`, if any) goes to, in the
    /// order they connected.
    func destinations(tag: UInt32, target: String?) -> [UInt64] {
        guard let candidates = observers[tag] else { return [] }
        guard let target, !target.isEmpty else { return candidates }
        return candidates.filter { members[$0]?.receives(tag: tag, target: target) == true }
    }

    /// Tags `0xF000`–`0xFFFF` belong to the system; a client that writes one is closed.
    static func isReserved(_ tag: UInt32) -> Bool { (0xF000...0xFFFF).contains(tag) }
}

/// The zipper's handshake checks, in Go's order: version, then authentication.
struct HandshakeAuthority: Sendable {
    var version: String
    var authentication: ZipperAuthentication?

    /// Bounds on the handshake's fields, in bytes (tags: a count). Far above
    /// what real clients send; they keep a hostile peer's strings out of the
    /// route table and the logs.
    static let fieldLimits: [(name: String, limit: Int, size: @Sendable (HandshakeFrame) -> Int)] = [
        ("name", 512, { $0.name.utf8.count }),
        ("id", 128, { $0.id.utf8.count }),
        ("auth name", 64, { $0.authName.utf8.count }),
        ("auth payload", 4096, { $0.authPayload.utf8.count }),
        ("version", 64, { $0.version.utf8.count }),
        ("wanted target", 512, { $0.wantedTarget.utf8.count }),
        ("observed tags", 4096, { $0.observedTags.count }),
    ]

    /// Why a handshake is refused: `message` for the RejectedFrame and the
    /// close (Go's words: the client sees what it sent), `logged` for the
    /// zipper's log, which never holds a presented token.
    struct Rejection: Equatable {
        var message: String
        var logged: String

        init(_ message: String, logged: String? = nil) {
            self.message = message
            self.logged = logged ?? message
        }
    }

    /// `nil` when the client may connect.
    func rejection(for handshake: HandshakeFrame) -> Rejection? {
        for field in Self.fieldLimits {
            let size = field.size(handshake)
            if size > field.limit {
                let unit = field.name == "observed tags" ? "" : " bytes"
                return Rejection("handshake \(field.name) is too long: \(size)\(unit), at most \(field.limit)\(unit)")
            }
        }
        guard handshake.version == version else {
            return Rejection("version negotiation failed: client=\(handshake.version), server=\(version)")
        }
        guard let authentication else { return nil }
        guard handshake.authName == authentication.name else {
            return Rejection("authentication not found: \(handshake.authName)")
        }
        guard authentication.accepts(payload: handshake.authPayload) else {
            // A wrong token may be a near miss of the right one, or another deployment's.
            return Rejection(
                "invalid token: \(handshake.authPayload)", logged: "invalid token (\(handshake.authPayload.utf8.count) bytes)")
        }
        return nil
    }
}

/// How a zipper authenticates clients.
public struct ZipperAuthentication: Hashable, Sendable, CustomStringConvertible {
    private enum Method: Hashable, Sendable {
        case token(String)
    }

    private let method: Method

    /// Clients must present the credential `token:<token>`.
    public static func token(_ token: String) -> ZipperAuthentication {
        ZipperAuthentication(method: .token(token))
    }

    /// The auth name a client's credential must carry.
    var name: String {
        switch method {
        case .token: "token"
        }
    }

    func accepts(payload: String) -> Bool {
        switch method {
        case .token(let token): constantTimeEqual(payload, token)
        }
    }

    /// What makes this method unusable, if anything: an empty token (the YAML
    /// refuses one; `--token "$UNSET"` gave one) lets in whoever sends `token:`.
    var problem: String? {
        switch method {
        case .token(let token): token.isEmpty ? "token authentication needs a non-empty token" : nil
        }
    }

    public var description: String { "\(name) authentication" }
}

/// Equal bytes, compared in a time that depends on the lengths only, not on
/// where the first difference is (a token is checked against guesses).
func constantTimeEqual(_ a: String, _ b: String) -> Bool {
    let a = Array(a.utf8), b = Array(b.utf8)
    var difference: UInt8 = a.count == b.count ? 0 : 1
    for index in 0..<max(a.count, b.count) {
        difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
    }
    return difference == 0
}
