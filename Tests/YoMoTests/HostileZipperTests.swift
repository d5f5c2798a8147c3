import Foundation
import Logging
import NIOCore
import Synchronization
import Testing
import YoMoQUIC
import YoMoTracing
import YoMoWire

@testable import YoMo

/// A zipper nobody controls: it accepts the YoMo handshake like a real one, then
/// sends what the test gives it, and remembers how each connection ended.
final class HostileZipper: Sendable {
    let server: QUICServer
    /// Each connection's close as the hostile side saw it, once it ended.
    let closes = Inbox<QUICError?>()
    /// Each connection's handshake frame.
    let handshakes = Inbox<HandshakeFrame>()
    /// The data frames clients wrote to it.
    let received = Inbox<DataFrame>()
    /// The receipts clients wrote to it (a stream function's handling receipts).
    let receipts = Inbox<ReceiptFrame>()
    /// The latest connection, for `send`.
    private let latest = Inbox<QUICConnection>()
    private let holder: Task<Void, Never>

    var address: String { "127.0.0.1:\(server.port)" }

    /// `send(n)` gives what the n-th connection (from 0) gets after its handshake ack.
    /// The handshake is answered with `answer` (a HandshakeAckFrame unless told);
    /// with `closingWith`, each connection is closed with that reason after its bytes.
    init(
        answer: ByteBuffer = Frame.handshakeAck.encoded(), closingWith reason: String? = nil,
        _ send: @escaping @Sendable (Int) -> [ByteBuffer] = { _ in [] }
    ) async throws {
        let server = try await QUICServer.bind(host: "127.0.0.1", port: 0)
        self.server = server
        let (closes, handshakes, received, receipts, latest) = (closes, handshakes, received, receipts, latest)
        holder = Task {
            await withDiscardingTaskGroup { group in
                var index = 0
                for await connection in server.connections {
                    let number = index
                    index += 1
                    group.addTask {
                        let frames = QUICFrameConnection(connection)
                        var reader = frames.frames.makeAsyncIterator()
                        do {
                            guard case .handshake(let handshake) = try await reader.next() else { return }
                            handshakes.append(handshake)
                            _ = try await connection.write(answer)
                            for bytes in send(number) { _ = try await connection.write(bytes) }
                            latest.append(connection)
                            if let reason { await connection.close(reason: reason) }
                            while let frame = try await reader.next() {
                                switch frame {
                                case .data(let data): received.append(data)
                                case .receipt(let receipt): receipts.append(receipt)
                                default: break
                                }
                            }
                        } catch {}
                        // The frames may end (the peer's FIN) before its CONNECTION_CLOSE.
                        _ = await eventually(within: .seconds(10)) { connection.closeReason != nil }
                        closes.append(connection.closeReason)
                    }
                }
            }
        }
    }

    /// Writes `bytes` to the latest connection.
    func send(_ bytes: [ByteBuffer]) async throws {
        let connection = try #require(latest.items.last)
        for buffer in bytes { _ = try await connection.write(buffer) }
    }

    func close() async {
        holder.cancel()
        await server.close()
    }
}


/// Metadata bytes as a msgpack map of strings, written by hand so that they
/// can hold what no encoder of ours would write.
private func msgpackMap(_ pairs: [(String, String)]) -> ByteBuffer {
    func string(_ text: String) -> [UInt8] {
        let bytes = Array(text.utf8)
        if bytes.count < 32 { return [0xA0 | UInt8(bytes.count)] + bytes }
        if bytes.count < 256 { return [0xD9, UInt8(bytes.count)] + bytes }
        return [0xDA, UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)] + bytes
    }
    var bytes: [UInt8] = [0x80 | UInt8(pairs.count)]
    for (key, value) in pairs { bytes += string(key) + string(value) }
    return ByteBuffer(bytes: bytes)
}

private func dataFrame(_ payload: String, tag: UInt32 = 0x33, metadata: ByteBuffer = ByteBuffer()) -> ByteBuffer {
    Frame.data(DataFrame(tag: tag, metadata: metadata, payload: ByteBuffer(string: payload))).encoded()
}

private func hasControlCharacters(_ text: String) -> Bool {
    text.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }
}

private let quickRedial = ReconnectPolicy(
    firstRetryDelay: .milliseconds(10) ... .milliseconds(20), initialDelay: .milliseconds(20), maximumDelay: .milliseconds(50))

/// What a stream function meets from a zipper nobody controls: each bad frame
/// closes that connection with a reason the zipper reads, reaches the error
/// handler, and the function goes on (it redials); what the zipper says goes
/// into errors cut and escaped; hostile metadata costs one frame at most.
@Suite("A hostile zipper", .serialized)
struct HostileZipperTests {
    enum BadFrame: String, CaseIterable, Sendable {
        case garbage, oversized, unknownType

