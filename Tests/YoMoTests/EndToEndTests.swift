import Foundation
import Logging
import NIOCore
import Synchronization
import Testing
import YoMoQUIC
import YoMoWire

@testable import YoMo

/// Collects what arrives, and lets a test wait until enough did.
final class Inbox<Element: Sendable>: Sendable {
    private let state = Mutex<[Element]>([])

    func append(_ element: Element) { state.withLock { $0.append(element) } }
    var items: [Element] { state.withLock { $0 } }
    var count: Int { state.withLock { $0.count } }

    /// Waits until `count` items arrived; false after `timeout`.
    func wait(for count: Int, timeout: Duration = .seconds(20)) async -> Bool {
        await eventually(within: timeout) { self.count >= count }
    }
}

/// A zipper on a free loopback port, closed at the end of the test.
func withZipper<T>(
    authentication: ZipperAuthentication? = nil,
    configure: (inout ZipperConfiguration) -> Void = { _ in },
    handshakeTimeout: Duration = .seconds(10),
    logger: Logger = Logger(label: "test.zipper"),
    routing: Zipper.Routing = .loop,
    _ body: (_ address: String, _ zipper: Zipper) async throws -> T
) async throws -> T {
    var configuration = ZipperConfiguration(host: "127.0.0.1", port: 0, authentication: authentication)
    configure(&configuration)
    let zipper = Zipper(
        configuration: configuration, options: .init(logger: logger, handshakeTimeout: handshakeTimeout, routing: routing))
    try await zipper.start()
    let address = try #require(zipper.address)
    do {
        let result = try await body(address, zipper)
        await zipper.close()
        return result
    } catch {
        await zipper.close()
        throw error
    }
}

func uppercase(_ bytes: [UInt8]) -> [UInt8] { bytes.map { (97...122).contains($0) ? $0 - 32 : $0 } }

@Suite("End to end over QUIC on loopback", .serialized)
struct EndToEndTests {
    @Test("source → zipper → stream function → zipper → observer, with tid and source id kept, routed on either kind of thread",
          arguments: [Zipper.Routing.loop, .pool])
    func pipeline(routing: Zipper.Routing) async throws {
        try await withZipper(routing: routing) { address, _ in
            let upper = StreamFunction(name: "upper", zipper: address, options: .init(observedTags: [0x33]))
            upper.setHandler { ctx in try await ctx.write(tag: 0x34, data: uppercase(ctx.data)) }
            try await upper.connect()

            let received = Inbox<(String, String?, String?)>()
            let observer = StreamFunction(name: "observer", zipper: address, options: .init(observedTags: [0x34]))
            observer.setHandler { ctx in
                received.append((String(decoding: ctx.data, as: UTF8.self), ctx.tid, ctx.metadata(Metadata.ReservedKey.sourceID)))
            }
            try await observer.connect()

            let source = Source(name: "source", zipper: address)
            try await source.connect()
            for index in 0..<50 {
                try await source.write(tag: 0x33, data: Array("hello yomo \(index)".utf8))
            }
            #expect(await received.wait(for: 50))
            let texts = Set(received.items.map(\.0))
            #expect(texts == Set((0..<50).map { "HELLO YOMO \($0)" }))
            #expect(received.items.allSatisfy { $0.1?.count == 21 })
            #expect(Set(received.items.compactMap(\.1)).count == 50, "every write has its own tid")
            #expect(received.items.allSatisfy { $0.2 == source.id })
            await source.close()
            await observer.close()
            await upper.close()
            #expect(upper.endReason?.code == .closed)
        }
    }

    @Test("a source closed right after its writes still delivers every frame")
    func closeDelivers() async throws {
        try await withZipper { address, _ in
            let received = Inbox<Int>()
            let observer = StreamFunction(name: "observer", zipper: address, options: .init(observedTags: [0x35]))
            observer.setHandler { _ in received.append(1) }
            try await observer.connect()
            for _ in 0..<5 {
                let source = Source(name: "burst", zipper: address)
                try await source.connect()
                for index in 0..<200 { try await source.write(tag: 0x35, data: Array(repeating: UInt8(index % 251), count: 2048)) }
                await source.close()  // no pause: queued frames must still go out
            }
            #expect(await received.wait(for: 1000))
            try await Task.sleep(for: .milliseconds(100))
            #expect(received.count == 1000)
            await observer.close()
        }
    }

