/// An error of the logging SDK. Compare with the static members
/// (`error == .sinkFailed`); new kinds can be added without breaking callers.
public struct LoggingError: Error, Sendable, Hashable, CustomStringConvertible {
    private enum Code: Sendable, Hashable {
        case sinkFailed
        case shutdown
        case exportFailed
        case abandoned
        case tlsFailed
        case invalidConfiguration
    }

    private let code: Code
    /// Human-readable detail (errno, HTTP status, ...).
    public let message: String
    public let file: String
    public let line: Int

    private init(code: Code, message: String = "", file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.file = file
        self.line = line
    }

    /// A sink could not take the bytes (e.g. `write(2)` failed).
    public static let sinkFailed = LoggingError(code: .sinkFailed)
    /// The writer or exporter was already shut down.
    public static let shutdown = LoggingError(code: .shutdown)
    /// An OTLP log export failed.
    public static let exportFailed = LoggingError(code: .exportFailed)
    /// An OTLP log export was cut short by a shutdown deadline.
    public static let abandoned = LoggingError(code: .abandoned)
    /// The TLS connection to the collector failed (certificate not verified,
    /// client certificate refused). Never retried.
    public static let tlsFailed = LoggingError(code: .tlsFailed)
    /// An OTLP exporter setting that would make every export fail.
    public static let invalidConfiguration = LoggingError(code: .invalidConfiguration)

    /// For `LogSink` implementations: the bytes could not be written.
    public static func sinkFailed(_ message: String, file: String = #fileID, line: Int = #line) -> LoggingError {
        LoggingError(code: .sinkFailed, message: message, file: file, line: line)
    }
    static func shutdown(_ message: String, file: String = #fileID, line: Int = #line) -> LoggingError {
        LoggingError(code: .shutdown, message: message, file: file, line: line)
    }
    static func abandoned(_ message: String, file: String = #fileID, line: Int = #line) -> LoggingError {
        LoggingError(code: .abandoned, message: message, file: file, line: line)
    }
    static func tlsFailed(_ message: String, file: String = #fileID, line: Int = #line) -> LoggingError {
        LoggingError(code: .tlsFailed, message: message, file: file, line: line)
    }
    static func invalidConfiguration(_ message: String, file: String = #fileID, line: Int = #line) -> LoggingError {
        LoggingError(code: .invalidConfiguration, message: message, file: file, line: line)
    }
    static func exportFailed(_ message: String, file: String = #fileID, line: Int = #line) -> LoggingError {
        LoggingError(code: .exportFailed, message: message, file: file, line: line)
    }

    public static func == (lhs: LoggingError, rhs: LoggingError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public var description: String {
        let kind = switch code {
        case .sinkFailed: "sink failed"
        case .shutdown: "shut down"
        case .abandoned: "abandoned at the shutdown deadline"
        case .exportFailed: "export failed"
        case .tlsFailed: "TLS failed"
        case .invalidConfiguration: "invalid configuration"
        }
        return message.isEmpty ? "LoggingError(\(kind))" : "LoggingError(\(kind): \(message))"
    }
}
