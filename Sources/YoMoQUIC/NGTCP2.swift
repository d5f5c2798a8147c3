// The one place that calls ngtcp2 (0.12.1): a move to ngtcp2 1.x changes this file.
// Everything here runs on the owning connection's loop thread.
import CNGTCP2
import Glibc

/// A QUIC connection id as a hashable value (routing key on the server).
struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    private var a: UInt64 = 0, b: UInt64 = 0, c: UInt32 = 0
    private(set) var count: UInt8 = 0

    init(_ bytes: UnsafeRawBufferPointer) {
        let n = min(bytes.count, 20)
        guard n > 0, let base = bytes.baseAddress else { return }
        withUnsafeMutableBytes(of: &self) { raw in
            raw.baseAddress!.copyMemory(from: base, byteCount: n)
        }
        count = UInt8(n)
    }

    init(_ cid: ngtcp2_cid) {
        var cid = cid
        self = withUnsafeBytes(of: &cid.data) { ConnectionID(UnsafeRawBufferPointer(rebasing: $0.prefix(cid.datalen))) }
    }

    static func random(length: Int = 18) -> ConnectionID {
        var bytes = [UInt8](repeating: 0, count: length)
        gnutls_rnd(GNUTLS_RND_NONCE, &bytes, length)
        return bytes.withUnsafeBytes { ConnectionID($0) }
    }

    var ngtcp2: ngtcp2_cid {
        var cid = ngtcp2_cid()
        var copy = self
        withUnsafeBytes(of: &copy) { src in
            withUnsafeMutableBytes(of: &cid.data) { dst in
                dst.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: Int(count))
            }
        }
        cid.datalen = Int(count)
        return cid
    }

    var description: String {
        var copy = self
        return withUnsafeBytes(of: &copy) { $0.prefix(Int(count)).map { String(format2: $0) }.joined() }
    }
}

extension String {
    fileprivate init(format2 byte: UInt8) {
        let digits = Array("0123456789abcdef")
        self.init([digits[Int(byte >> 4)], digits[Int(byte & 15)]])
    }
}

/// Events ngtcp2 reports while reading or writing.
protocol NGConnectionDelegate: AnyObject {
    func ngHandshakeCompleted()
    func ngStreamOpened(_ id: Int64)
    func ngStreamData(_ id: Int64, _ data: UnsafeRawBufferPointer, fin: Bool)
    func ngStreamAcked(_ id: Int64, length: UInt64)
    func ngStreamClosed(_ id: Int64, appErrorCode: UInt64?)
    func ngStreamReset(_ id: Int64, appErrorCode: UInt64)
    func ngStatelessReset()
    func ngExtendMaxLocalBidiStreams()
    /// A new source connection id was issued (server: add a route).
    func ngNewConnectionID(_ cid: ConnectionID)
    func ngRemoveConnectionID(_ cid: ConnectionID)
    /// A NEW_TOKEN frame's token (client): for its next connection to this server.
    func ngNewToken(_ token: [UInt8])
}

/// How a read or timer outcome should be handled.
enum NGOutcome {
    case ok
    /// The peer closed (or reset) the connection; enter the draining period.
    case draining
    /// A local error: send CONNECTION_CLOSE (`closeError` is set) then close.
    case failed(QUICError)
    /// Silently drop the connection (no CONNECTION_CLOSE).
    case drop(QUICError)
}

enum NGWriteResult {
    /// A packet of `length` bytes; `consumed` stream bytes went into it (-1 if none).
    case packet(length: Int, consumed: Int)
    /// Stream data was consumed but the packet is not finished: call again.
    case more(consumed: Int)
    /// The stream cannot take data now; call again without data.
    case streamBlocked
    /// Congestion or pacing limited: nothing to write now.
    case idle
    case failed(QUICError)
}

struct NGSettings {
    var quic: QUICConfiguration
    var isServer: Bool
    var debugLog: Bool
    /// A server under `QUICServer.Limits.maximumReceiveWindowBytes`: the
    /// window a connection starts with. The server then sizes each window
    /// itself (`ReceiveWindows`), so ngtcp2's own growth is off.
    var managedReceiveWindow: Int? = nil
    /// A client's token for its Initial: one a NEW_TOKEN frame of an earlier
    /// connection to this server gave it (empty: none).
    var token: [UInt8] = []
}

