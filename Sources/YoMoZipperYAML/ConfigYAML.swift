// The YAML a zipper config is written in, read without Yams: Yams needs full
// Foundation, and linked, Foundation costs `yomo serve` about 4 MB of resident
// memory from start to exit (docs/performance.md, "Footprint (RSS)"). Go zipper
// configs use a small part of YAML: block and flow mappings, flow and block
// sequences, plain and quoted scalars, comments. Those read as Yams (YAML 1.1
// scalar resolution) reads them, which a test checks on a corpus; anchors,
// aliases, tags, block scalars and multi-line flow collections are refused
// with the line they are on.

/// A YAML node.
enum YAMLValue: Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case sequence([YAMLValue])
    /// Entries in document order (a repeated key is an error, as in Yams).
    case mapping([(key: String, value: YAMLValue)])

    static func == (lhs: YAMLValue, rhs: YAMLValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): true
        case (.bool(let a), .bool(let b)): a == b
        case (.int(let a), .int(let b)): a == b
        case (.double(let a), .double(let b)): a == b || (a.isNaN && b.isNaN)
        case (.string(let a), .string(let b)): a == b
        case (.sequence(let a), .sequence(let b)): a == b
        case (.mapping(let a), .mapping(let b)): a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: false
        }
    }

    subscript(key: String) -> YAMLValue? {
        guard case .mapping(let entries) = self else { return nil }
        return entries.last { $0.key == key }?.value
    }

    var string: String? { if case .string(let value) = self { value } else { nil } }
    var int: Int? { if case .int(let value) = self { value } else { nil } }
    var isMapping: Bool { if case .mapping = self { true } else { false } }

    /// A scalar as text, as Swift prints the value Yams would give (`"\(value)"`).
    var text: String? {
        switch self {
        case .string(let value): value
        case .int(let value): "\(value)"
        case .bool(let value): "\(value)"
        case .double(let value): "\(value)"
        default: nil
        }
    }
}

struct YAMLError: Error, CustomStringConvertible {
    let line: Int
    let message: String
    var description: String { "line \(line): \(message)" }
}

enum ConfigYAML {
    /// The document's root (`.null` for an empty document).
    static func parse(_ text: String) throws(YAMLError) -> YAMLValue {
        var lines: [Line] = []
        // "\r\n" is one Character: split on it as well as on "\n".
        for (index, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            var content = Substring(raw)
            if content.hasSuffix("\r") { content = content.dropLast() }
            let stripped = try stripComment(content, line: index + 1)
            let indent = stripped.prefix { $0 == " " }.count
            let body = stripped.dropFirst(indent)
            if body.allSatisfy({ $0 == " " }) { continue }
            if body.hasPrefix("\t") { throw YAMLError(line: index + 1, message: "tabs cannot indent YAML") }
            if indent == 0 && (body.hasPrefix("---") || body.hasPrefix("...")) && body.dropFirst(3).allSatisfy({ $0 == " " }) {
                if lines.isEmpty && body.hasPrefix("---") { continue }
                throw YAMLError(line: index + 1, message: "only one YAML document is supported")
            }
            lines.append(Line(number: index + 1, indent: indent, text: String(body).trimmingTrailingSpaces()))
        }
        var parser = BlockParser(lines: lines)
        guard !parser.lines.isEmpty else { return .null }
        let root = try parser.block(indent: parser.lines[0].indent)
        if parser.position < parser.lines.count {
            throw YAMLError(line: parser.lines[parser.position].number, message: "unexpected indentation")
        }
        return root
    }

    struct Line {
        let number: Int
        var indent: Int
        var text: String
    }

    /// The line without its comment: a `#` at the start or after a space, outside quotes.
    static func stripComment(_ line: Substring, line number: Int) throws(YAMLError) -> Substring {
        var quote: Character?
        var previous: Character = " "
        var index = line.startIndex
        while index < line.endIndex {
            let character = line[index]
            if let open = quote {
                if character == open {
                    // '' inside single quotes is an escaped quote.
                    let next = line.index(after: index)
                    if open == "'" && next < line.endIndex && line[next] == "'" {
                        index = line.index(after: next)
                        continue
                    }
                    quote = nil
                } else if open == "\"" && character == "\\" {
                    index = line.index(after: index)
                }
            } else if character == "#" && (previous == " " || previous == "\t") {
                return line[..<index]
            } else if (character == "\"" || character == "'") && (previous == " " || previous == "{" || previous == "[" || previous == "," || previous == ":" || index == line.startIndex) {
                quote = character
            }
            previous = character
            if index < line.endIndex { index = line.index(after: index) }
        }
        return line
    }
}

