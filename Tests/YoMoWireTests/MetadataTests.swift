import NIOCore
import Testing
import YoMoWire

@Suite("Metadata")
struct MetadataTests {
    @Test("anything but a map of strings is rejected with what was found", arguments: [
        ("c0", "found nil"),
        ("91a161", "found an array"),
        ("a3616263", "found a string"),
        ("81a16101", "value of key \"a\" at offset 3 is an integer"),
        ("8101a161", "key #0 at offset 1 is an integer"),
        ("81a161c403616263", "is binary data"),
        ("81a161c3", "is a boolean"),
        ("81a161a2", "claims 2 bytes but only 0 remain"),
        ("82a161a162", "ends before its key #1"),
        ("81a161a162ff", "1 byte(s) follow the metadata map"),
        ("de00", "ends inside the length of its map16 size"),
        ("dfffffffff", "ends before its key #0"),
        ("81a161a2c328", "is not valid UTF-8"),
    ])
    func invalidMetadata(hex: String, expected: String) throws {
        let error = try #require(throws: WireError.self) { try Metadata(decoding: ByteBuffer(hex: hex)) }
        #expect(error.message.contains(expected), "got: \(error.message)")
        #expect([WireError.Code.invalidMetadata, .invalidUTF8].contains(error.code))
    }

    @Test("empty bytes are the empty map, and the empty map encodes to nothing")
    func empty() throws {
        #expect(try Metadata(decoding: ByteBuffer()).isEmpty)
        #expect(Metadata().encoded().readableBytes == 0)
        // msgpack's own empty map is accepted too.
        #expect(try Metadata(decoding: ByteBuffer(hex: "80")).isEmpty)
    }

    @Test("any key order decodes to the same map; a duplicate key keeps the last value")
    func keyOrder() throws {
        let ab = try Metadata(decoding: ByteBuffer(hex: "82a161a131a162a132"))
        let ba = try Metadata(decoding: ByteBuffer(hex: "82a162a132a161a131"))
        #expect(ab == ba)
        #expect(ab.hashValue == ba.hashValue)
        let duplicate = try Metadata(decoding: ByteBuffer(hex: "82a161a131a161a132"))
        #expect(duplicate.count == 1)
        #expect(duplicate["a"] == "2")
    }

    @Test("keys decode to exactly their bytes: YoMo's own (taken as constants), near misses, any header width")
    func knownKeysDecodeExactly() throws {
        var keys: [String] = []
        for key in MetadataView.Key.allCases {
            let utf8 = Array(key.string.utf8)
            keys.append(key.string)
            for position in utf8.indices {
                var changed = utf8
                changed[position] ^= 0x20
                keys.append(String(decoding: changed, as: UTF8.self))
            }
            keys.append(key.string + "a")
            keys.append(String(key.string.dropLast()))
        }
        for key in keys {
            // fixstr and str8 headers for the key; a trace value in canonical form and one not.
            let keyBytes = Array(key.utf8)
            for header in [[UInt8(0xA0 | keyBytes.count)], [0xD9, UInt8(keyBytes.count)]] {
                for value in ["4bf92f3577b34da6a3ce929d0e0e4736", "x"] {
                    var encoded = ByteBuffer(bytes: [0x82] + header + keyBytes)
                    let length = value.utf8.count
                    encoded.writeBytes((length < 32 ? [UInt8(0xA0 | length)] : [0xD9, UInt8(length)]) + Array(value.utf8))
                    encoded.writeBytes([0xA1, 0x7A, 0xA1, 0x31])  // "z": "1"
                    let decoded = try Metadata(decoding: encoded)
                    #expect(Array(decoded.map(\.key)) == [key, "z"], "\(key)")
                    #expect(decoded[key] == value && decoded["z"] == "1", "\(key)")
                }
            }
        }
        // A known key twice keeps the last value, as any key does.
        var twice = ByteBuffer(bytes: [0x82])
        for value in ["a", "b"] { twice.writeBytes([0xA8] + Array("yomo-tid".utf8) + [0xA1] + Array(value.utf8)) }
        #expect(try Metadata(decoding: twice)["yomo-tid"] == "b")
        // Among keys of one length, known and not, each duplicate finds its own first entry.
        let pairs = [("yomo-tid", "1"), ("xomo-tid", "2"), ("yomo-tid", "3"), ("ab", "4"), ("cd", "5"), ("xomo-tid", "6"), ("ab", "7")]
        var mixed = ByteBuffer(bytes: [0x80 | UInt8(pairs.count)])
        for (key, value) in pairs { mixed.writeBytes([0xA0 | UInt8(key.utf8.count)] + Array(key.utf8) + [0xA1] + Array(value.utf8)) }
        let decoded = try Metadata(decoding: mixed)
        #expect(decoded.map(\.key) == ["yomo-tid", "xomo-tid", "ab", "cd"])
        #expect(decoded.map(\.value) == ["3", "6", "7", "5"])
    }

