import Foundation
import Testing
import Yams
import YoMo
@testable import YoMoZipperYAML

/// The zipper's own YAML reader against Yams, which it replaces so that
/// `yomo serve` links no full Foundation: the same values for every document
/// of the corpus, and clear errors for what it does not read.
@Suite("Zipper config YAML")
struct ConfigYAMLTests {
    /// What Yams gives, in the reader's terms.
    static func fromYams(_ node: Any?) -> YAMLValue {
        switch node {
        case nil, is NSNull: return .null
        case let value as Bool: return .bool(value)
        case let value as Int: return .int(value)
        case let value as Double: return .double(value)
        case let value as String: return .string(value)
        case let value as [Any]: return .sequence(value.map(fromYams))
        case let value as [String: Any]: return .mapping(value.keys.sorted().map { ($0, fromYams(value[$0])) })
        default: return .string("unexpected \(type(of: node!))")
        }
    }

    /// Mappings with their keys sorted, as `fromYams` gives them.
    static func sorted(_ value: YAMLValue) -> YAMLValue {
        switch value {
        case .mapping(let entries): .mapping(entries.sorted { $0.key < $1.key }.map { ($0.key, sorted($0.value)) })
        case .sequence(let items): .sequence(items.map(sorted))
        default: value
        }
    }

    static let corpus: [String] = [
        "",
        "# only a comment\n",
        "name: zipper\nhost: 0.0.0.0\nport: 9000\n",
        "---\nname: edge   # trailing comment\nhost: \"127.0.0.1\"\nport: 9100\n",
        "auth:\n  type: token\n  token: Z2FyZmllbGQ=\n",
        "auth: {type: token, token: 'it''s'}\n",
        "mesh:\n  zipper-a: {host: 10.0.0.1, port: 9000, credential: \"token:secret\"}\n  zipper-c:\n    host: 10.0.0.3\n    port: 9100\n  zipper-d: {host: \"fd00::4\", credential: \"\"}\nmesh_queue: {max_frames: 10, max_bytes: 2048}\n",
        "mesh:\n",
        "mesh: {}\nlimits: {}\n",
        "mesh: [a, b]\n",
        "mesh: {b: 1}\n",
        "limits:\n  max_connections: 100\n  max_pending_handshakes: 7\n  max_frame_size: 1_048_576\nslow_consumer:\n  policy: drop\n",
        "values: [1, -2, +3, 0x1F, 017, 0b101, 1.5, -2.5e+3, .5, 10.0.0.1, .inf, -.inf, yes, No, on, OFF, true, FALSE, ~, null, Null, '', \"x\\ty\"]\n",
        "list:\n  - one\n  - two: 2\n    three: 3\n  -\n    four: 4\n- top\n".replacingOccurrences(of: "- top\n", with: ""),
        "key at sequence:\n- a\n- b\n",
        "- a\n- b\n",
        "quoted: \"a # not a comment\"\nsingle: 'b # neither'\nhash: c#d\nurl: http://host:80/path\ncolon: a:b\n",
        "\"quoted key\": 1\n'single key': two\n",
        "escapes: \"\\u00e9\\x41\\\\\\\"\"\n",
        "windows: line\r\nendings: too\r\n",
        "nested:\n  deeper:\n    deepest: {a: [1, {b: c}]}\n",
        "empty_value:\nnext: 1\n",
        "spaces:    padded    \n",
        "port: 9000.0\nname: 123\n",
    ]

    @Test("reads every document of the corpus as Yams does")
    func matchesYams() throws {
        for document in Self.corpus {
            let expected = Self.fromYams(try Yams.load(yaml: document))
            let actual = Self.sorted(try ConfigYAML.parse(document))
            #expect(actual == expected, "\(document.debugDescription)\nours: \(actual)\nYams: \(expected)")
        }
    }

    @Test("what it does not read, and malformed YAML, are errors with the line", arguments: [
        ("a: &anchor 1\n", "anchors"),
        ("a: *alias\n", "aliases"),
        ("a: !!str 1\n", "tags"),
        ("a: |\n  text\n", "block scalars"),
        ("a: {b: 1,\n  c: 2}\n", "line 1: flow mapping not closed"),
        ("a: [1,\n  2]\n", "flow sequence not closed"),
        ("a: \"open\n", "quoted value not closed"),
        ("name: [\n", "flow sequence not closed"),
        ("a: 1\n\tb: 2\n", "line 2: tabs"),
        ("a: 1\n  b: 2\n", "line 2"),
        ("a: 1\n---\nb: 2\n", "one YAML document"),
        ("a: {b: 1} c\n", "unexpected text"),
        ("dup: 1\ndup: 2\n", "line 2: duplicate key \"dup\""),
        ("a: {b: 1, b: 2}\n", "duplicate key \"b\""),
    ])
    func refused(document: String, expected: String) {
        do {
            let value = try ConfigYAML.parse(document)
            Issue.record("read \(document.debugDescription) as \(value)")
        } catch {
            #expect(error.description.contains(expected), "\(error.description)")
        }
    }

    @Test("a config file reads as before, through the file and the errors")
    func configFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("zipper-\(UUID().uuidString).yaml").path
        try "name: z\nport: 9200\nauth: {type: token, token: 42}\nmesh:\n  b: {host: h, credential: 7}\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let config = try ZipperConfiguration(contentsOfFile: path)
        #expect(config.name == "z" && config.port == 9200)
        #expect(config.authentication == .token("42"), "a number written without quotes is still the token")
        #expect(config.mesh.first?.credential == "7")
        let missing = #expect(throws: YoMoError.self) { try ZipperConfiguration(contentsOfFile: path + ".missing") }
        #expect(missing?.message.contains("cannot read zipper config") == true)
        let anchored = #expect(throws: YoMoError.self) { try ZipperConfiguration(yaml: "name: &n z\n") }
        #expect(anchored?.message.contains("not valid YAML: line 1: anchors") == true, "\(anchored?.message ?? "")")
    }
}
