import Foundation
import Logging
import NIOCore
import Testing
import YoMoQUIC
import YoMoWire
import YoMoZipperYAML

@testable import YoMo

@Suite("Delivery receipts", .serialized)
struct DeliveryReceiptTests {
    /// A zipper in this process and a function recording the text of every frame of tag 0x33.
    func zipperWithSink(receipts: Bool = true) async throws -> (Zipper, String, StreamFunction, Inbox<String>) {
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0, deliveryReceipts: receipts))
        try await zipper.start()
        let address = try #require(zipper.address)
        let received = Inbox<String>()
        let sink = StreamFunction(name: "sink", zipper: address, options: .init(observedTags: [0x33]))
        sink.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await sink.connect()
        return (zipper, address, sink, received)
    }

    @Test("a zipper killed while it held frames its QUIC stack had acknowledged: with receipts the source sends them again and a function gets every one; without, they went with the zipper",
          arguments: [true, false])
    func killedZipperLosesNothingHeld(receipts: Bool) async throws {
        let zipper = try await ZipperProcess(port: try await freePort())
        let source = Source(name: "writer", zipper: zipper.address, options: .init(retryConnect: true, deliveryReceipts: receipts))
        try await source.connect()
        #expect(source.client.receiptsForTesting == receipts, "a zipper of this SDK sends receipts to a client that asks")
        // No function observes the tag: the zipper holds its frames (in its
        // first minute, for any function that comes) in memory only.
        let texts = (0..<20).map { "held-\($0)" }
        for text in texts { try await source.write(tag: 0x35, data: Array(text.utf8)) }
        #expect(await eventually { source.client.unacknowledgedBytesForTesting == 0 }, "the zipper's QUIC stack has them all")
        // With receipts they are kept until a function has them; without, the acknowledgement let them go.
        #expect(await eventually { source.client.keptFrames == (receipts ? 20 : 0) },
                "kept: \(source.client.keptFrames)")

        await zipper.kill()
        try await zipper.restart()
        let received = Inbox<String>()
        // One handler at a time: the frames are recorded in the order they arrive.
        let sink = StreamFunction(name: "sink", zipper: zipper.address, options: .init(observedTags: [0x35], retryConnect: true, handlerConcurrency: 1))
        sink.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await sink.connect()
        if receipts {
            // Waits across the source's reconnection: what it sends again must reach the function.
            try await source.flush(timeout: .seconds(20))
            #expect(await eventually { texts.allSatisfy(received.items.contains) }, "\(received.items)")
        }
        #expect(try await writeUntilReceived(source, tag: 0x35, "after", received))
        if receipts {
            #expect(await eventually { texts.allSatisfy(received.items.contains) }, "\(received.items)")
            #expect(firstArrivals(received.items.filter { $0.hasPrefix("held-") }) == texts, "in the order written")
            // And any "after" written into the dead connection before the source noticed.
            #expect(source.outageStatistics.resent >= 20)
        } else {
            #expect(!texts.contains(where: received.items.contains), "\(received.items)")
        }
        await source.close()
        await sink.close()
        await zipper.kill()
    }

    @Test("a function killed with frames on their way to it, then its zipper: what the zipper took back from the function's connection and held for its return is sent again by the source, and reaches the function that comes back")
    func killedZipperLosesNothingTakenBack() async throws {
        let metricsPort = try await freeTCPPort()
        let zipper = try await ZipperProcess(port: try await freePort(), arguments: ["--metrics", "127.0.0.1:\(metricsPort)"])
        var function = try startFunctionProcess(zipper: zipper.address, pipe: true)
        defer { if function.isRunning { kill(function.processIdentifier, SIGKILL) } }
        let (sink, received) = try await connectUppercaseSink(zipper: zipper.address, retryConnect: true)
        let source = Source(name: "writer", zipper: zipper.address, options: .init(retryConnect: true))
        try await source.connect()
        var written: [String] = []
        func write() async throws {
            let text = "frame-\(written.count)"
            written.append(text.uppercased())
            try await source.write(tag: 0x33, data: Array((text + ":").utf8))
        }
        for _ in 0..<10 { try await write() }
        #expect(await received.wait(for: 10))
        /// The sum of `name`'s series on the zipper's /metrics whose lines contain each of `labels`.
        func metric(_ name: String, _ labels: String...) async -> Double {
            await scrapedMetric(port: metricsPort, name, labels: labels) ?? 0
        }
        // Frozen first, so that what the zipper writes to it now stays unacknowledged.
        try await freeze(function)
        for _ in 0..<5 { try await write() }
        // All five written to it (and, the function stopped, not acknowledged).
        #expect(await eventuallyAsync { await metric("yomo_zipper_routed_messages_total", "outcome=\"delivered\"", "\"0x33\"") == 15 })
        kill(function.processIdentifier, SIGKILL)
        await waitForExit(function)
        // The zipper's retransmissions to it draw ICMP port unreachables: its
        // connection ends, and the five frames it had not acknowledged are held for its return.
        let heldAtItsEnd = await eventuallyAsync { await metric("yomo_zipper_unacknowledged_held_messages_total") >= 5 }
        let held = await metric("yomo_zipper_unacknowledged_held_messages_total")
        #expect(heldAtItsEnd, "held at its end: \(held)")
        // They are in the zipper's memory only: the source still keeps them
        // (and maybe earlier ones, whose checkpoint waits for the function's
        // connection too), well within the hold's 5 s.
        let kept = source.client.keptFrames
        #expect(kept >= 5, "kept \(kept) frames, with 5 held at the function's end")

        await zipper.kill()
        try await zipper.restart()
        function = try startFunctionProcess(zipper: zipper.address, pipe: true)
        #expect(await eventually(within: .seconds(30)) { Set(received.items).isSuperset(of: written) },
                "missing \(Set(written).subtracting(received.items).sorted())")
        await source.close()
        await sink.close()
        await zipper.kill()
    }

    @Test("a zipper killed, then its stream function, whose pipe handler had a backlog: its source kept what the function had not taken, and the function's next instance answers every frame the source kept")
    func doubleFaultWithABacklog() async throws {
        let path = try await BacklogPath(handlerDelayMs: 600_000)
        defer { path.killFunction() }
        let (zipper, source, received, texts) = (path.zipper, path.source, path.received, path.texts)
        // The pipe handler takes the first and waits ten minutes: taken, so settled.
        try await path.write(texts.prefix(1))
        #expect(await eventually(within: .seconds(20)) { source.client.keptFrames == 0 }, "kept \(source.client.keptFrames)")
        // The rest queue behind it, acknowledged by the function's QUIC stack.
        try await path.write(texts.dropFirst())
        #expect(await eventuallyAsync { await wroteToUpper(10, metricsPort: path.metricsPort) })
        // They stay with the source: settled only within the function's pace
        // (a frame at most here) past what it took. Before, all were settled once
        // the function acknowledged them, and a double fault lost them.
        let kept = source.client.keptFrames
        #expect((8...9).contains(kept), "kept \(kept)")

        await zipper.kill()
        try await zipper.restart()
        // The source sends what it kept again; the function, back on the new
        // zipper, has them queued already (not handled twice) and acknowledges
        // them: the zipper keeps them for want of its handlers' word.
        let unhandled = await eventuallyAsync(within: .seconds(30)) {
            (await path.metric("yomo_zipper_client_unhandled_bytes", "yomo_client_name=\"upper\"") ?? 0) > 0
        }
        #expect(unhandled, "the new zipper keeps what the function acknowledged and has not handled")
        try await path.restartFunction()
        // At least the last eight, whatever the pace let go.
        let backlog = texts.suffix(8).map { $0.uppercased() }
        #expect(await eventually(within: .seconds(30)) { Set(received.items).isSuperset(of: backlog) },
                "missing \(Set(backlog).subtracting(received.items).sorted())")
        try await source.flush(timeout: .seconds(20))
        await path.close()
    }

    @Test("a zipper killed twice in a row while a stream function works off a backlog: the source's copies reach the function only on its third connection, and each frame is answered once")
    func copiesAfterTwoZipperKills() async throws {
        // The source redials 3 s after it notices: the function is back on each zipper first.
        let late = ReconnectPolicy(firstRetryDelay: .seconds(3) ... .seconds(3), initialDelay: .seconds(3), maximumDelay: .seconds(3))
        let path = try await BacklogPath(handlerDelayMs: 500, sourceReconnect: late)
        defer { path.killFunction() }
        let (zipper, source, received, texts) = (path.zipper, path.source, path.received, path.texts)
        try await path.write(texts)
        // All ten at the function, the first in its handler: five seconds of work.
        #expect(await eventuallyAsync { await wroteToUpper(10, metricsPort: path.metricsPort) })
        for _ in 0..<2 {
            await zipper.kill()
            try await zipper.restart()
            // The function, back on it before the source; the second kill ends
            // a connection that brought no copies.
            #expect(await eventuallyAsync { await upperConnected(metricsPort: path.metricsPort) })
        }
        // The source sends again what the function had not taken at the first
        // kill (nine: each its own checkpoint); by then the function handled
        // most of them from its queue. Before, it knew only its last
        // connection's frames and handled each again.
        try await source.flush(timeout: .seconds(30))
        try await source.write(tag: 0x33, data: Array("last:".utf8))
        #expect(await eventually(within: .seconds(30)) { received.items.contains("LAST") }, "\(received.items)")
        let answers = received.items.filter { $0 != "LAST" }
        #expect(answers.sorted() == texts.map { $0.uppercased() }.sorted(), "\(answers)")
        await path.close()
    }

    @Test("a backlog a source sends again in one burst after its zipper's crash is settled frame by frame as the function works it off: a second crash brings back only what it had not handled, and each frame is answered once")
    func burstSettlesFrameByFrame() async throws {
        let path = try await BacklogPath(handlerDelayMs: 700)
        defer { path.killFunction() }
        let (zipper, source, received, texts) = (path.zipper, path.source, path.received, path.texts)
        try await path.write(texts)
        // The first in the pipe handler, the rest queued: the source keeps those.
        #expect(await eventuallyAsync { await wroteToUpper(10, metricsPort: path.metricsPort) })
        #expect(await eventually(within: .seconds(20)) { (8...9).contains(source.client.keptFrames) }, "kept \(source.client.keptFrames)")
        await zipper.kill()
        try await zipper.restart()
        // The source sends what it kept again, at once: copies of what the
        // function has queued, finished as it handles those. Before, they
        // were settled as one, when the last was handled.
        #expect(await eventually(within: .seconds(30)) { received.items.contains("FRAME-4") }, "\(received.items)")
        let kept = await eventually(within: .seconds(5)) { source.client.keptFrames <= 5 }
        #expect(kept, "kept \(source.client.keptFrames) of the nine sent again, with five handled")
        // The answer just given may still wait for its receipt (a few
        // milliseconds): the function sends it again after the crash, and the
        // sink, done with it, takes it twice. At least once, by design.
        let lastBeforeTheCrash = received.items.last
        await zipper.kill()
        try await zipper.restart()
        // What the function handled and forgot stays settled: nothing else answered twice
        // (before, the four it had handled of the nine).
        try await source.flush(timeout: .seconds(30))
        try await source.write(tag: 0x33, data: Array("last:".utf8))
        #expect(await eventually(within: .seconds(30)) { received.items.contains("LAST") }, "\(received.items)")
        let answers = received.items.filter { $0 != "LAST" }
        #expect(Set(answers) == Set(texts.map { $0.uppercased() }), "\(answers)")
        let twice = Set(answers.filter { answer in answers.filter { $0 == answer }.count > 1 })
        #expect(twice.isSubset(of: [lastBeforeTheCrash].compactMap { $0 }), "\(answers)")
        await path.close()
    }

    @Test("an acknowledgement settles what a function took and its last 50 ms of pace beyond: nothing beyond while it takes nothing, its pace over a longer span scaled to 50 ms")
    func takingPace() {
        var pace = TakingPace()
        let start = ContinuousClock.now
        func at(_ milliseconds: Int) -> ContinuousClock.Instant { start + .milliseconds(milliseconds) }
        #expect(pace.settleable(taken: 100, progress: 100, at: at(0)) == 100, "no pace yet")
        #expect(pace.settleable(taken: 300, progress: 300, at: at(5)) == 500, "young: all it took so far")
        #expect(pace.settleable(taken: 500, progress: 500, at: at(20)) == 900)
        #expect(pace.settleable(taken: 500, progress: 500, at: at(100)) == 500, "took nothing in the last 50 ms")
        #expect(pace.settleable(taken: 600, progress: 600, at: at(1100)) == 605, "100 bytes in a second: 5 in 50 ms")
        #expect(pace.settleable(taken: 600, progress: 600, at: at(1105)) == 604, "not a sample of its own: the same bytes over 1,005 ms")
        // Measured on the bytes handlers took: the end of what was taken
        // jumping past frames none took (copies finished at once) is no pace.
        var counted = TakingPace()
        #expect(counted.settleable(taken: 100, progress: 50, at: at(0)) == 100)
        #expect(counted.settleable(taken: 2_100, progress: 50, at: at(5)) == 2_100, "copies: nothing beyond")
        #expect(counted.settleable(taken: 2_200, progress: 150, at: at(20)) == 2_300, "one frame of 100 bytes taken: 100 beyond")
    }

    @Test("a zipper measures a function's pace on the bytes its handlers took: a receipt whose end of what was taken jumps past frames no handler took (copies finished as they were read) settles nothing beyond that end for the source")
    func paceOnTakenBytes() async throws {
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0))
        try await zipper.start()
        let port = try #require(zipper.port)
        // A stream function of the tests' own: it reads, and says what it likes.
        var (function, frames, _) = try await rawHandlingFunction(port: port)
        let source = Source(name: "writer", zipper: "127.0.0.1:\(port)")
        try await source.connect()
        for index in 0..<20 { try await source.write(tag: 0x33, data: Array("frame-\(index)".utf8)) }
        var ends: [Int] = []
        var firstLength = 0
        while ends.count < 20, let frame = try await frames.next() {
            guard case .data(let data) = frame else { continue }
            if ends.isEmpty { firstLength = data.encodedLength }
            ends.append(frames.consumedBytes)
        }
        // A handler took the first frame; the next nine were copies of frames
        // handled before, finished as they were read: taken through the tenth,
        // the bytes taken still the first frame's.
        try await function.write(.receipt(ReceiptFrame(
            settledThrough: UInt64(ends[0]), takenThrough: UInt64(ends[0]), takenBytes: UInt64(firstLength))))
        try await function.write(.receipt(ReceiptFrame(
            settledThrough: UInt64(ends[9]), takenThrough: UInt64(ends[9]), takenBytes: UInt64(firstLength))))
        // The ten after are kept by the source: measured on the end of what
        // was taken, the jump read as a pace of nine frames and settled them.
        #expect(await eventually { source.client.keptFrames <= 10 }, "kept \(source.client.keptFrames)")
        #expect(source.client.keptFrames == 10, "kept \(source.client.keptFrames)")
        await source.close()
        await function.close()
        await zipper.close()
    }

    @Test("a function that may say what it took settles nothing at acknowledgement before its first receipt (held frames written at its join, before the zipper reads it); one whose receipts say nothing of it, at acknowledgement")
    func settlesAtAcknowledgementOnlyOnceTold() {
        let progress = ConnectionProgress()
        let reporting = DeliveryDestination(progress, reportsTaking: true)
        let older = DeliveryDestination(progress)
        progress.acknowledge(300)
        #expect(!reporting.reached(300), "acknowledged, and nothing told yet")
        #expect(older.reached(300))
        reporting.took(through: 100)
        #expect(reporting.reached(100) && !reporting.reached(300))
        reporting.tellsNothingTaken()
        #expect(reporting.reached(300), "its receipts do not say what it took: acknowledgement settles")
        // A closing function's receipts settle only what it took, its pace aside.
        let start = ContinuousClock.now
        let closing = DeliveryDestination(progress, reportsTaking: true)
        closing.took(through: 100, bytes: 100, at: start)
        closing.took(through: 150, bytes: 150, at: start + .milliseconds(20))
        #expect(closing.reached(200), "50 bytes taken in 20 ms: that much beyond")
        closing.settleOnlyWhatIsTaken()
        closing.took(through: 160, bytes: 160, at: start + .milliseconds(40))
        #expect(closing.reached(160) && !closing.reached(161), "closing: only what it took")
        var batch = ReceiptLedger.Batch()
        batch.add(older, endingAt: 300)
        #expect(!batch.endsCheckpoint, "settled at acknowledgement: one checkpoint a burst")
        batch.add(DeliveryDestination(progress, reportsTaking: true), endingAt: 300)
        #expect(batch.endsCheckpoint, "waits for the function to take it: a checkpoint of its own")
    }

    @Test("frames from upstream zippers written to a function are keyed until its receipts say it finished them: in order, or in ranges handled ahead; told once. A key is the frame's id, tag and payload's shape")
    func finishedLinkFrames() {
        let function = DeliveryDestination(ConnectionProgress(), reportsTaking: true)
        #expect(function.finishedLinkFrames(through: 1_000, ahead: []).isEmpty, "none written")
        let key = { (n: UInt64) in CopyDigest(fnv: n, mix: n) }
        for end in stride(from: 100, through: 500, by: 100) { function.wroteLinkFrame(endingAt: end, digest: key(UInt64(end))) }
        #expect(function.finishedLinkFrames(through: 99, ahead: []).isEmpty)
        #expect(function.finishedLinkFrames(through: 200, ahead: []) == [key(100), key(200)])
        // A range runs from the end of the frame before its first to the end of its last: 400 alone.
        #expect(function.finishedLinkFrames(through: 200, ahead: [300..<400]) == [key(400)])
        #expect(function.finishedLinkFrames(through: 200, ahead: [300..<400]).isEmpty, "told once")
        #expect(function.finishedLinkFrames(through: 500, ahead: []) == [key(300), key(500)])
        // A connection's end takes back what was not finished: the mesh's frames among them keep their keys.
        for end in [600, 700, 800] { function.wroteLinkFrame(endingAt: end, digest: key(UInt64(end))) }
        #expect(function.linkDigests(endingAt: [550, 600, 800, 900]) == [600: key(600), 800: key(800)])
        #expect(function.linkDigests(endingAt: []).isEmpty)

        func frame(_ tid: String?, tag: UInt32 = 0x33, _ payload: String) -> DataFrame {
            tid.map { HandlingReceiptTests.dataFrame(tid: $0, tag: tag, payload) } ?? DataFrame(tag: tag, payload: ByteBuffer(string: payload))
        }
        let digest = CopyKey.digest(of: frame("tid-1", "payload"))
        #expect(digest != nil && digest == CopyKey.digest(of: frame("tid-1", "payload")), "a copy")
        #expect(digest != CopyKey.digest(of: frame("tid-2", "payload")))
        #expect(digest != CopyKey.digest(of: frame("tid-1", tag: 0x34, "payload")), "an answer of the transaction")
        #expect(digest != CopyKey.digest(of: frame("tid-1", "payload, second part")))
        #expect(CopyKey.digest(of: frame(nil, "payload")) == nil, "no id: nothing to know it by")
    }

    @Test("a connection lost while its zipper lives on: the zipper knows the reconnection, and what it had routed of the lost connection is not sent again, but kept until settled",
          arguments: [true, false])
    func reconnectionToALiveZipper(receipts: Bool) async throws {
        let (zipper, address, sink, received) = try await zipperWithSink()
        let fast = ReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(100))
        let source = Source(name: "writer", zipper: address, options: .init(reconnect: fast, deliveryReceipts: receipts))
        try await source.connect()
        // The receipts are lost on the way, as a path that breaks loses them.
        zipper.pauseReceiptsForTesting(true)
        let texts = (0..<20).map { "frame-\($0)" }
        for text in texts { try await source.write(tag: 0x33, data: Array(text.utf8)) }
        #expect(await received.wait(for: 20))
        #expect(await eventually { source.client.unacknowledgedBytesForTesting == 0 })
        #expect(source.client.keptFrames == (receipts ? 20 : 0))
        await source.client.dropConnectionForTesting()
        #expect(await eventually { source.client.reconnectCountForTesting == 1 && source.client.isConnected })
        // The resumed connection keeps them until a receipt says they are settled.
        #expect(source.client.keptFrames == (receipts ? 20 : 0))
        zipper.pauseReceiptsForTesting(false)
        #expect(try await writeUntilReceived(source, tag: 0x33, "after", received))
        #expect(await eventually { source.client.keptFrames == 0 })
        for text in texts { #expect(received.items.filter { $0 == text }.count == 1, "\(text) once") }
        #expect(source.outageStatistics.resent == 0)
        await source.close()
        await sink.close()
        await zipper.close()
    }

    @Test("receipts let a source forget what functions acknowledged; a zipper with receipts off sends none, and its clients keep frames until acknowledged",
          arguments: [true, false])
    func receiptsSettle(zipperSendsReceipts: Bool) async throws {
        let (zipper, address, sink, received) = try await zipperWithSink(receipts: zipperSendsReceipts)
        let source = Source(name: "writer", zipper: address)
        try await source.connect()
        #expect(source.client.receiptsForTesting == zipperSendsReceipts)
        for index in 0..<50 { try await source.write(tag: 0x33, data: Array("frame-\(index)".utf8)) }
        #expect(await received.wait(for: 50))
        #expect(await eventually { source.client.keptFrames == 0 }, "kept: \(source.client.keptFrames)")
        if zipperSendsReceipts {
            #expect(zipper.statistics.deliveryReceipts > 0)
        } else {
            #expect(zipper.statistics.deliveryReceipts == 0)
        }
        await source.close()
        await sink.close()
        await zipper.close()
    }

    @Test("flush() waits until a function has every frame written: it times out while the zipper holds them, and returns once a function has them; from a zipper without receipts, once acknowledged",
          arguments: [true, false])
    func flush(zipperSendsReceipts: Bool) async throws {
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0, deliveryReceipts: zipperSendsReceipts))
        try await zipper.start()
        let address = try #require(zipper.address)
        let source = Source(name: "writer", zipper: address)
        let early = await #expect(throws: YoMoError.self) { try await source.flush() }
        #expect(early?.code == .notConnected)
        try await source.connect()
        try await source.flush()  // nothing written yet
        let received = Inbox<String>()
        func connectSink() async throws -> StreamFunction {
            let sink = StreamFunction(name: "sink", zipper: address, options: .init(observedTags: [0x35]))
            sink.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
            try await sink.connect()
            return sink
        }
        // The function that observes the tag leaves: the zipper holds its frames for its return (5 s).
        try await connectSink().close()
        #expect(await eventually { zipper.connectionCount == 1 })
        let texts = (0..<20).map { "held-\($0)" }
        for text in texts { try await source.write(tag: 0x35, data: Array(text.utf8)) }
        if zipperSendsReceipts {
            let waited = await #expect(throws: YoMoError.self) { try await source.flush(timeout: .milliseconds(300)) }
            #expect(waited?.code == .timedOut)
            #expect(waited?.message.contains("20 kept on the connection") == true, "\(String(describing: waited))")
        } else {
            try await source.flush()
            #expect(source.client.unacknowledgedBytesForTesting == 0, "returned once the zipper acknowledged them, though it holds them")
        }
        let sink = try await connectSink()
        try await source.flush()
        #expect(source.client.keptFrames == 0)
        #expect(await received.wait(for: 20))
        await source.close()
        let closed = await #expect(throws: YoMoError.self) { try await source.flush() }
        #expect(closed?.code == .closed)
        await sink.close()
        await zipper.close()
    }

    @Test("a frame held for any function that comes (the zipper's first minute) is settled once one has it: the source does not keep it, and every frame after it, until the hold's deadline")
    func heldForAnyArrivalSettlesWhenTaken() async throws {
        var configuration = ZipperConfiguration(host: "127.0.0.1", port: 0)
        // A deadline no test waits out: settled by then would prove nothing.
        configuration.unroutedHold = .init(duration: .seconds(120))
        let zipper = Zipper(configuration: configuration)
        try await zipper.start()
        let address = try #require(zipper.address)
        let source = Source(name: "writer", zipper: address)
        try await source.connect()
        // No function observes the tag yet: held for whichever comes.
        try await source.write(tag: 0x36, data: Array("first".utf8))
        #expect(await eventually { zipper.statistics.heldFrames == 1 })
        let received = Inbox<String>()
        let function = StreamFunction(name: "late", zipper: address, options: .init(observedTags: [0x36]))
        function.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await function.connect()
        let texts = (1...20).map { "after-\($0)" }
        for text in texts { try await source.write(tag: 0x36, data: Array(text.utf8)) }
        #expect(await received.wait(for: 21))
        #expect(await eventually { source.client.keptFrames == 0 }, "kept: \(source.client.keptFrames)")
        try await source.flush(timeout: .seconds(5))
        await source.close()
        await function.close()
        await zipper.close()
    }

    @Test("a zipper that announces receipts and sends none: its client keeps at most 64 MiB unsettled, older frames only until acknowledged, and says so once")
    func keptBound() async throws {
        var answer = Frame.receipt(ReceiptFrame(settledThrough: 0)).encoded()
        answer.writeImmutableBuffer(Frame.handshakeAck.encoded())
        let zipper = try await HostileZipper(answer: answer)
        let records = Inbox<String>()
        let source = Source(name: "writer", zipper: zipper.address, options: .init(logger: Logger(label: "test") { _ in CapturingLogHandler(lines: records) }))
        try await source.connect()
        #expect(source.client.receiptsForTesting)
        let payload = [UInt8](repeating: 0x61, count: 1 << 20)
        for _ in 0..<72 { try await source.write(tag: 0x33, data: payload) }
        #expect(await eventually { zipper.received.count == 72 && source.client.unacknowledgedBytesForTesting == 0 })
        let kept = source.client.keptFrames
        #expect(kept < 72 && kept >= 48, "kept \(kept) of 72 frames of 1 MiB")
        #expect(records.items.filter { $0.contains("has not settled 64 MiB of frames") }.count == 1, "\(records.items)")
        await source.close()
    }

    @Test("YOMO_DELIVERY_RECEIPTS: a client asks for receipts unless it says false, 0, no or off")
    func environment() {
        #expect(ClientSettings.deliveryReceipts([:]))
        for off in ["false", "FALSE", "0", "no", "off"] { #expect(!ClientSettings.deliveryReceipts(["YOMO_DELIVERY_RECEIPTS": off]), "\(off)") }
        for on in ["true", "1", "yes", "on"] { #expect(ClientSettings.deliveryReceipts(["YOMO_DELIVERY_RECEIPTS": on]), "\(on)") }
    }

    @Test("delivery_receipts in a zipper's YAML: on by default, false turns them off, anything else is refused")
    func yaml() throws {
        #expect(try ZipperConfiguration(yaml: "name: z").deliveryReceipts)
        #expect(try !ZipperConfiguration(yaml: "delivery_receipts: false").deliveryReceipts)
        #expect(try ZipperConfiguration(yaml: "delivery_receipts: yes").deliveryReceipts)
        let error = try #require(throws: YoMoError.self) { try ZipperConfiguration(yaml: "delivery_receipts: 10ms") }
        #expect(error.message.contains("delivery_receipts must be true or false"), "\(error)")
    }

    @Test("on the wire: the first receipt precedes the acknowledgement and names the handshake's end; later ones fall on frame ends; a client that does not ask (Go's) gets Go's bytes")
    func wire() async throws {
        let (zipper, _, sink, received) = try await zipperWithSink()
        let port = try #require(zipper.port)

        // Go's way first: no field, no receipt.
        let plain = try await QUICFrameConnection.connect(host: "127.0.0.1", port: port)
        try await plain.write(.handshake(HandshakeFrame(name: "go", id: "go-0", clientType: .source, version: yomoSpecVersion)))
        var plainFrames = plain.frames.makeAsyncIterator()
        #expect(try await plainFrames.next() == .handshakeAck)
        try await plain.write(.data(DataFrame(tag: 0x33, payload: ByteBuffer(string: "go"))))
        #expect(await received.wait(for: 1))

        let asking = try await QUICFrameConnection.connect(host: "127.0.0.1", port: port)
        let handshakeEnd = try await asking.write(.handshake(HandshakeFrame(
            name: "swift", id: "swift-0", clientType: .source, version: yomoSpecVersion, wantsReceipts: true)))
        var frames = asking.frames.makeAsyncIterator()
        #expect(try await frames.next() == .receipt(ReceiptFrame(settledThrough: UInt64(handshakeEnd))))
        #expect(try await frames.next() == .handshakeAck)
        var ends: [Int] = []
        for index in 0..<3 {
            ends.append(try await asking.write(.data(DataFrame(tag: 0x33, payload: ByteBuffer(string: "swift-\(index)")))))
        }
        var receipts: [UInt64] = []
        while receipts.last != UInt64(ends[2]) {
            guard case .receipt(let receipt)? = try await frames.next() else { Issue.record("not a receipt"); break }
            receipts.append(receipt.settledThrough)
        }
        #expect(receipts.allSatisfy { ends.map(UInt64.init).contains($0) }, "\(receipts) against frame ends \(ends)")
        #expect(receipts == receipts.sorted() && Set(receipts).count == receipts.count, "\(receipts)")
        #expect(await received.wait(for: 4))
        // Every receipt the zipper sent went to the client that asked (counted
        // once queued, which may be a moment after the client read it).
        #expect(await eventually { zipper.statistics.deliveryReceipts == receipts.count },
                "the first, before the acknowledgement, is not counted: \(zipper.statistics.deliveryReceipts) against \(receipts.count)")
        await plain.close()
        await asking.close()
        await sink.close()
        await zipper.close()
    }
}

