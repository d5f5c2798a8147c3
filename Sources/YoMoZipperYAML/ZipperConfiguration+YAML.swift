// Reading a zipper's YAML config (the Go zipper's format). Its own module,
// and with its own reader of the YAML such configs use (ConfigYAML.swift):
// Yams would bring full Foundation into `yomo serve` (docs/performance.md,
// "Footprint (RSS)").
internal import FoundationEssentials
public import YoMo

extension ZipperConfiguration {
    /// Reads a YAML config; missing keys keep their defaults.
    public init(yaml: String) throws(YoMoError) {
        self.init()
        let root: YAMLValue
        do {
            root = try ConfigYAML.parse(yaml)
        } catch {
            throw YoMoError(.invalidConfiguration, "zipper config is not valid YAML: \(error)")
        }
        guard root.isMapping else {
            if root == .null { return }
            throw YoMoError(.invalidConfiguration, "zipper config must be a YAML mapping")
        }
        let map = root
        if let name = map["name"] {
            guard let name = name.string else { throw YoMoError(.invalidConfiguration, "zipper config: name must be a string") }
            self.name = name
        }
        if let host = map["host"] {
            guard let host = host.string else { throw YoMoError(.invalidConfiguration, "zipper config: host must be a string") }
            self.host = host
        }
        if let port = map["port"] {
            guard let port = port.int, (1...65535).contains(port) else {
                throw YoMoError(.invalidConfiguration, "zipper config: port must be a number from 1 to 65535")
            }
            self.port = port
        }
        if let auth = map["auth"] {
            guard auth.isMapping else {
                throw YoMoError(.invalidConfiguration, "zipper config: auth must be a mapping with type and token")
            }
            let type = auth["type"]?.string ?? ""
            guard type == "token" else {
                throw YoMoError(.invalidConfiguration, "zipper config: auth type \"\(type)\" is not supported (use token)")
            }
            let token = auth["token"]?.text ?? ""
            guard !token.isEmpty else {
                throw YoMoError(.invalidConfiguration, "zipper config: token auth needs a non-empty token")
            }
            authentication = .token(token)
        }
        if let limits = map["limits"] {
            guard limits.isMapping else {
                throw YoMoError(.invalidConfiguration, "zipper config: limits must be a mapping")
            }
            func positive(_ key: String, _ target: inout Int) throws(YoMoError) {
                guard let raw = limits[key] else { return }
                guard let value = raw.int, value > 0 else {
                    throw YoMoError(.invalidConfiguration, "zipper config: limits.\(key) must be a positive number")
                }
                target = value
            }
            try positive("max_connections", &self.limits.maximumConnections)
            try positive("max_connections_per_address", &self.limits.maximumConnectionsPerAddress)
            if let raw = limits["max_unvalidated_handshakes"] {
                guard let value = raw.int, value >= 0 else {
                    throw YoMoError(.invalidConfiguration, "zipper config: limits.max_unvalidated_handshakes must be 0 (a QUIC Retry for every client) or more")
                }
                self.limits.maximumUnvalidatedHandshakes = value
            }
            if let raw = limits["trusted_networks"] {
                // A string of one network, or a list of them.
                let networks: [String]
                switch raw {
                case .string(let one): networks = [one]
                case .sequence(let many) where many.allSatisfy({ $0.text != nil }): networks = many.compactMap(\.text)
                default:
                    throw YoMoError(.invalidConfiguration, "zipper config: limits.trusted_networks must be a list of networks such as [10.0.0.0/8, fd00::/8]")
                }
                if let bad = networks.first(where: { IPNetwork($0) == nil }) {
                    throw YoMoError(.invalidConfiguration, "zipper config: limits.trusted_networks: \"\(bad)\" is not a network such as 10.0.0.0/8 or fd00::/8")
                }
                self.limits.trustedNetworks = networks
            }
            if let raw = limits["ipv6_prefix_length"] {
                guard let value = raw.int, (1...128).contains(value) else {
                    throw YoMoError(.invalidConfiguration, "zipper config: limits.ipv6_prefix_length must be from 1 to 128 (128: each IPv6 address on its own)")
                }
                self.limits.ipv6PrefixLength = value
            }
            try positive("max_pending_handshakes", &self.limits.maximumPendingHandshakes)
            try positive("max_pending_handshakes_per_address", &self.limits.maximumPendingHandshakesPerAddress)
            try positive("max_quic_handshakes", &self.limits.maximumQUICHandshakes)
            try positive("max_handshake_size", &self.limits.maximumHandshakeSize)
            try positive("max_frame_size", &self.limits.maximumFrameSize)
            try positive("max_incomplete_frame_bytes", &self.limits.maximumIncompleteFrameBytes)
            if let raw = limits["max_receive_window_bytes"] {
                // 0: no budget, each connection its own windows (the Go zipper's way).
                guard let value = raw.int, value == 0 || value >= 32 << 10 else {
                    throw YoMoError(.invalidConfiguration, "zipper config: limits.max_receive_window_bytes must be 0 (no budget) or at least 32768")
                }
                self.limits.maximumReceiveWindowBytes = value == 0 ? nil : value
            }
            if let raw = limits["max_unhandled_bytes"] {
                guard let value = raw.int, value >= 0 else {
                    throw YoMoError(.invalidConfiguration, "zipper config: limits.max_unhandled_bytes must be 0 (keep nothing a function acknowledged) or more")
                }
                self.limits.maximumUnhandledBytes = value
            }
            if let raw = limits["stalled_frame_timeout"] {
                guard let value = raw.text.flatMap(UnroutedHold.parseDuration), value > .zero else {
                    throw YoMoError(.invalidConfiguration, "zipper config: limits.stalled_frame_timeout must be a positive duration such as 10s")
                }
                self.limits.stalledFrameTimeout = value
            }
        }
        if let slow = map["slow_consumer"] {
            guard slow.isMapping else {
                throw YoMoError(.invalidConfiguration, "zipper config: slow_consumer must be a mapping")
            }
            if let policy = slow["policy"] {
                guard let name = policy.string, let parsed = SlowConsumer.Policy(name) else {
                    throw YoMoError(.invalidConfiguration, "zipper config: slow_consumer.policy must be block, drop or disconnect")
                }
                slowConsumer.policy = parsed
            }
            if let bytes = slow["max_buffered_bytes"] {
                guard let bytes = bytes.int, bytes > 0 else {
                    throw YoMoError(.invalidConfiguration, "zipper config: slow_consumer.max_buffered_bytes must be a positive number")
                }
                slowConsumer.maximumBufferedBytes = bytes
            }
        }
        if let file = map["stateless_reset_key_file"] {
            guard let file = file.string, !file.isEmpty else {
                throw YoMoError(.invalidConfiguration, "zipper config: stateless_reset_key_file must be a path")
            }
            statelessResetKeyFile = file
        }
        if let raw = map["delivery_receipts"] {
            guard case .bool(let on) = raw else {
                throw YoMoError(.invalidConfiguration, "zipper config: delivery_receipts must be true or false")
            }
            deliveryReceipts = on
        }
        if let file = map["functions_file"] {
            guard let file = file.string, !file.isEmpty else {
                throw YoMoError(.invalidConfiguration, "zipper config: functions_file must be a path")
            }
            functionsFile = file
        }
        if let mesh = map["mesh"] {
            self.mesh = try Self.parseMesh(mesh)
        }
        if let queue = map["mesh_queue"] {
            guard queue.isMapping else {
                throw YoMoError(.invalidConfiguration, "zipper config: mesh_queue must be a mapping")
            }
            for (key, target) in [("max_frames", \MeshQueue.maximumFrames), ("max_bytes", \MeshQueue.maximumBytes)] {
                guard let raw = queue[key] else { continue }
                guard let value = raw.int, value > 0 else {
                    throw YoMoError(.invalidConfiguration, "zipper config: mesh_queue.\(key) must be a positive number")
                }
                meshQueue[keyPath: target] = value
            }
        }
        if let hold = map["unrouted_hold"] {
            guard hold.isMapping else {
                throw YoMoError(.invalidConfiguration, "zipper config: unrouted_hold must be a mapping (duration, max_bytes, after_last_observer)")
            }
            for (key, target) in [("duration", \UnroutedHold.duration), ("after_last_observer", \UnroutedHold.afterLastObserver)] {
                guard let raw = hold[key] else { continue }
                guard let value = raw.text.flatMap(UnroutedHold.parseDuration) else {
                    throw YoMoError(.invalidConfiguration, "zipper config: unrouted_hold.\(key) must be a duration such as 5s or 500ms")
                }
                unroutedHold[keyPath: target] = value
            }
            if let raw = hold["max_bytes"] {
                guard let value = raw.int, value > 0 else {
                    throw YoMoError(.invalidConfiguration, "zipper config: unrouted_hold.max_bytes must be a positive number")
                }
                unroutedHold.maximumBytes = value
            }
        }
    }

