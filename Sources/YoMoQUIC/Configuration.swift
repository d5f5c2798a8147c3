import FoundationEssentials
import Glibc

/// QUIC transport settings: the Swift counterpart of the Go SDK's `WithClientQuicConfig`.
/// The defaults are YoMo's.
public struct QUICConfiguration: Sendable, Hashable {
    /// Interval of keep-alive PINGs; `nil` disables them. 1 s keeps a link to the
    /// Go zipper (idle timeout 5 s) alive, and an idle client learns within about
    /// a second that a restarted zipper lost its connection (the PING is answered
    /// with a stateless reset).
    public var keepAliveInterval: Duration?
    /// Time allowed for the QUIC + TLS handshake.
    public var handshakeTimeout: Duration
    /// Idle timeout advertised to the peer (the smaller of both sides applies).
    public var idleTimeout: Duration
    /// Initial receive window of the stream, in bytes.
    public var streamReceiveWindow: Int
    /// Initial receive window of the connection, in bytes.
    public var connectionReceiveWindow: Int
    /// Upper bounds to which ngtcp2 may grow the receive windows as data is consumed.
    public var maxStreamReceiveWindow: Int
    public var maxConnectionReceiveWindow: Int
    /// Bytes a writer may queue (unacknowledged) before `write` waits: the backpressure bound.
    public var sendBufferSize: Int
    /// Application protocol (TLS ALPN).
    public var alpn: String
    /// How this side paces what it sends and reacts to loss. Local to each
    /// sender: the peer may use another, a Go peer included.
    public var congestionControl: CongestionControl

    public init(
        keepAliveInterval: Duration? = .seconds(1),
        handshakeTimeout: Duration = .seconds(3),
        idleTimeout: Duration = .seconds(40),
        streamReceiveWindow: Int = 2 << 20,
        connectionReceiveWindow: Int = 2 << 20,
        maxStreamReceiveWindow: Int = 6 << 20,
        maxConnectionReceiveWindow: Int = 15 << 20,
        sendBufferSize: Int = 4 << 20,
        alpn: String = "yomo",
        congestionControl: CongestionControl = .fromEnvironment
    ) {
        self.keepAliveInterval = keepAliveInterval
        self.handshakeTimeout = handshakeTimeout
        self.idleTimeout = idleTimeout
        self.streamReceiveWindow = streamReceiveWindow
        self.connectionReceiveWindow = connectionReceiveWindow
        self.maxStreamReceiveWindow = maxStreamReceiveWindow
        self.maxConnectionReceiveWindow = maxConnectionReceiveWindow
        self.sendBufferSize = sendBufferSize
        self.alpn = alpn
        self.congestionControl = congestionControl
    }

    public static let `default` = QUICConfiguration()

    package func validate() throws(QUICError) {
        guard handshakeTimeout > .zero, idleTimeout > .zero else {
            throw .invalidConfiguration("handshake and idle timeouts must be positive")
        }
        guard streamReceiveWindow > 0, connectionReceiveWindow > 0, sendBufferSize > 0 else {
            throw .invalidConfiguration("windows and send buffer must be positive")
        }
        guard !alpn.isEmpty, alpn.utf8.count < 256 else { throw .invalidConfiguration("ALPN must be 1-255 bytes") }
    }
}

extension QUICConfiguration {
    /// A congestion controller of ngtcp2's. It decides how fast a connection
    /// sends, so it matters most on a path that loses packets at random (a
    /// radio link, a congested uplink): a controller that takes every loss for
    /// congestion (CUBIC, Reno) slows down to a crawl there, and what waits
    /// behind a lost packet waits for seconds (docs/quic.md, "A lossy path").
    public struct CongestionControl: Sendable, Hashable, CustomStringConvertible {
        enum Algorithm: String, CaseIterable { case cubic, reno, bbr }
        let algorithm: Algorithm

        /// BBR (version 2, as ngtcp2 0.12.1 has it; later ngtcp2 calls it
        /// plain BBR): paces at the bottleneck rate it measures and reacts to
        /// loss only above a few percent. The default.
        public static let bbr = CongestionControl(algorithm: .bbr)
        /// CUBIC (RFC 9438): halves its window at a loss and grows it again
        /// over round trips; what quic-go, and so the Go SDK, uses.
        public static let cubic = CongestionControl(algorithm: .cubic)
        /// NewReno (RFC 9002's own): as CUBIC, growing more slowly.
        public static let reno = CongestionControl(algorithm: .reno)

