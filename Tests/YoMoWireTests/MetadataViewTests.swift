import NIOCore
import Testing
@testable import YoMoWire

/// `MetadataView` lets a zipper change a frame's metadata without decoding it;
/// the result must always decode to what decoding, merging and encoding give.
@Suite("Metadata read and changed in place")
struct MetadataViewTests {
    static let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    /// A random map: some known keys in canonical or odd forms, some other keys,
    /// sometimes enough entries to need a map16 header.
    static func randomMetadata<G: RandomNumberGenerator>(_ generator: inout G) -> Metadata {
        var metadata = Metadata()
        let candidates: [(String, [String])] = [
            ("yomo-tid", ["V1StGXR8_Z5jdHi6B-myT", "t"]),
            ("yomo-source-id", ["source-1"]),
            ("yomo-target", ["alice", "b"]),
            ("yomo-wanted-target", ["bob"]),
            ("traceparent", [traceparent, "garbage", " " + traceparent]),
            ("tracestate", ["a=1", " spaced=2 "]),
            ("yomo-trace-id", ["4bf92f3577b34da6a3ce929d0e0e4736", "4BF92F3577B34DA6A3CE929D0E0E4736"]),
            ("yomo-span-id", ["00f067aa0ba902b7", "short"]),
            ("ünïcode", ["välue"]),
        ]
        for (key, values) in candidates where Bool.random(using: &generator) {
            metadata[key] = values.randomElement(using: &generator)!
        }
        for index in 0..<Int.random(in: 0...(Bool.random(using: &generator) ? 3 : 16), using: &generator) {
            metadata["extra-\(index)"] = String(repeating: "x", count: Int.random(in: 1...300, using: &generator))
        }
        return metadata
    }

    /// Changes as a zipper makes them: connection metadata and new trace values.
    static func randomChanges<G: RandomNumberGenerator>(_ generator: inout G) -> Metadata {
        var changes = Metadata()
        if Bool.random(using: &generator) { changes["yomo-wanted-target"] = "carol" }
        if Bool.random(using: &generator) {
            changes.setTrace(traceparent: TraceparentFields(traceIDHigh: generator.next(), traceIDLow: generator.next(), spanID: generator.next(), flags: 1))
        }
        if Bool.random(using: &generator) {
            changes.setTrace(yomo: (generator.next(), generator.next(), generator.next()))
        }
        if Bool.random(using: &generator) { changes["tracestate"] = "a=1" }
        if Bool.random(using: &generator) && Bool.random(using: &generator) { changes["not-a-known-key"] = "v" }
        return changes
    }

    @Test("changes applied in place decode to what merging and re-encoding gives")
    func applyingMatchesMerge() throws {
        var generator = SystemRandomNumberGenerator()
        var applied = 0, refused = 0
        for _ in 0..<3_000 {
            let original = Self.randomMetadata(&generator)
            let changes = Self.randomChanges(&generator)
            let bytes = original.encoded()
            let view = try #require(MetadataView(bytes))
            var expected = original
            expected.merge(changes)
            if let result = view.applying(changes) {
                applied += 1
                #expect(try Metadata(decoding: result) == expected, "\(original) + \(changes)")
                // Known values read straight from the bytes.
                let resultView = try #require(MetadataView(result))
                for key in MetadataView.Key.allCases {
                    #expect(resultView.string(key) == expected[key.string])
                }
            } else {
                refused += 1
                // Refused only for an unknown key or a value that changes length.
                let unknown = changes.contains { MetadataView.Key($0.key) == nil }
                let resized = changes.contains { change in original[change.key].map { $0.utf8.count != change.value.utf8.count } ?? false }
                #expect(unknown || resized, "refused \(original) + \(changes)")
            }
        }
        #expect(applied > 1_000 && refused > 100)
    }

