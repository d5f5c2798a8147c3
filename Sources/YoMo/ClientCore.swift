import Synchronization
internal import Logging
internal import YoMoLogging
internal import NIOCore
internal import YoMoQUIC
internal import YoMoWire

/// The spec version this SDK speaks.
public let yomoSpecVersion = "2024-01-03"

/// What a client announces in its handshake and how it connects.
struct ClientSettings: Sendable {
    var name: String
    var clientType: ClientType
    var observedTags: [UInt32]
    var credential: Credential?
    var wantedTarget: String
    var zipper: ZipperAddress
    var quic: QUICConfiguration
    var tls: TLSConfiguration
    var reconnect: ReconnectPolicy
    var retryInitialConnect: Bool
    var handshakeTimeout: Duration
    var deliveryReceipts: Bool

    /// A stream function with receipts says which frames its handlers finished.
    var acknowledgesHandling: Bool { deliveryReceipts && clientType == .streamFunction }
}

/// One handshaken connection and the reader of its frames.
final class ClientSession: @unchecked Sendable {
    // Only the one serving loop reads `frames`; the connection itself is Sendable.
    let connection: QUICFrameConnection
    var frames: FrameReader
    let clientID: String
    let zipper: ZipperAddress
    /// The zipper sends delivery receipts (`ReceiptFrame`): frames are kept
    /// until it says they are settled, not only until its QUIC stack has them.
    let receipts: Bool
    /// The stream offset after the handshake: where frames carried over from
    /// the previous connection count as ending (`inherit`).
    let start: Int
    /// How far the zipper had routed the previous connection's frames, when
    /// this connection resumes one it still knew (`HandshakeFrame.resumes`).
    let previousRoutedThrough: Int?
    /// What the handlers finished of this connection's frames, for a zipper
    /// that welcomes a stream function's receipts (`HandlingLedger`).
    let handling: HandlingLedger?

    /// DataFrames written on this connection that the zipper has not settled
    /// (with receipts) or its QUIC stack has not acknowledged (without), with
    /// the stream offset each ends at: what to send again on the next
    /// connection if this one dies.
    private struct Kept {
        /// A frame sent with a patch keeps it: applied only if the frame goes out again.
        var frames = CircularBuffer<(end: Int, frame: DataFrame, patch: MetadataPatch?, bytes: Int, sequence: Int)>()
        var bytes = 0
        var taken = false
        /// The last receipt's offset.
        var settled = 0
        /// Whether the bound was reached (said once per connection).
        var overBound = false
        /// Where the last data frame written ends (a function's own receipts,
        /// written between frames, are nothing to settle).
        var dataWrittenThrough = 0

        /// Drops the frames that end at or before `offset`.
        mutating func drop(through offset: Int) {
            while let first = frames.first, first.end <= offset {
                frames.removeFirst()
                bytes -= first.bytes
            }
        }
    }

    private let kept: Mutex<Kept>

    /// Past this many bytes of frames kept for want of a receipt (a zipper
    /// that holds frames for a function on its way back keeps 16 MiB at
    /// most), the oldest are kept only until acknowledged, as without
    /// receipts, with a warning: a zipper that announced receipts and sends
    /// none must not grow its client without bound.
    static let maximumKeptBytes = 64 << 20

    init(
        connection: QUICFrameConnection, frames: FrameReader, clientID: String, zipper: ZipperAddress,
        settled: Int? = nil, start: Int = 0, previousRoutedThrough: Int? = nil, handling: HandlingLedger? = nil
    ) {
        self.handling = handling
        self.connection = connection
        self.frames = frames
        self.clientID = clientID
        self.zipper = zipper
        receipts = settled != nil
        self.start = start
        self.previousRoutedThrough = previousRoutedThrough
        kept = Mutex(Kept(settled: settled ?? 0))
        handling?.writesSettled(through: settled ?? 0)
    }

    /// Frames of the previous connection that the zipper had routed but not
    /// settled: not sent again, but kept, as ending at `start`, until a
    /// receipt covers them (the zipper's first checkpoint waits for them).
    func inherit(_ frames: [DataFrame]) {
        kept.withLock { kept in
            // Settled already: the zipper waits for nothing of them.
            guard kept.settled < start else { return }
            for frame in frames.reversed() {
                let bytes = frame.encodedLength
                kept.frames.prepend((start, frame, nil, bytes, -1))
                kept.bytes += bytes
            }
        }
    }

