internal import FoundationEssentials
internal import Glibc
internal import YoMoLogging

/// A zipper's settings, readable from the Go zipper's YAML config (with
/// `import YoMoZipperYAML`: `ZipperConfiguration(yaml:)`, `(contentsOfFile:)`):
///
/// ```yaml
/// name: zipper
/// host: 0.0.0.0
/// port: 9000
/// auth:
///   type: token
///   token: Z2FyZmllbGQ=
/// mesh:
///   zipper-b: {host: 10.0.0.2, port: 9000, credential: "token:secret"}
/// ```
///
/// and this SDK's own keys (the Go zipper ignores them): `limits`,
/// `slow_consumer`, `mesh_queue`, `unrouted_hold`, `stateless_reset_key_file`
/// and `functions_file`.
public struct ZipperConfiguration: Hashable, Sendable {
    public var name: String
    public var host: String
    public var port: Int
    public var authentication: ZipperAuthentication?
    /// The spec version clients must announce (exact match).
    public var version: String
    /// What a peer may cost the zipper before and after its handshake.
    public var limits: Limits
    /// What happens to frames for a stream function that does not keep up.
    public var slowConsumer: SlowConsumer
    /// A file holding the key of the QUIC stateless resets (created, mode 0600,
    /// if missing). With the same key after a restart, clients of the previous
    /// run learn at their next packet that the zipper lost their connection and
    /// reconnect at once, instead of after the idle timeout. `nil`: a random
    /// key per start (`yomo serve` defaults to a file, see docs/reliability.md).
    public var statelessResetKeyFile: String?
    /// A file remembering the stream functions connected, and those that left
    /// within `unroutedHold.afterLastObserver` (rewritten at most every second
    /// while they come and go). A restarted zipper holds their tags' frames for
    /// each of them by name until it is back, so that in a fan-out a function
    /// back later than another of its tag misses nothing. `nil` (the default):
    /// nothing remembered; `yomo serve` keeps one beside its stateless reset key.
    public var functionsFile: String?
    /// The zippers of the mesh (Go's `mesh:`), sorted by name. Every frame a
    /// source or stream function writes here is also forwarded to each of them
    /// but the one named like this zipper (see `downstreams`).
    public var mesh: [MeshPeer]
    /// What one mesh downstream may hold while it is slow or unreachable.
    public var meshQueue: MeshQueue
    /// Frames with no stream function to go to, held for one that is on its
    /// way back (`.off`: dropped at once, as the Go zipper does).
    public var unroutedHold: UnroutedHold
    /// Delivery receipts for the clients of this SDK that ask for them (Go's
    /// never do): each is told which of its frames are settled (reached the
    /// QUIC stacks of the functions they go to, or were held or dropped by
    /// the rules above), and keeps the rest to send again if this zipper
    /// crashes. `false`: none sent, and clients keep a frame only until this
    /// zipper's QUIC stack acknowledged it, as with Go's zipper.
    public var deliveryReceipts: Bool

    public static let specVersion = "2024-01-03"

