import Logging
import YoMoTracing

/// Renders records into bytes. Encoding happens on the logging thread (it must
/// read the record and the task-local trace context there); only the finished
/// bytes cross to the writer thread.
struct RecordEncoder {
    let kind: LogFormat.Kind
    let includeSource: Bool
    let colored: Bool

    // MARK: Record frame

    func appendHeader(
        _ out: inout [UInt8], timeNanoseconds: UInt64, level: Logger.Level, label: String, message: String
    ) {
        switch kind {
        case .json:
            out.append(contentsOf: #"{"time":""#.utf8)
            appendTimestamp(timeNanoseconds, fractionDigits: 6, &out)
            out.append(contentsOf: #"","level":""#.utf8)
            out.append(contentsOf: levelName(level).utf8)
            out.append(contentsOf: #"","msg":"#.utf8)
            appendJSONString(message, &out)
            if !label.isEmpty {
                out.append(contentsOf: #","logger":"#.utf8)
                appendJSONString(label, &out)
            }
        case .logfmt:
            out.append(contentsOf: "time=".utf8)
            appendTimestamp(timeNanoseconds, fractionDigits: 6, &out)
            out.append(contentsOf: " level=".utf8)
            out.append(contentsOf: levelName(level).utf8)
            out.append(contentsOf: " msg=".utf8)
            appendLogfmtValue(message, &out)
            if !label.isEmpty {
                out.append(contentsOf: " logger=".utf8)
                appendLogfmtValue(label, &out)
            }
        case .text:
            appendTimestamp(timeNanoseconds, fractionDigits: 3, &out)
            out.append(UInt8(ascii: " "))
            if colored { out.append(contentsOf: levelColor(level).utf8) }
            let name = levelName(level)
            out.append(contentsOf: name.utf8)
            if colored { out.append(contentsOf: "\u{1B}[0m".utf8) }
            if name.utf8.count < 5 { for _ in name.utf8.count..<5 { out.append(UInt8(ascii: " ")) } }
            out.append(UInt8(ascii: " "))
            if !label.isEmpty {
                out.append(contentsOf: label.utf8)
                out.append(contentsOf: ": ".utf8)
            }
            appendTextMessage(message, &out)
        }
    }

    func appendSource(_ out: inout [UInt8], source: String, file: String, line: UInt) {
        switch kind {
        case .json:
            out.append(contentsOf: #","source":"#.utf8)
            appendJSONString(source, &out)
            out.append(contentsOf: #","file":"#.utf8)
            appendJSONString(file, &out)
            out.append(contentsOf: #","line":"#.utf8)
            appendDecimal(UInt64(line), &out)
        case .logfmt, .text:
            out.append(contentsOf: " source=".utf8)
            appendLogfmtValue(source, &out)
            out.append(contentsOf: " file=".utf8)
            appendLogfmtValue(file, &out)
            out.append(contentsOf: " line=".utf8)
            appendDecimal(UInt64(line), &out)
        }
    }

    func appendTrailer(_ out: inout [UInt8]) {
        if kind == .json { out.append(UInt8(ascii: "}")) }
        out.append(UInt8(ascii: "\n"))
    }

    // MARK: Fields

    /// Metadata keys equal to the record's own keys get this prefix, so a JSON
    /// object never holds a key twice.
    static let reservedKeyPrefix = "fields."

    func isReserved(_ key: String) -> Bool {
        guard kind != .text else { return false }
        switch key {
        case "time", "level", "msg", "logger": return true
        case "source", "file", "line": return includeSource
        default: return false
        }
    }

    func appendField(_ key: String, _ value: Logger.Metadata.Value, _ out: inout [UInt8]) {
        let key = isReserved(key) ? Self.reservedKeyPrefix + key : key
        switch kind {
        case .json:
            out.append(UInt8(ascii: ","))
            appendJSONString(key, &out)
            out.append(UInt8(ascii: ":"))
            appendJSONValue(value, &out)
        case .logfmt, .text:
            appendFlattened(key, value, &out)
        }
    }

    /// `trace_id` and `span_id` as lowercase hex, written straight from the ids.
    func appendTraceFields(_ spanContext: SpanContext, _ out: inout [UInt8]) {
        switch kind {
        case .json:
            out.append(contentsOf: #","trace_id":""#.utf8)
            appendHex64(spanContext.traceID.high, &out)
            appendHex64(spanContext.traceID.low, &out)
            out.append(contentsOf: #"","span_id":""#.utf8)
            appendHex64(spanContext.spanID.rawValue, &out)
            out.append(UInt8(ascii: "\""))
        case .logfmt, .text:
            out.append(contentsOf: " trace_id=".utf8)
            appendHex64(spanContext.traceID.high, &out)
            appendHex64(spanContext.traceID.low, &out)
            out.append(contentsOf: " span_id=".utf8)
            appendHex64(spanContext.spanID.rawValue, &out)
        }
    }

    /// logfmt has no nesting: dictionaries become `parent.child=value`.
    private func appendFlattened(_ key: String, _ value: Logger.Metadata.Value, _ out: inout [UInt8]) {
        switch value {
        case .dictionary(let dictionary) where !dictionary.isEmpty:
            for (child, childValue) in dictionary.sorted(by: { $0.key < $1.key }) {
                appendFlattened(key + "." + child, childValue, &out)
            }
        default:
            out.append(UInt8(ascii: " "))
            appendLogfmtKey(key, &out)
            out.append(UInt8(ascii: "="))
            switch value {
            case .string(let string): appendLogfmtValue(string, &out)
            case .stringConvertible(let convertible): appendLogfmtValue(convertible.description, &out)
            case .array, .dictionary: appendLogfmtValue(value.description, &out)
            }
        }
    }

    private func appendJSONValue(_ value: Logger.Metadata.Value, _ out: inout [UInt8]) {
        switch value {
        case .string(let string):
            appendJSONString(string, &out)
        case .stringConvertible(let convertible):
            // Numbers and booleans stay JSON numbers and booleans (as Go's slog
            // writes them). Metatype comparisons, not casts: casts cost a
            // conformance lookup on every field.
            let type = ObjectIdentifier(Swift.type(of: convertible))
            if jsonBareTypes.contains(type) {
                out.append(contentsOf: convertible.description.utf8)
            } else if type == ObjectIdentifier(Double.self) || type == ObjectIdentifier(Float.self) {
                // inf and nan are no JSON numbers; finite floats print ending in a digit.
                let text = convertible.description
                if let last = text.utf8.last, last >= UInt8(ascii: "0"), last <= UInt8(ascii: "9") {
                    out.append(contentsOf: text.utf8)
                } else {
                    appendJSONString(text, &out)
                }
            } else {
                appendJSONString(convertible.description, &out)
            }
        case .dictionary(let dictionary):
            out.append(UInt8(ascii: "{"))
            var first = true
            for (key, child) in dictionary.sorted(by: { $0.key < $1.key }) {
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                appendJSONString(key, &out)
                out.append(UInt8(ascii: ":"))
                appendJSONValue(child, &out)
            }
            out.append(UInt8(ascii: "}"))
        case .array(let array):
            out.append(UInt8(ascii: "["))
            for (index, element) in array.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                appendJSONValue(element, &out)
            }
            out.append(UInt8(ascii: "]"))
        }
    }
}

/// Types whose `description` is a valid JSON literal.
private let jsonBareTypes: Set<ObjectIdentifier> = [
    ObjectIdentifier(Int.self), ObjectIdentifier(Int8.self), ObjectIdentifier(Int16.self),
    ObjectIdentifier(Int32.self), ObjectIdentifier(Int64.self), ObjectIdentifier(UInt.self),
    ObjectIdentifier(UInt8.self), ObjectIdentifier(UInt16.self), ObjectIdentifier(UInt32.self),
    ObjectIdentifier(UInt64.self), ObjectIdentifier(Bool.self),
]

// MARK: Primitive encoders

@inline(__always) private func withUTF8<R>(_ string: String, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
    var string = string
    return string.withUTF8(body)
}

/// RFC 8259 string: escapes `"`, `\` and control characters; other UTF-8 passes through.
func appendJSONString(_ string: String, _ out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    withUTF8(string) { bytes in
        var start = 0
        for index in 0..<bytes.count {
            let byte = bytes[index]
            guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
            if start < index { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<index])) }
            appendEscape(byte, &out)
            start = index + 1
        }
        if start < bytes.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start...])) }
    }
    out.append(UInt8(ascii: "\""))
}

/// The JSON escape of one ASCII byte; logfmt uses the same escapes inside quotes.
private func appendEscape(_ byte: UInt8, _ out: inout [UInt8]) {
    out.append(UInt8(ascii: "\\"))
    switch byte {
    case UInt8(ascii: "\""): out.append(UInt8(ascii: "\""))
    case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
    case UInt8(ascii: "\n"): out.append(UInt8(ascii: "n"))
    case UInt8(ascii: "\r"): out.append(UInt8(ascii: "r"))
    case UInt8(ascii: "\t"): out.append(UInt8(ascii: "t"))
    default:
        out.append(contentsOf: "u00".utf8)
        out.append(hexDigit(byte >> 4))
        out.append(hexDigit(byte & 0xF))
    }
}

@inline(__always) private func hexDigit(_ nibble: UInt8) -> UInt8 {
    nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
}

/// The text format's message as written, but for control characters (a tab
/// aside), escaped as in JSON: one record stays one line, and a message that
/// carries a peer's words (a zipper's close reason) cannot drive the terminal.
func appendTextMessage(_ message: String, _ out: inout [UInt8]) {
    withUTF8(message) { bytes in
        var start = 0
        for index in 0..<bytes.count {
            let byte = bytes[index]
            guard (byte < 0x20 && byte != UInt8(ascii: "\t")) || byte == 0x7F else { continue }
            if start < index { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<index])) }
            appendEscape(byte, &out)
            start = index + 1
        }
        if start < bytes.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start...])) }
    }
}

