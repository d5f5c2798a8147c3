import Foundation
import Logging
import Synchronization
import Testing
import YoMoLogging
import YoMoQUIC

@testable import YoMo

/// Handlers that never finish must not hold a function's close or its
/// reconnect; options that cannot work are refused at `connect()`.
@Suite("Handlers that never finish, and options that cannot work", .serialized)
struct HandlerLifecycleTests {
    enum Stuck: String, CaseIterable, Sendable {
        /// Async handlers, no limit: every frame's handler waits.
        case unlimited
        /// Two handlers wait and a third frame waits for `handlerConcurrency`.
        case atConcurrencyLimit
        /// One handler waits and the next frame waits for `maximumHandlerBytes`.
        case atByteLimit
        /// The pipe handler waits on its first frame; the rest stay queued.
        case pipe
        /// Async handlers that sleep for an hour: cancelled at the deadline.
        case cancellable

        /// Handlers running when close() is called.
        var running: Int {
            switch self {
            case .unlimited, .cancellable: 6
            case .atConcurrencyLimit: 2
            case .atByteLimit, .pipe: 1
            }
        }
    }

    @Test("close() returns at the shutdown deadline while handlers never finish, and says how many it left", arguments: Stuck.allCases)
    func closeReturnsAtTheDeadline(_ stuck: Stuck) async throws {
        let logs = InMemoryLogSink()
        var options = StreamFunction.Options(observedTags: [0x61], shutdownTimeout: .seconds(1))
        options.logger = TracingEndToEndTests.debugLogger("yomo", logs)
        switch stuck {
        case .atConcurrencyLimit: options.handlerConcurrency = 2
        case .atByteLimit: options.maximumHandlerBytes = 1
        default: break
        }
        try await withZipper { address, _ in
            let gate = Gate()
            let entered = Inbox<Int>()
            let writeErrors = Inbox<YoMoError.Code>()
            let handlerErrors = Inbox<String>()
            let sfn = StreamFunction(name: "stuck", zipper: address, options: options)
            sfn.setErrorHandler { handlerErrors.append($0.message) }
            if stuck == .pipe {
                sfn.setPipeHandler { input, output in
                    for await frame in input {
                        entered.append(frame.data.count)
                        await gate.wait()
                        do { try await output.write(tag: 0x62, data: frame.data) } catch let error as YoMoError { writeErrors.append(error.code) }
                    }
                }
            } else {
                sfn.setHandler { ctx in
                    entered.append(ctx.data.count)
                    if stuck == .cancellable { try await Task.sleep(for: .seconds(3600)) }
                    await gate.wait()
                    do { try await ctx.write(tag: 0x62, data: ctx.data) } catch let error as YoMoError { writeErrors.append(error.code) }
                }
            }
            try await sfn.connect()
            let source = Source(name: "six", zipper: address)
            try await source.connect()
            for index in 0..<6 { try await source.write(tag: 0x61, data: Array("frame-\(index)".utf8)) }
            #expect(await entered.wait(for: stuck.running))
            if stuck == .atConcurrencyLimit || stuck == .atByteLimit {
                // The next frame waits for the limits, so reading is held, not waiting for a frame.
                #expect(await eventually { !TracingEndToEndTests.records(logs, "async handlers are at their limit: reading no frames until one finishes").isEmpty })
            }

            let closed = Inbox<Void>()
            let closing = Task {
                await sfn.close()
                closed.append(())
            }
            // Before, close() waited for the handlers and never returned.
            #expect(await closed.wait(for: 1, timeout: .seconds(15)), "close() returned")
            let warnings = TracingEndToEndTests.records(logs, "handlers still running at the close deadline: cancelled, and closing without them")
            #expect(warnings.count == 1)
            // The pipe handler is one handler, whatever it holds.
            #expect(warnings.first?["handlers"] as? String == "\(stuck.running)")
            // The zipper acknowledged everything the function wrote: no word of frames it did not.
            #expect(TracingEndToEndTests.records(logs, "close deadline reached before the zipper acknowledged every frame").isEmpty)
            #expect(sfn.endReason?.code == .closed)
            if stuck == .cancellable {
                // Cancelled, each sleeping handler threw, and the error handler heard of it.
                #expect(await handlerErrors.wait(for: stuck.running))
                #expect(handlerErrors.items.allSatisfy { $0.contains("CancellationError") }, "\(handlerErrors.items)")
            } else {
                // Released late, the handlers' writes fail with `.closed`: nothing is lost unreported.
                gate.open()
                #expect(await writeErrors.wait(for: stuck.running))
                #expect(writeErrors.items.allSatisfy { $0 == .closed }, "\(writeErrors.items)")
            }
            #expect(entered.count == stuck.running, "no frame was taken after close()")
            await closing.value
            await source.close()
        }
    }