    @Test("a frame encoded with a patch carries the patched metadata, at any buffer position and payload size")
    func patchWhileEncoding() throws {
        var generator = SystemRandomNumberGenerator()
        let metadata: Metadata = [
            "yomo-tid": "V1StGXR8_Z5jdHi6B-myT", "traceparent": Self.traceparent,
            "yomo-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736", "yomo-span-id": "00f067aa0ba902b7",
        ]
        let view = try #require(MetadataView(metadata.encoded()))
        let present = try #require(view.canonicalTrace)
        for sameTrace in [true, false] {
            let (high, low) = sameTrace ? (present.traceID!.high, present.traceID!.low) : (generator.next(), generator.next())
            let trace = MetadataView.TracePatch(
                traceparent: TraceparentFields(traceIDHigh: high, traceIDLow: low, spanID: generator.next(), flags: 0),
                yomo: (high, low, generator.next()))
            let patch = try #require(view.patch(trace, over: present))
            let expected = try #require(view.applying(Metadata(), trace: trace))
            #expect(patch.applied(to: view.bytes) == expected)
            #expect(view.bytes != expected)  // the view's own bytes are left as they were
            for payloadSize in [0, 10, 5000] {
                let payload = ByteBuffer(repeating: 0x61, count: payloadSize)
                let frame = DataFrame(tag: 0x33, metadata: view.bytes, payload: payload)
                let wanted = Frame.data(DataFrame(tag: 0x33, metadata: expected, payload: payload)).encoded()
                // Into a buffer that already holds bytes, some of them read.
                var buffer = ByteBuffer(bytes: [1, 2, 3, 4, 5])
                buffer.moveReaderIndex(forwardBy: 2)
                frame.encode(into: &buffer, patch: patch)
                #expect(buffer.readableBytesView.dropFirst(3).elementsEqual(wanted.readableBytesView))
                var header = ByteBuffer(bytes: [9])
                frame.encodeHeader(into: &header, patch: patch)
                #expect(header.readableBytesView.dropFirst().elementsEqual(wanted.readableBytesView.prefix(header.readableBytes - 1)))
            }
        }
        // A patch whose key is absent does not fit.
        let onlyTid = try #require(MetadataView(Metadata(["yomo-tid": "t"]).encoded()))
        #expect(onlyTid.patch(MetadataView.TracePatch(yomo: (1, 2, 3))) == nil)
    }

