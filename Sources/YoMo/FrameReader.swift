internal import YoMoQUIC
internal import YoMoWire

/// The frames of one connection, read by one task at a time. The iterator moves
/// between tasks only whole (to race a handshake against its timeout), never shared.
struct FrameReader: @unchecked Sendable {
    private var iterator: QUICFrameConnection.Frames.AsyncIterator

    init(_ connection: QUICFrameConnection) {
        iterator = connection.frames.makeAsyncIterator()
    }

    mutating func next() async throws -> Frame? { try await iterator.next() }

    /// The stream offset just past the last frame `next()` returned.
    var consumedBytes: Int { iterator.consumedBytes }

    /// Whether the next frame is here whole: `next()` returns it without waiting.
    var hasWholeFrame: Bool { iterator.hasWholeFrame }

    mutating func setMaximumFrameSize(_ size: Int) { iterator.setMaximumFrameSize(size) }

    mutating func share(_ budget: IncompleteFrameBudget, onStall: @escaping @Sendable (_ received: Int, _ size: Int) -> Void) {
        iterator.share(budget, onStall: onStall)
    }

    /// The first frame, or an error when none comes within `timeout`.
    mutating func first(within timeout: Duration, orFail failure: @autoclosure () -> YoMoError) async throws -> Frame? {
        let reader = self
        let result = try await withThrowingTaskGroup(of: (Frame?, FrameReader)?.self) { group in
            group.addTask {
                var reader = reader
                return (try await reader.next(), reader)
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            return try await group.next() ?? nil
        }
        guard let (frame, advanced) = result else { throw failure() }
        self = advanced
        return frame
    }
}

extension QUICFrameConnection {
    /// Ends `frames` without closing the connection, so a client can stop taking
    /// frames while its last writes go out.
    func stopReading() { connection.stopReading() }

    /// Sends FIN after everything written, waits until the peer acknowledged it
    /// all (or the connection ended) but never past `deadline`, then closes with
    /// YoMo's code `0x13` and `reason`. False when the deadline cut the wait short.
    @discardableResult
    func closeAfterDelivery(reason: String, until deadline: ContinuousClock.Instant) async -> Bool {
        let delivered = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                // A connection that ended needs no more waiting: only a cancelled
                // wait (the deadline won) counts as not delivered.
                do { try await self.connection.finishWriting() } catch { return (error as? QUICError)?.kind != .cancelled }
                return true
            }
            group.addTask {
                try? await Task.sleep(until: deadline, clock: .continuous)
                return false
            }
            defer { group.cancelAll() }
            return await group.next() ?? false
        }
        await close(reason: reason)
        return delivered
    }
}

/// A zipper address, `host:port`, `[v6]:port`, or `host` (port 9000).
struct ZipperAddress: Hashable, Sendable, CustomStringConvertible {
    var host: String
    var port: Int

    init(_ text: String) throws(YoMoError) {
        // A redirect's address comes from the zipper: cut and escaped.
        let invalid = YoMoError(.invalidAddress, "zipper address \"\(text.peerText(limit: ClientCore.peerMessageLimit))\" is not host:port")
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw invalid }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.isEmpty {
                port = 9000
            } else {
                guard rest.first == ":", let parsed = Int(rest.dropFirst()) else { throw invalid }
                port = parsed
            }
        } else if let colon = text.lastIndex(of: ":") {
            guard text.firstIndex(of: ":") == colon else {
                // A bare IPv6 address: no port.
                host = text
                port = 9000
                return
            }
            host = String(text[..<colon])
            guard let parsed = Int(text[text.index(after: colon)...]) else { throw invalid }
            port = parsed
        } else {
            host = text
            port = 9000
        }
        guard !host.isEmpty, (1...65535).contains(port) else { throw invalid }
    }

    var description: String { Self.format(host: host, port: port) }

    /// `host:port`, an IPv6 host in brackets (`[::1]:9000`), as clients write it.
    static func format(host: String, port: Int) -> String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
