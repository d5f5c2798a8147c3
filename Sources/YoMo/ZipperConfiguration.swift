internal import Foundation
internal import Yams

/// A zipper's settings, readable from the Go zipper's YAML config:
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
/// `slow_consumer`, `mesh_queue` and `stateless_reset_key_file`.
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
    /// The zippers of the mesh (Go's `mesh:`), sorted by name. Every frame a
    /// source or stream function writes here is also forwarded to each of them
    /// but the one named like this zipper (see `downstreams`).
    public var mesh: [MeshPeer]
    /// What one mesh downstream may hold while it is slow or unreachable.
    public var meshQueue: MeshQueue

    public static let specVersion = "2024-01-03"

    /// Caps on what peers may hold, checked before they are trusted.
    public struct Limits: Hashable, Sendable {
        /// QUIC connections at once; new ones beyond are not answered (their
        /// clients' handshakes time out and they retry).
        public var maximumConnections: Int
        /// Connections that have opened their stream but not finished the YoMo
        /// handshake; beyond this, new ones are closed with a reason.
        public var maximumPendingHandshakes: Int
        /// The largest first frame (the handshake) a connection may send, in
        /// bytes: bigger ones are refused as soon as their header arrives.
        public var maximumHandshakeSize: Int
        /// The largest frame after the handshake, in bytes.
        public var maximumFrameSize: Int

        public init(
            maximumConnections: Int = 16384, maximumPendingHandshakes: Int = 1024,
            maximumHandshakeSize: Int = 64 << 10, maximumFrameSize: Int = 16 << 20
        ) {
            self.maximumConnections = maximumConnections
            self.maximumPendingHandshakes = maximumPendingHandshakes
            self.maximumHandshakeSize = maximumHandshakeSize
            self.maximumFrameSize = maximumFrameSize
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
        public var address: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    /// Frames queued for one downstream zipper that has not taken them yet;
    /// beyond either bound new frames for it are dropped (and counted), so a
    /// slow or unreachable downstream never holds up local routing.
    public struct MeshQueue: Hashable, Sendable {
        public var maximumFrames: Int
        public var maximumBytes: Int

        public init(maximumFrames: Int = 1024, maximumBytes: Int = 4 << 20) {
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
        mesh: [MeshPeer] = [],
        meshQueue: MeshQueue = MeshQueue()
    ) {
        self.mesh = mesh.sorted { $0.name < $1.name }
        self.meshQueue = meshQueue
        self.name = name
        self.host = host
        self.port = port
        self.authentication = authentication
        self.version = version
        self.limits = limits
        self.slowConsumer = slowConsumer
        self.statelessResetKeyFile = statelessResetKeyFile
    }

    /// Reads a YAML config; missing keys keep their defaults.
    public init(yaml: String) throws(YoMoError) {
        self.init()
        let root: Any?
        do {
            root = try Yams.load(yaml: yaml)
        } catch {
            throw YoMoError(.invalidConfiguration, "zipper config is not valid YAML: \(error)")
        }
        guard let map = root as? [String: Any] else {
            if root == nil { return }
            throw YoMoError(.invalidConfiguration, "zipper config must be a YAML mapping")
        }
        if let name = map["name"] {
            guard let name = name as? String else { throw YoMoError(.invalidConfiguration, "zipper config: name must be a string") }
            self.name = name
        }
        if let host = map["host"] {
            guard let host = host as? String else { throw YoMoError(.invalidConfiguration, "zipper config: host must be a string") }
            self.host = host
        }
        if let port = map["port"] {
            guard let port = port as? Int, (1...65535).contains(port) else {
                throw YoMoError(.invalidConfiguration, "zipper config: port must be a number from 1 to 65535")
            }
            self.port = port
        }
        if let auth = map["auth"] {
            guard let auth = auth as? [String: Any] else {
                throw YoMoError(.invalidConfiguration, "zipper config: auth must be a mapping with type and token")
            }
            let type = auth["type"] as? String ?? ""
            guard type == "token" else {
                throw YoMoError(.invalidConfiguration, "zipper config: auth type \"\(type)\" is not supported (use token)")
            }
            let token = auth["token"].map { "\($0)" } ?? ""
            guard !token.isEmpty else {
                throw YoMoError(.invalidConfiguration, "zipper config: token auth needs a non-empty token")
            }
            authentication = .token(token)
        }
        if let limits = map["limits"] {
            guard let limits = limits as? [String: Any] else {
                throw YoMoError(.invalidConfiguration, "zipper config: limits must be a mapping")
            }
            func positive(_ key: String, _ target: inout Int) throws(YoMoError) {
                guard let raw = limits[key] else { return }
                guard let value = raw as? Int, value > 0 else {
                    throw YoMoError(.invalidConfiguration, "zipper config: limits.\(key) must be a positive number")
                }
                target = value
            }
            try positive("max_connections", &self.limits.maximumConnections)
            try positive("max_pending_handshakes", &self.limits.maximumPendingHandshakes)
            try positive("max_handshake_size", &self.limits.maximumHandshakeSize)
            try positive("max_frame_size", &self.limits.maximumFrameSize)
        }
        if let slow = map["slow_consumer"] {
            guard let slow = slow as? [String: Any] else {
                throw YoMoError(.invalidConfiguration, "zipper config: slow_consumer must be a mapping")
            }
            if let policy = slow["policy"] {
                guard let name = policy as? String, let parsed = SlowConsumer.Policy(name) else {
                    throw YoMoError(.invalidConfiguration, "zipper config: slow_consumer.policy must be block, drop or disconnect")
                }
                slowConsumer.policy = parsed
            }
            if let bytes = slow["max_buffered_bytes"] {
                guard let bytes = bytes as? Int, bytes > 0 else {
                    throw YoMoError(.invalidConfiguration, "zipper config: slow_consumer.max_buffered_bytes must be a positive number")
                }
                slowConsumer.maximumBufferedBytes = bytes
            }
        }
        if let file = map["stateless_reset_key_file"] {
            guard let file = file as? String, !file.isEmpty else {
                throw YoMoError(.invalidConfiguration, "zipper config: stateless_reset_key_file must be a path")
            }
            statelessResetKeyFile = file
        }
        if let mesh = map["mesh"] {
            self.mesh = try Self.parseMesh(mesh)
        }
        if let queue = map["mesh_queue"] {
            guard let queue = queue as? [String: Any] else {
                throw YoMoError(.invalidConfiguration, "zipper config: mesh_queue must be a mapping")
            }
            for (key, target) in [("max_frames", \MeshQueue.maximumFrames), ("max_bytes", \MeshQueue.maximumBytes)] {
                guard let raw = queue[key] else { continue }
                guard let value = raw as? Int, value > 0 else {
                    throw YoMoError(.invalidConfiguration, "zipper config: mesh_queue.\(key) must be a positive number")
                }
                meshQueue[keyPath: target] = value
            }
        }
    }

    /// Go's `mesh:` section: name → {host, port, credential}. `null` or an
    /// empty mapping means no mesh.
    static func parseMesh(_ raw: Any) throws(YoMoError) -> [MeshPeer] {
        if raw is NSNull { return [] }
        guard let entries = raw as? [String: Any] else {
            throw YoMoError(.invalidConfiguration, "zipper config: mesh must be a mapping of zipper names to {host, port, credential}")
        }
        var peers: [MeshPeer] = []
        for (name, value) in entries {
            guard let entry = value as? [String: Any] else {
                throw YoMoError(.invalidConfiguration, "zipper config: mesh.\(name) must be a mapping with host, port and credential")
            }
            guard let host = entry["host"] as? String, !host.isEmpty else {
                throw YoMoError(.invalidConfiguration, "zipper config: mesh.\(name).host must be a host name or address")
            }
            var port = 9000
            if let raw = entry["port"] {
                guard let value = raw as? Int, (1...65535).contains(value) else {
                    throw YoMoError(.invalidConfiguration, "zipper config: mesh.\(name).port must be a number from 1 to 65535")
                }
                port = value
            }
            // A number or bool written without quotes is still meant as text.
            let credential = entry["credential"].flatMap { $0 is NSNull ? nil : "\($0)" }
            peers.append(MeshPeer(name: name, host: host, port: port, credential: credential?.isEmpty == true ? nil : credential))
        }
        return peers.sorted { $0.name < $1.name }
    }

    public init(contentsOfFile path: String) throws(YoMoError) {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw YoMoError(.invalidConfiguration, "cannot read zipper config \(path): \(error.localizedDescription)")
        }
        try self.init(yaml: text)
    }
}

extension ZipperConfiguration {
    /// The stateless reset key from `statelessResetKeyFile`: read, or made (32
    /// random bytes, mode 0600) when the file does not exist yet.
    func loadStatelessResetKey() throws(YoMoError) -> [UInt8]? {
        guard let path = statelessResetKeyFile else { return nil }
        let url = URL(fileURLWithPath: path)
        if let data = try? Data(contentsOf: url) {
            guard data.count >= 16 else {
                throw YoMoError(.invalidConfiguration, "stateless reset key file \(path) holds \(data.count) bytes; at least 16 are needed")
            }
            return Array(data)
        }
        var key = [UInt8](repeating: 0, count: 32)
        var generator = SystemRandomNumberGenerator()
        for index in key.indices { key[index] = generator.next() }
        do {
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            guard FileManager.default.createFile(atPath: path, contents: Data(key), attributes: [.posixPermissions: 0o600]) else {
                throw YoMoError(.invalidConfiguration, "cannot create stateless reset key file \(path)")
            }
        } catch let error as YoMoError {
            throw error
        } catch {
            throw YoMoError(.invalidConfiguration, "cannot create stateless reset key file \(path): \(error.localizedDescription)")
        }
        return key
    }
}
