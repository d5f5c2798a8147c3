import Glibc

/// What went wrong on a QUIC connection or listener.
///
/// A struct wrapping a private code (adding a case is not an API break); match
/// with `error.kind == .idleTimeout` etc. and read the details from the properties.
public struct QUICError: Error, Sendable, Hashable, CustomStringConvertible {
    fileprivate enum Code: Hashable, Sendable {
        case addressResolution
        case handshakeTimeout
        case idleTimeout
        case tlsAlert
        case tls
        case closedByPeer
        case closedLocally
        case statelessReset
        case transport
        case socket
        case invalidConfiguration
        case streamReset
        case cancelled
    }

    /// The category of a `QUICError`.
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        fileprivate let code: Code
        /// Host name could not be resolved to an address.
        public static let addressResolution = Kind(code: .addressResolution)
        /// The handshake did not complete within `QUICConfiguration.handshakeTimeout`.
        public static let handshakeTimeout = Kind(code: .handshakeTimeout)
        /// Nothing was received for the negotiated idle timeout.
        public static let idleTimeout = Kind(code: .idleTimeout)
        /// The TLS handshake failed with an alert (`tlsAlert`, `tlsAlertName`).
        public static let tlsAlert = Kind(code: .tlsAlert)
        /// TLS configuration or handshake failure without an alert (e.g. unreadable key file).
        public static let tls = Kind(code: .tls)
        /// The peer closed the connection (`applicationErrorCode`/`transportErrorCode`, `reason`).
        public static let closedByPeer = Kind(code: .closedByPeer)
        /// This side closed the connection.
        public static let closedLocally = Kind(code: .closedLocally)
        /// The peer answered with a stateless reset (it no longer knows the connection).
        public static let statelessReset = Kind(code: .statelessReset)
        /// A QUIC protocol error detected locally.
        public static let transport = Kind(code: .transport)
        /// A socket call failed.
        public static let socket = Kind(code: .socket)
        /// A configuration value is invalid.
        public static let invalidConfiguration = Kind(code: .invalidConfiguration)
        /// The peer reset the stream or stopped reading it.
        public static let streamReset = Kind(code: .streamReset)
        /// The task waiting on the connection was cancelled (the connection is unaffected).
        public static let cancelled = Kind(code: .cancelled)