/// Owns one `ngtcp2_conn`, its gnutls session and the C memory they point into.
final class NGConnection {
    private(set) var conn: OpaquePointer?
    private var session: OpaquePointer?
    /// The session points into these: they must outlive it (gnutls keeps the
    /// verification host name pointer without copying it).
    private var credentials: TLSCredentials?
    private var verifyName: UnsafeMutablePointer<CChar>?
    private let connRef: UnsafeMutablePointer<ngtcp2_crypto_conn_ref>
    private let pathStorage: UnsafeMutablePointer<ngtcp2_path_storage>
    /// The path ngtcp2 chose for the last packet written (it follows a migrating peer).
    private let txPath: UnsafeMutablePointer<ngtcp2_path_storage>
    /// Where CONNECTION_CLOSE error details are kept.
    private var closeError = ngtcp2_connection_close_error()
    unowned(unsafe) var delegate: (any NGConnectionDelegate)?
    /// Secret for stateless reset tokens (server; 32 bytes).
    private let resetSecret: [UInt8]
    private let description: String
    var peerTLSAlert: UInt8?

    var path: UnsafePointer<ngtcp2_path> { UnsafeRawPointer(pathStorage).assumingMemoryBound(to: ngtcp2_path.self) }

    private init(local: UDPAddress, remote: UDPAddress, resetSecret: [UInt8], description: String) {
        connRef = .allocate(capacity: 1)
        connRef.initialize(to: ngtcp2_crypto_conn_ref())
        pathStorage = .allocate(capacity: 1)
        pathStorage.initialize(to: ngtcp2_path_storage())
        txPath = .allocate(capacity: 1)
        txPath.initialize(to: ngtcp2_path_storage())
        ngtcp2_path_storage_zero(txPath)
        self.resetSecret = resetSecret
        self.description = description
        local.withSockaddr { l, ll in
            remote.withSockaddr { r, rl in
                ngtcp2_path_storage_init(pathStorage, l, ll, r, rl, nil)
            }
        }
    }

    deinit {
        if let conn { ngtcp2_conn_del(conn) }
        if let session { gnutls_deinit(session) }
        free(verifyName)
        connRef.deallocate()
        pathStorage.deallocate()
        txPath.deallocate()
    }

    /// A client connection (QUIC v1) with a fresh TLS session.
    static func client(
        local: UDPAddress, remote: UDPAddress, settings: NGSettings, credentials: TLSCredentials,
        sni: String?, verifyName: String?, verify: Bool, delegate: any NGConnectionDelegate
    ) throws(QUICError) -> NGConnection {
        let c = NGConnection(local: local, remote: remote, resetSecret: [], description: remote.description)
        c.delegate = delegate
        var dcid = ConnectionID.random().ngtcp2
        var scid = ConnectionID.random().ngtcp2
        var callbacks = c.makeCallbacks(server: false)
        var s = c.makeSettings(settings)
        var params = c.makeParams(settings)
        var conn: OpaquePointer?
        // ngtcp2 copies the token.
        let rv = settings.token.withUnsafeBufferPointer { token in
            s.token = ngtcp2_vec(base: UnsafeMutablePointer(mutating: token.baseAddress), len: token.count)
            return ngtcp2_conn_client_new_versioned(
                &conn, &dcid, &scid, c.path, UInt32(NGTCP2_PROTO_VER_V1), NGTCP2_CALLBACKS_VERSION, &callbacks,
                NGTCP2_SETTINGS_VERSION, &s, NGTCP2_TRANSPORT_PARAMS_VERSION, &params, nil,
                Unmanaged.passUnretained(c).toOpaque())
        }
        guard rv == 0, let conn else { throw .transport("ngtcp2_conn_client_new: \(errorName(rv))") }
        c.conn = conn
        try c.attachTLS(server: false, credentials: credentials, sni: sni, verifyName: verifyName, verify: verify, alpn: settings.quic.alpn)
        return c
    }

    /// A client's Initial that carried a valid Retry token: its address is proven.
    struct Retried {
        /// The Destination Connection ID of the client's first Initial, from the token.
        let originalDCID: ConnectionID
        let token: [UInt8]
    }

