/// An error of the tracing SDK. Compare with the static members
/// (`error == .httpStatus`); new kinds can be added without breaking callers.
public struct TracingError: Error, Sendable, Hashable, CustomStringConvertible {
    private enum Code: Sendable, Hashable {
        case httpStatus
        case connectionFailed
        case timeout
        case encodingFailed
        case invalidConfiguration
        case shutdown
        case exportFailed
        case abandoned
        case tlsFailed
    }

    private let code: Code
    /// Human-readable detail (status code, curl message, ...).
    public let message: String
    public let file: String
    public let line: Int

    private init(code: Code, message: String = "", file: String = #fileID, line: Int = #line) {
        self.code = code
        self.message = message
        self.file = file
        self.line = line
    }

    /// The collector answered with a non-success HTTP status.
    public static let httpStatus = TracingError(code: .httpStatus)
    /// The collector could not be reached.
    public static let connectionFailed = TracingError(code: .connectionFailed)
    /// The export did not finish within its timeout (retries included).
    public static let timeout = TracingError(code: .timeout)
    /// The request body could not be built.
    public static let encodingFailed = TracingError(code: .encodingFailed)
    /// A setting that would make every export fail (an unsupported protocol,
    /// an unreadable certificate file): the exporter refuses to start.
    public static let invalidConfiguration = TracingError(code: .invalidConfiguration)
    /// The exporter was already shut down.
    public static let shutdown = TracingError(code: .shutdown)
    /// Any other export failure.
    public static let exportFailed = TracingError(code: .exportFailed)
    /// The TLS connection to the collector failed: its certificate did not
    /// verify, or it refused the client certificate. Never retried.
    public static let tlsFailed = TracingError(code: .tlsFailed)
    /// The export was cut short by a shutdown deadline (`SpanExporter.abandonExports(after:)`).
    public static let abandoned = TracingError(code: .abandoned)

    static func httpStatus(_ message: String, file: String = #fileID, line: Int = #line) -> TracingError {
        TracingError(code: .httpStatus, message: message, file: file, line: line)
    }
    static func connectionFailed(_ message: String, file: String = #fileID, line: Int = #line) -> TracingError {
        TracingError(code: .connectionFailed, message: message, file: file, line: line)
    }
    static func timeout(_ message: String, file: String = #fileID, line: Int = #line) -> TracingError {
        TracingError(code: .timeout, message: message, file: file, line: line)
    }
    static func encodingFailed(_ message: String, file: String = #fileID, line: Int = #line) -> TracingError {
        TracingError(code: .encodingFailed, message: message, file: file, line: line)
    }
    static func invalidConfiguration(_ message: String, file: String = #fileID, line: Int = #line) -> TracingError {
        TracingError(code: .invalidConfiguration, message: message, file: file, line: line)
    }
    static func tlsFailed(_ message: String, file: String = #fileID, line: Int = #line) -> TracingError {
        TracingError(code: .tlsFailed, message: message, file: file, line: line)
    }
    static func shutdown(_ message: String, file: String = #fileID, line: Int = #line) -> TracingError {
        TracingError(code: .shutdown, message: message, file: file, line: line)
    }
    public static func abandoned(_ message: String, file: String = #fileID, line: Int = #line) -> TracingError {
        TracingError(code: .abandoned, message: message, file: file, line: line)
    }
    public static func exportFailed(_ message: String, file: String = #fileID, line: Int = #line) -> TracingError {
        TracingError(code: .exportFailed, message: message, file: file, line: line)
    }

    public static func == (lhs: TracingError, rhs: TracingError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    public var description: String {
        let kind = switch code {
        case .httpStatus: "HTTP status"
        case .connectionFailed: "connection failed"
        case .timeout: "timeout"
        case .encodingFailed: "encoding failed"
        case .invalidConfiguration: "invalid configuration"
        case .shutdown: "shut down"
        case .exportFailed: "export failed"
        case .abandoned: "abandoned at the shutdown deadline"
        case .tlsFailed: "TLS failed"
        }
        return message.isEmpty ? "TracingError(\(kind))" : "TracingError(\(kind): \(message))"
    }
}
