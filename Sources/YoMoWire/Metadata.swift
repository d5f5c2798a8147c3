public import NIOCore

/// The metadata of a DataFrame: string keys to string values, carried as a
/// msgpack map (fixmap/map16/map32 of fixstr/str8/str16/str32).
///
/// Behaves as the Go SDK's `metadata.M`: setting a key to `""` (or `nil`) deletes
/// it, an empty map encodes to zero bytes, and decoding accepts any key order.
/// Entries keep insertion order; equality ignores order.
public struct Metadata: Hashable, Sendable, Sequence, ExpressibleByDictionaryLiteral, CustomStringConvertible {
    /// The reserved keys of the YoMo protocol.
    public typealias Key = String
    public typealias Value = String

    public enum ReservedKey {
        public static let sourceID = "yomo-source-id"
        public static let tid = "yomo-tid"
        public static let traceID = "yomo-trace-id"
        public static let spanID = "yomo-span-id"
        public static let target = "yomo-target"
        public static let wantedTarget = "yomo-wanted-target"
    }

    public typealias Element = (key: String, value: String)

    @usableFromInline
    struct Entry: Sendable {
        @usableFromInline var key: String
        @usableFromInline var stored: StoredValue

        @usableFromInline
        init(key: String, value: String) {
            self.key = key
            self.stored = .text(value)
        }

        init(key: String, stored: StoredValue) {
            self.key = key
            self.stored = stored
        }

        @usableFromInline var value: String { stored.string }
    }

    // A handful of entries is the norm: a linear scan beats hashing here.
    @usableFromInline var entries: [Entry]

    public init() {
        entries = []
    }

    /// An empty map with room for `minimumCapacity` entries before it grows.
    public init(minimumCapacity: Int) {
        entries = []
        entries.reserveCapacity(minimumCapacity)
    }

    @usableFromInline
    func index(of key: String) -> Int? {
        // Lengths first: a String comparison that fails is a call, a length is not.
        let length = key.utf8.count
        return entries.firstIndex { $0.key.utf8.count == length && $0.key == key }
    }

    public init(_ entries: [String: String]) {
        // Dictionary keys are unique already: no scan per entry.
        self.entries = entries.compactMap { $0.value.isEmpty ? nil : Entry(key: $0.key, value: $0.value) }
    }

    public init(dictionaryLiteral elements: (String, String)...) {
        self.init()
        for (key, value) in elements { self[key] = value }
    }

    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }

    /// The value for `key`. Setting `nil` or `""` removes the key, as in Go.
    @inlinable
    public subscript(key: String) -> String? {
        get {
            guard let index = index(of: key) else { return nil }
            return entries[index].value
        }
        set {
            switch (index(of: key), newValue) {
            case (let index?, let value?) where !value.isEmpty:
                entries[index].stored = .text(value)
            case (let index?, _):
                entries.remove(at: index)
            case (nil, let value?) where !value.isEmpty:
                entries.append(Entry(key: key, value: value))
            case (nil, _):
                break
            }
        }
    }

    /// Sets every entry of `other` over this one's (the zipper's merge of connection metadata).
    public mutating func merge(_ other: Metadata) {
        if isEmpty {
            self = other
            return
        }
        // Entries as they are: trace values stay numbers, no strings are made.
        for entry in other.entries {
            if let index = index(of: entry.key) {
                entries[index].stored = entry.stored
            } else {
                entries.append(entry)
            }
        }
    }

    public func makeIterator() -> some IteratorProtocol<Element> {
        entries.lazy.map { (key: $0.key, value: $0.value) }.makeIterator()
    }

    public var dictionary: [String: String] {
        Dictionary(entries.lazy.map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last })
    }

    /// Above this many entries, whole-map work hashes instead of scanning.
    static let linearScanLimit = 16

    public static func == (lhs: Metadata, rhs: Metadata) -> Bool {
        guard lhs.count == rhs.count else { return false }
        if lhs.count > linearScanLimit { return lhs.dictionary == rhs.dictionary }
        return lhs.entries.allSatisfy { entry in
            guard let index = rhs.index(of: entry.key) else { return false }
            return rhs.entries[index].stored == entry.stored
        }
    }

    public func hash(into hasher: inout Hasher) {
        // Order-independent, to agree with ==.
        var combined = 0
        for (key, value) in self {
            var entryHasher = Hasher()
            entryHasher.combine(key)
            entryHasher.combine(value)
            combined ^= entryHasher.finalize()
        }
        hasher.combine(count)
        hasher.combine(combined)
    }

    public var description: String {
        "[" + map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "]"
    }
}