    @Test("a lost connection is redialled while handlers of the old one still run, and the pipe handler carries on", arguments: [false, true])
    func redialWhileHandlersRun(pipe: Bool) async throws {
        let key = NSTemporaryDirectory() + "yomo-test-reset-\(UUID().uuidString).key"
        defer { try? FileManager.default.removeItem(atPath: key) }
        let zipper = try await ZipperProcess(port: try await freePort(), arguments: ["--stateless-reset-key-file", key])
        let fast = ReconnectPolicy(initialDelay: .milliseconds(100), maximumDelay: .milliseconds(500))
        let gate = Gate()
        let received = Inbox<String>()
        let lost = Inbox<YoMoError>()
        let pipeRuns = Atomic(0)
        let sfn = StreamFunction(name: "patient", zipper: zipper.address, options: .init(observedTags: [0x63], reconnect: fast, retryConnect: true))
        sfn.setErrorHandler { lost.append($0) }
        if pipe {
            sfn.setPipeHandler { input, _ in
                pipeRuns.add(1, ordering: .relaxed)
                for await frame in input {
                    let text = String(decoding: frame.data, as: UTF8.self)
                    received.append(text)
                    if text == "stall" { await gate.wait() }
                }
            }
        } else {
            sfn.setHandler { ctx in
                let text = String(decoding: ctx.data, as: UTF8.self)
                received.append(text)
                if text == "stall" { await gate.wait() }
            }
        }
        try await sfn.connect()
        let source = Source(name: "writer", zipper: zipper.address, options: .init(reconnect: fast, retryConnect: true))
        try await source.connect()
        try await source.write(tag: 0x63, data: Array("stall".utf8))
        #expect(await received.wait(for: 1))
        // Settled (its receipt came): else the source sends it again after the kill, at least once.
        #expect(await eventually { source.client.keptFrames == 0 })

        await zipper.kill()
        try await zipper.restart()
        // Before, the function reported the loss and redialled only once its handlers had finished.
        #expect(await lost.wait(for: 1, timeout: .seconds(10)), "the loss was reported while the handler waits")
        #expect(await eventually { sfn.client.isConnected && !sfn.client.sessionEndedForTesting }, "redialled")
        if pipe {
            for index in 0..<3 { try await source.write(tag: 0x63, data: Array("after-\(index)".utf8)) }
            gate.open()
            #expect(await received.wait(for: 4))
            // One pipe handler for the function's life: its frames in order across the reconnect.
            #expect(received.items == ["stall", "after-0", "after-1", "after-2"])
            #expect(pipeRuns.load(ordering: .relaxed) == 1)
        } else {
            // Frames written after the restart are handled while the first handler still waits.
            #expect(try await writeUntilReceived(source, tag: 0x63, "after", received))
            gate.open()
        }
        await source.close()
        await sfn.close()
        await zipper.kill()
    }

    @Test("close() while waiting to redial lets the last connection's handlers finish, without waiting out the redial delay")
    func closeWhileWaitingToRedial() async throws {
        let zipper = try await ZipperProcess(port: try await freePort())
        let lazy = ReconnectPolicy(firstRetryDelay: .seconds(60) ... .seconds(60))
        let gate = Gate()
        let entered = Inbox<Int>()
        let cancelled = Inbox<Int>()
        let finished = Inbox<Int>()
        let lost = Inbox<YoMoError>()
        let sfn = StreamFunction(name: "closing", zipper: zipper.address, options: .init(
            observedTags: [0x65], reconnect: lazy, shutdownTimeout: .seconds(20)))
        sfn.setErrorHandler { lost.append($0) }
        sfn.setHandler { ctx in
            entered.append(ctx.data.count)
            await withTaskCancellationHandler { await gate.wait() } onCancel: { cancelled.append(1) }
            finished.append(ctx.data.count)
        }
        // The source first, with the default policy: the function's first retry would come after a minute.
        let source = Source(name: "once", zipper: zipper.address, options: .init(retryConnect: true))
        try await source.connect()
        try await sfn.connect()
        try await source.write(tag: 0x65, data: Array("wait".utf8))
        #expect(await entered.wait(for: 1))
        await source.close()
        await zipper.kill()
        // Lost, the function waits a minute before it redials, the handler still running.
        #expect(await lost.wait(for: 1, timeout: .seconds(15)))
        let closed = Inbox<Int>()
        let closing = Task {
            await sfn.close()
            closed.append(1)
        }
        #expect(await eventually { sfn.client.isClosingForTesting })
        // close() woke the wait, not by cancelling the handler, which may finish.
        #expect(cancelled.count == 0)
        gate.open()
        #expect(await finished.wait(for: 1))
        #expect(await closed.wait(for: 1, timeout: .seconds(15)), "close() did not wait out the minute")
        #expect(cancelled.count == 0)
        await closing.value
    }

