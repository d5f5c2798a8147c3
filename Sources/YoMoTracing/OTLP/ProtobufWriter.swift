#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Protobuf wire format written straight into one growable buffer: the fast
/// path for OTLP request bodies (`OTLPTraceWriter`), which builds no message
/// tree. Its output must equal protobuf-c's packing of the same message, so it
/// follows protobuf-c 1.4's rules (tests compare the two byte for byte):
/// fields in field-number order; proto3 scalars and strings left out when zero
/// or empty, except inside a oneof; strings cut at their first NUL (protobuf-c
/// packs C strings).
///
/// A message's length goes before its body but is known only after it, so
/// `beginMessage` reserves a guess of its varint size and `endMessage` moves
/// the body when the guess was wrong (rare: guesses fit the usual sizes).
///
/// Not copyable: it owns its buffer, which it keeps across `reset()`s.
package struct ProtobufWriter: ~Copyable {
    private var base: UnsafeMutablePointer<UInt8>
    private var capacity: Int
    package private(set) var count = 0

    package init(capacity: Int = 64 * 1024) {
        self.capacity = max(capacity, 64)
        base = .allocate(capacity: self.capacity)
    }

    deinit { base.deallocate() }

    /// Forgets what was written; keeps the buffer.
    package mutating func reset() { count = 0 }

    /// The bytes written so far.
    package var bytes: [UInt8] {
        [UInt8](UnsafeBufferPointer(start: base, count: count))
    }

    /// The bytes written so far, lent to `body` without a copy (an export body
    /// is tens of kilobytes); valid only inside it.
    package func withBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    @inline(__always) private mutating func reserve(_ extra: Int) {
        if _slowPath(count + extra > capacity) { grow(to: count + extra) }
    }

    @inline(never) private mutating func grow(to needed: Int) {
        let newCapacity = max(capacity * 2, needed)
        let newBase = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
        newBase.update(from: base, count: count)
        base.deallocate()
        base = newBase
        capacity = newCapacity
    }

    @inline(__always) private mutating func putVarint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            base[count] = UInt8(truncatingIfNeeded: value) | 0x80
            count += 1
            value >>= 7
        }
        base[count] = UInt8(truncatingIfNeeded: value)
        count += 1
    }

    @inline(__always) static func varintSize(_ value: UInt64) -> Int {
        // 1 byte per started group of 7 bits; 0 takes one byte.
        (64 - (value | 1).leadingZeroBitCount + 6) / 7
    }

    @inline(__always) private mutating func putTag(_ field: UInt32, _ wireType: UInt32) {
        putVarint(UInt64(field << 3 | wireType))
    }

    @inline(__always) package mutating func varint(_ field: UInt32, _ value: UInt64) {
        reserve(15)
        putTag(field, 0)
        putVarint(value)
    }

    /// int32 and enum fields: negative values take 10 bytes (sign-extended), as protobuf-c packs them.
    @inline(__always) package mutating func int32(_ field: UInt32, _ value: Int32) {
        varint(field, UInt64(bitPattern: Int64(value)))
    }

    @inline(__always) package mutating func int64(_ field: UInt32, _ value: Int64) {
        varint(field, UInt64(bitPattern: value))
    }

    @inline(__always) package mutating func bool(_ field: UInt32, _ value: Bool) {
        varint(field, value ? 1 : 0)
    }

    @inline(__always) package mutating func fixed64(_ field: UInt32, _ value: UInt64) {
        reserve(13)
        putTag(field, 1)
        UnsafeMutableRawPointer(base + count).storeBytes(of: value.littleEndian, as: UInt64.self)
        count += 8
    }

    @inline(__always) package mutating func fixed32(_ field: UInt32, _ value: UInt32) {
        reserve(9)
        putTag(field, 5)
        UnsafeMutableRawPointer(base + count).storeBytes(of: value.littleEndian, as: UInt32.self)
        count += 4
    }

    @inline(__always) package mutating func double(_ field: UInt32, _ value: Double) {
        fixed64(field, value.bitPattern)
    }

    package mutating func bytes(_ field: UInt32, _ value: UnsafeRawBufferPointer) {
        reserve(15 + value.count)
        put(field, value)
    }

    /// - Parameter always: true for a oneof member, which protobuf-c sends even
    ///   when empty; other string fields are left out when empty.
    package mutating func string(_ field: UInt32, _ value: String, always: Bool = false) {
        if value.isEmpty && !always { return }
        // Native strings (all of them on Linux) lend their bytes without the
        // copy `withUTF8` needs (it is mutating); a bridged one is copied.
        let lent: Void? = value.utf8.withContiguousStorageIfAvailable { utf8 in
            stringBytes(field, UnsafeRawBufferPointer(utf8), always: always)
        }
        if lent == nil {
            var copy = value
            copy.withUTF8 { stringBytes(field, UnsafeRawBufferPointer($0), always: always) }
        }
    }

    /// The bytes of a string up to its first NUL (protobuf-c packs C strings).
    private mutating func stringBytes(_ field: UInt32, _ utf8: UnsafeRawBufferPointer, always: Bool) {
        // Short ones (span names): word copies, their NUL check included.
        if field < 16, Self.isShort(utf8.count) {
            reserve(2 + 16)
            if Self.putShort(field, utf8, at: UnsafeMutableRawPointer(base + count)) {
                count &+= 2 &+ utf8.count
                return
            }
        }
        let length = Self.cString(utf8)
        guard length > 0 || always else { return }
        bytes(field, UnsafeRawBufferPointer(rebasing: utf8[0..<length]))
    }

    /// A 16-byte trace id (`high` first), as `bytes` of its big-endian form.
    @inline(__always) package mutating func id(_ field: UInt32, high: UInt64, low: UInt64) {
        reserve(7 + 16)
        putTag(field, 2)
        putVarint(16)
        UnsafeMutableRawPointer(base + count).storeBytes(of: high.bigEndian, as: UInt64.self)
        UnsafeMutableRawPointer(base + count + 8).storeBytes(of: low.bigEndian, as: UInt64.self)
        count += 16
    }

    /// An 8-byte span id, as `bytes` of its big-endian form.
    @inline(__always) package mutating func id(_ field: UInt32, _ value: UInt64) {
        reserve(7 + 8)
        putTag(field, 2)
        putVarint(8)
        UnsafeMutableRawPointer(base + count).storeBytes(of: value.bigEndian, as: UInt64.self)
        count += 8
    }

    /// A KeyValue (key = 1, value = 2: an AnyValue) as repeated `field`, its
    /// value an int_value (3), a oneof member (sent even when zero). The
    /// lengths are known up front, so nothing is reserved or moved as with
    /// `beginMessage`: what `beginMessage`/`string`/`int64`/`endMessage`
    /// write, for literal keys.
    @inline(__always) package mutating func keyValue(_ field: UInt32, key: UnsafeRawBufferPointer, int: Int64) {
        // The data path's attributes (keys of up to 16 bytes): a few word
        // stores, with no NUL search or copy call.
        if _fastPath(field < 16 && Self.isShort(key.count)), shortKeyValue(field, key: key, int: int, string: nil) { return }
        anyKeyValue(field, key: key, int: int, string: nil)
    }

    /// `keyValue(_:key:int:)` with a string_value (1), sent even when empty.
    @inline(__always) package mutating func keyValue(_ field: UInt32, key: UnsafeRawBufferPointer, string: UnsafeRawBufferPointer) {
        if _fastPath(field < 16 && Self.isShort(key.count) && string.count <= 16),
           shortKeyValue(field, key: key, int: 0, string: string) {
            return
        }
        anyKeyValue(field, key: key, int: 0, string: string)
    }

    /// `keyValue` for any lengths, and strings cut at a NUL.
    @inline(never) private mutating func anyKeyValue(_ field: UInt32, key: UnsafeRawBufferPointer, int: Int64, string: UnsafeRawBufferPointer?) {
        let keyLength = Self.cString(key)
        let stringLength = string.map(Self.cString) ?? 0
        let anyLength: Int
        if string != nil {
            anyLength = 1 + Self.varintSize(UInt64(stringLength)) + stringLength
        } else {
            anyLength = 1 + Self.varintSize(UInt64(bitPattern: int))
        }
        let keyValueLength = (keyLength > 0 ? 1 + Self.varintSize(UInt64(keyLength)) + keyLength : 0)
            + 1 + Self.varintSize(UInt64(anyLength)) + anyLength
        reserve(5 + 5 + keyValueLength)
        putTag(field, 2)
        putVarint(UInt64(keyValueLength))
        if keyLength > 0 { put(1, UnsafeRawBufferPointer(rebasing: key[0..<keyLength])) }
        putTag(2, 2)
        putVarint(UInt64(anyLength))
        if let string {
            put(1, UnsafeRawBufferPointer(rebasing: string[0..<stringLength]))
        } else {
            putTag(3, 0)
            putVarint(UInt64(bitPattern: int))
        }
    }

    /// `keyValue` for `field` < 16 and a key and string of at most 16 bytes
    /// (the key not empty); false, with `count` unchanged, when either holds
    /// a NUL (then `anyKeyValue` cuts it as protobuf-c does).
    @inline(__always) private mutating func shortKeyValue(
        _ field: UInt32, key: UnsafeRawBufferPointer, int: Int64, string: UnsafeRawBufferPointer?
    ) -> Bool {
        let keyLength = key.count
        let anyLength = if let string { 2 &+ string.count } else { 1 &+ Self.varintSize(UInt64(bitPattern: int)) }
        // At most 2 + 16 + 2 + 18: a one-byte length.
        let keyValueLength = 2 &+ keyLength &+ 2 &+ anyLength
        reserve(2 + keyValueLength)
        let start = UnsafeMutableRawPointer(base + count)
        guard Self.putShort(1, key, at: start + 2) else { return false }  // key = 1
        start.storeBytes(of: UInt8(truncatingIfNeeded: field << 3 | 2), as: UInt8.self)
        start.storeBytes(of: UInt8(truncatingIfNeeded: keyValueLength), toByteOffset: 1, as: UInt8.self)
        var at = 4 &+ keyLength
        start.storeBytes(of: 0x12, toByteOffset: at, as: UInt8.self)  // value = 2
        start.storeBytes(of: UInt8(truncatingIfNeeded: anyLength), toByteOffset: at &+ 1, as: UInt8.self)
        at &+= 2
        if let string {
            guard Self.putShort(1, string, at: start + at) else { return false }  // string_value = 1
            count &+= at &+ 2 &+ string.count
        } else {
            start.storeBytes(of: 0x18, toByteOffset: at, as: UInt8.self)  // int_value = 3
            count &+= at &+ 1
            putVarint(UInt64(bitPattern: int))
        }
        return true
    }

    /// 1 to 16 (bytes).
    @inline(__always) private static func isShort(_ count: Int) -> Bool { UInt(bitPattern: count &- 1) < 16 }

    /// A length-delimited `field` (< 16) of up to 16 bytes at `destination`, in
    /// room already reserved: tag, one-byte length, bytes. False if the bytes
    /// hold a NUL (what was written is then left, uncounted).
    @inline(__always) private static func putShort(_ field: UInt32, _ bytes: UnsafeRawBufferPointer, at destination: UnsafeMutableRawPointer) -> Bool {
        guard copyShort(bytes, to: destination + 2) else { return false }
        destination.storeBytes(of: UInt8(truncatingIfNeeded: field << 3 | 2), as: UInt8.self)
        destination.storeBytes(of: UInt8(truncatingIfNeeded: bytes.count), toByteOffset: 1, as: UInt8.self)
        return true
    }

    /// Copies up to 16 bytes with (overlapping) word loads and stores into room
    /// already reserved; false if they hold a NUL (what was copied is then left).
    @inline(__always) private static func copyShort(_ source: UnsafeRawBufferPointer, to destination: UnsafeMutableRawPointer) -> Bool {
        let length = source.count
        guard let from = source.baseAddress else { return true }
        // Per byte, the top bit set where the byte is zero (exact for "any"),
        // on the bytes read.
        func zeroBytes(_ word: UInt64) -> UInt64 { (word &- 0x0101_0101_0101_0101) & ~word & 0x8080_8080_8080_8080 }
        if length >= 8 {
            let first = from.loadUnaligned(as: UInt64.self), last = from.loadUnaligned(fromByteOffset: length &- 8, as: UInt64.self)
            destination.storeBytes(of: first, as: UInt64.self)
            destination.storeBytes(of: last, toByteOffset: length &- 8, as: UInt64.self)
            return zeroBytes(first) | zeroBytes(last) == 0
        }
        var zero = false
        for index in 0..<length {
            let byte = from.load(fromByteOffset: index, as: UInt8.self)
            destination.storeBytes(of: byte, toByteOffset: index, as: UInt8.self)
            zero = zero || byte == 0
        }
        return !zero
    }

    /// How many bytes of `utf8` come before its first NUL (protobuf-c packs C strings).
    private static func cString(_ utf8: UnsafeRawBufferPointer) -> Int {
        guard let start = utf8.baseAddress, let nul = memchr(start, 0, utf8.count) else { return utf8.count }
        return start.distance(to: UnsafeRawPointer(nul))
    }

    /// A length-delimited `field` into room already reserved.
    @inline(__always) private mutating func put(_ field: UInt32, _ value: UnsafeRawBufferPointer) {
        putTag(field, 2)
        putVarint(UInt64(value.count))
        if let source = value.baseAddress {
            UnsafeMutableRawPointer(base + count).copyMemory(from: source, byteCount: value.count)
        }
        count += value.count
    }

    /// Starts a length-delimited sub-message; pass the result to `endMessage`.
    /// - Parameter lengthGuess: bytes reserved for the length varint (1 up to 127 bytes of body, 2 up to 16383, 3 up to 2 MiB).
    @inline(__always) package mutating func beginMessage(_ field: UInt32, lengthGuess: Int = 1) -> MessageMark {
        reserve(5 + lengthGuess)
        putTag(field, 2)
        let mark = MessageMark(lengthAt: count, bodyAt: count + lengthGuess)
        count += lengthGuess
        return mark
    }

    package mutating func endMessage(_ mark: MessageMark) {
        let length = count - mark.bodyAt
        let size = Self.varintSize(UInt64(length))
        let reserved = mark.bodyAt - mark.lengthAt
        if _slowPath(size != reserved) {
            if size > reserved { reserve(size - reserved) }
            memmove(base + mark.lengthAt + size, base + mark.bodyAt, length)
            count += size - reserved
        }
        let end = count
        count = mark.lengthAt
        putVarint(UInt64(length))
        count = end
    }

    package struct MessageMark {
        fileprivate let lengthAt: Int
        fileprivate let bodyAt: Int
    }
}
