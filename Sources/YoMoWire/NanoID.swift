#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Nanoid-style random identifiers, as YoMo uses for client ids and tids.
public enum NanoID {
    /// The URL-safe alphabet of Go's gonanoid, 64 symbols so each takes 6 random bits.
    public static let alphabet = Array("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)

    /// The length of a YoMo client id's random part and of a tid.
    public static let defaultLength = 21

    /// A new random id of `length` symbols (126 random bits at the default length).
    ///
    /// The bits come from the system's secure generator through a shared
    /// buffer refilled with one `getrandom` call per 4 KiB: a source makes a tid
    /// for every frame it writes, and `SystemRandomNumberGenerator` costs a
    /// system call per 8 bytes (three per id).
    public static func generate(length: Int = defaultLength) -> String {
        var generator = PooledSystemRandom()
        return generate(length: length, using: &generator)
    }

    public static func generate(length: Int = defaultLength, using generator: inout some RandomNumberGenerator) -> String {
        precondition(length >= 0, "an id cannot have a negative length")
        return String(unsafeUninitializedCapacity: length) { buffer in
            var bits: UInt64 = 0
            var available = 0
            for index in 0..<length {
                if available < 6 {
                    bits = generator.next()
                    available = 64
                }
                buffer[index] = alphabet[Int(bits & 63)]
                bits >>= 6
                available -= 6
            }
            return length
        }
    }

    /// A YoMo client id: `<nanoid>-<reconnect count>`, with a fresh suffix on every reconnect.
    public static func clientID(base: String, reconnectCount: Int) -> String {
        "\(base)-\(reconnectCount)"
    }
}

/// Secure random words from a process-wide buffer of system randomness.
struct PooledSystemRandom: RandomNumberGenerator {
    private static let pool = Mutex(RandomPool())

    mutating func next() -> UInt64 {
        Self.pool.withLock { $0.next() }
    }
}

private struct RandomPool: ~Copyable {
    private static let words = 512
    private let buffer = UnsafeMutablePointer<UInt64>.allocate(capacity: RandomPool.words)
    private var position = RandomPool.words

    mutating func next() -> UInt64 {
        if position == Self.words {
            refill()
            position = 0
        }
        defer { position += 1 }
        return buffer[position]
    }

    private func refill() {
        #if canImport(Glibc)
        // glibc 2.36+: the kernel's generator, the whole buffer in one call.
        arc4random_buf(buffer, Self.words * MemoryLayout<UInt64>.size)
        #else
        var generator = SystemRandomNumberGenerator()
        for index in 0..<Self.words { buffer[index] = generator.next() }
        #endif
    }

    deinit { buffer.deallocate() }
}
