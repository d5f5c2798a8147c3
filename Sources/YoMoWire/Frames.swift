public import NIOCore

/// The type of a YoMo frame: the first byte on the wire without its node bit.
public struct FrameType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let data = FrameType(rawValue: 0x3F)
    public static let handshake = FrameType(rawValue: 0x31)
    public static let handshakeAck = FrameType(rawValue: 0x29)
    public static let rejected = FrameType(rawValue: 0x39)
    public static let goaway = FrameType(rawValue: 0x2E)
    public static let connectTo = FrameType(rawValue: 0x3E)
    /// This SDK's delivery receipt (not a Go frame: sent only to clients that
    /// asked for receipts in their handshake).
    public static let receipt = FrameType(rawValue: 0x3A)

    public var description: String {
        switch self {
        case .data: "DataFrame"
        case .handshake: "HandshakeFrame"
        case .handshakeAck: "HandshakeAckFrame"
        case .rejected: "RejectedFrame"
        case .goaway: "GoawayFrame"
        case .connectTo: "ConnectToFrame"
        case .receipt: "ReceiptFrame"
        default: "frame type 0x\(Y3.hex(rawValue))"
        }
    }
}

/// The kind of client announced in a handshake.
public struct ClientType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let source = ClientType(rawValue: 0x5F)
    public static let upstreamZipper = ClientType(rawValue: 0x5E)
    public static let streamFunction = ClientType(rawValue: 0x5D)

    public var description: String {
        switch self {
        case .source: "source"
        case .upstreamZipper: "upstream zipper"
        case .streamFunction: "stream function"
        default: "client type 0x\(Y3.hex(rawValue))"
        }
    }
}

/// Application data: a tag, msgpack metadata and a payload.
///
/// `metadata` holds the raw msgpack bytes, so a frame whose metadata is bad can
/// still be read, reported and skipped; decode them with ``Metadata/init(decoding:)``.
/// Decoded frames share storage with the bytes they came from: no payload copy.
public struct DataFrame: Hashable, Sendable {
    public var tag: UInt32
    /// Raw msgpack metadata; empty when there is none.
    public var metadata: ByteBuffer
    public var payload: ByteBuffer

    public init(tag: UInt32, metadata: ByteBuffer = ByteBuffer(), payload: ByteBuffer) {
        self.tag = tag
        self.metadata = metadata
        self.payload = payload
    }

    /// Creates a frame, encoding `metadata` (keys in insertion order).
    public init(tag: UInt32, metadata: Metadata, payload: ByteBuffer) {
        self.init(tag: tag, metadata: metadata.encoded(), payload: payload)
    }
}

/// The first frame a client sends. Every field is always encoded, as Go does.
public struct HandshakeFrame: Hashable, Sendable {
    public var name: String
    /// `<nanoid>-<reconnect count>` for the Go SDK and ours.
    public var id: String
    public var clientType: ClientType
    public var observedTags: [UInt32]
    public var authName: String
    public var authPayload: String
    public var version: String
    /// JSON bytes of an LLM function definition; usually empty.
    public var functionDefinition: [UInt8]
    public var wantedTarget: String
    /// The client asks for delivery receipts (``ReceiptFrame``): a field of
    /// this SDK's (sequence id 0x0A), sent only when true, so a Go zipper,
    /// whose decoder ignores unknown fields, sees Go's bytes plus one it skips.
    public var wantsReceipts: Bool
    /// The id of the client's previous connection, whose frames it is about
    /// to send again (this SDK's, sequence id 0x0B, sent only when not empty):
    /// a zipper that still knows that connection says how far it had routed
    /// them (``ReceiptFrame/previousRoutedThrough``), and the client sends
    /// only the rest.
    public var resumes: String
    /// A stream function that says, in ``ReceiptFrame``s of its own, which
    /// frames its handlers finished (this SDK's, sequence id 0x0C, sent only
    /// when true): a zipper that welcomes them (``ReceiptFrame/welcomesHandling``)
    /// keeps what it wrote to the function until then, not only until the
    /// function's QUIC stack acknowledged it.
    public var acknowledgesHandling: Bool

