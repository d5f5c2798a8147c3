import Foundation
import Logging
import NIOCore
import Synchronization
import Testing
import YoMoMetrics
import YoMoQUIC
import YoMoTracing
import YoMoLogging
import YoMoWire

@testable import YoMo
import YoMoZipperYAML

@Suite("Mesh configuration and forwarding rule")
struct MeshLogicTests {
    @Test("Go's mesh: section reads; the zipper's own entry is skipped; credentials kept")
    func yaml() throws {
        let yaml = """
            name: zipper-a
            host: 0.0.0.0
            port: 9000
            mesh:
              zipper-a: {host: 10.0.0.1, port: 9000, credential: "token:secret"}
              zipper-b: {host: 10.0.0.2, port: 9000, credential: "token:secret"}
              zipper-c:
                host: 10.0.0.3
                port: 9100
              zipper-d: {host: "fd00::4", credential: ""}
            mesh_queue: {max_frames: 10, max_bytes: 2048}
            """
        let config = try ZipperConfiguration(yaml: yaml)
        #expect(config.mesh.map(\.name) == ["zipper-a", "zipper-b", "zipper-c", "zipper-d"])
        #expect(config.downstreams.map(\.name) == ["zipper-b", "zipper-c", "zipper-d"])
        let b = try #require(config.downstreams.first)
        #expect(b == .init(name: "zipper-b", host: "10.0.0.2", port: 9000, credential: "token:secret"))
        #expect(Credential(try #require(b.credential)) == Credential(name: "token", payload: "secret"))
        #expect(config.downstreams[1].credential == nil && config.downstreams[1].port == 9100)
        #expect(config.downstreams[2].address == "[fd00::4]:9000", "port 9000 when left out; empty credential: none")
        #expect(config.meshQueue == .init(maximumFrames: 10, maximumBytes: 2048))
        #expect(ZipperConfiguration.MeshQueue() == .init(maximumFrames: 16384, maximumBytes: 16 << 20), "the defaults")

        // The same file serves every zipper of the mesh.
        let asB = try ZipperConfiguration(yaml: yaml.replacingOccurrences(of: "name: zipper-a", with: "name: zipper-b"))
        #expect(asB.downstreams.map(\.name) == ["zipper-a", "zipper-c", "zipper-d"])
        #expect(try ZipperConfiguration(yaml: "mesh:").mesh.isEmpty)
        #expect(try ZipperConfiguration(yaml: "name: x").mesh.isEmpty)
    }

    @Test("--mesh NAME=HOST:PORT entries")
    func flag() throws {
        #expect(try ZipperConfiguration.MeshPeer("zipper-b=10.0.0.2:9100") == .init(name: "zipper-b", host: "10.0.0.2", port: 9100))
        #expect(try ZipperConfiguration.MeshPeer("b=host.example", credential: "token:x")
                == .init(name: "b", host: "host.example", port: 9000, credential: "token:x"))
        #expect(try ZipperConfiguration.MeshPeer("v6=[fd00::2]:9001").address == "[fd00::2]:9001")
        for bad in ["10.0.0.2:9000", "=h:1", "b=h:x", "b=h:70000", "b="] {
            #expect(throws: YoMoError.self, "\(bad)") { try ZipperConfiguration.MeshPeer(bad) }
        }
    }

    @Test("bad mesh entries say what is wrong", arguments: [
        ("mesh: [a, b]", "mesh must be a mapping"),
        ("mesh: {b: 1}", "mesh.b must be a mapping"),
        ("mesh: {b: {port: 9000}}", "mesh.b.host"),
        ("mesh: {b: {host: h, port: 0}}", "mesh.b.port"),
        ("mesh_queue: {max_frames: 0}", "mesh_queue.max_frames"),
    ])
    func invalid(yaml: String, expected: String) {
        let error = #expect(throws: YoMoError.self) { try ZipperConfiguration(yaml: yaml) }
        #expect(error?.message.contains(expected) == true, "got: \(error?.message ?? "nothing")")
    }

    @Test("frames of sources and stream functions go to the mesh; an upstream zipper's stay local")
    func forwardingRule() {
        #expect(MeshForwarding.forwards(from: .source))
        #expect(MeshForwarding.forwards(from: .streamFunction))
        #expect(!MeshForwarding.forwards(from: .upstreamZipper))
        // Upstream zippers observe nothing, so a zipper never routes back to one.
        var routes = RouteTable()
        routes.add(RouteMember(connectionID: 1, name: "zipper-b", clientID: "b", clientType: .upstreamZipper,
                               observedTags: [0x33], wantedTarget: ""))
        #expect(routes.destinations(tag: 0x33, target: nil).isEmpty)
    }

    @Test("a mesh kept frames file is named after its downstream, bytes a file name cannot hold escaped, and reads back as written")
    func keptFile() {
        #expect(MeshKeptFile.path(besides: "/var/lib/yomo/functions.yaml", downstream: "zipper-b.eu_1") == "/var/lib/yomo/functions.yaml.mesh-zipper-b.eu_1")
        #expect(MeshKeptFile.fileName("a/b c%é") == "a%2Fb%20c%25%C3%A9")
        let frames = (0..<3).map { DataFrame(tag: 0x40 + UInt32($0), metadata: ByteBuffer(bytes: [0x80]), payload: ByteBuffer(string: "frame-\($0)")) }
        let decoded = MeshKeptFile.decode(MeshKeptFile.encode(frames, closedAt: 1_764_876_543_210))
        #expect(decoded?.closedAt == 1_764_876_543_210)
        #expect(decoded?.frames.map { String(buffer: $0.payload) } == ["frame-0", "frame-1", "frame-2"])
        #expect(decoded?.frames.map(\.tag) == [0x40, 0x41, 0x42])
        // The held frames file's header is not this one's: neither is taken for the other.
        #expect(HeldFramesFile.decode(MeshKeptFile.encode(frames, closedAt: 1)) == nil)
        #expect(decoded?.spooled == false && decoded?.settled == 0)
        // A file the spool began: its header's settled count, fixed in width, written over in place.
        #expect(String(decoding: MeshKeptFile.spoolHeader(startedAt: 1_764_876_543_210), as: UTF8.self)
                == "yomo-zipper-mesh 1 1764876543210 spooled 0000000000\n")
        var spooled = MeshKeptFile.encode(frames, closedAt: 1_764_876_543_210, note: MeshKeptFile.spoolNote(settled: 0))
        let count = spooled.firstIndex(of: UInt8(ascii: "\n"))! - MeshKeptFile.settledDigits
        spooled.replaceSubrange(count..<count + MeshKeptFile.settledDigits, with: Array(MeshKeptFile.settledField(2).utf8))
        let counted = MeshKeptFile.decode(spooled)
        #expect(counted?.spooled == true && counted?.settled == 2 && counted?.closedAt == 1_764_876_543_210)
        #expect(counted?.frames.map { String(buffer: $0.payload) } == ["frame-0", "frame-1", "frame-2"])
        #expect(MeshKeptFile.decode(Array("yomo-zipper-mesh 1 5 spooled 12\n".utf8)) == nil, "a count not of its width")
        #expect(MeshKeptFile.decode(Array("yomo-zipper-mesh 1 5 kept\n".utf8)) == nil, "a note not known")
    }

    @Test("the per-downstream queue is bounded in frames and bytes; drops counted, logged once per burst")
    func backlog() {
        var backlog = MeshBacklog(limits: .init(maximumFrames: 4, maximumBytes: 1 << 20))
        let frame = DataFrame(tag: 0x33, payload: ByteBuffer(bytes: Array(repeating: 1, count: 100)))
        for _ in 0..<4 { #expect(backlog.offer(frame, at: .now) == .queued) }
        #expect(backlog.offer(frame, at: .now) == .dropped(firstOfBurst: true))
        #expect(backlog.offer(frame, at: .now) == .dropped(firstOfBurst: false))
        // The link takes one: still 3 of 4 queued, so the burst goes on, unlogged.
        #expect(backlog.take() != nil)
        #expect(backlog.delivered() == nil)
        #expect(backlog.offer(frame, at: .now) == .queued)
        #expect(backlog.drop(count: 1) == .dropped(firstOfBurst: false), "the link refused one: same burst")
        // Down to half: the burst ends with its count.
        _ = backlog.take(); _ = backlog.take()
        #expect(backlog.delivered() == 3)
        #expect(backlog.delivered() == nil)
        #expect(backlog.dropped == 3)
        _ = backlog.take(); _ = backlog.take()
        for _ in 0..<4 { _ = backlog.offer(frame, at: .now) }
        #expect(backlog.offer(frame, at: .now) == .dropped(firstOfBurst: true), "a new burst is logged again")

        var bytes = MeshBacklog(limits: .init(maximumFrames: 100, maximumBytes: frame.encodedLength * 2))
        #expect(bytes.offer(frame, at: .now) == .queued)
        #expect(bytes.offer(frame, at: .now) == .queued)
        #expect(bytes.offer(frame, at: .now) == .dropped(firstOfBurst: true))
        _ = bytes.take()
        _ = bytes.take()
        #expect(bytes.take() == nil && bytes.bytes == 0)
    }
}

/// Zippers of a mesh on loopback, in this process.
@Suite("Mesh on loopback", .serialized)
struct MeshLoopbackTests {
    static func zipper(_ name: String, port: Int, mesh: [ZipperConfiguration.MeshPeer], queue: ZipperConfiguration.MeshQueue = .init(),
                       tracerProvider: TracerProvider? = nil, meterProvider: MeterProvider? = nil, logger: Logger? = nil) -> Zipper {
        Zipper(
            configuration: ZipperConfiguration(name: name, host: "127.0.0.1", port: port, authentication: .token("mesh"),
                                               mesh: mesh, meshQueue: queue),
            options: .init(logger: logger ?? Logger(label: "test.\(name)"), tracerProvider: tracerProvider, meterProvider: meterProvider))
    }

    /// Zipper "a" on `port` with a mesh link to "b" on `downstreamPort`.
    static func upstreamConfiguration(
        port: Int, downstreamPort: Int, functionsFile: String? = nil, unroutedHold: ZipperConfiguration.UnroutedHold = .init()
    ) -> ZipperConfiguration {
        ZipperConfiguration(
            name: "a", host: "127.0.0.1", port: port, authentication: .token("mesh"), functionsFile: functionsFile,
            mesh: [.init(name: "b", host: "127.0.0.1", port: downstreamPort, credential: "token:mesh")], unroutedHold: unroutedHold)
    }

    /// Options of zipper "a": the link's patience and the close's deadline
    /// shortened where given; spans in `tracerProvider`.
    static func upstreamOptions(
        patience: Duration? = nil, shutdownTimeout: Duration? = nil, tracerProvider: TracerProvider? = nil, logger: Logger = Logger(label: "test.a")
    ) -> Zipper.Options {
        var options = Zipper.Options(logger: logger, tracerProvider: tracerProvider)
        if let patience { options.meshReceiptPatience = patience }
        if let shutdownTimeout { options.shutdownTimeout = shutdownTimeout }
        return options
    }

    /// `yomo serve` as zipper "a" on `port` (no hold of its own: what it
    /// forwards is only in its link to "b" on `downstreamPort`), and a
    /// source connected to it that redials (and, with receipts, sends again
    /// what a crash of "a" left unsettled).
    static func upstreamProcessWithSource(port: Int, downstreamPort: Int, receipts: Bool = true) async throws -> (ZipperProcess, Source) {
        let a = try await ZipperProcess(port: port, arguments: [
            "--name", "a", "--token", "mesh", "--unrouted-hold", "0", "--mesh", "b=127.0.0.1:\(downstreamPort)", "--mesh-credential", "token:mesh",
        ])
        let source = Source(name: "source", zipper: a.address, options: .init(credential: "token:mesh", retryConnect: true, deliveryReceipts: receipts))
        try await source.connect()
        return (a, source)
    }

