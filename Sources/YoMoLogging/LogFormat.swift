/// How a record is rendered. Compare with the static members; new formats can
/// be added without breaking callers.
public struct LogFormat: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable {
        case text
        case json
        case logfmt
    }

    let kind: Kind

    private init(_ kind: Kind) {
        self.kind = kind
    }

    /// For people: `2026-11-25T13:21:25.123Z INFO  label: message key=value`,
    /// levels coloured when the sink is a terminal.
    public static let text = LogFormat(.text)
    /// One JSON object per line: `{"time":…,"level":"INFO","msg":…,"logger":…, fields…}`.
    public static let json = LogFormat(.json)
    /// One logfmt line per record: `time=… level=INFO msg="…" logger=… key=value`.
    public static let logfmt = LogFormat(.logfmt)

    /// Parses `text`, `json` or `logfmt` (case-insensitive, surrounding spaces ignored).
    public init?(name: String) {
        switch name.trimmingSpaces().lowercased() {
        case "text": self = .text
        case "json": self = .json
        case "logfmt": self = .logfmt
        default: return nil
        }
    }

    public var description: String {
        switch kind {
        case .text: "text"
        case .json: "json"
        case .logfmt: "logfmt"
        }
    }
}

extension StringProtocol {
    func trimmingSpaces() -> String {
        var slice = Substring(self)
        while let first = slice.first, first == " " || first == "\t" || first == "\n" || first == "\r" { slice.removeFirst() }
        while let last = slice.last, last == " " || last == "\t" || last == "\n" || last == "\r" { slice.removeLast() }
        return String(slice)
    }
}