    public init(
        name: String,
        id: String,
        clientType: ClientType,
        observedTags: [UInt32] = [],
        authName: String = "",
        authPayload: String = "",
        version: String = "",
        functionDefinition: [UInt8] = [],
        wantedTarget: String = "",
        wantsReceipts: Bool = false,
        resumes: String = "",
        acknowledgesHandling: Bool = false
    ) {
        self.name = name
        self.id = id
        self.clientType = clientType
        self.observedTags = observedTags
        self.authName = authName
        self.authPayload = authPayload
        self.version = version
        self.functionDefinition = functionDefinition
        self.wantedTarget = wantedTarget
        self.wantsReceipts = wantsReceipts
        self.resumes = resumes
        self.acknowledgesHandling = acknowledgesHandling
    }
}

/// A zipper's delivery receipt (this SDK's; not in Go's protocol): every
/// DataFrame that ends at or before `settledThrough`, a byte offset of the
/// client's stream, is settled: delivered to the QUIC stacks of the functions
/// it went to, or held or dropped by the zipper's rules. Until then a client
/// keeps a frame to send again if the connection dies, even one the zipper's
/// QUIC stack acknowledged, so a zipper that crashes loses none of them.
/// Sent only to a client that asked in its handshake, first just before the
/// HandshakeAck (which tells the client that receipts will come).
public struct ReceiptFrame: Hashable, Sendable {
    public var settledThrough: UInt64
    /// In the first receipt only, for a client that resumes a connection the
    /// zipper still knows: the offset of that connection's stream through
    /// which the zipper had routed its frames (sequence id 0x02).
    public var previousRoutedThrough: UInt64?
    /// In the first receipt only, to a stream function that acknowledges
    /// handling (``HandshakeFrame/acknowledgesHandling``): the zipper welcomes
    /// its receipts (sequence id 0x03). The function's receipts are this
    /// frame too, going the other way: `settledThrough` is then an offset of
    /// the zipper's stream to the function, the end of the frames whose
    /// handlers finished.
    public var welcomesHandling: Bool
    /// In a stream function's receipt: it is closing, and asks the zipper to
    /// route nothing more to it (sequence id 0x04): it finishes what it has,
    /// and the zipper gives the rest to its namesakes or holds it for its
    /// return. A zipper that does not know the field reads a plain receipt.
    public var closing: Bool
    /// In a stream function's receipt: the end of the frames its handlers
    /// took, in order, running or finished (sequence id 0x05); frames after
    /// it wait in the function (a pipe handler's queue, unread). The zipper
    /// settles a source's frames past it only within the function's recent
    /// pace, so that a backlog is kept by its sources until taken. A zipper
    /// that does not know the field settles at acknowledgement.
    public var takenThrough: UInt64?
    /// In a stream function's receipt: ranges of the zipper's stream past
    /// `settledThrough` whose frames' handlers finished too, out of order
    /// (sequence id 0x06, each range two 8-byte offsets, start then end): a
    /// frame wholly inside one is not given to the function's next instance
    /// if this connection ends. Each receipt names ranges finished since the
    /// last; the zipper keeps their union. A zipper that does not know the
    /// field takes back every frame past `settledThrough`.
    public var handledAhead: [Range<UInt64>]
    /// In a stream function's receipt: transaction ids of frames its handlers
    /// finished on an earlier connection (sequence id 0x07, each one length
    /// byte and 1–255 bytes of id), which the zipper (or a source, after the
    /// zipper's crash) may send on this one again. If this connection ends
    /// before the function reads such a copy, the zipper does not give it to
    /// the function's next instance. A zipper that does not know the field
    /// gives it.
    public var handledBefore: [String]
    /// In a zipper's receipt to a stream function that acknowledges
    /// handling: a sender whose frames it wrote there may send them again
    /// (an upstream zipper of the mesh connected anew, after a crash), so
    /// the function recognizes by transaction id the frames it still has
    /// (sequence id 0x08). Its offset repeats nothing new (0). A function
    /// that does not know the field handles such copies again.
    public var copiesMayFollow: Bool
    /// In a stream function's receipt: how many bytes of frames its handlers
    /// took on this connection so far (sequence id 0x09), cumulative. The
    /// zipper measures the function's pace on it: `takenThrough` also moves
    /// past frames no handler took (copies of frames it had handled,
    /// finished as they were read), and a burst of those is no pace. A
    /// zipper that does not know the field measures on `takenThrough`.
    public var takenBytes: UInt64?
    /// In a zipper's receipt to a stream function that acknowledges handling
    /// (sequence id 0x0A). In the first receipt (0): the zipper answers the
    /// function's `closing`. In that answer (with `closing` set): from then on
    /// it keeps every frame it wrote to the function that starts at or after
    /// this offset and that the function has not finished, until the
    /// connection ends, and gives those to the function's next instance;
    /// frames before it that the function has not finished it no longer has
    /// (they went past the function's share of `limits.max_unhandled_bytes`).
    /// So the closing function may give back the frames it queued past the
    /// offset instead of handling them. A function that does not know the
    /// field handles everything it has before it closes.
    public var unkeptThrough: UInt64?
    /// In a zipper's receipt to a closing stream function that acknowledges
    /// handling: transaction ids of frames it holds for the function's name
    /// (sequence id 0x0B, encoded as 0x07 is): copies an upstream zipper or a
    /// source sent again while the function closes, routed nothing. The
    /// function may give back the frames of earlier connections it still
    /// has with these ids, unhandled: the zipper gives the copies to its
    /// next instance. A function that does not know the field handles them.
    public var heldCopies: [String]
    /// In a stream function's receipt: the end of the frames its handlers
    /// finished in order whose answers the zipper settled (sequence id
    /// 0x0C): what the function wrote before each one's handler finished.
    /// A zipper keeps a frame it restored from its held frames file there
    /// until then (its answers may be only in its memory and the function's).
    /// A zipper that does not know the field takes `settledThrough`.
    public var answeredThrough: UInt64?