        /// The default when the program sets none: `YOMO_QUIC_CONGESTION_CONTROL`
        /// (`bbr`, `cubic` or `reno`), read once per process, else `.bbr`.
        public static let fromEnvironment = CongestionControl(
            environmentValue: getenv("YOMO_QUIC_CONGESTION_CONTROL").map { String(cString: $0) })

        /// `bbr`, `cubic` or `reno`, in any case; nil for anything else.
        public init?(_ name: String) {
            guard let algorithm = Algorithm(rawValue: name.lowercased()) else { return nil }
            self.algorithm = algorithm
        }

        init(algorithm: Algorithm) { self.algorithm = algorithm }

        /// A value that names no controller keeps the default, with a line on
        /// stderr: a typo must not stop a process from starting.
        init(environmentValue value: String?) {
            guard let value, !value.isEmpty else {
                self = .bbr
                return
            }
            guard let chosen = CongestionControl(value) else {
                trace("YOMO_QUIC_CONGESTION_CONTROL=\(value) is none of bbr, cubic, reno; using bbr")
                self = .bbr
                return
            }
            self = chosen
        }

        /// Every controller there is, by name.
        public static let all: [CongestionControl] = Algorithm.allCases.map(CongestionControl.init(algorithm:))

        public var description: String { algorithm.rawValue }
    }
}

extension Duration {
    var nanoseconds: UInt64 {
        let (s, atto) = components
        return UInt64(max(0, s)) &* 1_000_000_000 &+ UInt64(max(0, atto) / 1_000_000_000)
    }
}

/// Client TLS settings: the counterpart of the Go SDK's `WithClientTLSConfig`.
/// By default the server certificate is not verified (as the Go SDK).
public struct TLSConfiguration: Sendable, Hashable {
    /// Verify the server's certificate chain (against `caFile`, else the system store)
    /// and, when `serverName` (or the host connected to) is set, its name.
    public var verifyPeer: Bool
    /// PEM file of trusted CA certificates.
    public var caFile: String?
    /// Name sent as SNI and checked against the certificate; defaults to the host.
    public var serverName: String?
    /// PEM certificate and key presented to the server (mutual TLS).
    public var certificateFile: String?
    public var privateKeyFile: String?

    public init(
        verifyPeer: Bool = false, caFile: String? = nil, serverName: String? = nil,
        certificateFile: String? = nil, privateKeyFile: String? = nil
    ) {
        self.verifyPeer = verifyPeer
        self.caFile = caFile
        self.serverName = serverName
        self.certificateFile = certificateFile
        self.privateKeyFile = privateKeyFile
    }

    public static let `default` = TLSConfiguration()

    /// `fromEnvironment(_:)` with this process's environment.
    public static func fromEnvironment() -> TLSConfiguration {
        fromEnvironment(ProcessInfo.processInfo.environment)
    }

    /// Reads `YOMO_TLS_VERIFY_PEER` (`true`/`1`/`yes`/`on`), `YOMO_TLS_CACERT_FILE`,
    /// `YOMO_TLS_CERT_FILE` and `YOMO_TLS_KEY_FILE`, like the Go SDK; empty values count as unset.
    public static func fromEnvironment(_ environment: [String: String]) -> TLSConfiguration {
        func value(_ key: String) -> String? {
            guard let v = environment[key], !v.isEmpty else { return nil }
            return v
        }
        let verify = value("YOMO_TLS_VERIFY_PEER").map { ["true", "1", "yes", "on"].contains($0.lowercased()) } ?? false
        return TLSConfiguration(
            verifyPeer: verify, caFile: value("YOMO_TLS_CACERT_FILE"),
            certificateFile: value("YOMO_TLS_CERT_FILE"), privateKeyFile: value("YOMO_TLS_KEY_FILE"))
    }
}

/// Server TLS settings.
public struct ServerTLSConfiguration: Sendable, Hashable {
    /// PEM certificate chain and key; both `nil` means a self-signed ECDSA P-256
    /// certificate generated at start (as the Go zipper does).
    public var certificateFile: String?
    public var privateKeyFile: String?
    /// When set, clients must present a certificate signed by one of these CAs.
    public var clientCAFile: String?

    public init(certificateFile: String? = nil, privateKeyFile: String? = nil, clientCAFile: String? = nil) {
        self.certificateFile = certificateFile
        self.privateKeyFile = privateKeyFile
        self.clientCAFile = clientCAFile
    }

    public static let selfSigned = ServerTLSConfiguration()
}
