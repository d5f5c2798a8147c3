import CNGTCP2
import Glibc
import Synchronization

/// The tokens a server's Retry packets carry (RFC 9000 §8.1.2): sealed with a
/// key only this server holds, bound to the client's address and to both
/// connection ids, valid for `lifetime`. A client that sends one back proves
/// it receives at the address it sends from, which a flood of Initials from
/// spoofed addresses cannot. Timestamps are wall-clock time, so that servers
/// sharing a key (a restart, several behind one address) judge a token's age alike.
struct RetryTokens {
    /// Long enough for a client's round trip, short against a replay.
    static let lifetime: Duration = .seconds(10)
    /// ngtcp2's largest Retry token: magic, id length, id, timestamp, AEAD tag, random.
    private static let maximumLength = 1 + 1 + 20 + 8 + 16 + 32

    private let secret: [UInt8]

    /// Keyed from the server's stateless reset key when it has one (kept
    /// across restarts, shared by zippers that stand in for each other), so
    /// a client that was sent a Retry just before a restart is let in by the
    /// next run; otherwise a random key, and such a client's token is refused
    /// with INVALID_TOKEN and it dials again.
    init(statelessResetKey: [UInt8]?) {
        var secret = [UInt8](repeating: 0, count: 32)
        if let statelessResetKey {
            // Its own key, not the reset key itself: one secret, one use.
            let input = Array("yomo quic retry token key".utf8) + statelessResetKey
            gnutls_hash_fast(GNUTLS_DIG_SHA256, input, input.count, &secret)
        } else {
            gnutls_rnd(GNUTLS_RND_KEY, &secret, secret.count)
        }
        self.secret = secret
    }

    /// How long a NEW_TOKEN token lets a client that reconnects from the
    /// same address skip the Retry (RFC 9000 §8.1.3): a restart or a
    /// redial under a flood of Initials, within the hour.
    static let regularLifetime: Duration = .seconds(3600)
    /// ngtcp2's regular token: magic, timestamp, AEAD tag, random.
    private static let maximumRegularLength = 1 + 8 + 16 + 32

    /// A token for a NEW_TOKEN frame to a client at `remote`; bound to its
    /// address, not its port, which a client's next connection changes.
    func makeRegular(for remote: UDPAddress, now: UInt64) -> [UInt8]? {
        var token = [UInt8](repeating: 0, count: Self.maximumRegularLength)
        let n = remote.withSockaddr { address, length in
            ngtcp2_crypto_generate_regular_token(&token, secret, secret.count, address, length, now)
        }
        return n > 0 ? Array(token.prefix(n)) : nil
    }

    /// Whether `token`, from a client's Initial, is a NEW_TOKEN token of ours
    /// for its address, and still fresh.
    func isValidRegular(_ token: [UInt8], from remote: UDPAddress, now: UInt64) -> Bool {
        remote.withSockaddr { address, length in
            ngtcp2_crypto_verify_regular_token(token, token.count, secret, secret.count, address, length, Self.regularLifetime.nanoseconds, now)
        } == 0
    }

    /// Now, for tokens: nanoseconds of wall-clock time.
    static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
    }

    /// A token for a Retry answering `initial` from `remote`, naming `retrySCID`.
    func make(answering initial: NGPacket.Initial, from remote: UDPAddress, retrySCID: ConnectionID, now: UInt64) -> [UInt8]? {
        var token = [UInt8](repeating: 0, count: Self.maximumLength)
        var retry = retrySCID.ngtcp2, original = initial.dcid.ngtcp2
        let n = remote.withSockaddr { address, length in
            ngtcp2_crypto_generate_retry_token(&token, secret, secret.count, initial.version, address, length, &retry, &original, now)
        }
        guard n > 0 else { return nil }
        return Array(token.prefix(n))
    }

    /// The connection id of the client's first Initial if `initial`'s token
    /// is one of ours, for this address and this connection id, and still
    /// fresh; nil otherwise.
    func originalDCID(of initial: NGPacket.Initial, from remote: UDPAddress, now: UInt64) -> ConnectionID? {
        var original = ngtcp2_cid()
        var dcid = initial.dcid.ngtcp2
        let rv = remote.withSockaddr { address, length in
            ngtcp2_crypto_verify_retry_token(
                &original, initial.token, initial.token.count, secret, secret.count, initial.version, address, length, &dcid,
                Self.lifetime.nanoseconds, now)
        }
        return rv == 0 ? ConnectionID(original) : nil
    }
}

/// The tokens servers gave this process's clients in NEW_TOKEN frames, by
/// server address (as text: the address and port dialled). Each is used
/// once, by the next connection to that server (RFC 9000 §8.1.3: a token
/// used again would link the connections), and the newest replaces the one
/// before. Bounded: a client that dials many servers forgets the oldest.
enum NewTokens {
    static let maximumServers = 256
    private static let store = Mutex<(tokens: [String: [UInt8]], order: [String])>(([:], []))

    static func keep(_ token: [UInt8], for server: UDPAddress) {
        let key = server.description
        store.withLock { store in
            // Renewed tokens move last: the one forgotten is the one kept longest ago.
            if store.tokens.updateValue(token, forKey: key) != nil { store.order.removeAll { $0 == key } }
            store.order.append(key)
            while store.order.count > maximumServers { store.tokens[store.order.removeFirst()] = nil }
        }
    }

    /// Whether a token for `server` is kept (tests).
    static func has(for server: UDPAddress) -> Bool { store.withLock { $0.tokens[server.description] != nil } }

    /// The token for a connection to `server` (empty: none), no longer kept.
    static func take(for server: UDPAddress) -> [UInt8] {
        let key = server.description
        return store.withLock { store in
            guard let token = store.tokens.removeValue(forKey: key) else { return [] }
            store.order.removeAll { $0 == key }
            return token
        }
    }
}