    public init(
        settledThrough: UInt64, previousRoutedThrough: UInt64? = nil, welcomesHandling: Bool = false, closing: Bool = false,
        takenThrough: UInt64? = nil, handledAhead: [Range<UInt64>] = [], handledBefore: [String] = [], copiesMayFollow: Bool = false,
        takenBytes: UInt64? = nil, unkeptThrough: UInt64? = nil, heldCopies: [String] = [], answeredThrough: UInt64? = nil
    ) {
        self.settledThrough = settledThrough
        self.previousRoutedThrough = previousRoutedThrough
        self.welcomesHandling = welcomesHandling
        self.closing = closing
        self.takenThrough = takenThrough
        self.handledAhead = handledAhead
        self.handledBefore = handledBefore
        self.copiesMayFollow = copiesMayFollow
        self.takenBytes = takenBytes
        self.unkeptThrough = unkeptThrough
        self.heldCopies = heldCopies
        self.answeredThrough = answeredThrough
    }
}

/// The zipper refused the handshake (or the connection) and says why.
public struct RejectedFrame: Hashable, Sendable {
    public var message: String
    public init(message: String) { self.message = message }
}

/// The peer is going away and says why.
public struct GoawayFrame: Hashable, Sendable {
    public var message: String
    public init(message: String) { self.message = message }
}

/// The zipper asks the client to dial another endpoint (`host:port`).
public struct ConnectToFrame: Hashable, Sendable {
    public var endpoint: String
    public init(endpoint: String) { self.endpoint = endpoint }
}

/// One YoMo frame: the closed set of frames of spec version `2024-01-03`.
public enum Frame: Hashable, Sendable {
    case data(DataFrame)
    case handshake(HandshakeFrame)
    case handshakeAck
    case rejected(RejectedFrame)
    case goaway(GoawayFrame)
    case connectTo(ConnectToFrame)
    case receipt(ReceiptFrame)

    public var type: FrameType {
        switch self {
        case .data: .data
        case .handshake: .handshake
        case .handshakeAck: .handshakeAck
        case .rejected: .rejected
        case .goaway: .goaway
        case .connectTo: .connectTo
        case .receipt: .receipt
        }
    }
}

// MARK: - Encoding

/// The number of bytes a primitive child with a `length`-byte value takes.
@inlinable
func childSize(_ length: Int) -> Int { 1 + Y3.encodedSize(ofLength: length) + length }

