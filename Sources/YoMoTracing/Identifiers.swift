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

private let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

@inline(__always) func writeHex(_ value: UInt64, into buffer: UnsafeMutableBufferPointer<UInt8>, at offset: Int) {
    var value = value
    var index = offset + 15
    while index >= offset {
        buffer[index] = hexDigits[Int(value & 0xF)]
        value >>= 4
        index -= 1
    }
}

/// Parses exactly 16 hex digits. `lowercaseOnly` enforces W3C trace-context rules.
@inline(__always) func parseHex64<S: Collection>(_ digits: S, lowercaseOnly: Bool) -> UInt64? where S.Element == UInt8 {
    guard digits.count == 16 else { return nil }
    var value: UInt64 = 0
    for byte in digits {
        guard let nibble = hexValue(byte) else { return nil }
        if lowercaseOnly, byte >= UInt8(ascii: "A"), byte <= UInt8(ascii: "F") { return nil }
        value = value << 4 | UInt64(nibble)
    }
    return value
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
