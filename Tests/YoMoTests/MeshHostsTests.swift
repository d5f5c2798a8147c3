import Foundation
import Synchronization
import Testing

@testable import YoMo

extension Trait where Self == ConditionTrait {
    /// Suites whose hosts are network namespaces: `ip netns` needs root (CI runs as root).
    static var needsNetworkNamespaces: Self { .enabled(if: getuid() == 0, "needs root for ip netns") }
}

/// Three hosts, each a Linux network namespace, joined pairwise by veth pairs
/// (a full mesh of links): zipper a (10.213.12.1, 10.213.13.1), zipper b
/// (10.213.12.2, 10.213.23.2), zipper c (10.213.13.3, 10.213.23.3), and on
/// each link an IPv6 address too (fd00:213:12::1, …). Every
/// process runs in its host's namespace; the OTLP receiver runs on b. Removed
/// at the end, also when the test fails.
final class MeshHosts: @unchecked Sendable {
    // Set up once in `make`, then only read; processes are appended from the test's task only.
    let prefix: String
    let directory: URL
    private(set) var namespaces: [String] = []
    private var processes: [Process] = []

    static let hostNames = ["a", "b", "c"]
    /// Each pair's subnet and the veth names on either side.
    static let links: [(String, String, Int)] = [("a", "b", 12), ("a", "c", 13), ("b", "c", 23)]

    private init() throws {
        prefix = "ym" + String(UInt32.random(in: 0..<0xFFFFFF), radix: 16)
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("yomo-mesh-\(prefix)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    func namespace(_ host: String) -> String { "\(prefix)\(host)" }
    /// The veth of `host` towards `peer` (at most 15 characters).
    func veth(_ host: String, towards peer: String) -> String { "\(prefix)\(host)\(peer)" }

    /// `host`'s address on the link to `peer`.
    static func address(_ host: String, towards peer: String) -> String {
        "10.213.\(subnet(host, peer)).\(["a": 1, "b": 2, "c": 3][host]!)"
    }

    /// `host`'s IPv6 address on the link to `peer` (each link has one of each).
    static func address6(_ host: String, towards peer: String) -> String {
        "fd00:213:\(subnet(host, peer))::\(["a": 1, "b": 2, "c": 3][host]!)"
    }

    private static func subnet(_ host: String, _ peer: String) -> Int {
        let (first, second) = host < peer ? (host, peer) : (peer, host)
        return links.first { $0.0 == first && $0.1 == second }!.2
    }

    static func make() async throws -> MeshHosts {
        let hosts = try MeshHosts()
        do {
            for host in hostNames {
                try await ip(["netns", "add", hosts.namespace(host)])
                hosts.namespaces.append(hosts.namespace(host))
                try await ip(["-n", hosts.namespace(host), "link", "set", "lo", "up"])
            }
            for (first, second, _) in links {
                let left = hosts.veth(first, towards: second), right = hosts.veth(second, towards: first)
                try await ip(["link", "add", left, "netns", hosts.namespace(first), "type", "veth",
                              "peer", "name", right, "netns", hosts.namespace(second)])
                for (host, peer, name) in [(first, second, left), (second, first, right)] {
                    try await ip(["-n", hosts.namespace(host), "addr", "add", "\(address(host, towards: peer))/24", "dev", name])
                    // nodad: usable at once, without duplicate address detection's wait.
                    try await ip(["-n", hosts.namespace(host), "addr", "add", "\(address6(host, towards: peer))/64", "dev", name, "nodad"])
                    try await ip(["-n", hosts.namespace(host), "link", "set", name, "up"])
                }
            }
        } catch {
            await hosts.tearDown()
            throw error
        }
        return hosts
    }

    /// Runs `scenario` on new hosts, and removes them afterwards.
    static func with(_ scenario: (MeshHosts) async throws -> Void) async throws {
        let hosts = try await make()
        do {
            try await scenario(hosts)
        } catch {
            // The logs stay in hosts.directory for a look.
            await hosts.tearDown()
            throw error
        }
        await hosts.tearDown()
        // Failed expectations quote the logs they are about.
        try? FileManager.default.removeItem(at: hosts.directory)
    }

    static func ip(_ arguments: [String]) async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        if !FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") { process.executableURL = URL(fileURLWithPath: "/sbin/ip") }
        process.arguments = arguments
        let errors = Pipe()
        process.standardError = errors
        try process.run()
        await waitForExit(process)
        guard process.terminationStatus == 0 else {
            let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw YoMoError(.invalidConfiguration, "ip \(arguments.joined(separator: " ")) failed: \(message)")
        }
    }

    /// Starts `arguments` in `host`'s namespace; stdout and stderr go to `<log>.log`.
    @discardableResult
    func run(on host: String, log: String, environment: [String: String] = [:], _ arguments: [String]) throws -> LogFile {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = ["netns", "exec", namespace(host)] + arguments
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("OTEL_") && !$0.key.hasPrefix("YOMO_") }
        env["YOMO_LOG_FORMAT"] = "json"
        env.merge(environment) { _, new in new }
        process.environment = env
        let file = directory.appendingPathComponent("\(log).log")
        _ = FileManager.default.createFile(atPath: file.path, contents: nil)
        let handle = try FileHandle(forWritingTo: file)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        processes.append(process)
        return LogFile(url: file, process: process)
    }

    /// Cuts (or restores) the link between two hosts at `host`'s end.
    func setLink(_ host: String, towards peer: String, up: Bool) async throws {
        try await Self.ip(["-n", namespace(host), "link", "set", veth(host, towards: peer), up ? "up" : "down"])
    }

    /// Drops (or stops dropping) every packet on `host`'s link to `peer`, both
    /// ways, with nftables in `host`'s namespace: a partition that, unlike a
    /// link set down, tells the sender nothing.
    func partition(_ host: String, from peer: String, _ on: Bool) async throws {
        let device = veth(host, towards: peer), table = "partition_\(peer)"
        try await nft(on: host, on ? [
            ["add", "table", "inet", table],
            ["add", "chain", "inet", table, "input", "{ type filter hook input priority 0; }"],
            ["add", "chain", "inet", table, "output", "{ type filter hook output priority 0; }"],
            ["add", "rule", "inet", table, "input", "iifname", device, "drop"],
            ["add", "rule", "inet", table, "output", "oifname", device, "drop"],
        ] : [["delete", "table", "inet", table]])
    }

    /// Stops `host` from sending "destination unreachable" ICMP errors, as a
    /// firewall that drops them on the way would (for a router: "fragmentation
    /// needed" among them).
    func dropUnreachables(from host: String) async throws {
        try await nft(on: host, [
            ["add", "table", "inet", "no_unreachables"],
            ["add", "chain", "inet", "no_unreachables", "output", "{ type filter hook output priority 0; }"],
            ["add", "rule", "inet", "no_unreachables", "output", "icmp", "type", "destination-unreachable", "drop"],
        ])
    }