    @Test("close() while redialling a dead zipper, handlers still at work: their answers are held and reach the zipper that comes back before the close deadline",
          arguments: [false, true])
    func closeWhileRedialingDeliversAnswers(pipe: Bool) async throws {
        let zipper = try await ZipperProcess(port: try await freePort())
        let asked = try await AnswerInAHandler(pipe: pipe, zipper: zipper.address)
        let function = asked.function
        let closing = await asked.closeWhileRedialling(killing: zipper)
        asked.gate.open()
        // The answer waits for the next connection; before, it failed ("closed while this frame was written").
        #expect(await eventually { function.client.outageStatistics.pendingFrames == 1 }, "\(function.client.outageStatistics)")
        try await asked.expectAnswer(afterRestarting: zipper, closing)
    }

    @Test("close() while redialling a dead zipper, which comes back and dies again as the function delivers, a handler still at work: the function redials again, and the answer reaches the zipper that comes back",
          arguments: [false, true])
    func closeWhileRedialingSurvivesASecondLoss(pipe: Bool) async throws {
        let zipper = try await ZipperProcess(port: try await freePort())
        let asked = try await AnswerInAHandler(pipe: pipe, zipper: zipper.address)
        let function = asked.function
        let closing = await asked.closeWhileRedialling(killing: zipper)
        // Back to deliver, it waits for its handler; the zipper dies under it.
        try await zipper.restart()
        #expect(await eventually(within: .seconds(10)) { function.client.isConnected })
        await zipper.kill()
        asked.gate.open()
        // Before, the close ended once the handler did, and dropped the answer.
        #expect(await eventually { asked.logged("lost under the close") }, "\(asked.lines.items)")
        try await asked.expectAnswer(afterRestarting: zipper, closing)
    }

    @Test("a zipper killed while a function closes, a handler still at work: the function redials until its close deadline, and the answer reaches the zipper that comes back")
    func zipperKilledUnderTheClose() async throws {
        let zipper = try await ZipperProcess(port: try await freePort())
        let asked = try await AnswerInAHandler(pipe: false, zipper: zipper.address)
        let function = asked.function
        let closing = Task { await function.close() }
        #expect(await eventually { function.client.isClosingForTesting })
        await zipper.kill()
        // The answer is written after the zipper died: before, it was lost with the close.
        asked.gate.open()
        #expect(await eventually { asked.logged("lost under the close") }, "\(asked.lines.items)")
        try await asked.expectAnswer(afterRestarting: zipper, closing)
    }

    @Test("a handler cancelled at the close deadline leaves its frame to the function's next instance: it is not counted handled",
          arguments: [true, false])
    func frameCancelledAtTheDeadline(pipe: Bool) async throws {
        try await withZipper { address, _ in
            let took = Inbox<String>()
            let first = StreamFunction(name: "upper", zipper: address, options: .init(observedTags: [0x33], shutdownTimeout: .milliseconds(300)))
            if pipe {
                first.setPipeHandler { input, _ in
                    for await frame in input {
                        took.append(String(decoding: frame.data, as: UTF8.self))
                        try await Task.sleep(for: .seconds(600))
                    }
                }
            } else {
                first.setHandler { ctx in
                    took.append(String(decoding: ctx.data, as: UTF8.self))
                    try await Task.sleep(for: .seconds(600))
                }
            }
            try await first.connect()
            let source = Source(name: "writer", zipper: address)
            try await source.connect()
            try await source.write(tag: 0x33, data: Array("stuck".utf8))
            #expect(await took.wait(for: 1))
            await first.close()
            // Before, the cancelled handler's frame counted as handled, and the zipper let it go.
            let handled = Inbox<String>()
            let next = StreamFunction(name: "upper", zipper: address, options: .init(observedTags: [0x33]))
            next.setPipeHandler { input, _ in
                for await frame in input { handled.append(String(decoding: frame.data, as: UTF8.self)) }
            }
            try await next.connect()
            #expect(await handled.wait(for: 1), "the next instance got the frame")
            #expect(handled.items == ["stuck"])
            await source.close()
            await next.close()
        }
    }

