import Glibc
import Testing
@testable import YoMoQUIC

@Suite("Configuration and errors")
struct ConfigurationTests {
    @Test("defaults: keep-alive 1 s (fast restart detection), handshake 3 s, idle 40 s, 2 MiB windows, ALPN yomo")
    func defaults() {
        let c = QUICConfiguration.default
        #expect(c.keepAliveInterval == .seconds(1))
        #expect(c.handshakeTimeout == .seconds(3))
        #expect(c.idleTimeout == .seconds(40))
        #expect(c.streamReceiveWindow == 2 << 20)
        #expect(c.connectionReceiveWindow == 2 << 20)
        #expect(c.alpn == "yomo")
        #expect(TLSConfiguration.default.verifyPeer == false)
    }

    @Test("congestion control: bbr by default; YOMO_QUIC_CONGESTION_CONTROL names another in any case, and a name that is none keeps bbr")
    func congestionControlNames() {
        #expect(QUICConfiguration.CongestionControl(environmentValue: nil) == .bbr)
        #expect(QUICConfiguration.CongestionControl(environmentValue: "") == .bbr)
        #expect(QUICConfiguration.CongestionControl(environmentValue: "CUBIC") == .cubic)
        #expect(QUICConfiguration.CongestionControl(environmentValue: "reno") == .reno)
        #expect(QUICConfiguration.CongestionControl(environmentValue: "vegas") == .bbr)
        #expect(QUICConfiguration.CongestionControl("Bbr") == .bbr)
        #expect(QUICConfiguration.CongestionControl("bbr2") == nil)
        #expect(QUICConfiguration.CongestionControl.all.map(\.description) == ["cubic", "reno", "bbr"])
        // The test process sets no variable: the default is bbr.
        #expect(getenv("YOMO_QUIC_CONGESTION_CONTROL") != nil || QUICConfiguration.default.congestionControl == .bbr)
    }

    @Test("invalid settings are refused before any socket is made")
    func invalid() async {
        var c = QUICConfiguration.default
        c.handshakeTimeout = .zero
        let error = await #expect(throws: QUICError.self) {
            _ = try await QUICConnection.connect(host: "127.0.0.1", port: 9, configuration: c)
        }
        #expect(error?.kind == .invalidConfiguration)
    }

    @Test("errors say what happened")
    func descriptions() {
        let peerClose = QUICError.closedByPeer(application: 0x13, reason: "sfn done")
        #expect(peerClose.kind == .closedByPeer && !peerClose.isListenerShutdown)
        #expect("\(peerClose)".contains("0x13") && "\(peerClose)".contains("sfn done"))
        let shutdown = QUICError.closedByPeer(application: 0, reason: "")
        #expect(shutdown.isListenerShutdown)
        #expect("\(shutdown)".contains("listener shut down"))
        // A transport close with a crypto error code carries a TLS alert (RFC 9001 §4.8).
        let alert = QUICError.closedByPeer(transport: 0x100 + 42, reason: "")
        #expect(alert.kind == .tlsAlert && alert.tlsAlertName == "bad certificate" && alert.isRemote)
        #expect("\(QUICError.idleTimeout("1.2.3.4:9000"))".contains("idle timeout"))
        #expect("\(QUICError.handshakeTimeout("x"))".contains("handshake timeout"))
        #expect("\(QUICError.addressResolution("nowhere", "Name or service not known"))".contains("nowhere"))
    }
}
