/// An error decoding or encoding YoMo wire data.
///
/// `code` says what kind of problem it is, so callers can react without parsing
/// text; `description` says exactly what was wrong with the bytes.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The kind of a ``WireError``. New kinds may be added in any release, so
    /// switch over it with a `default` case.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: Hashable, Sendable {
            case truncated
            case negativeLength
            case malformedLength
            case frameTooLarge
            case packetTooShort
            case outOfBounds
            case emptyValue
            case valueTooLong
            case invalidValue
            case unknownFrameType
            case invalidMetadata
            case invalidUTF8
        }

        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// The input ends before the frame does.
        public static let truncated = Code(.truncated)
        /// A y3 length decodes to a negative number.
        public static let negativeLength = Code(.negativeLength)
        /// A y3 length varint is longer than a 32-bit length can be.
        public static let malformedLength = Code(.malformedLength)
        /// A frame is longer than the decoder's maximum frame size.
        public static let frameTooLarge = Code(.frameTooLarge)
        /// A child packet is shorter than its tag and length bytes.
        public static let packetTooShort = Code(.packetTooShort)
        /// A child packet claims more bytes than its parent holds.
        public static let outOfBounds = Code(.outOfBounds)
        /// A field that must hold a value is empty.
        public static let emptyValue = Code(.emptyValue)
        /// A value is longer than its type allows.
        public static let valueTooLong = Code(.valueTooLong)
        /// A field's value has the wrong shape for its type.
        public static let invalidValue = Code(.invalidValue)
        /// The first byte names no YoMo frame type.
        public static let unknownFrameType = Code(.unknownFrameType)
        /// Metadata bytes are not a msgpack map of strings to strings.
        public static let invalidMetadata = Code(.invalidMetadata)
        /// A string is not valid UTF-8.
        public static let invalidUTF8 = Code(.invalidUTF8)

        public var description: String {
            switch value {
            case .truncated: "truncated"
            case .negativeLength: "negative length"
            case .malformedLength: "malformed length"
            case .frameTooLarge: "frame too large"
            case .packetTooShort: "packet too short"
            case .outOfBounds: "out of bounds"
            case .emptyValue: "empty value"
            case .valueTooLong: "value too long"
            case .invalidValue: "invalid value"
            case .unknownFrameType: "unknown frame type"
            case .invalidMetadata: "invalid metadata"
            case .invalidUTF8: "invalid UTF-8"
            }
        }
    }

    /// What kind of problem this is.
    public let code: Code
    /// What exactly was wrong, in words.
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "YoMo wire error (\(code)): \(message)" }
}
