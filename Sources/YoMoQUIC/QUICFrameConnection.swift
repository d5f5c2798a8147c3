import NIOCore
public import YoMoWire

/// A YoMo frame connection: y3 frames back to back on the QUIC connection's one
/// bidirectional stream (PROTOCOL.md, Transport).
public final class QUICFrameConnection: Sendable {
    /// The byte stream underneath.
    public let connection: QUICConnection
    /// Frames longer than this fail the reader with `WireError.Code.frameTooLarge`.
    public let maximumFrameSize: Int

    public init(_ connection: QUICConnection, maximumFrameSize: Int = FrameDecoder.defaultMaximumFrameSize) {
        self.connection = connection
        self.maximumFrameSize = maximumFrameSize
    }

    /// Connects to a zipper (or any YoMo QUIC server) at `host:port`.
    public static func connect(
        host: String, port: Int, configuration: QUICConfiguration = .default, tls: TLSConfiguration = .default
    ) async throws(QUICError) -> QUICFrameConnection {
        QUICFrameConnection(try await QUICConnection.connect(host: host, port: port, configuration: configuration, tls: tls))
    }

    public var remoteAddress: String { connection.remoteAddress }

    /// Writes one frame; waits while the send buffer is full (backpressure).
    /// Concurrent writers never interleave the bytes of their frames.
    /// Returns the stream offset just past the frame: once `connection.acknowledgedBytes`
    /// reaches it, the peer's QUIC stack has the whole frame.
    @discardableResult
    public nonisolated(nonsending) func write(_ frame: Frame) async throws(QUICError) -> Int {
        guard case .data(let data) = frame else {
            // Control frames are rare: encode them on their own.
            return try await connection.core.write(frame.encoded())
        }
        return try await write(data, patch: nil)
    }

    /// Writes a DataFrame with `patch` written over its metadata where the frame
    /// is encoded (the zipper's way to hand its span on; see `MetadataPatch`).
    ///
    /// `endingAfterQueueingThrows` false: a frame that was queued returns even
    /// if the connection ends while the write waits for room (it is then among
    /// `connection.takeUnacknowledged()`), so that a throw means it was not queued.
    @discardableResult
    package nonisolated(nonsending) func write(
        _ data: DataFrame, patch: MetadataPatch?, endingAfterQueueingThrows: Bool = true
    ) async throws(QUICError) -> Int {
        let core = connection.core
        if data.payload.readableBytes >= 4096 {
            // Big payloads go out from the caller's buffer: only the header is copied.
            var header = ByteBufferAllocator().buffer(capacity: data.encodedLength - data.payload.readableBytes)
            data.encodeHeader(into: &header, patch: patch)
            return try await core.write(header, data.payload, endingAfterQueueingThrows: endingAfterQueueingThrows)
        } else {
            // Small frames are encoded straight into the send queue.
            return try await core.write(length: data.encodedLength, endingAfterQueueingThrows: endingAfterQueueingThrows) {
                data.encode(into: &$0, patch: patch)
            }
        }
    }

    /// Queues a DataFrame only if at most `limit` bytes are waiting for the peer
    /// (an idle connection takes any frame); never waits. False: not queued.
    /// The zipper's write for its `drop` and `disconnect` slow-consumer policies.
    public func tryWrite(_ data: DataFrame, limit: Int) throws(QUICError) -> Bool {
        try tryWrite(data, limit: limit, patch: nil) != nil
    }

    /// Queues a control frame only if at most `limit` bytes are waiting for
    /// the peer; never waits. False: not queued (a zipper's receipt, which a
    /// later one replaces, is not worth waiting for a client that stopped reading).
    package func tryWrite(control frame: Frame, limit: Int) throws(QUICError) -> Bool {
        let bytes = frame.encoded()
        return try connection.core.tryWrite(length: bytes.readableBytes, limit: limit) { $0.writeImmutableBuffer(bytes) } != nil
    }

    /// `tryWrite(_:limit:)` with `patch` written over the frame's metadata:
    /// the stream offset just past the frame, nil if not queued.
    package func tryWrite(_ data: DataFrame, limit: Int, patch: MetadataPatch?) throws(QUICError) -> Int? {
        try connection.core.tryWrite(length: data.encodedLength, limit: limit) { data.encode(into: &$0, patch: patch) }
    }

    /// Received frames, in order. Ends when the peer finishes the stream; throws a
    /// `QUICError` when the connection fails or a `WireError` on a malformed frame.
    /// One iterator at a time.
    public var frames: Frames { Frames(inbound: connection.inbound, maximumFrameSize: maximumFrameSize) }

    /// Closes with the YoMo application error `0x13` (or `errorCode`) and `reason`.
    public func close(errorCode: UInt64 = QUICError.yomoCloseCode, reason: String = "") async {
        await connection.close(errorCode: errorCode, reason: reason)
    }

    public struct Frames: AsyncSequence, Sendable {
        public typealias Element = Frame
        public typealias Failure = any Error
        let inbound: QUICConnection.Inbound
        let maximumFrameSize: Int

        public func makeAsyncIterator() -> AsyncIterator {
            AsyncIterator(inner: inbound.makeAsyncIterator(), decoder: FrameDecoder(maximumFrameSize: maximumFrameSize))
        }