    @Test("a wrong token is rejected with a clear error, and connect does not retry; the zipper's log names no token")
    func wrongToken() async throws {
        let records = Inbox<String>()
        var logger = Logger(label: "test.zipper") { _ in CapturingLogHandler(lines: records) }
        logger.logLevel = .trace
        try await withZipper(authentication: .token("secret"), logger: logger) { address, zipper in
            let sfn = StreamFunction(
                name: "intruder", zipper: address,
                options: .init(observedTags: [0x33], credential: "token:wrong", retryConnect: true))
            sfn.setHandler { _ in }
            // With retryConnect and no attempt limit, a client that retried a rejection
            // would never return: that connect() throws at all shows it did not.
            let error = await #expect(throws: YoMoError.self) { try await sfn.connect() }
            #expect(error?.code == .rejected)
            #expect(error?.message.contains("invalid token: wrong") == true, "\(error?.message ?? "")")
            #expect(zipper.connectionCount == 0)

            let good = Source(name: "friend", zipper: address, options: .init(credential: "token:secret"))
            try await good.connect()
            await good.close()
        }
        let rejected = records.items.filter { $0.contains("handshake rejected") }
        #expect(rejected.count == 1 && rejected[0].contains("reason=invalid token (5 bytes)"), "\(rejected)")
        #expect(!records.items.contains { $0.contains("wrong") || $0.contains("secret") }, "\(records.items)")
    }

    @Test("a handshake with another spec version is rejected with Go's message")
    func versionMismatch() async throws {
        try await withZipper { address, _ in
            let target = try ZipperAddress(address)
            let connection = try await QUICFrameConnection.connect(host: target.host, port: target.port)
            try await connection.write(.handshake(HandshakeFrame(name: "old", id: "x-0", clientType: .source, version: "2023-01-01")))
            var frames = connection.frames.makeAsyncIterator()
            let answer = try await frames.next()
            #expect(answer == .rejected(RejectedFrame(message: "version negotiation failed: client=2023-01-01, server=2024-01-03")))
            await connection.close(reason: "done")
        }
    }

    @Test("a target reaches only the function that wants it; same-name instances all get untargeted frames")
    func targetAndFanOut() async throws {
        try await withZipper { address, _ in
            let alice = Inbox<String>()
            let bob = Inbox<String>()
            var functions: [StreamFunction] = []
            for (inbox, target) in [(alice, "alice"), (bob, "bob")] {
                let sfn = StreamFunction(name: "greeter", zipper: address, options: .init(observedTags: [0x40], wantedTarget: target))
                sfn.setHandler { ctx in inbox.append(String(decoding: ctx.data, as: UTF8.self)) }
                try await sfn.connect()
                functions.append(sfn)
            }
            let source = Source(name: "source", zipper: address)
            try await source.connect()
            try await source.writeWithTarget(tag: 0x40, data: Array("for bob".utf8), target: "bob")
            try await source.write(tag: 0x40, data: Array("for all".utf8))
            #expect(await alice.wait(for: 1))
            #expect(await bob.wait(for: 2))
            try await Task.sleep(for: .milliseconds(200))
            #expect(alice.items == ["for all"])
            #expect(Set(bob.items) == ["for bob", "for all"])
            await source.close()
            for sfn in functions { await sfn.close() }
        }
    }

    @Test("the pipe handler keeps the order of 30,000 frames")
    func pipeOrder() async throws {
        try await withZipper { address, _ in
            let count = 30_000
            let echo = StreamFunction(name: "echo", zipper: address, options: .init(observedTags: [0x50]))
            echo.setPipeHandler { input, output in
                for await frame in input { try await output.write(tag: 0x51, buffer: frame.dataBuffer) }
            }
            try await echo.connect()
            let order = Inbox<UInt32>()
            let observer = StreamFunction(name: "observer", zipper: address, options: .init(observedTags: [0x51]))
            observer.setPipeHandler { input, _ in
                for await frame in input { order.append(frame.dataBuffer.getInteger(at: frame.dataBuffer.readerIndex, as: UInt32.self) ?? .max) }
            }
            try await observer.connect()
            let source = Source(name: "source", zipper: address)
            try await source.connect()
            for index in 0..<UInt32(count) {
                var buffer = ByteBuffer()
                buffer.writeInteger(index)
                try await source.write(tag: 0x50, buffer: buffer)
            }
            #expect(await order.wait(for: count, timeout: .seconds(120)))
            #expect(order.items == Array(0..<UInt32(count)))
            await source.close()
            await observer.close()
            await echo.close()
        }
    }