/// A logfmt value, quoted (like Go's slog text handler) when empty or when it
/// holds a space, `=`, `"` or a control character; inside quotes `"`, `\` and
/// control characters are escaped as in JSON.
func appendLogfmtValue(_ string: String, _ out: inout [UInt8]) {
    withUTF8(string) { bytes in
        var needsQuotes = bytes.isEmpty
        if !needsQuotes {
            for byte in bytes where byte <= 0x20 || byte == UInt8(ascii: "=") || byte == UInt8(ascii: "\"") || byte == 0x7F {
                needsQuotes = true
                break
            }
        }
        guard needsQuotes else {
            out.append(contentsOf: bytes)
            return
        }
        out.append(UInt8(ascii: "\""))
        var start = 0
        for index in 0..<bytes.count {
            let byte = bytes[index]
            guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") || byte == 0x7F else { continue }
            if start < index { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<index])) }
            appendEscape(byte, &out)
            start = index + 1
        }
        if start < bytes.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start...])) }
        out.append(UInt8(ascii: "\""))
    }
}

/// logfmt keys cannot be quoted by most parsers: bytes that would end the key
/// (space, `=`, `"`, control characters) become `_`.
func appendLogfmtKey(_ key: String, _ out: inout [UInt8]) {
    guard !key.isEmpty else {
        out.append(UInt8(ascii: "_"))
        return
    }
    withUTF8(key) { bytes in
        for byte in bytes {
            if byte <= 0x20 || byte == UInt8(ascii: "=") || byte == UInt8(ascii: "\"") || byte == 0x7F {
                out.append(UInt8(ascii: "_"))
            } else {
                out.append(byte)
            }
        }
    }
}