    /// Zipper "a" on `port`, started, in this process (no hold of its own),
    /// its link to "b" on `downstreamPort` connected, and a source connected to it.
    static func upstreamWithSource(
        port: Int, downstreamPort: Int, functionsFile: String? = nil, options: Zipper.Options = MeshLoopbackTests.upstreamOptions()
    ) async throws -> (Zipper, Source) {
        let configuration = Self.upstreamConfiguration(port: port, downstreamPort: downstreamPort, functionsFile: functionsFile, unroutedHold: .off)
        let a = Zipper(configuration: configuration, options: options)
        try await a.start()
        #expect(await eventually { a.meshLinkHealth.first?.connected == true })
        let source = Source(name: "source", zipper: "127.0.0.1:\(port)", options: .init(credential: "token:mesh"))
        try await source.connect()
        return (a, source)
    }

    /// A stream function "far" at `zipper` whose one handler at a time
    /// handles a frame of `tag` only while fewer than `allow`ed were.
    final class MeteredFunction: Sendable {
        let function: StreamFunction
        let handled = Inbox<String>()
        private let allowed = Allowance()

        /// Held apart from the function: its handler holds it, not the function.
        private final class Allowance: Sendable {
            let count = Atomic<Int>(0)
        }

        init(zipper: String, tag: UInt32, retryConnect: Bool = false) {
            function = StreamFunction(name: "far", zipper: zipper, options: .init(
                observedTags: [tag], credential: "token:mesh", retryConnect: retryConnect, handlerConcurrency: 1))
            function.setHandler { [handled, allowed] ctx in
                while handled.items.count >= allowed.count.load(ordering: .relaxed) { try? await Task.sleep(for: .milliseconds(5)) }
                handled.append(String(decoding: ctx.data, as: UTF8.self))
            }
        }

        func allow(_ count: Int) { allowed.count.store(count, ordering: .relaxed) }
    }

    /// A tracer provider whose spans end up in the exporter returned.
    static func recordingTracer() -> (TracerProvider, InMemorySpanExporter) {
        let exporter = InMemorySpanExporter()
        return (TracerProvider(configuration: .init(environment: [:]), processors: [SimpleSpanProcessor(exporter: exporter)]), exporter)
    }

    /// A mesh kept frames file at `path`, as a close would have written it: one frame of tag 0x37.
    static func writeKeptFile(_ path: String, payload: String) -> Bool {
        let frame = DataFrame(tag: 0x37, metadata: ByteBuffer(bytes: [0x80]), payload: ByteBuffer(string: payload))
        return FileManager.default.createFile(atPath: path, contents: Data(MeshKeptFile.encode([frame], closedAt: HeldFramesFile.now())))
    }

    /// Zipper "a" on `port`, started, with a mesh link to "b" on
    /// `downstreamPort`, its spans kept in the exporter returned.
    static func tracedUpstream(
        port: Int, downstreamPort: Int, queue: ZipperConfiguration.MeshQueue = .init(), meterProvider: MeterProvider? = nil, logger: Logger? = nil
    ) async throws -> (Zipper, InMemorySpanExporter) {
        let (provider, exporter) = Self.recordingTracer()
        let zipper = Self.zipper(
            "a", port: port, mesh: [.init(name: "b", host: "127.0.0.1", port: downstreamPort, credential: "token:mesh")], queue: queue,
            tracerProvider: provider, meterProvider: meterProvider, logger: logger)
        try await zipper.start()
        return (zipper, exporter)
    }

    /// A stream function "far" at the zipper on `port`, collecting the span id
    /// each frame of `tag` names as its parent (the hop before it).
    static func parentRecordingFunction(port: Int, tag: UInt32) async throws -> (StreamFunction, Inbox<String>) {
        let parents = Inbox<String>()
        let far = StreamFunction(name: "far", zipper: "127.0.0.1:\(port)", options: .init(observedTags: [tag], credential: "token:mesh"))
        far.setHandler { ctx in parents.append(ctx.metadata(Metadata.ReservedKey.spanID) ?? "") }
        try await far.connect()
        return (far, parents)
    }

    /// A stream function "far" at the zipper on `port`, collecting the text of each frame of `tag`.
    static func farFunction(port: Int, tag: UInt32, retryConnect: Bool = false, handlerConcurrency: Int? = nil) async throws -> (StreamFunction, Inbox<String>) {
        let received = Inbox<String>()
        let function = StreamFunction(name: "far", zipper: "127.0.0.1:\(port)", options: .init(
            observedTags: [tag], credential: "token:mesh", retryConnect: retryConnect, handlerConcurrency: handlerConcurrency))
        function.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await function.connect()
        return (function, received)
    }