    /// A server connection for a client's Initial, whose header the server
    /// has read already (`NGPacket.initial`).
    /// `newToken`: the client's Initial carried a NEW_TOKEN token of this
    /// server, valid: its address is proven as by a Retry, without one.
    static func server(
        local: UDPAddress, remote: UDPAddress, initial: NGPacket.Initial, retried: Retried?, newToken: [UInt8]? = nil, settings: NGSettings,
        credentials: TLSCredentials, verifyClient: Bool, resetSecret: [UInt8], scid: ConnectionID,
        delegate: any NGConnectionDelegate
    ) throws(QUICError) -> NGConnection {
        let c = NGConnection(local: local, remote: remote, resetSecret: resetSecret, description: remote.description)
        c.delegate = delegate
        var callbacks = c.makeCallbacks(server: true)
        var s = c.makeSettings(settings)
        var params = c.makeParams(settings)
        params.original_dcid = initial.dcid.ngtcp2
        // After a Retry the client's Initial goes to the id the Retry chose;
        // both ids go into the transport parameters, which the client checks.
        let retryToken = retried?.token ?? newToken ?? []
        if let retried {
            params.original_dcid = retried.originalDCID.ngtcp2
            params.retry_scid = initial.dcid.ngtcp2
            params.retry_scid_present = 1
        }
        var clientSCID = initial.scid.ngtcp2
        var scidC = scid.ngtcp2
        var token = [UInt8](repeating: 0, count: Int(NGTCP2_STATELESS_RESET_TOKENLEN))
        if ngtcp2_crypto_generate_stateless_reset_token(&token, resetSecret, resetSecret.count, &scidC) == 0 {
            withUnsafeMutableBytes(of: &params.stateless_reset_token) { dst in
                token.withUnsafeBytes { dst.copyMemory(from: $0) }
            }
            params.stateless_reset_token_present = 1
        }
        var conn: OpaquePointer?
        // A validated token lifts the anti-amplification limit (ngtcp2 copies it).
        let rv = retryToken.withUnsafeBufferPointer { tokenBytes in
            s.token = ngtcp2_vec(base: UnsafeMutablePointer(mutating: tokenBytes.baseAddress), len: tokenBytes.count)
            return ngtcp2_conn_server_new_versioned(
                &conn, &clientSCID, &scidC, c.path, initial.version, NGTCP2_CALLBACKS_VERSION, &callbacks,
                NGTCP2_SETTINGS_VERSION, &s, NGTCP2_TRANSPORT_PARAMS_VERSION, &params, nil,
                Unmanaged.passUnretained(c).toOpaque())
        }
        guard rv == 0, let conn else { throw .transport("ngtcp2_conn_server_new: \(errorName(rv))") }
        c.conn = conn
        try c.attachTLS(server: true, credentials: credentials, sni: nil, verifyName: nil, verify: verifyClient, alpn: settings.quic.alpn)
        return c
    }

    private func attachTLS(
        server: Bool, credentials: TLSCredentials, sni: String?, verifyName: String?, verify: Bool, alpn: String
    ) throws(QUICError) {
        connRef.pointee.user_data = Unmanaged.passUnretained(self).toOpaque()
        connRef.pointee.get_conn = { ref in
            Unmanaged<NGConnection>.fromOpaque(ref!.pointee.user_data).takeUnretainedValue().conn
        }
        var session: OpaquePointer?
        self.verifyName = verifyName.flatMap { strdup($0) }
        let rv = cngtcp2_tls_session_new(
            &session, server ? 1 : 0, credentials.handle, sni, self.verifyName, verify ? 1 : 0, alpn, connRef)
        guard rv == 0, let session else { throw .tls("creating the TLS session: \(gnutlsMessage(rv))") }
        self.session = session
        self.credentials = credentials
        ngtcp2_conn_set_tls_native_handle(conn, UnsafeMutableRawPointer(session))
    }

    private func makeSettings(_ settings: NGSettings) -> ngtcp2_settings {
        var s = ngtcp2_settings()
        ngtcp2_settings_default_versioned(NGTCP2_SETTINGS_VERSION, &s)
        s.initial_ts = monotonicNow()
        s.handshake_timeout = settings.quic.handshakeTimeout.nanoseconds
        if settings.managedReceiveWindow == nil {
            s.max_stream_window = UInt64(max(settings.quic.maxStreamReceiveWindow, settings.quic.streamReceiveWindow))
            s.max_window = UInt64(max(settings.quic.maxConnectionReceiveWindow, settings.quic.connectionReceiveWindow))
        }
        switch settings.quic.congestionControl.algorithm {
        case .bbr: s.cc_algo = NGTCP2_CC_ALGO_BBR2
        case .cubic: s.cc_algo = NGTCP2_CC_ALGO_CUBIC
        case .reno: s.cc_algo = NGTCP2_CC_ALGO_RENO
        }
        if settings.debugLog { cngtcp2_settings_enable_log(&s) }
        return s
    }

