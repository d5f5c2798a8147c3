public import NIOCore

/// An incremental decoder of YoMo frames from a byte stream.
///
/// Feed it the bytes received so far; it returns `nil` ("need more data") until a
/// whole frame is there, then the frame, leaving any following bytes in the buffer.
/// It can be used directly or as a NIO `ByteToMessageDecoder`.
///
/// ```swift
/// var decoder = FrameDecoder()
/// var received = ByteBuffer()
/// received.writeImmutableBuffer(chunk)
/// while let frame = try decoder.decode(buffer: &received) { handle(frame) }
/// ```
///
/// A frame longer than `maximumFrameSize` fails with ``WireError/Code/frameTooLarge``
/// as soon as its length is known, before anything is allocated for it.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder, Sendable {
    public typealias InboundOut = Frame

    /// 16 MiB: far above any YoMo frame in practice, far below what hurts a process.
    public static let defaultMaximumFrameSize = 16 << 20

    /// The largest frame (tag byte, length and value) this decoder accepts.
    public let maximumFrameSize: Int

    public init(maximumFrameSize: Int = FrameDecoder.defaultMaximumFrameSize) {
        precondition(maximumFrameSize > 0, "maximumFrameSize must be positive")
        self.maximumFrameSize = maximumFrameSize
    }

    /// Returns the next frame, or `nil` when `buffer` does not hold a whole frame yet.
    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        try decodeFrame(buffer: &buffer)
    }

    /// At the end of the stream: the next whole frame, or an error if a partial one is left.
    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Frame? {
        if let frame = try decodeFrame(buffer: &buffer) { return frame }
        if buffer.readableBytes > 0 {
            throw WireError(.truncated, Self.describeIncomplete(buffer))
        }
        return nil
    }

    /// ``decode(buffer:)`` with its error typed.
    @inlinable
    public mutating func decodeFrame(buffer: inout ByteBuffer) throws(WireError) -> Frame? {
        guard let header = try Self.readHeader(buffer) else { return nil }
        let frameSize = header.headerSize + header.bodyLength
        guard frameSize <= maximumFrameSize else {
            throw WireError(
                .frameTooLarge,
                "\(header.type) of \(frameSize) bytes exceeds the maximum frame size of \(maximumFrameSize) bytes"
            )
        }
        guard buffer.readableBytes >= frameSize else {
            // Make room for the whole frame once, instead of growing step by step as it arrives.
            buffer.reserveCapacity(minimumWritableBytes: frameSize - buffer.readableBytes)
            return nil
        }
        let body = buffer.getSlice(at: buffer.readerIndex + header.headerSize, length: header.bodyLength)!
        buffer.moveReaderIndex(forwardBy: frameSize)
        return try Frame.decodeBody(type: header.type, body: body)
    }

    @usableFromInline
    struct Header {
        @usableFromInline var type: FrameType
        @usableFromInline var headerSize: Int
        @usableFromInline var bodyLength: Int

        @usableFromInline
        init(type: FrameType, headerSize: Int, bodyLength: Int) {
            self.type = type
            self.headerSize = headerSize
            self.bodyLength = bodyLength
        }
    }

    /// Reads the tag byte and length, or returns `nil` when they are not all there yet.
    /// An unknown frame type or a negative length fails at once.
    @inlinable
    static func readHeader(_ buffer: ByteBuffer) throws(WireError) -> Header? {
        try buffer.withUnsafeReadableBytesTyped { (bytes) throws(WireError) -> Header? in
            guard let first = bytes.first else { return nil }
            // Go ignores the node bit of the first byte; so do we.
            let type = FrameType(rawValue: first & ~Y3.nodeBit)
            switch type {
            case .data, .handshake, .handshakeAck, .rejected, .goaway, .connectTo, .receipt: break
            default:
                throw WireError(.unknownFrameType, "first byte 0x\(Y3.hex(first)) is not a YoMo frame type")
            }
            switch try Y3.readLength(bytes, at: 1) {
            case .needMoreData:
                return nil
            case .value(let length, let size):
                guard length >= 0 else {
                    throw WireError(.negativeLength, "\(type) has negative length \(length)")
                }
                return Header(type: type, headerSize: 1 + size, bodyLength: length)
            }
        }
    }

    /// The total size (tag byte, length and value) of the frame at `buffer`'s reader
    /// index: `nil` while its length is incomplete, `-1` when the bytes cannot start
    /// a frame (decoding them then throws the precise error). Lets a transport size
    /// a buffer for a frame that straddles received chunks.
    public static func frameSize(_ buffer: ByteBuffer) -> Int? {
        do {
            guard let header = try readHeader(buffer) else { return nil }
            return header.headerSize + header.bodyLength
        } catch {
            return -1
        }
    }

    /// Says how much of a frame `buffer` holds, for "truncated" errors.
    static func describeIncomplete(_ buffer: ByteBuffer) -> String {
        guard buffer.readableBytes > 0 else { return "no bytes: expected a frame" }
        do {
            guard let header = try readHeader(buffer) else {
                return "\(buffer.readableBytes) byte(s) end inside the frame's tag and length"
            }
            let needed = header.headerSize + header.bodyLength
            return "\(header.type) needs \(needed) bytes but only \(buffer.readableBytes) are there"
        } catch {
            return error.message
        }
    }
}