        var bytes: ByteBuffer {
            var bytes = ByteBuffer()
            switch self {
            case .garbage:
                bytes.writeBytes([0x05, 0x03, 0xFF, 0xFF, 0xFF])
            case .oversized:
                // Only the header of a 1 GiB DataFrame: refused before its body.
                bytes.writeInteger(UInt8(0x3F | 0x80))
                Y3.writeLength(1 << 30, into: &bytes)
            case .unknownType:
                bytes.writeInteger(UInt8(0x2F | 0x80))
                Y3.writeLength(3, into: &bytes)
                bytes.writeBytes([0x01, 0x01, 0x41])
            }
            return bytes
        }

        var reason: String {
            switch self {
            case .garbage: "bad frame: first byte 0x05 is not a YoMo frame type"
            case .oversized: "bad frame: DataFrame of 1073741830 bytes exceeds the maximum frame size of 16777216 bytes"
            case .unknownType: "bad frame: first byte 0xaf is not a YoMo frame type"
            }
        }
    }

    @Test("a bad frame after the handshake: closed with a reason the zipper reads, reported, and the function redials and serves",
          arguments: BadFrame.allCases)
    func badFrameAfterHandshake(_ bad: BadFrame) async throws {
        let zipper = try await HostileZipper { $0 == 0 ? [bad.bytes] : [dataFrame("after")] }
        let errors = Inbox<YoMoError>()
        let received = Inbox<String>()
        let sfn = StreamFunction(name: "victim", zipper: zipper.address, options: .init(observedTags: [0x33], reconnect: quickRedial))
        sfn.setHandler { received.append(String(decoding: $0.data, as: UTF8.self)) }
        sfn.setErrorHandler { errors.append($0) }
        try await sfn.connect()
        #expect(await zipper.closes.wait(for: 1))
        let close = try #require(zipper.closes.items.first ?? nil)
        #expect(close.kind == .closedByPeer && close.applicationErrorCode == QUICError.yomoCloseCode, "\(close)")
        #expect(close.reason == bad.reason)
        #expect(await received.wait(for: 1), "served on the next connection")
        #expect(received.items == ["after"])
        #expect(zipper.handshakes.count == 2)
        let error = try #require(errors.items.first)
        #expect(error.code == .protocolViolation)
        #expect(error.message == "zipper \(zipper.address) sent a bad frame: \(bad.reason.dropFirst("bad frame: ".count))")
        await sfn.close()
        await zipper.close()
    }

    @Test("a bad frame for an answer to the handshake: connect() fails saying so, and the zipper reads why")
    func badFrameForAnswer() async throws {
        let zipper = try await HostileZipper(answer: BadFrame.garbage.bytes)
        let sfn = StreamFunction(name: "victim", zipper: zipper.address, options: .init(observedTags: [0x33]))
        sfn.setHandler { _ in }
        let error = await #expect(throws: YoMoError.self) { try await sfn.connect() }
        #expect(error?.code == .protocolViolation)
        #expect(error?.message.contains("sent a bad frame: first byte 0x05") == true, "\(String(describing: error))")
        #expect(await zipper.closes.wait(for: 1))
        #expect(zipper.closes.items.first??.reason == BadFrame.garbage.reason)
        await zipper.close()
    }

