import Testing
@testable import YoMoWire

@Suite("Text a peer chose")
struct PeerTextTests {
    @Test("control characters become escapes; printable text and other scripts stay as they are")
    func escapes() {
        #expect(terminalSafe("plain: ünïcode ✓") == "plain: ünïcode ✓")
        #expect(terminalSafe("a\u{1B}[2Jb\nc\td\re\u{7F}f\u{9B}g\u{0}") == "a\\x1b[2Jb\\nc\\td\\re\\x7ff\\x9bg\\x00")
    }

    @Test("cut to the limit with the whole length said, escaped after cutting; short text is only escaped")
    func cut() {
        #expect("short\u{7}".peerText(limit: 8) == "short\\x07")
        #expect("12345678".peerText(limit: 8) == "12345678")
        #expect("123456789".peerText(limit: 8) == "12345678… (9 bytes)")
        // The limit counts characters; the length, bytes.
        #expect("\u{1B}é234567890".peerText(limit: 3) == "\\x1bé2… (12 bytes)")
        let long = String(repeating: "x", count: 1 << 20)
        #expect(long.peerText(limit: 512).utf8.count == 512 + "… (1048576 bytes)".utf8.count)
    }
}