// MARK: - msgpack

extension Metadata {
    /// Decodes msgpack metadata. Zero bytes are the empty map; anything but a map of
    /// strings to strings, or bytes after the map, is an error that says what was found.
    public init(decoding bytes: ByteBuffer) throws(WireError) {
        self.init()
        guard bytes.readableBytes > 0 else { return }
        var entries: [Entry] = []
        try bytes.withUnsafeReadableBytesTyped { (input) throws(WireError) in
            var reader = MsgpackReader(bytes: input)
            let count = try reader.readMapHeader()
            // Never trust a count for allocation: each entry takes at least two bytes.
            let capacity = Swift.min(count, input.count / 2)
            entries.reserveCapacity(capacity)
            // Large maps find duplicates by hashing, so a hostile map cannot make decoding quadratic.
            var positions: [String: Int]? = count > Self.linearScanLimit ? [:] : nil
            // Where a canonical traceparent's content lies, and its value.
            var traceparentRead: (content: Range<Int>, fields: TraceparentFields)?
            // The known keys read so far, a bit each (`MetadataView.Key.rawValue`).
            var knownSeen: UInt8 = 0
            for index in 0..<count {
                // The keys YoMo itself writes are matched as bytes and taken as
                // constants: no string is made (or validated) for them.
                let known = reader.knownKey()
                let key = if let known { known.string } else { try reader.readString(what: "key #\(index)") }
                let valueStart = reader.offset
                let value: StoredValue
                // A trace id held as numbers has the str8 header of 32 bytes (`readValue`).
                if known == .traceID, let (content, fields) = traceparentRead, input.count - valueStart >= 34,
                   input[valueStart] == 0xD9, input[valueStart + 1] == 32,
                   MetadataView.sameBytes(
                    UnsafeRawBufferPointer(rebasing: input[valueStart + 2..<valueStart + 34]),
                    UnsafeRawBufferPointer(rebasing: input[content]), at: 3) {
                    value = .traceID(high: fields.traceIDHigh, low: fields.traceIDLow)
                    reader.offset = valueStart + 34
                } else {
                    value = try reader.readValue(forKey: key, kind: known?.traceKey)
                }
                if case .traceparent(let fields) = value {
                    // Held as numbers: its content is the 55 bytes just read.
                    traceparentRead = (reader.offset - 55..<reader.offset, fields)
                }
                // A duplicate key: the last one wins, as when Go decodes into a map.
                // A known key is found by its flag, without comparing strings; another
                // is compared only with keys of its length (a failed comparison is a call).
                let existing: Int?
                if let known {
                    let flag: UInt8 = 1 << known.rawValue
                    existing = knownSeen & flag != 0 ? entries.firstIndex { $0.key == key } : nil
                    knownSeen |= flag
                } else if positions == nil {
                    let length = key.utf8.count
                    existing = entries.firstIndex { $0.key.utf8.count == length && $0.key == key }
                } else {
                    existing = positions![key]
                }
                if let existing {
                    entries[existing].stored = value
                } else {
                    positions?[key] = entries.count
                    entries.append(Entry(key: key, stored: value))
                }
            }
            guard reader.offset == input.count else {
                throw WireError(
                    .invalidMetadata,
                    "\(input.count - reader.offset) byte(s) follow the metadata map"
                )
            }
        }
        self.entries = entries
    }

    /// The number of bytes ``encode(into:sortedKeys:)`` writes.
    public var encodedLength: Int {
        isEmpty ? 0 : MsgpackWriter.mapHeaderSize(count) + entriesLength
    }

    /// The bytes the entries take, without the map header.
    private var entriesLength: Int {
        var length = 0
        for entry in entries {
            length += MsgpackWriter.stringSize(entry.key.utf8.count) + MsgpackWriter.stringSize(entry.stored.utf8Count)
        }
        return length
    }