    @Test("each link's state on /metrics: not connected with frames waiting while its downstream is down; connected, drained and the frames unsettled while the downstream holds them; settled once a function there has them")
    func linkStateOnMetrics() async throws {
        let meters = MeterProvider(configuration: .init(serviceName: "mesh-a", environment: [:]))
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: meters)
        defer { Task { await endpoint.close() } }
        let portA = try await freePort(), portB = try await freePort()
        let a = Self.zipper("a", port: portA, mesh: [.init(name: "b", host: "127.0.0.1", port: portB, credential: "token:mesh")],
                            queue: .init(maximumFrames: 100, maximumBytes: 1 << 20), meterProvider: meters)
        try await a.start()
        /// The value of `name`'s series for downstream b on a's /metrics.
        func gauge(_ name: String) async -> Double? {
            let page = await httpGet("http://127.0.0.1:\(endpoint.port)/metrics")?.body ?? ""
            return seriesValue(page, name, labels: ["yomo_mesh_downstream=\"b\""])
        }
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        for index in 0..<10 { try await source.write(tag: 0x33, data: Array("frame \(index)".utf8)) }
        // b is not there: the link dials, and the ten frames wait for it.
        #expect(await eventually { a.statistics.meshDroppedFrames == 0 && a.meshLinkHealth.first?.queuedFrames == 10 })
        #expect(await gauge("yomo_zipper_mesh_connected") == 0)
        #expect(await gauge("yomo_zipper_mesh_queued_messages") == 10)
        #expect(await gauge("yomo_zipper_mesh_dropped_messages_total") == 0, "within the queue's bounds")
        #expect((await gauge("yomo_zipper_mesh_queued_size_bytes") ?? 0) > 10 * 7)

        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        // b holds them for a function (its first minute): the link keeps them until b's receipt says one has them.
        #expect(await eventually { a.meshLinkHealth.first.map { $0.sentFrames == 10 && $0.unsettledFrames == 10 } == true })
        #expect(await gauge("yomo_zipper_mesh_unsettled_messages") == 10)
        #expect(await gauge("yomo_zipper_mesh_sent_messages_total") == 10)
        let (far, remote) = try await Self.farFunction(port: portB, tag: 0x33)
        #expect(await eventually { a.meshLinkHealth.first?.connected == true && a.meshLinkHealth.first?.queuedFrames == 0 })
        #expect(await gauge("yomo_zipper_mesh_connected") == 1)
        #expect(await gauge("yomo_zipper_mesh_queued_messages") == 0)
        // What waited reached b (held there for its function, in its first minute), then what came after.
        try await source.write(tag: 0x33, data: Array("after".utf8))
        #expect(await remote.wait(for: 11))
        #expect(await gauge("yomo_zipper_mesh_sent_messages_total") == 11)
        // b's function has them all: b's receipts settle them.
        #expect(await eventually { a.meshLinkHealth.first?.unsettledFrames == 0 })
        #expect(await gauge("yomo_zipper_mesh_unsettled_messages") == 0)
        #expect(Set(remote.items) == Set((0..<10).map { "frame \($0)" } + ["after"]), "async handlers: any order")
        await source.close()
        await far.close()
        await a.close()
        await b.close()
    }

    @Test("a downstream restarted gracefully: the link redials it and what it forwarded meanwhile arrives, every frame")
    func downstreamGracefulRestart() async throws {
        let portA = try await freePort(), portB = try await freePort()
        let a = Self.zipper("a", port: portA, mesh: [.init(name: "b", host: "127.0.0.1", port: portB, credential: "token:mesh")])
        try await a.start()
        var b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let (far, remote) = try await Self.farFunction(port: portB, tag: 0x33, retryConnect: true)
        #expect(await eventually { a.meshLinkHealth.first?.connected == true })
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        var written: [String] = []
        func write(_ count: Int) async throws {
            for _ in 0..<count {
                let text = "frame \(written.count)"
                try await source.write(tag: 0x33, data: Array(text.utf8))
                written.append(text)
            }
        }
        try await write(50)
        #expect(await remote.wait(for: 50))
        await b.close()
        // Forwarded while b is away: held by the link's client, sent once it is back.
        try await write(50)
        b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        try await write(50)
        #expect(await eventually { Set(remote.items).isSuperset(of: written) }, "\(Set(written).subtracting(remote.items).count) of \(written.count) missing")
        #expect(a.statistics.meshDroppedFrames == 0)
        await source.close()
        await far.close()
        await a.close()
        await b.close()
    }

    @Test("a downstream killed while it held frames a link had sent it: with receipts the link sends them again and a function there gets every one; without, they went with it",
          arguments: [true, false])
    func downstreamKilled(receipts: Bool) async throws {
        let portA = try await freePort(), portB = try await freePort()
        let b = try await ZipperProcess(port: portB, arguments: ["--name", "b", "--token", "mesh"])
        // No hold at a: what it forwards is only in its link.
        var configuration = Self.upstreamConfiguration(port: portA, downstreamPort: portB)
        configuration.deliveryReceipts = receipts
        configuration.unroutedHold = .off
        let a = Zipper(configuration: configuration, options: .init(logger: Logger(label: "test.a")))
        try await a.start()
        #expect(await eventually { a.meshLinkHealth.first?.connected == true })
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        // No function at b yet: b holds what the link sends (in its first
        // minute, for any function that comes), in memory only.
        let texts = (0..<20).map { "held-\($0)" }
        for text in texts { try await source.write(tag: 0x35, data: Array(text.utf8)) }
        // With receipts the link keeps them until b's functions have them; without, b's acknowledgement let them go.
        #expect(await eventually { a.meshLinkHealth.first.map { $0.sentFrames == 20 && $0.unsettledFrames == (receipts ? 20 : 0) } == true },
                "\(String(describing: a.meshLinkHealth.first))")
        // And a's source keeps them too: a's receipts wait for its link's.
        // (Without, it keeps them until a's QUIC stack acknowledged them,
        // which may come a moment after a forwarded them: a parallel run read 20.)
        #expect(await eventually { source.client.keptFrames == (receipts ? 20 : 0) }, "kept: \(source.client.keptFrames)")

        await b.kill()
        try await b.restart()
        let (far, remote) = try await Self.farFunction(port: portB, tag: 0x35, retryConnect: true, handlerConcurrency: 1)
        #expect(try await writeUntilReceived(source, tag: 0x35, "after", remote))
        if receipts {
            #expect(await eventually { texts.allSatisfy(remote.items.contains) }, "\(remote.items)")
            #expect(firstArrivals(remote.items.filter { $0.hasPrefix("held-") }) == texts, "in the order written")
            // Carried to the link's next connection, settled there.
            #expect(await eventually { source.client.keptFrames == 0 }, "kept: \(source.client.keptFrames)")
        } else {
            #expect(!texts.contains(where: remote.items.contains), "\(remote.items)")
        }
        #expect(a.statistics.meshDroppedFrames == 0)
        await source.close()
        await far.close()
        await a.close()
        await b.kill()
    }

    @Test("a zipper in its first minute forwards a frame to its mesh and holds it for any local function that comes: its sender's receipt waits for the mesh's downstream, not for that hold")
    func forwardedFramesSettleThroughTheMesh() async throws {
        let portA = try await freePort(), portB = try await freePort()
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        var configuration = Self.upstreamConfiguration(port: portA, downstreamPort: portB)
        // A hold far longer than the wait below: a receipt that waited for it would not come.
        configuration.unroutedHold = .init(duration: .seconds(120))
        let a = Zipper(configuration: configuration, options: .init(logger: Logger(label: "test.a")))
        try await a.start()
        #expect(await eventually { a.meshLinkHealth.first?.connected == true })
        let (far, remote) = try await Self.farFunction(port: portB, tag: 0x35)
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        let texts = (0..<20).map { "forwarded-\($0)" }
        for text in texts { try await source.write(tag: 0x35, data: Array(text.utf8)) }
        #expect(await remote.wait(for: 20))
        // Held at a all the same, for a function of its own that may come.
        #expect(a.statistics.heldFrames == 20, "\(a.statistics)")
        // Before, the source kept them for a's hold (120 s here, 5 s by default).
        #expect(await eventually(within: .seconds(10)) { source.client.keptFrames == 0 }, "kept: \(source.client.keptFrames)")
        try await source.flush(timeout: .seconds(10))
        await source.close()
        await far.close()
        await a.close()
        await b.close()
    }

    @Test("a zipper killed while its link held frames for a downstream that is down: with receipts its source keeps them and sends them again, and a function at the downstream gets every one; without, they went with the zipper",
          arguments: [true, false])
    func upstreamKilledWithLinkBacklog(receipts: Bool) async throws {
        let portA = try await freePort(), portB = try await freePort()
        let (a, source) = try await Self.upstreamProcessWithSource(port: portA, downstreamPort: portB, receipts: receipts)
        // b is not up: the link holds what a forwards, in a's memory only.
        let texts = (0..<20).map { "linked-\($0)" }
        for text in texts { try await source.write(tag: 0x35, data: Array(text.utf8)) }
        #expect(await eventually { source.client.unacknowledgedBytesForTesting == 0 }, "a's QUIC stack has them all")
        #expect(await eventually { source.client.keptFrames == (receipts ? 20 : 0) }, "kept: \(source.client.keptFrames)")

        await a.kill()
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let (far, remote) = try await Self.farFunction(port: portB, tag: 0x35, handlerConcurrency: 1)
        try await a.restart()
        #expect(try await writeUntilReceived(source, tag: 0x35, "after", remote))
        if receipts {
            #expect(await eventually { texts.allSatisfy(remote.items.contains) }, "\(remote.items)")
            #expect(firstArrivals(remote.items.filter { $0.hasPrefix("linked-") }) == texts, "in the order written")
            // Settled once b's function has them, through a's link and b's receipts.
            #expect(await eventually { source.client.keptFrames == 0 }, "kept: \(source.client.keptFrames)")
        } else {
            #expect(!texts.contains(where: remote.items.contains), "\(remote.items)")
        }
        await source.close()
        await far.close()
        await b.close()
        await a.kill()
    }

    @Test("a downstream that stays down holds back its senders' receipts only for the link's patience: then the source forgets what the local function has, while the link keeps it for the downstream and delivers it once it is up")
    func downstreamDownForLong() async throws {
        let portA = try await freePort(), portB = try await freePort()
        let a = Zipper(
            configuration: Self.upstreamConfiguration(port: portA, downstreamPort: portB, unroutedHold: .off),
            options: Self.upstreamOptions(patience: .milliseconds(300)))
        try await a.start()
        let local = Inbox<String>()
        let near = StreamFunction(name: "near", zipper: "127.0.0.1:\(portA)", options: .init(observedTags: [0x35], credential: "token:mesh"))
        near.setHandler { ctx in local.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await near.connect()
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        let texts = (0..<20).map { "waiting-\($0)" }
        for text in texts { try await source.write(tag: 0x35, data: Array(text.utf8)) }
        #expect(await local.wait(for: 20))
        // b is down: the link holds them, and the source's receipts wait for it, for a while.
        #expect(source.client.keptFrames == 20, "kept: \(source.client.keptFrames)")
        #expect(await eventually { source.client.keptFrames == 0 }, "kept: \(source.client.keptFrames)")
        #expect(a.meshLinkHealth.first?.queuedFrames == 20, "the link still holds them for b")

        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let (far, remote) = try await Self.farFunction(port: portB, tag: 0x35)
        #expect(await eventually { Set(remote.items).isSuperset(of: texts) }, "\(remote.items)")
        await source.close()
        await near.close()
        await far.close()
        await a.close()
        await b.close()
    }

    @Test("a zipper stopped while its downstream stays down, its sources let go: with a functions file the link's frames are kept, its next start delivers every one once the downstream is up and removes the file once they are settled; without, they are dropped and said",
          arguments: [true, false])
    func closeKeepsWhatTheLinkHeld(functionsFile: Bool) async throws {
        let directory = try makeTemporaryDirectory("yomo-test-mesh-kept-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let portA = try await freePort(), portB = try await freePort()
        let configuration = Self.upstreamConfiguration(
            port: portA, downstreamPort: portB, functionsFile: functionsFile ? directory + "/functions.yaml" : nil, unroutedHold: .off)
        let options = Self.upstreamOptions(patience: .milliseconds(300), shutdownTimeout: .seconds(1))
        let a = Zipper(configuration: configuration, options: options)
        try await a.start()
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        let texts = (0..<20).map { "kept-\($0)" }
        for text in texts { try await source.write(tag: 0x37, data: Array(text.utf8)) }
        // Past the link's patience the source forgets them: only the link has them now.
        #expect(await eventually { source.client.keptFrames == 0 }, "kept: \(source.client.keptFrames)")
        #expect(a.meshLinkHealth.first?.queuedFrames == 20)
        await source.close()
        await a.close()
        let file = MeshKeptFile.path(besides: directory + "/functions.yaml", downstream: "b")
        #expect(FileManager.default.fileExists(atPath: file) == functionsFile)
        #expect(a.statistics.meshDroppedFrames == 0, "\(a.statistics)")

        // What a run kept for a downstream since taken out of the mesh is dropped, not left behind.
        let gone = MeshKeptFile.path(besides: directory + "/functions.yaml", downstream: "gone")
        if functionsFile {
            #expect(Self.writeKeptFile(gone, payload: "for-gone"))
        }
        let restarted = Zipper(configuration: configuration, options: options)
        try await restarted.start()
        // Queued: restored frames wait for the link to connect (the one taken from the queue counts as queued).
        #expect(await eventually { restarted.meshLinkHealth.first?.queuedFrames == (functionsFile ? 20 : 0) })
        #expect(!FileManager.default.fileExists(atPath: gone))
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let (far, remote) = try await Self.farFunction(port: portB, tag: 0x37)
        if functionsFile {
            #expect(await eventually { Set(remote.items).isSuperset(of: texts) }, "\(remote.items)")
            #expect(await eventually { !FileManager.default.fileExists(atPath: file) }, "removed once b settled them")
            #expect(remote.count == texts.count, "each once: \(remote.items)")
        } else {
            // Nothing comes: the link starts empty.
            #expect(await eventually { restarted.meshLinkHealth.first?.connected == true })
            #expect(remote.count == 0)
        }
        await far.close()
        await restarted.close()
        await b.close()
        #expect(!FileManager.default.fileExists(atPath: file), "the close had nothing to keep")
    }

    @Test("a zipper whose start failed (its port taken) and that is closed leaves the previous run's mesh kept frames file for the next start")
    func failedStartKeepsTheFile() async throws {
        let directory = try makeTemporaryDirectory("yomo-test-mesh-kept-failed-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let occupant = Self.zipper("occupant", port: 0, mesh: [])
        try await occupant.start()
        let port = try #require(occupant.port)
        let configuration = Self.upstreamConfiguration(port: port, downstreamPort: try await freePort(), functionsFile: directory + "/functions.yaml")
        let file = MeshKeptFile.path(besides: directory + "/functions.yaml", downstream: "b")
        #expect(Self.writeKeptFile(file, payload: "kept"))
        let a = Zipper(configuration: configuration, options: .init(logger: Logger(label: "test.a")))
        await #expect(throws: (any Error).self) { try await a.start() }
        await a.close()
        #expect(FileManager.default.fileExists(atPath: file))
        await occupant.close()
    }

    @Test("a downstream that is up and has the frames, its function behind: the link's patience does not let its senders forget them, nor after the link's connection was cut for a moment and the next one carried them; they do once the function takes them",
          arguments: [false, true])
    func patienceSparesWhatTheDownstreamHas(cut: Bool) async throws {
        let portA = try await freePort(), portB = try await freePort()
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let gate = Atomic<Bool>(false)
        let handled = Inbox<String>()
        let far = StreamFunction(name: "far", zipper: "127.0.0.1:\(portB)", options: .init(
            observedTags: [0x38], credential: "token:mesh", handlerConcurrency: 1))
        far.setHandler { ctx in
            while !gate.load(ordering: .relaxed) { try? await Task.sleep(for: .milliseconds(5)) }
            handled.append(String(decoding: ctx.data, as: UTF8.self))
        }
        try await far.connect()
        let patience = Duration.milliseconds(300)
        let (a, source) = try await Self.upstreamWithSource(port: portA, downstreamPort: portB, options: Self.upstreamOptions(patience: patience))
        let texts = (0..<10).map { "behind-\($0)" }
        for text in texts { try await source.write(tag: 0x38, data: Array(text.utf8)) }
        // b has them all (the link sent and b acknowledged them); its function holds the first.
        #expect(await eventually { a.meshLinkHealth.first.map { $0.sentFrames == 10 && $0.queuedFrames == 0 } == true })
        if cut {
            // Older than the patience when the link loses its connection for a moment (its redial's delay).
            try await Task.sleep(for: patience * 2)
            await a.dropMeshLinkConnectionsForTesting()
            #expect(await eventually { a.meshLinkReconnectsForTesting == [1] && a.meshLinkHealth.first?.connected == true })
        }
        let sent = ContinuousClock.now
        try await Task.sleep(until: sent + patience * 3, clock: .continuous)
        #expect(source.client.keptFrames >= 8, "the source forgot what b's function had not taken: kept \(source.client.keptFrames)")
        gate.store(true, ordering: .relaxed)
        #expect(await handled.wait(for: 10, timeout: .seconds(20)))
        #expect(await eventually { source.client.keptFrames == 0 }, "kept: \(source.client.keptFrames)")
        await source.close()
        await far.close()
        await a.close()
        await b.close()
    }

    @Test("an upstream zipper killed and started again while the downstream's function still has the frames it forwarded, unhandled: its source sends them again through the next run, and the function, told that copies may follow, handles each once; the source's frames settle")
    func upstreamCrashCopiesHandledOnce() async throws {
        let portA = try await freePort(), portB = try await freePort()
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let gate = Gate()
        let handled = Inbox<String>()
        let far = StreamFunction(name: "far", zipper: "127.0.0.1:\(portB)", options: .init(observedTags: [0x39], credential: "token:mesh"))
        far.setPipeHandler { input, _ in
            for await frame in input {
                await gate.wait()
                handled.append(String(decoding: frame.data, as: UTF8.self))
            }
        }
        try await far.connect()
        let (a, source) = try await Self.upstreamProcessWithSource(port: portA, downstreamPort: portB)
        let texts = (0..<10).map { "again-\($0)" }
        for text in texts { try await source.write(tag: 0x39, data: Array(text.utf8)) }
        // b's function read them all; its handler holds the first, so the source keeps most.
        #expect(await eventually { far.client.framesReceivedForTesting == 10 }, "\(far.client.framesReceivedForTesting) read")
        #expect(await eventually { source.client.unacknowledgedBytesForTesting == 0 })
        let kept = source.client.keptFrames
        #expect(kept >= 5, "kept \(kept)")

        await a.kill()
        try await a.restart()
        // The source sends them again through a's next run, whose link b takes as the same upstream's.
        #expect(await eventually { far.client.framesReceivedForTesting == 10 + kept }, "\(far.client.framesReceivedForTesting) read")
        #expect(b.statistics.copiesAnnounced >= 1)
        gate.open()
        // Copies settle when their originals are handled, so by then any copy handled again was.
        #expect(await eventually { source.client.keptFrames == 0 }, "kept \(source.client.keptFrames)")
        #expect(await handled.wait(for: 10))
        #expect(handled.items == texts, "each once, in order: \(handled.items)")
        await source.close()
        await far.close()
        await b.close()
        await a.kill()
    }

    /// Downstream "b" with a pipe function "far" that handles frames
    /// `again-0`… in order, those numbered below `firstGated` once `first`
    /// opens and the rest once `rest` does, and upstream "a" (a process)
    /// with a source that wrote `count` frames, all read by "far".
    struct GatedFar {
        let b: Zipper, far: StreamFunction, a: ZipperProcess, source: Source
        let first = Gate(), rest = Gate()
        let handled = Inbox<String>()
        let texts: [String]

        init(count: Int, firstGated: Int) async throws {
            let portA = try await freePort(), portB = try await freePort()
            b = MeshLoopbackTests.zipper("b", port: portB, mesh: [])
            try await b.start()
            far = StreamFunction(name: "far", zipper: "127.0.0.1:\(portB)", options: .init(observedTags: [0x39], credential: "token:mesh"))
            let (first, rest, handled) = (first, rest, handled)
            far.setPipeHandler { input, _ in
                for await frame in input {
                    let text = String(decoding: frame.data, as: UTF8.self)
                    await (Int(text.split(separator: "-").last ?? "") ?? 0 < firstGated ? first : rest).wait()
                    handled.append(text)
                }
            }
            try await far.connect()
            (a, source) = try await MeshLoopbackTests.upstreamProcessWithSource(port: portA, downstreamPort: portB)
            texts = (0..<count).map { "again-\($0)" }
            for text in texts { try await source.write(tag: 0x39, data: Array(text.utf8)) }
            let far = far
            #expect(await eventually { far.client.framesReceivedForTesting == count }, "\(far.client.framesReceivedForTesting) read")
            #expect(await eventually { source.client.unacknowledgedBytesForTesting == 0 })
        }

        func close() async {
            await source.close()
            await far.close()
            await b.close()
            await a.kill()
        }
    }

    @Test("copies an upstream's next run brings, which the downstream's function finishes with their originals ahead of its backlog, settle for the source then: the source keeps only what waits for the handler")
    func copiesSettleAheadOfABacklog() async throws {
        let setup = try await GatedFar(count: 60, firstGated: 40)
        let (far, a, source, handled) = (setup.far, setup.a, setup.source, setup.handled)
        let kept = source.client.keptFrames
        #expect(kept >= 58, "kept \(kept)")
        await a.kill()
        try await a.restart()
        // The source sends again what it kept: copies, behind the 59 queued originals.
        #expect(await eventually { far.client.framesReceivedForTesting == 60 + kept }, "\(far.client.framesReceivedForTesting) read")
        // The first 40 handled, the next taken: their copies are finished
        // with them, and settle, `framesPerLinkCheckpoint` at a time through
        // the upstream. Until the fifty-fifth round such copies waited until
        // the handler took every frame before them in the stream (the 19
        // queued originals), and the upstream settled the source's burst as
        // one, so the source kept all it sent again.
        setup.first.open()
        #expect(await handled.wait(for: 40))
        // The upstream cuts a checkpoint every 16 frames it forwards, and at
        // each round of its receipts (2 ms) too, so the one with frame 40
        // (taken, not finished) begins at frame 25 at the earliest: all
        // before it settle. (Until the fifty-eighth round this read 32, as if
        // checkpoints began every 16 frames from the first copy; a run whose
        // burst spanned a round of receipts kept 32–34.)
        let settledAtLeast = 40 - (ReceiptLedger.framesPerLinkCheckpoint - 1)
        #expect(await eventually { source.client.keptFrames <= 60 - settledAtLeast }, "kept \(source.client.keptFrames)")
        #expect(source.client.keptFrames >= 20, "kept \(source.client.keptFrames): only what the handler finished settles")
        setup.rest.open()
        #expect(await eventually { source.client.keptFrames == 0 }, "kept \(source.client.keptFrames)")
        #expect(await handled.wait(for: 60))
        #expect(handled.items == setup.texts, "each once, in order: \(handled.items.count)")
        await setup.close()
    }

    @Test("frames the downstream's function handles while an upstream zipper is down are not handled again when their copies come through its next run: the downstream says copies may follow as the upstream's connection ends")
    func copiesOfWhatWasHandledWhileTheUpstreamWasAway() async throws {
        // A function that writes nothing: what it handles is reported at once.
        let setup = try await GatedFar(count: 10, firstGated: 5)
        let (b, far, a, source, handled) = (setup.b, setup.far, setup.a, setup.source, setup.handled)
        let kept = source.client.keptFrames
        #expect(kept >= 8, "kept \(kept)")
        await a.kill()
        #expect(await eventually { b.statistics.copiesAnnounced >= 1 }, "told as the upstream's connection ended")
        // While a is down the function handles the first five and reports them.
        setup.first.open()
        #expect(await handled.wait(for: 5))
        try await a.restart()
        // The copies of the five b was told the function finished are not
        // written to it (since the fifty-eighth round); the rest are, and
        // it knows them.
        #expect(await eventually { far.client.framesReceivedForTesting + b.statistics.handledCopiesNotRouted == 10 + kept },
                "\(far.client.framesReceivedForTesting) read, \(b.statistics.handledCopiesNotRouted) passed over")
        setup.rest.open()
        #expect(await handled.wait(for: 10))
        // Nothing more comes: every copy came before this.
        try await source.write(tag: 0x39, data: Array("again-last".utf8))
        #expect(await handled.wait(for: 11))
        // Until the fifty-fifth round the copies of the first five were handled again.
        #expect(handled.items == setup.texts + ["again-last"], "each once, in order: \(handled.items)")
        #expect(await eventually { source.client.keptFrames == 0 }, "kept \(source.client.keptFrames)")
        await setup.close()
    }

    @Test("copies an upstream's next run brings of frames one instance of a function handled do not go to its next instance: the downstream remembers, for the function's name, what it finished of what the mesh brought, whether routed to it or given from the hold",
          arguments: [false, true])
    func copiesOfWhatAnEarlierInstanceHandled(fromTheHold: Bool) async throws {
        let portA = try await freePort(), portB = try await freePort()
        // In its first minute b holds frames for any function that comes.
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        var first: (function: StreamFunction, handled: Inbox<String>)?
        if !fromTheHold { first = try await Self.farFunction(port: portB, tag: 0x3B) }
        let (a, source) = try await Self.upstreamProcessWithSource(port: portA, downstreamPort: portB)
        // b's receipts held back: a settles nothing, and the source keeps all it wrote.
        b.pauseReceiptsForTesting(true)
        let texts = (0..<10).map { "once-\($0)" }
        for text in texts { try await source.write(tag: 0x3B, data: Array(text.utf8)) }
        if fromTheHold {
            #expect(await eventually { b.statistics.heldFrames == 10 }, "held \(b.statistics.heldFrames)")
            first = try await Self.farFunction(port: portB, tag: 0x3B)
        }
        let (function, handled) = try #require(first)
        #expect(await handled.wait(for: 10))
        #expect(source.client.keptFrames == 10)
        // That instance goes, its receipts read; the next comes.
        #expect(await eventually { function.client.handlingToldForTesting })
        await function.close()
        let (second, handledAgain) = try await Self.farFunction(port: portB, tag: 0x3B)
        await a.kill()
        b.pauseReceiptsForTesting(false)
        try await a.restart()
        // The source sends the ten again through a's next run: settled, not routed.
        // Until the fifty-eighth round the next instance handled them again;
        // until the fifty-ninth, those given from the hold.
        #expect(await eventually { b.statistics.handledCopiesNotRouted == 10 }, "\(b.statistics.handledCopiesNotRouted)")
        try await Self.expectOnlyALaterFrameHandled(source: source, handledAgain: handledAgain)
        await source.close()
        await second.close()
        await b.close()
        await a.kill()
    }

    /// `upstream`'s next run, started here, sends `next` the ten frames again:
    /// each passed over, and `handledAgain` gets only a frame written after.
    /// Once `source` has nothing kept (its copies settled), a frame it
    /// writes is the only one `handledAgain` gets: the copies went to no one.
    static func expectOnlyALaterFrameHandled(
        source: Source, handledAgain: Inbox<String>, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        #expect(await eventually { source.client.keptFrames == 0 }, "kept \(source.client.keptFrames)", sourceLocation: sourceLocation)
        try await source.write(tag: 0x3B, data: Array("last".utf8))
        #expect(await handledAgain.wait(for: 1), sourceLocation: sourceLocation)
        #expect(handledAgain.items == ["last"], "\(handledAgain.items)", sourceLocation: sourceLocation)
    }

    static func expectNextRunsCopiesPassedOver(
        upstream: Zipper, next: Zipper, handledAgain: Inbox<String>, sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let restarted = Zipper(configuration: upstream.configuration, options: Self.upstreamOptions())
        try await restarted.start()
        #expect(await eventually { next.statistics.handledCopiesNotRouted == 10 }, "\(next.statistics)", sourceLocation: sourceLocation)
        let writer = Source(name: "source", zipper: "127.0.0.1:\(upstream.configuration.port)", options: .init(credential: "token:mesh"))
        try await writer.connect()
        try await expectOnlyALaterFrameHandled(source: writer, handledAgain: handledAgain, sourceLocation: sourceLocation)
        await writer.close()
        await restarted.close()
    }

    @Test("what a downstream's functions finished of the mesh's frames outlives its graceful restart: copies an upstream's next run brings after it do not go to the name's next instance")
    func copiesAfterTheDownstreamRestarted() async throws {
        let directory = try makeTemporaryDirectory("yomo-test-mesh-finished-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let portA = try await freePort(), portB = try await freePort()
        let configuration = ZipperConfiguration(
            name: "b", host: "127.0.0.1", port: portB, authentication: .token("mesh"), functionsFile: directory + "/b.yaml")
        let finishedFile = FinishedFramesFile.path(besides: directory + "/b.yaml")
        let b = Zipper(configuration: configuration)
        try await b.start()
        let (first, handled) = try await Self.farFunction(port: portB, tag: 0x3B)
        let (a, source) = try await Self.upstreamWithSource(
            port: portA, downstreamPort: portB, functionsFile: directory + "/a.yaml", options: Self.upstreamOptions(shutdownTimeout: .seconds(1)))
        // b's receipts held back: a's close keeps the ten for its next start, as not settled.
        b.pauseReceiptsForTesting(true)
        let texts = (0..<10).map { "restarted-\($0)" }
        for text in texts { try await source.write(tag: 0x3B, data: Array(text.utf8)) }
        #expect(await handled.wait(for: 10))
        #expect(await eventually { first.client.handlingToldForTesting })
        await source.close()
        await a.close()
        await first.close()
        await b.close()
        /// The time the finished frames file says it was written, and its keys.
        func finishedFileSays() -> (Int64, Int)? {
            (try? Data(contentsOf: URL(fileURLWithPath: finishedFile))).flatMap { FinishedFramesFile.decode(Array($0)) }.map { ($0.closedAt, $0.finished.count) }
        }
        let closed = try #require(finishedFileSays())
        #expect(closed.1 == 10)
        let next = Zipper(configuration: configuration)
        try await next.start()
        // Kept by the next run from its start, in case it crashes: written anew with its time.
        #expect(await eventually { finishedFileSays().map { $0.0 > closed.0 && $0.1 == 10 } == true }, "\(String(describing: finishedFileSays()))")
        let (second, handledAgain) = try await Self.farFunction(port: portB, tag: 0x3B)
        // Until the fifty-ninth round the memory ended with b's run: the next instance handled the ten again.
        try await Self.expectNextRunsCopiesPassedOver(upstream: a, next: next, handledAgain: handledAgain)
        await second.close()
        await next.close()
    }

    @Test("what a downstream's functions finished of the mesh's frames outlives its crash: copies an upstream's next run brings after it do not go to the name's next instance")
    func copiesAfterTheDownstreamCrashed() async throws {
        let directory = try makeTemporaryDirectory("yomo-test-mesh-crashed-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let portA = try await freePort(), portB = try await freePort(), metricsPort = try await freePort()
        let functionsFile = directory + "/b.functions"
        // In its first minute b holds frames for any function that comes.
        let b = try await ZipperProcess(port: portB, arguments: [
            "--name", "b", "--token", "mesh", "--functions-file", functionsFile, "--metrics", "127.0.0.1:\(metricsPort)",
        ])
        let (a, source) = try await Self.upstreamProcessWithSource(port: portA, downstreamPort: portB)
        let texts = (0..<10).map { "crashed-\($0)" }
        for text in texts { try await source.write(tag: 0x3B, data: Array(text.utf8)) }
        #expect(await eventuallyAsync { await scrapedMetric(port: metricsPort, "yomo_zipper_held_messages", labels: []) == 10 })
        // a dies with them unsettled: the source keeps them for a's next run.
        await a.kill()
        let (first, handled) = try await Self.farFunction(port: portB, tag: 0x3B)
        #expect(await handled.wait(for: 10))
        // b keeps what its functions finished while it runs, not only at a graceful close.
        let finishedFile = FinishedFramesFile.path(besides: functionsFile)
        #expect(await eventually {
            (try? Data(contentsOf: URL(fileURLWithPath: finishedFile))).flatMap { FinishedFramesFile.decode(Array($0)) }?.finished.count == 10
        })
        await first.close()
        await b.kill()
        try await b.restart()
        let (second, handledAgain) = try await Self.farFunction(port: portB, tag: 0x3B)
        // Until the sixtieth round the memory died with b: the next instance handled the ten again.
        try await a.restart()
        try await Self.expectOnlyALaterFrameHandled(source: source, handledAgain: handledAgain)
        await source.close()
        await second.close()
        await a.kill()
        await b.kill()
    }

    @Test("the mesh's frames a downstream held at its graceful close stay the mesh's in its next start's hold: copies an upstream's next run brings of those an instance took from there do not go to the name's next instance")
    func copiesOfWhatTheRestoredHoldGave() async throws {
        let directory = try makeTemporaryDirectory("yomo-test-mesh-restored-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // In its first minute b holds frames for any function that comes.
        let (configuration, b, a, source) = try await Self.heldByTheDownstream(directory)
        let portB = configuration.port
        let texts = (0..<10).map { "restored-\($0)" }
        for text in texts { try await source.write(tag: 0x3B, data: Array(text.utf8)) }
        #expect(await eventually { b.statistics.heldFrames == 10 }, "held \(b.statistics.heldFrames)")
        // a keeps the ten for its next start, as b had not settled them; b keeps them as held.
        await source.close()
        await a.close()
        await b.close()
        let heldFile = (try? Data(contentsOf: URL(fileURLWithPath: HeldFramesFile.path(besides: directory + "/b.yaml")))) ?? Data()
        #expect(String(decoding: heldFile.prefix(60), as: UTF8.self).contains(" links 0-9\n"), "\(String(decoding: heldFile.prefix(60), as: UTF8.self))")
        let next = Zipper(configuration: configuration)
        try await next.start()
        let (first, handled) = try await Self.farFunction(port: portB, tag: 0x3B)
        #expect(await handled.wait(for: 10))
        #expect(await eventually { first.client.handlingToldForTesting })
        await first.close()
        let (second, handledAgain) = try await Self.farFunction(port: portB, tag: 0x3B)
        // Until the fifty-ninth round the held frames file did not say which were the mesh's: the next instance handled the ten again.
        try await Self.expectNextRunsCopiesPassedOver(upstream: a, next: next, handledAgain: handledAgain)
        await second.close()
        await next.close()
    }

    @Test(
        "restored frames of the mesh that a closing instance left unread, after another instance of its name finished their copies, count as handled and leave the held frames file: with that instance still there (not given to it again) or gone (not held again)",
        arguments: [true, false])
    func leftoverCopiesLeaveTheRestoredFile(namesakeStays: Bool) async throws {
        let directory = try makeTemporaryDirectory("yomo-test-mesh-leftover-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (configuration, b, a, source) = try await Self.heldByTheDownstream(directory)
        let portB = configuration.port
        let heldFile = HeldFramesFile.path(besides: directory + "/b.yaml")
        let texts = (0..<10).map { "leftover-\($0)" }
        for text in texts { try await source.write(tag: 0x3B, data: Array(text.utf8)) }
        // A frame no function observes stays held (5 s): the file is trimmed of the rest meanwhile, not removed.
        try await source.write(tag: 0x3C, data: Array("unobserved".utf8))
        #expect(await eventually { b.statistics.heldFrames == 11 }, "held \(b.statistics.heldFrames)")
        await source.close()
        await a.close()
        await b.close()
        let next = Zipper(configuration: configuration)
        try await next.start()
        // The first instance takes the ten restored frames and handles none of them.
        let stuck = StreamFunction(name: "far", zipper: "127.0.0.1:\(portB)", options: .init(
            observedTags: [0x3B], credential: "token:mesh", handlerConcurrency: 1, shutdownTimeout: .milliseconds(200)))
        stuck.setHandler { _ in try await Task.sleep(for: .seconds(60)) }
        try await stuck.connect()
        #expect(await eventually { next.statistics.heldFramesDelivered == 10 }, "\(next.statistics)")
        // A second instance of the name handles the copies the upstream's next run brings.
        let (second, handled) = try await Self.farFunction(port: portB, tag: 0x3B)
        let restarted = Zipper(configuration: a.configuration, options: Self.upstreamOptions())
        try await restarted.start()
        #expect(await handled.wait(for: 10))
        #expect(await eventually { second.client.handlingToldForTesting })
        if !namesakeStays { await second.close() }
        // The zipper takes back what the first left; its name had finished each.
        await stuck.close()
        // Until the sixtieth round, with the second still there, it was given them and handled them again;
        // until the fifty-ninth, gone, they stayed in the file, and a crash gave them to the next instance again.
        #expect(await eventually { (try? Self.heldFileFrames(heldFile)) == ["unobserved"] }, "\((try? Self.heldFileFrames(heldFile)) ?? [])")
        #expect(handled.items.sorted() == texts.sorted(), "each once: \(handled.items)")
        // Not given to the namesake, or not held again: neither lost.
        #expect(next.statistics.handledCopiesNotRouted == (namesakeStays ? 10 : 0), "\(next.statistics)")
        #expect(namesakeStays || next.statistics.heldCopiesSettled >= 10, "\(next.statistics)")
        #expect(next.statistics.unacknowledgedBytesLost == 0, "\(next.statistics)")
        if namesakeStays { await second.close() }
        await restarted.close()
        await next.close()
    }

    /// Downstream "b" and upstream "a" in this process, their functions
    /// files in `directory`, a source at a, and b's receipts held back: what
    /// the source writes stays unsettled, so a's close (1 s) keeps it for its
    /// next start, while b holds it.
    static func heldByTheDownstream(_ directory: String) async throws -> (configuration: ZipperConfiguration, b: Zipper, a: Zipper, source: Source) {
        let portA = try await freePort(), portB = try await freePort()
        let configuration = ZipperConfiguration(
            name: "b", host: "127.0.0.1", port: portB, authentication: .token("mesh"), functionsFile: directory + "/b.yaml")
        let b = Zipper(configuration: configuration)
        try await b.start()
        let (a, source) = try await Self.upstreamWithSource(
            port: portA, downstreamPort: portB, functionsFile: directory + "/a.yaml", options: Self.upstreamOptions(shutdownTimeout: .seconds(1)))
        b.pauseReceiptsForTesting(true)
        return (configuration, b, a, source)
    }

    /// The payloads of the frames in the held frames file at `path`.
    static func heldFileFrames(_ path: String) throws -> [String] {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        let frames = try #require(HeldFramesFile.decodeLinks(Array(bytes))).1
        return frames.map { String(buffer: $0.0.payload) }
    }

    @Test("a downstream that holds what an upstream forwarded for a function not there yet, and then the copies the upstream's next run brings after its crash: the function, told as the held frames come that copies may follow, handles each once")
    func heldCopiesHandledOnce() async throws {
        let portA = try await freePort(), portB = try await freePort()
        // In its first minute b holds frames for any function that comes.
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let (a, source) = try await Self.upstreamProcessWithSource(port: portA, downstreamPort: portB)
        let texts = (0..<10).map { "held-\($0)" }
        for text in texts { try await source.write(tag: 0x3A, data: Array(text.utf8)) }
        #expect(await eventually { b.statistics.heldFrames == 10 }, "held \(b.statistics.heldFrames)")
        #expect(await eventually { source.client.unacknowledgedBytesForTesting == 0 })
        #expect(source.client.keptFrames == 10, "kept until they leave b's hold")

        await a.kill()
        try await a.restart()
        // The source sends them again through a's next run: b holds them twice.
        #expect(await eventually { b.statistics.heldFrames == 20 }, "held \(b.statistics.heldFrames)")
        let (far, handled) = try await Self.farFunction(port: portB, tag: 0x3A)
        #expect(await eventually { source.client.keptFrames == 0 }, "kept \(source.client.keptFrames)")
        #expect(await handled.wait(for: 10))
        // Its handlers run side by side: in any order.
        #expect(handled.items.sorted() == texts.sorted(), "each once: \(handled.items)")
        await source.close()
        await far.close()
        await b.close()
        await a.kill()
    }

    @Test("frames a link carried to its downstream's next run settle one by one as the function there handles them: the source forgets each as it is handled, not all once the last is")
    func carriedFramesSettleOneByOne() async throws {
        let portA = try await freePort(), portB = try await freePort()
        // In its first minute b holds frames for any function that comes.
        let b = try await ZipperProcess(port: portB, arguments: ["--name", "b", "--token", "mesh"])
        let (a, source) = try await Self.upstreamWithSource(port: portA, downstreamPort: portB)
        let texts = (0..<10).map { "carried-\($0)" }
        // One at a time, as a source that writes now and then: each in a receipt of a's of its own.
        for (index, text) in texts.enumerated() {
            try await source.write(tag: 0x3B, data: Array(text.utf8))
            #expect(await eventually { a.meshLinkHealth.first.map { $0.sentFrames == index + 1 && $0.queuedFrames == 0 } == true })
        }

        // b's next run has none of them: the link sends them all again, on its next connection.
        await b.kill()
        try await b.restart()
        #expect(await eventually { a.meshLinkReconnectsForTesting == [1] && a.meshLinkHealth.first?.connected == true })
        #expect(source.client.keptFrames == 10)
        let far = MeteredFunction(zipper: b.address, tag: 0x3B)
        try await far.function.connect()
        far.allow(2)
        #expect(await far.handled.wait(for: 2))
        // Before, the source kept all ten until the last was handled.
        #expect(await eventually { source.client.keptFrames <= 8 }, "kept \(source.client.keptFrames)")
        far.allow(10)
        #expect(await eventually { source.client.keptFrames == 0 }, "kept \(source.client.keptFrames)")
        #expect(far.handled.items == texts, "each once, in order: \(far.handled.items)")
        await source.close()
        await far.function.close()
        await a.close()
        await b.kill()
    }

    @Test("frames a downstream acknowledged before its graceful close count as settled for the link's senders, as they are not sent again: they do not wait for what the link carries to the downstream's next run")
    func acknowledgedAtCloseSettles() async throws {
        let portA = try await freePort(), portB = try await freePort()
        let b = try await ZipperProcess(port: portB, arguments: ["--name", "b", "--token", "mesh"])
        let far = MeteredFunction(zipper: b.address, tag: 0x3C, retryConnect: true)
        try await far.function.connect()
        let (a, source) = try await Self.upstreamWithSource(port: portA, downstreamPort: portB)
        let texts = (0..<10).map { "closed-\($0)" }
        for text in texts.prefix(5) { try await source.write(tag: 0x3C, data: Array(text.utf8)) }
        #expect(await eventually { a.meshLinkHealth.first.map { $0.sentFrames == 5 && $0.queuedFrames == 0 } == true })
        #expect(source.client.keptFrames == 5, "b's function has not handled them")

        // b keeps what its function had not handled for its next start; the link does not send it again.
        await b.terminate()
        for text in texts.suffix(5) { try await source.write(tag: 0x3C, data: Array(text.utf8)) }
        try await b.restart()
        #expect(await eventually { a.meshLinkHealth.first.map { $0.connected && $0.sentFrames == 10 && $0.queuedFrames == 0 } == true })
        // The five b took before its close are settled; the five carried to its next run wait for its function.
        #expect(await eventually { source.client.keptFrames == 5 }, "kept \(source.client.keptFrames)")
        far.allow(10)
        #expect(await eventually { source.client.keptFrames == 0 }, "kept \(source.client.keptFrames)")
        #expect(await far.handled.wait(for: 10))
        #expect(Set(far.handled.items) == Set(texts), "\(far.handled.items)")
        await source.close()
        await far.function.close()
        await a.close()
        await b.kill()
    }

    @Test("a zipper stopped gracefully while its downstream's function had not handled what it forwarded, and the downstream then killed: the close kept those frames beside it, and its next start delivers them, so the function gets every one")
    func closeKeepsWhatTheDownstreamHadNotSettled() async throws {
        let directory = try makeTemporaryDirectory("yomo-test-mesh-unsettled-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let portA = try await freePort(), portB = try await freePort()
        let b = try await ZipperProcess(port: portB, arguments: ["--name", "b", "--token", "mesh"])
        let far = MeteredFunction(zipper: b.address, tag: 0x3E, retryConnect: true)
        try await far.function.connect()
        let (a, source) = try await Self.upstreamWithSource(
            port: portA, downstreamPort: portB, functionsFile: directory + "/functions.yaml", options: Self.upstreamOptions(shutdownTimeout: .seconds(1)))
        let texts = (0..<5).map { "unsettled-\($0)" }
        for text in texts { try await source.write(tag: 0x3E, data: Array(text.utf8)) }
        // b acknowledged them all; its function handles none yet.
        #expect(await eventually { a.meshLinkHealth.first.map { $0.sentFrames == 5 && $0.queuedFrames == 0 } == true })
        await source.close()
        await a.close()
        #expect(FileManager.default.fileExists(atPath: MeshKeptFile.path(besides: directory + "/functions.yaml", downstream: "b")))

        // b crashes with them: what its function had not read is gone from it.
        await b.kill()
        try await b.restart()
        let restarted = Zipper(configuration: a.configuration, options: Self.upstreamOptions())
        try await restarted.start()
        far.allow(10)
        #expect(await eventually { Set(far.handled.items) == Set(texts) }, "\(far.handled.items)")
        await far.function.close()
        await restarted.close()
        await b.kill()
    }

    @Test("a downstream away while 5,000 frames are forwarded to it (a second of a busy source): the default queue and the link's buffer keep every one, and a function there gets them all")
    func downstreamAwayUnderTraffic() async throws {
        let portA = try await freePort(), portB = try await freePort()
        let a = Self.zipper("a", port: portA, mesh: [.init(name: "b", host: "127.0.0.1", port: portB, credential: "token:mesh")])
        try await a.start()
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        let texts = (0..<5000).map { "busy-\($0)" }
        for text in texts { try await source.write(tag: 0x36, data: Array(text.utf8)) }
        #expect(await eventually { a.meshLinkHealth.first?.queuedFrames == texts.count }, "\(String(describing: a.meshLinkHealth.first))")
        #expect(a.statistics.meshDroppedFrames == 0, "\(a.statistics)")

        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let (far, remote) = try await Self.farFunction(port: portB, tag: 0x36)
        #expect(await eventually(within: .seconds(30)) { remote.count >= texts.count }, "\(remote.count) of \(texts.count)")
        let missing = Set(texts).subtracting(remote.items).count
        #expect(missing == 0)
        await source.close()
        await far.close()
        await a.close()
        await b.close()
    }

    @Test("a mesh entry with this zipper's own address under another name: the link is refused and stopped, frames delivered once")
    func selfLink() async throws {
        let port = try await freePort()
        let records = Inbox<String>()
        let logger = Logger(label: "test.zipper") { _ in CapturingLogHandler(lines: records) }
        // Named "zipper", so it does not skip the entry "self", which is itself.
        let zipper = Zipper(
            configuration: ZipperConfiguration(host: "127.0.0.1", port: port, mesh: [.init(name: "self", host: "127.0.0.1", port: port)]),
            options: .init(logger: logger))
        try await zipper.start()
        #expect(await eventually { records.items.contains { $0.contains("mesh entry self (127.0.0.1:\(port)) is this zipper (zipper) itself") } },
                "\(records.items)")
        #expect(zipper.statistics.rejectedHandshakes == 1)

        let received = Inbox<String>()
        let sfn = StreamFunction(name: "f", zipper: "127.0.0.1:\(port)", options: .init(observedTags: [0x33]))
        sfn.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await sfn.connect()
        let source = Source(name: "source", zipper: "127.0.0.1:\(port)")
        try await source.connect()
        // The function and the source only: the link to itself is gone for good.
        #expect(zipper.connectionCount == 2)
        let count = 20
        for index in 0..<count { try await source.write(tag: 0x33, data: Array("frame \(index)".utf8)) }
        #expect(await received.wait(for: count))
        // Handlers run concurrently: each frame once, in any order.
        #expect(received.items.sorted() == (0..<count).map { "frame \($0)" }.sorted(), "\(received.items)")
        #expect(records.items.filter { $0.contains("mesh link starting") }.count == 1)
        await source.close()
        await sfn.close()
        await zipper.close()
    }

    @Test("two zippers listing each other: every frame once on both sides, replies come back, no loop")
    func twoWay() async throws {
        let portA = try await freePort(), portB = try await freePort()
        let a = Self.zipper("a", port: portA, mesh: [.init(name: "b", host: "127.0.0.1", port: portB, credential: "token:mesh"),
                                                    .init(name: "a", host: "127.0.0.1", port: portA)])
        let b = Self.zipper("b", port: portB, mesh: [.init(name: "a", host: "127.0.0.1", port: portA, credential: "token:mesh")])
        try await a.start()
        try await b.start()
        // Both links up: each zipper has the other as a client.
        for _ in 0..<1000 where a.connectionCount < 1 || b.connectionCount < 1 { try await Task.sleep(for: .milliseconds(5)) }
        #expect(a.connectionCount == 1 && b.connectionCount == 1)

        let remote = Inbox<String>(), local = Inbox<String>(), replies = Inbox<String>()
        let upper = StreamFunction(name: "upper", zipper: "127.0.0.1:\(portB)", options: .init(observedTags: [0x33], credential: "token:mesh"))
        upper.setHandler { ctx in
            remote.append(String(decoding: ctx.data, as: UTF8.self))
            try await ctx.write(tag: 0x34, data: uppercase(ctx.data))
        }
        let near = StreamFunction(name: "near", zipper: "127.0.0.1:\(portA)", options: .init(observedTags: [0x33], credential: "token:mesh"))
        near.setHandler { ctx in local.append(String(decoding: ctx.data, as: UTF8.self)) }
        let sink = StreamFunction(name: "sink", zipper: "127.0.0.1:\(portA)", options: .init(observedTags: [0x34], credential: "token:mesh"))
        sink.setHandler { ctx in replies.append(String(decoding: ctx.data, as: UTF8.self)) }
        for sfn in [upper, near, sink] { try await sfn.connect() }
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()

        let count = 30
        for index in 0..<count { try await source.write(tag: 0x33, data: Array("frame \(index)".utf8)) }
        #expect(await remote.wait(for: count))
        #expect(await local.wait(for: count))
        #expect(await replies.wait(for: count))
        // A marker written last: once it is back, anything looping would have shown.
        try await source.write(tag: 0x33, data: Array("last".utf8))
        #expect(await replies.wait(for: count + 1))
        #expect(replies.items.last == "LAST")
        for inbox in [remote, local] {
            #expect(inbox.count == count + 1, "each frame exactly once: \(inbox.count)")
            #expect(Set(inbox.items).count == count + 1)
        }
        #expect(replies.count == count + 1)
        #expect(a.statistics.meshDroppedFrames == 0 && b.statistics.meshDroppedFrames == 0)
        await source.close()
        for sfn in [upper, near, sink] { await sfn.close() }
        await a.close()
        await b.close()
    }

    @Test("the link handshakes as an upstream zipper and forwards the frame with the zipper's own span ids")
    func forwardedFrame() async throws {
        // A stand-in downstream: records the handshake and the first DataFrame.
        let server = try await QUICServer.bind(host: "127.0.0.1", port: 0)
        let handshakes = Inbox<HandshakeFrame>(), frames = Inbox<DataFrame>()
        let serving = Task {
            for await connection in server.connections {
                let link = QUICFrameConnection(connection)
                var reader = link.frames.makeAsyncIterator()
                guard case .handshake(let handshake)? = try? await reader.next() else { continue }
                handshakes.append(handshake)
                _ = try? await link.write(.handshakeAck)
                while case .data(let frame)? = try? await reader.next() { frames.append(frame) }
            }
        }
        let (provider, exporter) = Self.recordingTracer()
        let port = try await freePort()
        let zipper = Self.zipper("zipper-a", port: port, mesh: [.init(name: "zipper-b", host: "127.0.0.1", port: server.port, credential: "token:b-secret")],
                                 tracerProvider: provider)
        try await zipper.start()
        let source = Source(name: "source", zipper: "127.0.0.1:\(port)", options: .init(credential: "token:mesh"))
        try await source.connect()
        try await source.write(tag: 0x33, data: Array("traced".utf8))
        #expect(await frames.wait(for: 1))

        let handshake = try #require(handshakes.items.first)
        #expect(handshake.clientType == .upstreamZipper)
        #expect(handshake.name == "zipper-a" && handshake.observedTags.isEmpty)
        #expect(handshake.authName == "token" && handshake.authPayload == "b-secret")
        let frame = try #require(frames.items.first)
        #expect(frame.tag == 0x33 && String(buffer: frame.payload) == "traced")
        let metadata = try Metadata(decoding: frame.metadata)
        let zipperSpan = try #require(exporter.spans.first { $0.name == "zipper endpoint" })
        // Or, if the link was still connecting when the frame came, the span of
        // its wait, a child of that (`linkOutageTrace`).
        let wait = exporter.spans.first { $0.name == "mesh link outage" }
        #expect(wait == nil || wait?.parentSpanID == zipperSpan.context.spanID)
        let span = wait ?? zipperSpan
        let traceID = span.context.traceID.description, spanID = span.context.spanID.description
        #expect(metadata[Metadata.ReservedKey.traceID] == traceID)
        #expect(metadata[Metadata.ReservedKey.spanID] == spanID, "zipper-a's own span, not the source's")
        #expect(metadata["traceparent"]?.contains("\(traceID)-\(spanID)") == true, "\(metadata["traceparent"] ?? "none")")
        #expect(metadata[Metadata.ReservedKey.sourceID] == source.id && metadata[Metadata.ReservedKey.tid] != nil)

        await source.close()
        await zipper.close()
        serving.cancel()
        await server.close(reason: "")
    }

    @Test("a frame that waited for its mesh link to reach the downstream shows the wait in its trace: a span under the upstream zipper's, which the downstream's hops follow")
    func linkOutageTrace() async throws {
        let portA = try await freePort(), portB = try await freePort()
        let (a, exporter) = try await Self.tracedUpstream(port: portA, downstreamPort: portB)
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        try await source.write(tag: 0x37, data: Array("waited".utf8))
        #expect(await eventually { a.meshLinkHealth.first?.queuedFrames == 1 })
        // b untraced: the function sees the parent the link wrote.
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let (far, parents) = try await Self.parentRecordingFunction(port: portB, tag: 0x37)
        #expect(await parents.wait(for: 1, timeout: .seconds(30)))
        await source.close()
        await far.close()
        await a.close()
        await b.close()
        let zipperSpan = try #require(exporter.spans.first { $0.name == "zipper endpoint" })
        let wait = try #require(exporter.spans.first { $0.name == "mesh link outage" }, "\(exporter.spans.map(\.name))")
        #expect(wait.parentSpanID == zipperSpan.context.spanID && wait.context.traceID == zipperSpan.context.traceID)
        #expect(wait.endTimeNanoseconds > wait.startTimeNanoseconds && wait.startTimeNanoseconds >= zipperSpan.startTimeNanoseconds)
        #expect(parents.items.first == wait.context.spanID.description, "b's hops follow the wait")
    }

    @Test("a frame an upstream's close kept for its downstream shows the wait across the restart in its trace: a mesh link outage span (kept_at_close) under the previous run's zipper span, from the close, which the downstream's hops follow")
    func keptFrameTrace() async throws {
        let directory = try makeTemporaryDirectory("yomo-test-mesh-kept-trace-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let portA = try await freePort(), portB = try await freePort()
        let configuration = Self.upstreamConfiguration(
            port: portA, downstreamPort: portB, functionsFile: directory + "/functions.yaml", unroutedHold: .off)
        let (provider, exporter) = Self.recordingTracer()
        let options = Self.upstreamOptions(shutdownTimeout: .milliseconds(500), tracerProvider: provider)
        let a = Zipper(configuration: configuration, options: options)
        try await a.start()
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        try await source.write(tag: 0x37, data: Array("kept".utf8))
        #expect(await eventually { a.meshLinkHealth.first?.queuedFrames == 1 })
        await source.close()
        await a.close()
        let closedAt = wallClockNanoseconds()

        let restarted = Zipper(configuration: configuration, options: options)
        try await restarted.start()
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let (far, parents) = try await Self.parentRecordingFunction(port: portB, tag: 0x37)
        #expect(await parents.wait(for: 1, timeout: .seconds(30)))
        await far.close()
        await restarted.close()
        await b.close()
        let zipperSpan = try #require(exporter.spans.first { $0.name == "zipper endpoint" })
        let kept = try #require(exporter.spans.first { $0.name == "mesh link outage" && $0.attributes.get("yomo.outage.reason") == .string("kept_at_close") },
                                "\(exporter.spans.map(\.name))")
        #expect(kept.parentSpanID == zipperSpan.context.spanID && kept.context.traceID == zipperSpan.context.traceID)
        // The file keeps the close's time in milliseconds: its start may be up to one later than the close.
        #expect(kept.startTimeNanoseconds <= closedAt + 2_000_000 && kept.startTimeNanoseconds >= zipperSpan.startTimeNanoseconds, "from the close")
        #expect(kept.endTimeNanoseconds > closedAt)
        // b's hops follow it, or a wait for the link that came after it.
        let waitAfter = exporter.spans.first { $0.name == "mesh link outage" && $0.parentSpanID == kept.context.spanID }
        #expect(parents.items.first == (waitAfter ?? kept).context.spanID.description)
    }

    @Test("what the link's patience lets its sources forget is on disk first (the spool): a zipper that ends without closing (its files as they were then) leaves them to its next start, which delivers each once, traced as spooled, and removes the file once settled")
    func spoolKeepsWhatPatienceLetsGo() async throws {
        let directory = try makeTemporaryDirectory("yomo-test-mesh-spool-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let portA = try await freePort(), portB = try await freePort()
        var configuration = Self.upstreamConfiguration(
            port: portA, downstreamPort: portB, functionsFile: directory + "/run1/functions.yaml", unroutedHold: .off)
        let (provider, exporter) = Self.recordingTracer()
        let options = Self.upstreamOptions(patience: .milliseconds(300), shutdownTimeout: .milliseconds(500), tracerProvider: provider)
        let a = Zipper(configuration: configuration, options: options)
        try await a.start()
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        let texts = (0..<20).map { "spooled-\($0)" }
        for text in texts { try await source.write(tag: 0x3b, data: Array(text.utf8)) }
        #expect(await eventually { source.client.keptFrames == 0 }, "kept: \(source.client.keptFrames)")
        // The source forgot them: the file has every one, as a kill -9 now would leave it.
        let file = MeshKeptFile.path(besides: directory + "/run1/functions.yaml", downstream: "b")
        let spool = try #require(FileManager.default.contents(atPath: file).flatMap { MeshKeptFile.decode(Array($0)) })
        #expect(spool.spooled)
        #expect(spool.frames.map { String(buffer: $0.payload) } == texts)
        let crashed = directory + "/run2/functions.yaml"
        try FileManager.default.createDirectory(atPath: directory + "/run2", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: file, toPath: MeshKeptFile.path(besides: crashed, downstream: "b"))
        await source.close()
        // The first run goes (its close keeps its frames in its own file): only the second delivers.
        await a.close()

        configuration.functionsFile = crashed
        configuration.port = try await freePort()
        let restarted = Zipper(configuration: configuration, options: options)
        try await restarted.start()
        #expect(await eventually { restarted.meshLinkHealth.first?.queuedFrames == texts.count })
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let (far, remote) = try await Self.farFunction(port: portB, tag: 0x3b)
        #expect(await eventually { Set(remote.items).isSuperset(of: texts) }, "\(remote.items)")
        #expect(await eventually { !FileManager.default.fileExists(atPath: MeshKeptFile.path(besides: crashed, downstream: "b")) },
                "removed once b settled them")
        #expect(remote.count == texts.count, "each once: \(remote.items)")
        await far.close()
        await restarted.close()
        await b.close()
        let firstRun = Set(exporter.spans.filter { $0.name == "zipper endpoint" }.map(\.context.spanID))
        let spooled = exporter.spans.filter { $0.name == "mesh link outage" && $0.attributes.get("yomo.outage.reason") == .string("spooled") }
        #expect(spooled.count == texts.count, "\(exporter.spans.map(\.name))")
        #expect(spooled.allSatisfy { $0.parentSpanID.map(firstRun.contains) == true }, "under the first run's zipper spans")
    }

    @Test("a spool file counts in its header the frames from its start the downstream settled: after a crash, a start sends the rest, and a start after another crash only what is still not settled")
    func spoolCountsWhatTheDownstreamSettled() async throws {
        let directory = try makeTemporaryDirectory("yomo-test-mesh-spool-count-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let portA = try await freePort(), portB = try await freePort()
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let (far, remote) = try await Self.farFunction(port: portB, tag: 0x3b)
        let gate = Gate()
        var stalled = stalledOptions(tags: [0x3e])
        stalled.credential = "token:mesh"
        let stuck = StreamFunction(name: "stuck", zipper: "127.0.0.1:\(portB)", options: stalled)
        stuck.setHandler { _ in await gate.wait() }
        try await stuck.connect()
        // As a crash leaves it: ten frames for the function at b, then ten for one there that takes the first and then nothing.
        let first = (0..<10).map { "first-\($0)" }, second = (0..<10).map { "second-\($0)" }
        let frames = first.map { DataFrame(tag: 0x3b, metadata: ByteBuffer(bytes: [0x80]), payload: ByteBuffer(string: $0)) }
            + second.map { DataFrame(tag: 0x3e, metadata: ByteBuffer(bytes: [0x80]), payload: ByteBuffer(string: $0)) }
        let file = MeshKeptFile.path(besides: directory + "/run1/functions.yaml", downstream: "b")
        try FileManager.default.createDirectory(atPath: directory + "/run1", withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(
            atPath: file, contents: Data(MeshKeptFile.encode(frames, closedAt: HeldFramesFile.now(), note: MeshKeptFile.spoolNote(settled: 0)))))
        func spool(_ path: String) -> (settled: Int, frames: Int)? {
            FileManager.default.contents(atPath: path).flatMap { MeshKeptFile.decode(Array($0)) }.map { ($0.settled, $0.frames.count) }
        }
        #expect(spool(file).map { $0 == (0, 20) } == true, "\(String(describing: spool(file)))")
        var configuration = Self.upstreamConfiguration(
            port: portA, downstreamPort: portB, functionsFile: directory + "/run1/functions.yaml", unroutedHold: .off)
        let options = Self.upstreamOptions(shutdownTimeout: .milliseconds(500))
        let a = Zipper(configuration: configuration, options: options)
        try await a.start()
        #expect(await eventually { Set(remote.items) == Set(first) }, "\(remote.items)")
        #expect(await eventually { spool(file).map { $0.settled >= 10 } == true }, "\(String(describing: spool(file)))")
        // A crash now leaves the file as it is.
        let crashed = directory + "/run2/functions.yaml"
        try FileManager.default.createDirectory(atPath: directory + "/run2", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: file, toPath: MeshKeptFile.path(besides: crashed, downstream: "b"))
        let settled = try #require(spool(MeshKeptFile.path(besides: crashed, downstream: "b"))?.settled)
        #expect(settled < 20, "the stuck function's frames are not all settled")
        await a.close()

        configuration.functionsFile = crashed
        let restarted = Zipper(configuration: configuration, options: options)
        try await restarted.start()
        // The rest only (b has them from the first run, and gets them again: at least once).
        #expect(await eventually { restarted.meshLinkHealth.first.map { $0.sentFrames == 20 - settled } == true },
                "\(String(describing: restarted.meshLinkHealth.first))")
        #expect(remote.count == first.count, "none of the first sent again: \(remote.items)")
        gate.open()
        await stuck.close()
        await far.close()
        await restarted.close()
        await b.close()
    }

    @Test("a link whose senders ask for no receipts (as Go's sources) forgets each frame once the downstream settled it: its records do not grow with the traffic")
    func linkForgetsWithoutReceipts() async throws {
        let portA = try await freePort(), portB = try await freePort()
        let b = Self.zipper("b", port: portB, mesh: [])
        try await b.start()
        let (far, remote) = try await Self.farFunction(port: portB, tag: 0x3d)
        let a = Self.zipper("a", port: portA, mesh: [.init(name: "b", host: "127.0.0.1", port: portB, credential: "token:mesh")])
        try await a.start()
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh", deliveryReceipts: false))
        try await source.connect()
        for index in 0..<50 { try await source.write(tag: 0x3d, data: Array("plain-\(index)".utf8)) }
        #expect(await eventually { remote.count == 50 }, "\(remote.count)")
        #expect(await eventually { a.meshLinkUnsettledRecords == [0] }, "\(a.meshLinkUnsettledRecords)")
        await source.close()
        await far.close()
        await a.close()
        await b.close()
    }

    @Test("a spool that cannot write (its file's path is a directory): said once, and the patience lets the sources go as it did before the spool")
    func spoolThatCannotWrite() async throws {
        let directory = try makeTemporaryDirectory("yomo-test-mesh-spool-failed-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let portA = try await freePort(), portB = try await freePort()
        try FileManager.default.createDirectory(atPath: MeshKeptFile.path(besides: directory + "/functions.yaml", downstream: "b"), withIntermediateDirectories: true)
        let records = Inbox<String>()
        let a = Zipper(
            configuration: Self.upstreamConfiguration(
                port: portA, downstreamPort: portB, functionsFile: directory + "/functions.yaml", unroutedHold: .off),
            options: Self.upstreamOptions(
                patience: .milliseconds(300), shutdownTimeout: .milliseconds(200),
                logger: Logger(label: "test.a") { _ in CapturingLogHandler(lines: records) }))
        try await a.start()
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        for index in 0..<10 { try await source.write(tag: 0x3c, data: Array("unspooled-\(index)".utf8)) }
        #expect(await eventually { source.client.keptFrames == 0 }, "kept: \(source.client.keptFrames)")
        let said = "the mesh link cannot keep on disk what its receipt patience lets go"
        #expect(records.items.filter { $0.contains(said) }.count == 1, "\(records.items)")
        for index in 10..<20 { try await source.write(tag: 0x3c, data: Array("unspooled-\(index)".utf8)) }
        #expect(await eventually { source.client.keptFrames == 0 }, "kept: \(source.client.keptFrames)")
        #expect(records.items.filter { $0.contains(said) }.count == 1, "once: \(records.items)")
        await source.close()
        await a.close()
    }

    @Test("a frame that waited in a mesh link's queue behind a stuck write and then for the link to reconnect: its mesh link outage span starts when it was queued")
    func linkOutageFromQueueEntry() async throws {
        let portA = try await freePort(), portB = try await freePort()
        let (a, exporter) = try await Self.tracedUpstream(port: portA, downstreamPort: portB)
        func zipperB() -> Zipper {
            Zipper(
                configuration: ZipperConfiguration(name: "b", host: "127.0.0.1", port: portB, authentication: .token("mesh")),
                options: .init(logger: Logger(label: "test.b"), shutdownTimeout: .seconds(1)))
        }
        let b = zipperB()
        try await b.start()
        // b's only function stops reading, so b stops reading the link, and a's link stops writing.
        let gate = Gate()
        var options = stalledOptions(tags: [0x3a])
        options.credential = "token:mesh"
        let stalled = StreamFunction(name: "far", zipper: "127.0.0.1:\(portB)", options: options)
        stalled.setHandler { _ in await gate.wait() }
        try await stalled.connect()
        #expect(await eventually { a.meshLinkHealth.first?.connected == true })
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        var written = 0
        // In batches, the link's queue read between them.
        while (a.meshLinkHealth.first?.queuedFrames ?? 0) < 500, written < 12_000 {
            for _ in 0..<100 { try await source.write(tag: 0x3a, data: [UInt8](repeating: 0x62, count: 1024)) }
            written += 100
            try await Task.sleep(for: .milliseconds(5))
        }
        let queued = try #require(a.meshLinkHealth.first?.queuedFrames)
        #expect(queued >= 500, "the link's queue holds frames behind its stuck write (\(written) written)")
        let cutAt = wallClockNanoseconds()
        // b closes: its upstream links first, so a's link loses its connection with frames in its queue.
        let closing = Task { await b.close() }
        #expect(await eventually { a.meshLinkHealth.first?.connected == false })
        gate.open()
        await closing.value
        await stalled.close()
        let again = zipperB()
        try await again.start()
        let (far, received) = try await Self.farFunction(port: portB, tag: 0x3a)
        #expect(await eventually(within: .seconds(30)) { a.meshLinkHealth.first?.queuedFrames == 0 && received.count > 0 })
        await source.close()
        await far.close()
        await a.close()
        await again.close()
        let waits = exporter.spans.filter { $0.name == "mesh link outage" }
        #expect(!waits.isEmpty)
        // Queued before the cut, each of those waits from then; taken from the queue only after it.
        #expect(waits.contains { $0.startTimeNanoseconds < cutAt }, "\(waits.count) waits, none begun before the cut; \(written) written, \(queued) queued, starts after the cut (ms): \(waits.prefix(5).map { (Double($0.startTimeNanoseconds) - Double(cutAt)) / 1e6 }), received \(received.count)")
        #expect(waits.allSatisfy { $0.endTimeNanoseconds > cutAt })
    }

    @Test("frames a mesh link could not take end their traces with a span that says so, and the line that says so carries one's trace id")
    func linkDropTrace() async throws {
        let logs = InMemoryLogSink()
        let portA = try await freePort(), portB = try await freePort()
        // b never starts: the link's client holds 8 frames while it dials, and drops what its queue hands it after.
        let meters = MeterProvider(configuration: .init(serviceName: "a", environment: [:]))
        let (a, exporter) = try await Self.tracedUpstream(
            port: portA, downstreamPort: portB, queue: .init(maximumFrames: 8, maximumBytes: 1 << 20), meterProvider: meters,
            logger: TracingEndToEndTests.debugLogger("a", logs))
        let source = Source(name: "source", zipper: "127.0.0.1:\(portA)", options: .init(credential: "token:mesh"))
        try await source.connect()
        let count = 24
        for index in 0..<count {
            try await source.write(tag: 0x38, data: Array("frame \(index)".utf8))
            // One at a time: the link takes each from its queue before the next comes, so none finds the queue full.
            #expect(await eventually { a.statistics.meshDroppedFrames + (a.meshLinkHealth.first?.queuedFrames ?? 0) == index + 1 })
        }
        // The sum above holds too while the last frame waits in the queue for the link to drop it.
        #expect(await eventually { a.statistics.meshDroppedFrames == count - 8 }, "\(a.statistics)")
        let dropped = a.statistics.meshDroppedFrames
        let meshDrops = try #require(meters.collect().first { $0.descriptor.name == "yomo.zipper.mesh.dropped.messages" }?.points.first)
        await source.close()
        await a.close()
        let zipperSpans = Dictionary(exporter.spans.filter { $0.name == "zipper endpoint" }.map { ($0.context.spanID, $0) }) { first, _ in first }
        let drops = exporter.spans.filter { $0.name == "zipper drop" }
        #expect(drops.count == dropped, "\(exporter.spans.map(\.name))")
        for drop in drops {
            #expect(drop.status?.code == .error)
            #expect(drop.status?.message?.hasPrefix("dropped: the link to mesh downstream b could not take it") == true, "\(String(describing: drop.status))")
            #expect(drop.attributes.get("yomo.drop.reason") == .string("mesh_link_down"))
            #expect(drop.attributes.get("yomo.mesh.downstream") == .string("b"))
            let parent = try #require(zipperSpans[drop.parentSpanID ?? .random()], "under the zipper's span for the frame")
            #expect(parent.context.traceID == drop.context.traceID)
        }
        let warnings = TracingEndToEndTests.records(logs, "mesh downstream is slow or unreachable: dropping frames for it until it catches up")
        #expect(warnings.count == 1, "one line a burst")
        // The drop count's exemplar is the last dropped frame's span.
        #expect(meshDrops.value == .scalar(Double(dropped)))
        #expect(drops.last.map { $0.context.spanID.description } == meshDrops.exemplar?.spanID, "\(String(describing: meshDrops.exemplar))")
        let warned = warnings.first?["trace_id"] as? String ?? "-"
        #expect(drops.contains { $0.context.traceID.description == warned }, "\(warnings)")
    }

    @Test("a frame a full mesh queue refuses ends its trace with a span under the zipper's, which says so")
    func queueFullDropTrace() async throws {
        let (provider, exporter) = Self.recordingTracer()
        let tracing = DataPathTracer(tracer: provider.tracer("Zipper"))
        // Never run: nothing takes frames from its queue.
        let link = MeshLink(
            peer: .init(name: "b", host: "127.0.0.1", port: 9), zipperName: "a", limits: .init(maximumFrames: 2, maximumBytes: 1 << 20),
            deliveryReceipts: true, tracing: tracing, logger: Logger(label: "test.link"))
        let parents = (0..<5).map { _ in SpanContext(traceID: .random(), spanID: .random()) }
        for (index, parent) in parents.enumerated() {
            link.forward(DataFrame(tag: 0x39, metadata: Metadata().encoded(), payload: ByteBuffer(string: "frame \(index)")), tracedUnder: parent)
        }
        link.forward(DataFrame(tag: 0x39, metadata: Metadata().encoded(), payload: ByteBuffer(string: "unsampled")),
                     tracedUnder: SpanContext(traceID: .random(), spanID: .random(), traceFlags: []))
        #expect(link.dropped == 4)
        await provider.shutdown()
        let drops = exporter.spans.filter { $0.name == "zipper drop" }
        #expect(drops.map(\.parentSpanID) == parents[2...].map(\.spanID), "the three sampled frames past the two queued; the unsampled one records nothing")
        for drop in drops {
            #expect(drop.attributes.get("yomo.drop.reason") == .string("mesh_queue_full"))
            #expect(drop.attributes.get("yomo.mesh.downstream") == .string("b"))
            #expect(drop.status?.message == "dropped: the queue for mesh downstream b was full (mesh_queue max_frames 2, max_bytes 1048576)")
        }
    }

    @Test("a downstream that never answers slows nothing: frames for it are dropped and counted")
    func blackhole() async throws {
        // A UDP port that takes packets and never answers.
        let hole = try Socket.udpBlackhole()
        defer { hole.close() }
        let port = try await freePort()
        let zipper = Self.zipper("a", port: port, mesh: [.init(name: "void", host: "127.0.0.1", port: hole.port)],
                                 queue: .init(maximumFrames: 8, maximumBytes: 1 << 20))
        try await zipper.start()
        let received = Inbox<Int>()
        let near = StreamFunction(name: "near", zipper: "127.0.0.1:\(port)", options: .init(observedTags: [0x33], credential: "token:mesh"))
        near.setHandler { _ in received.append(1) }
        try await near.connect()
        let source = Source(name: "source", zipper: "127.0.0.1:\(port)", options: .init(credential: "token:mesh"))
        try await source.connect()
        let clock = ContinuousClock()
        let started = clock.now
        let count = 3000
        for index in 0..<count { try await source.write(tag: 0x33, data: Array("frame \(index)".utf8)) }
        #expect(await received.wait(for: count))
        let elapsed = clock.now - started
        // Held: the queue (8) and the link's outage buffer (8); the rest dropped.
        #expect(zipper.statistics.meshDroppedFrames >= count - 16, "\(zipper.statistics)")
        #expect(elapsed < .seconds(10), "local routing took \(elapsed)")
        await source.close()
        await near.close()
        await zipper.close()
    }
}

/// A bound UDP socket that reads nothing and answers nothing.
struct Socket {
    let descriptor: Int32
    let port: Int

    static func udpBlackhole() throws -> Socket {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw YoMoError(.invalidConfiguration, "socket() failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { Glibc.close(fd); throw YoMoError(.invalidConfiguration, "bind() failed") }
        return Socket(descriptor: fd, port: Int(UInt16(bigEndian: address.sin_port)))
    }

    func close() { _ = Glibc.close(descriptor) }
}
