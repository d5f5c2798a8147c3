/// Settings of an OTLP/HTTP protobuf exporter, from the OTel exporter
/// environment variables (https://opentelemetry.io/docs/specs/otel/protocol/exporter/).
public struct OTLPExporterConfiguration: Sendable, Hashable {
    /// Which signal an exporter sends; selects `/v1/<signal>` and the
    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_*` variables.
    public struct Signal: Sendable, Hashable {
        /// "traces", "logs".
        public let path: String
        let environmentInfix: String

        public static let traces = Signal(path: "traces", environmentInfix: "TRACES")
        public static let logs = Signal(path: "logs", environmentInfix: "LOGS")
    }

    /// Request body compression (`OTEL_EXPORTER_OTLP_COMPRESSION`: `gzip` or `none`).
    public struct Compression: Sendable, Hashable, CustomStringConvertible {
        private let name: String
        public static let none = Compression(name: "none")
        public static let gzip = Compression(name: "gzip")
        public var description: String { name }
    }

    /// The full URL requests go to, e.g. `http://localhost:4318/v1/traces`.
    public var url: String
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`), e.g. for authentication.
    public var headers: [(name: String, value: String)] {
        get { headerStorage.map { ($0.name, $0.value) } }
        set { headerStorage = newValue.map { Header(name: $0.name, value: $0.value) } }
    }
    /// Time one export may take, retries included (`OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s).
    public var timeout: Duration
    public var compression: Compression
    public var userAgent: String

    private struct Header: Sendable, Hashable { var name: String; var value: String }
    private var headerStorage: [Header]

    /// Precedence, per the spec: the signal-specific variable
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used as-is), else the generic one
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`, with `/v1/<signal>` appended), else
    /// `http://localhost:4318/v1/<signal>`.
    public init(signal: Signal, environment: [String: String] = ProcessEnvironment.current) {
        func value(_ suffix: String) -> String? {
            for key in ["OTEL_EXPORTER_OTLP_\(signal.environmentInfix)_\(suffix)", "OTEL_EXPORTER_OTLP_\(suffix)"] {
                if let value = environment[key]?.trimmingSpaces(), !value.isEmpty { return value }
            }
            return nil
        }
        if let endpoint = environment["OTEL_EXPORTER_OTLP_\(signal.environmentInfix)_ENDPOINT"]?.trimmingSpaces(),
           !endpoint.isEmpty {
            url = endpoint
        } else {
            var base = environment["OTEL_EXPORTER_OTLP_ENDPOINT"]?.trimmingSpaces() ?? ""
            if base.isEmpty { base = "http://localhost:4318" }
            while base.hasSuffix("/") { base.removeLast() }
            url = "\(base)/v1/\(signal.path)"
        }
        // Generic headers first, signal-specific ones override by name.
        var headers: [Header] = []
        for key in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_\(signal.environmentInfix)_HEADERS"] {
            for (name, value) in parseKeyValueList(environment[key]) {
                headers.removeAll { $0.name.lowercased() == name.lowercased() }
                headers.append(Header(name: name, value: value))
            }
        }
        headerStorage = headers
        if let milliseconds = parseInteger(value("TIMEOUT")), milliseconds > 0 {
            timeout = .milliseconds(milliseconds)
        } else {
            timeout = .seconds(10)
        }
        compression = value("COMPRESSION")?.lowercased() == "gzip" ? .gzip : .none
        userAgent = YoMoTracingSDK.userAgent
    }

    /// Configuration for an explicit URL (no environment).
    public init(url: String, timeout: Duration = .seconds(10), compression: Compression = .none) {
        self.url = url
        self.timeout = timeout
        self.compression = compression
        self.userAgent = YoMoTracingSDK.userAgent
        self.headerStorage = []
    }
}
