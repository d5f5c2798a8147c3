import Synchronization
public import NIOCore
internal import YoMoTracing
public import YoMoWire

/// What a handler gets for one DataFrame: its tag, data and metadata, and the
/// means to write frames back to the zipper (the Go SDK's `serverless.Context`).
///
/// Frames written here carry the incoming frame's metadata (its tid, source id and
/// target), so a frame's path stays one chain through chained functions.
public struct Context: Sendable {
    /// The tag of the frame being handled.
    public let tag: UInt32
    /// The payload, without a copy of the received bytes.
    public let dataBuffer: ByteBuffer
    /// The frame's metadata (tid, source id, trace ids, target, and any other
    /// keys). With tracing, its trace ids are this function's span's: what the
    /// frames it writes carry. Decoded from the received bytes when first read
    /// (a handler that never reads it pays nothing); `metadata(_:)` reads one
    /// key in place without decoding the rest.
    public var metadata: Metadata { resendable?.metadata() ?? received }
    /// As decoded, with the span's ids already in; empty when `resendable` holds the metadata.
    private let received: Metadata
    let writer: FrameWriter
    /// `metadata` as the received bytes with this function's span ids written
    /// over them, when it can be sent that way (nil: encode `metadata`); then
    /// also where `metadata` is read from, decoded only when read.
    let resendable: ResendableMetadata?

    init(tag: UInt32, data: ByteBuffer, metadata: Metadata, writer: FrameWriter, resendable: ResendableMetadata? = nil) {
        self.tag = tag
        self.dataBuffer = data
        self.received = metadata
        self.writer = writer
        self.resendable = resendable
    }

    /// The payload as bytes.
    public var data: [UInt8] { Array(dataBuffer.readableBytesView) }

    /// The value of a metadata key, e.g. `metadata("yomo-tid")`.
    public func metadata(_ key: String) -> String? {
        if let resendable { return resendable.value(key) }
        return received[key]
    }

    /// The transaction id the source gave this frame.
    public var tid: String? { metadata(Metadata.ReservedKey.tid) }

    /// Writes a frame with `tag` to the zipper, carrying this frame's metadata.
    public func write(tag: UInt32, data: some Sequence<UInt8>) async throws {
        try await write(tag: tag, buffer: ByteBuffer(bytes: data))
    }

    public func write(tag: UInt32, buffer: ByteBuffer) async throws {
        if let resendable {
            // The new ids are written as the frame is encoded: no copy of the metadata.
            try await writer.write(tag: tag, payload: buffer, metadataBytes: resendable.bytes, patch: resendable.patch)
        } else {
            try await writer.write(tag: tag, payload: buffer, metadata: metadata)
        }
    }

    /// Writes a frame that only stream functions whose wanted target is `target` receive.
    public func writeWithTarget(tag: UInt32, data: some Sequence<UInt8>, target: String) async throws {
        var metadata = metadata
        metadata[Metadata.ReservedKey.target] = target
        try await writer.write(tag: tag, payload: ByteBuffer(bytes: data), metadata: metadata)
    }
}

/// Writes DataFrames on whatever connection a client has at the moment.
struct FrameWriter: Sendable {
    /// Sends the frame with the patch (if any) written over its metadata.
    let send: @Sendable (DataFrame, MetadataPatch?) async throws -> Void

    func write(tag: UInt32, payload: ByteBuffer, metadata: Metadata) async throws {
        try await write(tag: tag, payload: payload, metadataBytes: metadata.encoded())
    }

    /// Metadata already encoded, with `patch` to write over it as the frame is encoded.
    func write(tag: UInt32, payload: ByteBuffer, metadataBytes: ByteBuffer, patch: MetadataPatch? = nil) async throws {
        guard !RouteTable.isReserved(tag) else {
            throw YoMoError(.reservedTag, "tag 0x\(String(tag, radix: 16)) is reserved (0xF000-0xFFFF belong to the system)")
        }
        try await send(DataFrame(tag: tag, metadata: metadataBytes, payload: payload), patch)
    }
}

/// One frame given to a pipe handler.
public struct PipeFrame: Sendable {
    public let tag: UInt32
    public let dataBuffer: ByteBuffer
    public let metadata: Metadata
    public var data: [UInt8] { Array(dataBuffer.readableBytesView) }
    /// This frame's stream-function span: ends when the handler asks for the next frame.
    let span: YoMoSpan?
    /// Told handled when the handler asks for the next frame (`HandlingLedger`).
    var handled: HandlingLedger.Token? = nil
}

/// The frame a pipe handler works on: its span ends when the handler moves on,
/// and results written meanwhile carry its metadata (tid, trace context).
final class PipeCursor: Sendable {
    private let current = Mutex<PipeFrame?>(nil)
    private let tookAFrame = Atomic(false)

    /// The handler asked for a frame and got one.
    var hasTakenAFrame: Bool { tookAFrame.load(ordering: .relaxed) }

    func advance(to frame: PipeFrame?) {
        if frame != nil { tookAFrame.store(true, ordering: .relaxed) }
        let previous = current.withLock { state -> PipeFrame? in
            defer { state = frame }
            return state
        }
        frame?.handled?.taken()
        previous?.span?.end()
        previous?.handled?.finished()
    }

    func finish() { advance(to: nil) }

    var metadata: Metadata { current.withLock { $0?.metadata } ?? Metadata() }
}

/// Where a pipe handler writes its results: frames leave in the order written,
/// carrying the metadata of the frame being worked on.
public struct PipeOutput: Sendable {
    let writer: FrameWriter
    let cursor: PipeCursor

    public func write(tag: UInt32, data: some Sequence<UInt8>) async throws {
        try await writer.write(tag: tag, payload: ByteBuffer(bytes: data), metadata: cursor.metadata)
    }

    public func write(tag: UInt32, buffer: ByteBuffer) async throws {
        try await writer.write(tag: tag, payload: buffer, metadata: cursor.metadata)
    }
}

/// The frames a pipe handler gets, in arrival order.
public struct PipeInput: AsyncSequence, Sendable {
    public typealias Element = PipeFrame
    let queue: AsyncQueue<PipeFrame>
    let cursor: PipeCursor

    public struct AsyncIterator: AsyncIteratorProtocol {
        let queue: AsyncQueue<PipeFrame>
        let cursor: PipeCursor

        public mutating func next() async -> PipeFrame? {
            cursor.finish()  // the previous frame is done
            let frame = await queue.next()
            cursor.advance(to: frame)
            return frame
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(queue: queue, cursor: cursor) }
}