    @Test("a rejection, a goaway and a close reason carry the zipper's words cut to 512 characters and escaped, never raw control characters")
    func peerMessagesCutAndEscaped() async throws {
        let long = "no\u{1B}]0;owned\u{07}" + String(repeating: "y", count: 200_000)
        let rejecting = try await HostileZipper(answer: Frame.rejected(RejectedFrame(message: long)).encoded())
        let rejected = StreamFunction(name: "victim", zipper: rejecting.address, options: .init(observedTags: [0x33]))
        rejected.setHandler { _ in }
        let rejection = try #require(await #expect(throws: YoMoError.self) { try await rejected.connect() })
        #expect(rejection.code == .rejected)
        #expect(rejection.message.hasPrefix("zipper \(rejecting.address) rejected the handshake: no\\x1b]0;owned\\x07yyy"))
        #expect(rejection.message.hasSuffix("… (\(long.utf8.count) bytes)"), "\(rejection.message.suffix(40))")
        #expect(rejection.message.utf8.count < 700)
        #expect(!hasControlCharacters(rejection.message))
        await rejecting.close()

        let farewell = "bye\u{1B}[2J\n" + String(repeating: "x", count: 100_000)
        let leaving = try await HostileZipper { _ in [Frame.goaway(GoawayFrame(message: farewell)).encoded()] }
        let errors = Inbox<YoMoError>()
        let sfn = StreamFunction(name: "victim", zipper: leaving.address, options: .init(observedTags: [0x33], reconnect: quickRedial))
        sfn.setHandler { _ in }
        sfn.setErrorHandler { errors.append($0) }
        try await sfn.connect()
        await sfn.wait()  // a goaway ends the function
        let goaway = try #require(errors.items.first)
        #expect(goaway.code == .goaway)
        #expect(goaway.message.hasPrefix("zipper went away: bye\\x1b[2J\\nxxx"), "\(goaway.message.prefix(60))")
        #expect(goaway.message.hasSuffix("… (\(farewell.utf8.count) bytes)"))
        #expect(!hasControlCharacters(goaway.message))
        #expect(leaving.handshakes.count == 1, "a goaway is final: no redial")
        await leaving.close()

        // A close reason is at most what a packet holds, but may hold escapes too.
        let closing = try await HostileZipper(closingWith: "bye\u{1B}[2J\u{1B}]0;owned\u{07}")
        let closed = StreamFunction(name: "victim", zipper: closing.address, options: .init(observedTags: [0x33]))
        let reasons = Inbox<YoMoError>()
        closed.setHandler { _ in }
        closed.setErrorHandler { reasons.append($0) }
        // The close may beat connect()'s return: then connect() throws it.
        let reason: YoMoError
        do {
            try await closed.connect()
            await closed.wait()
            reason = try #require(reasons.items.first)
        } catch let error as YoMoError {
            reason = error
        }
        #expect(reason.message.hasSuffix("closed the connection (code 0x13): bye\\x1b[2J\\x1b]0;owned\\x07"), "\(reason.message)")
        #expect(!hasControlCharacters(reason.message))
        await closing.close()
    }

    @Test("metadata that is no map costs its frame, reported; hostile trace values start a new trace; the connection serves on")
    func hostileMetadata() async throws {
        let garbageTrace = msgpackMap([
            ("traceparent", "00-" + String(repeating: "z", count: 32) + "-" + String(repeating: "0", count: 16) + "-01"),
            ("yomo-trace-id", String(repeating: "g", count: 32)),
            ("yomo-span-id", String(repeating: "a", count: 10_000)),
            ("yomo-tid", "\u{1B}[2J"),
        ])
        let zipper = try await HostileZipper { _ in
            [
                dataFrame("not a map", metadata: ByteBuffer(bytes: [0xC1, 0x00])),
                dataFrame("hostile trace", metadata: garbageTrace),
                dataFrame("plain"),
            ]
        }
        let exporter = InMemorySpanExporter()
        let provider = TracerProvider(configuration: .init(environment: [:]), processors: [SimpleSpanProcessor(exporter: exporter)])
        let errors = Inbox<YoMoError>()
        let handled = Inbox<String>()
        let sfn = StreamFunction(
            name: "victim", zipper: zipper.address, options: .init(observedTags: [0x33], tracerProvider: provider))
        sfn.setHandler { ctx in
            let payload = String(decoding: ctx.data, as: UTF8.self)
            handled.append(payload)
            try await ctx.write(tag: 0x34, data: Array("re: \(payload)".utf8))
        }
        sfn.setErrorHandler { errors.append($0) }
        try await sfn.connect()
        #expect(await zipper.received.wait(for: 2))
        #expect(Set(handled.items) == ["hostile trace", "plain"])
        let skipped = try #require(errors.items.first)
        #expect(skipped.code == .invalidMetadata)
        #expect(skipped.message.hasPrefix("frame with tag 0x33 skipped:"), "\(skipped.message)")
        #expect(errors.count == 1)

        // The reply to the hostile frame carries a well-formed trace of its own.
        let reply = try #require(zipper.received.items.first { String(buffer: $0.payload) == "re: hostile trace" })
        let metadata = try Metadata(decoding: reply.metadata)
        let traceparent = try #require(metadata["traceparent"])
        let parsed = try #require(TraceContextPropagator.parseTraceparent(traceparent), "\(traceparent)")
        #expect(metadata[Metadata.ReservedKey.traceID] == parsed.traceID.description)
        #expect(metadata[Metadata.ReservedKey.spanID]?.utf8.count == 16)
        #expect(sfn.client.sessionEndedForTesting == false)
        await sfn.close()
        // The function's span for it is a root: nothing of the garbage was taken as a parent.
        let span = try #require(exporter.spans.first { $0.context.traceID == parsed.traceID })
        #expect(span.parentSpanID == nil)
        // Only the function's own close ended the connection.
        #expect(await zipper.closes.wait(for: 1))
        #expect(zipper.closes.items.first??.reason == "stream function closed")
        await zipper.close()
    }
}
