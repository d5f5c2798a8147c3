/// Text a peer chose (a span name, a rejection, a service name), made safe to
/// show and to log: whoever sent it must not drive the reader's terminal, nor
/// fill a log line with megabytes.

/// `text` as a terminal shows it literally: control characters (which a
/// sender could use to move the cursor, clear the screen or retitle the
/// window) written as escapes, `\n` for a newline, `\x1b` for ESC.
package func terminalSafe(_ text: String) -> String {
    func isControl(_ scalar: Unicode.Scalar) -> Bool { scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) }
    guard text.unicodeScalars.contains(where: isControl) else { return text }
    var safe = ""
    safe.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\n": safe += "\\n"
        case "\r": safe += "\\r"
        case "\t": safe += "\\t"
        case _ where isControl(scalar):
            let hex = String(scalar.value, radix: 16)
            safe += "\\x" + (hex.count < 2 ? "0" : "") + hex
        default: safe.unicodeScalars.append(scalar)
        }
    }
    return safe
}

extension String {
    /// `self` cut to `limit` characters, saying the full length when cut, with
    /// control characters escaped (``terminalSafe(_:)``).
    package func peerText(limit: Int) -> String {
        guard utf8.count > limit else { return terminalSafe(self) }
        return "\(terminalSafe(String(prefix(limit))))… (\(utf8.count) bytes)"
    }
}