    /// Makes `host` drop `percent` % of the packets it forwards, at random,
    /// both ways: a lossy link (a radio, a congested uplink) on the path; at
    /// 100, a path that is down.
    func dropAtRandom(on host: String, percent: Int) async throws {
        try await nft(on: host, [
            ["add", "table", "inet", "lossy"],
            ["add", "chain", "inet", "lossy", "forward", "{ type filter hook forward priority 0; }"],
            ["add", "rule", "inet", "lossy", "forward"] + (percent >= 100 ? [] : ["numgen", "random", "mod", "100", "<", "\(percent)"]) + ["drop"],
        ])
    }

    /// Ends `dropAtRandom(on:percent:)`.
    func stopDropping(on host: String) async throws {
        try await nft(on: host, [["delete", "table", "inet", "lossy"]])
    }

    /// Waits until the `yomo bench` whose metrics are at `metricsURL` on
    /// `host` sends datagrams over 1200 bytes (Path MTU Discovery confirmed
    /// more), while it runs, for at most 20 s; true if it does.
    func pathMTUDiscovered(by bench: LogFile, metricsURL: String, on host: String) async throws -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(20))
        while clock.now < deadline && bench.process.isRunning {
            let metrics = try await fetch(metricsURL, on: host)
            let discovered = metrics.split(separator: "\n").contains {
                $0.hasPrefix("yomo_quic_max_datagram_size_bytes{") && $0.contains("yomo-bench-source") && !$0.hasSuffix(" 1200") && !$0.hasSuffix(" 0")
            }
            if discovered { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    /// Whether the zipper whose metrics are at `metricsURL` on `host` counted a
    /// path that dropped big datagrams (`yomo.zipper.path_mtu.black_holes`).
    func zipperCountedBlackHoles(metricsURL: String, on host: String) async throws -> Bool {
        try await fetch(metricsURL, on: host).split(separator: "\n").contains {
            $0.hasPrefix("yomo_zipper_path_mtu_black_holes_total") && !$0.hasSuffix(" 0")
        }
    }

    /// `yomo serve` on `host`, listening on `listen` port 9000 with no stateless
    /// reset key file, and `arguments`; waits until it listens.
    func startZipper(
        on host: String, listen: String, _ arguments: [String] = [], sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> LogFile {
        let zipper = try run(on: host, log: "zipper", [
            try yomoExecutable().path, "serve", "--host", listen, "--port", "9000", "--stateless-reset-key-file", "none",
        ] + arguments)
        #expect(await zipper.wait(for: "zipper listening"), "\(zipper.text)", sourceLocation: sourceLocation)
        return zipper
    }

    /// Gives `host` one more address on its link to `peer` (`prefix` bits:
    /// 24 for IPv4, 64 for IPv6).
    func addAddress(_ host: String, towards peer: String, _ address: String, prefix: Int) async throws {
        try await Self.ip(["-n", namespace(host), "addr", "add", "\(address)/\(prefix)", "dev", veth(host, towards: peer), "nodad"])
    }

    /// Gives `host` `address` on its link to `peer` in place of the one it had.
    func readdress(_ host: String, towards peer: String, to address: String) async throws {
        let device = veth(host, towards: peer)
        try await Self.ip(["-n", namespace(host), "addr", "del", "\(Self.address(host, towards: peer))/24", "dev", device])
        try await Self.ip(["-n", namespace(host), "addr", "add", "\(address)/24", "dev", device])
    }

    /// Drops every UDP datagram `host` receives for its `port`: the path of
    /// one connection fails one way, other connections (a new one) pass.
    func dropUDP(on host: String, toPort port: Int) async throws {
        let table = "cut_\(port)"
        try await nft(on: host, [
            ["add", "table", "inet", table],
            ["add", "chain", "inet", table, "input", "{ type filter hook input priority 0; }"],
            ["add", "rule", "inet", table, "input", "udp", "dport", "\(port)", "drop"],
        ])
    }

    private func nft(on host: String, _ commands: [[String]]) async throws {
        for command in commands {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
            process.arguments = ["netns", "exec", namespace(host), Self.nft] + command
            let errors = Pipe()
            process.standardError = errors
            try process.run()
            await waitForExit(process)
            guard process.terminationStatus == 0 else {
                let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                throw YoMoError(.invalidConfiguration, "nft \(command.joined(separator: " ")) failed: \(message)")
            }
        }
    }

    /// Gives `host`'s processes a resolver that never answers (`ip netns exec`
    /// puts /etc/netns/<namespace>/resolv.conf over /etc/resolv.conf): every
    /// lookup of a name there takes `seconds`, then fails.
    func silentResolver(on host: String, seconds: Int) throws {
        let directory = URL(fileURLWithPath: "/etc/netns/\(namespace(host))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        // An address of the a–b link that no host has: queries to it go nowhere.
        try "nameserver 10.213.12.99\noptions timeout:\(seconds) attempts:1\n"
            .write(to: directory.appendingPathComponent("resolv.conf"), atomically: true, encoding: .utf8)
    }

    /// Routes `first`'s and `second`'s traffic to each other's address on
    /// their links to `via` through `via`, which forwards it: what `via`'s
    /// links do (a smaller MTU, say) then applies on the way.
    func route(_ first: String, _ second: String, through via: String) async throws {
        try await Self.ip(["netns", "exec", namespace(via), "/bin/sh", "-c",
                           "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"])
        for (host, peer) in [(first, second), (second, first)] {
            try await Self.ip(["-n", namespace(host), "route", "add", "\(Self.address(peer, towards: via))/32", "via", Self.address(via, towards: host)])
            try await Self.ip(["-n", namespace(host), "-6", "route", "add", "\(Self.address6(peer, towards: via))/128", "via", Self.address6(via, towards: host)])
        }
    }

    /// Sets the MTU of `host`'s link to `peer` (at `host`'s end).
    func setMTU(_ host: String, towards peer: String, _ mtu: Int) async throws {
        try await Self.ip(["-n", namespace(host), "link", "set", veth(host, towards: peer), "mtu", "\(mtu)"])
    }

    /// What `url` answers, fetched from `host` (a process's metrics endpoint
    /// on that host's loopback, say); empty when it cannot be reached.
    func fetch(_ url: String, on host: String) async throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = ["netns", "exec", namespace(host), "python3", "-c",
                             "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())", url]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        await waitForExit(process)
        return text
    }

    static let nft = FileManager.default.isExecutableFile(atPath: "/usr/sbin/nft") ? "/usr/sbin/nft" : "/sbin/nft"

    func tearDown() async {
        for process in processes where process.isRunning { process.terminate() }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(5))
        for process in processes {
            while process.isRunning && clock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }
        for process in processes { await waitForExit(process) }
        // Deleting a namespace deletes its veths (and so their peers).
        for namespace in namespaces {
            try? await Self.ip(["netns", "del", namespace])
            try? FileManager.default.removeItem(atPath: "/etc/netns/\(namespace)")
        }
        namespaces = []
    }
}

/// A process's JSON log, read as it grows.
struct LogFile: Sendable {
    let url: URL
    let process: Process

    var records: [[String: Any]] {
        let text = (try? String(contentsOf: url, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }
    }

    func records(_ message: String) -> [[String: Any]] { records.filter { $0["msg"] as? String == message } }

    /// Waits until `count` records say `message`; false after `timeout`.
    func wait(for message: String, count: Int = 1, timeout: Duration = .seconds(20)) async -> Bool {
        await wait(timeout: timeout) { $0.filter { $0["msg"] as? String == message }.count >= count }
    }

    var text: String { (try? String(contentsOf: url, encoding: .utf8)) ?? "" }

    /// Whether `yomo bench`'s summary, its last line, counts `frames` frames and none lost.
    func benchLostNone(of frames: Int) -> Bool {
        let summary = text.split(separator: "\n").last.map(String.init) ?? ""
        return summary.hasPrefix("frames=\(frames) ") && summary.hasSuffix(" lost=0")
    }

    /// Waits until `condition` holds on the records (polled); false after `timeout`.
    func wait(timeout: Duration = .seconds(20), until condition: ([[String: Any]]) -> Bool) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while clock.now < deadline {
            if condition(records) { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return condition(records)
    }
}


func executable(_ name: String) throws -> String {
    let path = try yomoExecutable().deletingLastPathComponent().appendingPathComponent(name).path
    guard FileManager.default.isExecutableFile(atPath: path) else {
        throw YoMoError(.invalidConfiguration, "\(name) not built beside yomo (build all products): \(path)")
    }
    return path
}

@Suite("Mesh across hosts (network namespaces)", .serialized, .needsNetworkNamespaces)
struct MeshHostsTests {
    @Test("three zippers in a full mesh: frames once, replies back, one trace hop by hop, a cut link heals")
    func fullMesh() async throws {
        try await MeshHosts.with(scenario)
    }

    private func scenario(_ hosts: MeshHosts) async throws {
        let yomo = try yomoExecutable().path
        let source = try executable("demo-source"), sfn = try executable("uppercase-sfn")

        // The OTLP receiver on b, reachable from a and c over their links to b.
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("YoMoTracingTests/otlp_receiver.py").path
        let portFile = hosts.directory.appendingPathComponent("otlp.port").path
        let spansFile = hosts.directory.appendingPathComponent("spans.jsonl")
        try hosts.run(on: "b", log: "receiver", ["python3", script, "--host", "0.0.0.0", "--port-file", portFile, "--out", spansFile.path])
        var otlpPort = 0
        for _ in 0..<500 where otlpPort == 0 {
            otlpPort = (try? String(contentsOfFile: portFile, encoding: .utf8)).flatMap { Int($0) } ?? 0
            if otlpPort == 0 { try await Task.sleep(for: .milliseconds(20)) }
        }
        try #require(otlpPort != 0, "the OTLP receiver did not start")
        func tracing(_ host: String) -> [String: String] {
            let receiver = host == "b" ? "127.0.0.1" : MeshHosts.address("b", towards: host)
            return ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://\(receiver):\(otlpPort)", "OTEL_BSP_SCHEDULE_DELAY": "100"]
        }

        // One config per host (addresses differ per link); each lists all three,
        // its own entry included, which it skips.
        var zippers: [String: LogFile] = [:]
        for host in MeshHosts.hostNames {
            let mesh = MeshHosts.hostNames.map { peer in
                let address = peer == host ? "10.213.99.99" : MeshHosts.address(peer, towards: host)
                return "  zipper-\(peer): {host: \(address), port: 9000, credential: \"token:mesh-secret\"}"
            }.joined(separator: "\n")
            // a also forwards to a zipper that never answers (no host has that
            // address), with a small queue: it must cost a's local routing nothing.
            let void = host == "a" ? "\n  zipper-void: {host: 10.213.12.99, port: 9000}\nmesh_queue: {max_frames: 16, max_bytes: 1048576}" : ""
            let config = hosts.directory.appendingPathComponent("zipper-\(host).yaml")
            try """
                name: zipper-\(host)
                host: 0.0.0.0
                port: 9000
                auth: {type: token, token: mesh-secret}
                mesh:
                \(mesh)\(void)
                """.write(to: config, atomically: true, encoding: .utf8)
            zippers[host] = try hosts.run(on: host, log: "zipper-\(host)", environment: tracing(host),
                                          [yomo, "serve", "--config", config.path, "--stateless-reset-key-file", "none"])
        }
        // Every zipper has both others as upstream-zipper clients.
        for (host, log) in zippers {
            let linked = await log.wait { records in
                records.filter { $0["msg"] as? String == "client connected" && $0["client_type"] as? String == "upstream zipper" }.count >= 2
            }
            try #require(linked, "zipper-\(host) did not get both mesh links: \(log.text)")
            let up = await log.wait(for: "connected to zipper", count: 2)
            try #require(up, "zipper-\(host)'s own links are not up: \(log.text)")
            let names = Set(log.records("connected to zipper").compactMap { $0["mesh_downstream"] as? String })
            #expect(names == Set(MeshHosts.hostNames.filter { $0 != host }.map { "zipper-\($0)" }), "the link logs name the downstream")
        }

        // upper on c; on a: a local observer of the source's tag and a sink of upper's replies.
        let credential = ["--credential", "token:mesh-secret", "--zipper", "127.0.0.1:9000"]
        let debug = ["YOMO_LOG_LEVEL": "debug"]
        let upper = try hosts.run(on: "c", log: "upper", environment: tracing("c").merging(debug) { $1 },
                                  [sfn, "--name", "upper", "--observe", "0x33", "--emit", "0x34"] + credential)
        let near = try hosts.run(on: "a", log: "near", environment: debug,
                                 [sfn, "--name", "near", "--observe", "0x33", "--emit", "0x36"] + credential)
        let sink = try hosts.run(on: "a", log: "sink", environment: tracing("a").merging(debug) { $1 },
                                 [sfn, "--name", "sink", "--observe", "0x34", "--emit", "0x35"] + credential)
        for log in [upper, near, sink] {
            let connected = await log.wait(for: "connected to zipper")
            try #require(connected, "\(log.text)")
        }
        func received(_ log: LogFile, tag: Int) -> [String] {
            log.records("frame received").filter { $0["tag"] as? Int == tag || $0["tag"] as? String == "\(tag)" }
                .compactMap { $0["tid"] as? String }
        }

        // Phase 1: 20 frames from a, traced.
        let count = 20
        let first = try hosts.run(on: "a", log: "source-1", environment: tracing("a").merging(debug) { $1 },
                                  [source, "--name", "sensor", "--interval", "20", "--count", "\(count)"] + credential)
        #expect(await upper.wait { _ in received(upper, tag: 0x33).count >= count }, "upper got \(received(upper, tag: 0x33).count): \(upper.text)")
        #expect(await near.wait { _ in received(near, tag: 0x33).count >= count })
        #expect(await sink.wait { _ in received(sink, tag: 0x34).count >= count }, "the replies come back to a")
        await waitForExit(first.process)
        let phaseOne = Set(first.records("frame written").compactMap { $0["tid"] as? String })

        // The trace of one frame: source → zipper-a → zipper-c → upper, and the
        // reply upper → zipper-c → zipper-a → sink; zipper-b hears both once.
        var spans: [[String: Any]] = []
        func service(_ span: [String: Any]) -> String? { (span["resource"] as? [String: Any])?["service.name"] as? String }
        func tag(_ span: [String: Any]) -> Int? { (span["attributes"] as? [String: Any])?["routing_data_tag"] as? Int }
        var traced = false
        for _ in 0..<500 where !traced {
            let text = (try? String(contentsOf: spansFile, encoding: .utf8)) ?? ""
            spans = text.split(separator: "\n").compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
                .filter { $0["type"] as? String == "span" }
            // A whole trace: the sink's span of some reply is there.
            traced = spans.contains { service($0) == "sink" } && spans.contains { service($0) == "zipper-b" && tag($0) == 0x34 }
            if !traced { try await Task.sleep(for: .milliseconds(20)) }
        }
        try #require(traced, "spans: \(spans.map { "\(service($0) ?? "?")/\($0["name"] ?? "?")" })")
        let sinkSpan = try #require(spans.first { service($0) == "sink" })
        let trace = spans.filter { $0["trace_id"] as? String == sinkSpan["trace_id"] as? String }
        func one(_ service: String, tag wanted: Int? = nil) throws -> [String: Any] {
            let found = trace.filter { service == serviceName($0) && (wanted == nil || tag($0) == wanted) }
            #expect(found.count == 1, "\(service) tag \(wanted ?? -1): \(found.count) spans in the trace")
            return try #require(found.first, "no \(service) span in \(trace.map { serviceName($0) ?? "?" })")
        }
        func serviceName(_ span: [String: Any]) -> String? { service(span) }
        func id(_ span: [String: Any]) -> String? { span["span_id"] as? String }
        func parent(_ span: [String: Any]) -> String? { span["parent_span_id"] as? String }
        let sourceSpan = try one("sensor")
        let zipperA = try one("zipper-a", tag: 0x33), zipperB = try one("zipper-b", tag: 0x33), zipperC = try one("zipper-c", tag: 0x33)
        let upperSpan = try one("upper")
        let replyC = try one("zipper-c", tag: 0x34), replyA = try one("zipper-a", tag: 0x34), replyB = try one("zipper-b", tag: 0x34)
        // Across a link: a child of the forwarding zipper's span, or of the span of
        // the frame's wait for the link to connect ("mesh link outage"), a child of that.
        func forwarded(_ child: [String: Any], from span: [String: Any]) -> Bool {
            parent(child) == id(span) || trace.contains { $0["name"] as? String == "mesh link outage" && parent($0) == id(span) && parent(child) == id($0) }
        }
        #expect(parent(zipperA) == id(sourceSpan))
        #expect(forwarded(zipperC, from: zipperA), "zipper-c's span is a child of zipper-a's: a forwarded its own ids")
        #expect(forwarded(zipperB, from: zipperA))
        #expect(parent(upperSpan) == id(zipperC))
        #expect(parent(replyC) == id(upperSpan))
        #expect(forwarded(replyA, from: replyC) && forwarded(replyB, from: replyC))
        #expect(parent(sinkSpan) == id(replyA))

        // Phase 2: frames flow while the a–c link is cut, then restored.
        let second = try hosts.run(on: "a", log: "source-2", [source, "--name", "sensor-2", "--interval", "20", "--count", "1500"] + credential)
        let logA = zippers["a"]!
        #expect(await upper.wait { _ in received(upper, tag: 0x33).count >= count + 10 }, "frames flow before the cut")
        try await hosts.setLink("a", towards: "c", up: false)
        let nearAtCut = received(near, tag: 0x33).count
        let lost = await logA.wait { records in
            records.contains { ($0["msg"] as? String)?.contains("reconnecting") == true && $0["mesh_downstream"] as? String == "zipper-c" }
        }
        #expect(lost, "zipper-a noticed the cut: \(logA.text.suffix(3000))")
        #expect(received(near, tag: 0x33).count > nearAtCut + 20, "local routing kept going during the cut")
        let upperAtRestore = received(upper, tag: 0x33).count
        try await hosts.setLink("a", towards: "c", up: true)
        let healed = await logA.wait { records in
            records.filter { ["reconnected to zipper", "connected to zipper"].contains($0["msg"] as? String)
                && $0["mesh_downstream"] as? String == "zipper-c" }.count >= 2
        }
        #expect(healed, "zipper-a reconnected to zipper-c: \(logA.text.suffix(3000))")
        #expect(await upper.wait { _ in received(upper, tag: 0x33).count > upperAtRestore + 20 }, "forwarding resumed after the reconnect")
        second.process.terminate()
        await waitForExit(second.process)
        let dropping = logA.records("mesh downstream is slow or unreachable: dropping frames for it until it catches up")
        #expect(dropping.contains { $0["mesh_downstream"] as? String == "zipper-void" && $0["mesh_downstream_addr"] as? String == "10.213.12.99:9000" },
                "frames for the silent downstream were dropped, and said so")
        #expect(dropping.filter { $0["mesh_downstream"] as? String == "zipper-void" }.count == 1, "logged once per burst")
        // Local routing kept up with the source all along, silent downstream or cut link.
        let written = second.records("wrote").count
        let nearTotal = received(near, tag: 0x33).count - count
        #expect(nearTotal >= written - 2 && written > 100, "near got \(nearTotal) of \(written) frames")

        // Nothing crashed, and no frame of phase 1 arrived twice anywhere.
        for (host, log) in zippers { #expect(log.process.isRunning, "zipper-\(host) still runs") }
        for log in [upper, near, sink] { #expect(log.process.isRunning) }
        let upperTids = received(upper, tag: 0x33).filter(phaseOne.contains)
        #expect(upperTids.count == count && Set(upperTids).count == count, "each frame once at upper")
        let nearTids = received(near, tag: 0x33).filter(phaseOne.contains)
        #expect(nearTids.count == count && Set(nearTids).count == count, "each frame once at near")
        let all = received(near, tag: 0x33)
        #expect(all.count == Set(all).count, "no frame twice at near, cut or not")
    }
}

@Suite("A partition between hosts (network namespaces, nftables)", .serialized, .needsNetworkNamespaces)
struct PartitionTests {
    @Test("a partition longer than the idle timeout loses no frame: the source sends again, the zipper holds them for the function back last")
    func partitionLongerThanTheIdleTimeout() async throws {
        try await MeshHosts.with(scenario)
    }

    /// The zipper on a, a source on b, a stream function on c. Both links of a
    /// drop every packet, both ways, until the zipper has ended both
    /// connections at its idle timeout (5 s). Then the source's link heals,
    /// and the function's only once the source is back and sending again:
    /// the order in which clients come back after a partition or a restart
    /// is a matter of their timers, and here it is the worst one.
    private func scenario(_ hosts: MeshHosts) async throws {
        // 30 s rather than the default 5 s: the function redials on its own schedule, later on a loaded machine.
        let zipper = try await hosts.startZipper(on: "a", listen: "0.0.0.0", ["--unrouted-hold", "30s"])
        let debug = ["YOMO_LOG_LEVEL": "debug"]
        let function = try hosts.run(on: "c", log: "upper", environment: debug, [
            try executable("uppercase-sfn"), "--zipper", "\(MeshHosts.address("a", towards: "c")):9000", "--observe", "0x33", "--emit", "0x34",
        ])
        #expect(await function.wait(for: "connected to zipper"), "\(function.text)")
        let frames = 300
        let source = try hosts.run(on: "b", log: "source", environment: debug, [
            try executable("demo-source"), "--zipper", "\(MeshHosts.address("a", towards: "b")):9000", "--interval", "30", "--count", "\(frames)",
        ])
        func received() -> [String] {
            function.records("frame received").filter { $0["tag"] as? Int == 0x33 || $0["tag"] as? String == "51" }.compactMap { $0["tid"] as? String }
        }
        #expect(await function.wait { _ in received().count >= 20 }, "frames flow before the cut: \(function.text.suffix(2000))")

        try await hosts.partition("a", from: "b", true)
        try await hosts.partition("a", from: "c", true)
        let ended = await zipper.wait(for: "client disconnected", count: 2)
        try await hosts.partition("a", from: "b", false)
        #expect(ended, "the zipper ended both connections at its idle timeout: \(zipper.text.suffix(3000))")
        // Back, it sends again at once what the zipper had not acknowledged, then what it held.
        let back = await source.wait(for: "reconnected to zipper")
        try await hosts.partition("a", from: "c", false)
        #expect(back, "the source reconnected: \(source.text.suffix(2000))")

        await waitForExit(source.process)
        #expect(source.records("wrote").count == frames)
        let all = await function.wait(timeout: .seconds(30)) { _ in Set(received()).count >= frames }
        #expect(all, "\(Set(received()).count) of \(frames) frames reached the function: \(zipper.text.suffix(3000))")
        // At least once: a frame whose acknowledgement the cut swallowed is sent again.
        #expect(received().count - Set(received()).count <= 5, "\(received().count - Set(received()).count) frames twice")
        #expect(!zipper.records("delivered the frames held for this stream function").isEmpty, "\(zipper.text.suffix(3000))")
        #expect(function.process.isRunning && zipper.process.isRunning)
    }
}

@Suite("A stream function killed on another host (network namespaces)", .serialized, .needsNetworkNamespaces)
struct KilledFunctionHostTests {
    @Test("the zipper learns of the kill from the other host's ICMP and holds what the function lacked for its restart")
    func killedAcrossHosts() async throws {
        try await MeshHosts.with(scenario)
    }

    /// The zipper on a, a source on b, a stream function on c killed with
    /// SIGKILL and started again: the ICMP port unreachable crosses the veth
    /// (rate-limited per host, unlike loopback) and ends its connection.
    private func scenario(_ hosts: MeshHosts) async throws {
        let zipper = try await hosts.startZipper(on: "a", listen: "0.0.0.0", ["--functions-file", "none", "--unrouted-hold", "30s"])
        let debug = ["YOMO_LOG_LEVEL": "debug"]
        let functionArguments = [try executable("uppercase-sfn"), "--zipper", "\(MeshHosts.address("a", towards: "c")):9000", "--pipe"]
        let first = try hosts.run(on: "c", log: "upper-1", environment: debug, functionArguments)
        #expect(await first.wait(for: "connected to zipper"), "\(first.text)")
        let frames = 200
        let source = try hosts.run(on: "b", log: "source", [
            try executable("demo-source"), "--zipper", "\(MeshHosts.address("a", towards: "b")):9000", "--interval", "20", "--count", "\(frames)",
        ])
        func received(_ log: LogFile) -> Set<String> {
            Set(log.records("frame received").filter { $0["tag"] as? Int == 0x33 || $0["tag"] as? String == "51" }.compactMap { $0["tid"] as? String })
        }
        #expect(await first.wait { _ in received(first).count >= 20 }, "frames flow: \(first.text.suffix(2000))")
        kill(first.process.processIdentifier, SIGKILL)
        await waitForExit(first.process)
        // Its connection ends on the ICMP errors, not at the idle timeout (whose error says so).
        let ended = await zipper.wait { records in
            records.contains { $0["msg"] as? String == "client disconnected" && ($0["error"] as? String)?.contains("unreachable") == true }
        }
        #expect(ended, "\(zipper.text.suffix(3000))")
        #expect(!zipper.text.contains("idle timeout"), "\(zipper.text.suffix(3000))")
        let second = try hosts.run(on: "c", log: "upper-2", environment: debug, functionArguments)
        await waitForExit(source.process)
        let all = await second.wait(timeout: .seconds(30)) { _ in received(first).union(received(second)).count >= frames - 1 }
        // At most the one frame in flight at the kill may have been acknowledged by the killed
        // process's QUIC stack and never read (YoMo has no acknowledgement from the handler).
        #expect(all, "\(received(first).union(received(second)).count) of \(frames): \(zipper.text.suffix(3000))")
        #expect(!zipper.records("delivered the frames held for this stream function").isEmpty, "\(zipper.text.suffix(3000))")
    }
}

@Suite("A path whose MTU shrinks under a connection (network namespaces)", .serialized, .needsNetworkNamespaces)
struct ShrinkingPathMTUTests {
    @Test("told by the router's ICMP, each side sends smaller datagrams at once: no frame is lost, each side says so")
    func pathMTUShrinks() async throws {
        try await MeshHosts.with { try await scenario($0, icmp: true) }
    }

    @Test("with the router's ICMP dropped, big datagrams that stop getting through are found out all the same")
    func pathMTUBlackHole() async throws {
        try await MeshHosts.with { try await scenario($0, icmp: false) }
    }

    @Test("over IPv6, told by the router's ICMPv6 packet too big")
    func pathMTUShrinksIPv6() async throws {
        try await MeshHosts.with { try await scenario($0, icmp: true, ipv6: true) }
    }

    /// The zipper on c; a stream function and `yomo bench` on a, whose traffic
    /// to c goes through b. Once Path MTU Discovery confirmed 1444-byte
    /// datagrams, b's links drop to an MTU of 1280 and b drops every bigger
    /// datagram, with an ICMP error back or (`icmp` false) without, as
    /// behind a firewall that drops them: before, either way, the connections
    /// lived on with nothing written getting through.
    private func scenario(_ hosts: MeshHosts, icmp: Bool, ipv6: Bool = false) async throws {
        try await hosts.route("a", "c", through: "b")
        if !icmp { try await hosts.dropUnreachables(from: "b") }
        let zipperAddress = ipv6 ? "[\(MeshHosts.address6("c", towards: "b"))]:9000" : "\(MeshHosts.address("c", towards: "b")):9000"
        let zipper = try await hosts.startZipper(
            on: "c", listen: ipv6 ? "::" : "0.0.0.0", ["--functions-file", "none", "--metrics", "127.0.0.1:9464"])
        let function = try hosts.run(on: "a", log: "upper", [try executable("uppercase-sfn"), "--zipper", zipperAddress])
        #expect(await function.wait(for: "connected to zipper"), "\(function.text)")
        let frames = 1000
        let bench = try hosts.run(on: "a", log: "bench", [
            try yomoExecutable().path, "bench", "--zipper", zipperAddress, "--frames", "\(frames)", "--size", "1300",
            "--rate", "200", "--inflight", "64", "--timeout", "40", "--metrics", "127.0.0.1:9465",
        ])
        // Each 1,300-byte frame fits one datagram once discovery is done.
        let discovered = try await hosts.pathMTUDiscovered(by: bench, metricsURL: "http://127.0.0.1:9465/metrics", on: "a")
        #expect(discovered, "no datagram size over 1200 confirmed: \(bench.text.suffix(2000))")
        for peer in ["a", "c"] { try await hosts.setMTU("b", towards: peer, 1280) }
        await waitForExit(bench.process)
        #expect(bench.benchLostNone(of: frames), "\(bench.text.suffix(3000))\n\(zipper.text.suffix(3000))")
        // Told by ICMP: within the path's 1280-byte MTU (IP and UDP headers
        // off). Found out: the 1200 bytes every QUIC path carries.
        let warning = "the path drops big datagrams (a smaller MTU): sending smaller ones"
        let (size, foundBy) = icmp ? (ipv6 ? "1232" : "1252", "too big") : ("1200", "nothing acknowledged")
        func said(_ log: LogFile) -> Bool {
            log.records(warning).contains { "\($0["size"] ?? "")" == size && ($0["found_by"] as? String)?.hasPrefix(foundBy) == true }
        }
        #expect(said(bench), "\(bench.text.suffix(3000))")
        #expect(said(zipper), "\(zipper.text.suffix(3000))")
        // The zipper sends the source only acknowledgements, which pass: its
        // connection follows the others to the same host.
        let followed = zipper.records(warning).contains {
            $0["conn_name"] as? String == "yomo-bench-source" && $0["found_by"] as? String == "another connection to the same host"
        }
        #expect(followed, "\(zipper.text.suffix(3000))")
        let counted = try await hosts.zipperCountedBlackHoles(metricsURL: "http://127.0.0.1:9464/metrics", on: "c")
        #expect(counted, "the zipper's yomo.zipper.path_mtu.black_holes")
        #expect(zipper.process.isRunning && function.process.isRunning)
    }
}

@Suite("A path that loses packets at random, or goes down and comes back (network namespaces)", .serialized, .needsNetworkNamespaces)
struct LossyPathTests {
    /// b drops a quarter of what it forwards, at random, both ways. Under
    /// CUBIC a lost packet's resend was lost again often enough that a
    /// stream stalled for a second while the peer was heard: taken for a path
    /// that drops big datagrams, said in a warning on every connection and
    /// counted. Nothing may be called a smaller MTU, and under BBR (the
    /// default) every frame must arrive. Under CUBIC at 25 % its backed-off
    /// resends outlast the zipper's 5 s idle timeout now and then (a CI run
    /// of the twenty-ninth round: the function's connection ended, 204 of 800
    /// frames without a reply; the collapse quic.md measures at 30 %), so its
    /// frames are not counted; at 20 % it stalled too seldom to test the trial
    /// (the case passed with the trial taken out).
    @Test("random loss is not taken for a smaller MTU, and under BBR every frame arrives", arguments: ["bbr", "cubic"])
    func randomLoss(_ controller: String) async throws {
        try await MeshHosts.with { hosts in
            try await scenario(hosts, controller: controller, everyFrame: controller == "bbr") {
                try await hosts.dropAtRandom(on: "b", percent: 25)
            }
        }
    }

    /// b drops everything for 3 s, then nothing (a link that flapped, a
    /// handover), less than the zipper's 5 s idle timeout: the connections
    /// live on. When the path came back, the peer was heard while sent
    /// bytes still waited for ngtcp2's next probe, backed off to seconds:
    /// taken for a black hole, on every connection.
    @Test("a path down both ways for 3 s and back: every frame arrives, and the outage is not taken for a smaller MTU")
    func pathDownAndBack() async throws {
        try await MeshHosts.with { hosts in
            try await scenario(hosts, controller: "bbr") {
                try await hosts.dropAtRandom(on: "b", percent: 100)
                try await Task.sleep(for: .seconds(3))
                try await hosts.stopDropping(on: "b")
            }
        }
    }

    /// The zipper on c; a stream function and `yomo bench` on a, whose
    /// traffic to c goes through b, all with `controller`. Once Path MTU
    /// Discovery confirmed big datagrams, `fault` runs.
    private func scenario(_ hosts: MeshHosts, controller: String, everyFrame: Bool = true, fault: () async throws -> Void) async throws {
        try await hosts.route("a", "c", through: "b")
        let zipperAddress = "\(MeshHosts.address("c", towards: "b")):9000"
        let zipper = try await hosts.startZipper(
            on: "c", listen: "0.0.0.0",
            ["--functions-file", "none", "--metrics", "127.0.0.1:9464", "--congestion-control", controller])
        let chosen = ["YOMO_QUIC_CONGESTION_CONTROL": controller]
        let function = try hosts.run(on: "a", log: "upper", environment: chosen, [
            try executable("uppercase-sfn"), "--zipper", zipperAddress,
        ])
        #expect(await function.wait(for: "connected to zipper"), "\(function.text)")
        let frames = 800
        let bench = try hosts.run(on: "a", log: "bench", environment: chosen, [
            try yomoExecutable().path, "bench", "--zipper", zipperAddress, "--frames", "\(frames)", "--size", "1300",
            // Under CUBIC a connection that ended leaves replies that never come:
            // its frames are not counted, so the bench need not wait a minute for them.
            // 100 frames/s: at 200, beside busy loops, 2 runs in 40 still take the 3 s
            // outage for a smaller MTU (quic.md says when; 7 in 50 before the trial's first
            // acknowledgement was timed).
            "--rate", "100", "--inflight", "64", "--timeout", everyFrame ? "60" : "12", "--metrics", "127.0.0.1:9465",
        ])
        let discovered = try await hosts.pathMTUDiscovered(by: bench, metricsURL: "http://127.0.0.1:9465/metrics", on: "a")
        #expect(discovered, "no datagram size over 1200 confirmed: \(bench.text.suffix(2000))")
        try await fault()
        await waitForExit(bench.process)
        if everyFrame {
            #expect(bench.benchLostNone(of: frames), "\(bench.text.suffix(3000))\n\(zipper.text.suffix(3000))")
        } else {
            #expect(bench.text.contains("frames=\(frames) "), "the bench ended with its summary: \(bench.text.suffix(3000))")
        }
        let warning = "the path drops big datagrams (a smaller MTU): sending smaller ones"
        for log in [bench, function, zipper] {
            #expect(log.records(warning).isEmpty, "\(log.text.suffix(3000))")
        }
        let counted = try await hosts.zipperCountedBlackHoles(metricsURL: "http://127.0.0.1:9464/metrics", on: "c")
        #expect(!counted, "the zipper's yomo.zipper.path_mtu.black_holes")
        #expect(zipper.process.isRunning && function.process.isRunning)
    }
}

@Suite("A client that reconnects before the zipper notices (network namespaces)", .serialized, .needsNetworkNamespaces)
struct ReconnectBeforeTheZipperNoticesTests {
    /// Datagrams to the function's port are dropped on its host: its
    /// connection hears nothing and ends at the idle timeout (5 s), while
    /// the zipper still hears from it and would keep the connection 5 s
    /// longer. The function reconnects at once, from a new port.
    @Test("the earlier connection is closed at the reconnection, and what it had not acknowledged is held for the new one: every frame arrives")
    func reconnectBeforeTheZipperNotices() async throws {
        try await MeshHosts.with { hosts in
            try await scenario(hosts, cause: "idle timeout") { try await hosts.dropUDP(on: "a", toPort: $0) }
        }
    }

    /// The function's host gets another address on its link to the zipper's
    /// (a DHCP lease, a network switched): its socket's sends fail from then
    /// on, and its connection ends at the first, not at the idle timeout.
    @Test("a client whose address changes reconnects at once from the new one, and every frame arrives")
    func addressChanged() async throws {
        try await MeshHosts.with { hosts in
            try await scenario(hosts, cause: "local address \(MeshHosts.address("a", towards: "b")) gone") { _ in
                try await hosts.readdress("a", towards: "b", to: "10.213.12.11")
            }
        }
    }

    /// The zipper on b, a stream function on a, a source on c; `cut` (given
    /// the function's port) ends the function's connection for it, and its
    /// error names `cause`.
    private func scenario(_ hosts: MeshHosts, cause: String, cut: (Int) async throws -> Void) async throws {
        let zipper = try await hosts.startZipper(on: "b", listen: "0.0.0.0", ["--functions-file", "none"])
        let function = try hosts.run(on: "a", log: "upper", environment: ["YOMO_LOG_LEVEL": "debug"], [
            try executable("uppercase-sfn"), "--zipper", "\(MeshHosts.address("b", towards: "a")):9000", "--pipe",
        ])
        #expect(await function.wait(for: "connected to zipper"), "\(function.text)")
        let frames = 400
        let source = try hosts.run(on: "c", log: "source", [
            try executable("demo-source"), "--zipper", "\(MeshHosts.address("b", towards: "c")):9000", "--interval", "20", "--count", "\(frames)",
        ])
        func received() -> [String] {
            function.records("frame received").filter { $0["tag"] as? Int == 0x33 || $0["tag"] as? String == "51" }.compactMap { $0["tid"] as? String }
        }
        #expect(await function.wait { _ in received().count >= 20 }, "frames flow: \(function.text.suffix(2000))")
        let connected = zipper.records("client connected").first { $0["conn_name"] as? String == "upper" }
        let port = (connected?["remote"] as? String)?.split(separator: ":").last.flatMap { Int($0) }
        let functionPort = try #require(port, "the function's port: \(zipper.text.suffix(2000))")
        try await cut(functionPort)
        #expect(await function.wait(for: "reconnected to zipper", timeout: .seconds(20)), "\(function.text.suffix(2000))")
        let lost = function.records("connection to zipper lost, reconnecting").first?["error"] as? String
        #expect(lost?.contains(cause) == true, "\(function.text.suffix(2000))")
        await waitForExit(source.process)
        let all = await function.wait(timeout: .seconds(20)) { _ in Set(received()).count >= frames }
        #expect(all, "\(Set(received()).count) of \(frames) frames: \(zipper.text.suffix(3000))")
        #expect(!zipper.records("closing the connection this client reconnected from").isEmpty, "\(zipper.text.suffix(3000))")
        #expect(zipper.records("frames written to this client were not acknowledged before its connection ended: lost with it").isEmpty,
                "\(zipper.text.suffix(3000))")
    }
}

@Suite("A zipper on a host with several addresses (network namespaces)", .serialized, .needsNetworkNamespaces)
struct SeveralAddressesTests {
    @Test("clients that dial its second address (IPv4, IPv6) are answered from it", arguments: [false, true])
    func secondAddress(ipv6: Bool) async throws {
        try await MeshHosts.with { try await scenario($0, ipv6: ipv6) }
    }

    /// The zipper on b, listening on every address, which b's link to a has
    /// two of; a stream function and `yomo bench` on a dial the second. The
    /// kernel would answer from the first (its route's choice), which their
    /// connected sockets drop: every handshake timed out (IPv4; IPv6's source
    /// address selection happened to pick the second here, and the case
    /// checks that answers given an IPv6 source go out).
    private func scenario(_ hosts: MeshHosts, ipv6: Bool) async throws {
        let second = ipv6 ? "fd00:213:12::22" : "10.213.12.22"
        try await hosts.addAddress("b", towards: "a", second, prefix: ipv6 ? 64 : 24)
        let zipper = try await hosts.startZipper(on: "b", listen: ipv6 ? "::" : "0.0.0.0", ["--functions-file", "none"])
        let address = ipv6 ? "[\(second)]:9000" : "\(second):9000"
        let function = try hosts.run(on: "a", log: "upper", [try executable("uppercase-sfn"), "--zipper", address])
        #expect(await function.wait(for: "connected to zipper"), "\(function.text.suffix(2000))")
        let frames = 200
        let bench = try hosts.run(on: "a", log: "bench", [
            try yomoExecutable().path, "bench", "--zipper", address, "--frames", "\(frames)", "--size", "1300", "--rate", "200",
            "--inflight", "16", "--timeout", "20",
        ])
        await waitForExit(bench.process)
        #expect(bench.benchLostNone(of: frames), "\(bench.text.suffix(3000))\n\(zipper.text.suffix(3000))")
    }
}

@Suite("A zipper whose DNS does not answer (network namespaces)", .serialized, .needsNetworkNamespaces)
struct SilentResolverTests {
    @Test("mesh entries given as names that a silent DNS server holds for seconds do not hold up the zipper's clients")
    func meshNamesDoNotStallTheZipper() async throws {
        try await MeshHosts.with(scenario)
    }

    /// Four mesh entries are names, and every lookup takes 10 s: more lookups
    /// than a machine of up to four cores has threads in Swift's cooperative
    /// pool, where they used to block the zipper's accepting and handshakes.
    private func scenario(_ hosts: MeshHosts) async throws {
        try hosts.silentResolver(on: "a", seconds: 10)
        let mesh = ["w", "x", "y", "z"].flatMap { ["--mesh", "zipper-\($0)=zipper-\($0).example:9000"] }
        let zipper = try await hosts.startZipper(on: "a", listen: "127.0.0.1", mesh)
        let function = try hosts.run(on: "a", log: "upper", [try executable("uppercase-sfn"), "--zipper", "127.0.0.1:9000"])
        let connected = await zipper.wait(for: "client connected", timeout: .seconds(30))
        #expect(connected, "\(zipper.text.suffix(3000))")
        // The resolver is silent indeed: a lookup gives up after its 10 s.
        let gaveUp = await zipper.wait(timeout: .seconds(30)) { records in
            records.contains { $0["msg"] as? String == "cannot connect to zipper, retrying" && ($0["error"] as? String)?.contains("address resolution failed") == true }
        }
        #expect(gaveUp, "\(zipper.text.suffix(3000))")
        // Events in the zipper's log, in order: the function was in before any lookup had given up.
        let messages = zipper.records.compactMap { $0["msg"] as? String }
        let admitted = messages.firstIndex(of: "client connected")
        let resolutionFailed = messages.firstIndex(of: "cannot connect to zipper, retrying")
        #expect(admitted != nil && resolutionFailed != nil && admitted! < resolutionFailed!, "\(messages)")
        #expect(function.process.isRunning && zipper.process.isRunning)
    }
}

@Suite("Clients of one network with many addresses (network namespaces)", .serialized, .needsNetworkNamespaces)
struct AddressGroupHostsTests {
    @Test("an IPv6 host counts by its /64, whatever address it sends from; IPv4 clients of a dual-stack zipper count one by one")
    func prefixes() async throws {
        try await MeshHosts.with(scenario)
    }

    /// The zipper on a listens on `::` (IPv4 arrives IPv4-mapped) with two
    /// connections per address; a on its link to b also has a second IPv6
    /// network. From b, aioquic connections that complete their QUIC
    /// handshake and then wait, each from an address of its own: three from
    /// b's /64 (one too many: counted address by address, as before, all
    /// three were let in), one from the other network, three over IPv4 (each
    /// address its own, not one "::/64" of mapped addresses).
    private func scenario(_ hosts: MeshHosts) async throws {
        let config = hosts.directory.appendingPathComponent("zipper.yaml")
        try "name: grouped\nlimits:\n  max_connections_per_address: 2\n".write(to: config, atomically: true, encoding: .utf8)
        try await hosts.addAddress("a", towards: "b", "fd00:214::1", prefix: 64)
        let sameNetwork = ["fd00:213:12::20", "fd00:213:12::21", "fd00:213:12::22"]
        let ipv4 = ["10.213.12.20", "10.213.12.21", "10.213.12.22"]
        for address in sameNetwork { try await hosts.addAddress("b", towards: "a", address, prefix: 64) }
        try await hosts.addAddress("b", towards: "a", "fd00:214::20", prefix: 64)
        for address in ipv4 { try await hosts.addAddress("b", towards: "a", address, prefix: 24) }
        let zipper = try await hosts.startZipper(on: "a", listen: "::", ["--config", config.path, "--functions-file", "none"])

        func peers(to host: String, from locals: [String]) throws -> LogFile {
            try hosts.run(on: "b", log: "peers-\(locals[0])", environment: ["LOCAL_ADDRESSES": locals.joined(separator: ",")], [
                "python3", hostilePeerScript.path, "mute", host, "9000", "\(locals.count)", "3",
            ])
        }
        let v6 = try peers(to: "fd00:213:12::1", from: sameNetwork)
        let other = try peers(to: "fd00:214::1", from: ["fd00:214::20"])
        let v4 = try peers(to: "10.213.12.1", from: ipv4)
        for peer in [v6, other, v4] { await waitForExit(peer.process) }
        func lines(_ peer: LogFile) -> [String] { peer.text.split(separator: "\n").map(String.init) }

        let refusedV6 = lines(v6).filter { $0.hasPrefix("CLOSED ") }
        #expect(lines(v6).count == 3 && refusedV6.count == 1, "\(lines(v6))")
        #expect(refusedV6.first?.contains("reason=too many connections from fd00:213:12::/64 (limit 2)") == true, "\(refusedV6)")
        #expect(lines(other).count == 1 && lines(other).allSatisfy { $0.hasPrefix("OPEN ") }, "\(lines(other))")
        #expect(lines(v4).count == 3 && lines(v4).allSatisfy { $0.hasPrefix("OPEN ") }, "\(lines(v4))")
        let warnings = zipper.records("connection refused: its address has its share of connections")
        #expect(warnings.count == 1 && warnings.first?["remote"] as? String == "fd00:213:12::/64", "\(zipper.text.suffix(3000))")
    }
}