    private func makeParams(_ settings: NGSettings) -> ngtcp2_transport_params {
        var p = ngtcp2_transport_params()
        ngtcp2_transport_params_default_versioned(NGTCP2_TRANSPORT_PARAMS_VERSION, &p)
        // A managed window starts small for the stream and the connection
        // alike (one stream carries all its data) and grows as it is read.
        let stream = UInt64(settings.managedReceiveWindow ?? settings.quic.streamReceiveWindow)
        p.initial_max_stream_data_bidi_local = stream
        p.initial_max_stream_data_bidi_remote = stream
        p.initial_max_stream_data_uni = 0
        p.initial_max_data = UInt64(settings.managedReceiveWindow ?? settings.quic.connectionReceiveWindow)
        // YoMo uses one client-initiated bidirectional stream.
        p.initial_max_streams_bidi = settings.isServer ? 1 : 0
        p.initial_max_streams_uni = 0
        p.max_idle_timeout = settings.quic.idleTimeout.nanoseconds
        p.active_connection_id_limit = 4
        return p
    }

    private func makeCallbacks(server: Bool) -> ngtcp2_callbacks {
        var cb = ngtcp2_callbacks()
        if server {
            cb.recv_client_initial = ngtcp2_crypto_recv_client_initial_cb
        } else {
            cb.client_initial = ngtcp2_crypto_client_initial_cb
            cb.recv_retry = ngtcp2_crypto_recv_retry_cb
            cb.recv_new_token = { _, token, user in
                guard let token, token.pointee.len > 0 else { return 0 }
                NGConnection.from(user).delegate?.ngNewToken(Array(UnsafeBufferPointer(start: token.pointee.base, count: token.pointee.len)))
                return 0
            }
        }
        cb.recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb
        cb.encrypt = ngtcp2_crypto_encrypt_cb
        cb.decrypt = ngtcp2_crypto_decrypt_cb
        cb.hp_mask = ngtcp2_crypto_hp_mask_cb
        cb.update_key = ngtcp2_crypto_update_key_cb
        cb.delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb
        cb.delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb
        cb.get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb
        cb.version_negotiation = ngtcp2_crypto_version_negotiation_cb
        cb.rand = { dest, len, _ in _ = gnutls_rnd(GNUTLS_RND_RANDOM, dest, len) }
        cb.handshake_completed = { _, user in
            NGConnection.from(user).delegate?.ngHandshakeCompleted()
            return 0
        }
        cb.stream_open = { _, id, user in
            NGConnection.from(user).delegate?.ngStreamOpened(id)
            return 0
        }
        cb.recv_stream_data = { _, flags, id, _, data, len, user, _ in
            let fin = flags & UInt32(NGTCP2_STREAM_DATA_FLAG_FIN) != 0
            NGConnection.from(user).delegate?.ngStreamData(id, UnsafeRawBufferPointer(start: data, count: len), fin: fin)
            return 0
        }
        cb.acked_stream_data_offset = { _, id, _, len, user, _ in
            NGConnection.from(user).delegate?.ngStreamAcked(id, length: len)
            return 0
        }
        cb.stream_close = { _, flags, id, code, user, _ in
            let hasCode = flags & UInt32(NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET) != 0
            NGConnection.from(user).delegate?.ngStreamClosed(id, appErrorCode: hasCode ? code : nil)
            return 0
        }
        cb.stream_reset = { _, id, _, code, user, _ in
            NGConnection.from(user).delegate?.ngStreamReset(id, appErrorCode: code)
            return 0
        }
        cb.stream_stop_sending = { _, id, code, user, _ in
            NGConnection.from(user).delegate?.ngStreamReset(id, appErrorCode: code)
            return 0
        }
        cb.recv_stateless_reset = { _, _, user in
            NGConnection.from(user).delegate?.ngStatelessReset()
            return 0
        }
        cb.extend_max_local_streams_bidi = { _, _, user in
            NGConnection.from(user).delegate?.ngExtendMaxLocalBidiStreams()
            return 0
        }
        cb.get_new_connection_id = { _, cidOut, token, cidlen, user in
            let c = NGConnection.from(user)
            let cid = ConnectionID.random(length: cidlen)
            cidOut!.pointee = cid.ngtcp2
            if c.resetSecret.isEmpty {
                gnutls_rnd(GNUTLS_RND_NONCE, token, Int(NGTCP2_STATELESS_RESET_TOKENLEN))
            } else if ngtcp2_crypto_generate_stateless_reset_token(token, c.resetSecret, c.resetSecret.count, cidOut) != 0 {
                return NGTCP2_ERR_CALLBACK_FAILURE
            }
            c.delegate?.ngNewConnectionID(cid)
            return 0
        }
        cb.remove_connection_id = { _, cid, user in
            NGConnection.from(user).delegate?.ngRemoveConnectionID(ConnectionID(cid!.pointee))
            return 0
        }
        return cb
    }

