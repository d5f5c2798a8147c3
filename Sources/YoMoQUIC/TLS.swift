import CNGTCP2

/// gnutls certificate credentials, freed with the last connection using them.
final class TLSCredentials: @unchecked Sendable {
    let handle: gnutls_certificate_credentials_t

    private init() throws(QUICError) {
        var cred: gnutls_certificate_credentials_t?
        let rv = gnutls_certificate_allocate_credentials(&cred)
        guard rv == 0, let cred else { throw .tls("allocating credentials: \(gnutlsMessage(rv))") }
        handle = cred
    }

    deinit { gnutls_certificate_free_credentials(handle) }

    convenience init(client tls: TLSConfiguration) throws(QUICError) {
        try self.init()
        if tls.verifyPeer {
            if let ca = tls.caFile {
                let n = gnutls_certificate_set_x509_trust_file(handle, ca, GNUTLS_X509_FMT_PEM)
                if n < 0 { throw .tls("reading CA file \(ca): \(gnutlsMessage(n))") }
                if n == 0 { throw .tls("no CA certificate in \(ca)") }
            } else {
                let n = gnutls_certificate_set_x509_system_trust(handle)
                if n < 0 { throw .tls("loading the system trust store: \(gnutlsMessage(n))") }
            }
        }
        try loadKeyPair(certificate: tls.certificateFile, key: tls.privateKeyFile)
    }

    convenience init(server tls: ServerTLSConfiguration) throws(QUICError) {
        try self.init()
        if tls.certificateFile == nil && tls.privateKeyFile == nil {
            let rv = cngtcp2_set_self_signed(handle)
            if rv != 0 { throw .tls("generating a self-signed certificate: \(gnutlsMessage(rv))") }
        } else {
            try loadKeyPair(certificate: tls.certificateFile, key: tls.privateKeyFile)
        }
        if let ca = tls.clientCAFile {
            let n = gnutls_certificate_set_x509_trust_file(handle, ca, GNUTLS_X509_FMT_PEM)
            if n < 0 { throw .tls("reading client CA file \(ca): \(gnutlsMessage(n))") }
            if n == 0 { throw .tls("no CA certificate in \(ca)") }
        }
    }

    private func loadKeyPair(certificate: String?, key: String?) throws(QUICError) {
        switch (certificate, key) {
        case (nil, nil): return
        case let (cert?, key?):
            let rv = gnutls_certificate_set_x509_key_file(handle, cert, key, GNUTLS_X509_FMT_PEM)
            if rv < 0 { throw .tls("loading certificate \(cert) / key \(key): \(gnutlsMessage(rv))") }
        default:
            throw .invalidConfiguration("a certificate file needs a key file and vice versa")
        }
    }
}

func gnutlsMessage(_ code: Int32) -> String {
    String(cString: gnutls_strerror(code))
}
