import Foundation
import Glibc
import NIOCore
import Synchronization
import Testing
import YoMoMetrics
import YoMoTracing
import YoMoWire

@testable import YoMo

@Suite("A stream function's handling receipts", .serialized)
struct HandlingReceiptTests {
    @Test("a function killed while its handlers held frames its QUIC stack had acknowledged: the zipper kept them and gives them to its next instance",
          arguments: [false, true])
    func killedInItsHandlers(pipe: Bool) async throws {
        let stuck = try await FunctionStuckInItsHandlers(pipe: pipe)
        defer { stuck.killFunctionNow() }
        let zipper = stuck.zipper
        // What `yomo.zipper.client.unhandled` shows.
        #expect(functionConnections(zipper, named: "upper").first?.retainedBytes ?? 0 >= 5 * 30)
        // The source's receipts wait for what the handlers took, not for them to
        // finish: the function and the zipper both have a frame taken, and one
        // crash leaves the other. Frames queued for a pipe handler are kept by
        // the source too, all but the function's pace's worth (a frame here).
        if pipe {
            // (Settled a checkpoint at a time: the five came at once, so likely none.)
            #expect(stuck.source.client.keptFrames >= 3, "kept \(stuck.source.client.keptFrames)")
        } else {
            #expect(await eventually { stuck.source.client.keptFrames == 0 }, "kept \(stuck.source.client.keptFrames)")
        }
        await stuck.killFunction()
        // Its next instance once the zipper noticed (one that comes sooner is
        // a namesake: `restartedBeforeTheZipperNoticed`).
        #expect(await eventually(within: .seconds(30)) { functionConnections(zipper, named: "upper").isEmpty })
        #expect(zipper.statistics.unacknowledgedFramesHeld == 5, "\(zipper.statistics)")
        try stuck.startFunction(pipe: pipe)
        await stuck.expectEachAnsweredOnce()
        await stuck.close()
    }

    @Test("a frame a zipper restored from its held frames file stays in it until the function says its answers are settled: the zipper killed with them held for a sink that is away, then the function, and the next instance still answers each; a function that closes for good leaves its answers in the file instead, and the frames leave it",
          arguments: [false, true])
    func restoredFrameKeptUntilAnswered(functionCloses: Bool) async throws {
        let directory = try makeTemporaryDirectory("yomo-test-answered-")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let functionsFile = directory + "/zipper.functions"
        let metricsPort = try await freePort()
        // A minute's hold: the answers wait for the sink however slow the machine.
        let zipper = try await ZipperProcess(port: try await freePort(), arguments: [
            "--functions-file", functionsFile, "--metrics", "127.0.0.1:\(metricsPort)", "--unrouted-hold", "60s",
        ])
        let metric = { (name: String, labels: [String]) in await scrapedMetric(port: metricsPort, name, labels: labels) }
        let heldFile = { HeldFramesFile.decode(Array((try? Data(contentsOf: URL(fileURLWithPath: HeldFramesFile.path(besides: functionsFile)))) ?? Data()))?.frames ?? [] }
        // The sink, the function and one that answers nothing came and went:
        // the zipper holds their tags' frames for each by name.
        let (away, _) = try await connectUppercaseSink(zipper: zipper.address)
        await away.close()
        for (name, tag) in [("upper", UInt32(0x33)), ("quiet", UInt32(0x35))] {
            let once = StreamFunction(name: name, zipper: zipper.address, options: .init(observedTags: [tag]))
            once.setHandler { _ in }
            try await once.connect()
            await once.close()
        }
        let source = Source(name: "writer", zipper: zipper.address)
        try await source.connect()
        let texts = (0..<10).map { "frame-\($0)" }
        for text in texts { try await source.write(tag: 0x33, data: Array((text + ":").utf8)) }
        // The quiet one's frame: its leaving the file marks a rewrite.
        try await source.write(tag: 0x35, data: Array("quiet".utf8))
        #expect(await eventuallyAsync { await metric("yomo_zipper_held_messages", []) == 11 })
        // A graceful restart: the eleven are only in the held frames file now, and the next start holds them.
        await source.close()
        await zipper.terminate()
        try await zipper.restart()
        var function = try startFunctionProcess(zipper: zipper.address)
        defer { if function.isRunning { kill(function.processIdentifier, SIGKILL) } }
        // The ten handled, their answers held for the sink (the eleven stay
        // held for any function that comes, until the hold's time is over).
        let answersHeld = await eventuallyAsync {
            let delivered = await metric("yomo_zipper_routed_messages_total", ["outcome=\"delivered\"", "\"0x33\""])
            let held = await metric("yomo_zipper_held_messages", [])
            return delivered == 10 && held == 21
        }
        #expect(answersHeld)
        let quiet = StreamFunction(name: "quiet", zipper: zipper.address, options: .init(observedTags: [0x35]))
        quiet.setHandler { _ in }
        try await quiet.connect()
        #expect(await eventually { !heldFile().contains { $0.tag == 0x35 } }, "the quiet frame stays in \(heldFile().map(\.tag))")
        // Until the sixty-first round the same rewrite let go of the ten: handled, though their answers were held.
        #expect(heldFile().filter { $0.tag == 0x33 }.count == 10, "\(heldFile().map(\.tag))")
        await quiet.close()
        if functionCloses {
            // Its answers go into the file at its end, and the frames it handled leave.
            kill(function.processIdentifier, SIGTERM)
            await waitForExit(function)
            #expect(await eventually { heldFile().map(\.tag).sorted() == Array(repeating: 0x34, count: 10) }, "\(heldFile().map(\.tag))")
            await zipper.kill()
        } else {
            await zipper.kill()
            kill(function.processIdentifier, SIGKILL)
            await waitForExit(function)
        }
        try await zipper.restart()
        let (sink, received) = try await connectUppercaseSink(zipper: zipper.address)
        function = try startFunctionProcess(zipper: zipper.address)
        let answers = texts.map { $0.uppercased() }
        #expect(await eventually(within: .seconds(30)) { Set(received.items).isSuperset(of: answers) },
                "missing \(Set(answers).subtracting(received.items).sorted())")
        if functionCloses { #expect(received.items.sorted() == answers, "each once: \(received.items)") }
        await sink.close()
        await zipper.kill()
    }