/// The tests of a function's backlog: a `yomo serve` with /metrics,
/// `uppercase-sfn` with a pipe handler that takes `handlerDelayMs` a frame,
/// the uppercase sink and a source, all of them redialling; ten texts to write.
final class BacklogPath {
    let metricsPort: Int
    let zipper: ZipperProcess
    private(set) var function: Process
    let sink: StreamFunction
    let received: Inbox<String>
    let source: Source
    let texts = (0..<10).map { "frame-\($0)" }

    init(handlerDelayMs: Int, sourceReconnect: ReconnectPolicy = .default) async throws {
        metricsPort = try await freeTCPPort()
        zipper = try await ZipperProcess(port: try await freePort(), arguments: ["--metrics", "127.0.0.1:\(metricsPort)"])
        function = try startFunctionProcess(zipper: zipper.address, pipe: true, handlerDelayMs: handlerDelayMs)
        (sink, received) = try await connectUppercaseSink(zipper: zipper.address, retryConnect: true)
        // The function connected before the source writes: else the zipper holds the first frames
        // for it and settles them otherwise (once seen here: every frame settled, none kept).
        let port = metricsPort
        #expect(await eventuallyAsync { await upperConnected(metricsPort: port) }, "the function never connected")
        source = Source(name: "writer", zipper: zipper.address, options: .init(reconnect: sourceReconnect, retryConnect: true))
        try await source.connect()
    }