    /// Writes a map header for `count` entries, `entries`, then what `more`
    /// writes: `length` bytes in all, in one bounds check and one copy per string.
    private static func writeMap(
        _ entries: [Entry], count: Int, length: Int, into buffer: inout ByteBuffer,
        then more: (inout RawWriter) -> Void = { _ in }
    ) {
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { output in
            var writer = RawWriter(output)
            writer.writeMsgpackMapHeader(count)
            for entry in entries {
                writer.writeMsgpackString(entry.key)
                entry.stored.write(into: &writer)
            }
            more(&writer)
            precondition(writer.offset == length, "metadata length miscounted")
            return length
        }
    }

    /// Writes the msgpack map; nothing at all when empty, as Go does.
    ///
    /// - Parameter sortedKeys: write keys in byte order (Go's `SetSortMapKeys(true)`),
    ///   for reproducible bytes; otherwise in insertion order.
    public func encode(into buffer: inout ByteBuffer, sortedKeys: Bool = false) {
        guard !isEmpty else { return }
        let ordered = sortedKeys ? entries.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) } : entries
        Self.writeMap(ordered, count: count, length: encodedLength, into: &buffer)
    }

    /// What `setTrace` with `trace`'s values and then `encoded()` give, for
    /// metadata holding none of the trace keys: the trace values written
    /// straight after the entries, with no entries made for them. Nil when the
    /// metadata holds a trace key (then `setTrace` must replace it). A source
    /// writes every frame's trace context this way.
    package func encoded(appending trace: MetadataView.TracePatch) -> ByteBuffer? {
        for entry in entries where MetadataView.Key(entry.key)?.isTraceKey == true { return nil }
        let total = count + trace.entryCount
        guard total > 0 else { return ByteBuffer() }
        var buffer = ByteBuffer()
        Self.writeMap(
            entries, count: total, length: MsgpackWriter.mapHeaderSize(total) + entriesLength + trace.encodedLength, into: &buffer
        ) { writer in
            trace.writeEntries(into: &writer)
        }
        return buffer
    }

    /// The msgpack bytes in a new buffer (empty for an empty map).
    public func encoded(sortedKeys: Bool = false) -> ByteBuffer {
        var buffer = ByteBuffer()
        encode(into: &buffer, sortedKeys: sortedKeys)
        return buffer
    }
}

enum MsgpackWriter {
    static func mapHeaderSize(_ count: Int) -> Int { count < 16 ? 1 : count <= 0xFFFF ? 3 : 5 }

    static func stringSize(_ length: Int) -> Int {
        length + (length < 32 ? 1 : length < 0x100 ? 2 : length < 0x1_0000 ? 3 : 5)
    }
}

extension MetadataView.TracePatch {
    /// How many entries `writeEntries` writes.
    var entryCount: Int { (traceparent == nil ? 0 : 1) + (yomo == nil ? 0 : 2) }

    /// The length of what `writeEntries` writes: each entry's key, value header and digits.
    var encodedLength: Int { (traceparent == nil ? 0 : 12 + 2 + 55) + (yomo == nil ? 0 : (14 + 2 + 32) + (13 + 1 + 16)) }

    /// The entries `forEach` gives, encoded in its order. Every length is
    /// fixed, so the keys with their headers are written as constant words,
    /// and the trace id's digits are made once for both formats.
    func writeEntries(into writer: inout RawWriter) {
        let traceID = traceparent.map { ($0.traceIDHigh, $0.traceIDLow) } ?? yomo.map { ($0.traceIDHigh, $0.traceIDLow) }
        guard let (high, low) = traceID else { return }
        let digits = (RawWriter.hexDigits(high), RawWriter.hexDigits(low))
        func writeTraceID(_ writer: inout RawWriter) {
            writer.writeHex(digits: digits.0)
            writer.writeHex(digits: digits.1)
        }
        // Both formats usually carry the same span id too.
        let spanDigits = RawWriter.hexDigits(traceparent?.spanID ?? yomo?.spanID ?? 0)
        if let fields = traceparent {
            // AB "traceparent", D9 37 (55 bytes follow), "00-" : 17 bytes.
            writer.writeLittleEndian(0x6170_6563_6172_74AB as UInt64)
            writer.writeLittleEndian(0x3030_37D9_746E_6572 as UInt64)
            writer.write(UInt8(ascii: "-"))
            writeTraceID(&writer)
            writer.write(UInt8(ascii: "-"))
            writer.writeHex(digits: spanDigits)
            writer.write(UInt8(ascii: "-"))
            writer.writeHex(byte: fields.flags)
        }
        if let yomo {
            // AD "yomo-trace-id", D9 20 (32 bytes follow): 16 bytes.
            writer.writeLittleEndian(0x7274_2D6F_6D6F_79AD as UInt64)
            writer.writeLittleEndian(0x20D9_6469_2D65_6361 as UInt64)
            if traceparent == nil || (yomo.traceIDHigh, yomo.traceIDLow) == (high, low) {
                writeTraceID(&writer)
            } else {
                writer.writeHex(yomo.traceIDHigh)
                writer.writeHex(yomo.traceIDLow)
            }
            // AC "yomo-span-id", B0 (16 bytes follow): 14 bytes.
            writer.writeLittleEndian(0x7073_2D6F_6D6F_79AC as UInt64)
            writer.writeLittleEndian(0x692D_6E61 as UInt32)
            writer.writeLittleEndian(0xB064 as UInt16)
            writer.writeHex(digits: traceparent == nil || traceparent?.spanID == yomo.spanID ? spanDigits : RawWriter.hexDigits(yomo.spanID))
        }
    }
}

