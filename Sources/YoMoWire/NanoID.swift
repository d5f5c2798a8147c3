/// Nanoid-style random identifiers, as YoMo uses for client ids and tids.
public enum NanoID {
    /// The URL-safe alphabet of Go's gonanoid, 64 symbols so each takes 6 random bits.
    public static let alphabet = Array("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)

    /// The length of a YoMo client id's random part and of a tid.
    public static let defaultLength = 21

    /// A new random id of `length` symbols (126 random bits at the default length).
    public static func generate(length: Int = defaultLength) -> String {
        var generator = SystemRandomNumberGenerator()
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
