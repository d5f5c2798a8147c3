extension UInt32 {
    /// A data tag as people write it on command lines and in configs: `0x33` or `51`.
    public init?(yomoTag text: String) {
        let lowered = text.lowercased()
        guard let value = lowered.hasPrefix("0x") ? UInt32(lowered.dropFirst(2), radix: 16) : UInt32(lowered) else { return nil }
        self = value
    }
}