private struct BlockParser {
    var lines: [ConfigYAML.Line]
    var position = 0

    init(lines: [ConfigYAML.Line]) { self.lines = lines }

    /// The block whose lines start at `indent`.
    mutating func block(indent: Int) throws(YAMLError) -> YAMLValue {
        let line = lines[position]
        if line.text == "-" || line.text.hasPrefix("- ") { return try sequence(indent: indent) }
        if splitKey(line.text) != nil { return try mapping(indent: indent) }
        // A lone scalar (or flow collection) is the whole block.
        position += 1
        let value = try FlowParser.value(line.text, line: line.number)
        if position < lines.count && lines[position].indent > indent {
            throw YAMLError(line: lines[position].number, message: "multi-line scalars are not supported")
        }
        return value
    }

    mutating func mapping(indent: Int) throws(YAMLError) -> YAMLValue {
        var entries: [(key: String, value: YAMLValue)] = []
        while position < lines.count, lines[position].indent == indent {
            let line = lines[position]
            guard let (key, rest) = splitKey(line.text) else {
                throw YAMLError(line: line.number, message: "expected \"key: value\"")
            }
            position += 1
            let value = try entryValue(rest, line: line, parentIndent: indent)
            guard !entries.contains(where: { $0.key == key }) else {
                throw YAMLError(line: line.number, message: "duplicate key \"\(key)\"")
            }
            entries.append((key, value))
        }
        return .mapping(entries)
    }

    mutating func sequence(indent: Int) throws(YAMLError) -> YAMLValue {
        var items: [YAMLValue] = []
        while position < lines.count, lines[position].indent == indent {
            let line = lines[position]
            guard line.text == "-" || line.text.hasPrefix("- ") else {
                throw YAMLError(line: line.number, message: "expected \"- item\"")
            }
            let rest = line.text.dropFirst(1).drop { $0 == " " }
            if rest.isEmpty {
                position += 1
                items.append(try nested(parentIndent: indent, line: line))
            } else {
                // "- key: value" starts a mapping at the item's column: read the
                // rest of the line as a line of its own there.
                lines[position].indent = indent + (line.text.count - rest.count)
                lines[position].text = String(rest)
                items.append(try block(indent: lines[position].indent))
            }
        }
        return .sequence(items)
    }

    /// What follows "key:" on its line, or the indented block below it.
    mutating func entryValue(_ rest: Substring, line: ConfigYAML.Line, parentIndent: Int) throws(YAMLError) -> YAMLValue {
        guard rest.isEmpty else { return try FlowParser.value(String(rest), line: line.number) }
        return try nested(parentIndent: parentIndent, line: line)
    }

    mutating func nested(parentIndent: Int, line: ConfigYAML.Line) throws(YAMLError) -> YAMLValue {
        guard position < lines.count else { return .null }
        let next = lines[position]
        // A sequence may sit at its key's own indentation.
        if next.indent > parentIndent || (next.indent == parentIndent && (next.text == "-" || next.text.hasPrefix("- ")) && splitKey(line.text) != nil) {
            return try block(indent: next.indent)
        }
        return .null
    }

    /// "key: rest" or "key:" (plain or quoted key); nil when the line is not an entry.
    func splitKey(_ text: String) -> (String, Substring)? {
        let characters = Substring(text)
        if let first = characters.first, first == "\"" || first == "'" {
            guard let (key, end) = try? FlowParser.quoted(characters, line: 0) else { return nil }
            let after = characters[end...]
            guard after.hasPrefix(":") else { return nil }
            let rest = after.dropFirst()
            guard rest.isEmpty || rest.hasPrefix(" ") else { return nil }
            return (key, rest.drop { $0 == " " })
        }
        if characters.hasPrefix("- ") || characters.hasPrefix("{") || characters.hasPrefix("[") { return nil }
        var index = characters.startIndex
        while index < characters.endIndex {
            if characters[index] == ":" {
                let next = characters.index(after: index)
                if next == characters.endIndex || characters[next] == " " {
                    let key = String(characters[..<index]).trimmingTrailingSpaces()
                    guard !key.isEmpty else { return nil }
                    return (key, characters[next...].drop { $0 == " " })
                }
            }
            index = characters.index(after: index)
        }
        return nil
    }
}