    @Test("a throwing handler reaches the error handler and the function keeps serving: a pipe handler is started again on the frames after",
          arguments: [false, true])
    func throwingHandler(pipe: Bool) async throws {
        struct Boom: Error {}
        try await withZipper { address, _ in
            let errors = Inbox<YoMoError>()
            let served = Inbox<Int>()
            let sfn = StreamFunction(name: "flaky", zipper: address, options: .init(observedTags: [0x60]))
            if pipe {
                // Before the forty-second round of issue 14 it ended at the first throw, and nothing after was handled.
                sfn.setPipeHandler { input, _ in
                    for await frame in input {
                        if frame.data.first == 0 { throw Boom() }
                        served.append(Int(frame.data.first!))
                    }
                }
            } else {
                sfn.setHandler { ctx in
                    if ctx.data.first == 0 { throw Boom() }
                    served.append(Int(ctx.data.first!))
                }
            }
            sfn.setErrorHandler { errors.append($0) }
            try await sfn.connect()
            let source = Source(name: "source", zipper: address)
            try await source.connect()
            for value: UInt8 in [0, 1, 0, 2, 3] { try await source.write(tag: 0x60, data: [value]) }
            #expect(await served.wait(for: 3))
            #expect(await errors.wait(for: 2))
            #expect(errors.items.allSatisfy { $0.code == .handlerFailed && $0.message.contains("Boom") })
            #expect(Set(served.items) == [1, 2, 3])
            await source.close()
            await sfn.close()
        }
    }

    @Test("chained functions: the output of one is the input of the next")
    func chain() async throws {
        try await withZipper { address, _ in
            let first = StreamFunction(name: "upper", zipper: address, options: .init(observedTags: [0x70]))
            first.setHandler { ctx in try await ctx.write(tag: 0x71, data: uppercase(ctx.data)) }
            let second = StreamFunction(name: "exclaim", zipper: address, options: .init(observedTags: [0x71]))
            second.setHandler { ctx in try await ctx.write(tag: 0x72, data: ctx.data + Array("!".utf8)) }
            let results = Inbox<(String, String?)>()
            let observer = StreamFunction(name: "observer", zipper: address, options: .init(observedTags: [0x72]))
            observer.setHandler { ctx in results.append((String(decoding: ctx.data, as: UTF8.self), ctx.tid)) }
            for sfn in [first, second, observer] { try await sfn.connect() }
            let source = Source(name: "source", zipper: address)
            try await source.connect()
            try await source.write(tag: 0x70, data: Array("chain".utf8))
            #expect(await results.wait(for: 1))
            #expect(results.items.first?.0 == "CHAIN!")
            #expect(results.items.first?.1?.count == 21, "the tid travels along the chain")
            await source.close()
            for sfn in [first, second, observer] { await sfn.close() }
        }
    }

    @Test("writing a reserved tag fails at once, and a zipper closes a client that sends one")
    func reservedTag() async throws {
        try await withZipper { address, zipper in
            let source = Source(name: "source", zipper: address)
            try await source.connect()
            let error = await #expect(throws: YoMoError.self) { try await source.write(tag: 0xF001, data: [1]) }
            #expect(error?.code == .reservedTag)
            await source.close()

            // A raw client bypassing the SDK's check is disconnected by the zipper.
            let target = try ZipperAddress(address)
            let connection = try await QUICFrameConnection.connect(host: target.host, port: target.port)
            try await connection.write(.handshake(HandshakeFrame(name: "raw", id: "r-0", clientType: .source, version: yomoSpecVersion)))
            var frames = connection.frames.makeAsyncIterator()
            #expect(try await frames.next() == .handshakeAck)
            try await connection.write(.data(DataFrame(tag: 0xF001, payload: ByteBuffer(bytes: [1]))))
            let closed = await #expect(throws: QUICError.self) { _ = try await frames.next() }
            #expect(closed?.applicationErrorCode == QUICError.yomoCloseCode)
            #expect(closed?.reason?.contains("reserved") == true)
            let clock = ContinuousClock()
            let deadline = clock.now.advanced(by: .seconds(5))
            while zipper.connectionCount > 0, clock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
            #expect(zipper.connectionCount == 0, "the zipper forgets the closed client")
        }
    }