    @Test("what a killed function's end left is settled for its source frame by frame as its next instance takes them, not once it took the last")
    func leftoversSettleAsTaken() async throws {
        let meters = MeterProvider(configuration: .init(serviceName: "zipper", environment: [:]))
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0), options: .init(meterProvider: meters))
        try await zipper.start()
        let address = try #require(zipper.address)
        let stuck = try startFunctionProcess(zipper: address, pipe: true, handlerDelayMs: 600_000)
        defer { if stuck.isRunning { kill(stuck.processIdentifier, SIGKILL) } }
        #expect(await eventually(within: .seconds(20)) { functionConnections(zipper, named: "upper").count == 1 })
        let source = Source(name: "writer", zipper: address)
        try await source.connect()
        let delivered = { routedToDestinations(meters) }
        // One receipt checkpoint a frame: each written to the function before the next.
        let texts = (0..<10).map { "frame-\($0)" }
        for (index, text) in texts.enumerated() {
            try await source.write(tag: 0x33, data: Array((text + ":").utf8))
            #expect(await eventually { delivered() == Double(index + 1) })
            zipper.receiptRoundForTesting()
        }
        #expect(await eventually { functionConnections(zipper, named: "upper").first?.unacknowledgedBytes == 0 })
        // Its handler has the first; the rest wait in its queue, and with the
        // source (all but its pace's worth: a frame).
        #expect(await eventually { (8...9).contains(source.client.keptFrames) }, "kept \(source.client.keptFrames)")
        kill(stuck.processIdentifier, SIGKILL)
        await waitForExit(stuck)
        #expect(await eventually(within: .seconds(30)) { functionConnections(zipper, named: "upper").isEmpty })
        #expect(zipper.statistics.unacknowledgedFramesHeld == 10, "\(zipper.statistics)")
        // Its next instance takes three and stops at the third.
        let gate = Gate()
        let taken = Inbox<String>()
        let next = StreamFunction(name: "upper", zipper: address, options: .init(observedTags: [0x33]))
        next.setPipeHandler { input, _ in
            for await frame in input {
                taken.append(String(decoding: frame.data, as: UTF8.self))
                if taken.items.count == 3 { await gate.wait() }
            }
        }
        try await next.connect()
        #expect(await taken.wait(for: 3))
        // The three and its pace's worth (three more: a young connection's is
        // all it took so far) are settled; before, the source kept all eight
        // until the last was taken.
        #expect(await eventually { source.client.keptFrames <= 6 }, "kept \(source.client.keptFrames)")
        gate.open()
        #expect(await eventually { source.client.keptFrames == 0 }, "kept \(source.client.keptFrames)")
        // Settled is not taken: held frames written at a function's join may be
        // settled at acknowledgement before the zipper reads its first receipt.
        #expect(await taken.wait(for: 10))
        #expect(taken.items == texts.map { $0 + ":" })
        await source.close()
        await next.close()
        await zipper.close()
    }

    @Test("a function killed and started again at once, before the zipper noticed: what its handlers had not finished goes to the new instance, which joined after it was written")
    func restartedBeforeTheZipperNoticed() async throws {
        let exporter = InMemorySpanExporter()
        let provider = TracerProvider(configuration: .init(environment: [:]), processors: [SimpleSpanProcessor(exporter: exporter)])
        let stuck = try await FunctionStuckInItsHandlers(pipe: false, tracerProvider: provider)
        defer { stuck.killFunctionNow() }
        let zipper = stuck.zipper
        await stuck.killFunction()
        try stuck.startFunction(pipe: false)
        #expect(await eventually(within: .seconds(20)) { functionConnections(zipper, named: "upper").count == 2 },
                "the new instance joined while the zipper still knew the old one")
        await stuck.expectEachAnsweredOnce()
        #expect(zipper.statistics.framesGivenToNamesakes == 5, "\(zipper.statistics)")
        await stuck.close()
        // Each one's wait for the new instance, in its trace: under the zipper's span, why it waited, for whom.
        let zipperSpans = Set(exporter.spans.filter { $0.name == "zipper endpoint" }.map(\.context.spanID))
        let holds = exporter.spans.filter { $0.name == "zipper hold" }
        #expect(holds.count == 5, "\(exporter.spans.map(\.name))")
        for hold in holds {
            #expect(hold.attributes.get("yomo.hold.reason") == .string("not_handled"))
            #expect(hold.attributes.get("messaging.consumer.group.name") == .string("upper"))
            #expect(hold.parentSpanID.map(zipperSpans.contains) == true)
        }
    }

    @Test("a function whose connection is cut while its handlers run: the zipper sends again what they had not finished, and the function does not handle it twice")
    func cutWhileHandling() async throws {
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0))
        try await zipper.start()
        let address = try #require(zipper.address)
        let handled = Inbox<String>()
        let gate = Gate()
        let fast = ReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(100))
        let meters = MeterProvider(configuration: .init(serviceName: "slow", environment: [:]))
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: meters)
        let function = StreamFunction(name: "slow", zipper: address, options: .init(observedTags: [0x33], reconnect: fast, meterProvider: meters))
        function.setHandler { ctx in
            await gate.wait()
            handled.append(String(decoding: ctx.data, as: UTF8.self))
        }
        try await function.connect()
        let source = Source(name: "writer", zipper: address)
        try await source.connect()
        let texts = (0..<8).map { "frame-\($0)" }
        for text in texts { try await source.write(tag: 0x33, data: Array(text.utf8)) }
        // All eight read (a guess at their bytes let a frame still on its way pass).
        let kept = await eventually {
            guard let bytes = functionConnections(zipper, named: "slow").first else { return false }
            return function.client.framesReceivedForTesting == 8 && bytes.unacknowledgedBytes == 0
        }
        #expect(kept, "\(functionConnections(zipper, named: "slow"))")
        await function.client.dropConnectionForTesting()
        // The zipper took back the eight and gives them to the function's next connection.
        #expect(await eventually { function.client.reconnectCountForTesting == 1 && zipper.statistics.heldFramesDelivered >= 8 },
                "\(zipper.statistics)")
        gate.open()
        #expect(await handled.wait(for: 8))
        // Nothing more comes: each handled once.
        try await source.write(tag: 0x33, data: Array("last".utf8))
        #expect(await handled.wait(for: 9))
        #expect(handled.items.sorted() == (texts + ["last"]).sorted(), "\(handled.items)")
        let page = await httpGet("http://127.0.0.1:\(endpoint.port)/metrics")?.body ?? ""
        #expect(seriesValue(page, "yomo_handlers_copies_skipped_total", labels: ["messaging_consumer_group_name=\"slow\""]) == 8)
        await endpoint.close()
        await source.close()
        await function.close()
        await zipper.close()
    }

    /// A HostileZipper's answer to the handshake that welcomes handling receipts.
    static var welcomingHandling: ByteBuffer {
        var answer = Frame.receipt(ReceiptFrame(settledThrough: 0, welcomesHandling: true)).encoded()
        answer.writeImmutableBuffer(Frame.handshakeAck.encoded())
        return answer
    }

    /// A data frame with transaction id `tid`.
    static func dataFrame(tid: String, tag: UInt32 = 0x33, _ text: String = "") -> DataFrame {
        DataFrame(tag: tag, metadata: Metadata([Metadata.ReservedKey.tid: tid]), payload: ByteBuffer(string: text))
    }

    @Test("a frame the ledger let go of (handled, told, the receipt acknowledged) still counts as one that may come again, finished, among the newest HandlingLedger.Recent.kept")
    func letGoOfStillRecognized() throws {
        let ledger = HandlingLedger(startingAt: 0)
        let count = 2100
        var read = ByteBuffer()
        for index in 0..<count { read.writeImmutableBuffer(Frame.data(Self.dataFrame(tid: "t-\(index)", "frame-\(index)")).encoded()) }
        var decoder = FrameDecoder()
        for index in 0..<count {
            guard case .data(let data)? = try decoder.decodeFrame(buffer: &read) else { Issue.record("not data"); return }
            ledger.received(end: (index + 1) * 10, length: 10, frame: data).finished()
        }
        let tell = try #require(ledger.advance(acknowledged: 0).tell)
        #expect(tell.handled == count * 10)
        ledger.told(tell, receiptEnd: 100)
        #expect(ledger.advance(acknowledged: 100) == (nil, false), "acknowledged: let go of, nothing left")
        let untold = ledger.untold(acknowledged: 100)
        let tids = Set(untold.keys.map(\.tid))
        #expect(untold.count == HandlingLedger.Recent.kept)
        #expect(tids.contains("t-\(count - 1)") && tids.contains("t-\(count - HandlingLedger.Recent.kept)") && !tids.contains("t-\(count - HandlingLedger.Recent.kept - 1)"), "the newest")
        #expect(untold.keys.allSatisfy { $0.tag == 0x33 && $0.shape == CopyKey.shape(of: ByteBuffer(string: "frame-\($0.tid.dropFirst(2))")) })
        let next = HandlingLedger(startingAt: 0)
        let copy = next.received(end: 10, length: 10, frame: Self.dataFrame(tid: "t-\(count - 1)"))
        try #require(untold.first { $0.key.tid == "t-\(count - 1)" }).value.forward(to: copy)
        #expect(next.advance(acknowledged: 0).tell?.handled == 10, "finished at once: its original was")
    }

    @Test("a copy is known by transaction id, tag and payload's shape: frames of one transaction with other tags, lengths or ends are other frames")
    func copyKeys() throws {
        func key(_ tag: UInt32, _ text: String, tid: String = "t") -> CopyKey? { CopyKey(Self.dataFrame(tid: tid, tag: tag, text)) }
        let long = String(repeating: "x", count: 100)
        #expect(key(0x33, "a") == key(0x33, "a"))
        #expect(key(0x33, "a") != key(0x34, "a"), "another tag")
        #expect(key(0x33, "a") != key(0x33, "b") && key(0x33, "a") != key(0x33, "aa"), "another payload")
        #expect(key(0x33, "a") != key(0x33, "a", tid: "u"))
        #expect(key(0x33, "1" + long) != key(0x33, "2" + long) && key(0x33, long + "1") != key(0x33, long + "2"), "its ends")
        #expect(key(0x33, long + "1" + long) == key(0x33, long + "2" + long), "its middle is not read: one shape")
        #expect(CopyKey(DataFrame(tag: 0x33, payload: ByteBuffer(string: "no id"))) == nil)
    }

    /// A data frame with transaction id `tid`, encoded.
    static func frame(_ text: String, tid: String, tag: UInt32 = 0x33) -> ByteBuffer {
        Frame.data(dataFrame(tid: tid, tag: tag, text)).encoded()
    }

    @Test("a frame that comes three times after the zipper's word that copies may follow (its hold, then a source's resend) is handled once: the second copy is finished with the first, as the first with the original")
    func thirdCopyHandledOnce() async throws {
        // A zipper that welcomes handling receipts, sends a frame, says copies
        // may follow, sends it twice more, then another frame.
        let script = [
            Self.frame("original", tid: "t-1"), Frame.receipt(ReceiptFrame(settledThrough: 0, copiesMayFollow: true)).encoded(),
            Self.frame("original", tid: "t-1"), Self.frame("original", tid: "t-1"), Self.frame("next", tid: "t-2"),
        ]
        let zipper = try await HostileZipper(answer: Self.welcomingHandling) { connection in connection == 0 ? script : [] }
        let handled = Inbox<String>()
        let gate = Gate()
        let function = StreamFunction(name: "once", zipper: zipper.address, options: .init(observedTags: [0x33]))
        // In order, one at a time: once "next" is handled, every frame before it was.
        function.setPipeHandler { input, _ in
            for await frame in input {
                await gate.wait()
                handled.append(String(decoding: frame.data, as: UTF8.self))
            }
        }
        try await function.connect()
        #expect(await eventually { function.client.framesReceivedForTesting == 4 }, "\(function.client.framesReceivedForTesting) read")
        gate.open()
        #expect(await handled.wait(for: 2))
        #expect(await eventually { handled.items.last == "next" })
        #expect(handled.items == ["original", "next"], "\(handled.items)")
        await function.close()
        await zipper.close()
    }

    @Test("frames of one transaction with another tag or payload, read after the zipper's word that copies may follow, are handled: only a copy of a frame is not")
    func framesOfOneTransactionAreNotCopies() async throws {
        // A function that observes a source's tag and a second function's
        // answers (which carry the id of the frame they answer), one of
        // which split its frame in two.
        let script = [
            Frame.receipt(ReceiptFrame(settledThrough: 0, copiesMayFollow: true)).encoded(),
            Self.frame("raw", tid: "t-1"), Self.frame("RAW", tid: "t-1", tag: 0x34),
            Self.frame("part 1", tid: "t-2", tag: 0x34), Self.frame("part 2", tid: "t-2", tag: 0x34),
            Self.frame("again", tid: "t-3"), Self.frame("again", tid: "t-3"), Self.frame("end", tid: "t-4"),
        ]
        let zipper = try await HostileZipper(answer: Self.welcomingHandling) { connection in connection == 0 ? script : [] }
        let handled = Inbox<String>()
        let function = StreamFunction(name: "both", zipper: zipper.address, options: .init(observedTags: [0x33, 0x34]))
        // In order: once "end" is handled, every frame before it was read.
        function.setPipeHandler { input, _ in
            for await frame in input { handled.append(String(decoding: frame.data, as: UTF8.self)) }
        }
        try await function.connect()
        #expect(await eventually { handled.items.last == "end" })
        // Before, a frame with the id of one before it was taken for its copy: "RAW" and "part 2" were not handled.
        #expect(handled.items == ["raw", "RAW", "part 1", "part 2", "again", "end"], "\(handled.items)")
        await function.close()
        await zipper.close()
    }

    @Test("frames handled and told, the receipt that told them acknowledged by the zipper's QUIC stack, are still known when the connection ends: sent again on the next one (a zipper that died before settling them for their source, which sends them again), each is handled once")
    func toldAndAcknowledgedHandledOnce() async throws {
        let originals = (0..<10).map { Self.frame("frame-\($0)", tid: "t-\($0)") }
        let zipper = try await HostileZipper(answer: Self.welcomingHandling) { connection in
            connection == 0 ? originals : originals + [Self.frame("last", tid: "t-last")]
        }
        let handled = Inbox<String>()
        let redial = ReconnectPolicy(firstRetryDelay: .milliseconds(10) ... .milliseconds(20), initialDelay: .milliseconds(20), maximumDelay: .milliseconds(50))
        let function = StreamFunction(name: "once", zipper: zipper.address, options: .init(observedTags: [0x33], reconnect: redial))
        function.setPipeHandler { input, _ in
            for await frame in input { handled.append(String(decoding: frame.data, as: UTF8.self)) }
        }
        try await function.connect()
        #expect(await handled.wait(for: 10))
        // Told: a receipt settles all ten, and the zipper's QUIC stack acknowledged it.
        let through = UInt64(originals.reduce(Self.welcomingHandling.readableBytes) { $0 + $1.readableBytes })
        #expect(await eventually { zipper.receipts.items.last?.settledThrough == through }, "\(zipper.receipts.items.last.map { "\($0)" } ?? "none")")
        #expect(await eventually { function.client.unacknowledgedBytesForTesting == 0 })
        await function.client.dropConnectionForTesting()
        // In order: once "last" is handled, the copies before it were read.
        #expect(await eventually(within: .seconds(10)) { handled.items.last == "last" })
        // Before, the ledger forgot frames once that receipt was acknowledged, and all ten were handled again.
        #expect(handled.items == (0..<10).map { "frame-\($0)" } + ["last"], "\(handled.items)")
        await function.close()
        await zipper.close()
    }

    @Test("a function's receipts count the bytes its handlers took, not the copies it finished as it read them, though the end of what it took moves past those")
    func takenBytesLeaveCopiesOut() async throws {
        // The word that copies may follow, ten frames, then (once they are
        // handled) their copies and one more, which the handler holds.
        let originals = (0..<10).map { Self.frame("frame-\($0)", tid: "t-\($0)") }
        let zipper = try await HostileZipper(answer: Self.welcomingHandling) { connection in
            connection == 0 ? [Frame.receipt(ReceiptFrame(settledThrough: 0, copiesMayFollow: true)).encoded()] + originals : []
        }
        let handled = Inbox<String>()
        let gate = Gate()
        let function = StreamFunction(name: "counted", zipper: zipper.address, options: .init(observedTags: [0x33]))
        function.setPipeHandler { input, _ in
            for await frame in input {
                let text = String(decoding: frame.data, as: UTF8.self)
                if text == "held" { await gate.wait() }
                handled.append(text)
            }
        }
        try await function.connect()
        #expect(await handled.wait(for: 10))
        let originalBytes = originals.reduce(0) { $0 + $1.readableBytes }
        #expect(await eventually { zipper.receipts.items.last?.takenBytes == UInt64(originalBytes) },
                "\(zipper.receipts.items.last.map { "\($0)" } ?? "none")")
        let copiesEnd = try #require(zipper.receipts.items.last?.takenThrough) + UInt64(originalBytes)
        let held = Self.frame("held", tid: "t-held")
        try await zipper.send(originals + [held])
        // The copies are finished at once, the held frame taken: the end of
        // what was taken is past all of them, the bytes only one frame more.
        #expect(await eventually { (zipper.receipts.items.last?.takenThrough ?? 0) >= copiesEnd + UInt64(held.readableBytes) },
                "\(zipper.receipts.items.last.map { "\($0)" } ?? "none")")
        #expect(zipper.receipts.items.last?.takenBytes == UInt64(originalBytes + held.readableBytes))
        #expect(handled.items == (0..<10).map { "frame-\($0)" }, "the copies were not handled")
        gate.open()
        #expect(await handled.wait(for: 11))
        await function.close()
        await zipper.close()
    }

    /// The handlers of a function being closed, and what waits for them.
    enum ClosingWith: String, CaseIterable, Sendable {
        /// Five async handlers running, nothing else taken.
        case asyncHandlers
        /// The pipe handler inside a frame, nothing queued.
        case pipeHandler
        /// The pipe handler inside a frame, four queued behind it.
        case pipeBacklog
    }

    @Test("a closing function asks the zipper to route nothing more to it: it handles what it has, the zipper holds what comes after for its next instance; a pipe handler's queue goes back to the zipper for that instance too, but for what the zipper may have settled; each frame handled once",
          arguments: ClosingWith.allCases)
    func closeLeavesTheRestToTheNextInstance(_ closingWith: ClosingWith) async throws {
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0))
        try await zipper.start()
        let address = try #require(zipper.address)
        let pipe = closingWith != .asyncHandlers
        let gate = Gate()
        let entered = Inbox<String>()
        let handled = Inbox<String>()
        @Sendable func worker(_ label: String, waits: Bool) -> StreamFunction {
            let function = StreamFunction(name: "worker", zipper: address, options: .init(observedTags: [0x33], shutdownTimeout: .seconds(30)))
            @Sendable func handle(_ data: [UInt8]) async {
                let text = String(decoding: data, as: UTF8.self)
                entered.append("\(label):\(text)")
                if waits { await gate.wait() }
                handled.append(text)
            }
            if pipe {
                function.setPipeHandler { input, _ in for await frame in input { await handle(frame.data) } }
            } else {
                function.setHandler { ctx in await handle(Array(ctx.data)) }
            }
            return function
        }
        let first = worker("first", waits: true)
        try await first.connect()
        let source = Source(name: "writer", zipper: address)
        try await source.connect()
        let texts = (0..<10).map { "frame-\($0)" }
        let before = closingWith == .pipeHandler ? 1 : 5
        for text in texts.prefix(before) { try await source.write(tag: 0x33, data: Array(text.utf8)) }
        #expect(await entered.wait(for: pipe ? 1 : 5))
        // The function read `frames` frames. (Counted, not guessed from the
        // bytes the zipper keeps: frames are longer than a guess, and CI once
        // opened the gate with three still on their way; the closing function,
        // its backlog worked off, rightly asked for nothing more.)
        func atTheFunction(_ frames: Int) async -> Bool {
            await eventually { first.client.framesReceivedForTesting == frames }
        }
        #expect(await atTheFunction(before), "\(first.client.framesReceivedForTesting)")
        let closing = Task { await first.close() }
        #expect(await eventually { first.client.isClosingForTesting })
        // With a pipe backlog too: the zipper answers what it keeps, and the
        // queue goes back to it. Until the fifty-third round the function
        // worked off its backlog, and what came next, until the deadline.
        #expect(await eventually { zipper.routesForTesting(tag: 0x33).isEmpty }, "the closing function left the routes")
        #expect(zipper.clientConnections().contains { $0.member.name == "worker" }, "and is still connected")
        for text in texts.dropFirst(before) { try await source.write(tag: 0x33, data: Array(text.utf8)) }
        // Held for the function's next instance; before, routed to the closing one,
        // which took them until a quiet moment that a steady source never gives.
        #expect(await eventually { zipper.statistics.heldFrames == 10 - before }, "\(zipper.statistics)")
        #expect(entered.items.count == (pipe ? 1 : before), "\(entered.items)")
        if closingWith == .pipeBacklog {
            #expect(await eventually { first.client.framesGivenBackForTesting > 0 }, "the queue went back")
        }
        gate.open()
        await closing.value
        #expect(first.client.endReason?.code == .closed)
        let firstTook = entered.items.filter { $0.hasPrefix("first:") }.map { String($0.dropFirst("first:".count)) }
        if closingWith == .pipeBacklog {
            // Those within the pace the zipper reckoned, which it may have settled
            // for the source (the handler took one frame): the first one or two.
            #expect(firstTook == Array(texts.prefix(firstTook.count)) && (1...2).contains(firstTook.count), "\(firstTook)")
            #expect(firstTook.count + first.client.framesGivenBackForTesting == before, "\(first.client.framesGivenBackForTesting)")
        } else {
            // Async handlers enter in any order.
            #expect(firstTook.sorted() == Array(texts.prefix(before)), "\(entered.items)")
        }

        let second = worker("second", waits: false)
        try await second.connect()
        #expect(await handled.wait(for: 10), "\(handled.items)")
        // Nothing more comes: each handled once, by one of the two.
        try await source.write(tag: 0x33, data: Array("last".utf8))
        #expect(await handled.wait(for: 11), "\(handled.items)")
        #expect(handled.items.sorted() == (texts + ["last"]).sorted(), "\(handled.items)")
        if pipe { #expect(handled.items == texts + ["last"], "a pipe handler's frames in order across the two") }
        #expect(Set(entered.items.filter { $0.hasPrefix("second:") }) == Set((texts.dropFirst(firstTook.count) + ["last"]).map { "second:\($0)" }))
        await source.close()
        await second.close()
        await zipper.close()
    }

    /// A pipe function `worker` on `zipper` whose handler waits at `gate`
    /// before each frame it handles, and notes what it handles.
    static func gatedPipeWorker(
        _ zipper: String, gate: Gate?, handled: Inbox<String>, tracerProvider: TracerProvider? = nil, meterProvider: MeterProvider? = nil
    ) -> StreamFunction {
        let function = StreamFunction(name: "worker", zipper: zipper, options: .init(
            observedTags: [0x33], retryConnect: true, tracerProvider: tracerProvider, shutdownTimeout: .seconds(30), meterProvider: meterProvider))
        function.setPipeHandler { input, _ in
            for await frame in input {
                await gate?.wait()
                handled.append(String(decoding: frame.data, as: UTF8.self))
            }
        }
        return function
    }

    @Test("a closing function's queue given back to its zipper is kept by the source until the zipper's hold lets go of it: the zipper killed then, the function's next instance gets every frame once, in order")
    func givenBackBacklogOutlivesAZipperCrash() async throws {
        let exporter = InMemorySpanExporter()
        let provider = TracerProvider(configuration: .init(environment: [:]), processors: [SimpleSpanProcessor(exporter: exporter)])
        let backlog = try await GatedBacklog(tracerProvider: provider)
        let (zipper, gate, handled, first, source, texts) = (backlog.zipper, backlog.gate, backlog.handled, backlog.first, backlog.source, backlog.texts)
        let firstTook = await Self.closeGivingBack(first, gate: gate, handled: handled, texts: texts)
        // Each frame's span ends: those given back say so.
        let spans = exporter.spans.filter { $0.name == "worker" }
        #expect(spans.count == 10, "\(exporter.spans.map(\.name))")
        #expect(spans.filter { $0.attributes.get("yomo.given_back") == .bool(true) }.count == 10 - firstTook.count)
        // Not settled while the zipper holds them for the function's return:
        // the source keeps every frame given back. Those the function handled
        // are settled (the first within the pace the zipper may have settled
        // at acknowledgement, which is why it was not given back).
        #expect(await eventually { source.client.keptFrames == 10 - firstTook.count }, "kept \(source.client.keptFrames)")
        await zipper.kill()
        try await zipper.restart()
        try await backlog.nextInstanceFinishes()
    }

    /// Closes `function`, its handler held at `gate` on the first of `texts`:
    /// frames go back before the gate opens, and once closed it handled the
    /// first one or two (those within the pace the zipper reckoned, the
    /// handler having taken one frame) and gave back the rest. Returns what
    /// it handled.
    static func closeGivingBack(_ function: StreamFunction, gate: Gate, handled: Inbox<String>, texts: [String]) async -> [String] {
        let closing = Task { await function.close() }
        #expect(await eventually { function.client.framesGivenBackForTesting > 0 }, "nothing went back")
        gate.open()
        await closing.value
        let took = handled.items
        #expect(took == Array(texts.prefix(took.count)) && (1...2).contains(took.count), "\(took)")
        #expect(took.count + function.client.framesGivenBackForTesting == texts.count, "gave back \(function.client.framesGivenBackForTesting)")
        return took
    }

    /// A `yomo serve` process, a pipe function `worker` on it whose handler
    /// waits at `gate` (`gatedPipeWorker`), and a source that wrote it ten
    /// frames, all read: the first in the handler, the rest queued.
    struct GatedBacklog {
        let zipper: ZipperProcess
        let gate = Gate()
        let handled = Inbox<String>()
        let first: StreamFunction
        let source: Source
        let texts = (0..<10).map { "frame-\($0)" }

        init(tracerProvider: TracerProvider? = nil) async throws {
            zipper = try await ZipperProcess(port: try await freePort())
            first = HandlingReceiptTests.gatedPipeWorker(zipper.address, gate: gate, handled: handled, tracerProvider: tracerProvider)
            try await first.connect()
            source = Source(name: "writer", zipper: zipper.address, options: .init(retryConnect: true))
            try await source.connect()
            for text in texts { try await source.write(tag: 0x33, data: Array(text.utf8)) }
            let first = first
            #expect(await eventually { first.client.framesReceivedForTesting == 10 }, "\(first.client.framesReceivedForTesting)")
        }

        /// The function's next instance finishes what the first one left
        /// (`HandlingReceiptTests.nextInstanceFinishes`).
        func nextInstanceFinishes() async throws {
            try await HandlingReceiptTests.nextInstanceFinishes(
                HandlingReceiptTests.gatedPipeWorker(zipper.address, gate: nil, handled: handled), handled, texts, source, zipper)
        }
    }

    /// The function's next instance, `second`, handles what the first one
    /// left: every frame once, in order, all settled for the source. Then
    /// all ends.
    static func nextInstanceFinishes(
        _ second: StreamFunction, _ handled: Inbox<String>, _ texts: [String], _ source: Source, _ zipper: ZipperProcess
    ) async throws {
        try await second.connect()
        #expect(await handled.wait(for: 10), "\(handled.items)")
        try await source.flush(timeout: .seconds(20))
        #expect(handled.items == texts, "each once, in order: \(handled.items)")
        await source.close()
        await second.close()
        await zipper.kill()
    }

    /// A `yomo serve` process holding frames past the tests' waits, a
    /// function `worker` whose handler waits at `gate` (a pipe handler, or
    /// one async handler at a time), and a source that wrote it ten frames
    /// and kept eight or nine unsettled, which redials 6 s after its loss:
    /// the function, which redials at once, says it is closing before the
    /// source's copies come.
    struct LateCopies {
        let zipper: ZipperProcess
        let gate = Gate()
        let handled = Inbox<String>()
        let texts = (0..<10).map { "frame-\($0)" }
        let async: Bool
        let first: StreamFunction
        let source: Source

        init(async: Bool) async throws {
            self.async = async
            let zipper = try await ZipperProcess(port: try await freePort(), arguments: ["--unrouted-hold", "60s"])
            self.zipper = zipper
            first = Self.worker(zipper, async: async, gate: gate, handled: handled)
            try await first.connect()
            let late = ReconnectPolicy(firstRetryDelay: .seconds(6) ... .seconds(6), initialDelay: .seconds(1), maximumDelay: .seconds(1), jitter: 0)
            source = Source(name: "writer", zipper: zipper.address, options: .init(reconnect: late, retryConnect: true))
            try await source.connect()
            for text in texts { try await source.write(tag: 0x33, data: Array(text.utf8)) }
            // A pipe handler's queue takes all ten; async handlers read two (one
            // waits for the limit) and the rest wait in the connection, all acknowledged.
            let (first, source) = (first, source)
            #expect(await eventually { first.client.framesReceivedForTesting == (async ? 2 : 10) }, "\(first.client.framesReceivedForTesting)")
            #expect(await eventually { source.client.keptFrames == 8 || source.client.keptFrames == 9 }, "kept \(source.client.keptFrames)")
        }

        /// A function of the name, its handler waiting at `gate` if given.
        func worker(gate: Gate?) -> StreamFunction { Self.worker(zipper, async: async, gate: gate, handled: handled) }

        /// The function's next instance finishes what the first one left
        /// (`HandlingReceiptTests.nextInstanceFinishes`).
        func nextInstanceFinishes() async throws {
            try await HandlingReceiptTests.nextInstanceFinishes(worker(gate: nil), handled, texts, source, zipper)
        }

        private static func worker(_ zipper: ZipperProcess, async: Bool, gate: Gate?, handled: Inbox<String>) -> StreamFunction {
            guard async else { return HandlingReceiptTests.gatedPipeWorker(zipper.address, gate: gate, handled: handled) }
            let function = StreamFunction(name: "worker", zipper: zipper.address, options: .init(
                observedTags: [0x33], retryConnect: true, handlerConcurrency: 1, shutdownTimeout: .seconds(30)))
            function.setHandler { ctx in
                await gate?.wait()
                handled.append(String(decoding: ctx.data, as: UTF8.self))
            }
            return function
        }

        /// The zipper (killed) started again, the function closed once it
        /// redialled, before the source came back: the close's task.
        func closeOnceRedialled() async throws -> Task<Void, Never> {
            try await zipper.restart()
            let (first, source) = (first, source)
            #expect(await eventually(within: .seconds(10)) { first.client.reconnectCountForTesting == 1 && first.client.isConnected })
            let closing = Task { await first.close() }
            #expect(await eventually { first.client.isClosingForTesting })
            #expect(!source.client.isConnected, "the source came back before the function said it is closing: the test's order did not hold")
            return closing
        }
    }

    @Test("a closing function gives back what an earlier connection queued for its pipe handler as far as copies of it came on this one: its zipper killed and back, the source's copies read, the close ends without working off the queue; the next instance gets every frame once, in order")
    func closeGivesBackAnEarlierConnectionsQueue() async throws {
        let backlog = try await GatedBacklog()
        let (zipper, gate, handled, first, source, texts) = (backlog.zipper, backlog.gate, backlog.handled, backlog.first, backlog.source, backlog.texts)
        // The handler holds the first frame, the rest queue; the source keeps
        // what the zipper did not settle within the function's pace.
        #expect(await eventually { source.client.keptFrames == 8 || source.client.keptFrames == 9 }, "kept \(source.client.keptFrames)")
        let kept = source.client.keptFrames
        await zipper.kill()
        try await zipper.restart()
        // Both redial; the source sends again what it kept, and the function
        // reads those as copies of what it has queued.
        #expect(await eventually { first.client.isConnected && first.client.framesReceivedForTesting == kept },
                "\(first.client.framesReceivedForTesting) of \(kept)")
        let closing = Task { await first.close() }
        // Until the fifty-fourth round only this connection's own frames went
        // back: these were worked off once the handler went on.
        #expect(await eventually { first.client.framesGivenBackForTesting == kept }, "gave back \(first.client.framesGivenBackForTesting) of \(kept)")
        gate.open()
        await closing.value
        #expect(handled.items == Array(texts.prefix(10 - kept)), "\(handled.items)")
        try await backlog.nextInstanceFinishes()
    }

    @Test("a closing function works off what an earlier connection queued for its pipe handler before its zipper, killed and back, gets the copies the source sends again: it names each frame as it finishes it, and the zipper holds none of the copies for the function's next instance, which gets none of them again")
    func closingNamesWhatItFinishesOfAnEarlierQueue() async throws {
        // Held past the test's waits: the copies leave the hold only if the function names them.
        let copies = try await LateCopies(async: false)
        let (zipper, gate, handled, texts, source) = (copies.zipper, copies.gate, copies.handled, copies.texts, copies.source)
        await zipper.kill()
        let closing = try await copies.closeOnceRedialled()
        // The queue is handled, the first frame's among it, before the source's copies come
        // (copies held first go back: `closeGivesBackWhatTheZipperHoldsCopiesOf`).
        gate.open()
        await closing.value
        #expect(handled.items == texts, "\(handled.items)")
        // Named as handled, the copies are settled as they come: before, they
        // waited in the hold for the next instance, which handled them again.
        #expect(await eventually(within: .seconds(10)) { source.client.isConnected && source.client.keptFrames == 0 }, "kept \(source.client.keptFrames)")
        let second = copies.worker(gate: nil)
        try await second.connect()
        try await source.write(tag: 0x33, data: Array("last".utf8))
        #expect(await handled.wait(for: 11), "\(handled.items)")
        try await source.flush(timeout: .seconds(20))
        #expect(handled.items == texts + ["last"], "each once, in order: \(handled.items)")
        await source.close()
        await second.close()
        await zipper.kill()
    }

    /// How a function with frames of a lost connection comes to close.
    enum CloseAfterLoss: String, CaseIterable, Sendable {
        /// A pipe handler's, closed once it redialled.
        case pipeRedialled
        /// A pipe handler's, closed while it redials (it comes back to deliver what its handler writes).
        case pipeWhileRedialling
        /// Async handlers', at their limit, closed while it redials.
        case asyncWhileRedialling
    }

    @Test("a closing function gives back what its lost connection left for its pipe handler, or its async handlers at their limit, once its zipper, killed and back, holds the source's copies for its name and says so: the close ends without working them off; the next instance gets every frame once, in order",
          arguments: CloseAfterLoss.allCases)
    func closeGivesBackWhatTheZipperHoldsCopiesOf(_ way: CloseAfterLoss) async throws {
        let copies = try await LateCopies(async: way == .asyncWhileRedialling)
        let (zipper, gate, handled, texts, first, source) = (copies.zipper, copies.gate, copies.handled, copies.texts, copies.first, copies.source)
        let kept = source.client.keptFrames
        await zipper.kill()
        let closing: Task<Void, Never>
        if way == .pipeRedialled {
            closing = try await copies.closeOnceRedialled()
        } else {
            // Its handler at work, it redials to deliver what that writes.
            #expect(await eventually(within: .seconds(10)) { !first.client.isConnected })
            closing = Task { await first.close() }
            #expect(await eventually { first.client.isClosingForTesting })
            try await zipper.restart()
        }
        // The source's copies are held for the function's name, and the zipper
        // says which: the frames they cover go back, the handler still held
        // at the first. Before, the close worked them all off.
        #expect(await eventually(within: .seconds(10)) { first.client.framesGivenBackForTesting == kept },
                "gave back \(first.client.framesGivenBackForTesting) of \(kept)")
        gate.open()
        await closing.value
        #expect(handled.items == Array(texts.prefix(10 - kept)), "\(handled.items)")
        try await copies.nextInstanceFinishes()
    }

    @Test("a closing function whose async handlers are at their limit gives back what it has yet to start, the frame waiting for the limit included, but for what the zipper may have settled: its next instance gets the rest, each frame handled once, in order, its trace through the closing instance's span")
    func closeGivesBackWhatAsyncHandlersHaveYetToStart() async throws {
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0))
        try await zipper.start()
        let address = try #require(zipper.address)
        let gate = Gate()
        let handled = Inbox<String>()
        let meters = MeterProvider(configuration: .init(serviceName: "worker", environment: [:]))
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: meters)
        let exporter = InMemorySpanExporter()
        let tracer = TracerProvider(configuration: .init(environment: [:]), processors: [SimpleSpanProcessor(exporter: exporter)])
        // One handler at a time: the frames are handled in order.
        func worker(gate: Gate?, meterProvider: MeterProvider? = nil) -> StreamFunction {
            let function = StreamFunction(name: "worker", zipper: address, options: .init(
                observedTags: [0x33], handlerConcurrency: 1, tracerProvider: tracer, shutdownTimeout: .seconds(30),
                meterProvider: meterProvider))
            function.setHandler { ctx in
                await gate?.wait()
                handled.append(String(decoding: ctx.data, as: UTF8.self))
            }
            return function
        }
        let first = worker(gate: gate, meterProvider: meters)
        try await first.connect()
        let source = Source(name: "writer", zipper: address, options: .init(tracerProvider: tracer))
        try await source.connect()
        let texts = (0..<10).map { "frame-\($0)" }
        for text in texts { try await source.write(tag: 0x33, data: Array(text.utf8)) }
        // The first frame in the handler, the second read and waiting for the
        // limit, the rest acknowledged and not yet read.
        #expect(await eventually {
            first.client.framesReceivedForTesting == 2 && functionConnections(zipper, named: "worker").first?.unacknowledgedBytes == 0
        }, "\(first.client.framesReceivedForTesting)")
        // Until the fifty-fourth round the close waited for the handler, then
        // worked off the rest until the deadline.
        let firstTook = await Self.closeGivingBack(first, gate: gate, handled: handled, texts: texts)
        let page = await httpGet("http://127.0.0.1:\(endpoint.port)/metrics")?.body ?? ""
        #expect(seriesValue(page, "yomo_handlers_given_back_total", labels: ["messaging_consumer_group_name=\"worker\""])
                == Double(10 - firstTook.count), "\(page.split(separator: "\n").filter { $0.contains("given_back") })")
        await endpoint.close()
        let second = worker(gate: nil)
        try await second.connect()
        #expect(await handled.wait(for: 10), "\(handled.items)")
        #expect(handled.items == texts, "each once, in order")
        // Each frame given back has the closing instance's span, ended at
        // once, in the trace its next instance's span continues (until the
        // fifty-fifth round that trace went from the zipper to the next
        // instance).
        let spans = exporter.spans.filter { $0.name == "worker" }
        let givenBack = spans.filter { $0.attributes.get("yomo.given_back") == .bool(true) }
        let handledTraces = Set(spans.filter { $0.attributes.get("yomo.given_back") == nil }.map(\.context.traceID))
        #expect(givenBack.count == 10 - firstTook.count, "\(spans.count) spans")
        #expect(givenBack.allSatisfy { handledTraces.contains($0.context.traceID) && $0.parentSpanID != nil })
        #expect(Set(givenBack.map(\.context.traceID)).count == givenBack.count, "one a frame")
        await source.close()
        await second.close()
        await zipper.close()
    }

    @Test("a closing function handles the frames of its queue that went past its share of limits.max_unhandled_bytes, which the zipper no longer keeps, and gives back the rest: each frame handled once, none lost")
    func closeHandlesWhatTheZipperNoLongerKeeps() async throws {
        var configuration = ZipperConfiguration(host: "127.0.0.1", port: 0)
        configuration.limits.maximumUnhandledBytes = 32 << 10
        let zipper = Zipper(configuration: configuration)
        try await zipper.start()
        let address = try #require(zipper.address)
        let gate = Gate()
        let handled = Inbox<String>()
        let meters = MeterProvider(configuration: .init(serviceName: "worker", environment: [:]))
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: meters)
        let first = Self.gatedPipeWorker(address, gate: gate, handled: handled, meterProvider: meters)
        try await first.connect()
        let source = Source(name: "writer", zipper: address)
        try await source.connect()
        // 20 frames of 4 KB: the handler holds the first, the rest queue, and
        // the zipper keeps 32 KiB of what the function acknowledged.
        let texts = (0..<20).map { "frame-\($0)-" + String(repeating: "x", count: 4000) }
        for text in texts { try await source.write(tag: 0x33, data: Array(text.utf8)) }
        #expect(await eventually { first.client.framesReceivedForTesting == 20 }, "\(first.client.framesReceivedForTesting)")
        // 80 KB acknowledged, at most 32 KiB kept: the oldest went past the share.
        let retained = functionConnections(zipper, named: "worker").first?.retainedBytes ?? 0
        #expect(retained > 0 && retained <= 32 << 10, "\(retained)")
        let closing = Task { await first.close() }
        #expect(await eventually { first.client.framesGivenBackForTesting > 0 }, "the rest went back")
        gate.open()
        await closing.value
        let firstTook = handled.items.count
        // About 48 KB went past the share: a dozen frames the function handled.
        #expect(firstTook >= 8 && firstTook + first.client.framesGivenBackForTesting == 20,
                "handled \(firstTook), gave back \(first.client.framesGivenBackForTesting)")
        let page = await httpGet("http://127.0.0.1:\(endpoint.port)/metrics")?.body ?? ""
        #expect(seriesValue(page, "yomo_handlers_given_back_total", labels: ["messaging_consumer_group_name=\"worker\""])
                == Double(20 - firstTook), "\(page.split(separator: "\n").filter { $0.contains("given_back") })")
        await endpoint.close()
        let second = Self.gatedPipeWorker(address, gate: nil, handled: handled)
        try await second.connect()
        #expect(await handled.wait(for: 20), "\(handled.items.map { $0.prefix(8) })")
        #expect(handled.items == texts, "each once, in order")
        #expect(zipper.statistics.unhandledBytesLost == 0, "\(zipper.statistics)")
        await source.close()
        await second.close()
        await zipper.close()
    }

    @Test("stream functions whose handlers stall keep no more at the zipper than limits.max_unhandled_bytes together, and what one had not handled past its share is counted at its end")
    func retentionBudget() async throws {
        let budget = 96 << 10
        let names = ["a", "b", "c"]
        let frames = 60
        let stalled = try await StalledHandlers(budget: budget, functions: names.map { ($0, "127.0.0.1") }, frames: frames)
        let (zipper, functions) = (stalled.zipper, stalled.functions)
        // Each 300 KB acknowledged and in its handlers; the three keep a third of the budget each.
        let retained = stalled.connections().map(\.retainedBytes)
        #expect(retained.allSatisfy { $0 > 0 && $0 <= budget / names.count }, "\(retained)")
        #expect(retained.reduce(0, +) <= budget, "\(retained)")
        #expect(zipper.statistics.unhandledBytesLost == 0)
        // Cut: what "a" kept is taken back and sent again (its copies skipped);
        // the rest it had acknowledged is counted, an upper bound: "a" lives and handles it.
        await functions[0].client.dropConnectionForTesting()
        #expect(await eventually { functions[0].client.reconnectCountForTesting == 1 && zipper.statistics.unhandledBytesLost > 0 })
        let lost = zipper.statistics.unhandledBytesLost
        #expect(lost >= frames * 5000 - budget / names.count && lost <= frames * 5100, "\(lost)")
        stalled.gate.open()
        let expected = names.flatMap { name in (0..<frames).map { "\(name):frame-\($0)" } }.sorted()
        #expect(await stalled.handled.wait(for: expected.count))
        try await stalled.source.write(tag: 0x33, data: Array("last ".utf8))
        #expect(await stalled.handled.wait(for: expected.count + names.count))
        #expect(stalled.handled.items.filter { !$0.hasSuffix(":last") }.sorted() == expected, "each handled once")
        await stalled.close()
    }

    @Test("limits.max_unhandled_bytes is split among the hosts functions come from, then among each host's connections: three functions of one host do not shrink another's share")
    func retentionSharesByAddress() async throws {
        let budget = 96 << 10
        // On "::" a client of 127.0.0.1 (IPv4-mapped) and one of ::1 are two hosts.
        let stalled = try await StalledHandlers(
            host: "::", budget: budget, functions: [("a1", "127.0.0.1"), ("a2", "127.0.0.1"), ("a3", "127.0.0.1"), ("b", "[::1]")], frames: 40)
        // Each was sent 200 KB and keeps what its share allows: b half the budget, a1-a3 a sixth each.
        func retained(_ name: String) -> Int { functionConnections(stalled.zipper, named: name).first?.retainedBytes ?? -1 }
        #expect(retained("b") > budget / 4 && retained("b") <= budget / 2, "b: \(retained("b")), past a quarter (a share per connection)")
        for name in ["a1", "a2", "a3"] {
            #expect(retained(name) > 0 && retained(name) <= budget / 6, "\(name): \(retained(name))")
        }
        #expect(stalled.connections().map(\.retainedBytes).reduce(0, +) <= budget)
        stalled.gate.open()
        await stalled.close()
    }

    @Test("with limits.max_unhandled_bytes 0 the zipper keeps nothing a function acknowledged: its handling receipts are not asked for")
    func retentionOff() async throws {
        var configuration = ZipperConfiguration(host: "127.0.0.1", port: 0)
        configuration.limits.maximumUnhandledBytes = 0
        let zipper = Zipper(configuration: configuration)
        try await zipper.start()
        let address = try #require(zipper.address)
        let gate = Gate()
        let entered = Inbox<String>()
        let function = StreamFunction(name: "slow", zipper: address, options: .init(observedTags: [0x33]))
        function.setHandler { ctx in
            entered.append(String(decoding: ctx.data, as: UTF8.self))
            await gate.wait()
        }
        try await function.connect()
        let source = Source(name: "writer", zipper: address)
        try await source.connect()
        for index in 0..<5 { try await source.write(tag: 0x33, data: Array("frame-\(index)".utf8)) }
        let acknowledged = await eventually {
            entered.count == 5 && functionConnections(zipper, named: "slow").first?.unacknowledgedBytes == 0
        }
        #expect(acknowledged)
        #expect(functionConnections(zipper, named: "slow").first?.retainedBytes == 0)
        await function.client.dropConnectionForTesting()
        #expect(await eventually { function.client.reconnectCountForTesting == 1 })
        #expect(zipper.statistics.unacknowledgedFramesHeld == 0 && zipper.statistics.unhandledBytesLost == 0, "\(zipper.statistics)")
        gate.open()
        await source.close()
        await function.close()
        await zipper.close()
    }

    @Test("a function whose handlers finished frames out of order says so, and its connection's end gives back only the frame they had not finished")
    func finishedOutOfOrder() async throws {
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0))
        try await zipper.start()
        let address = try #require(zipper.address)
        let gate = Gate()
        let handled = Inbox<String>()
        let function = StreamFunction(name: "ahead", zipper: address, options: .init(observedTags: [0x33], handlerConcurrency: 8))
        function.setHandler { ctx in
            let text = String(decoding: ctx.data, as: UTF8.self)
            if text == "frame-0" { await gate.wait() }
            handled.append(text)
        }
        try await function.connect()
        let source = Source(name: "writer", zipper: address)
        try await source.connect()
        for index in 0..<5 { try await source.write(tag: 0x33, data: Array("frame-\(index)".utf8)) }
        #expect(await handled.wait(for: 4))
        // Told: what the zipper counts unfinished shrinks to the first of five frames of one size.
        let told = await eventually {
            guard let health = functionConnections(zipper, named: "ahead").first else { return false }
            return health.finishedAheadBytes > 0 && health.unfinishedBytes * 4 <= health.finishedAheadBytes
        }
        #expect(told, "\(functionConnections(zipper, named: "ahead").map { ($0.unfinishedBytes, $0.finishedAheadBytes) })")
        await function.client.dropConnectionForTesting()
        #expect(await eventually { zipper.statistics.unacknowledgedFramesHeld > 0 })
        // Before, all five went back: the first unfinished one held back the word on the rest.
        #expect(zipper.statistics.unacknowledgedFramesHeld == 1, "\(zipper.statistics)")
        #expect(await eventually { function.client.reconnectCountForTesting == 1 })
        gate.open()
        try await source.write(tag: 0x33, data: Array("last".utf8))
        #expect(await handled.wait(for: 6))
        #expect(handled.items.sorted() == (0..<5).map { "frame-\($0)" } + ["last"], "each handled once")
        await source.close()
        await function.close()
        await zipper.close()
    }

    @Test("a function redialled after its handlers finished frames of the lost connection names them, and if its new connection ends before it reads their copies, the zipper does not give those to its next connection")
    func handledBeforeNotGivenAgain() async throws {
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0))
        try await zipper.start()
        let address = try #require(zipper.address)
        let (first, rest) = (Gate(), Gate())
        let handled = Inbox<String>()
        // A second between a lost connection and the redial: time for the running handlers to finish.
        let slow = ReconnectPolicy(firstRetryDelay: .seconds(1) ... .seconds(1), initialDelay: .seconds(1), maximumDelay: .seconds(1), jitter: 0)
        let function = StreamFunction(name: "before", zipper: address, options: .init(observedTags: [0x33], reconnect: slow, handlerConcurrency: 2))
        function.setHandler { ctx in
            let text = String(decoding: ctx.data, as: UTF8.self)
            await (text == "frame-0" || text == "frame-1" ? first : rest).wait()
            handled.append(text)
        }
        try await function.connect()
        let source = Source(name: "writer", zipper: address)
        try await source.connect()
        for index in 0..<5 { try await source.write(tag: 0x33, data: Array("frame-\(index)".utf8)) }
        // Two in the handlers, the third waiting for them, all acknowledged.
        #expect(await eventually {
            function.client.framesReceivedForTesting == 3 && functionConnections(zipper, named: "before").first?.unacknowledgedBytes == 0
        })
        await function.client.dropConnectionForTesting()
        #expect(await eventually { zipper.statistics.unacknowledgedFramesHeld == 5 }, "\(zipper.statistics)")
        // Finished while it waits to redial: the zipper is not told on the lost connection.
        first.open()
        #expect(await handled.wait(for: 2))
        #expect(await eventually(within: .seconds(10)) { function.client.reconnectCountForTesting == 1 })
        // The zipper gave the five again; the function names the two, and does not read on: its handlers are full.
        #expect(await eventually {
            guard let health = functionConnections(zipper, named: "before").first else { return false }
            return health.handledBeforeCount == 2 && health.unacknowledgedBytes == 0 && zipper.statistics.heldFramesDelivered == 5
        }, "\(functionConnections(zipper, named: "before").map(\.handledBeforeCount)) \(zipper.statistics)")
        await function.client.dropConnectionForTesting()
        // Before, all five went back again, and a next instance would have handled the two again.
        #expect(await eventually { zipper.statistics.unacknowledgedFramesHeld > 5 })
        #expect(zipper.statistics.unacknowledgedFramesHeld == 8, "\(zipper.statistics)")
        rest.open()
        #expect(await eventually(within: .seconds(10)) { function.client.reconnectCountForTesting == 2 })
        try await source.write(tag: 0x33, data: Array("last".utf8))
        #expect(await handled.wait(for: 6))
        #expect(handled.items.sorted() == (0..<5).map { "frame-\($0)" } + ["last"], "each handled once")
        await source.close()
        await function.close()
        await zipper.close()
    }

    @Test("what a function remembers of frames that may come again keeps a frame its handlers have yet to finish, however long ago it came, and a finished one for copiesWindow, no longer")
    func copiesRememberedWhileNeeded() {
        let ledger = HandlingLedger(startingAt: 0)
        let finished = ledger.received(end: 10, length: 10, frame: nil)
        let running = ledger.received(end: 20, length: 10, frame: nil)
        finished.finished()
        let now = ContinuousClock.now
        let old = now - ClientRuntime.copiesWindow - .seconds(1)
        let recent = now - ClientRuntime.copiesWindow + .seconds(1)
        func key(_ tid: String) -> CopyKey { CopyKey(tid: tid, tag: 0x33, shape: 0) }
        let noted: ClientRuntime.MayComeAgain = [key("finished-old"): (finished, old), key("finished-recent"): (finished, recent), key("running-old"): (running, old)]
        #expect(ClientRuntime.stillToRecognize(noted, at: now).keys.map(\.tid).sorted() == ["finished-recent", "running-old"])
        running.finished()
        #expect(ClientRuntime.stillToRecognize(noted, at: now).keys.map(\.tid).sorted() == ["finished-recent"], "once finished, forgotten when old")
    }

    @Test("the ledger tells the end of the frames handled in order and of those taken, and knows a frame that comes again")
    func ledger() throws {
        let ledger = HandlingLedger(startingAt: 10)
        let first = ledger.received(end: 20, length: 10, frame: Self.dataFrame(tid: "a"))
        let second = ledger.received(end: 30, length: 10, frame: Self.dataFrame(tid: "b"))
        ledger.passed(end: 35)
        let third = ledger.received(end: 40, length: 5, frame: Self.dataFrame(tid: "c"))
        typealias Tell = HandlingLedger.Tell
        #expect(ledger.advance(acknowledged: 0) == (nil, true))
        // Handlers took the first two: told, though none finished.
        first.taken()
        second.taken()
        #expect(ledger.advance(acknowledged: 0) == (Tell(handled: 10, taken: 30), true))
        ledger.told(Tell(handled: 10, taken: 30), receiptEnd: 90)
        ledger.took(through: 25)
        #expect(ledger.advance(acknowledged: 0) == (nil, true), "told, and taken never moves back")
        second.finished()
        let ahead = ledger.advance(acknowledged: 0)
        #expect(ahead == (Tell(handled: 10, taken: 30, handledAhead: [20..<35]), true), "the first still runs: the second (and what passed after it) told as a range")
        ledger.told(try #require(ahead.tell), receiptEnd: 95)
        #expect(ledger.advance(acknowledged: 0) == (nil, true))
        first.finished()
        #expect(ledger.advance(acknowledged: 0) == (Tell(handled: 35, taken: 35), true),
                "through the frame passed after the second, taken or not")
        ledger.told(Tell(handled: 35, taken: 35), receiptEnd: 100)
        #expect(!ledger.isQuiet)
        // Ends while the third runs, before the zipper acknowledged the receipt:
        // it may have been lost with the connection, so all three may come again.
        #expect(ledger.untold(acknowledged: 99).keys.map(\.tid).sorted() == ["a", "b", "c"])
        // Once the receipt is acknowledged, still all three: the first two were
        // told, but a zipper that died then may not have settled them for their senders.
        #expect(ledger.untold(acknowledged: 100).keys.map(\.tid).sorted() == ["a", "b", "c"])
        let next = HandlingLedger(startingAt: 0)
        let copy = next.received(end: 50, length: 10, frame: Self.dataFrame(tid: "c"))
        ledger.untold(acknowledged: 100).first { $0.key.tid == "c" }?.value.forward(to: copy)
        #expect(next.advance(acknowledged: 0) == (nil, true), "the copy waits for the original")
        third.finished()
        #expect(ledger.advance(acknowledged: 100) == (Tell(handled: 40, taken: 40), true))
        #expect(next.advance(acknowledged: 0) == (Tell(handled: 50, taken: 50), true), "finished with the original")
        next.told(Tell(handled: 50, taken: 50), receiptEnd: 20)
        #expect(next.isQuiet)
        #expect(next.advance(acknowledged: 10) == (nil, true), "its receipt not yet acknowledged: kept")
        #expect(next.advance(acknowledged: 20) == (nil, false), "nothing left: idle until the next frame")
    }

    @Test("handshake field 0C and receipt fields 03, 04, 05, 06, 07, 09 and 0B round-trip, and a decoder that does not know a field skips it")
    func wire() throws {
        let handshake = HandshakeFrame(name: "f", id: "id", clientType: .streamFunction, wantsReceipts: true, acknowledgesHandling: true)
        var decoder = FrameDecoder()
        var bytes = Frame.handshake(handshake).encoded()
        #expect(try decoder.decodeFrame(buffer: &bytes) == .handshake(handshake))
        var plain = HandshakeFrame(name: "f", id: "id", clientType: .streamFunction, wantsReceipts: true)
        #expect(Frame.handshake(handshake).encoded().readableBytes == Frame.handshake(plain).encoded().readableBytes + 3)
        plain.acknowledgesHandling = true
        #expect(plain == handshake)
        let receipt = ReceiptFrame(settledThrough: 77, welcomesHandling: true)
        var receiptBytes = Frame.receipt(receipt).encoded()
        #expect(try decoder.decodeFrame(buffer: &receiptBytes) == .receipt(receipt))
        var unwelcoming = Frame.receipt(ReceiptFrame(settledThrough: 77)).encoded()
        guard case .receipt(let decoded)? = try decoder.decodeFrame(buffer: &unwelcoming) else {
            Issue.record("not a receipt")
            return
        }
        #expect(!decoded.welcomesHandling)
        // A closing function's notice: field 04, three bytes more; a decoder
        // that does not know a field (04 made 0E here) reads a plain receipt.
        let notice = ReceiptFrame(settledThrough: 77, closing: true)
        var noticeBytes = Frame.receipt(notice).encoded()
        #expect(noticeBytes.readableBytes == Frame.receipt(ReceiptFrame(settledThrough: 77)).encoded().readableBytes + 3)
        var unknown = noticeBytes
        let fieldAt = unknown.writerIndex - 3
        let field = try #require(unknown.getInteger(at: fieldAt, as: UInt8.self))
        unknown.setInteger(field ^ 0x04 ^ 0x0E, at: fieldAt)
        #expect(try decoder.decodeFrame(buffer: &noticeBytes) == .receipt(notice))
        #expect(try decoder.decodeFrame(buffer: &unknown) == .receipt(ReceiptFrame(settledThrough: 77)))
        // What the function's handlers took: field 05, an offset of 8 bytes
        // (10 bytes more), with the others; a field of another length is refused.
        let taken = ReceiptFrame(settledThrough: 77, closing: true, takenThrough: 1 << 40 | 5)
        var takenBytes = Frame.receipt(taken).encoded()
        #expect(takenBytes.readableBytes == Frame.receipt(notice).encoded().readableBytes + 10)
        var short = Frame.receipt(taken).encoded()
        short.moveWriterIndex(to: short.writerIndex - 10)
        short.writeBytes([0x05, 0x04, 0, 0, 0, 5])
        short.setInteger(try #require(short.getInteger(at: 1, as: UInt8.self)) - 4, at: 1)
        #expect(try decoder.decodeFrame(buffer: &takenBytes) == .receipt(taken))
        #expect(throws: WireError.self) { try decoder.decodeFrame(buffer: &short) }
        // Ranges handled out of order: field 06, 16 bytes a range (start, end).
        let ahead = ReceiptFrame(settledThrough: 77, takenThrough: 90, handledAhead: [100..<130, 1 << 33..<(1 << 33 | 7)])
        var aheadBytes = Frame.receipt(ahead).encoded()
        #expect(aheadBytes.readableBytes == Frame.receipt(ReceiptFrame(settledThrough: 77, takenThrough: 90)).encoded().readableBytes + 2 + 32)
        #expect(Array(aheadBytes.readableBytesView.suffix(34).prefix(10)) == [0x06, 0x20, 0, 0, 0, 0, 0, 0, 0, 100])
        #expect(try decoder.decodeFrame(buffer: &aheadBytes) == .receipt(ahead))
        // A field that is not whole ranges, or a range that ends where it starts, is refused.
        for bad: [UInt8] in [[0x06, 0x08, 0, 0, 0, 0, 0, 0, 0, 1], [0x06, 0x10] + [UInt8](repeating: 0, count: 7) + [5] + [UInt8](repeating: 0, count: 7) + [5]] {
            var bytes = Frame.receipt(ReceiptFrame(settledThrough: 77)).encoded()
            bytes.writeBytes(bad)
            bytes.setInteger(try #require(bytes.getInteger(at: 1, as: UInt8.self)) + UInt8(bad.count), at: 1)
            let error = try #require(throws: WireError.self) { try decoder.decodeFrame(buffer: &bytes) }
            #expect(error.message.contains("range"), "\(error)")
        }
        // A zipper from before reads the receipt without them.
        var older = Frame.receipt(ahead).encoded()
        older.setInteger(UInt8(0x0E), at: older.writerIndex - 34)
        #expect(try decoder.decodeFrame(buffer: &older) == .receipt(ReceiptFrame(settledThrough: 77, takenThrough: 90)))
        // Transaction ids handled on an earlier connection: field 07, each a length byte and its bytes.
        let before = ReceiptFrame(settledThrough: 77, takenThrough: 90, handledBefore: ["abc", String(repeating: "t", count: 21)])
        var beforeBytes = Frame.receipt(before).encoded()
        #expect(beforeBytes.readableBytes == Frame.receipt(ReceiptFrame(settledThrough: 77, takenThrough: 90)).encoded().readableBytes + 2 + 4 + 22)
        #expect(Array(beforeBytes.readableBytesView.suffix(28).prefix(6)) == [0x07, 26, 3, 0x61, 0x62, 0x63])
        #expect(try decoder.decodeFrame(buffer: &beforeBytes) == .receipt(before))
        // Transaction ids of copies a zipper holds for a closing function's name: field 0B, last, the same way.
        let held = ReceiptFrame(settledThrough: 0, heldCopies: ["abc", "de"])
        var heldBytes = Frame.receipt(held).encoded()
        #expect(Array(heldBytes.readableBytesView.suffix(9)) == [0x0B, 7, 3, 0x61, 0x62, 0x63, 2, 0x64, 0x65])
        var unknownHeld = heldBytes
        unknownHeld.setInteger(UInt8(0x0E), at: unknownHeld.writerIndex - 9)
        #expect(try decoder.decodeFrame(buffer: &heldBytes) == .receipt(held))
        #expect(try decoder.decodeFrame(buffer: &unknownHeld) == .receipt(ReceiptFrame(settledThrough: 0)), "a function from before reads a plain receipt")
        // An empty id, or one that runs past the field, is refused.
        for bad: [UInt8] in [[0x07, 0x02, 0x00, 0x61], [0x07, 0x03, 0x01, 0x61, 0x05], [0x0B, 0x02, 0x00, 0x61]] {
            var bytes = Frame.receipt(ReceiptFrame(settledThrough: 77)).encoded()
            bytes.writeBytes(bad)
            bytes.setInteger(try #require(bytes.getInteger(at: 1, as: UInt8.self)) + UInt8(bad.count), at: 1)
            let error = try #require(throws: WireError.self) { try decoder.decodeFrame(buffer: &bytes) }
            #expect(error.message.contains("transaction ids"), "\(error)")
        }
        // The bytes the handlers took: field 09, 8 bytes, last; a zipper from before reads the receipt without it.
        let counted = ReceiptFrame(settledThrough: 77, takenThrough: 90, takenBytes: 1 << 35 | 9)
        var countedBytes = Frame.receipt(counted).encoded()
        #expect(Array(countedBytes.readableBytesView.suffix(10)) == [0x09, 0x08, 0, 0, 0, 0x08, 0, 0, 0, 9])
        var uncounted = countedBytes
        uncounted.setInteger(UInt8(0x0E), at: uncounted.writerIndex - 10)
        #expect(try decoder.decodeFrame(buffer: &countedBytes) == .receipt(counted))
        #expect(try decoder.decodeFrame(buffer: &uncounted) == .receipt(ReceiptFrame(settledThrough: 77, takenThrough: 90)))
    }

    @Test("the zipper keeps a function's ranges handled out of order merged, past what it settled in order, and at most maximumRanges of them")
    func handledAheadRanges() {
        var ahead = HandledAhead()
        ahead.add(100..<130)
        ahead.add(200..<210)
        ahead.add(130..<150)
        #expect(ahead.ranges == [100..<150, 200..<210] && ahead.bytes == 60, "touching ranges merge")
        ahead.add(140..<205)
        #expect(ahead.ranges == [100..<210] && ahead.bytes == 110, "one that overlaps two joins them")
        ahead.add(300..<320)
        #expect(ahead.contains(100..<140) && ahead.contains(300..<320))
        #expect(!ahead.contains(90..<110) && !ahead.contains(200..<230) && !ahead.contains(250..<260), "only a frame wholly inside")
        ahead.settled(through: 120)
        #expect(ahead.ranges == [120..<210, 300..<320] && ahead.bytes == 110)
        ahead.settled(through: 250)
        #expect(ahead.ranges == [300..<320] && ahead.bytes == 20)
        for start in stride(from: 1000, to: 1000 + 3 * HandledAhead.maximumRanges, by: 3) { ahead.add(start..<start + 1) }
        #expect(ahead.ranges.count == HandledAhead.maximumRanges, "past the limit a new range is not kept")
        #expect(ahead.ranges.last == (1000 + 3 * (HandledAhead.maximumRanges - 2))..<(1001 + 3 * (HandledAhead.maximumRanges - 2)))
        ahead.add(1001..<1003)
        #expect(ahead.contains(1000..<1004), "one that merges with a kept range still is")
    }

    @Test("a zipper says in its first receipt that it answers a closing function's word, and answers it once per connection however often it is repeated, with where what it no longer keeps ends")
    func closingAnsweredOnce() async throws {
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0))
        try await zipper.start()
        let port = try #require(zipper.port)
        // Takes the raw function's own frame, so the zipper settles it at once.
        let sink = StreamFunction(name: "sink", zipper: "127.0.0.1:\(port)", options: .init(observedTags: [0x34]))
        sink.setHandler { _ in }
        try await sink.connect()
        // A stream function of the tests' own, which repeats its closing word.
        var (function, frames, welcome) = try await rawHandlingFunction(port: port)
        #expect(welcome.unkeptThrough == 0, "it answers closing words")
        let start = UInt64(frames.consumedBytes)
        for _ in 0..<3 {
            try await function.write(.receipt(ReceiptFrame(settledThrough: start, closing: true, takenThrough: start, takenBytes: 0)))
        }
        // Then a frame of its own: the zipper's receipt for it comes after any answer.
        try await function.write(.data(DataFrame(tag: 0x34, payload: ByteBuffer(string: "answer"))))
        let written = UInt64(function.connection.sendProgress.written)
        var answers: [ReceiptFrame] = []
        while let frame = try await frames.next() {
            guard case .receipt(let receipt) = frame else { continue }
            if receipt.closing { answers.append(receipt) }
            if receipt.settledThrough >= written { break }
        }
        #expect(answers == [ReceiptFrame(settledThrough: 0, closing: true, unkeptThrough: 0)], "\(answers)")
        #expect(zipper.routesForTesting(tag: 0x33).isEmpty, "and it routes nothing more there")
        await function.close()
        await sink.close()
        await zipper.close()
    }

    @Test("a closing function's ledger gives back frames: nothing is told taken or handled past the first given back, nor past frames waiting for the zipper's answer, and it is quiet once those before it are handled and told")
    func ledgerGivesBack() throws {
        let ledger = HandlingLedger(startingAt: 0, zipperAnswersClosing: true)
        let frames = (1...5).map { ledger.received(end: $0 * 10, length: 10, frame: nil) }
        typealias Tell = HandlingLedger.Tell
        frames[0].taken()
        #expect(frames[1].start == 10 && frames[1].mustBeHandled(unkept: 11, settleable: 0) && frames[1].mustBeHandled(unkept: 0, settleable: 20))
        #expect(!frames[1].mustBeHandled(unkept: 10, settleable: 19), "starts where the zipper keeps, ends past what it may have settled")
        #expect(ledger.closingState == .no)
        ledger.awaitAnswer()
        #expect(ledger.closingState == .awaitingAnswer)
        // A frame passed over (a receipt) after those read since the word, which wait for the answer untaken.
        ledger.took(through: 40)
        #expect(ledger.advance(acknowledged: 0).tell?.taken == 10, "not taken past the frames awaiting the answer")
        ledger.giveBack(from: 10)
        #expect(ledger.closingState == .givingBack)
        // A receipt read with the pipe handler's queue empty moves what was taken past the frames read.
        ledger.took(through: 50)
        ledger.passed(end: 55)
        #expect(ledger.advance(acknowledged: 0) == (Tell(handled: 0, taken: 10), true), "never taken past the first given back")
        #expect(!ledger.isQuiet)
        frames[0].finished()
        let tell = try #require(ledger.advance(acknowledged: 0).tell)
        #expect(tell == Tell(handled: 10, taken: 10))
        #expect(!ledger.isQuiet, "handled, not yet told")
        ledger.told(tell, receiptEnd: 30)
        #expect(ledger.isQuiet, "the frames given back are not waited for")
        // Without giving back, those frames are.
        let plain = HandlingLedger(startingAt: 0)
        let first = plain.received(end: 10, length: 10, frame: nil)
        _ = plain.received(end: 20, length: 10, frame: nil)
        first.finished()
        plain.told(try #require(plain.advance(acknowledged: 0).tell), receiptEnd: 30)
        #expect(!plain.isQuiet)
    }

    @Test("a frame an earlier connection brought goes back as its copy read on this one: a kept frame's copy past the first given back is waited for until told handled, and a token knows its copy until it finishes")
    func ledgerGivesBackCopies() throws {
        let earlier = HandlingLedger(startingAt: 0)
        let originals = (0..<3).map { earlier.received(end: ($0 + 1) * 10, length: 10, frame: nil) }
        // Copies came on the next connection in another order: the third's first, then the first's, then the second's.
        let ledger = HandlingLedger(startingAt: 0, zipperAnswersClosing: true)
        let copies = (0..<3).map { ledger.received(end: ($0 + 1) * 10, length: 10, frame: nil) }
        for (original, copy) in zip(originals, [copies[1], copies[2], copies[0]]) { original.forward(to: copy) }
        #expect(originals.map { $0.copy?.start } == [10, 20, 0])
        #expect(copies.allSatisfy { $0.copy == nil }, "no copy of the copies")
        typealias Tell = HandlingLedger.Tell
        // The first is kept (the zipper may have settled it), the second and third go back.
        ledger.awaitAnswer()
        ledger.giveBack(from: 0)
        // (Until the first is handled, the pipe handler's queue says the function is not quiet.)
        originals[0].finished()
        #expect(originals[0].copy == nil, "finished, and its copy with it")
        #expect(!ledger.isQuiet, "its copy is handled, not yet told")
        let tell = try #require(ledger.advance(acknowledged: 0).tell)
        #expect(tell == Tell(handled: 0, taken: 0, handledAhead: [10..<20]), "told as a range: nothing given back is covered")
        ledger.told(tell, receiptEnd: 10)
        #expect(ledger.isQuiet, "the frames given back are not waited for")
    }

    @Test("what a closing function reckons the zipper may have settled is never short of what the zipper's pace settles at any receipt it read, whatever the receipts' spacing, pace and way there")
    func settleableBoundCoversThePace() {
        // A fixed sequence of pseudo-random numbers (splitmix64), so a failure repeats.
        var seed: UInt64 = 0x5EED
        func random(_ range: ClosedRange<Int>) -> Int {
            seed &+= 0x9E37_79B9_7F4A_7C15
            var z = seed
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            return range.lowerBound + Int(z % UInt64(range.count))
        }
        let start = ContinuousClock.now
        for _ in 0..<300 {
            var bound = SettleableBound(from: 0)
            var pace = TakingPace()
            var (written, arrived, taken, progress) = (0, 0, 0, 0)
            var settled = 0
            bound.note(taken: 0, progress: 0, at: start)
            for _ in 0..<random(1...60) {
                // Receipts every 5 ms while frames flow, seconds apart when idle; each on its way for up to 20 ms.
                written += random(0...9) == 0 ? random(100...3000) : random(0...12)
                arrived = max(arrived, written + random(0...20))
                let took = random(0...3) == 0 ? 0 : random(1...5000)
                progress += took
                taken += took + (random(0...9) == 0 ? random(1...20_000) : 0)  // copies finished as read move it too
                bound.note(taken: taken, progress: progress, at: start + .milliseconds(written))
                settled = max(settled, pace.settleable(taken: taken, progress: progress, at: start + .milliseconds(arrived)))
                #expect(bound.furthest >= settled, "the zipper settled through \(settled), the function reckons \(bound.furthest)")
            }
            #expect(bound.furthest <= taken + progress, "at most all it took again beyond")
        }
    }

    @Test("the ledger says the end of the frames handled in order whose answers the zipper settled (what the function wrote before each one's handler finished), past its bound the oldest anyway")
    func ledgerSaysWhatIsAnswered() throws {
        let ledger = HandlingLedger(startingAt: 0)
        let frames = (1...4).map { ledger.received(end: $0 * 10, length: 10, frame: nil) }
        typealias Tell = HandlingLedger.Tell
        ledger.wrote(through: 100)
        frames[0].finished()
        ledger.wrote(through: 200)
        frames[1].finished()
        frames[3].finished()
        let first = try #require(ledger.advance(acknowledged: 0).tell)
        #expect(first == Tell(handled: 20, taken: 20, answered: 0, handledAhead: [30..<40]), "handled; their answers are not settled")
        ledger.told(first, receiptEnd: 1)
        #expect(ledger.advance(acknowledged: 0).tell == nil)
        ledger.writesSettled(through: 150)
        let second = try #require(ledger.advance(acknowledged: 0).tell)
        #expect(second == Tell(handled: 20, taken: 20, answered: 10), "the first's answer is")
        ledger.told(second, receiptEnd: 2)
        ledger.wrote(through: 300)
        frames[2].finished()
        ledger.writesSettled(through: 200)
        let third = try #require(ledger.advance(acknowledged: 0).tell)
        #expect(third == Tell(handled: 40, taken: 40, answered: 20), "the third's answer is not, though the fourth's, written before, is")
        ledger.told(third, receiptEnd: 3)
        ledger.writesSettled(through: 300)
        #expect(ledger.advance(acknowledged: 0).tell == Tell(handled: 40, taken: 40, answered: 40))

        let busy = HandlingLedger(startingAt: 0)
        let many = (1...(HandlingLedger.maximumAwaitingAnswers + 4)).map { busy.received(end: $0, length: 1, frame: nil) }
        busy.wrote(through: 1 << 20)
        for frame in many { frame.finished() }
        let tell = try #require(busy.advance(acknowledged: 0).tell)
        #expect(tell.handled == many.count && tell.answered == 4, "the oldest past the bound are said answered: \(tell)")
    }

    @Test("the ledger names the ranges handled past those handled in order, each once told")
    func ledgerRangesAhead() throws {
        let ledger = HandlingLedger(startingAt: 0)
        let frames = (1...6).map { ledger.received(end: $0 * 10, length: 10, frame: nil) }
        typealias Tell = HandlingLedger.Tell
        frames[2].finished()
        frames[3].finished()
        let first = ledger.advance(acknowledged: 0)
        #expect(first.tell == Tell(handled: 0, taken: 0, handledAhead: [20..<40]), "the third and fourth, after the second's end")
        // Not queued (a zipper that stopped reading): named again.
        #expect(ledger.advance(acknowledged: 0).tell == first.tell)
        ledger.told(try #require(first.tell), receiptEnd: 5)
        #expect(ledger.advance(acknowledged: 0).tell == nil, "told")
        ledger.passed(end: 65)
        frames[5].finished()
        let second = ledger.advance(acknowledged: 0).tell
        #expect(second == Tell(handled: 0, taken: 0, handledAhead: [50..<65]), "with the frame passed after it")
        ledger.told(try #require(second), receiptEnd: 6)
        frames[1].finished()
        #expect(ledger.advance(acknowledged: 0).tell == Tell(handled: 0, taken: 0, handledAhead: [10..<40]), "a run grows back to what it joins")
        frames[0].finished()
        #expect(ledger.advance(acknowledged: 0).tell == Tell(handled: 40, taken: 40), "in order now: no range")
    }
}

/// A zipper in this process, a sink of 0x34, and `uppercase-sfn` in its own
/// process holding five frames of a source in handlers that wait ten minutes:
/// its QUIC stack acknowledged them, and the zipper keeps them for want of
/// its handlers' word.
final class FunctionStuckInItsHandlers: Sendable {
    let zipper: Zipper
    let sink: StreamFunction
    let received: Inbox<String>
    let source: Source
    let texts = (0..<5).map { "frame-\($0)" }
    private let function: Mutex<Process>

    init(pipe: Bool, tracerProvider: TracerProvider? = nil) async throws {
        let meters = MeterProvider(configuration: .init(serviceName: "zipper", environment: [:]))
        zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0), options: .init(tracerProvider: tracerProvider, meterProvider: meters))
        try await zipper.start()
        let address = try #require(zipper.address)
        (sink, received) = try await connectUppercaseSink(zipper: address)
        function = Mutex(try startFunctionProcess(zipper: address, pipe: pipe, handlerDelayMs: 600_000))
        let zipper = self.zipper
        #expect(await eventually(within: .seconds(20)) { functionConnections(zipper, named: "upper").count == 1 })
        source = Source(name: "writer", zipper: address)
        try await source.connect()
        for text in texts { try await source.write(tag: 0x33, data: Array((text + ":").utf8)) }
        // All five written to the function and acknowledged by its QUIC stack
        // (counted: a guess at their bytes let one still on its way pass).
        let delivered = { routedToDestinations(meters) }
        let kept = await eventually {
            guard let bytes = functionConnections(zipper, named: "upper").first else { return false }
            return delivered() == 5 && bytes.unacknowledgedBytes == 0
        }
        #expect(kept, "\(functionConnections(zipper, named: "upper"))")
    }

    /// kill -9, and returns once it exited.
    func killFunction() async {
        let process = function.withLock { $0 }
        killFunctionNow()
        await waitForExit(process)
    }

    /// kill -9, not waiting (a test's `defer`).
    func killFunctionNow() {
        let process = function.withLock { $0 }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }

    /// Its next instance, whose handlers answer at once.
    func startFunction(pipe: Bool) throws {
        let address = try #require(zipper.address)
        let process = try startFunctionProcess(zipper: address, pipe: pipe)
        function.withLock { $0 = process }
    }

    func expectEachAnsweredOnce() async {
        let (texts, received) = (texts.map { $0.uppercased() }, received)
        #expect(await eventually(within: .seconds(30)) { Set(received.items).isSuperset(of: texts) },
                "missing \(Set(texts).subtracting(received.items).sorted())")
        #expect(received.items.sorted() == texts, "each once: \(received.items)")
        #expect(zipper.statistics.unacknowledgedBytesLost == 0)
    }

    func close() async {
        killFunctionNow()
        await source.close()
        await sink.close()
        await zipper.close()
    }
}