    @inline(__always)
    private static func from(_ user: UnsafeMutableRawPointer?) -> NGConnection {
        Unmanaged<NGConnection>.fromOpaque(user!).takeUnretainedValue()
    }

    // MARK: Operations

    /// Feeds one received datagram.
    func read(_ packet: UnsafeRawBufferPointer, from remote: UDPAddress, now: UInt64) -> NGOutcome {
        var pi = ngtcp2_pkt_info()
        var p = path.pointee
        let rv = remote.withSockaddr { addr, len -> Int32 in
            p.remote.addr = UnsafeMutablePointer(mutating: addr)
            p.remote.addrlen = len
            return ngtcp2_conn_read_pkt_versioned(
                conn, &p, NGTCP2_PKT_INFO_VERSION, &pi, packet.baseAddress!.assumingMemoryBound(to: UInt8.self),
                packet.count, now)
        }
        return outcome(rv)
    }

    private func outcome(_ rv: Int32) -> NGOutcome {
        if rv == 0 { return .ok }
        switch rv {
        case NGTCP2_ERR_DRAINING:
            return .draining
        case NGTCP2_ERR_DROP_CONN:
            return .drop(.transport("connection dropped"))
        case NGTCP2_ERR_IDLE_CLOSE:
            return .drop(.idleTimeout(description))
        case NGTCP2_ERR_HANDSHAKE_TIMEOUT:
            return .drop(.handshakeTimeout(description))
        case NGTCP2_ERR_CRYPTO:
            let alert = ngtcp2_conn_get_tls_alert(conn)
            ngtcp2_connection_close_error_set_transport_error_tls_alert(&closeError, alert, nil, 0)
            return .failed(.tlsAlert(alert, remote: false, description))
        default:
            ngtcp2_connection_close_error_set_transport_error_liberr(&closeError, rv, nil, 0)
            return .failed(.transport("\(errorName(rv)) (\(description))"))
        }
    }

    /// The peer's CONNECTION_CLOSE as an error.
    func peerCloseError() -> QUICError {
        var cc = ngtcp2_connection_close_error()
        ngtcp2_conn_get_connection_close_error(conn, &cc)
        let reason = cc.reasonlen > 0 && cc.reason != nil
            ? String(decoding: UnsafeRawBufferPointer(start: cc.reason, count: cc.reasonlen), as: UTF8.self) : ""
        if cc.type == NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_APPLICATION {
            return .closedByPeer(application: cc.error_code, reason: reason)
        }
        return .closedByPeer(transport: cc.error_code, reason: reason)
    }

    /// Handles an expired timer (retransmission, keep-alive, idle, handshake timeout).
    func handleExpiry(now: UInt64) -> NGOutcome {
        outcome(ngtcp2_conn_handle_expiry(conn, now))
    }

    var expiry: UInt64 { ngtcp2_conn_get_expiry(conn) }
    var pto: UInt64 { ngtcp2_conn_get_pto(conn) }

    /// RTT, congestion window and the like, from ngtcp2's connection statistics.
    func readStatistics(into statistics: inout QUICConnection.Statistics, stream: Int64?) {
        // Packets carrying the stream's data that were declared lost (spurious
        // losses included): ngtcp2 0.12.1 keeps no other loss count.
        if let stream { statistics.packetsLost = lossCount(stream: stream) }
        let stat = connectionStatistics
        statistics.smoothedRTT = .nanoseconds(Int64(stat.smoothed_rtt))
        statistics.minimumRTT = stat.min_rtt == UInt64.max ? .zero : .nanoseconds(Int64(stat.min_rtt))
        statistics.congestionWindow = Int(stat.cwnd)
        statistics.bytesInFlight = Int(stat.bytes_in_flight)
        statistics.probeTimeouts = Int(stat.pto_count)
        let pacing = stat.pacing_rate * Double(NGTCP2_SECONDS)
        statistics.pacingRate = pacing.isFinite && pacing > 0 ? Int(min(pacing, 1e15)) : 0
    }
    /// Smoothed round-trip time, in nanoseconds.
    var smoothedRTT: UInt64 { connectionStatistics.smoothed_rtt }
    /// Probe timeouts in a row now (reset by an acknowledgement).
    var probeTimeoutsInARow: Int { Int(connectionStatistics.pto_count) }
    private var connectionStatistics: ngtcp2_conn_stat {
        var stat = ngtcp2_conn_stat()
        ngtcp2_conn_get_conn_stat_versioned(conn, NGTCP2_CONN_STAT_VERSION, &stat)
        return stat
    }
    /// Packets with the stream's data declared lost so far.
    func lossCount(stream: Int64) -> Int { Int(ngtcp2_conn_get_stream_loss_count(conn, stream)) }
    var maxPacketSize: Int { ngtcp2_conn_get_path_max_tx_udp_payload_size(conn) }
    /// The largest datagram ngtcp2 may write: a Path MTU Discovery probe. It
    /// writes probes only into a buffer this big; other packets stay within
    /// `maxPacketSize`, which grows as probes succeed.
    var maxProbeSize: Int { ngtcp2_conn_get_max_tx_udp_payload_size(conn) }
    var sendQuantum: Int { ngtcp2_conn_get_send_quantum(conn) }
    var isHandshakeCompleted: Bool { ngtcp2_conn_get_handshake_completed(conn) != 0 }