/// Writes into memory sized beforehand; callers guarantee the room.
struct RawWriter {
    let output: UnsafeMutableRawBufferPointer
    var offset = 0

    init(_ output: UnsafeMutableRawBufferPointer) { self.output = output }

    mutating func write(_ byte: UInt8) {
        output[offset] = byte
        offset += 1
    }

    /// `value`'s bytes, lowest first: constant bytes packed into a word.
    mutating func writeLittleEndian<Integer: FixedWidthInteger>(_ value: Integer) {
        output.storeBytes(of: value.littleEndian, toByteOffset: offset, as: Integer.self)
        offset += MemoryLayout<Integer>.size
    }

    mutating func writeBigEndian<Integer: FixedWidthInteger>(_ value: Integer) {
        output.storeBytes(of: value.bigEndian, toByteOffset: offset, as: Integer.self)
        offset += MemoryLayout<Integer>.size
    }

    mutating func writeY3Length(_ length: Int) {
        var shift = (Y3.encodedSize(ofLength: length) - 1) * 7
        while shift > 0 {
            write(UInt8(truncatingIfNeeded: 0x80 | ((length >> shift) & 0x7F)))
            shift -= 7
        }
        write(UInt8(truncatingIfNeeded: length & 0x7F))
    }

    mutating func writeY3UInt32(_ value: UInt32, size: Int) {
        var shift = (size - 1) * 8
        while shift >= 0 {
            write(UInt8(truncatingIfNeeded: value >> UInt32(shift)))
            shift -= 8
        }
    }

    mutating func writeMsgpackMapHeader(_ count: Int) {
        if count < 16 {
            write(UInt8(0x80 | count))
        } else if count <= 0xFFFF {
            write(UInt8(0xDE))
            writeBigEndian(UInt16(count))
        } else {
            write(UInt8(0xDF))
            writeBigEndian(UInt32(count))
        }
    }

    mutating func writeMsgpackString(_ string: String) {
        writeMsgpackStringHeader(string.utf8.count)
        writeUTF8(string)
    }

    mutating func writeUTF8(_ string: String) {
        let length = string.utf8.count
        let copied: Void? = string.utf8.withContiguousStorageIfAvailable { utf8 in
            UnsafeMutableRawBufferPointer(rebasing: output[offset..<offset + length]).copyMemory(from: UnsafeRawBufferPointer(utf8))
        }
        if copied == nil {
            for (index, byte) in string.utf8.enumerated() { output[offset + index] = byte }
        }
        offset += length
    }

    mutating func writeMsgpackStringHeader(_ length: Int) {
        if length < 32 {
            write(UInt8(0xA0 | length))
        } else if length < 0x100 {
            write(0xD9)
            write(UInt8(length))
        } else if length < 0x1_0000 {
            write(0xDA)
            writeBigEndian(UInt16(length))
        } else {
            write(0xDB)
            writeBigEndian(UInt32(length))
        }
    }

    /// 16 lowercase hex digits, eight at a time.
    mutating func writeHex(_ value: UInt64) {
        writeHex(digits: Self.hexDigits(value))
    }

    /// `hexDigits(value)`, written: digits made once and written twice (an id
    /// both formats carry).
    mutating func writeHex(digits: (UInt64, UInt64)) {
        writeBigEndian(digits.0)
        writeBigEndian(digits.1)
    }