extension ByteBuffer {
    @inlinable
    mutating func writeNodeHeader(_ type: FrameType, bodyLength: Int) {
        writeInteger(type.rawValue | Y3.nodeBit)
        Y3.writeLength(bodyLength, into: &self)
    }

    @inlinable
    mutating func writeChildHeader(_ sequenceID: UInt8, length: Int) {
        writeInteger(sequenceID)
        Y3.writeLength(length, into: &self)
    }

    /// Transaction ids as a receipt's child: each one length byte and that many bytes of id.
    mutating func writeIDs(_ sequenceID: UInt8, _ ids: [String]) {
        writeChildHeader(sequenceID, length: ReceiptFrame.idsLength(ids))
        for tid in ids {
            let bytes = tid.utf8.prefix(255)
            writeInteger(UInt8(bytes.count))
            writeBytes(bytes)
        }
    }

    @inlinable
    mutating func writeStringChild(_ sequenceID: UInt8, _ value: String) {
        writeChildHeader(sequenceID, length: value.utf8.count)
        writeString(value)
    }
}

extension DataFrame {
    @inlinable
    var bodyLength: Int {
        (2 + Y3.encodedSize(ofUInt32: tag)) + childSize(metadata.readableBytes) + childSize(payload.readableBytes)
    }

    /// The number of bytes ``encode(into:)`` writes.
    @inlinable
    public var encodedLength: Int {
        let body = bodyLength
        return 1 + Y3.encodedSize(ofLength: body) + body
    }

    /// Writes the frame: tag, metadata, payload, in the Go encoder's order.
    public func encode(into buffer: inout ByteBuffer) {
        encode(into: &buffer, patch: nil)
    }

    /// Writes the frame with `patch` written over its metadata as it lands in
    /// `buffer`: a zipper hands its span on without a metadata buffer per frame.
    package func encode(into buffer: inout ByteBuffer, patch: MetadataPatch?) {
        buffer.reserveCapacity(minimumWritableBytes: encodedLength)
        encodeHeader(into: &buffer, patch: patch)
        buffer.writeImmutableBuffer(payload)
    }

    /// Writes every byte of the frame except the payload's, which come last on the
    /// wire: a transport can then send the payload from its own buffer without a copy.
    public func encodeHeader(into buffer: inout ByteBuffer) {
        encodeHeader(into: &buffer, patch: nil)
    }

    /// `encodeHeader(into:)` with `patch` written over the metadata.
    package func encodeHeader(into buffer: inout ByteBuffer, patch: MetadataPatch?) {
        let body = bodyLength
        let tagSize = Y3.encodedSize(ofUInt32: tag)
        let metadataLength = metadata.readableBytes
        let prefix = 1 + Y3.encodedSize(ofLength: body) + 2 + tagSize + 1 + Y3.encodedSize(ofLength: metadataLength)
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: prefix) { output in
            var writer = RawWriter(output)
            writer.write(FrameType.data.rawValue | Y3.nodeBit)
            writer.writeY3Length(body)
            writer.write(0x01)
            writer.write(UInt8(tagSize))
            writer.writeY3UInt32(tag, size: tagSize)
            writer.write(0x03)
            writer.writeY3Length(metadataLength)
            return writer.offset
        }
        buffer.writeImmutableBuffer(metadata)
        if let patch {
            let end = buffer.readableBytes
            buffer.withUnsafeMutableReadableBytes { written in
                patch.apply(to: UnsafeMutableRawBufferPointer(rebasing: written[(end - metadataLength)..<end]))
            }
        }
        let payloadLength = payload.readableBytes
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 1 + Y3.maximumLengthSize) { output in
            var writer = RawWriter(output)
            writer.write(0x02)
            writer.writeY3Length(payloadLength)
            return writer.offset
        }
    }
}

extension HandshakeFrame {
    var bodyLength: Int {
        childSize(name.utf8.count) + childSize(id.utf8.count) + childSize(1)
            + childSize(observedTags.count * 4) + childSize(authName.utf8.count)
            + childSize(authPayload.utf8.count) + childSize(version.utf8.count)
            + childSize(functionDefinition.count) + childSize(wantedTarget.utf8.count)
            + (wantsReceipts ? childSize(1) : 0) + (resumes.isEmpty ? 0 : childSize(resumes.utf8.count))
            + (acknowledgesHandling ? childSize(1) : 0)
    }