/// A value on one line: a flow mapping, a flow sequence, a quoted or a plain scalar.
private struct FlowParser {
    let text: [Character]
    let line: Int
    var index = 0

    static func value(_ text: String, line: Int) throws(YAMLError) -> YAMLValue {
        if let first = text.first, "&*!|>%@`".contains(first) {
            throw YAMLError(line: line, message: "\(describe(first)) are not supported in a zipper config")
        }
        var parser = FlowParser(text: Array(text), line: line)
        let value = try parser.node(inFlow: false)
        parser.skipSpaces()
        guard parser.index == parser.text.count else {
            throw YAMLError(line: line, message: "unexpected text after the value: \(String(parser.text[parser.index...]).prefix(20))")
        }
        return value
    }

    static func describe(_ first: Character) -> String {
        switch first {
        case "&": "anchors"
        case "*": "aliases"
        case "!": "tags"
        case "|", ">": "block scalars"
        default: "values starting with \(first)"
        }
    }

    /// A quoted scalar at the start of `text`: its value and where it ends.
    static func quoted(_ text: Substring, line: Int) throws(YAMLError) -> (String, Substring.Index) {
        var parser = FlowParser(text: Array(text), line: line)
        guard case .string(let value) = try parser.quotedScalar() else { preconditionFailure() }
        return (value, text.index(text.startIndex, offsetBy: parser.index))
    }

    mutating func skipSpaces() { while index < text.count, text[index] == " " { index += 1 } }

    mutating func node(inFlow: Bool) throws(YAMLError) -> YAMLValue {
        skipSpaces()
        guard index < text.count else { return .null }
        switch text[index] {
        case "{": return try flowMapping()
        case "[": return try flowSequence()
        case "\"", "'": return try quotedScalar()
        case "&", "*", "!": throw YAMLError(line: line, message: "\(Self.describe(text[index])) are not supported in a zipper config")
        default: return resolve(plainScalar(inFlow: inFlow))
        }
    }

    mutating func flowMapping() throws(YAMLError) -> YAMLValue {
        index += 1
        var entries: [(key: String, value: YAMLValue)] = []
        while true {
            skipSpaces()
            guard index < text.count else { throw YAMLError(line: line, message: "flow mapping not closed on its line (multi-line flow collections are not supported)") }
            if text[index] == "}" { index += 1; return .mapping(entries) }
            let key: String
            if text[index] == "\"" || text[index] == "'" {
                guard case .string(let quoted) = try quotedScalar() else { preconditionFailure() }
                key = quoted
            } else {
                key = plainScalar(inFlow: true, stopAtColon: true)
            }
            skipSpaces()
            var value = YAMLValue.null
            if index < text.count, text[index] == ":" {
                index += 1
                value = try node(inFlow: true)
            }
            guard !entries.contains(where: { $0.key == key }) else {
                throw YAMLError(line: line, message: "duplicate key \"\(key)\"")
            }
            entries.append((key, value))
            skipSpaces()
            guard index < text.count else { continue }
            if text[index] == "," { index += 1 } else if text[index] != "}" {
                throw YAMLError(line: line, message: "expected , or } in a flow mapping")
            }
        }
    }

    mutating func flowSequence() throws(YAMLError) -> YAMLValue {
        index += 1
        var items: [YAMLValue] = []
        while true {
            skipSpaces()
            guard index < text.count else { throw YAMLError(line: line, message: "flow sequence not closed on its line (multi-line flow collections are not supported)") }
            if text[index] == "]" { index += 1; return .sequence(items) }
            items.append(try node(inFlow: true))
            skipSpaces()
            guard index < text.count else { continue }
            if text[index] == "," { index += 1 } else if text[index] != "]" {
                throw YAMLError(line: line, message: "expected , or ] in a flow sequence")
            }
        }
    }

