import Foundation
import NIOCore
import Testing
@testable import YoMoQUIC

@Suite("TLS: verification and mutual TLS")
struct TLSTests {
    let certs = Certificates.shared

    var serverTLS: ServerTLSConfiguration {
        ServerTLSConfiguration(certificateFile: certs.serverCert, privateKeyFile: certs.serverKey)
    }

    @Test("verification succeeds with the right CA and server name")
    func verifySuccess() async throws {
        let server = try await EchoServer(tls: serverTLS)
        for name in ["localhost", "127.0.0.1"] {
            let tls = TLSConfiguration(verifyPeer: true, caFile: certs.caCert, serverName: name)
            let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port, tls: tls)
            #expect(String(buffer: try await echo(connection, ByteBuffer(string: "ok"))) == "ok")
            await connection.close()
        }
        await server.stop()
    }

    @Test("verification fails with the wrong CA: bad certificate")
    func verifyWrongCA() async throws {
        let server = try await EchoServer(tls: serverTLS)
        let tls = TLSConfiguration(verifyPeer: true, caFile: certs.otherCACert, serverName: "localhost")
        let error = await #expect(throws: QUICError.self) {
            _ = try await QUICConnection.connect(host: "127.0.0.1", port: server.port, tls: tls)
        }
        #expect(error?.kind == .tlsAlert)
        #expect(error?.tlsAlertName == "bad certificate")
        #expect(error?.isRemote == false)
        #expect(error.map { "\($0)" }?.contains("bad certificate") == true)
        await server.stop()
    }

    @Test("verification fails with the wrong server name")
    func verifyWrongName() async throws {
        let server = try await EchoServer(tls: serverTLS)
        let tls = TLSConfiguration(verifyPeer: true, caFile: certs.caCert, serverName: "zipper.example.com")
        let error = await #expect(throws: QUICError.self) {
            _ = try await QUICConnection.connect(host: "127.0.0.1", port: server.port, tls: tls)
        }
        #expect(error?.kind == .tlsAlert)
        await server.stop()
    }

    @Test("the default (no verification) accepts the self-signed server certificate")
    func noVerification() async throws {
        let server = try await EchoServer()
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        #expect(String(buffer: try await echo(connection, ByteBuffer(string: "ok"))) == "ok")
        await connection.close()
        await server.stop()
    }

    @Test("mutual TLS: a client certificate from the trusted CA is accepted")
    func mutualAccepted() async throws {
        var tls = serverTLS
        tls.clientCAFile = certs.caCert
        let server = try await EchoServer(tls: tls)
        let client = TLSConfiguration(
            verifyPeer: true, caFile: certs.caCert, serverName: "localhost",
            certificateFile: certs.clientCert, privateKeyFile: certs.clientKey)
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port, tls: client)
        #expect(String(buffer: try await echo(connection, ByteBuffer(string: "mtls"))) == "mtls")
        await connection.close()
        await server.stop()
    }

    @Test("mutual TLS: no certificate, or one from another CA, is refused", arguments: [false, true])
    func mutualRefused(presentOtherCertificate: Bool) async throws {
        var tls = serverTLS
        tls.clientCAFile = certs.caCert
        let server = try await EchoServer(tls: tls)
        let client = TLSConfiguration(
            certificateFile: presentOtherCertificate ? certs.otherClientCert : nil,
            privateKeyFile: presentOtherCertificate ? certs.otherClientKey : nil)
        // TLS 1.3: the client may finish its side before the server rejects it, so
        // the refusal shows on connect or on the first read.
        let error = await #expect(throws: QUICError.self) {
            let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port, tls: client)
            _ = try await echo(connection, ByteBuffer(string: "refused?"))
        }
        #expect(error?.kind == .tlsAlert)
        #expect(error?.isRemote == true)
        await server.stop()
    }

    @Test("TLS configuration from the YOMO_TLS_* environment")
    func environment() {
        let none = TLSConfiguration.fromEnvironment([:])
        #expect(none == TLSConfiguration())
        #expect(none.verifyPeer == false)
        let full = TLSConfiguration.fromEnvironment([
            "YOMO_TLS_VERIFY_PEER": "true", "YOMO_TLS_CACERT_FILE": "/ca.pem",
            "YOMO_TLS_CERT_FILE": "/c.pem", "YOMO_TLS_KEY_FILE": "/c.key",
        ])
        #expect(full == TLSConfiguration(verifyPeer: true, caFile: "/ca.pem", certificateFile: "/c.pem", privateKeyFile: "/c.key"))
        #expect(TLSConfiguration.fromEnvironment(["YOMO_TLS_VERIFY_PEER": "false"]).verifyPeer == false)
    }

    @Test("unreadable CA file is a clear TLS error")
    func missingCAFile() async throws {
        let error = await #expect(throws: QUICError.self) {
            _ = try await QUICConnection.connect(
                host: "127.0.0.1", port: 9, tls: TLSConfiguration(verifyPeer: true, caFile: "/nonexistent/ca.pem"))
        }
        #expect(error?.kind == .tls)
        #expect(error.map { "\($0)" }?.contains("/nonexistent/ca.pem") == true)
    }
}