    /// The 16 lowercase hex digits of `value` as two words, the first digit in
    /// the first word's top byte.
    @inline(__always)
    static func hexDigits(_ value: UInt64) -> (UInt64, UInt64) {
        (hexCharacters(UInt32(truncatingIfNeeded: value >> 32)), hexCharacters(UInt32(truncatingIfNeeded: value)))
    }

    /// The eight lowercase hex digits of `value`, the first in the top byte.
    @inline(__always)
    static func hexCharacters(_ value: UInt32) -> UInt64 {
        // Spread the nibbles one per byte, the top nibble in the top byte.
        var spread = UInt64(value)
        spread = (spread | spread << 16) & 0x0000_FFFF_0000_FFFF
        spread = (spread | spread << 8) & 0x00FF_00FF_00FF_00FF
        spread = (spread | spread << 4) & 0x0F0F_0F0F_0F0F_0F0F
        // A nibble of 10 or more carries into bit 4 when 6 is added: those become letters.
        let letters = ((spread &+ 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101
        return spread &+ 0x3030_3030_3030_3030 &+ letters &* UInt64(UInt8(ascii: "a") - UInt8(ascii: "0") - 10)
    }

    mutating func writeHex(byte value: UInt8) {
        write(Self.hexDigit(value >> 4))
        write(Self.hexDigit(value & 0xF))
    }

    /// Computed rather than looked up: a global table costs a lazy-initialisation check per digit.
    @inline(__always)
    static func hexDigit(_ nibble: UInt8) -> UInt8 {
        nibble &+ (nibble < 10 ? UInt8(ascii: "0") : UInt8(ascii: "a") &- 10)
    }
}

struct MsgpackReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    mutating func readMapHeader() throws(WireError) -> Int {
        let marker = try readByte(what: "map header")
        switch marker {
        case 0x80...0x8F: return Int(marker & 0x0F)
        case 0xDE: return try readBigEndian(2, what: "map16 size")
        case 0xDF: return try readBigEndian(4, what: "map32 size")
        default:
            throw WireError(
                .invalidMetadata,
                "metadata must be a msgpack map of strings, found \(Self.describe(marker)) (0x\(Y3.hex(marker)))"
            )
        }
    }

    mutating func readString(what: @autoclosure () -> String) throws(WireError) -> String {
        let markerOffset = offset
        let marker = try readByte(what: what())
        let length: Int
        switch marker {
        case 0xA0...0xBF: length = Int(marker & 0x1F)
        case 0xD9: length = try readBigEndian(1, what: what())
        case 0xDA: length = try readBigEndian(2, what: what())
        case 0xDB: length = try readBigEndian(4, what: what())
        default:
            throw WireError(
                .invalidMetadata,
                "metadata \(what()) at offset \(markerOffset) is \(Self.describe(marker)) (0x\(Y3.hex(marker))), not a string"
            )
        }
        guard length <= bytes.count - offset else {
            throw WireError(
                .invalidMetadata,
                "metadata \(what()) claims \(length) bytes but only \(bytes.count - offset) remain"
            )
        }
        let string = try decodeString(
            UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + length]),
            field: "metadata \(what())"
        )
        offset += length
        return string
    }

    /// A value, kept as numbers when it is a trace id in its canonical form
    /// (see `StoredValue`), else as a string.
    /// The key at `offset` if it is one of `MetadataView.Key`, read past; nil
    /// (nothing read) for any other key, or for bytes that are no string.
    mutating func knownKey() -> MetadataView.Key? {
        guard let (length, header) = Self.stringHeader(in: bytes, at: offset), length <= bytes.count - offset - header,
              let key = MetadataView.Key(utf8: UnsafeRawBufferPointer(rebasing: bytes[offset + header..<offset + header + length]))
        else { return nil }
        offset += header + length
        return key
    }

    /// The value of `key`; `kind` is the key's trace kind, when it has one
    /// (only the trace keys' values can be held as numbers).
    mutating func readValue(forKey key: @autoclosure () -> String, kind: StoredValue.TraceKey?) throws(WireError) -> StoredValue {
        // Markers of canonical trace values are one or two bytes.
        if let kind, let (length, header) = Self.stringHeader(in: bytes, at: offset),
           header <= 2, length > 0, length <= bytes.count - offset - header,
           let stored = StoredValue(kind, UnsafeRawBufferPointer(rebasing: bytes[offset + header..<offset + header + length])) {
            offset += header + length
            return stored
        }
        return .text(try readString(what: "value of key \"\(key())\""))
    }

    /// The length and header size of the msgpack string starting at `offset`;
    /// nil when no string starts there or its header is cut short. Whether the
    /// content fits, and what to say when nothing does, are the caller's.
    static func stringHeader(in bytes: UnsafeRawBufferPointer, at offset: Int) -> (length: Int, header: Int)? {
        guard offset < bytes.count, let header = stringHeaderSize(marker: bytes[offset]) else { return nil }
        if header == 1 { return (Int(bytes[offset] & 0x1F), 1) }
        guard header <= bytes.count - offset else { return nil }
        var length = 0
        for byte in bytes[offset + 1..<offset + header] { length = length << 8 | Int(byte) }
        return (length, header)
    }

    /// The size of the header a msgpack string with this first byte has, length
    /// included; nil when no string starts with it.
    static func stringHeaderSize(marker: UInt8) -> Int? {
        switch marker {
        case 0xA0...0xBF: 1
        case 0xD9: 2
        case 0xDA: 3
        case 0xDB: 5
        default: nil
        }
    }

    private mutating func readByte(what: @autoclosure () -> String) throws(WireError) -> UInt8 {
        guard offset < bytes.count else {
            throw WireError(.invalidMetadata, "metadata ends before its \(what())")
        }
        defer { offset += 1 }
        return bytes[offset]
    }

    private mutating func readBigEndian(_ size: Int, what: @autoclosure () -> String) throws(WireError) -> Int {
        guard size <= bytes.count - offset else {
            throw WireError(.invalidMetadata, "metadata ends inside the length of its \(what())")
        }
        var value = 0
        for byte in bytes[offset..<offset + size] {
            value = value << 8 | Int(byte)
        }
        offset += size
        return value
    }

    /// Names a msgpack type by its first byte, for errors.
    static func describe(_ marker: UInt8) -> String {
        switch marker {
        case 0x00...0x7F, 0xE0...0xFF, 0xCC...0xD3: "an integer"
        case 0x80...0x8F, 0xDE, 0xDF: "a map"
        case 0x90...0x9F, 0xDC, 0xDD: "an array"
        case 0xA0...0xBF, 0xD9...0xDB: "a string"
        case 0xC0: "nil"
        case 0xC2, 0xC3: "a boolean"
        case 0xC4...0xC6: "binary data"
        case 0xCA, 0xCB: "a float"
        case 0xC7...0xC9, 0xD4...0xD8: "an extension"
        default: "an unused msgpack byte"
        }
    }
}