    /// Writes every field, in the Go encoder's order (01 03 02 06 04 05 07 09 08),
    /// then this SDK's 0x0A, 0x0B and 0x0C when they say something.
    public func encode(into buffer: inout ByteBuffer) {
        let body = bodyLength
        buffer.reserveCapacity(minimumWritableBytes: 1 + Y3.encodedSize(ofLength: body) + body)
        buffer.writeNodeHeader(.handshake, bodyLength: body)
        buffer.writeStringChild(0x01, name)
        buffer.writeStringChild(0x03, id)
        buffer.writeChildHeader(0x02, length: 1)
        buffer.writeInteger(clientType.rawValue)
        buffer.writeChildHeader(0x06, length: observedTags.count * 4)
        for tag in observedTags {
            buffer.writeInteger(tag, endianness: .little)
        }
        buffer.writeStringChild(0x04, authName)
        buffer.writeStringChild(0x05, authPayload)
        buffer.writeStringChild(0x07, version)
        buffer.writeChildHeader(0x09, length: functionDefinition.count)
        buffer.writeBytes(functionDefinition)
        buffer.writeStringChild(0x08, wantedTarget)
        if wantsReceipts {
            buffer.writeChildHeader(0x0A, length: 1)
            buffer.writeInteger(UInt8(1))
        }
        if !resumes.isEmpty { buffer.writeStringChild(0x0B, resumes) }
        if acknowledgesHandling {
            buffer.writeChildHeader(0x0C, length: 1)
            buffer.writeInteger(UInt8(1))
        }
    }
}

extension ByteBuffer {
    /// A frame holding one string child with sequence id 1.
    mutating func writeMessageFrame(_ type: FrameType, _ message: String) {
        let body = childSize(message.utf8.count)
        writeNodeHeader(type, bodyLength: body)
        writeStringChild(0x01, message)
    }
}

extension Frame {
    /// Writes the frame's bytes, exactly as the Go YoMo encoder does.
    public func encode(into buffer: inout ByteBuffer) {
        switch self {
        case .data(let frame): frame.encode(into: &buffer)
        case .handshake(let frame): frame.encode(into: &buffer)
        case .handshakeAck: buffer.writeNodeHeader(.handshakeAck, bodyLength: 0)
        case .rejected(let frame): buffer.writeMessageFrame(.rejected, frame.message)
        case .goaway(let frame): buffer.writeMessageFrame(.goaway, frame.message)
        case .connectTo(let frame): buffer.writeMessageFrame(.connectTo, frame.endpoint)
        case .receipt(let frame):
            buffer.writeNodeHeader(
                .receipt,
                bodyLength: childSize(8) + (frame.previousRoutedThrough == nil ? 0 : childSize(8)) + (frame.welcomesHandling ? childSize(1) : 0)
                    + (frame.closing ? childSize(1) : 0) + (frame.takenThrough == nil ? 0 : childSize(8))
                    + (frame.handledAhead.isEmpty ? 0 : childSize(16 * frame.handledAhead.count))
                    + (frame.handledBefore.isEmpty ? 0 : childSize(frame.handledBeforeLength)) + (frame.copiesMayFollow ? childSize(1) : 0)
                    + (frame.takenBytes == nil ? 0 : childSize(8)) + (frame.unkeptThrough == nil ? 0 : childSize(8))
                    + (frame.heldCopies.isEmpty ? 0 : childSize(ReceiptFrame.idsLength(frame.heldCopies)))
                    + (frame.answeredThrough == nil ? 0 : childSize(8)))
            buffer.writeChildHeader(0x01, length: 8)
            buffer.writeInteger(frame.settledThrough)
            if let previous = frame.previousRoutedThrough {
                buffer.writeChildHeader(0x02, length: 8)
                buffer.writeInteger(previous)
            }
            if frame.welcomesHandling {
                buffer.writeChildHeader(0x03, length: 1)
                buffer.writeInteger(UInt8(1))
            }
            if frame.closing {
                buffer.writeChildHeader(0x04, length: 1)
                buffer.writeInteger(UInt8(1))
            }
            if let taken = frame.takenThrough {
                buffer.writeChildHeader(0x05, length: 8)
                buffer.writeInteger(taken)
            }
            if !frame.handledAhead.isEmpty {
                buffer.writeChildHeader(0x06, length: 16 * frame.handledAhead.count)
                for range in frame.handledAhead {
                    buffer.writeInteger(range.lowerBound)
                    buffer.writeInteger(range.upperBound)
                }
            }
            if !frame.handledBefore.isEmpty { buffer.writeIDs(0x07, frame.handledBefore) }
            if frame.copiesMayFollow {
                buffer.writeChildHeader(0x08, length: 1)
                buffer.writeInteger(UInt8(1))
            }
            if let bytes = frame.takenBytes {
                buffer.writeChildHeader(0x09, length: 8)
                buffer.writeInteger(bytes)
            }
            if let unkept = frame.unkeptThrough {
                buffer.writeChildHeader(0x0A, length: 8)
                buffer.writeInteger(unkept)
            }
            if !frame.heldCopies.isEmpty { buffer.writeIDs(0x0B, frame.heldCopies) }
            if let answered = frame.answeredThrough {
                buffer.writeChildHeader(0x0C, length: 8)
                buffer.writeInteger(answered)
            }
        }
    }