    /// Go's `mesh:` section: name → {host, port, credential}. `null` or an
    /// empty mapping means no mesh.
    static func parseMesh(_ raw: YAMLValue) throws(YoMoError) -> [MeshPeer] {
        if raw == .null { return [] }
        guard case .mapping(let entries) = raw else {
            throw YoMoError(.invalidConfiguration, "zipper config: mesh must be a mapping of zipper names to {host, port, credential}")
        }
        var peers: [MeshPeer] = []
        for (name, value) in entries {
            guard value.isMapping else {
                throw YoMoError(.invalidConfiguration, "zipper config: mesh.\(name) must be a mapping with host, port and credential")
            }
            let entry = value
            guard let host = entry["host"]?.string, !host.isEmpty else {
                throw YoMoError(.invalidConfiguration, "zipper config: mesh.\(name).host must be a host name or address")
            }
            var port = 9000
            if let raw = entry["port"] {
                guard let value = raw.int, (1...65535).contains(value) else {
                    throw YoMoError(.invalidConfiguration, "zipper config: mesh.\(name).port must be a number from 1 to 65535")
                }
                port = value
            }
            // A number or bool written without quotes is still meant as text.
            let credential = entry["credential"]?.text
            peers.append(MeshPeer(name: name, host: host, port: port, credential: credential?.isEmpty == true ? nil : credential))
        }
        return peers.sorted { $0.name < $1.name }
    }

    public init(contentsOfFile path: String) throws(YoMoError) {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw YoMoError(.invalidConfiguration, "cannot read zipper config \(path): \(error)")
        }
        try self.init(yaml: text)
    }
}