/// 16 lowercase hex digits, most significant first, appended in one copy.
func appendHex64(_ value: UInt64, _ out: inout [UInt8]) {
    var digits: (UInt64, UInt64) = (0, 0)
    withUnsafeMutableBytes(of: &digits) { buffer in
        for index in 0..<16 {
            buffer[index] = hexDigit(UInt8(truncatingIfNeeded: value >> (60 - 4 * UInt64(index))) & 0xF)
        }
        out.append(contentsOf: buffer)
    }
}

func appendDecimal(_ value: UInt64, _ out: inout [UInt8]) {
    if value < 10 {
        out.append(UInt8(ascii: "0") + UInt8(value))
        return
    }
    var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                 UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    var count = 0
    var value = value
    withUnsafeMutableBytes(of: &digits) { buffer in
        while value > 0 {
            buffer[19 - count] = UInt8(ascii: "0") + UInt8(value % 10)
            value /= 10
            count += 1
        }
        out.append(contentsOf: buffer[(20 - count)...])
    }
}

// Fixed widths, so every division is by a constant (compiled to a multiply).
@inline(__always) private func append2(_ value: Int64, _ out: inout [UInt8]) {
    out.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: value / 10))
    out.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: value % 10))
}

@inline(__always) private func append3(_ value: Int64, _ out: inout [UInt8]) {
    out.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: value / 100))
    append2(value % 100, &out)
}