    /// Writes each text, with the ":" the sink cuts at.
    func write(_ texts: some Sequence<String>) async throws {
        for text in texts { try await source.write(tag: 0x33, data: Array((text + ":").utf8)) }
    }

    func metric(_ name: String, _ labels: String...) async -> Double? {
        await scrapedMetric(port: metricsPort, name, labels: labels)
    }

    /// Kills the function and starts a new instance, whose handler does not wait.
    func restartFunction() async throws {
        killFunction()
        await waitForExit(function)
        function = try startFunctionProcess(zipper: zipper.address, pipe: true)
    }

    func killFunction() { if function.isRunning { kill(function.processIdentifier, SIGKILL) } }

    func close() async {
        await source.close()
        await sink.close()
        await zipper.kill()
    }
}

/// The sum of `name`'s series on the /metrics page at `port` whose lines
/// contain each of `labels`; nil when none does.
func scrapedMetric(port: Int, _ name: String, labels: [String]) async -> Double? {
    seriesValue(await httpGet("http://127.0.0.1:\(port)/metrics")?.body ?? "", name, labels: labels)
}

/// A stream function of a test's own, `raw` observing 0x33, connected to the
/// zipper on `port` with handling receipts welcomed: its frames after the
/// handshake's answer, and the zipper's first receipt.
func rawHandlingFunction(port: Int) async throws -> (QUICFrameConnection, QUICFrameConnection.Frames.AsyncIterator, welcome: ReceiptFrame) {
    let function = try await QUICFrameConnection.connect(host: "127.0.0.1", port: port)
    try await function.write(.handshake(HandshakeFrame(
        name: "raw", id: "raw-0", clientType: .streamFunction, observedTags: [0x33], version: yomoSpecVersion,
        wantsReceipts: true, acknowledgesHandling: true)))
    var frames = function.frames.makeAsyncIterator()
    guard case .receipt(let welcome)? = try await frames.next(), welcome.welcomesHandling else {
        throw YoMoError(.rejected, "no welcome for handling receipts")
    }
    guard try await frames.next() == .handshakeAck else { throw YoMoError(.rejected, "no handshake acknowledgement") }
    return (function, frames, welcome)
}

/// Whether the stream function `upper` is connected to the zipper serving metrics on `port`.
func upperConnected(metricsPort port: Int) async -> Bool {
    await scrapedMetric(port: port, "yomo_zipper_client_unacknowledged_bytes", labels: ["yomo_client_name=\"upper\""]) != nil
}

/// Whether a zipper serving metrics on `port` wrote `count` frames of tag
/// 0x33 to the stream function `upper`, and its QUIC stack acknowledged them all.
func wroteToUpper(_ count: Int, metricsPort port: Int) async -> Bool {
    let routed = await scrapedMetric(port: port, "yomo_zipper_routed_messages_total", labels: ["outcome=\"delivered\"", "\"0x33\""])
    let unacknowledged = await scrapedMetric(port: port, "yomo_zipper_client_unacknowledged_bytes", labels: ["yomo_client_name=\"upper\""])
    return routed == Double(count) && unacknowledged == 0
}