    @Test("a scanned view reads the keys YoMo uses as decoding gives them")
    func viewReadsAsDecoded() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            let bytes = Self.randomMetadata(&generator).encoded()
            let decoded = try Metadata(decoding: bytes)
            let view = try #require(MetadataView(bytes))
            #expect(view.decoded == decoded)
            for key in MetadataView.Key.allCases {
                #expect(view.string(key) == decoded[key.string], "\(key)")
            }
            #expect(view.traceMetadata.entries.allSatisfy { decoded[$0.key] == $0.value })
            // Any key, found by walking the map.
            for key in decoded.map(\.key) + ["absent", "", "yomo-ti", "yomo-tidx"] {
                #expect(view.string(forKey: key) == decoded[key], "\(key)")
            }
        }
        // An unknown key twice: the last value, as decoding keeps it.
        var repeated = ByteBuffer(bytes: [0x83])
        for (key, value) in [("k", "1"), ("", "e"), ("k", "2")] {
            repeated.writeBytes([0xA0 | UInt8(key.utf8.count)] + Array(key.utf8) + [0xA0 | UInt8(value.utf8.count)] + Array(value.utf8))
        }
        let repeatedView = try #require(MetadataView(repeated))
        let repeatedDecoded = try Metadata(decoding: repeated)
        #expect(repeatedView.string(forKey: "k") == "2" && repeatedDecoded["k"] == "2")
        #expect(repeatedView.string(forKey: "") == "e" && repeatedView.string(forKey: "kk") == nil)
        // Known keys' values under every header width (str8 for a short one is
        // what other encoders may write): the view finds their contents.
        for (header, value) in [([UInt8(0xD9), 3], "abc"), ([0xDA, 0x01, 0x2C], String(repeating: "t", count: 300)),
                                ([0xDB, 0, 0, 0, 2], "zz")] {
            var bytes = ByteBuffer(bytes: [0x82, 0xAB] + Array("yomo-target".utf8) + header + Array(value.utf8))
            bytes.writeBytes([0xA8] + Array("yomo-tid".utf8) + [0xA1, 0x31])
            let view = try #require(MetadataView(bytes))
            #expect(view.string(.target) == value && view.string(.tid) == "1")
            #expect(try Metadata(decoding: bytes)["yomo-target"] == value)
        }
        // A known key twice: no view (decoding, which keeps the last value, is left to read it).
        var twice = ByteBuffer(bytes: [0x82])
        for value in ["a", "b"] { twice.writeBytes([0xA8] + Array("yomo-tid".utf8) + [0xA1] + Array(value.utf8)) }
        #expect(MetadataView(twice) == nil)
        #expect(try Metadata(decoding: twice)["yomo-tid"] == "b")
        // The empty map has a view too.
        #expect(MetadataView(ByteBuffer())?.bytes.readableBytes == 0)
    }

    /// The zipper scans every frame's metadata from peers it does not trust.
    /// Damaged maps (bits flipped, bytes set to msgpack markers, cut short,
    /// bytes inserted) must never be read past their end (a debug build traps
    /// on it), and a view, when one is made, must read what decoding reads.
    @Test("damaged metadata: a view is made only of what decodes, and reads it as decoding does")
    func damagedMetadata() throws {
        let seed = UInt64.random(in: 0...UInt64.max)
        var generator = SplitMix64(seed: seed)
        let markers: [UInt8] = [0x00, 0x7F, 0x80, 0x8F, 0xA0, 0xBF, 0xC0, 0xD9, 0xDA, 0xDB, 0xDE, 0xDF, 0xFF]
        var views = 0, mutations = 0
        for _ in 0..<400 {
            let original = Array(Self.randomMetadata(&generator).encoded().readableBytesView)
            for _ in 0..<10 where !original.isEmpty {
                var damaged = original
                let position = Int.random(in: 0..<damaged.count, using: &generator)
                switch Int.random(in: 0..<4, using: &generator) {
                case 0: damaged[position] ^= 1 << UInt8.random(in: 0..<8, using: &generator)
                case 1: damaged[position] = markers.randomElement(using: &generator)!
                case 2: damaged.removeSubrange(position...)
                default: damaged.insert(markers.randomElement(using: &generator)!, at: position)
                }
                mutations += 1
                let bytes = ByteBuffer(bytes: damaged)
                let decoded = try? Metadata(decoding: bytes)
                guard let view = MetadataView(bytes) else { continue }
                views += 1
                let context = "seed \(seed), input \(damaged.map { String($0, radix: 16) })"
                let decodedAlike = try #require(decoded, "a view of bytes that do not decode: \(context)")
                #expect(view.decoded == decodedAlike, "\(context)")
                for key in MetadataView.Key.allCases {
                    #expect(view.string(key) == decodedAlike[key.string], "\(key): \(context)")
                }
                // Trace ids read in place, written back as read, leave the bytes as they were.
                if let trace = view.canonicalTrace {
                    let asRead = MetadataView.TracePatch(
                        traceparent: trace.traceparent,
                        yomo: trace.traceID.flatMap { id in trace.spanID.map { (id.high, id.low, $0) } })
                    if let patch = view.patch(asRead) {
                        #expect(patch.applied(to: bytes) == bytes, "\(context)")
                    }
                }
            }
        }
        // Most damage breaks the map; enough must survive for the comparison to mean something.
        #expect(views > mutations / 20, "\(views) views of \(mutations) damaged maps")
    }

    @Test("known values and trace metadata are read without decoding")
    func reading() throws {
        var metadata = Metadata()
        metadata["yomo-target"] = "alice"
        metadata["traceparent"] = Self.traceparent
        metadata["yomo-span-id"] = "00f067aa0ba902b7"
        metadata["other"] = "o"
        let view = try #require(MetadataView(metadata.encoded()))
        #expect(view.string(.target) == "alice")
        #expect(view.string(.tid) == nil)
        #expect(view.contains(.spanID) && !view.contains(.traceID))
        let trace = view.traceMetadata
        #expect(trace.count == 2)
        #expect(trace["traceparent"] == Self.traceparent)
        guard case .fields = trace.traceparentValue else {
            Issue.record("traceparent not held as numbers")
            return
        }
        // Nothing to change: the very same bytes.
        #expect(view.applying(Metadata()) == metadata.encoded())
    }

    @Test("known keys are recognised exactly: a key one byte off, longer or shorter is not one")
    func keyMatching() {
        for key in MetadataView.Key.allCases {
            let utf8 = Array(key.string.utf8)
            // The constant words are the key's own bytes.
            let signature = key.signature
            utf8.withUnsafeBytes { bytes in
                #expect(signature.count == bytes.count)
                #expect(signature.first == bytes.loadUnaligned(as: UInt64.self))
                #expect(signature.last == bytes.loadUnaligned(fromByteOffset: bytes.count - 8, as: UInt64.self))
                #expect(signature.middle == (bytes.count >= 16 ? bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self) : 0))
            }
            #expect(utf8.withUnsafeBytes { MetadataView.Key(utf8: $0) } == key)
            #expect(MetadataView.Key(key.string) == key)
            for position in utf8.indices {
                var changed = utf8
                changed[position] ^= 0x20
                #expect(changed.withUnsafeBytes { MetadataView.Key(utf8: $0) } == nil, "\(key) changed at \(position)")
                #expect(MetadataView.Key(String(decoding: changed, as: UTF8.self)) == nil)
            }
            #expect((utf8 + [0x61]).withUnsafeBytes { MetadataView.Key(utf8: $0) } == nil)
            #expect(Array(utf8.dropLast()).withUnsafeBytes { MetadataView.Key(utf8: $0) } == nil)
        }
    }

    @Test("trace entries written from constant words are the bytes setting the values and encoding give")
    func traceEntriesAsEncoded() throws {
        var generator = SystemRandomNumberGenerator()
        let starts: [Metadata] = [Metadata(), ["yomo-tid": "abc"], Metadata(Dictionary(uniqueKeysWithValues: (0..<14).map { ("key-\($0)", "value") }))]
        var compared = 0
        for start in starts {
            for _ in 0..<50 {
                let traceID = (generator.next() as UInt64, generator.next() as UInt64)
                let traceparent = Bool.random() ? nil : TraceparentFields(
                    traceIDHigh: traceID.0, traceIDLow: traceID.1, spanID: generator.next(), flags: UInt8.random(in: 0...255))
                // Usually both formats carry the same trace id; a patch may also give two.
                let yomoTraceID = Bool.random() ? traceID : (generator.next(), generator.next())
                let yomo = Bool.random() ? nil : (traceIDHigh: yomoTraceID.0, traceIDLow: yomoTraceID.1, spanID: generator.next() as UInt64)
                let patch = MetadataView.TracePatch(traceparent: traceparent, yomo: yomo)
                var expected = start
                expected.setTrace(traceparent: traceparent, yomo: yomo)
                let written = try #require(start.encoded(appending: patch))
                #expect(written == expected.encoded(), "\(patch)")
                #expect(try Metadata(decoding: written) == expected)
                compared += 1
            }
        }
        #expect(compared == 150)
    }

    @Test("appending past 15 entries switches to a map16 header; empty metadata gains a map")
    func headerGrowth() throws {
        var metadata = Metadata()
        for index in 0..<15 { metadata["k\(index)"] = "v" }
        var changes = Metadata()
        changes["yomo-wanted-target"] = "w"
        let result = try #require(MetadataView(metadata.encoded())?.applying(changes))
        #expect(result.getInteger(at: result.readerIndex, as: UInt8.self) == 0xDE)
        var expected = metadata
        expected.merge(changes)
        #expect(try Metadata(decoding: result) == expected)
        let fromEmpty = try #require(MetadataView(ByteBuffer())?.applying(changes))
        #expect(try Metadata(decoding: fromEmpty) == changes)
    }

    @Test("what decoding rejects, the view rejects; a known key twice is left to decoding")
    func rejects() throws {
        for hex in ["c0", "91a161", "a3616263", "81a16101", "8101a161", "81a161c403616263", "81a161c3", "81a161a2",
                    "82a161a162", "81a161a162ff", "de00", "dfffffffff", "81a161a2c328"] {
            let bytes = ByteBuffer(hex: hex)
            #expect(throws: WireError.self) { try Metadata(decoding: bytes) }
            #expect(MetadataView(bytes) == nil, "\(hex)")
        }
        var twice = ByteBuffer(hex: "82")
        for value in ["a", "b"] { twice.writeBytes([0xAB] + Array("yomo-target".utf8) + [0xA1] + Array(value.utf8)) }
        #expect(MetadataView(twice) == nil)
        #expect(try Metadata(decoding: twice)["yomo-target"] == "b")
        // Traced metadata (str8 values) cut anywhere, headers included, or with
        // a byte changed: the view accepts exactly what decoding accepts.
        let traced: Metadata = [
            "yomo-tid": "V1StGXR8_Z5jdHi6B-myT", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "yomo-trace-id": "4bf92f3577b34da6a3ce929d0e0e4736", "yomo-span-id": "00f067aa0ba902b7", "note": "é",
        ]
        let whole = Array(traced.encoded().readableBytesView)
        #expect(MetadataView(ByteBuffer(bytes: whole)) != nil)
        for cut in 1..<whole.count {
            let prefix = ByteBuffer(bytes: whole[..<cut])
            #expect(throws: WireError.self) { try Metadata(decoding: prefix) }
            #expect(MetadataView(prefix) == nil, "cut at \(cut)")
        }
        var changes = SystemRandomNumberGenerator()
        for _ in 0..<5_000 {
            var changed = whole
            changed[Int.random(in: 0..<whole.count, using: &changes)] = UInt8.random(in: 0...255, using: &changes)
            let bytes = ByteBuffer(bytes: changed)
            let decodes = (try? Metadata(decoding: bytes)) != nil
            // A known key appearing twice is the one thing decoding takes and the view leaves to it.
            #expect(MetadataView(bytes) == nil || decodes, "\(changed)")
        }
        // Random bytes: whenever the view accepts, decoding accepts too.
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let count = Int.random(in: 0...24, using: &generator)
            var bytes = ByteBuffer(bytes: (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
            if Bool.random(using: &generator) { bytes = ByteBuffer(bytes: [0x81, 0xA1, 0x61] + bytes.readableBytesView) }
            if MetadataView(bytes) != nil { #expect(throws: Never.self) { try Metadata(decoding: bytes) } }
        }
    }
}