    /// Remembers a written frame until it is settled or acknowledged (dropping
    /// those that are). False when the connection's unacknowledged frames were
    /// already taken (it ended while this frame was written): the caller holds
    /// the frame for the next connection, or it would be lost without a word.
    /// `logger`: where reaching `maximumKeptBytes` is said.
    @discardableResult
    func recordWrite(_ frame: DataFrame, patch: MetadataPatch? = nil, endingAt end: Int, sequence: Int = -1, logger: Logger? = nil) -> Bool {
        let acknowledged = connection.connection.acknowledgedBytes
        let (recorded, reachedBound) = kept.withLock { kept -> (Bool, Bool) in
            guard !kept.taken else { return (false, false) }
            kept.drop(through: max(receipts ? 0 : acknowledged, kept.settled))
            let bytes = frame.encodedLength
            kept.frames.append((end, frame, patch, bytes, sequence))
            kept.bytes += bytes
            kept.dataWrittenThrough = max(kept.dataWrittenThrough, end)
            handling?.wrote(through: kept.dataWrittenThrough)
            guard kept.bytes > Self.maximumKeptBytes else { return (true, false) }
            kept.drop(through: min(acknowledged, kept.frames.first.map { $0.end + (kept.bytes - Self.maximumKeptBytes) } ?? 0))
            defer { kept.overBound = true }
            return (true, !kept.overBound)
        }
        if reachedBound {
            logger?.warning("the zipper has not settled \(Self.maximumKeptBytes >> 20) MiB of frames: the oldest are kept only until acknowledged, and a crash of the zipper could lose them", metadata: [
                YoMoLogField.zipperAddress: "\(zipper)",
            ])
        }
        return recorded
    }

    /// Where the last data frame recorded here ends (0: none).
    var dataWrittenThrough: Int { kept.withLock { $0.dataWrittenThrough } }

    /// A receipt: the frames that end at or before `offset` are settled.
    func settle(through offset: Int) {
        kept.withLock { kept in
            guard offset > kept.settled else { return }
            kept.settled = offset
            kept.drop(through: offset)
            handling?.writesSettled(through: offset)
        }
    }

    /// Whether the frames ending at or before `end` are settled (without
    /// receipts: acknowledged).
    func isSettled(through end: Int) -> Bool {
        if !receipts, connection.connection.acknowledgedBytes >= end { return true }
        return kept.withLock { $0.settled } >= end
    }

    /// Frames kept to be sent again if the connection dies: `yomo.client.unsettled.messages`.
    /// Drops what the next write would drop, then counts the rest without
    /// reading each (under the lock writes take: counted one by one, 64 MiB of
    /// small frames held writers up for each read of the gauge); a frame a
    /// concurrent writer recorded out of stream order behind an unsettled one
    /// may count until that one goes.
    var keptFrames: Int {
        let acknowledged = receipts ? 0 : connection.connection.acknowledgedBytes
        return kept.withLock { kept in
            kept.drop(through: max(acknowledged, kept.settled))
            return kept.frames.count
        }
    }

    /// The frames written here that the zipper never settled (with receipts)
    /// or acknowledged, in stream order. Taken once, after the connection
    /// ended; later writes are not recorded (`recordWrite` says so).
    /// `shutdown`: the zipper closed gracefully, and routes everything its
    /// QUIC stack acknowledged before it goes (sending that again would only
    /// make copies), so acknowledged counts as settled, here too
    /// (`isSettled`): until the fiftieth round of issue 14 such a frame,
    /// neither settled nor carried, waited for whatever the next connection
    /// carried to be settled, and a mesh link whose downstream restarted
    /// behind a slow function, and again before that, kept its senders'
    /// frames from then on (`yomo-fault-bench chaos --mesh --seed 13`: an
    /// upstream crash brought back 1,000 the function had handled).
    func takeUnacknowledged(zipperShutDown shutdown: Bool = false) -> [(end: Int, frame: DataFrame, sequence: Int)] {
        let acknowledged = receipts && !shutdown ? 0 : connection.connection.acknowledgedBytes
        return kept.withLock { kept in
            let done = max(acknowledged, kept.settled)
            defer { kept = Kept(taken: true, settled: done) }
            // Concurrent writers may have logged out of stream order.
            return kept.frames.filter { $0.end > done }.sorted { $0.end < $1.end }.map { ($0.end, $0.frame.applying($0.patch), $0.sequence) }
        }
    }
}