    /// Caps on what peers may hold, checked before they are trusted.
    public struct Limits: Hashable, Sendable {
        /// QUIC connections at once; new ones beyond are not answered (their
        /// clients' handshakes time out and they retry).
        public var maximumConnections: Int
        /// Connections that have opened their stream but not finished the YoMo
        /// handshake; beyond this, new ones are closed with a reason (which
        /// this SDK's clients dial again after, with their backoff).
        public var maximumPendingHandshakes: Int
        /// Of those, from one address at once (an IPv6 client: its network,
        /// `ipv6PrefixLength`), once half of `maximumPendingHandshakes` are in
        /// progress; one more is then closed with `too many handshakes in
        /// progress from <address> (N)`, and its client dials again later. So
        /// one host cannot take every pending slot and turn honest clients
        /// away, and a host with many honest clients (a reconnect storm) is
        /// not slowed while there is room for all. The same bound holds QUIC
        /// handshakes of addresses a Retry proved (`maximumUnvalidatedHandshakes`)
        /// once half of `maximumQUICHandshakes` are in progress, refused with CONNECTION_REFUSED.
        public var maximumPendingHandshakesPerAddress: Int
        /// QUIC handshakes in progress at once; Initials beyond are not
        /// answered (their clients' handshakes time out and they dial again).
        /// Each holds about 120 KB until it completes or times out (3 s), so
        /// this bounds what handshakes can take: 4,096 took 494 MiB under a
        /// flood. Set it lower on a small device.
        public var maximumQUICHandshakes: Int
        /// QUIC handshakes at once of clients whose address is not proven.
        /// Beyond, a new client is answered with a QUIC Retry and no state is
        /// kept: it proves it receives at its address by dialling again with
        /// the Retry's token, one round trip later (every QUIC client does this
        /// by itself, Go's among them). A flood of Initials from spoofed
        /// addresses never comes back, so it cannot take the handshake slots
        /// honest clients need. 0: every client is asked.
        public var maximumUnvalidatedHandshakes: Int
        /// QUIC connections from one IP address at once, counted once their
        /// handshake proved the address; one more is closed with `too many
        /// connections from <address> (limit N)`, so that one host cannot take
        /// every connection there is. Raise it for many clients behind one NAT.
        /// IPv6 clients count by their network (`ipv6PrefixLength`).
        public var maximumConnectionsPerAddress: Int
        /// IPv6 clients count as one address per network of this many bits, for
        /// `maximumConnectionsPerAddress` and the receive windows' shares: an
        /// IPv6 host has a /64 at least and its temporary addresses rotate
        /// within it, so counted address by address one host could open
        /// connections without end. 128: each address on its own. IPv4
        /// clients (also IPv4-mapped, on a zipper listening on `::`) count by
        /// their address.
        public var ipv6PrefixLength: Int
        /// Networks whose clients are not held to any per-address share
        /// (`maximumConnectionsPerAddress`, `maximumPendingHandshakesPerAddress`,
        /// the receive windows' shares): each of their connections counts as
        /// an address of its own. For clients you run behind one NAT (a
        /// cluster's egress, an office), rather than raising the shares for
        /// everyone. `10.0.0.0/8`, `fd00::/8`, or an address alone.
        public var trustedNetworks: [String]
        /// The largest first frame (the handshake) a connection may send, in
        /// bytes: bigger ones are refused as soon as their header arrives.
        public var maximumHandshakeSize: Int
        /// The largest frame after the handshake, in bytes.
        public var maximumFrameSize: Int
        /// Bytes that frames still arriving may take across all connections.
        /// A frame over 64 KiB is assembled in a buffer of its size; one that
        /// does not fit waits, its connection read no further (QUIC flow
        /// control holds its client back), first come first served. A frame
        /// bigger than this is taken when no other frame is arriving.
        public var maximumIncompleteFrameBytes: Int
        /// While connections wait for that room, a frame that received no byte
        /// for this long gives its room back and its connection is closed
        /// (`frame stalled: …`): a peer cannot hold the room by sending half a
        /// frame and then only keep-alives.
        public var stalledFrameTimeout: Duration
        /// Bytes all clients together may send ahead of what the zipper has
        /// read: their QUIC receive windows summed. A connection the zipper
        /// does not read (its frames wait for a slow stream function under
        /// `block`, or for room to be assembled) holds its whole window; each
        /// window is the connection's share of this (split among the clients'
        /// addresses, then among each address's connections; at least 32 KiB, at most
        /// the QUIC configuration's 2 MiB, growing to 6 MiB on a fast path),
        /// so the zipper holds at most this, plus 32 KiB per connection,
        /// however many connections wait. `nil`: every connection gets the
        /// configuration's windows, as the Go zipper does.
        public var maximumReceiveWindowBytes: Int?
        /// Bytes the zipper keeps, across all stream functions that say which
        /// frames their handlers finished (this SDK's, with delivery receipts),
        /// of what they acknowledged and have not handled yet, so that a
        /// function that crashes gives its next instance what its handlers had
        /// not finished. Split evenly among the hosts (address groups) the
        /// functions connect from, then each host's part among its function
        /// connections (all of it for a function alone), so a host with many
        /// functions does not shrink the others'; past its share a function's
        /// oldest frames count as delivered once acknowledged, as with a
        /// function that does not say (Go's), and a crash then loses them
        /// (counted in `Zipper.Statistics.unhandledBytesLost`).
        /// 0: keep nothing past the acknowledgement, and do not ask the
        /// functions to say.
        public var maximumUnhandledBytes: Int