    /// The frame's bytes in a new buffer.
    public func encoded(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 64)
        encode(into: &buffer)
        return buffer
    }
}

// MARK: - Decoding

extension Frame {
    /// Decodes exactly one frame from the start of `bytes`; bytes after it are ignored.
    ///
    /// Use ``FrameDecoder`` for a stream, where frames arrive in pieces.
    public init(decoding bytes: ByteBuffer, maximumFrameSize: Int = FrameDecoder.defaultMaximumFrameSize) throws(WireError) {
        var buffer = bytes
        var decoder = FrameDecoder(maximumFrameSize: maximumFrameSize)
        guard let frame = try decoder.decodeFrame(buffer: &buffer) else {
            throw WireError(.truncated, FrameDecoder.describeIncomplete(buffer))
        }
        self = frame
    }

    /// Decodes a frame whose node value (the children) is `body`.
    @usableFromInline
    static func decodeBody(type: FrameType, body: ByteBuffer) throws(WireError) -> Frame {
        switch type {
        case .data: return .data(try DataFrame(body: body))
        case .handshake: return .handshake(try HandshakeFrame(body: body))
        case .handshakeAck: return .handshakeAck
        case .rejected: return .rejected(RejectedFrame(message: try body.messageChild(type)))
        case .goaway: return .goaway(GoawayFrame(message: try body.messageChild(type)))
        case .connectTo: return .connectTo(ConnectToFrame(endpoint: try body.messageChild(type)))
        case .receipt: return .receipt(try ReceiptFrame(body: body))
        default: throw WireError(.unknownFrameType, "\(type) is not a YoMo frame")
        }
    }
}

extension DataFrame {
    @inlinable
    init(body: ByteBuffer) throws(WireError) {
        var tag: UInt32?
        var metadataRange = 0..<0
        var payloadRange = 0..<0
        try body.withUnsafeReadableBytesTyped { (bytes) throws(WireError) in
            // Go keys children by sequence id: the last duplicate wins, unknown ids are ignored.
            try Y3.forEachChild(of: bytes) { (sequenceID, start, length) throws(WireError) in
                switch sequenceID {
                case 0x01:
                    tag = try Y3.readUInt32(
                        UnsafeRawBufferPointer(rebasing: bytes[start..<start + length]),
                        field: "DataFrame tag"
                    )
                case 0x03: metadataRange = start..<start + length
                case 0x02: payloadRange = start..<start + length
                default: break
                }
            }
        }
        guard let tag else {
            throw WireError(.emptyValue, "DataFrame has no tag field (0x01)")
        }
        self.tag = tag
        // Slices share the frame's storage: the payload is not copied.
        self.metadata = body.getSlice(at: body.readerIndex + metadataRange.lowerBound, length: metadataRange.count)!
        self.payload = body.getSlice(at: body.readerIndex + payloadRange.lowerBound, length: payloadRange.count)!
    }
}

