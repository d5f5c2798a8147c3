import Foundation
import Logging
@testable import YoMoLogging

/// A tiny logfmt parser: `key=value` pairs separated by spaces, values bare or
/// double-quoted with JSON-style escapes.
func parseLogfmt(_ line: String) -> [String: String]? {
    var result: [String: String] = [:]
    let chars = Array(line.unicodeScalars)
    var index = 0
    while index < chars.count {
        while index < chars.count, chars[index] == " " { index += 1 }
        guard index < chars.count else { break }
        var key = ""
        while index < chars.count, chars[index] != "=", chars[index] != " " {
            key.unicodeScalars.append(chars[index])
            index += 1
        }
        guard index < chars.count, chars[index] == "=" else { return nil }
        index += 1
        var value = ""
        if index < chars.count, chars[index] == "\"" {
            index += 1
            var closed = false
            while index < chars.count {
                let c = chars[index]
                if c == "\"" { closed = true; index += 1; break }
                if c == "\\" {
                    index += 1
                    guard index < chars.count else { return nil }
                    switch chars[index] {
                    case "n": value += "\n"
                    case "r": value += "\r"
                    case "t": value += "\t"
                    case "\"": value += "\""
                    case "\\": value += "\\"
                    case "u":
                        guard index + 4 < chars.count,
                              let code = UInt32(String(String.UnicodeScalarView(chars[(index + 1)...(index + 4)])), radix: 16),
                              let scalar = Unicode.Scalar(code) else { return nil }
                        value.unicodeScalars.append(scalar)
                        index += 4
                    default: return nil
                    }
                    index += 1
                    continue
                }
                value.unicodeScalars.append(c)
                index += 1
            }
            guard closed else { return nil }
        } else {
            while index < chars.count, chars[index] != " " {
                value.unicodeScalars.append(chars[index])
                index += 1
            }
        }
        guard result[key] == nil else { return nil }
        result[key] = value
    }
    return result
}

func parseJSONLine(_ line: String) throws -> [String: Any] {
    let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
    guard let dictionary = object as? [String: Any] else { throw ParseError() }
    return dictionary
}

struct ParseError: Error {}

/// A logger writing synchronously into memory.
func memoryLogger(
    _ format: LogFormat,
    level: Logger.Level = .trace,
    provider: Logger.MetadataProvider? = nil,
    includeSource: Bool = false
) -> (Logger, InMemoryLogSink) {
    let sink = InMemoryLogSink()
    let writer = LogWriter(sink: sink, configuration: .synchronous)
    let logger = Logger(label: "test.logger") { label in
        YoMoLogHandler(
            label: label, format: format, writer: writer, logLevel: level,
            metadataProvider: provider, includeSource: includeSource
        )
    }
    return (logger, sink)
}

let rfc3339Pattern = #"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$"#