    @Test("a connection lost while a function closes, with frames it received and had not read: close() returns at its deadline, not once its pipe handler worked through them")
    func lostUnderTheCloseWithUnreadFrames() async throws {
        let metricsPort = try await freeTCPPort()
        let zipper = try await ZipperProcess(port: try await freePort(), arguments: ["--metrics", "127.0.0.1:\(metricsPort)"])
        let taken = Inbox<String>()
        // A queue of 2 KiB: most of what arrives waits unread in the QUIC stack.
        let function = StreamFunction(name: "upper", zipper: zipper.address, options: .init(
            observedTags: [0x33], retryConnect: true, maximumHandlerBytes: 2048, shutdownTimeout: .seconds(1)))
        function.setPipeHandler { input, output in
            for await frame in input {
                taken.append(String(decoding: frame.data, as: UTF8.self))
                try? await Task.sleep(for: .milliseconds(100))
                try? await output.write(tag: 0x34, data: frame.data)
            }
        }
        try await function.connect()
        let source = Source(name: "writer", zipper: zipper.address, options: .init(retryConnect: true))
        try await source.connect()
        let padding = String(repeating: "x", count: 100)
        for index in 0..<200 { try await source.write(tag: 0x33, data: Array("\(index) \(padding)".utf8)) }
        #expect(await eventuallyAsync { await wroteToUpper(200, metricsPort: metricsPort) })
        let closed = Mutex(false)
        let closing = Task {
            await function.close()
            closed.withLock { $0 = true }
        }
        #expect(await eventually { function.client.isClosingForTesting })
        // The next answer finds the zipper gone: the connection is lost under the close.
        await zipper.kill()
        // Before, it read on through what it had received, 100 ms a frame: about 20 s.
        #expect(await eventually(within: .seconds(10)) { closed.withLock { $0 } }, "close() returned at its deadline; \(taken.count) frames taken")
        #expect(taken.count < 100, "\(taken.count) frames taken")
        await closing.value
        await source.close()
    }

    @Test("a connection lost while the pipe handler's queue is full, with frames received and not read: the function redials at once, not once its handler worked through them, and handles each frame once")
    func lostWithUnreadFramesRedialsAtOnce() async throws {
        try await redialsAtOnceAfterKill { address, taken in
            // A queue of 2 KiB: most of what arrives waits unread in the QUIC stack.
            let function = StreamFunction(name: "upper", zipper: address, options: .init(
                observedTags: [0x33], retryConnect: true, maximumHandlerBytes: 2048))
            function.setPipeHandler { input, _ in
                for await frame in input {
                    taken.append(String(decoding: frame.data, as: UTF8.self))
                    try? await Task.sleep(for: .milliseconds(20))
                }
            }
            return function
        }
    }

    /// 400 frames of over 100 bytes written to "upper", a 20 ms handler
    /// behind them, the zipper killed and started again: the function
    /// redials with fewer than 300 taken (before, it read on through what it
    /// had received, about 8 s, and only then redialled), and takes each
    /// frame once. `function` makes it, its handler appending to `taken`.
    private func redialsAtOnceAfterKill(_ function: (_ zipper: String, _ taken: Inbox<String>) -> StreamFunction) async throws {
        let metricsPort = try await freeTCPPort()
        let zipper = try await ZipperProcess(port: try await freePort(), arguments: ["--metrics", "127.0.0.1:\(metricsPort)"])
        let taken = Inbox<String>()
        let function = function(zipper.address, taken)
        try await function.connect()
        let source = Source(name: "writer", zipper: zipper.address, options: .init(retryConnect: true))
        try await source.connect()
        let padding = String(repeating: "x", count: 100)
        let texts = (0..<400).map { "\($0) \(padding)" }
        for text in texts { try await source.write(tag: 0x33, data: Array(text.utf8)) }
        #expect(await eventuallyAsync { await wroteToUpper(400, metricsPort: metricsPort) })
        await zipper.kill()
        try await zipper.restart()
        #expect(await eventually(within: .seconds(20)) { function.client.reconnectCountForTesting == 1 })
        let takenAtRedial = taken.count
        #expect(takenAtRedial < 300, "\(takenAtRedial) frames taken when it redialled")
        #expect(await taken.wait(for: 400, timeout: .seconds(30)), "\(taken.count)")
        // Behind whatever came again after the restart: once it is taken, the rest has come.
        try await source.write(tag: 0x33, data: Array("last".utf8))
        #expect(await taken.wait(for: 401, timeout: .seconds(30)), "\(taken.count)")
        #expect(taken.items.sorted() == (texts + ["last"]).sorted(), "each once")
        await source.close()
        await function.close()
        await zipper.terminate()
    }