extension HandshakeFrame {
    init(body: ByteBuffer) throws(WireError) {
        var frame = HandshakeFrame(name: "", id: "", clientType: ClientType(rawValue: 0))
        var sawClientType = false
        try body.withUnsafeReadableBytesTyped { (bytes) throws(WireError) in
            try Y3.forEachChild(of: bytes) { (sequenceID, start, length) throws(WireError) in
                let value = UnsafeRawBufferPointer(rebasing: bytes[start..<start + length])
                switch sequenceID {
                case 0x01: frame.name = try decodeString(value, field: "handshake name")
                case 0x03: frame.id = try decodeString(value, field: "handshake id")
                case 0x02:
                    guard let type = value.first else {
                        throw WireError(.emptyValue, "handshake client type is empty; it needs one byte")
                    }
                    frame.clientType = ClientType(rawValue: type)
                    sawClientType = true
                case 0x06:
                    guard length % 4 == 0 else {
                        throw WireError(
                            .invalidValue,
                            "handshake observed tags have \(length) bytes, not a multiple of 4"
                        )
                    }
                    frame.observedTags = stride(from: 0, to: length, by: 4).map { offset in
                        value.loadUnaligned(fromByteOffset: offset, as: UInt32.self).littleEndian
                    }
                case 0x04: frame.authName = try decodeString(value, field: "handshake auth name")
                case 0x05: frame.authPayload = try decodeString(value, field: "handshake auth payload")
                case 0x07: frame.version = try decodeString(value, field: "handshake version")
                case 0x09: frame.functionDefinition = Array(value)
                case 0x08: frame.wantedTarget = try decodeString(value, field: "handshake wanted target")
                case 0x0A: frame.wantsReceipts = value.contains { $0 != 0 }
                case 0x0B: frame.resumes = try decodeString(value, field: "handshake resumed connection")
                case 0x0C: frame.acknowledgesHandling = value.contains { $0 != 0 }
                default: break
                }
            }
        }
        guard sawClientType else {
            throw WireError(.emptyValue, "handshake has no client type field (0x02)")
        }
        self = frame
    }
}

extension ReceiptFrame {
    /// The bytes of a list of ids as children 0x07 and 0x0B write them (ids
    /// longer than 255 bytes are cut: none is).
    static func idsLength(_ ids: [String]) -> Int { ids.reduce(0) { $0 + 1 + min($1.utf8.count, 255) } }

    var handledBeforeLength: Int { Self.idsLength(handledBefore) }