extension QUICFrameConnection {
    /// Logs what the connection finds about its path's MTU: a warning, once,
    /// if the path drops its bigger datagrams (the MTU shrank after Path MTU
    /// Discovery): until it found out, nothing written got through, though
    /// the connection lived on.
    /// `noticed` runs after the warning, on the connection's loop thread. A
    /// stall tried with smaller datagrams that found no smaller MTU (a lossy
    /// path, or one that was down) is said at debug level.
    func logPathMTUFindings(logger: Logger, metadata: Logger.Metadata, noticed: (@Sendable () -> Void)? = nil) {
        connection.onSmallerDatagramsTried { tried in
            var metadata = metadata
            metadata["size"] = "\(tried.size)"
            switch tried.cause {
            case .lossyPath(let lost, let sent): metadata["found_by"] = "\(lost) of \(sent) smaller datagrams lost too: a lossy path"
            case .pathWasDown: metadata["found_by"] = "the smaller datagrams lost too, acknowledged once the path was back: it was down"
            }
            logger.debug("a stall was not a smaller MTU: bigger datagrams again", metadata: metadata)
        }
        connection.onDatagramSizeLowered { lowered in
            var metadata = metadata
            metadata["lost_size"] = "\(lowered.from)"
            metadata["size"] = "\(lowered.to)"
            switch lowered.cause {
            case .tooBig: metadata["found_by"] = "too big, said ICMP or the interface"
            case .unacknowledged(let stalled): metadata["found_by"] = "nothing acknowledged for \(stalled)"
            case .sameHost: metadata["found_by"] = "another connection to the same host"
            }
            logger.warning("the path drops big datagrams (a smaller MTU): sending smaller ones", metadata: metadata)
            noticed?()
        }
    }
}

/// Dials, handshakes, follows ConnectTo redirects, and classifies how a session ended.
enum ClientCore {
    static let maximumRedirects = 4
    /// The most of a zipper's words (a rejection, a goaway, a redirect, a close
    /// reason) that goes into an error: as much as a QUIC close reason carries.
    /// The frames may hold 16 MiB.
    static let peerMessageLimit = 512

    /// `resuming`: the id of the client's previous connection, whose
    /// unsettled frames it holds to send again (see `HandshakeFrame.resumes`).
    static func dial(_ settings: ClientSettings, clientID: String, resuming: String? = nil, logger: Logger) async throws -> ClientSession {
        var address = settings.zipper
        for _ in 0...maximumRedirects {
            let connection = try await QUICFrameConnection.connect(
                host: address.host, port: address.port, configuration: settings.quic, tls: settings.tls)
            do {
                let start = try await connection.write(.handshake(handshake(settings, clientID: clientID, resuming: resuming)))
                var frames = FrameReader(connection)
                let deadline = ContinuousClock.now + settings.handshakeTimeout
                func answer() async throws -> Frame? {
                    try await frames.first(
                        within: deadline - .now,
                        orFail: YoMoError(.notConnected, "zipper \(address) did not answer the handshake within \(settings.handshakeTimeout)"))
                }
                var answered = try await answer()
                // A zipper that sends receipts says so first, with the offset they start at.
                var settled: Int?
                var previousRoutedThrough: Int?
                var handling: HandlingLedger?
                if settings.deliveryReceipts, case .receipt(let receipt)? = answered {
                    settled = Int(clamping: receipt.settledThrough)
                    previousRoutedThrough = receipt.previousRoutedThrough.map { Int(clamping: $0) }
                    answered = try await answer()
                    if receipt.welcomesHandling, settings.acknowledgesHandling {
                        handling = HandlingLedger(startingAt: frames.consumedBytes, zipperAnswersClosing: receipt.unkeptThrough != nil)
                    }
                }
                switch answered {
                case .handshakeAck?:
                    // Says at once that its receipts tell what its handlers took, so
                    // that a backlog from the first frame on is kept by its sources.
                    if let handling { _ = try? connection.tryWrite(control: handling.receipt(handling.toldSoFar), limit: DeliveryReceipts.queueLimit) }
                    connection.logPathMTUFindings(
                        logger: logger, metadata: [YoMoLogField.connectionID: "\(clientID)", YoMoLogField.zipperAddress: "\(address)"])
                    return ClientSession(
                        connection: connection, frames: frames, clientID: clientID, zipper: address,
                        settled: settled, start: start, previousRoutedThrough: previousRoutedThrough, handling: handling)
                case .rejected(let rejected)?:
                    await connection.close(reason: "rejected")
                    throw YoMoError(.rejected, "zipper \(address) rejected the handshake: \(rejected.message.peerText(limit: peerMessageLimit))")
                case .connectTo(let redirect)?:
                    await connection.close(reason: "redirected")
                    logger.info("zipper redirects", metadata: ["zipper_addr": "\(address)", "to": "\(redirect.endpoint.forLog)"])
                    address = try ZipperAddress(redirect.endpoint)
                    continue
                case .goaway(let goaway)?:
                    await connection.close(reason: "goaway")
                    throw YoMoError(.goaway, "zipper \(address) went away: \(goaway.message.peerText(limit: peerMessageLimit))")
                case let other?:
                    await connection.close(reason: "unexpected \(other.type)")
                    throw YoMoError(.protocolViolation, "zipper \(address) answered the handshake with a \(other.type)")
                case nil:
                    throw YoMoError(.closedByPeer, "zipper \(address) closed the stream during the handshake")
                }
            } catch {
                await connection.close(reason: closeReason(after: error, otherwise: "handshake failed"))
                throw error
            }
        }
        throw YoMoError(.protocolViolation, "zipper redirected more than \(maximumRedirects) times")
    }