    @Test("a function redialled with its pipe queue full of what the lost connection brought reads on past it for copies: frames sent again behind new ones are recognized at once, not after the backlog")
    func readsAheadForCopies() async throws {
        let metricsPort = try await freeTCPPort()
        let zipper = try await ZipperProcess(port: try await freePort(), arguments: ["--metrics", "127.0.0.1:\(metricsPort)"])
        let taken = Inbox<String>()
        let function = StreamFunction(name: "upper", zipper: zipper.address, options: .init(
            observedTags: [0x33], retryConnect: true, maximumHandlerBytes: 2048))
        function.setPipeHandler { input, _ in
            for await frame in input {
                taken.append(String(decoding: frame.data, as: UTF8.self))
                try? await Task.sleep(for: .milliseconds(30))
            }
        }
        try await function.connect()
        // It redials after the function and a second source: what it sends again comes behind that source's frames.
        let late = ReconnectPolicy(firstRetryDelay: .seconds(3) ... .seconds(3), initialDelay: .seconds(3), maximumDelay: .seconds(3), jitter: 0)
        let first = Source(name: "first", zipper: zipper.address, options: .init(reconnect: late, retryConnect: true))
        try await first.connect()
        let padding = String(repeating: "x", count: 100)
        let texts = (0..<400).map { "\($0) \(padding)" }
        for text in texts { try await first.write(tag: 0x33, data: Array(text.utf8)) }
        #expect(await eventuallyAsync { await wroteToUpper(400, metricsPort: metricsPort) })
        await zipper.kill()
        try await zipper.restart()
        #expect(await eventually(within: .seconds(20)) { function.client.reconnectCountForTesting == 1 })
        let second = Source(name: "second", zipper: zipper.address, options: .init(retryConnect: true))
        try await second.connect()
        let news = (0..<5).map { "new \($0)" }
        for text in news { try await second.write(tag: 0x33, data: Array(text.utf8)) }
        #expect(await eventuallyAsync { await wroteToUpper(5, metricsPort: metricsPort) })
        #expect(await eventually(within: .seconds(20)) { first.client.reconnectCountForTesting == 1 })
        // The first source sends again what the killed zipper had not settled: most of the 400.
        #expect(await eventually(within: .seconds(10)) { function.client.framesReceivedForTesting > 5 + 100 },
                "\(function.client.framesReceivedForTesting) read on the new connection")
        // Before, nothing behind the first new frame was read until the handler had worked off the backlog.
        let takenThen = taken.count
        #expect(takenThen < 300, "\(takenThen) taken when the copies were read")
        try await second.write(tag: 0x33, data: Array("last".utf8))
        #expect(await taken.wait(for: 406, timeout: .seconds(40)), "\(taken.count)")
        #expect(taken.items.sorted() == (texts + news + ["last"]).sorted(), "each once")
        await first.close()
        await second.close()
        await function.close()
        await zipper.terminate()
    }

    @Test("a connection lost while async handlers are at their limit, with frames received and not read: the function redials at once, not once its handlers worked through them, and handles each frame once")
    func lostAtHandlerLimitRedialsAtOnce() async throws {
        let running = Atomic(0)
        let mostAtOnce = Atomic(0)
        try await redialsAtOnceAfterKill { address, taken in
            let function = StreamFunction(name: "upper", zipper: address, options: .init(
                observedTags: [0x33], retryConnect: true, handlerConcurrency: 1))
            function.setHandler { ctx in
                let now = running.wrappingAdd(1, ordering: .relaxed).newValue
                mostAtOnce.max(now, ordering: .relaxed)
                taken.append(String(decoding: ctx.data, as: UTF8.self))
                try? await Task.sleep(for: .milliseconds(20))
                running.wrappingSubtract(1, ordering: .relaxed)
            }
            return function
        }
        #expect(mostAtOnce.load(ordering: .relaxed) == 1, "handlerConcurrency held across the redial")
    }

    @Test("a function closed while it redials, with frames of the lost connection waiting for its async handlers' limits: the close handles them before it ends")
    func closeWhileRedialingHandlesWhatWaited() async throws {
        let metricsPort = try await freeTCPPort()
        let zipper = try await ZipperProcess(port: try await freePort(), arguments: ["--metrics", "127.0.0.1:\(metricsPort)"])
        let taken = Inbox<String>()
        let function = StreamFunction(name: "upper", zipper: zipper.address, options: .init(
            observedTags: [0x33], retryConnect: true, handlerConcurrency: 1, shutdownTimeout: .seconds(30)))
        function.setHandler { ctx in
            taken.append(String(decoding: ctx.data, as: UTF8.self))
            try? await Task.sleep(for: .milliseconds(10))
        }
        try await function.connect()
        let source = Source(name: "writer", zipper: zipper.address, options: .init(retryConnect: true))
        try await source.connect()
        let texts = (0..<200).map { "\($0)" }
        for text in texts { try await source.write(tag: 0x33, data: Array(text.utf8)) }
        #expect(await eventuallyAsync { await wroteToUpper(200, metricsPort: metricsPort) })
        await zipper.kill()
        // The frames read wait for the next connection; the close comes while it redials.
        #expect(await eventually { taken.count < 200 && function.client.reconnectCountForTesting == 0 })
        let closing = Task { await function.close() }
        try await zipper.restart()
        await closing.value
        // Before, the close dropped them: nothing else had them once their zipper died.
        let missing = Set(texts).subtracting(taken.items)
        #expect(missing.isEmpty, "\(missing.count) of 200 not handled")
        await source.close()
        await zipper.terminate()
    }

    @Test("a write larger than a zipper takes is refused before it is sent; the source and the handler's connection serve on")
    func oversizedWritesRefused() async throws {
        try await withZipper { address, _ in
            let tooLarge = [UInt8](repeating: 0x61, count: 16 << 20)
            let handlerErrors = Inbox<YoMoError.Code>()
            let replies = Inbox<String>()
            let relay = StreamFunction(name: "relay", zipper: address, options: .init(observedTags: [0x72]))
            relay.setHandler { ctx in
                do { try await ctx.write(tag: 0x73, data: tooLarge) } catch let error as YoMoError { handlerErrors.append(error.code) }
                try await ctx.write(tag: 0x73, data: ctx.data)
            }
            try await relay.connect()
            let sink = StreamFunction(name: "sink", zipper: address, options: .init(observedTags: [0x73]))
            sink.setHandler { ctx in replies.append(String(decoding: ctx.data, as: UTF8.self)) }
            try await sink.connect()
            let source = Source(name: "big", zipper: address)
            try await source.connect()
            // Before, the zipper closed the connection on the frame's header and the source ended for good.
            let error = await #expect(throws: YoMoError.self) { try await source.write(tag: 0x72, data: tooLarge) }
            #expect(error?.code == .frameTooLarge)
            #expect(error?.message.contains("is larger than 16777216 bytes, the largest a zipper takes: not sent") == true, "\(String(describing: error))")
            try await source.write(tag: 0x72, data: Array("small".utf8))
            #expect(await replies.wait(for: 1))
            #expect(replies.items == ["small"])
            #expect(handlerErrors.items == [.frameTooLarge])
            #expect(source.endReason == nil && relay.endReason == nil)
            await source.close()
            await sink.close()
            await relay.close()
        }
    }

    enum BadOption: String, CaseIterable, Sendable {
        case noConcurrency, negativeBytes, zeroHandshake, negativeShutdown, negativeOutage, negativeDelay, jitter, multiplier, sendBuffer

        var expected: String {
            switch self {
            case .noConcurrency: "handlerConcurrency must be at least 1 (nil: no limit), not 0"
            case .negativeBytes: "maximumHandlerBytes must be at least 1 (nil: no limit), not -1"
            case .zeroHandshake: "handshakeTimeout must be positive"
            case .negativeShutdown: "shutdownTimeout must not be negative"
            case .negativeOutage: "outageBufferFrames and outageBufferBytes must not be negative"
            case .negativeDelay: "reconnect: initialDelay and maximumDelay must not be negative"
            case .jitter: "reconnect: jitter must be between 0 and 1, not 2.0"
            case .multiplier: "reconnect: multiplier must be a finite number of at least 1, not 0.5"
            case .sendBuffer: "QUIC: invalid configuration: windows and send buffer must be positive"
            }
        }

        func apply(to options: inout StreamFunction.Options) {
            switch self {
            case .noConcurrency: options.handlerConcurrency = 0
            case .negativeBytes: options.maximumHandlerBytes = -1
            case .zeroHandshake: options.handshakeTimeout = .zero
            case .negativeShutdown: options.shutdownTimeout = .seconds(-1)
            case .negativeOutage: options.outageBufferBytes = -1
            case .negativeDelay: options.reconnect.maximumDelay = .seconds(-1)
            case .jitter: options.reconnect.jitter = 2
            // Given to init, which trapped on it before.
            case .multiplier: options.reconnect = ReconnectPolicy(multiplier: 0.5)
            case .sendBuffer: options.quic.sendBufferSize = 0
            }
        }
    }

    @Test("options that cannot work are refused at connect() with the field and the value", arguments: BadOption.allCases)
    func invalidOptions(_ bad: BadOption) async throws {
        var options = StreamFunction.Options(observedTags: [0x64], retryConnect: true)
        bad.apply(to: &options)
        let initialized = Mutex(false)
        let sfn = StreamFunction(name: "misconfigured", zipper: "127.0.0.1:9", options: options)
        sfn.setHandler { _ in }
        sfn.setInit { initialized.withLock { $0 = true } }
        // Thrown at once, though retryConnect would redial a zipper that is not there.
        let error = await #expect(throws: YoMoError.self) { try await sfn.connect() }
        #expect(error?.code == .invalidConfiguration)
        #expect(error?.message.hasPrefix("stream function misconfigured: \(bad.expected)") == true, "\(String(describing: error))")
        let ranInitializer = initialized.withLock { $0 }
        #expect(!ranInitializer, "the initializer did not run")
        let source = Source(name: "misconfigured", zipper: "127.0.0.1:9", options: options)
        let sourceError = await #expect(throws: YoMoError.self) { try await source.connect() }
        #expect(sourceError?.message.hasPrefix("source misconfigured: \(bad.expected)") == true, "\(String(describing: sourceError))")
    }

    enum BadZipperSetting: String, CaseIterable, Sendable {
        case slowConsumerBytes, frameSize, meshQueueFrames, port, emptyToken, receiveWindowBudget, ipv6Prefix, unvalidatedHandshakes, pendingPerAddress, trustedNetwork, quicHandshakes, unhandledBytes

        var expected: String {
            switch self {
            case .slowConsumerBytes: "slowConsumer.maximumBufferedBytes must be positive, not 0"
            case .frameSize: "maximumFrameSize must be positive, not -1"
            case .meshQueueFrames: "meshQueue.maximumFrames must be positive, not 0"
            case .port: "port must be from 0 to 65535, not 70000"
            case .emptyToken: "token authentication needs a non-empty token"
            case .receiveWindowBudget: "maximumReceiveWindowBytes must be at least 32768 (nil: no budget), not 1000"
            case .ipv6Prefix: "ipv6PrefixLength must be from 1 to 128 (128: each IPv6 address on its own), not 0"
            case .unvalidatedHandshakes: "maximumUnvalidatedHandshakes must not be negative (0: a QUIC Retry for every client), not -1"
            case .pendingPerAddress: "maximumPendingHandshakesPerAddress must be positive, not 0"
            case .trustedNetwork: "trustedNetworks: \"office\" is not a network such as 10.0.0.0/8 or fd00::/8"
            case .quicHandshakes: "maximumQUICHandshakes must be positive, not 0"
            case .unhandledBytes: "maximumUnhandledBytes must not be negative (0: keep nothing a function acknowledged), not -1"
            }
        }

        func apply(to configuration: inout ZipperConfiguration) {
            switch self {
            case .slowConsumerBytes: configuration.slowConsumer.maximumBufferedBytes = 0
            case .frameSize: configuration.limits.maximumFrameSize = -1
            case .meshQueueFrames: configuration.meshQueue.maximumFrames = 0
            case .port: configuration.port = 70000
            case .emptyToken: configuration.authentication = .token("")
            case .receiveWindowBudget: configuration.limits.maximumReceiveWindowBytes = 1000
            case .ipv6Prefix: configuration.limits.ipv6PrefixLength = 0
            case .unvalidatedHandshakes: configuration.limits.maximumUnvalidatedHandshakes = -1
            case .pendingPerAddress: configuration.limits.maximumPendingHandshakesPerAddress = 0
            case .trustedNetwork: configuration.limits.trustedNetworks = ["10.0.0.0/8", "office"]
            case .quicHandshakes: configuration.limits.maximumQUICHandshakes = 0
            case .unhandledBytes: configuration.limits.maximumUnhandledBytes = -1
            }
        }
    }

    @Test("a zipper built in code with settings that cannot work is refused at start()", arguments: BadZipperSetting.allCases)
    func invalidZipperConfiguration(_ bad: BadZipperSetting) async throws {
        var configuration = ZipperConfiguration(name: "odd", host: "127.0.0.1", port: 0)
        bad.apply(to: &configuration)
        let zipper = Zipper(configuration: configuration)
        let error = await #expect(throws: YoMoError.self) { try await zipper.start() }
        #expect(error?.code == .invalidConfiguration)
        #expect(error?.message == "zipper odd: \(bad.expected)", "\(String(describing: error))")
    }
}

