import Foundation
import Logging
import NIOCore
import Synchronization
import Testing
import YoMoQUIC
import YoMoWire

@testable import YoMo

/// The aioquic hostile client (Resources/hostile_peer.py): runs `mode` against
/// `port` with `count` connections, returns one line per connection.
func runHostilePeer(_ mode: String, port: Int, count: Int = 1, wait: Double = 8, from local: String? = nil) async throws -> [String] {
    try await runResourceScript(
        "hostile_peer.py", [mode, "127.0.0.1", "\(port)", "\(count)", "\(wait)"],
        environment: local.map { ["LOCAL_ADDRESSES": Array(repeating: $0, count: count).joined(separator: ",")] } ?? [:])
}

/// A Python script of Resources/.
func resourceScript(_ name: String) -> URL {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Resources/\(name)")
}

/// The aioquic hostile client, to run in another network namespace.
let hostilePeerScript = resourceScript("hostile_peer.py")

/// Runs a Python script of Resources/ to its end; returns its output lines.
func runResourceScript(_ name: String, _ arguments: [String], environment: [String: String] = [:]) async throws -> [String] {
    let script = resourceScript(name)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", script.path] + arguments
    if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new } }
    let output = Pipe()
    process.standardOutput = output
    process.standardError = FileHandle.nullDevice
    try process.run()
    let text = await readToEnd(output)
    await waitForExit(process)
    return text.split(separator: "\n").map(String.init)
}

/// Seconds in a hostile peer's `after=` field.
func secondsAfter(_ line: String) -> Double? {
    line.split(separator: " ").first { $0.hasPrefix("after=") }.flatMap { Double($0.dropFirst(6)) }
}

/// A zipper with a short handshake timeout and the given configuration.
func withStrictZipper<T>(
    _ configure: (inout ZipperConfiguration) -> Void = { _ in },
    handshakeTimeout: Duration = .seconds(1),
    logger: Logger = Logger(label: "test.zipper"),
    _ body: (_ address: String, _ zipper: Zipper) async throws -> T
) async throws -> T {
    try await withZipper(configure: configure, handshakeTimeout: handshakeTimeout, logger: logger, body)
}