    mutating func quotedScalar() throws(YAMLError) -> YAMLValue {
        let quote = text[index]
        index += 1
        var value = ""
        while index < text.count {
            let character = text[index]
            index += 1
            if character == quote {
                if quote == "'" && index < text.count && text[index] == "'" {
                    value.append("'")
                    index += 1
                    continue
                }
                return .string(value)
            }
            guard quote == "\"" && character == "\\" else {
                value.append(character)
                continue
            }
            guard index < text.count else { break }
            let escape = text[index]
            index += 1
            switch escape {
            case "n": value.append("\n")
            case "t": value.append("\t")
            case "r": value.append("\r")
            case "0": value.append("\0")
            case "\\", "\"", "/", " ": value.append(escape)
            case "x", "u", "U":
                let width = escape == "x" ? 2 : escape == "u" ? 4 : 8
                guard index + width <= text.count, let scalar = UInt32(String(text[index..<index + width]), radix: 16).flatMap(Unicode.Scalar.init) else {
                    throw YAMLError(line: line, message: "bad \\\(escape) escape")
                }
                value.unicodeScalars.append(scalar)
                index += width
            default: throw YAMLError(line: line, message: "unknown escape \\\(escape)")
            }
        }
        throw YAMLError(line: line, message: "quoted value not closed on its line (multi-line scalars are not supported)")
    }

    /// Up to the end, or in flow context up to `,` `]` `}` (and `: ` for keys).
    mutating func plainScalar(inFlow: Bool, stopAtColon: Bool = false) -> String {
        let start = index
        while index < text.count {
            let character = text[index]
            if inFlow && (character == "," || character == "]" || character == "}") { break }
            if stopAtColon && character == ":" && (index + 1 == text.count || " ,}]".contains(text[index + 1])) { break }
            index += 1
        }
        return String(text[start..<index]).trimmingTrailingSpaces()
    }

    /// YAML 1.1 resolution of a plain scalar, as Yams does it: null, bool, int, float, else text.
    func resolve(_ scalar: String) -> YAMLValue {
        switch scalar {
        case "", "~", "null", "Null", "NULL": return .null
        case "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON": return .bool(true)
        case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF": return .bool(false)
        case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF": return .double(.infinity)
        case "-.inf", "-.Inf", "-.INF": return .double(-.infinity)
        case ".nan", ".NaN", ".NAN": return .double(.nan)
        default: break
        }
        if let integer = Self.integer(scalar) { return .int(integer) }
        if Self.isFloat(scalar), let value = Double(scalar.filter { $0 != "_" }) { return .double(value) }
        return .string(scalar)
    }

    static func integer(_ scalar: String) -> Int? {
        var digits = Substring(scalar)
        var negative = false
        if let sign = digits.first, sign == "-" || sign == "+" {
            negative = sign == "-"
            digits = digits.dropFirst()
        }
        guard let first = digits.first, first.isASCII, first.isNumber else { return nil }
        let radix: Int
        if digits.hasPrefix("0x") { radix = 16; digits = digits.dropFirst(2) }
        else if digits.hasPrefix("0b") { radix = 2; digits = digits.dropFirst(2) }
        else if digits.hasPrefix("0") && digits.count > 1 { radix = 8; digits = digits.dropFirst() }
        else { radix = 10 }
        let clean = digits.filter { $0 != "_" }
        guard !clean.isEmpty, let magnitude = Int(clean, radix: radix) else { return nil }
        return negative ? -magnitude : magnitude
    }

    /// `[-+]?([0-9][0-9_]*)?\.[0-9.]*([eE][-+][0-9]+)?`, YAML 1.1's float.
    static func isFloat(_ scalar: String) -> Bool {
        var characters = Substring(scalar)
        if let sign = characters.first, sign == "-" || sign == "+" { characters = characters.dropFirst() }
        let whole = characters.prefix { $0.isASCII && ($0.isNumber || $0 == "_") }
        if let first = whole.first, first == "_" { return false }
        characters = characters.dropFirst(whole.count)
        guard characters.first == "." else { return false }
        characters = characters.dropFirst()
        characters = characters.drop { $0.isASCII && ($0.isNumber || $0 == ".") }
        if characters.isEmpty { return true }
        guard let e = characters.first, e == "e" || e == "E" else { return false }
        characters = characters.dropFirst()
        guard let sign = characters.first, sign == "-" || sign == "+" else { return false }
        characters = characters.dropFirst()
        return !characters.isEmpty && characters.allSatisfy { $0.isASCII && $0.isNumber }
    }
}

extension String {
    fileprivate func trimmingTrailingSpaces() -> String {
        var slice = Substring(self)
        while let last = slice.last, last == " " || last == "\t" { slice.removeLast() }
        return String(slice)
    }
}
