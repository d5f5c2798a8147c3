public import NIOCore

/// The y3 TLV encoding that YoMo frames are made of.
///
/// A packet is a tag byte (bit `0x80`: node, low 6 bits: sequence id), a signed
/// "PVarInt32" length, and the value. A frame is a node whose value is the
/// concatenation of primitive children. These helpers are public so transports
/// and tools can size and inspect packets; most code only needs ``Frame``.
public enum Y3 {
    /// Bit of the tag byte that marks a node packet.
    public static let nodeBit: UInt8 = 0x80
    /// Mask of the tag byte's sequence id.
    public static let sequenceIDMask: UInt8 = 0x3F
    /// A PVarInt32 never needs more than five 7-bit groups.
    public static let maximumLengthSize = 5

    /// How many bytes the PVarInt32 encoding of the non-negative `length` takes.
    ///
    /// One byte holds 0–63, since bit `0x40` of the first group is the sign.
    @inlinable
    public static func encodedSize(ofLength length: Int) -> Int {
        precondition(length >= 0 && length <= Int(Int32.max), "y3 lengths are non-negative Int32 values")
        if length < 1 << 6 { return 1 }
        if length < 1 << 13 { return 2 }
        if length < 1 << 20 { return 3 }
        if length < 1 << 27 { return 4 }
        return 5
    }

    /// Writes `length` as a big-endian PVarInt32: 7 bits a byte, `0x80` on every byte but the last.
    @inlinable
    public static func writeLength(_ length: Int, into buffer: inout ByteBuffer) {
        let size = encodedSize(ofLength: length)
        switch size {
        case 1:
            buffer.writeInteger(UInt8(truncatingIfNeeded: length))
        case 2:
            buffer.writeInteger(
                UInt16(truncatingIfNeeded: 0x8000 | ((length >> 7) & 0x7F) << 8 | (length & 0x7F))
            )
        default:
            var shift = (size - 1) * 7
            while shift > 0 {
                buffer.writeInteger(UInt8(truncatingIfNeeded: 0x80 | ((length >> shift) & 0x7F)))
                shift -= 7
            }
            buffer.writeInteger(UInt8(truncatingIfNeeded: length & 0x7F))
        }
    }

    /// The outcome of reading a PVarInt32 from bytes that may be incomplete.
    @usableFromInline
    enum LengthRead {
        case value(Int, size: Int)
        case needMoreData
    }

    /// Reads a PVarInt32 at `offset`. Returns `.needMoreData` when the bytes end inside
    /// the varint; throws when it is longer than five bytes or out of Int32 range.
    @inlinable
    static func readLength(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws(WireError) -> LengthRead {
        guard offset < bytes.count else { return .needMoreData }
        let first = bytes[offset]
        // Fast path: the common one-byte length.
        if first & 0x80 == 0 {
            return .value(first & 0x40 == 0 ? Int(first) : Int(first) - 0x80, size: 1)
        }
        var value: Int64 = first & 0x40 == 0 ? 0 : -1
        var index = offset
        while true {
            guard index < bytes.count else { return .needMoreData }
            let byte = bytes[index]
            index += 1
            value = (value << 7) | Int64(byte & 0x7F)
            if byte & 0x80 == 0 { break }
            if index - offset == maximumLengthSize {
                throw WireError(.malformedLength, "length varint continues past \(maximumLengthSize) bytes")
            }
        }
        guard value >= Int64(Int32.min), value <= Int64(Int32.max) else {
            throw WireError(.malformedLength, "length varint \(value) does not fit in 32 bits")
        }
        return .value(Int(value), size: index - offset)
    }

    /// How many bytes a uint32 takes as y3 "NVarUInt32": the minimal big-endian
    /// two's-complement form of the value read as an Int32 (0x80 → `00 80`, 0xFFFFFFFF → `FF`).
    @inlinable
    public static func encodedSize(ofUInt32 value: UInt32) -> Int {
        let signed = Int32(bitPattern: value)
        if signed >= -0x80 && signed < 0x80 { return 1 }
        if signed >= -0x8000 && signed < 0x8000 { return 2 }
        if signed >= -0x80_0000 && signed < 0x80_0000 { return 3 }
        return 4
    }

    @inlinable
    public static func writeUInt32(_ value: UInt32, into buffer: inout ByteBuffer) {
        var shift = (encodedSize(ofUInt32: value) - 1) * 8
        while shift >= 0 {
            buffer.writeInteger(UInt8(truncatingIfNeeded: value >> UInt32(shift)))
            shift -= 8
        }
    }

    /// Reads an NVarUInt32 the way Go does: sign-extend into 64 bits, then truncate,
    /// so non-minimal forms (`00 00 80`, or five bytes) still decode.
    @inlinable
    static func readUInt32(_ bytes: UnsafeRawBufferPointer, field: String) throws(WireError) -> UInt32 {
        guard let first = bytes.first else {
            throw WireError(.emptyValue, "\(field) is empty; a uint32 needs at least one byte")
        }
        guard bytes.count <= 8 else {
            throw WireError(.valueTooLong, "\(field) has \(bytes.count) bytes; a varint integer has at most 8")
        }
        var value: Int64 = first & 0x80 == 0 ? 0 : -1
        for byte in bytes {
            value = (value << 8) | Int64(byte)
        }
        return UInt32(truncatingIfNeeded: value)
    }

    /// Walks the primitive children of a node's value, calling `body` with each child's
    /// sequence id and the range of its value. Rejects children that are too short,
    /// have negative lengths or run past the end.
    @inlinable
    static func forEachChild(
        of value: UnsafeRawBufferPointer,
        _ body: (_ sequenceID: UInt8, _ start: Int, _ length: Int) throws(WireError) -> Void
    ) throws(WireError) {
        var offset = 0
        while offset < value.count {
            let remaining = value.count - offset
            guard remaining >= 2 else {
                throw WireError(
                    .packetTooShort,
                    "child packet at offset \(offset) has \(remaining) byte; a packet needs a tag and a length"
                )
            }
            let sequenceID = value[offset] & sequenceIDMask
            let length: Int
            let lengthSize: Int
            switch try readLength(value, at: offset + 1) {
            case .value(let decoded, let size):
                length = decoded
                lengthSize = size
            case .needMoreData:
                throw WireError(.outOfBounds, "length of field 0x\(hex(sequenceID)) runs past the end of its frame")
            }
            guard length >= 0 else {
                throw WireError(.negativeLength, "field 0x\(hex(sequenceID)) has negative length \(length)")
            }
            let start = offset + 1 + lengthSize
            guard length <= value.count - start else {
                throw WireError(
                    .outOfBounds,
                    "field 0x\(hex(sequenceID)) claims \(length) bytes but only \(value.count - start) remain in its frame"
                )
            }
            try body(sequenceID, start, length)
            offset = start + length
        }
    }

    @usableFromInline
    static func hex(_ byte: UInt8) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]])
    }
}
