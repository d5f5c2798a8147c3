import Synchronization

/// Ids come from a SplitMix64 sequence: one atomic add plus a few multiplies per
/// id, no syscall and no lock on the span-start path. The seed comes from the
/// system generator, so ids differ across processes.
private let idSequence = Atomic<UInt64>(UInt64.random(in: .min ... .max))

@inline(__always) func nextRandomUInt64() -> UInt64 {
    let state = idSequence.wrappingAdd(0x9E37_79B9_7F4A_7C15, ordering: .relaxed).newValue
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// Writes 16 lowercase hex digits. Arithmetic instead of a digit table: a
/// global array costs a lazy-initialisation check and bounds checks per call.
@inline(__always) func writeHex(_ value: UInt64, into buffer: UnsafeMutableBufferPointer<UInt8>, at offset: Int) {
    var value = value
    var index = offset + 15
    while index >= offset {
        let nibble = UInt8(truncatingIfNeeded: value & 0xF)
        buffer[index] = nibble < 10 ? nibble &+ UInt8(ascii: "0") : nibble &+ (UInt8(ascii: "a") - 10)
        value >>= 4
        index -= 1
    }
}

/// Parses exactly 16 hex digits. `lowercaseOnly` enforces W3C trace-context rules.
@inline(__always) func parseHex64<S: Collection>(_ digits: S, lowercaseOnly: Bool) -> UInt64? where S.Element == UInt8 {
    guard digits.count == 16 else { return nil }
    if let parsed = digits.withContiguousStorageIfAvailable({ parseHex64(contiguous: $0, lowercaseOnly: lowercaseOnly) }) {
        return parsed
    }
    return Array(digits).withUnsafeBufferPointer { parseHex64(contiguous: $0, lowercaseOnly: lowercaseOnly) }
}

/// 16 hex digits, 8 at a time in a word (SWAR): trace-context parsing runs at
/// every hop of every frame, and a byte-at-a-time loop cost ~4 ns per digit.
@inline(__always) func parseHex64(contiguous digits: UnsafeBufferPointer<UInt8>, lowercaseOnly: Bool) -> UInt64? {
    guard digits.count == 16, let base = digits.baseAddress else { return nil }
    let raw = UnsafeRawPointer(base)
    guard let high = parseHex32(UInt64(littleEndian: raw.loadUnaligned(as: UInt64.self)), lowercaseOnly: lowercaseOnly),
          let low = parseHex32(UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)), lowercaseOnly: lowercaseOnly)
    else { return nil }
    return UInt64(high) << 32 | UInt64(low)
}

/// Eight ASCII hex digits, the first in the lowest byte, to their value.
@inline(__always) func parseHex32(_ word: UInt64, lowercaseOnly: Bool) -> UInt32? {
    let ones: UInt64 = 0x0101_0101_0101_0101
    let highBits: UInt64 = 0x8080_8080_8080_8080
    guard word & highBits == 0 else { return nil }
    // With every byte below 0x80, adding (0x80 - c) sets a byte's top bit exactly
    // when that byte is >= c, and no carry crosses into the next byte.
    @inline(__always) func atLeast(_ value: UInt64, _ c: UInt64) -> UInt64 { (value &+ ones &* (0x80 - c)) & highBits }
    let isDigit = atLeast(word, 0x30) & ~atLeast(word, 0x3A)
    let letters = lowercaseOnly ? word : word | 0x2020_2020_2020_2020  // folds A-F onto a-f
    let isLetter = atLeast(letters, 0x61) & ~atLeast(letters, 0x67)
    guard isDigit | isLetter == highBits else { return nil }
    // Low nibble, plus 9 for letters ('a' = 0x61 -> 1 + 9 = 10).
    var value = (word & 0x0F0F_0F0F_0F0F_0F0F) &+ (isLetter >> 7) &* 9
    // Gather the nibbles, first digit most significant.
    value = value.byteSwapped
    value = (value | value >> 4) & 0x00FF_00FF_00FF_00FF
    value = (value | value >> 8) & 0x0000_FFFF_0000_FFFF
    value = (value | value >> 16) & 0x0000_0000_FFFF_FFFF
    return UInt32(truncatingIfNeeded: value)
}