    /// Sends the client a token for its next connection (server; a NEW_TOKEN frame).
    @discardableResult
    func submitNewToken(_ token: [UInt8]) -> Bool {
        guard !token.isEmpty else { return false }
        return ngtcp2_conn_submit_new_token(conn, token, token.count) == 0
    }

    func setKeepAlive(_ interval: UInt64) { ngtcp2_conn_set_keep_alive_timeout(conn, interval) }

    func openBidiStream() -> Int64? {
        var id: Int64 = -1
        return ngtcp2_conn_open_bidi_stream(conn, &id, nil) == 0 ? id : nil
    }

    func extendReceiveWindow(stream: Int64, by n: Int) {
        ngtcp2_conn_extend_max_stream_offset(conn, stream, UInt64(n))
        ngtcp2_conn_extend_max_offset(conn, UInt64(n))
    }

    func shutdownStream(_ id: Int64, code: UInt64) { ngtcp2_conn_shutdown_stream(conn, id, code) }

    /// Writes one packet into `dest`, taking stream data from `data` when `stream` is set.
    func write(
        into dest: UnsafeMutableRawBufferPointer, stream: Int64?, data: UnsafeMutablePointer<ngtcp2_vec>?,
        count: Int, fin: Bool, more: Bool, now: UInt64
    ) -> NGWriteResult {
        var flags = UInt32(0)
        if more { flags |= UInt32(NGTCP2_WRITE_STREAM_FLAG_MORE) }
        if fin { flags |= UInt32(NGTCP2_WRITE_STREAM_FLAG_FIN) }
        var consumed: ngtcp2_ssize = -1
        var pi = ngtcp2_pkt_info()
        let n = ngtcp2_conn_writev_stream_versioned(
            conn, UnsafeMutableRawPointer(txPath).assumingMemoryBound(to: ngtcp2_path.self), NGTCP2_PKT_INFO_VERSION, &pi, dest.baseAddress!.assumingMemoryBound(to: UInt8.self),
            dest.count, &consumed, flags, stream ?? -1, data, count, now)
        if n > 0 { return .packet(length: n, consumed: consumed) }
        if n == 0 { return .idle }
        switch Int32(n) {
        case NGTCP2_ERR_WRITE_MORE: return .more(consumed: Int(consumed))
        case NGTCP2_ERR_STREAM_DATA_BLOCKED, NGTCP2_ERR_STREAM_SHUT_WR, NGTCP2_ERR_STREAM_NOT_FOUND:
            return .streamBlocked
        default:
            ngtcp2_connection_close_error_set_transport_error_liberr(&closeError, Int32(n), nil, 0)
            return .failed(.transport("write: \(errorName(Int32(n))) (\(description))"))
        }
    }

    /// Advances ngtcp2's pacer. Skipped until the handshake completes: before the
    /// first RTT sample 0.12.1 paces with the 333 ms initial RTT, which holds the
    /// client's Finished back ~25 ms.
    /// Whether the last packet written goes to `address` (else the peer migrated).
    func lastPacketGoes(to address: UDPAddress) -> Bool {
        let remote = txPath.pointee.path.remote
        guard remote.addrlen > 0, let addr = remote.addr else { return true }
        return address.withSockaddr { a, len in len == remote.addrlen && memcmp(a, addr, Int(len)) == 0 }
    }

    /// The destination of the last packet written.
    func lastPacketRemote() -> UDPAddress {
        var address = UDPAddress()
        let remote = txPath.pointee.path.remote
        withUnsafeMutableBytes(of: &address.storage) { raw in
            raw.copyMemory(from: UnsafeRawBufferPointer(start: remote.addr, count: Int(remote.addrlen)))
        }
        address.length = remote.addrlen
        return address
    }