    @Test("setting a key to an empty string deletes it, as in Go")
    func emptyValueDeletes() {
        var metadata: Metadata = ["yomo-tid": "abc", "x": "1"]
        metadata["x"] = ""
        #expect(metadata["x"] == nil)
        #expect(metadata.count == 1)
        metadata["yomo-tid"] = nil
        #expect(metadata.isEmpty)
    }

    @Test("merge overwrites and adds")
    func merge() {
        var frame: Metadata = ["yomo-tid": "t", "yomo-target": "a"]
        frame.merge(["yomo-target": "b", "yomo-wanted-target": "w"])
        #expect(frame == ["yomo-tid": "t", "yomo-target": "b", "yomo-wanted-target": "w"])
    }

    @Test("every string and map width round trips", arguments: [0, 31, 32, 255, 256, 65_535, 65_536, 70_000])
    func stringWidths(length: Int) throws {
        let value = String(repeating: "x", count: length) + "é"
        let metadata = Metadata(["k": value])
        let encoded = metadata.encoded()
        #expect(encoded.readableBytes == metadata.encodedLength)
        #expect(try Metadata(decoding: encoded)["k"] == value)
    }

    @Test("maps of 15, 16 and 70000 entries round trip", arguments: [15, 16, 70_000])
    func mapWidths(count: Int) throws {
        let metadata = Metadata(Dictionary(uniqueKeysWithValues: (0..<count).map { ("k\($0)", "v") }))
        let encoded = metadata.encoded()
        let first = encoded.getInteger(at: 0, as: UInt8.self)!
        #expect(first == (count < 16 ? UInt8(0x80 | count) : count <= 0xFFFF ? 0xDE : 0xDF))
        #expect(try Metadata(decoding: encoded) == metadata)
    }

    @Test("random maps round trip", arguments: 0..<4)
    func randomMaps(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        for _ in 0..<200 {
            let metadata = RandomFrames.metadata(&rng)
            #expect(try Metadata(decoding: metadata.encoded()) == metadata)
            #expect(try Metadata(decoding: metadata.encoded(sortedKeys: true)) == metadata)
        }
    }
}

@Suite("Ids")
struct NanoIDTests {
    @Test("ids are 21 symbols of the URL-safe alphabet and do not repeat")
    func nanoid() {
        let alphabet = Set(NanoID.alphabet)
        #expect(alphabet.count == 64)
        var seen = Set<String>()
        for _ in 0..<10_000 {
            let id = NanoID.generate()
            #expect(id.utf8.count == 21)
            #expect(id.utf8.allSatisfy(alphabet.contains))
            seen.insert(id)
        }
        #expect(seen.count == 10_000)
    }

    @Test("every symbol of the alphabet is used")
    func uniform() {
        var counts = [UInt8: Int]()
        for _ in 0..<2_000 {
            for symbol in NanoID.generate().utf8 { counts[symbol, default: 0] += 1 }
        }
        #expect(counts.count == 64)
        // 42,000 symbols over 64: about 656 each; a broken bit extraction skews far more.
        #expect(counts.values.allSatisfy { (450...900).contains($0) })
    }

    @Test("client ids carry the reconnect count")
    func clientID() {
        #expect(NanoID.clientID(base: "abc", reconnectCount: 3) == "abc-3")
    }
}