/// A 16-byte W3C trace id. Never all-zero when generated; prints as 32 lowercase hex digits.
public struct TraceID: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Bytes 0-7 (big-endian).
    public let high: UInt64
    /// Bytes 8-15 (big-endian); the trace-id ratio sampler reads these.
    public let low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// The invalid all-zero id.
    public static let zero = TraceID(high: 0, low: 0)

    /// A random, non-zero id.
    public static func random() -> TraceID {
        while true {
            let id = TraceID(high: nextRandomUInt64(), low: nextRandomUInt64())
            if id.isValid { return id }
        }
    }

    public var isValid: Bool { high != 0 || low != 0 }

    /// Parses 32 hex digits (uppercase accepted unless `lowercaseOnly`); nil if malformed.
    public init?(hexString: some StringProtocol, lowercaseOnly: Bool = false) {
        let utf8 = hexString.utf8
        guard utf8.count == 32 else { return nil }
        let middle = utf8.index(utf8.startIndex, offsetBy: 16)
        guard let high = parseHex64(utf8[utf8.startIndex..<middle], lowercaseOnly: lowercaseOnly),
              let low = parseHex64(utf8[middle...], lowercaseOnly: lowercaseOnly) else { return nil }
        self.init(high: high, low: low)
    }

    /// The 16 bytes, big-endian, as OTLP and W3C want them.
    public var bytes: [UInt8] {
        var result = [UInt8](repeating: 0, count: 16)
        for index in 0..<8 {
            result[index] = UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64(index)))
            result[index + 8] = UInt8(truncatingIfNeeded: low >> (56 - 8 * UInt64(index)))
        }
        return result
    }

    func withBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        var bigEndian = (high.bigEndian, low.bigEndian)
        return try withUnsafeBytes(of: &bigEndian) { try body($0) }
    }

    /// 32 lowercase hex digits.
    public var description: String {
        String(unsafeUninitializedCapacity: 32) { buffer in
            writeHex(high, into: buffer, at: 0)
            writeHex(low, into: buffer, at: 16)
            return 32
        }
    }

    public static func < (lhs: TraceID, rhs: TraceID) -> Bool {
        (lhs.high, lhs.low) < (rhs.high, rhs.low)
    }
}

/// An 8-byte span id. Never all-zero when generated; prints as 16 lowercase hex digits.
public struct SpanID: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let rawValue: UInt64

    public init(rawValue: UInt64) {
        self.rawValue = rawValue
    }

    public static let zero = SpanID(rawValue: 0)

    public static func random() -> SpanID {
        while true {
            let value = nextRandomUInt64()
            if value != 0 { return SpanID(rawValue: value) }
        }
    }

    public var isValid: Bool { rawValue != 0 }

    /// Parses 16 hex digits (uppercase accepted unless `lowercaseOnly`); nil if malformed.
    public init?(hexString: some StringProtocol, lowercaseOnly: Bool = false) {
        guard let value = parseHex64(hexString.utf8, lowercaseOnly: lowercaseOnly) else { return nil }
        self.init(rawValue: value)
    }

    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: rawValue >> (56 - 8 * UInt64($0))) }
    }

    func withBytes<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        var bigEndian = rawValue.bigEndian
        return try withUnsafeBytes(of: &bigEndian) { try body($0) }
    }

    /// 16 lowercase hex digits.
    public var description: String {
        String(unsafeUninitializedCapacity: 16) { buffer in
            writeHex(rawValue, into: buffer, at: 0)
            return 16
        }
    }

    public static func < (lhs: SpanID, rhs: SpanID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// W3C trace flags (one byte; only `sampled` is defined).
public struct TraceFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let sampled = TraceFlags(rawValue: 0x01)
}