        public struct AsyncIterator: AsyncIteratorProtocol {
            public typealias Element = Frame
            public typealias Failure = any Error
            var inner: QUICConnection.Inbound.AsyncIterator
            var decoder: FrameDecoder
            /// The received chunk being decoded; frames are slices of it (no copy).
            var chunk = ByteBuffer()
            /// A frame that straddles chunks, completed by copying only its own bytes.
            var partial = ByteBuffer()
            var budget: (shared: IncompleteFrameBudget, onStall: @Sendable (_ received: Int, _ size: Int) -> Void)?
            /// The room `partial` holds in the budget, for a frame over its counted size.
            var reservation: IncompleteFrameBudget.Reservation?
            /// A frame of this size waits for room before its bytes are copied.
            var waitsForRoom: Int?
            /// Bytes taken from the stream so far.
            var received = 0

            /// The stream offset just past the last frame returned: what a
            /// zipper's receipt names.
            package var consumedBytes: Int { received - chunk.readableBytes - partial.readableBytes }

            /// Whether the next frame is here whole: `next()` returns it without waiting.
            package var hasWholeFrame: Bool {
                guard partial.readableBytes == 0, let size = FrameDecoder.frameSize(chunk) else { return false }
                return size >= 0 && size <= chunk.readableBytes
            }

            init(inner: QUICConnection.Inbound.AsyncIterator, decoder: FrameDecoder) {
                self.inner = inner
                self.decoder = decoder
            }

            public mutating func next() async throws -> Frame? {
                try await next(isolation: nil)
            }

            /// Changes the frame size limit for the frames still to come: a zipper
            /// reads the first frame with a small limit until the handshake is accepted.
            public mutating func setMaximumFrameSize(_ maximumFrameSize: Int) {
                decoder = FrameDecoder(maximumFrameSize: maximumFrameSize)
            }

            /// Frames bigger than one received chunk take room in `budget` while
            /// they arrive (shared with other connections); a frame that does not
            /// fit waits, reading nothing. `onStall` is called (from another task)
            /// when the frame lost its room for receiving nothing while others
            /// waited: it should close the connection.
            public mutating func share(
                _ budget: IncompleteFrameBudget, onStall: @escaping @Sendable (_ received: Int, _ size: Int) -> Void
            ) {
                self.budget = (budget, onStall)
            }

            /// Runs on the caller's actor: no executor hop per frame.
            public mutating func next(isolation actor: isolated (any Actor)?) async throws -> Frame? {
                while true {
                    if let frame = try decodeAvailable() { return frame }
                    if let size = waitsForRoom, let budget {
                        reservation = try await budget.shared.reserve(size, onStall: budget.onStall)
                        continue
                    }
                    guard let next = try await inner.next(isolation: actor) else {
                        if partial.readableBytes > 0 { return try decoder.decodeLast(buffer: &partial, seenEOF: true) }
                        return try decoder.decodeLast(buffer: &chunk, seenEOF: true)
                    }
                    chunk = next
                    received += next.readableBytes
                    reservation?.progress(received: partial.readableBytes + chunk.readableBytes)
                }
            }

            /// True when a frame of `size` must wait for room before its bytes are copied.
            private mutating func needsRoom(_ size: Int) -> Bool {
                waitsForRoom = size > IncompleteFrameBudget.countedFrameSize && budget != nil && reservation == nil ? size : nil
                return waitsForRoom != nil
            }

            /// A frame from what has arrived, or nil when more bytes are needed.
            private mutating func decodeAvailable() throws -> Frame? {
                if partial.readableBytes > 0 {
                    // Finish the straddling frame: its header first, then exactly its remaining bytes.
                    while chunk.readableBytes > 0 {
                        guard let size = FrameDecoder.frameSize(partial) else {
                            var byte = chunk.readSlice(length: 1)!
                            partial.writeBuffer(&byte)
                            continue
                        }
                        if size < 0 || size > decoder.maximumFrameSize {
                            partial.writeBuffer(&chunk)  // malformed or too large: the decoder will say so
                        } else {
                            // A header cut between chunks: the frame's size is known only now.
                            if needsRoom(size) { return nil }
                            var piece = chunk.readSlice(length: Swift.min(Swift.max(size - partial.readableBytes, 0), chunk.readableBytes))!
                            partial.writeBuffer(&piece)
                        }
                        break
                    }
                    guard let frame = try decoder.decode(buffer: &partial) else { return nil }
                    reservation = nil
                    if partial.readableBytes > 0 {
                        // Only after the fallback above: keep the bytes after the frame in order.
                        partial.writeBuffer(&chunk)
                        chunk = partial
                    }
                    partial = ByteBuffer()
                    return frame
                }
                guard chunk.readableBytes > 0 else { return nil }
                let size = FrameDecoder.frameSize(chunk)
                if let size, size >= 0, size <= chunk.readableBytes {
                    let frame = try decoder.decode(buffer: &chunk)  // whole frame here: decoded as slices, no copy
                    // A used-up chunk is let go: an idle connection would otherwise
                    // pin its last 64 KiB receive buffer for as long as it lives.
                    if chunk.readableBytes == 0 { chunk = ByteBuffer() }
                    return frame
                }
                if let size, size < 0 || size > decoder.maximumFrameSize {
                    // Malformed or too large: the decoder throws the precise error.
                    if let frame = try decoder.decode(buffer: &chunk) { return frame }
                }
                // Starts here, ends in a later chunk: copy this part once into a buffer
                // of the frame's size, once a big one has room for it.
                if let size, needsRoom(size) { return nil }
                partial = ByteBufferAllocator().buffer(capacity: Swift.max(size ?? 16, chunk.readableBytes))
                partial.writeBuffer(&chunk)
                return nil
            }
        }
    }
}