@Suite("Hostile peers against the zipper (aioquic)", .serialized)
struct HostilePeerTests {
    @Test("peers that never open a stream are closed at the handshake timeout, with a reason")
    func muteWithoutStream() async throws {
        try await withStrictZipper { _, zipper in
            let lines = try await runHostilePeer("mute", port: try #require(zipper.port), count: 20)
            #expect(lines.count == 20)
            for line in lines {
                #expect(line.hasPrefix("CLOSED code=0x13 reason=no stream opened within"), "\(line)")
                // Timeout 1 s; closed well before the peer's own 8 s wait.
                #expect((secondsAfter(line) ?? 99) < 4, "\(line)")
            }
            #expect(zipper.statistics.rejectedHandshakes == 0, "never reached the YoMo layer")
        }
    }

    @Test("a peer that sends 5 bytes of a handshake is closed at the handshake timeout")
    func partialHandshake() async throws {
        try await withStrictZipper { _, zipper in
            let lines = try await runHostilePeer("partial", port: try #require(zipper.port), count: 5)
            #expect(lines.count == 5)
            for line in lines {
                #expect(line.hasPrefix("CLOSED code=0x13 reason=no handshake within"), "\(line)")
                #expect((secondsAfter(line) ?? 99) < 4, "\(line)")
            }
            #expect(zipper.statistics.rejectedHandshakes == 5)
            #expect(zipper.connectionCount == 0)
        }
    }

    @Test("a first frame over the handshake limit is refused at its header, with a reason")
    func oversizedFirstFrame() async throws {
        try await withStrictZipper({ $0.limits.maximumHandshakeSize = 64 << 10 }, handshakeTimeout: .seconds(30)) { _, zipper in
            let lines = try await runHostilePeer("oversized", port: try #require(zipper.port), count: 4)
            #expect(lines.count == 4)
            for line in lines {
                #expect(line.contains("reason=handshake too large"), "\(line)")
                #expect(line.contains("limit 65536 bytes"), "\(line)")
                // Refused at once, not at the 30 s handshake timeout.
                #expect((secondsAfter(line) ?? 99) < 4, "\(line)")
            }
            #expect(zipper.statistics.rejectedHandshakes == 4)
        }
    }

    @Test("garbage, a DataFrame first and a 1 MiB name are each refused with a reason the peer sees")
    func badFirstFrames() async throws {
        try await withStrictZipper(handshakeTimeout: .seconds(30)) { _, zipper in
            let port = try #require(zipper.port)
            let garbage = try await runHostilePeer("garbage", port: port)
            #expect(garbage.first?.contains("reason=bad handshake") == true, "\(garbage)")
            let dataFirst = try await runHostilePeer("data-first", port: port)
            #expect(dataFirst.first?.contains("reason=expected a handshake first, got a DataFrame") == true, "\(dataFirst)")
            let huge = try await runHostilePeer("huge-name", port: port)
            #expect(huge.first?.contains("reason=handshake too large") == true, "\(huge)")
            #expect(zipper.statistics.rejectedHandshakes == 3)
            #expect(zipper.connectionCount == 0)
        }
    }

    @Test("a handshake field over its bound is rejected, and the log line carries a truncated name")
    func longNameRejected() async throws {
        let records = Inbox<String>()
        var logger = Logger(label: "test.zipper") { _ in CapturingLogHandler(lines: records) }
        logger.logLevel = .info
        try await withStrictZipper(logger: logger) { _, zipper in
            let lines = try await runHostilePeer("long-name", port: try #require(zipper.port))
            #expect(lines.first?.contains("reason=handshake name is too long: 1000 bytes, at most 512 bytes") == true, "\(lines)")
            #expect(zipper.statistics.rejectedHandshakes == 1)
        }
        let rejected = records.items.filter { $0.contains("handshake rejected") }
        #expect(rejected.count == 1, "logged once: \(records.items)")
        #expect(rejected.first?.contains("(1000 bytes)") == true, "truncated: \(rejected)")
        #expect(rejected.first?.contains(String(repeating: "n", count: 100)) == false)
        #expect(rejected.first?.contains("remote=127.0.0.1:") == true)
    }

    @Test("at the connection cap new QUIC handshakes go unanswered until mute peers are reaped")
    func connectionCap() async throws {
        try await withStrictZipper({ $0.limits.maximumConnections = 3 }) { _, zipper in
            let port = try #require(zipper.port)
            var quick = QUICConfiguration.default
            quick.handshakeTimeout = .milliseconds(400)
            // Three peers that finish the QUIC handshake and never open their stream.
            var mute: [QUICConnection] = []
            for _ in 0..<3 { mute.append(try await QUICConnection.connect(host: "127.0.0.1", port: port, configuration: quick)) }
            do {
                _ = try await QUICConnection.connect(host: "127.0.0.1", port: port, configuration: quick)
                Issue.record("a fourth connection was accepted over the cap")
            } catch {
                #expect((error as? QUICError)?.kind == .handshakeTimeout, "\(error)")
            }
            // The zipper reaps them at its 1 s handshake timeout; then there is room.
            var admitted = false
            for _ in 0..<20 where !admitted {
                admitted = (try? await QUICConnection.connect(host: "127.0.0.1", port: port, configuration: quick)) != nil
            }
            #expect(admitted)
            // Room opens when the zipper sends its close; each peer reads that close on its own loop, a moment later.
            #expect(await eventually { mute.allSatisfy { $0.closeReason != nil } }, "the mute peers were closed")
            for peer in mute {
                #expect(peer.closeReason.map { "\($0)".contains("no stream opened within 1.0 seconds") } == true,
                        "closed with the zipper's reason: \(String(describing: peer.closeReason))")
            }
        }
    }

    @Test("after the handshake, a reserved tag and an oversized frame close the connection with a reason the peer reads",
          arguments: ["reserved", "oversized"])
    func closeReasonsAfterHandshake(_ fault: String) async throws {
        try await withStrictZipper({ $0.limits.maximumFrameSize = 4096 }) { _, zipper in
            let connection = try await QUICFrameConnection.connect(host: "127.0.0.1", port: try #require(zipper.port))
            try await connection.write(.handshake(HandshakeFrame(
                name: "rude", id: "rude-0", clientType: .source, version: ZipperConfiguration.specVersion)))
            var frames = connection.frames.makeAsyncIterator()
            #expect(try await frames.next() == .handshakeAck)
            let frame = fault == "reserved"
                ? DataFrame(tag: 0xF001, metadata: Metadata(), payload: ByteBuffer(string: "x"))
                : DataFrame(tag: 0x33, metadata: Metadata(), payload: ByteBuffer(repeating: 0x61, count: 8192))
            try await connection.write(.data(frame))
            do {
                while try await frames.next() != nil {}
                Issue.record("the stream ended without a close")
            } catch let error as QUICError {
                #expect(error.kind == .closedByPeer)
                #expect(error.applicationErrorCode == QUICError.yomoCloseCode)
                let expected = fault == "reserved" ? "tag 0xf001 is reserved" : "bad frame: DataFrame of 8"
                #expect(error.reason?.hasPrefix(expected) == true, "\(error)")
            }
            #expect(zipper.statistics.protocolViolations == 1)
        }
    }

    @Test("frames still arriving share the zipper's room: past it a peer waits, held by flow control; a frame that stalls gives its room to one that waits")
    func incompleteFramesShareTheRoom() async throws {
        try await withStrictZipper({
            $0.limits.maximumIncompleteFrameBytes = 8 << 20
            $0.limits.stalledFrameTimeout = .seconds(1)
        }) { address, zipper in
            let received = Inbox<[UInt8]>()
            let sink = StreamFunction(name: "sink", zipper: address, options: .init(observedTags: [0x33]))
            sink.setHandler { received.append($0.data) }
            try await sink.connect()
            // Four peers each send all but 1000 bytes of a 6 MiB frame, then only
            // PINGs: one fits in 8 MiB, three wait. Two cut the frame's header
            // between two reads, so its size is known only from the second.
            let port = try #require(zipper.port)
            async let whole = runHostilePeer("big-partial", port: port, count: 2, wait: 40)
            async let split = runHostilePeer("big-partial-split", port: port, count: 2, wait: 40)
            #expect(await eventually { zipper.incompleteFrames.waitingConnections == 3 }, "three peers wait for room")
            #expect(zipper.incompleteFrames.heldBytes == (6 << 20) + 5, "one frame with its 5-byte header")
            // The one with room sent its frame; those waiting sent no more than
            // their stream's first window (2 MiB): nothing was read to open it.
            var peers: [Int] = []
            #expect(await eventually {
                peers = zipper.clientConnections().filter { $0.member.name == "big" }.map(\.statistics.bytesReceived).sorted()
                return (peers.last ?? 0) > 6 << 20
            }, "the peer with room sent its frame: \(peers)")
            #expect(peers.count == 4)
            #expect(peers.prefix(3).allSatisfy { $0 < 3 << 20 }, "\(peers)")
            // An honest source's 1 MiB frame waits behind them, and gets in once
            // each stalled frame in front has lost its room.
            let source = Source(name: "honest", zipper: address)
            try await source.connect()
            let payload = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            try await source.write(tag: 0x33, data: payload)
            #expect(await received.wait(for: 1, timeout: .seconds(30)))
            #expect(received.items.first == payload)
            await zipper.close()  // the peer still sending gets the zipper's close: the script ends
            let lines = try await whole + split
            #expect(lines.count == 4)
            let stalled = lines.filter { $0.contains("reason=frame stalled: ") && $0.contains(" bytes, nothing more for 1.0 seconds while other connections waited for room") }
            #expect(stalled.count >= 3, "\(lines)")
            // A peer lost its room only after sending all it had: the zipper had let it send the whole frame.
            for line in stalled {
                let granted = line.split(separator: " ").first { $0.hasPrefix("granted=") }.flatMap { Int($0.dropFirst(8)) }
                #expect((granted ?? 0) >= 6 << 20, "\(line)")
            }
            #expect(zipper.statistics.stalledFrames == stalled.count)
            await source.close()
            await sink.close()
        }
    }

    @Test("one address over its share of connections: the next is closed with a reason its client ends on; a freed slot is taken again")
    func connectionsPerAddress() async throws {
        let records = Inbox<String>()
        let logger = Logger(label: "test.zipper") { _ in CapturingLogHandler(lines: records) }
        try await withZipper(configure: { $0.limits.maximumConnectionsPerAddress = 2 }, logger: logger) { address, zipper in
            var sources: [Source] = []
            for index in 0..<2 {
                let source = Source(name: "s\(index)", zipper: address)
                try await source.connect()
                sources.append(source)
            }
            let third = Source(name: "s2", zipper: address)
            let refused = await #expect(throws: YoMoError.self) { try await third.connect() }
            #expect(refused?.message.contains("too many connections from 127.0.0.1 (limit 2)") == true, "\(String(describing: refused))")
            #expect(zipper.statistics.connectionsRefusedPerAddress == 1)
            #expect(zipper.statistics.rejectedHandshakes == 1)
            let warnings = records.items.filter { $0.contains("its address has its share of connections") }
            #expect(warnings.count == 1 && warnings.first?.contains("remote=127.0.0.1") == true && warnings.first?.contains("limit=2") == true,
                    "\(warnings)")
            // A connection that ends frees its slot.
            await sources.removeFirst().close()
            #expect(await eventually { zipper.connectionCount == 1 })
            let fourth = Source(name: "s3", zipper: address)
            try await fourth.connect()
            #expect(zipper.statistics.connectionsRefusedPerAddress == 1)
            await fourth.close()
            for source in sources { await source.close() }
        }
    }

    @Test("every client asked to prove its address with a QUIC Retry (max_unvalidated_handshakes 0): frames flow, the Retries are counted and said once; a client back with the zipper's NEW_TOKEN skips it")
    func addressValidation() async throws {
        let records = Inbox<String>()
        let logger = Logger(label: "test.zipper") { _ in CapturingLogHandler(lines: records) }
        try await withZipper(configure: { $0.limits.maximumUnvalidatedHandshakes = 0 }, logger: logger) { address, zipper in
            let arrived = Inbox<String>()
            let sink = StreamFunction(name: "validated", zipper: address, options: .init(observedTags: [0x61]))
            sink.setHandler { context in arrived.append(String(decoding: context.data, as: UTF8.self)) }
            try await sink.connect()
            let source = Source(name: "validated-source", zipper: address)
            try await source.connect()
            for index in 0..<10 { try await source.write(tag: 0x61, data: Array("frame \(index)".utf8)) }
            #expect(await eventually { arrived.items.count == 10 }, "\(arrived.items)")
            #expect(Set(arrived.items) == Set((0..<10).map { "frame \($0)" }))
            // One Retry for the first client at least (an Initial sent again before the Retry arrived gets another);
            // the second may bring the token the zipper gave the first (one process: one host, one address).
            #expect(zipper.statistics.addressValidationRetries >= 1)
            #expect(zipper.statistics.addressValidationRetries + zipper.statistics.addressTokensAccepted >= 2)
            #expect(zipper.statistics.invalidRetryTokens == 0)
            let said = records.items.filter { $0.contains("many handshakes from unproven addresses: new clients prove theirs with a QUIC Retry first") }
            #expect(said.count == 1 && said.first?.contains("limit=0") == true, "\(said)")
            await source.close()
            // A client back (a redial, a restart) brings the token the zipper gave an earlier connection: no Retry.
            let (retries, accepted) = (zipper.statistics.addressValidationRetries, zipper.statistics.addressTokensAccepted)
            let returning = Source(name: "returning-source", zipper: address)
            try await returning.connect()
            try await returning.write(tag: 0x61, data: Array("back".utf8))
            #expect(await eventually { arrived.items.contains("back") })
            #expect(zipper.statistics.addressTokensAccepted == accepted + 1)
            #expect(zipper.statistics.addressValidationRetries == retries, "no Retry for a client whose token proved its address")
            await returning.close()
            await sink.close()
        }
    }

    @Test("a host that answers Retries but never finishes its QUIC handshakes holds at most its share: the rest are refused, said once, and another host's source gets in")
    func unfinishedHandshakesPerAddress() async throws {
        let records = Inbox<String>()
        let logger = Logger(label: "test.zipper") { _ in CapturingLogHandler(lines: records) }
        try await withStrictZipper({
            $0.limits.maximumQUICHandshakes = 8
            $0.limits.maximumUnvalidatedHandshakes = 0
            $0.limits.maximumPendingHandshakesPerAddress = 2
        }, handshakeTimeout: .seconds(10), logger: logger) { address, zipper in
            // Free while half of the 8 slots are, then held to 2: 4 held (until the zipper gives up on them), 6 refused.
            let peers = Task { try await runHostilePeer("unfinished", port: try #require(zipper.port), count: 10, wait: 2, from: "127.0.0.2") }
            #expect(await eventually { zipper.statistics.quicHandshakesRefusedPerAddress == 6 }, "\(zipper.statistics)")
            // Without the share all 8 slots were theirs, and this source's handshake found none.
            let source = Source(name: "honest", zipper: address)
            try await source.connect()
            await source.close()
            let lines = try await peers.value
            let refused = lines.filter { $0.contains("code=0x2 reason=too many handshakes in progress from 127.0.0.2 (2)") }
            #expect(refused.count == 6 && lines.filter { $0.hasPrefix("OPEN ") }.count == 4, "\(lines)")
            let said = records.items.filter { $0.contains("handshake refused: its address has its share of handshakes in progress") }
            #expect(said.count == 1 && said.first?.contains("remote=127.0.0.2") == true, "\(said)")
        }
    }

    @Test("clients of a trusted network are not held to the per-address share: a third source of 127.0.0.1 gets in")
    func trustedNetworkPassesTheShare() async throws {
        try await withZipper(configure: {
            $0.limits.maximumConnectionsPerAddress = 2
            $0.limits.trustedNetworks = ["127.0.0.0/8"]
        }) { address, zipper in
            var sources: [Source] = []
            for index in 0..<4 {
                let source = Source(name: "s\(index)", zipper: address)
                try await source.connect()
                sources.append(source)
            }
            #expect(zipper.connectionCount == 4)
            #expect(zipper.statistics.connectionsRefusedPerAddress == 0)
            for source in sources { await source.close() }
        }
    }

    @Test("sources of a stream function that stalls: what they may send ahead of the zipper stays within its receive budget, and every frame arrives once the function reads again")
    func receiveWindowBudget() async throws {
        let budget = 1 << 20
        let sourceCount = 6
        let frames = 200
        try await withZipper(configure: { $0.limits.maximumReceiveWindowBytes = budget }) { address, zipper in
            let gate = Gate()
            let arrived = Inbox<String>()
            var options = StreamFunction.Options(observedTags: [0x61])
            // It stops reading soon: the zipper's routing waits, and so its reading of the sources.
            options.maximumHandlerBytes = 256 << 10
            let sink = StreamFunction(name: "stalled", zipper: address, options: options)
            sink.setHandler { context in
                await gate.wait()
                arrived.append(String(decoding: context.data.prefix { $0 != 0x7C }, as: UTF8.self))
            }
            try await sink.connect()
            var writers: [Task<Void, any Error>] = []
            var sources: [Source] = []
            for index in 0..<sourceCount {
                let source = Source(name: "s\(index)", zipper: address)
                try await source.connect()
                sources.append(source)
                writers.append(Task {
                    for sequence in 0..<frames {
                        var payload = Array("\(index):\(sequence)|".utf8)
                        payload += [UInt8](repeating: 0x61, count: 16_384 - payload.count)
                        try await source.write(tag: 0x61, data: payload)
                    }
                })
            }
            // 6 × 200 frames of 16 KiB: far more than the budget lets ahead of the zipper's reading.
            var windows: [Int] = []
            _ = await eventually(within: .seconds(20)) {
                windows.append(zipper.statistics.receiveWindowBytes)
                return windows.count > 20 && windows.suffix(20).allSatisfy { $0 == windows.last }
            }
            let connections = sourceCount + 1
            #expect(windows.allSatisfy { $0 <= budget + connections * 32 << 10 }, "\(windows.max() ?? 0)")
            #expect(windows.contains { $0 > connections * 32 << 10 }, "windows grew past the minimum where the budget allowed")
            // What the zipper's QUIC stack took from the sources and nobody read: held back, within the budget
            // (none at all when each reader took the last bytes its window let in before its routing waited).
            let unread = zipper.clientConnections().filter { $0.member.clientType == .source }.reduce(0) { $0 + $1.unreadBytes }
            #expect(unread <= budget + connections * 32 << 10, "\(unread)")
            #expect(arrived.items.isEmpty)
            gate.open()
            for writer in writers { try await writer.value }
            let expected = Set((0..<sourceCount).flatMap { index in (0..<frames).map { "\(index):\($0)" } })
            #expect(await eventually { Set(arrived.items) == expected }, "\(expected.subtracting(arrived.items).count) frames missing")
            #expect(arrived.items.count == expected.count)
            for source in sources { await source.close() }
            await sink.close()
            #expect(await eventually { zipper.statistics.receiveWindowBytes == 0 }, "closed connections give their windows back")
        }
    }

    @Test("over the pending-handshake cap, new connections are closed with a reason; a client of this SDK turned away dials again and gets in")
    func pendingHandshakeCap() async throws {
        try await withStrictZipper({ $0.limits.maximumPendingHandshakes = 2 }, handshakeTimeout: .seconds(3)) { address, zipper in
            // From another address than the honest source's, so only the global cap is met.
            let peers = Task { try await runHostilePeer("partial", port: try #require(zipper.port), count: 6, from: "127.0.0.2") }
            #expect(await eventually { zipper.statistics.rejectedHandshakes >= 4 }, "\(zipper.statistics)")
            // Both slots held for 3 s: the source is turned away, dials again with its backoff, and is in once they are free.
            var options = Source.Options()
            options.retryConnect = true
            options.reconnect.initialDelay = .milliseconds(200)
            let source = Source(name: "honest", zipper: address, options: options)
            try await source.connect()
            #expect(zipper.statistics.rejectedHandshakes >= 5, "the source was turned away first: \(zipper.statistics)")
            await source.close()
            let lines = try await peers.value
            #expect(lines.count == 6)
            let refused = lines.filter { $0.contains("reason=too many handshakes in progress (2)") }
            let timedOut = lines.filter { $0.contains("reason=no handshake within") }
            #expect(refused.count == 4, "\(lines)")
            #expect(timedOut.count == 2, "\(lines)")
        }
    }

    @Test("one address holds at most its share of the pending handshakes: peers of one host are turned away, another host's client gets in")
    func pendingHandshakesPerAddress() async throws {
        let records = Inbox<String>()
        let logger = Logger(label: "test.zipper") { _ in CapturingLogHandler(lines: records) }
        try await withStrictZipper({
            $0.limits.maximumPendingHandshakes = 4
            $0.limits.maximumPendingHandshakesPerAddress = 2
        }, handshakeTimeout: .seconds(5), logger: logger) { address, zipper in
            let clock = ContinuousClock()
            let started = clock.now
            let peers = Task { try await runHostilePeer("partial", port: try #require(zipper.port), count: 6, wait: 6, from: "127.0.0.2") }
            // Without the share, that host's four took every slot, and none was refused for its address.
            #expect(await eventually { records.items.filter { $0.contains("too many handshakes in progress from 127.0.0.2 (2)") }.count == 4 },
                    "\(records.items.suffix(10))")
            // While its two hold their slots (5 s), a client from 127.0.0.1 is let in.
            let source = Source(name: "honest", zipper: address)
            try await source.connect()
            #expect(clock.now - started < .seconds(4), "in before the host's handshakes timed out")
            await source.close()
            let lines = try await peers.value
            let refused = lines.filter { $0.contains("reason=too many handshakes in progress from 127.0.0.2 (2)") }
            #expect(refused.count == 4 && lines.filter { $0.contains("reason=no handshake within") }.count == 2, "\(lines)")
        }
    }
}