// MARK: - Trace ids kept as numbers

/// The W3C `traceparent` of version 00 as numbers: `00-<trace id>-<span id>-<flags>`.
@usableFromInline
package struct TraceparentFields: Hashable, Sendable {
    package var traceIDHigh: UInt64
    package var traceIDLow: UInt64
    package var spanID: UInt64
    package var flags: UInt8

    package init(traceIDHigh: UInt64, traceIDLow: UInt64, spanID: UInt64, flags: UInt8) {
        self.traceIDHigh = traceIDHigh
        self.traceIDLow = traceIDLow
        self.spanID = spanID
        self.flags = flags
    }
}

extension TraceparentFields {
    /// The numbers of a canonical `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`,
    /// lowercase); nil for any other form.
    init?(canonical bytes: UnsafeRawBufferPointer) {
        guard bytes.count == 55, bytes[0] == UInt8(ascii: "0"), bytes[1] == UInt8(ascii: "0"),
              bytes[2] == UInt8(ascii: "-"), bytes[35] == UInt8(ascii: "-"), bytes[52] == UInt8(ascii: "-"),
              let high = StoredValue.hex64(bytes, at: 3), let low = StoredValue.hex64(bytes, at: 19),
              let span = StoredValue.hex64(bytes, at: 36),
              let flagsHigh = StoredValue.lowercaseHexValue(bytes[53]), let flagsLow = StoredValue.lowercaseHexValue(bytes[54])
        else { return nil }
        self.init(traceIDHigh: high, traceIDLow: low, spanID: span, flags: flagsHigh << 4 | flagsLow)
    }
}