    func packetsSent(now: UInt64) {
        if ngtcp2_conn_get_handshake_completed(conn) != 0 { ngtcp2_conn_update_pkt_tx_time(conn, now) }
    }

    /// Writes a CONNECTION_CLOSE: the pending local error, or an application close.
    func writeClose(into dest: UnsafeMutableRawBufferPointer, application code: UInt64?, reason: String, now: UInt64) -> Int {
        var reasonBytes = Array(reason.utf8.prefix(512))
        if let code {
            reasonBytes.withUnsafeMutableBufferPointer { r in
                ngtcp2_connection_close_error_set_application_error(&closeError, code, r.baseAddress, r.count)
                // ngtcp2 copies the reason while writing below.
            }
        }
        var pi = ngtcp2_pkt_info()
        return reasonBytes.withUnsafeMutableBufferPointer { r -> Int in
            if code != nil { closeError.reason = r.baseAddress; closeError.reasonlen = r.count }
            let n = ngtcp2_conn_write_connection_close_versioned(
                conn, nil, NGTCP2_PKT_INFO_VERSION, &pi, dest.baseAddress!.assumingMemoryBound(to: UInt8.self),
                dest.count, &closeError, now)
            closeError.reason = nil
            closeError.reasonlen = 0
            return n > 0 ? n : 0
        }
    }

    var isInClosingOrDraining: Bool {
        ngtcp2_conn_is_in_closing_period(conn) != 0 || ngtcp2_conn_is_in_draining_period(conn) != 0
    }

    /// The ids this connection may be addressed by (server routing).
    func sourceIDs() -> [ConnectionID] {
        let n = ngtcp2_conn_get_num_scid(conn)
        var ids = [ngtcp2_cid](repeating: ngtcp2_cid(), count: n)
        _ = ngtcp2_conn_get_scid(conn, &ids)
        return ids.map(ConnectionID.init)
    }

    func clientInitialDCID() -> ConnectionID? {
        guard let p = ngtcp2_conn_get_client_initial_dcid(conn) else { return nil }
        return ConnectionID(p.pointee)
    }
}

/// Packet-level helpers that need no connection (server dispatch).
enum NGPacket {
    enum Decoded {
        case long(version: UInt32, dcid: ConnectionID, scid: ConnectionID)
        case short(dcid: ConnectionID)
        case versionNegotiation(version: UInt32, dcid: ConnectionID, scid: ConnectionID)
        case invalid
    }

    static func decode(_ data: UnsafeRawBufferPointer, shortDCIDLength: Int) -> Decoded {
        guard data.count > 0 else { return .invalid }
        var vc = ngtcp2_version_cid()
        let rv = ngtcp2_pkt_decode_version_cid(
            &vc, data.baseAddress!.assumingMemoryBound(to: UInt8.self), data.count, shortDCIDLength)
        let dcid = vc.dcid == nil ? ConnectionID(UnsafeRawBufferPointer(start: nil, count: 0))
            : ConnectionID(UnsafeRawBufferPointer(start: vc.dcid, count: vc.dcidlen))
        let scid = vc.scid == nil ? ConnectionID(UnsafeRawBufferPointer(start: nil, count: 0))
            : ConnectionID(UnsafeRawBufferPointer(start: vc.scid, count: vc.scidlen))
        if rv == NGTCP2_ERR_VERSION_NEGOTIATION { return .versionNegotiation(version: vc.version, dcid: dcid, scid: scid) }
        guard rv == 0 else { return .invalid }
        if data[0] & 0x80 != 0 { return .long(version: vc.version, dcid: dcid, scid: scid) }
        return .short(dcid: dcid)
    }

    static func isInitial(_ data: UnsafeRawBufferPointer) -> Bool {
        // Long header, type bits 00 = Initial (QUIC v1).
        data.count > 0 && data[0] & 0xB0 == 0x80
    }

    /// What a server decides a client's first Initial on, before it holds any state for it.
    struct Initial {
        let version: UInt32
        let dcid: ConnectionID
        let scid: ConnectionID
        /// From a Retry, or from a NEW_TOKEN frame of an earlier connection; empty if none.
        let token: [UInt8]

        /// Whether the token is one a Retry carried (ngtcp2's tokens start with a magic byte).
        var hasRetryToken: Bool { token.first == UInt8(NGTCP2_CRYPTO_TOKEN_MAGIC_RETRY) }
        /// Whether the token is one a NEW_TOKEN frame carried (ngtcp2's regular token).
        var hasNewToken: Bool { token.first == UInt8(NGTCP2_CRYPTO_TOKEN_MAGIC_REGULAR) }
    }

