import Foundation
import Logging
import Testing
@testable import YoMoLogging

@Suite struct FormatTests {
    static let tricky = "a \"quoted\" = value\\with\nnewline\ttab \u{01} é 🙂"

    @Test func jsonLinesParseWithAllFields() throws {
        var (logger, sink) = memoryLogger(.json, includeSource: true)
        logger[metadataKey: YoMoLogField.service] = YoMoLogField.Service.streamFunction
        logger[metadataKey: YoMoLogField.sfnName] = "uppercase"
        logger.info("first", metadata: ["tricky": .string(Self.tricky), "data_length": .stringConvertible(42)])
        logger.warning("second", metadata: [
            "nested": ["inner": "x", "deeper": ["n": .stringConvertible(1.5)]],
            "list": ["a", .stringConvertible(true)],
            "msg": "collides",
            "sfn_name": "overridden",
        ])
        logger.error("third \(Self.tricky)", error: TestError())

        let lines = sink.lines
        #expect(lines.count == 3)
        let records = try lines.map(parseJSONLine)

        let first = records[0]
        #expect(first["msg"] as? String == "first")
        #expect(first["level"] as? String == "INFO")
        #expect(first["logger"] as? String == "test.logger")
        #expect((first["time"] as? String)?.range(of: rfc3339Pattern, options: .regularExpression) != nil)
        #expect(first["service"] as? String == "stream-function")
        #expect(first["sfn_name"] as? String == "uppercase")
        #expect(first["tricky"] as? String == Self.tricky)
        #expect(first["data_length"] as? Int == 42)
        #expect(first["source"] as? String == "YoMoLoggingTests")
        #expect((first["file"] as? String)?.hasSuffix("FormatTests.swift") == true)
        #expect(first["line"] as? Int != nil)

        let second = records[1]
        #expect(second["level"] as? String == "WARN")
        #expect(second["msg"] as? String == "second")
        #expect(second["fields.msg"] as? String == "collides")
        #expect(second["sfn_name"] as? String == "overridden")
        let nested = try #require(second["nested"] as? [String: Any])
        #expect(nested["inner"] as? String == "x")
        #expect((nested["deeper"] as? [String: Any])?["n"] as? Double == 1.5)
        let list = try #require(second["list"] as? [Any])
        #expect(list.first as? String == "a")
        #expect(list.last as? Bool == true)

        let third = records[2]
        #expect(third["msg"] as? String == "third \(Self.tricky)")
        #expect(third["error.message"] as? String == "TestError()")
        #expect((third["error.type"] as? String)?.hasSuffix("TestError") == true)
    }

    @Test func logfmtLinesParseWithAllFields() throws {
        var (logger, sink) = memoryLogger(.logfmt)
        logger[metadataKey: YoMoLogField.connectionID] = "c1"
        logger.debug("plain")
        logger.info("with fields", metadata: [
            "tricky": .string(Self.tricky),
            "empty": "",
            "equals": "a=b",
            "nested": ["child": "v", "deep": ["x": "y z"]],
            "bad key=\"": "k",
            "level": "collides",
        ])
        let lines = sink.lines
        #expect(lines.count == 2)
        let first = try #require(parseLogfmt(lines[0]))
        #expect(first["msg"] == "plain")
        #expect(first["level"] == "DEBUG")
        #expect(first["logger"] == "test.logger")
        #expect(first["conn_id"] == "c1")
        #expect(first["time"]?.range(of: rfc3339Pattern, options: .regularExpression) != nil)

        let second = try #require(parseLogfmt(lines[1]))
        #expect(second["msg"] == "with fields")
        #expect(second["level"] == "INFO")
        #expect(second["tricky"] == Self.tricky)
        #expect(second["empty"] == "")
        #expect(second["equals"] == "a=b")
        #expect(second["nested.child"] == "v")
        #expect(second["nested.deep.x"] == "y z")
        #expect(second["bad_key__"] == "k")
        #expect(second["fields.level"] == "collides")
        #expect(second["conn_id"] == "c1")
    }

    @Test func textIsReadableAndUncolouredInMemory() {
        let (logger, sink) = memoryLogger(.text)
        logger.notice("hello world", metadata: ["k": "v w"])
        let line = sink.lines.first ?? ""
        #expect(line.contains(" NOTICE test.logger: hello world k=\"v w\""))
        #expect(!line.contains("\u{1B}"))
        #expect(line.range(of: #"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z "#, options: .regularExpression) != nil)
    }

    @Test("the text format writes a message's control characters as escapes: one record, one line, no terminal codes")
    func textEscapesControlCharacters() {
        let (logger, sink) = memoryLogger(.text)
        logger.warning("closed: \u{1B}[2J\u{1B}]0;owned\u{7}\nERROR forged line\r\tand a tab \u{7F}")
        #expect(sink.lines.count == 1)
        let line = sink.lines.first ?? ""
        #expect(line.hasSuffix(#"closed: \u001b[2J\u001b]0;owned\u0007\nERROR forged line\r"# + "\tand a tab " + #"\u007f"#), "\(line)")
        #expect(!line.unicodeScalars.contains { $0.value < 0x20 && $0 != "\t" })
    }

    @Test func colourWhenAsked() {
        let sink = InMemoryLogSink()
        let writer = LogWriter(sink: sink, configuration: .synchronous)
        let logger = Logger(label: "c") { YoMoLogHandler(label: $0, format: .text, writer: writer, colored: true) }
        logger.error("boom")
        #expect(sink.text.contains("\u{1B}[31mERROR\u{1B}[0m"))
    }

    @Test(arguments: [
        (UInt64(1_764_077_485_123_456_000), "2025-11-25T13:31:25.123456Z"),
        (UInt64(951_782_400_500_000_000), "2000-02-29T00:00:00.500000Z"),
        (UInt64(4_102_444_799_999_999_000), "2099-12-31T23:59:59.999999Z"),
        (UInt64(0), "1970-01-01T00:00:00.000000Z"),
    ])
    func timestampsAreRFC3339(nanoseconds: UInt64, expected: String) {
        var out: [UInt8] = []
        appendTimestamp(nanoseconds, fractionDigits: 6, &out)
        #expect(String(decoding: out, as: UTF8.self) == expected)
    }

    @Test func multiplexSendsToEveryHandler() throws {
        let jsonSink = InMemoryLogSink()
        let logfmtSink = InMemoryLogSink()
        let jsonWriter = LogWriter(sink: jsonSink, configuration: .synchronous)
        let logfmtWriter = LogWriter(sink: logfmtSink, configuration: .synchronous)
        let logger = Logger(label: "multi") { label in
            MultiplexLogHandler([
                YoMoLogHandler(label: label, format: .json, writer: jsonWriter),
                YoMoLogHandler(label: label, format: .logfmt, writer: logfmtWriter),
            ])
        }
        logger.info("both", metadata: [YoMoLogField.tag: .stringConvertible(UInt32(7))])
        #expect(try parseJSONLine(jsonSink.lines[0])["tag"] as? Int == 7)
        #expect(parseLogfmt(logfmtSink.lines[0])?["tag"] == "7")
    }
}

struct TestError: Error {}
