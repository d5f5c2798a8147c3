#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Settings of an OTLP/HTTP protobuf exporter, from the OTel exporter
/// environment variables (https://opentelemetry.io/docs/specs/otel/protocol/exporter/).
public struct OTLPExporterConfiguration: Sendable, Hashable, CustomStringConvertible {
    /// Which signal an exporter sends; selects `/v1/<signal>` and the
    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_*` variables.
    public struct Signal: Sendable, Hashable {
        /// "traces", "logs".
        public let path: String
        let environmentInfix: String

        public static let traces = Signal(path: "traces", environmentInfix: "TRACES")
        public static let logs = Signal(path: "logs", environmentInfix: "LOGS")
        public static let metrics = Signal(path: "metrics", environmentInfix: "METRICS")
    }

    /// Request body compression (`OTEL_EXPORTER_OTLP_COMPRESSION`: `gzip` or `none`).
    public struct Compression: Sendable, Hashable, CustomStringConvertible {
        private let name: String
        public static let none = Compression(name: "none")
        public static let gzip = Compression(name: "gzip")
        public var description: String { name }
    }

    /// The OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`). Only `httpProtobuf`
    /// is implemented; an exporter refuses to start with any other, rather
    /// than send in a protocol the user did not ask for.
    public struct WireProtocol: Sendable, Hashable, CustomStringConvertible {
        /// The spec's name: `http/protobuf`, `http/json`, `grpc`, or what the variable held.
        public let name: String
        public init(name: String) { self.name = name }
        public static let httpProtobuf = WireProtocol(name: "http/protobuf")
        public static let httpJSON = WireProtocol(name: "http/json")
        public static let grpc = WireProtocol(name: "grpc")
        public var isSupported: Bool { self == .httpProtobuf }
        public var description: String { name }
    }

    /// The full URL requests go to, e.g. `http://localhost:4318/v1/traces`.
    public var url: String
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`), e.g. for authentication.
    /// Their values never appear in log lines, errors or `description`.
    public var headers: [(name: String, value: String)] {
        get { headerStorage.map { ($0.name, $0.value) } }
        set { headerStorage = newValue.map { Header(name: $0.name, value: $0.value) } }
    }
    /// Time one export may take, retries included (`OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s).
    public var timeout: Duration
    public var compression: Compression
    public var userAgent: String
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, default `http/protobuf`.
    public var wireProtocol: WireProtocol
    /// PEM bundle of the CAs that verify the collector's certificate
    /// (`OTEL_EXPORTER_OTLP_CERTIFICATE`); nil: the system store. For https://
    /// endpoints the peer and its host name are always verified.
    public var certificateFile: String?
    /// PEM client certificate for mutual TLS (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`).
    public var clientCertificateFile: String?
    /// PEM key of `clientCertificateFile` (`OTEL_EXPORTER_OTLP_CLIENT_KEY`);
    /// nil: the key is read from the certificate file.
    public var clientKeyFile: String?
    /// Environment variables that were set but unusable and ignored.
    package var unusableSettings: [String] = []

    private struct Header: Sendable, Hashable { var name: String; var value: String }
    private var headerStorage: [Header]

    /// Precedence, per the spec: the signal-specific variable
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used as-is), else the generic one
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`, with `/v1/<signal>` appended), else
    /// `http://localhost:4318/v1/<signal>`. The same order for every other
    /// setting: `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` wins over
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`, and so on.
    public init(signal: Signal, environment: [String: String] = ProcessEnvironment.current) {
        var origins: [String: String] = [:]
        func value(_ suffix: String) -> String? {
            for key in ["OTEL_EXPORTER_OTLP_\(signal.environmentInfix)_\(suffix)", "OTEL_EXPORTER_OTLP_\(suffix)"] {
                if let value = environment[key]?.trimmingSpaces(), !value.isEmpty {
                    origins[suffix] = key
                    return value
                }
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
        var warnings: [String] = []
        for key in ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_\(signal.environmentInfix)_HEADERS"] {
            for (name, value) in parseKeyValueList(environment[key]) {
                // A decoded CR or LF would start another header line; the
                // warning names the header, never its value (often a token).
                guard Self.isValidHeader(name: name, value: value) else {
                    warnings.append("\(key): header \(Self.printableName(name)) has a control character; ignored")
                    continue
                }
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
        wireProtocol = value("PROTOCOL").map { WireProtocol(name: $0.lowercased()) } ?? .httpProtobuf
        certificateFile = value("CERTIFICATE")
        clientCertificateFile = value("CLIENT_CERTIFICATE")
        clientKeyFile = value("CLIENT_KEY")
        let unusedFiles = ["CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"].compactMap { origins[$0] }
        if url.lowercased().hasPrefix("http://"), !unusedFiles.isEmpty {
            warnings.append("\(unusedFiles.joined(separator: ", ")) set but \(url) is plain http://: no TLS, not used")
        }
        // An unset setting is named by its general variable in messages.
        for suffix in ["PROTOCOL", "CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"] where origins[suffix] == nil {
            origins[suffix] = "OTEL_EXPORTER_OTLP_\(suffix)"
        }
        self.origins = origins
        unusableSettings = warnings
    }

    /// Configuration for an explicit URL (no environment).
    public init(
        url: String,
        timeout: Duration = .seconds(10),
        compression: Compression = .none,
        certificateFile: String? = nil,
        clientCertificateFile: String? = nil,
        clientKeyFile: String? = nil
    ) {
        self.url = url
        self.timeout = timeout
        self.compression = compression
        self.userAgent = YoMoTracingSDK.userAgent
        self.headerStorage = []
        self.wireProtocol = .httpProtobuf
        self.certificateFile = certificateFile
        self.clientCertificateFile = clientCertificateFile
        self.clientKeyFile = clientKeyFile
        self.origins = [:]
    }

    /// Which variable each setting came from (suffix → name), so errors name it.
    private var origins: [String: String]

    /// Throws `.invalidConfiguration` for what would make every export fail:
    /// a protocol other than `http/protobuf`, a header with a control
    /// character and, for an `https://` URL, a certificate or key file that
    /// cannot be read or a key without a certificate. The exporters call it when they are made. The message names
    /// the setting (and the file), never a header value.
    public func validate() throws(TracingError) {
        guard wireProtocol.isSupported else {
            throw .invalidConfiguration(
                "\(setting("PROTOCOL", "wireProtocol"))=\(wireProtocol.name) is not supported; "
                    + "supported: \(WireProtocol.httpProtobuf.name)"
            )
        }
        for header in headerStorage where !Self.isValidHeader(name: header.name, value: header.value) {
            throw .invalidConfiguration("header \(Self.printableName(header.name)) has a control character")
        }
        // Plain http:// uses none of the files (a warning says so).
        if url.lowercased().hasPrefix("http://") { return }
        if clientKeyFile != nil && clientCertificateFile == nil {
            throw .invalidConfiguration(
                "\(setting("CLIENT_KEY", "clientKeyFile")) is set without \(setting("CLIENT_CERTIFICATE", "clientCertificateFile"))"
            )
        }
        for (suffix, property, path) in [
            ("CERTIFICATE", "certificateFile", certificateFile),
            ("CLIENT_CERTIFICATE", "clientCertificateFile", clientCertificateFile),
            ("CLIENT_KEY", "clientKeyFile", clientKeyFile),
        ] {
            guard let path else { continue }
            if let problem = Self.unreadable(path) {
                throw .invalidConfiguration("\(setting(suffix, property)) \(path): \(problem)")
            }
        }
    }

    /// The variable (or, for a configuration made in code, the property) a message names.
    private func setting(_ suffix: String, _ property: String) -> String {
        origins[suffix] ?? property
    }

    /// Why `path` cannot be read now (nil if it can): opened, not only stat'ed,
    /// so a permission problem shows at start-up rather than at the first export.
    private static func unreadable(_ path: String) -> String? {
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else { return String(cString: strerror(errno)) }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { return String(cString: strerror(errno)) }
        if info.st_mode & 0o170000 == 0o040000 { return "is a directory" }  // S_ISDIR
        if info.st_size == 0 { return "is empty" }
        return nil
    }

    private static func isValidHeader(name: String, value: String) -> Bool {
        !name.isEmpty && !name.utf8.contains { $0 < 0x20 || $0 == 0x7F || $0 == UInt8(ascii: ":") }
            && !value.utf8.contains { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }
    }

    private static func printableName(_ name: String) -> String {
        String(name.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : Character($0) })
    }

    /// Header names only: values are usually credentials.
    public var description: String {
        var parts = ["url: \(url)", "protocol: \(wireProtocol)", "timeout: \(timeout)", "compression: \(compression)"]
        if !headerStorage.isEmpty {
            parts.append("headers: [\(headerStorage.map { "\($0.name): <redacted>" }.joined(separator: ", "))]")
        }
        if let certificateFile { parts.append("certificateFile: \(certificateFile)") }
        if let clientCertificateFile { parts.append("clientCertificateFile: \(clientCertificateFile)") }
        if let clientKeyFile { parts.append("clientKeyFile: \(clientKeyFile)") }
        return "OTLPExporterConfiguration(\(parts.joined(separator: ", ")))"
    }

    /// The settings only: where they came from does not make two configurations differ.
    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.url == rhs.url && lhs.headerStorage == rhs.headerStorage && lhs.timeout == rhs.timeout
            && lhs.compression == rhs.compression && lhs.userAgent == rhs.userAgent
            && lhs.wireProtocol == rhs.wireProtocol && lhs.certificateFile == rhs.certificateFile
            && lhs.clientCertificateFile == rhs.clientCertificateFile && lhs.clientKeyFile == rhs.clientKeyFile
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(url)
        hasher.combine(headerStorage)
        hasher.combine(timeout)
        hasher.combine(compression)
        hasher.combine(userAgent)
        hasher.combine(wireProtocol)
        hasher.combine(certificateFile)
        hasher.combine(clientCertificateFile)
        hasher.combine(clientKeyFile)
    }

    /// Header values of this configuration, for scrubbing text that may echo them.
    var secrets: [String] { headerStorage.map(\.value).filter { $0.count >= 4 } }
}