    /// The header of a client's Initial, or nil when ngtcp2 would not accept it.
    static func initial(_ datagram: UnsafeRawBufferPointer) -> Initial? {
        var hd = ngtcp2_pkt_hd()
        guard ngtcp2_accept(&hd, datagram.baseAddress!.assumingMemoryBound(to: UInt8.self), datagram.count) == 0 else { return nil }
        let token = hd.token.len > 0 ? Array(UnsafeBufferPointer(start: hd.token.base, count: hd.token.len)) : []
        return Initial(version: hd.version, dcid: ConnectionID(hd.dcid), scid: ConnectionID(hd.scid), token: token)
    }

    /// A Retry answering `initial`: the client is to send its Initial again to
    /// `scid`, with `token`, from the same address.
    static func writeRetry(into dest: UnsafeMutableRawBufferPointer, answering initial: Initial, scid: ConnectionID, token: [UInt8]) -> Int {
        var d = initial.scid.ngtcp2, s = scid.ngtcp2, original = initial.dcid.ngtcp2
        let n = ngtcp2_crypto_write_retry(
            dest.baseAddress!.assumingMemoryBound(to: UInt8.self), dest.count, initial.version, &d, &s, &original, token, token.count)
        return n > 0 ? n : 0
    }

    /// A CONNECTION_CLOSE with a transport error (INVALID_TOKEN,
    /// CONNECTION_REFUSED) in an Initial packet, holding no state: the client's
    /// dial fails at once rather than at its handshake timeout.
    static func writeStatelessClose(
        into dest: UnsafeMutableRawBufferPointer, answering initial: Initial, error: UInt64, reason: String
    ) -> Int {
        var d = initial.scid.ngtcp2, s = initial.dcid.ngtcp2
        let reason = Array(reason.utf8)
        let n = ngtcp2_crypto_write_connection_close(
            dest.baseAddress!.assumingMemoryBound(to: UInt8.self), dest.count, initial.version, &d, &s, error, reason, reason.count)
        return n > 0 ? n : 0
    }

    /// Version Negotiation offering v1, echoing the client's ids swapped.
    static func writeVersionNegotiation(into dest: UnsafeMutableRawBufferPointer, dcid: ConnectionID, scid: ConnectionID) -> Int {
        var versions: [UInt32] = [UInt32(NGTCP2_PROTO_VER_V1)]
        var unused: UInt8 = 0
        gnutls_rnd(GNUTLS_RND_NONCE, &unused, 1)
        var d = scid.ngtcp2, s = dcid.ngtcp2
        let n = withUnsafeBytes(of: &d.data) { dp in
            withUnsafeBytes(of: &s.data) { sp in
                ngtcp2_pkt_write_version_negotiation(
                    dest.baseAddress!.assumingMemoryBound(to: UInt8.self), dest.count, unused,
                    dp.baseAddress!.assumingMemoryBound(to: UInt8.self), d.datalen,
                    sp.baseAddress!.assumingMemoryBound(to: UInt8.self), s.datalen, &versions, versions.count)
            }
        }
        return n > 0 ? n : 0
    }

    /// A stateless reset for `dcid`, smaller than the packet that provoked it (RFC 9000 §10.3.3).
    static func writeStatelessReset(
        into dest: UnsafeMutableRawBufferPointer, dcid: ConnectionID, secret: [UInt8], triggerLength: Int
    ) -> Int {
        // RFC 9000 §10.3: at least 21 bytes, and smaller than the packet that
        // triggered it (so two endpoints cannot loop). A keep-alive PING is ~40
        // bytes: answering it is how an idle client learns of a restart at once.
        let minimum = 21
        guard triggerLength > minimum else { return 0 }
        var cid = dcid.ngtcp2
        var token = [UInt8](repeating: 0, count: Int(NGTCP2_STATELESS_RESET_TOKENLEN))
        guard ngtcp2_crypto_generate_stateless_reset_token(&token, secret, secret.count, &cid) == 0 else { return 0 }
        let randomLength = min(triggerLength - 1, 1200) - Int(NGTCP2_STATELESS_RESET_TOKENLEN)
        var random = [UInt8](repeating: 0, count: randomLength)
        gnutls_rnd(GNUTLS_RND_NONCE, &random, randomLength)
        let n = ngtcp2_pkt_write_stateless_reset(
            dest.baseAddress!.assumingMemoryBound(to: UInt8.self), dest.count, &token, &random, randomLength)
        return n > 0 ? n : 0
    }
}

func errorName(_ rv: Int32) -> String {
    String(cString: ngtcp2_strerror(rv))
}