        public init(
            maximumConnections: Int = 16384, maximumPendingHandshakes: Int = 1024,
            maximumHandshakeSize: Int = 64 << 10, maximumFrameSize: Int = 16 << 20,
            maximumIncompleteFrameBytes: Int = 256 << 20, stalledFrameTimeout: Duration = .seconds(10),
            maximumConnectionsPerAddress: Int = 1024, maximumReceiveWindowBytes: Int? = 64 << 20, ipv6PrefixLength: Int = 64,
            maximumUnvalidatedHandshakes: Int = 128, maximumPendingHandshakesPerAddress: Int = 64, trustedNetworks: [String] = [],
            maximumQUICHandshakes: Int = 4096, maximumUnhandledBytes: Int = 64 << 20
        ) {
            self.maximumUnhandledBytes = maximumUnhandledBytes
            self.maximumQUICHandshakes = maximumQUICHandshakes
            self.trustedNetworks = trustedNetworks
            self.maximumUnvalidatedHandshakes = maximumUnvalidatedHandshakes
            self.maximumPendingHandshakesPerAddress = maximumPendingHandshakesPerAddress
            self.maximumConnections = maximumConnections
            self.maximumConnectionsPerAddress = maximumConnectionsPerAddress
            self.ipv6PrefixLength = ipv6PrefixLength
            self.maximumPendingHandshakes = maximumPendingHandshakes
            self.maximumHandshakeSize = maximumHandshakeSize
            self.maximumFrameSize = maximumFrameSize
            self.maximumIncompleteFrameBytes = maximumIncompleteFrameBytes
            self.stalledFrameTimeout = stalledFrameTimeout
            self.maximumReceiveWindowBytes = maximumReceiveWindowBytes
        }
    }

    /// The slow-consumer policy: what routing does when a destination already
    /// has `maximumBufferedBytes` waiting to be acknowledged.
    public struct SlowConsumer: Hashable, Sendable {
        public struct Policy: Hashable, Sendable, CustomStringConvertible {
            private enum Value: String, Hashable, Sendable { case block, drop, disconnect }
            private let value: Value

            /// Routing waits for the destination (backpressure up to the source; nothing lost). The default.
            public static let block = Policy(value: .block)
            /// The frame is not sent to that destination; drops are counted and logged.
            public static let drop = Policy(value: .drop)
            /// The destination is closed with reason "slow consumer"; it may reconnect.
            public static let disconnect = Policy(value: .disconnect)

            public init?(_ name: String) {
                guard let value = Value(rawValue: name.lowercased()) else { return nil }
                self.value = value
            }

            private init(value: Value) { self.value = value }

            public var description: String { value.rawValue }
        }

        public var policy: Policy
        /// Bytes queued for one destination before the policy applies. With
        /// `block`, a writer waits above this (and is released at half of it).
        public var maximumBufferedBytes: Int

        public init(policy: Policy = .block, maximumBufferedBytes: Int = 1 << 20) {
            self.policy = policy
            self.maximumBufferedBytes = maximumBufferedBytes
        }
    }

    /// One zipper of the mesh: where to dial it and the credential it wants.
    public struct MeshPeer: Hashable, Sendable {
        public var name: String
        public var host: String
        public var port: Int
        /// `authName:authPayload` (e.g. `token:secret`); `nil` for a zipper without auth.
        public var credential: String?

        public init(name: String, host: String, port: Int = 9000, credential: String? = nil) {
            self.name = name
            self.host = host
            self.port = port
            self.credential = credential
        }

