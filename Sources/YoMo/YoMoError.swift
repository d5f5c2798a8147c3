/// An error of a YoMo client, stream function, source or zipper.
///
/// `code` says what happened so callers can react (for example, not retrying a
/// rejected handshake); `message` says it in words, with the peer's reason.
public struct YoMoError: Error, Hashable, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Value: Hashable, Sendable {
            case rejected, goaway, closedByPeer, listenerShutdown, closed, notConnected
            case invalidAddress, invalidConfiguration, invalidSchedule, reservedTag
            case handlerFailed, initializerFailed, invalidMetadata, protocolViolation
            case outageBufferFull, frameTooLarge, timedOut
        }

        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// The zipper refused the handshake (version, authentication): never retried.
        public static let rejected = Code(.rejected)
        /// The peer sent a GoawayFrame.
        public static let goaway = Code(.goaway)
        /// The peer closed the connection with YoMo's application code `0x13`.
        public static let closedByPeer = Code(.closedByPeer)
        /// The zipper's listener shut down (application close code 0).
        public static let listenerShutdown = Code(.listenerShutdown)
        /// This side was closed: writes after `close()` fail with it.
        public static let closed = Code(.closed)
        /// There is no connection (not connected yet, or reconnecting with the
        /// outage buffer disabled), or reconnecting was given up.
        public static let notConnected = Code(.notConnected)
        /// A write while reconnecting found the outage buffer full
        /// (`StreamFunction.Options.outageBufferFrames` / `outageBufferBytes`): the
        /// frame was not taken. Retry later or slow down.
        public static let outageBufferFull = Code(.outageBufferFull)
        /// A write whose frame would be larger than 16 MiB, the largest a
        /// zipper takes by default (it closes the connection on a bigger one):
        /// the frame was not sent, and the connection serves on.
        public static let frameTooLarge = Code(.frameTooLarge)
        /// `flush(timeout:)` gave up waiting: frames written before it are not
        /// all settled yet. They are still kept, and sent again if the
        /// connection is lost.
        public static let timedOut = Code(.timedOut)
        /// A `host:port` could not be parsed.
        public static let invalidAddress = Code(.invalidAddress)
        /// A configuration value (file, option) is not usable.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// A cron or `@every` schedule could not be parsed.
        public static let invalidSchedule = Code(.invalidSchedule)
        /// Tags `0xF000`–`0xFFFF` are reserved for the system.
        public static let reservedTag = Code(.reservedTag)
        /// A handler threw; the stream function keeps serving.
        public static let handlerFailed = Code(.handlerFailed)
        /// The initializer threw, so `connect` failed.
        public static let initializerFailed = Code(.initializerFailed)
        /// A frame's metadata could not be decoded; the frame was skipped.
        public static let invalidMetadata = Code(.invalidMetadata)
        /// The peer broke the protocol (bad frame, wrong frame at the wrong time).
        public static let protocolViolation = Code(.protocolViolation)

        public var description: String { "\(value)" }
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