/// A metadata value. The trace keys' values are kept as numbers when they are in
/// the one form that formats back to the same bytes (lowercase hex, version 00),
/// so carrying and replacing trace context on every frame makes no strings;
/// every other value, and any other form of these, is text. Both read as the
/// same string.
@usableFromInline
enum StoredValue: Sendable {
    case text(String)
    /// `yomo-trace-id`: 32 lowercase hex digits.
    case traceID(high: UInt64, low: UInt64)
    /// `yomo-span-id`: 16 lowercase hex digits.
    case spanID(UInt64)
    /// `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`, lowercase.
    case traceparent(TraceparentFields)

    /// The keys whose values have a numeric form (`MetadataView.Key.traceKey`).
    enum TraceKey {
        case traceID, spanID, traceparent
    }

    /// The numbers in `bytes` if they are the canonical form of `kind`'s value.
    init?(_ kind: TraceKey, _ bytes: UnsafeRawBufferPointer) {
        switch kind {
        case .traceID:
            guard bytes.count == 32, let high = Self.hex64(bytes, at: 0), let low = Self.hex64(bytes, at: 16) else { return nil }
            self = .traceID(high: high, low: low)
        case .spanID:
            guard bytes.count == 16, let value = Self.hex64(bytes, at: 0) else { return nil }
            self = .spanID(value)
        case .traceparent:
            guard let fields = TraceparentFields(canonical: bytes) else { return nil }
            self = .traceparent(fields)
        }
    }

    @inline(__always)
    static func lowercaseHexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte &- UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte &- UInt8(ascii: "a") &+ 10
        default: nil
        }
    }

    /// 16 lowercase hex digits at `start`, eight at a time (this runs for every
    /// id of every frame).
    static func hex64(_ bytes: UnsafeRawBufferPointer, at start: Int) -> UInt64? {
        guard let high = hex32(bytes.loadUnaligned(fromByteOffset: start, as: UInt64.self).bigEndian),
              let low = hex32(bytes.loadUnaligned(fromByteOffset: start + 8, as: UInt64.self).bigEndian)
        else { return nil }
        return UInt64(high) << 32 | UInt64(low)
    }

    /// Eight ASCII characters, the first in the top byte, read as lowercase hex.
    @inline(__always)
    static func hex32(_ characters: UInt64) -> UInt32? {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let high = ones &* 0x80
        guard characters & high == 0 else { return nil }
        // Per byte, with no carries between bytes (all are below 0x80): the top
        // bit of `byte + 0x80 - low` is set when byte >= low.
        func atLeast(_ low: UInt8) -> UInt64 { (characters &+ ones &* UInt64(0x80 - low)) & high }
        let digit = atLeast(UInt8(ascii: "0")) & ~atLeast(UInt8(ascii: "9") + 1)
        let letter = atLeast(UInt8(ascii: "a")) & ~atLeast(UInt8(ascii: "f") + 1)
        guard digit | letter == high else { return nil }
        // '0'...'9' → 0...9; 'a'...'f' (bit 6 set) → 10...15; then pack the nibbles.
        var value = (characters & (ones &* 0x0F)) &+ ((characters >> 6) & ones) &* 9
        value = (value | value >> 4) & 0x00FF_00FF_00FF_00FF
        value = (value | value >> 8) & 0x0000_FFFF_0000_FFFF
        value = (value | value >> 16) & 0x0000_0000_FFFF_FFFF
        return UInt32(truncatingIfNeeded: value)
    }

    var utf8Count: Int {
        switch self {
        case .text(let string): string.utf8.count
        case .traceID: 32
        case .spanID: 16
        case .traceparent: 55
        }
    }

    @usableFromInline
    var string: String {
        switch self {
        case .text(let string): return string
        default:
            return String(unsafeUninitializedCapacity: utf8Count) { buffer in
                var writer = RawWriter(UnsafeMutableRawBufferPointer(buffer))
                writeDigits(into: &writer)
                return writer.offset
            }
        }
    }

    func write(into writer: inout RawWriter) {
        guard case .text(let string) = self else {
            writer.writeMsgpackStringHeader(utf8Count)
            writeDigits(into: &writer)
            return
        }
        writer.writeMsgpackString(string)
    }

    /// The value's bytes without the msgpack header.
    func writeContent(into writer: inout RawWriter) {
        guard case .text(let string) = self else {
            writeDigits(into: &writer)
            return
        }
        writer.writeUTF8(string)
    }

    private func writeDigits(into writer: inout RawWriter) {
        switch self {
        case .text: preconditionFailure("text has no digits")
        case .traceID(let high, let low):
            writer.writeHex(high)
            writer.writeHex(low)
        case .spanID(let value):
            writer.writeHex(value)
        case .traceparent(let fields):
            writer.write(UInt8(ascii: "0"))
            writer.write(UInt8(ascii: "0"))
            writer.write(UInt8(ascii: "-"))
            writer.writeHex(fields.traceIDHigh)
            writer.writeHex(fields.traceIDLow)
            writer.write(UInt8(ascii: "-"))
            writer.writeHex(fields.spanID)
            writer.write(UInt8(ascii: "-"))
            writer.writeHex(byte: fields.flags)
        }
    }
}