/// A stream function "upper" of `zipper` (its log captured) whose handler
/// took "answer me" on 0x66 and waits for `gate` before it writes
/// "ANSWER ME" on 0x67; the source that wrote it has closed.
struct AnswerInAHandler: Sendable {
    let function: StreamFunction
    let gate = Gate()
    let lines = Inbox<String>()

    init(pipe: Bool, zipper: String) async throws {
        var logger = Logger(label: "test.function") { [lines] _ in CapturingLogHandler(lines: lines) }
        logger.logLevel = .info
        let quick = ReconnectPolicy(initialDelay: .milliseconds(100), maximumDelay: .milliseconds(200))
        function = StreamFunction(name: "upper", zipper: zipper, options: .init(
            observedTags: [0x66], logger: logger, reconnect: quick, shutdownTimeout: .seconds(20)))
        let (entered, gate) = (Inbox<String>(), gate)
        @Sendable func answer(_ data: [UInt8]) async -> [UInt8] {
            let text = String(decoding: data, as: UTF8.self)
            entered.append(text)
            await gate.wait()
            return Array(text.uppercased().utf8)
        }
        if pipe {
            function.setPipeHandler { input, output in
                for await frame in input { try await output.write(tag: 0x67, data: await answer(frame.data)) }
            }
        } else {
            function.setHandler { ctx in try await ctx.write(tag: 0x67, data: await answer(Array(ctx.data))) }
        }
        let source = Source(name: "asker", zipper: zipper, options: .init(retryConnect: true))
        try await source.connect()
        try await function.connect()
        try await source.write(tag: 0x66, data: Array("answer me".utf8))
        #expect(await entered.wait(for: 1))
        await source.close()
    }