    @Test("a frame with undecodable metadata is reported and skipped; the connection stays up")
    func badMetadata() async throws {
        // A hand-driven zipper, so the function gets exactly the bytes we choose.
        let server = try await QUICServer.bind(host: "127.0.0.1", port: 0)
        let errors = Inbox<YoMoError>()
        let served = Inbox<[UInt8]>()
        let sfn = StreamFunction(name: "strict", zipper: "127.0.0.1:\(server.port)", options: .init(observedTags: [0x80]))
        sfn.setHandler { ctx in served.append(ctx.data) }
        sfn.setErrorHandler { errors.append($0) }
        async let connected: Void = sfn.connect()
        var accepted = server.connections.makeAsyncIterator()
        let connection = QUICFrameConnection(try #require(await accepted.next()))
        var frames = connection.frames.makeAsyncIterator()
        guard case .handshake(let handshake)? = try await frames.next() else {
            Issue.record("expected a handshake")
            return
        }
        #expect(handshake.observedTags == [0x80])
        #expect(handshake.version == yomoSpecVersion)
        try await connection.write(.handshakeAck)
        try await connected
        try await connection.write(.data(DataFrame(tag: 0x80, metadata: ByteBuffer(bytes: [0xC0]), payload: ByteBuffer(bytes: [1]))))
        try await connection.write(.data(DataFrame(tag: 0x80, payload: ByteBuffer(bytes: [2]))))
        #expect(await served.wait(for: 1))
        #expect(await errors.wait(for: 1))
        #expect(served.items == [[2]])
        #expect(errors.items.first?.code == .invalidMetadata)
        #expect(errors.items.first?.message.contains("found nil") == true)
        await sfn.close()
        await server.close()
    }

    @Test("a handler reads metadata as decoding gives it, whether read in place or decoded (a key YoMo uses, twice)")
    func handlerMetadataReadInPlaceOrDecoded() async throws {
        let server = try await QUICServer.bind(host: "127.0.0.1", port: 0)
        let seen = Inbox<[String?]>()
        let sfn = StreamFunction(name: "reader", zipper: "127.0.0.1:\(server.port)", options: .init(observedTags: [0x80]))
        // Handlers run concurrently: each record starts with its frame's payload byte.
        sfn.setHandler { ctx in
            seen.append(["\(ctx.data[0])", ctx.tid, ctx.metadata("custom"), ctx.metadata["yomo-tid"], ctx.metadata("absent"),
                         "\(ctx.metadata.count)"])
        }
        async let connected: Void = sfn.connect()
        var accepted = server.connections.makeAsyncIterator()
        let connection = QUICFrameConnection(try #require(await accepted.next()))
        var frames = connection.frames.makeAsyncIterator()
        guard case .handshake? = try await frames.next() else {
            Issue.record("expected a handshake")
            return
        }
        try await connection.write(.handshakeAck)
        try await connected
        // Read in place: a map the view reads.
        var plain = Metadata()
        plain["yomo-tid"] = "t1"
        plain["custom"] = "c"
        try await connection.write(.data(DataFrame(tag: 0x80, metadata: plain.encoded(), payload: ByteBuffer(bytes: [1]))))
        // Decoded on arrival: yomo-tid twice, which the view leaves to decoding (the last value wins, as in Go).
        var twice = ByteBuffer(bytes: [0x83])
        for (key, value) in [("yomo-tid", "a"), ("custom", "d"), ("yomo-tid", "b")] {
            twice.writeBytes([0xA0 | UInt8(key.utf8.count)] + Array(key.utf8) + [0xA0 | UInt8(value.utf8.count)] + Array(value.utf8))
        }
        #expect(MetadataView(twice) == nil)
        try await connection.write(.data(DataFrame(tag: 0x80, metadata: twice, payload: ByteBuffer(bytes: [2]))))
        #expect(await seen.wait(for: 2))
        #expect(seen.items.first { $0[0] == "1" } == ["1", "t1", "c", "t1", nil, "2"])
        #expect(seen.items.first { $0[0] == "2" } == ["2", "b", "d", "b", nil, "2"])
        await sfn.close()
        await server.close()
    }
}