    init(body: ByteBuffer) throws(WireError) {
        var settled: UInt64?
        var previous: UInt64?
        var welcomes = false
        var closes = false
        var copies = false
        var taken: UInt64?
        var bytesTaken: UInt64?
        var unkept: UInt64?
        var answered: UInt64?
        var ahead: [Range<UInt64>] = []
        var before: [String] = []
        var held: [String] = []
        try body.withUnsafeReadableBytesTyped { (bytes) throws(WireError) in
            func offset(at index: Int) -> UInt64 {
                UInt64(bigEndian: UnsafeRawBufferPointer(rebasing: bytes[index..<index + 8]).loadUnaligned(as: UInt64.self))
            }
            try Y3.forEachChild(of: bytes) { (sequenceID, start, length) throws(WireError) in
                if sequenceID == 0x06 {
                    guard length > 0, length % 16 == 0 else {
                        throw WireError(.invalidValue, "ReceiptFrame ranges have \(length) bytes, not a multiple of 16")
                    }
                    for at in stride(from: start, to: start + length, by: 16) {
                        let (lower, upper) = (offset(at: at), offset(at: at + 8))
                        guard lower < upper else {
                            throw WireError(.invalidValue, "ReceiptFrame range \(lower)..<\(upper) is empty or reversed")
                        }
                        ahead.append(lower..<upper)
                    }
                    return
                }
                if sequenceID == 0x07 || sequenceID == 0x0B {
                    var at = start
                    while at < start + length {
                        let count = Int(bytes[at])
                        guard count > 0, at + 1 + count <= start + length else {
                            throw WireError(.invalidValue, "ReceiptFrame transaction ids: an id of \(count) bytes at \(at - start) of \(length)")
                        }
                        let tid = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[at + 1..<at + 1 + count]), as: UTF8.self)
                        if sequenceID == 0x07 { before.append(tid) } else { held.append(tid) }
                        at += 1 + count
                    }
                    return
                }
                if sequenceID == 0x03 || sequenceID == 0x04 || sequenceID == 0x08 {
                    let set = bytes[start..<start + length].contains { $0 != 0 }
                    switch sequenceID {
                    case 0x03: welcomes = set
                    case 0x04: closes = set
                    default: copies = set
                    }
                    return
                }
                guard [0x01, 0x02, 0x05, 0x09, 0x0A, 0x0C].contains(sequenceID) else { return }
                guard length == 8 else {
                    throw WireError(.invalidValue, "ReceiptFrame offset has \(length) bytes, not 8")
                }
                let value = offset(at: start)
                switch sequenceID {
                case 0x01: settled = value
                case 0x02: previous = value
                case 0x05: taken = value
                case 0x09: bytesTaken = value
                case 0x0A: unkept = value
                default: answered = value
                }
            }
        }
        guard let settled else { throw WireError(.emptyValue, "ReceiptFrame has no offset field (0x01)") }
        settledThrough = settled
        previousRoutedThrough = previous
        welcomesHandling = welcomes
        closing = closes
        takenThrough = taken
        handledAhead = ahead
        handledBefore = before
        copiesMayFollow = copies
        takenBytes = bytesTaken
        unkeptThrough = unkept
        heldCopies = held
        answeredThrough = answered
    }
}

extension ByteBuffer {
    /// Like `withUnsafeReadableBytes`, but keeps the closure's typed throw.
    @inlinable
    func withUnsafeReadableBytesTyped<Result>(
        _ body: (UnsafeRawBufferPointer) throws(WireError) -> Result
    ) throws(WireError) -> Result {
        let result: Swift.Result<Result, WireError> = withUnsafeReadableBytes { bytes in
            do throws(WireError) {
                return .success(try body(bytes))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// The string child with sequence id 1 of a Rejected, Goaway or ConnectTo frame.
    func messageChild(_ type: FrameType) throws(WireError) -> String {
        var message = ""
        try withUnsafeReadableBytesTyped { (bytes) throws(WireError) in
            try Y3.forEachChild(of: bytes) { (sequenceID, start, length) throws(WireError) in
                if sequenceID == 0x01 {
                    message = try decodeString(
                        UnsafeRawBufferPointer(rebasing: bytes[start..<start + length]),
                        field: "\(type) message"
                    )
                }
            }
        }
        return message
    }
}

/// Decodes UTF-8, rejecting invalid bytes rather than silently repairing them.
@inlinable
func decodeString(_ bytes: UnsafeRawBufferPointer, field: @autoclosure () -> String) throws(WireError) -> String {
    if bytes.isEmpty { return "" }
    let utf8 = bytes.assumingMemoryBound(to: UInt8.self)
    // Metadata is almost always ASCII, for which decoding cannot repair anything and
    // is several times cheaper than validating.
    if isASCII(bytes) { return String(decoding: utf8, as: UTF8.self) }
    guard let string = String(validating: utf8, as: UTF8.self) else {
        throw WireError(.invalidUTF8, "\(field()) is not valid UTF-8")
    }
    return string
}

@inlinable
@inline(__always)
func isASCII(_ bytes: UnsafeRawBufferPointer) -> Bool {
    let count = bytes.count
    var bits: UInt64 = 0
    if count >= 8 {
        var index = 0
        // `index + 8 <= count` cannot overflow: both are below the buffer's size.
        while index &+ 8 <= count {
            bits |= bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)
            index &+= 8
        }
        // The tail as the last eight bytes, overlapping the words already read:
        // metadata strings are short, and a byte loop over tails cost as much
        // as the words.
        bits |= bytes.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self)
    } else {
        for index in 0..<count { bits |= UInt64(bytes[index]) }
    }
    return bits & 0x8080_8080_8080_8080 == 0
}