/// Stream functions of tag 0x33, each dialling the zipper on its own host
/// (the zipper listens on `host` and keeps `budget` bytes of what they have
/// not handled), whose handlers wait for `gate`, and a source that wrote
/// `frames` frames of 5 KB to them: made once every frame is in a handler
/// and acknowledged. Handlers record "name:frame-N" as they enter and end.
final class StalledHandlers: Sendable {
    let zipper: Zipper
    let functions: [StreamFunction]
    let source: Source
    let gate = Gate()
    let entered = Inbox<String>()
    let handled = Inbox<String>()

    init(host: String = "127.0.0.1", budget: Int, functions dialling: [(name: String, host: String)], frames: Int) async throws {
        var configuration = ZipperConfiguration(host: host, port: 0)
        configuration.limits.maximumUnhandledBytes = budget
        zipper = Zipper(configuration: configuration)
        try await zipper.start()
        let port = try #require(zipper.port)
        let fast = ReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(100))
        var functions: [StreamFunction] = []
        for (name, functionHost) in dialling {
            let function = StreamFunction(name: name, zipper: "\(functionHost):\(port)", options: .init(observedTags: [0x33], reconnect: fast))
            function.setHandler { [entered, gate, handled] ctx in
                let label = "\(name):\(String(decoding: ctx.data.prefix(while: { $0 != UInt8(ascii: " ") }), as: UTF8.self))"
                entered.append(label)
                await gate.wait()
                handled.append(label)
            }
            try await function.connect()
            functions.append(function)
        }
        self.functions = functions
        source = Source(name: "writer", zipper: "127.0.0.1:\(port)")
        try await source.connect()
        // Frames over 4 KiB are sent as their own buffers, the unit a retention keeps.
        for index in 0..<frames {
            try await source.write(tag: 0x33, data: Array("frame-\(index) ".utf8) + [UInt8](repeating: 0x78, count: 5000))
        }
        let stalled = await eventually { [self] in
            entered.items.count == dialling.count * frames && connections().count == dialling.count
                && connections().allSatisfy { $0.unacknowledgedBytes == 0 }
        }
        #expect(stalled, "\(entered.items.count) in handlers; \(connections())")
    }

    /// The functions' connections at the zipper.
    func connections() -> [ClientConnectionHealth] {
        functions.flatMap { functionConnections(zipper, named: $0.name) }
    }

    func close() async {
        await source.close()
        for function in functions { await function.close() }
        await zipper.close()
    }
}

/// The zipper's connections to the stream functions named `name` (what
/// `yomo.zipper.client.*` shows of them).
/// The zipper's count of frames it wrote to their destinations
/// (`yomo.zipper.routed.messages`, outcome `delivered`), nil before the first.
func routedToDestinations(_ meters: MeterProvider) -> Double? {
    guard let routed = meters.collect().first(where: { $0.descriptor.name == "yomo.zipper.routed.messages" }),
          let point = routed.points.first(where: { $0.attributes.pairs.contains { $0.key == "outcome" && $0.value == "delivered" } }),
          case .scalar(let value) = point.value else { return nil }
    return value
}

func functionConnections(_ zipper: Zipper, named name: String) -> [ClientConnectionHealth] {
    zipper.clientConnections().filter { $0.member.clientType == .streamFunction && $0.member.name == name }
}