    static func handshake(_ settings: ClientSettings, clientID: String, resuming: String? = nil) -> HandshakeFrame {
        HandshakeFrame(
            name: settings.name,
            id: clientID,
            clientType: settings.clientType,
            observedTags: settings.observedTags,
            authName: settings.credential?.name ?? "",
            authPayload: settings.credential?.payload ?? "",
            version: yomoSpecVersion,
            wantedTarget: settings.wantedTarget,
            wantsReceipts: settings.deliveryReceipts,
            resumes: settings.deliveryReceipts ? resuming ?? "" : "",
            acknowledgesHandling: settings.acknowledgesHandling
        )
    }

    /// Whether a session that ended with `error` should be dialled again.
    static func isFinal(_ error: any Error, policy: ReconnectPolicy) -> Bool {
        if let error = error as? YoMoError {
            if error.code == .listenerShutdown { return !policy.redialsAfterZipperShutdown }
            return [.rejected, .goaway, .closedByPeer, .closed].contains(error.code)
        }
        if let error = error as? QUICError {
            // A frame the zipper stopped waiting for: dial again and send it whole.
            if error.reason?.hasPrefix(Zipper.stalledFrameReason) == true { return false }
            // A zipper busy with other handshakes (a reconnect storm, a host
            // holding its share): later, with the backoff, it takes this one.
            if error.reason?.hasPrefix(Zipper.busyReason) == true { return false }
            // A zipper that stops is usually restarted (a deploy, a host's reboot).
            if error.isRemote && error.isListenerShutdown { return !policy.redialsAfterZipperShutdown }
            return error.isRemote && error.applicationErrorCode != nil
        }
        return false
    }

    /// What a client of this SDK says when it closes for good, not to redial:
    /// a zipper then keeps what the client left in its hold in the held frames
    /// file (`Zipper.keepLeftInHold`), since no one will send those again.
    static func finalCloseReason(of clientType: ClientType) -> String { "\(clientType) closed" }

    /// What a client tells the zipper when it closes after `error`: a bad frame
    /// is named, as the zipper names one to its clients; else `reason`.
    static func closeReason(after error: (any Error)?, otherwise reason: String) -> String {
        guard let error = error as? WireError else { return reason }
        return "bad frame: \(error.message.peerText(limit: peerMessageLimit))"
    }

    /// Maps a transport error to what it means for a YoMo client.
    /// `dialling`: the error ended a dial, not a connection that was up.
    static func describe(_ error: any Error, zipper: ZipperAddress, dialling: Bool = false) -> YoMoError {
        if let error = error as? YoMoError { return error }
        if let error = error as? WireError {
            return YoMoError(.protocolViolation, "zipper \(zipper) sent a bad frame: \(error.message.peerText(limit: peerMessageLimit))")
        }
        if let error = error as? QUICError, error.isRemote, let code = error.applicationErrorCode {
            let reason = error.reason.map { $0.isEmpty ? "" : ": \($0.peerText(limit: peerMessageLimit))" } ?? ""
            if error.isListenerShutdown {
                return YoMoError(.listenerShutdown, "zipper \(zipper) shut down its listener\(reason)")
            }
            return YoMoError(.closedByPeer, "zipper \(zipper) closed the connection (code 0x\(String(code, radix: 16)))\(reason)")
        }
        if dialling { return YoMoError(.notConnected, "cannot connect to zipper \(zipper): \(error)") }
        return YoMoError(.notConnected, "connection to zipper \(zipper) lost: \(error)")
    }
}