    func logged(_ text: String) -> Bool { lines.items.contains { $0.contains(text) } }

    /// `zipper` killed with the frame in the handler, the function redialling
    /// in vain, then closed: it redials on to deliver what the handler writes.
    /// The close's task.
    func closeWhileRedialling(killing zipper: ZipperProcess) async -> Task<Void, Never> {
        await zipper.kill()
        await function.client.dropConnectionForTesting()
        #expect(await eventually { logged("reconnect failed") }, "\(lines.items)")
        let function = function
        let closing = Task { await function.close() }
        #expect(await eventually { logged("deliver what the handlers still running write") }, "\(lines.items)")
        return closing
    }

    /// `zipper` started again and a sink of 0x67 on it: the answer arrives
    /// once, the close ends, and nothing was dropped or refused.
    func expectAnswer(afterRestarting zipper: ZipperProcess, _ closing: Task<Void, Never>) async throws {
        try await zipper.restart()
        let (sink, received) = (StreamFunction(name: "sink", zipper: zipper.address, options: .init(observedTags: [0x67], retryConnect: true)), Inbox<String>())
        sink.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await sink.connect()
        #expect(await received.wait(for: 1, timeout: .seconds(20)))
        #expect(received.items == ["ANSWER ME"], "\(received.items)")
        await closing.value
        #expect(function.client.endReason?.code == .closed)
        #expect(!logged("dropped the frames") && !logged("closed while this frame was written"), "\(lines.items)")
        await sink.close()
        await zipper.kill()
    }
}