        public var description: String { "\(code)" }
    }

    fileprivate let code: Code
    /// Human-readable detail (the resolver message, the socket call, ...).
    public let detail: String
    /// The QUIC application error code, for `closedByPeer`/`closedLocally`/`streamReset`
    /// when the close was an application close.
    public let applicationErrorCode: UInt64?
    /// The QUIC transport error code, for a transport-level CONNECTION_CLOSE.
    public let transportErrorCode: UInt64?
    /// The reason phrase of a CONNECTION_CLOSE.
    public let reason: String?
    /// The TLS alert number, for `tlsAlert` (and peer closes carrying a crypto error).
    public let tlsAlert: UInt8?
    /// Whether the alert or close came from the peer.
    public let isRemote: Bool

    public var kind: Kind { Kind(code: code) }

    /// The YoMo application error code for a normal close (`0x13`).
    public static let yomoCloseCode: UInt64 = 0x13

    /// Whether the peer closed with application code 0: the YoMo zipper's listener
    /// shut down (Go sends no reason; ours says why).
    public var isListenerShutdown: Bool {
        code == .closedByPeer && applicationErrorCode == 0
    }

    /// The TLS alert's name, e.g. "bad certificate".
    public var tlsAlertName: String? { tlsAlert.map(Self.alertName) }

    private init(
        _ code: Code, _ detail: String = "", application: UInt64? = nil, transport: UInt64? = nil,
        reason: String? = nil, alert: UInt8? = nil, remote: Bool = false
    ) {
        self.code = code
        self.detail = detail
        self.applicationErrorCode = application
        self.transportErrorCode = transport
        self.reason = reason
        self.tlsAlert = alert
        self.isRemote = remote
    }

    static func addressResolution(_ host: String, _ message: String) -> QUICError {
        QUICError(.addressResolution, "cannot resolve \"\(host)\": \(message)")
    }
    static func handshakeTimeout(_ peer: String) -> QUICError { QUICError(.handshakeTimeout, peer) }
    static func idleTimeout(_ peer: String) -> QUICError { QUICError(.idleTimeout, peer) }
    static func tlsAlert(_ alert: UInt8, remote: Bool, _ detail: String = "") -> QUICError {
        QUICError(.tlsAlert, detail, alert: alert, remote: remote)
    }
    static func tls(_ detail: String) -> QUICError { QUICError(.tls, detail) }
    static func closedByPeer(application code: UInt64, reason: String) -> QUICError {
        QUICError(.closedByPeer, application: code, reason: reason, remote: true)
    }
    static func closedByPeer(transport code: UInt64, reason: String) -> QUICError {
        // Transport codes 0x100–0x1FF carry a TLS alert (RFC 9001 §4.8).
        if code >= 0x100 && code <= 0x1FF {
            return QUICError(.tlsAlert, reason, transport: code, reason: reason, alert: UInt8(code - 0x100), remote: true)
        }
        return QUICError(.closedByPeer, transport: code, reason: reason, remote: true)
    }
    static func closedLocally(code: UInt64, reason: String) -> QUICError {
        QUICError(.closedLocally, application: code, reason: reason)
    }
    static let statelessReset = QUICError(.statelessReset, remote: true)
    static func transport(_ detail: String) -> QUICError { QUICError(.transport, detail) }
    static func socket(_ call: String, errno: Int32, hint: String? = nil) -> QUICError {
        QUICError(.socket, "\(call): \(String(cString: strerror(errno)))" + (hint.map { " (\($0))" } ?? ""))
    }
    static func invalidConfiguration(_ detail: String) -> QUICError { QUICError(.invalidConfiguration, detail) }
    static func streamReset(code: UInt64) -> QUICError { QUICError(.streamReset, application: code, remote: true) }
    static let cancelled = QUICError(.cancelled)

    public var description: String {
        switch code {
        case .addressResolution: return "QUIC: address resolution failed: \(detail)"
        case .handshakeTimeout: return "QUIC: handshake timeout\(detail.isEmpty ? "" : " (\(detail))")"
        case .idleTimeout: return "QUIC: idle timeout: no packets from the peer\(detail.isEmpty ? "" : " (\(detail))")"
        case .tlsAlert:
            let who = isRemote ? "sent by the peer" : "raised locally"
            return "QUIC: TLS alert \"\(tlsAlertName ?? "?")\" (\(tlsAlert ?? 0), \(who))\(detail.isEmpty ? "" : ": \(detail)")"
        case .tls: return "QUIC: TLS error: \(detail)"
        case .closedByPeer:
            if isListenerShutdown {
                let why = (reason ?? "").isEmpty ? "" : ": \(reason!)"
                return "QUIC: closed by peer: listener shut down (code 0)\(why)"
            }
            if let app = applicationErrorCode {
                return "QUIC: closed by peer with application error 0x\(String(app, radix: 16)): \(reason ?? "")"
            }
            let code = transportErrorCode ?? 0
            let name = Self.transportErrorName(code).map { " (\($0))" } ?? ""
            return "QUIC: closed by peer with transport error 0x\(String(code, radix: 16))\(name): \(reason ?? "")"
        case .closedLocally:
            return "QUIC: connection closed locally (0x\(String(applicationErrorCode ?? 0, radix: 16)) \(reason ?? ""))"
        case .statelessReset: return "QUIC: stateless reset by peer (it lost the connection state)"
        case .transport: return "QUIC: transport error: \(detail)"
        case .socket: return "QUIC: socket error: \(detail)"
        case .invalidConfiguration: return "QUIC: invalid configuration: \(detail)"
        case .streamReset: return "QUIC: stream reset by peer with code 0x\(String(applicationErrorCode ?? 0, radix: 16))"
        case .cancelled: return "QUIC: wait cancelled"
        }
    }

    /// RFC 9000 §20.1's name of a transport error code, if it has one.
    static func transportErrorName(_ code: UInt64) -> String? {
        let names = [
            "NO_ERROR", "INTERNAL_ERROR", "CONNECTION_REFUSED", "FLOW_CONTROL_ERROR", "STREAM_LIMIT_ERROR", "STREAM_STATE_ERROR",
            "FINAL_SIZE_ERROR", "FRAME_ENCODING_ERROR", "TRANSPORT_PARAMETER_ERROR", "CONNECTION_ID_LIMIT_ERROR", "PROTOCOL_VIOLATION",
            "INVALID_TOKEN", "APPLICATION_ERROR", "CRYPTO_BUFFER_EXCEEDED", "KEY_UPDATE_ERROR", "AEAD_LIMIT_REACHED", "NO_VIABLE_PATH",
        ]
        return code < UInt64(names.count) ? names[Int(code)] : nil
    }

    static func alertName(_ alert: UInt8) -> String {
        switch alert {
        case 0: return "close notify"
        case 10: return "unexpected message"
        case 20: return "bad record mac"
        case 40: return "handshake failure"
        case 42: return "bad certificate"
        case 43: return "unsupported certificate"
        case 44: return "certificate revoked"
        case 45: return "certificate expired"
        case 46: return "certificate unknown"
        case 47: return "illegal parameter"
        case 48: return "unknown ca"
        case 49: return "access denied"
        case 50: return "decode error"
        case 51: return "decrypt error"
        case 70: return "protocol version"
        case 71: return "insufficient security"
        case 80: return "internal error"
        case 86: return "inappropriate fallback"
        case 90: return "user canceled"
        case 109: return "missing extension"
        case 110: return "unsupported extension"
        case 112: return "unrecognized name"
        case 115: return "unknown psk identity"
        case 116: return "certificate required"
        case 120: return "no application protocol"
        default: return "alert \(alert)"
        }
    }
}