        /// Reads `NAME=HOST:PORT` (`yomo serve --mesh`); the port defaults to 9000.
        public init(_ text: String, credential: String? = nil) throws(YoMoError) {
            let invalid = YoMoError(.invalidAddress, "mesh entry \"\(text)\" is not NAME=HOST:PORT (e.g. zipper-b=10.0.0.2:9000)")
            guard let equals = text.firstIndex(of: "="), equals != text.startIndex else { throw invalid }
            let address: ZipperAddress
            do {
                address = try ZipperAddress(String(text[text.index(after: equals)...]))
            } catch {
                throw invalid
            }
            guard !address.host.isEmpty, (1...65535).contains(address.port) else { throw invalid }
            self.init(name: String(text[..<equals]), host: address.host, port: address.port, credential: credential)
        }

        /// `host:port`, bracketed for IPv6.
        public var address: String { ZipperAddress.format(host: host, port: port) }
    }

    /// Frames queued for one downstream zipper that has not taken them yet;
    /// beyond either bound new frames for it are dropped (and counted), so a
    /// slow or unreachable downstream never holds up local routing. The
    /// defaults ride out a downstream's restart (about 0.7 s) at 5,000 small
    /// frames a second; 1,024 frames and 4 MiB, before the thirty-sixth round
    /// of issue 14, dropped about half of them.
    public struct MeshQueue: Hashable, Sendable {
        public var maximumFrames: Int
        public var maximumBytes: Int

        public init(maximumFrames: Int = 16384, maximumBytes: Int = 16 << 20) {
            self.maximumFrames = maximumFrames
            self.maximumBytes = maximumBytes
        }
    }

    /// The mesh zippers this one forwards to: every entry but its own name, so
    /// that all zippers of a mesh can share one file.
    public var downstreams: [MeshPeer] { mesh.filter { $0.name != name } }

    public init(
        name: String = "zipper",
        host: String = "127.0.0.1",
        port: Int = 9000,
        authentication: ZipperAuthentication? = nil,
        version: String = ZipperConfiguration.specVersion,
        limits: Limits = Limits(),
        slowConsumer: SlowConsumer = SlowConsumer(),
        statelessResetKeyFile: String? = nil,
        functionsFile: String? = nil,
        mesh: [MeshPeer] = [],
        meshQueue: MeshQueue = MeshQueue(),
        unroutedHold: UnroutedHold = UnroutedHold(),
        deliveryReceipts: Bool = true
    ) {
        self.deliveryReceipts = deliveryReceipts
        self.mesh = mesh.sorted { $0.name < $1.name }
        self.meshQueue = meshQueue
        self.unroutedHold = unroutedHold
        self.name = name
        self.host = host
        self.port = port
        self.authentication = authentication
        self.version = version
        self.limits = limits
        self.slowConsumer = slowConsumer
        self.statelessResetKeyFile = statelessResetKeyFile
        self.functionsFile = functionsFile
    }
}

extension ZipperConfiguration {
    /// The stateless reset key from `statelessResetKeyFile`: read, or made (32
    /// random bytes, mode 0600, written whole or not at all) when the file does
    /// not exist yet.
    ///
    /// Plain system calls rather than Foundation's `Data(contentsOf:)` and
    /// `FileManager`: nothing else in the zipper runs Foundation's URL and file
    /// code, and running it at every start kept ~0.3 MB of it resident.
    package func loadStatelessResetKey() throws(YoMoError) -> [UInt8]? {
        guard let path = statelessResetKeyFile else { return nil }
        if let existing = try readWholeFile(path, maximumBytes: 1 << 16, what: "stateless reset key file") {
            guard existing.count >= 16 else {
                throw YoMoError(.invalidConfiguration, "stateless reset key file \(path) holds \(existing.count) bytes; at least 16 are needed")
            }
            return Array(existing.prefix(64))
        }
        var key = [UInt8](repeating: 0, count: 32)
        var generator = SystemRandomNumberGenerator()
        for index in key.indices { key[index] = generator.next() }
        try writeFileAtomically(path, key, mode: 0o600, what: "stateless reset key file")
        return key
    }
}