extension StoredValue: Equatable {
    /// Equal when they read as the same string.
    @usableFromInline
    static func == (lhs: StoredValue, rhs: StoredValue) -> Bool {
        switch (lhs, rhs) {
        case (.text(let left), .text(let right)): left == right
        case (.traceID(let leftHigh, let leftLow), .traceID(let rightHigh, let rightLow)): leftHigh == rightHigh && leftLow == rightLow
        case (.spanID(let left), .spanID(let right)): left == right
        case (.traceparent(let left), .traceparent(let right)): left == right
        default: lhs.string == rhs.string
        }
    }
}

extension Metadata {
    /// The W3C trace-context key (not a YoMo key, but carried by both SDKs' frames).
    package static let traceparentKey = "traceparent"

    /// How a trace key's value is held: absent, as numbers, or as other text.
    package enum TraceValue<Fields> {
        case absent
        case fields(Fields)
        case text
    }

    private func traceValue<Fields>(_ key: String, _ fields: (StoredValue) -> Fields?) -> TraceValue<Fields> {
        guard let index = index(of: key) else { return .absent }
        return fields(entries[index].stored).map { .fields($0) } ?? .text
    }

    /// `traceparent` without making a string.
    package var traceparentValue: TraceValue<TraceparentFields> {
        traceValue(Self.traceparentKey) { if case .traceparent(let fields) = $0 { fields } else { nil } }
    }

    /// `yomo-trace-id` without making a string.
    package var yomoTraceIDValue: TraceValue<(high: UInt64, low: UInt64)> {
        traceValue(ReservedKey.traceID) { if case .traceID(let high, let low) = $0 { (high, low) } else { nil } }
    }

    /// `yomo-span-id` without making a string.
    package var yomoSpanIDValue: TraceValue<UInt64> {
        traceValue(ReservedKey.spanID) { if case .spanID(let value) = $0 { value } else { nil } }
    }

    /// Sets `traceparent`, then `tracestate` (when given), then `yomo-trace-id`
    /// and `yomo-span-id` (the order `TraceContextPropagator.inject` writes
    /// them in), finding the keys present in one pass over the entries rather
    /// than one per key.
    package mutating func setTrace(
        traceparent: TraceparentFields? = nil, tracestate: String? = nil,
        yomo: (traceIDHigh: UInt64, traceIDLow: UInt64, spanID: UInt64)? = nil
    ) {
        var traceparentIndex: Int?, traceIDIndex: Int?, spanIDIndex: Int?
        for index in entries.indices {
            switch MetadataView.Key(entries[index].key) {
            case .traceparent?: traceparentIndex = index
            case .traceID?: traceIDIndex = index
            case .spanID?: spanIDIndex = index
            default: break
            }
        }
        // Appending moves no entry, so the indices found stay right.
        func put(_ stored: StoredValue, _ key: String, at index: Int?) {
            if let index { entries[index].stored = stored } else { entries.append(Entry(key: key, stored: stored)) }
        }
        if let traceparent { put(.traceparent(traceparent), Self.traceparentKey, at: traceparentIndex) }
        if let tracestate, !tracestate.isEmpty { self[MetadataView.Key.tracestate.string] = tracestate }
        if let yomo {
            put(.traceID(high: yomo.traceIDHigh, low: yomo.traceIDLow), ReservedKey.traceID, at: traceIDIndex)
            put(.spanID(yomo.spanID), ReservedKey.spanID, at: spanIDIndex)
        }
    }
}