@inline(__always) private func append4(_ value: Int64, _ out: inout [UInt8]) {
    append2(value / 100 % 100, &out)
    append2(value % 100, &out)
}

@inline(__always) private func append6(_ value: Int64, _ out: inout [UInt8]) {
    append3(value / 1000 % 1000, &out)
    append3(value % 1000, &out)
}

/// RFC 3339 in UTC with 3 or 6 fraction digits, e.g. `2026-11-25T13:21:25.123456Z`. Computed by hand
/// (civil-from-days after H. Hinnant) instead of gmtime_r + strftime: it is on
/// every record's path.
func appendTimestamp(_ nanoseconds: UInt64, fractionDigits: Int, _ out: inout [UInt8]) {
    let seconds = Int64(nanoseconds / 1_000_000_000)
    let fraction = Int64(nanoseconds % 1_000_000_000)
    let days = seconds / 86_400
    let secondOfDay = seconds % 86_400
    let z = days + 719_468
    let era = (z >= 0 ? z : z - 146_096) / 146_097
    let dayOfEra = z - era * 146_097
    let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
    let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
    let monthIndex = (5 * dayOfYear + 2) / 153
    let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
    let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
    let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)

    append4(year, &out)
    out.append(UInt8(ascii: "-"))
    append2(month, &out)
    out.append(UInt8(ascii: "-"))
    append2(day, &out)
    out.append(UInt8(ascii: "T"))
    append2(secondOfDay / 3600, &out)
    out.append(UInt8(ascii: ":"))
    append2(secondOfDay / 60 % 60, &out)
    out.append(UInt8(ascii: ":"))
    append2(secondOfDay % 60, &out)
    out.append(UInt8(ascii: "."))
    if fractionDigits == 3 {
        append3(fraction / 1_000_000, &out)
    } else {
        append6(fraction / 1000, &out)
    }
    out.append(UInt8(ascii: "Z"))
}

/// Upper-case level names; `WARN` as Go's slog spells it, so mixed Go/Swift
/// deployments can be queried alike.
func levelName(_ level: Logger.Level) -> String {
    switch level {
    case .trace: "TRACE"
    case .debug: "DEBUG"
    case .info: "INFO"
    case .notice: "NOTICE"
    case .warning: "WARN"
    case .error: "ERROR"
    case .critical: "CRITICAL"
    }
}

private func levelColor(_ level: Logger.Level) -> String {
    switch level {
    case .trace, .debug: "\u{1B}[2m"
    case .info: "\u{1B}[32m"
    case .notice: "\u{1B}[36m"
    case .warning: "\u{1B}[33m"
    case .error: "\u{1B}[31m"
    case .critical: "\u{1B}[1;31m"
    }
}
