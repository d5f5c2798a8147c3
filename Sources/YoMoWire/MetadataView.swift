package import NIOCore

/// Encoded metadata read in place: what a zipper needs to route a frame and to
/// hand its trace context on, without decoding every value into a string and
/// encoding the map again. Values of a few known keys are found by position;
/// changes to them are written into a copy of the bytes (fixed-width trace ids
/// in place) or appended as new entries.
package struct MetadataView {
    /// The keys whose values a zipper reads or may change.
    package enum Key: Int, CaseIterable, Sendable {
        case target, wantedTarget, tid, traceparent, tracestate, traceID, spanID

        package var string: String {
            switch self {
            case .target: Metadata.ReservedKey.target
            case .wantedTarget: Metadata.ReservedKey.wantedTarget
            case .tid: Metadata.ReservedKey.tid
            case .traceparent: Metadata.traceparentKey
            case .tracestate: "tracestate"
            case .traceID: Metadata.ReservedKey.traceID
            case .spanID: Metadata.ReservedKey.spanID
            }
        }

        /// The keys that carry trace context.
        package var isTraceKey: Bool {
            switch self {
            case .traceparent, .tracestate, .traceID, .spanID: true
            case .target, .wantedTarget, .tid: false
            }
        }

        package static let traceKeys: [Key] = allCases.filter(\.isTraceKey)

        package init?(_ key: String) {
            // By length, then one comparison: equal small strings compare as two words.
            let candidate: Key
            switch key.utf8.count {
            case 8: candidate = .tid
            case 10: candidate = .tracestate
            case 11: candidate = key == Key.target.string ? .target : .traceparent
            case 12: candidate = .spanID
            case 13: candidate = .traceID
            case 18: candidate = .wantedTarget
            default: return nil
            }
            guard key == candidate.string else { return nil }
            self = candidate
        }

        /// The key's form as a value kept as numbers, for the trace keys that have one.
        var traceKey: StoredValue.TraceKey? {
            switch self {
            case .traceparent: .traceparent
            case .traceID: .traceID
            case .spanID: .spanID
            default: nil
            }
        }

        /// The key whose UTF-8 is `bytes`, compared without making a string.
        init?(utf8 bytes: UnsafeRawBufferPointer) {
            let first: Key, second: Key?
            switch bytes.count {
            case 8: (first, second) = (.tid, nil)
            case 10: (first, second) = (.tracestate, nil)
            case 11: (first, second) = (.target, .traceparent)
            case 12: (first, second) = (.spanID, nil)
            case 13: (first, second) = (.traceID, nil)
            case 18: (first, second) = (.wantedTarget, nil)
            default: return nil
            }
            if first.matches(bytes) {
                self = first
            } else if let second, second.matches(bytes) {
                self = second
            } else {
                return nil
            }
        }

        /// The keys are 8 to 18 bytes long: their first and last eight bytes (and,
        /// at 18, the eight after the first) compared as words decide a match.
        private func matches(_ bytes: UnsafeRawBufferPointer) -> Bool {
            let count = bytes.count
            let signature = self.signature
            guard count == signature.count, count >= 8 else { return false }
            return bytes.loadUnaligned(as: UInt64.self) == signature.first
                && bytes.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self) == signature.last
                && (count <= 16 || bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self) == signature.middle)
        }

        /// The key's length and words (little-endian) as `matches` compares
        /// them: constants, so a frame's scan reads no table (a test derives
        /// them from `string`).
        var signature: (count: Int, first: UInt64, middle: UInt64, last: UInt64) {
            switch self {
            case .target: (11, 0x7261_742D_6F6D_6F79, 0, 0x7465_6772_6174_2D6F)
            case .wantedTarget: (18, 0x6E61_772D_6F6D_6F79, 0x6772_6174_2D64_6574, 0x7465_6772_6174_2D64)
            case .tid: (8, 0x6469_742D_6F6D_6F79, 0, 0x6469_742D_6F6D_6F79)
            case .traceparent: (11, 0x7261_7065_6361_7274, 0, 0x746E_6572_6170_6563)
            case .tracestate: (10, 0x6174_7365_6361_7274, 0, 0x6574_6174_7365_6361)
            case .traceID: (13, 0x6172_742D_6F6D_6F79, 0, 0x6469_2D65_6361_7274)
            case .spanID: (12, 0x6170_732D_6F6D_6F79, 0, 0x6469_2D6E_6170_732D)
            }
        }
    }

    /// Where a value lies in `bytes` (offsets from its reader index): the whole
    /// string, header included, and its content. Three 32-bit offsets, so that
    /// the view (copied along with each frame it routes) stays small.
    struct Location {
        private let start: UInt32, contentStart: UInt32, end: UInt32

        /// Offsets below 2^32 (the view's bytes are shorter), in order.
        init(start: Int, contentStart: Int, end: Int) {
            (self.start, self.contentStart, self.end) =
                (UInt32(truncatingIfNeeded: start), UInt32(truncatingIfNeeded: contentStart), UInt32(truncatingIfNeeded: end))
        }

        /// No value ends at 0: the map header comes first.
        static let absent = Location(start: 0, contentStart: 0, end: 0)
        var isAbsent: Bool { end == 0 }
        var whole: Range<Int> { Int(start)..<Int(end) }
        var content: Range<Int> { Int(contentStart)..<Int(end) }
    }

    /// One slot per `Key`, inline: a dictionary would allocate for every frame.
    struct Locations {
        private var slots: (Location, Location, Location, Location, Location, Location, Location)
            = (.absent, .absent, .absent, .absent, .absent, .absent, .absent)

        subscript(key: Key) -> Location? {
            get {
                let slot = switch key {
                case .target: slots.0
                case .wantedTarget: slots.1
                case .tid: slots.2
                case .traceparent: slots.3
                case .tracestate: slots.4
                case .traceID: slots.5
                case .spanID: slots.6
                }
                return slot.isAbsent ? nil : slot
            }
            set {
                let slot = newValue ?? .absent
                switch key {
                case .target: slots.0 = slot
                case .wantedTarget: slots.1 = slot
                case .tid: slots.2 = slot
                case .traceparent: slots.3 = slot
                case .tracestate: slots.4 = slot
                case .traceID: slots.5 = slot
                case .spanID: slots.6 = slot
                }
            }
        }
    }

    /// The metadata bytes (empty: the empty map).
    package let bytes: ByteBuffer
    private var count = 0
    private var headerSize = 0
    private var values = Locations()

    /// Nil when `bytes` are not what `Metadata(decoding:)` accepts, or when a
    /// known key appears twice (both leave the frame to the decoding path,
    /// which reports the error or keeps the last value).
    package init?(_ bytes: ByteBuffer) {
        self.bytes = bytes
        guard bytes.readableBytes > 0 else { return }
        // Offsets are kept in 32 bits; longer metadata takes the decoding path.
        guard bytes.readableBytes < UInt32.max else { return nil }
        // Scanned into locals, then stored once: writing `self` from inside the
        // closure made every frame pay a dynamic exclusivity check and copies.
        // The locations are written through a reference: held as a value in
        // the loop, their seven slots were spilled and reloaded every entry.
        var values = Locations()
        guard let scanned = bytes.withUnsafeReadableBytes({ Self.scan($0, into: &values) }) else { return nil }
        (count, headerSize) = scanned
        self.values = values
    }

    /// The map's entry count and header size, with the known values'
    /// locations written into `values`; nil when `input` is not what
    /// `Metadata(decoding:)` accepts, or a known key appears twice.
    private static func scan(_ input: UnsafeRawBufferPointer, into values: inout Locations) -> (count: Int, headerSize: Int)? {
        func bigEndian(at index: Int, size: Int) -> Int? {
            guard index + size <= input.count else { return nil }
            var value = 0
            for position in index..<index + size { value = value << 8 | Int(input[position]) }
            return value
        }
        let count: Int, headerSize: Int
        let marker = Int(input[0])
        switch marker {
        case 0x80...0x8F: (count, headerSize) = (marker & 0x0F, 1)
        case 0xDE: guard let value = bigEndian(at: 1, size: 2) else { return nil }; (count, headerSize) = (value, 3)
        case 0xDF: guard let value = bigEndian(at: 1, size: 4) else { return nil }; (count, headerSize) = (value, 5)
        default: return nil
        }
        var offset = headerSize
        for _ in 0..<count {
            guard let key = string(in: input, at: offset), let value = string(in: input, at: key.end) else { return nil }
            offset = value.end
            if let known = Key(utf8: UnsafeRawBufferPointer(rebasing: input[key.contentStart..<key.end])) {
                guard values[known] == nil else { return nil }
                values[known] = Location(start: key.end, contentStart: value.contentStart, end: value.end)
            }
        }
        return offset == input.count ? (count, headerSize) : nil
    }

    /// Where the msgpack string at `offset` has its content and ends, checked
    /// as decoding checks it (whole, valid UTF-8); nil otherwise. Inlined into
    /// the scan, which runs for every frame: most strings are short and ASCII.
    @inline(__always)
    private static func string(in input: UnsafeRawBufferPointer, at offset: Int) -> (contentStart: Int, end: Int)? {
        guard offset < input.count else { return nil }
        let marker = input[offset]
        let length: Int, header: Int
        if marker & 0xE0 == 0xA0 {
            (length, header) = (Int(marker & 0x1F), 1)
        } else if marker == 0xD9, offset &+ 1 < input.count {
            // str8: traceparent and trace ids (32 to 255 bytes).
            (length, header) = (Int(input[offset &+ 1]), 2)
        } else {
            guard let (longer, size) = MsgpackReader.stringHeader(in: input, at: offset) else { return nil }
            (length, header) = (longer, size)
        }
        // The header fits (checked above), so neither difference can be negative.
        let contentStart = offset &+ header
        guard length <= input.count &- contentStart else { return nil }
        let end = contentStart &+ length
        let content = UnsafeRawBufferPointer(rebasing: input[contentStart..<end])
        guard isASCII(content) || String(validating: content.assumingMemoryBound(to: UInt8.self), as: UTF8.self) != nil else {
            return nil
        }
        return (contentStart, end)
    }

    /// Whether the map has `key`.
    package func contains(_ key: Key) -> Bool { values[key] != nil }

    /// The value of `key` as a string; only this makes one.
    package func string(_ key: Key) -> String? {
        values[key].map { text(at: $0.content) }
    }

    /// `body` over the bytes of `key`'s value (no string made); nil without it.
    package func withValueBytes<Result>(_ key: Key, _ body: (UnsafeRawBufferPointer) -> Result) -> Result? {
        guard let content = values[key]?.content else { return nil }
        return bytes.withUnsafeReadableBytes { body(UnsafeRawBufferPointer(rebasing: $0[content])) }
    }

    /// The value of any key, as decoding gives it (the last of a key written
    /// twice), found by walking the map: no map is built.
    package func string(forKey key: String) -> String? {
        if let known = Key(key) { return string(known) }
        var key = key
        let content = key.withUTF8 { wanted -> Range<Int>? in
            bytes.withUnsafeReadableBytes { input -> Range<Int>? in
                // The bytes were checked when the view was made: every string is whole.
                func nextString(at offset: inout Int) -> Range<Int> {
                    let (length, header) = MsgpackReader.stringHeader(in: input, at: offset)!
                    defer { offset += header + length }
                    return offset + header..<offset + header + length
                }
                var offset = headerSize
                var found: Range<Int>?
                for _ in 0..<count {
                    let candidate = nextString(at: &offset)
                    let value = nextString(at: &offset)
                    if candidate.count == wanted.count,
                       UnsafeRawBufferPointer(rebasing: input[candidate]).elementsEqual(UnsafeRawBufferPointer(wanted)) {
                        found = value
                    }
                }
                return found
            }
        }
        return content.map(text(at:))
    }

    /// The map, decoded. The view's bytes were checked as decoding checks
    /// them, so this cannot fail.
    package var decoded: Metadata {
        (try? Metadata(decoding: bytes)) ?? Metadata()
    }

    private func text(at content: Range<Int>) -> String {
        bytes.withUnsafeReadableBytes { String(decoding: UnsafeRawBufferPointer(rebasing: $0[content]), as: UTF8.self) }
    }

    /// The values of the trace keys present, as `Metadata` (trace ids as
    /// numbers, so reading them makes no strings).
    package var traceMetadata: Metadata {
        var metadata = Metadata()
        metadata.entries.reserveCapacity(4)
        for key in Key.traceKeys {
            guard let content = values[key]?.content else { continue }
            let stored = canonicalValue(key, at: content) ?? .text(text(at: content))
            metadata.entries.append(Metadata.Entry(key: key.string, stored: stored))
        }
        return metadata
    }

    /// The value at `content` as numbers, if `key` has a numeric form and the
    /// value is in it.
    private func canonicalValue(_ key: Key, at content: Range<Int>) -> StoredValue? {
        guard let kind = key.traceKey else { return nil }
        return bytes.withUnsafeReadableBytes { StoredValue(kind, UnsafeRawBufferPointer(rebasing: $0[content])) }
    }

    /// The trace values as numbers, when every trace key present holds its
    /// canonical form (lowercase hex; `traceparent` version 00) and there is no
    /// `tracestate`: what the zipper hands on by writing digits over digits.
    /// Nil otherwise (the caller takes `traceMetadata`'s general path).
    package struct CanonicalTrace: Sendable {
        package var traceparent: TraceparentFields?
        package var traceID: (high: UInt64, low: UInt64)?
        package var spanID: UInt64?
    }

    package var canonicalTrace: CanonicalTrace? {
        guard values[.tracestate] == nil else { return nil }
        let traceparentAt = values[.traceparent]?.content, traceIDAt = values[.traceID]?.content, spanIDAt = values[.spanID]?.content
        return bytes.withUnsafeReadableBytes { input -> CanonicalTrace? in
            var trace = CanonicalTrace()
            var traceparent: UnsafeRawBufferPointer?
            if let traceparentAt {
                let content = UnsafeRawBufferPointer(rebasing: input[traceparentAt])
                guard let fields = TraceparentFields(canonical: content) else { return nil }
                (trace.traceparent, traceparent) = (fields, content)
            }
            // The YoMo keys usually repeat traceparent's digits: equal bytes are
            // the same numbers, compared instead of parsed again.
            if let traceIDAt {
                let content = UnsafeRawBufferPointer(rebasing: input[traceIDAt])
                guard content.count == 32 else { return nil }
                if let fields = trace.traceparent, let traceparent, Self.sameBytes(content, traceparent, at: 3) {
                    trace.traceID = (fields.traceIDHigh, fields.traceIDLow)
                } else {
                    guard let high = StoredValue.hex64(content, at: 0), let low = StoredValue.hex64(content, at: 16) else { return nil }
                    trace.traceID = (high, low)
                }
            }
            if let spanIDAt {
                let content = UnsafeRawBufferPointer(rebasing: input[spanIDAt])
                guard content.count == 16 else { return nil }
                if let fields = trace.traceparent, let traceparent, Self.sameBytes(content, traceparent, at: 36) {
                    trace.spanID = fields.spanID
                } else {
                    guard let value = StoredValue.hex64(content, at: 0) else { return nil }
                    trace.spanID = value
                }
            }
            return trace
        }
    }

    /// Whether `digits` (16 or 32 bytes) are the bytes of `traceparent` at
    /// `offset`: compared a word at a time.
    @inline(__always)
    static func sameBytes(_ digits: UnsafeRawBufferPointer, _ traceparent: UnsafeRawBufferPointer, at offset: Int) -> Bool {
        func word(_ index: Int) -> UInt64 {
            digits.loadUnaligned(fromByteOffset: index, as: UInt64.self)
                ^ traceparent.loadUnaligned(fromByteOffset: offset &+ index, as: UInt64.self)
        }
        var different = word(0) | word(8)
        if digits.count == 32 { different |= word(16) | word(24) }
        return different == 0
    }

    /// New trace values for keys the metadata already holds in canonical form:
    /// written digit over digit, the lengths being fixed.
    package struct TracePatch: Sendable {
        package var traceparent: TraceparentFields?
        package var yomo: (traceIDHigh: UInt64, traceIDLow: UInt64, spanID: UInt64)?

        package init(
            traceparent: TraceparentFields? = nil, yomo: (traceIDHigh: UInt64, traceIDLow: UInt64, spanID: UInt64)? = nil
        ) {
            self.traceparent = traceparent
            self.yomo = yomo
        }

        package var isEmpty: Bool { traceparent == nil && yomo == nil }

        /// Calls `body` with each value to write and its key (no array: this runs per frame).
        func forEach(_ body: (Key, StoredValue) -> Void) {
            if let traceparent { body(.traceparent, .traceparent(traceparent)) }
            if let yomo {
                body(.traceID, .traceID(high: yomo.traceIDHigh, low: yomo.traceIDLow))
                body(.spanID, .spanID(yomo.spanID))
            }
        }
    }

    /// `trace` as digits to write over these very bytes, wherever they are copied
    /// to (`DataFrame.encode(into:patch:)` writes them as it encodes a frame, so
    /// the zipper makes no buffer of its own per frame). Nil when a value the
    /// patch writes is absent or of another length.
    ///
    /// `present`, the values `canonicalTrace` read from these bytes, lets the
    /// patch skip digits that stay the same: a child span keeps its parent's
    /// trace id, so usually only span ids (and flags) are written.
    package func patch(_ trace: TracePatch, over present: CanonicalTrace? = nil) -> MetadataPatch? {
        var fits = true
        trace.forEach { key, value in
            if values[key]?.content.count != value.utf8Count { fits = false }
        }
        guard fits else { return nil }
        return MetadataPatch(
            trace: trace, present: present, traceparentAt: values[.traceparent]?.content.lowerBound ?? 0,
            traceIDAt: values[.traceID]?.content.lowerBound ?? 0, spanIDAt: values[.spanID]?.content.lowerBound ?? 0
        )
    }

    /// The bytes with `changes` applied: a key already present gets its new value
    /// written over the old one, which must have the same encoded length (trace
    /// ids do); a key not present is appended. `trace` is written over trace
    /// values present, as `patch(_:over:)` writes it. Nil when a value would
    /// change length, a key is not one of `Key`, or `trace` does not fit: the
    /// caller then re-encodes.
    package func applying(_ changes: Metadata, trace: TracePatch = TracePatch(), over present: CanonicalTrace? = nil) -> ByteBuffer? {
        guard !changes.isEmpty || !trace.isEmpty else { return bytes }
        guard let patch = patch(trace, over: present) else { return nil }
        // First pass: can it be done, and how long is the result?
        var appendedCount = 0
        var appendedLength = 0
        for entry in changes.entries {
            guard let key = Key(entry.key) else { return nil }
            let valueLength = MsgpackWriter.stringSize(entry.stored.utf8Count)
            if let existing = values[key] {
                // Same content length and same header size: the header bytes are the same too.
                guard existing.content.count == entry.stored.utf8Count, existing.whole.count == valueLength else { return nil }
            } else {
                appendedCount += 1
                appendedLength += MsgpackWriter.stringSize(entry.key.utf8.count) + valueLength
            }
        }
        let newCount = count + appendedCount
        let newHeaderSize = MsgpackWriter.mapHeaderSize(newCount)
        let entriesLength = bytes.readableBytes - headerSize
        let totalLength = newHeaderSize + entriesLength + appendedLength
        var output = ByteBuffer()
        output.writeWithUnsafeMutableBytes(minimumWritableBytes: totalLength) { buffer in
            var writer = RawWriter(buffer)
            writer.writeMsgpackMapHeader(newCount)
            if entriesLength > 0 {
                bytes.withUnsafeReadableBytes { input in
                    UnsafeMutableRawBufferPointer(rebasing: buffer[newHeaderSize..<newHeaderSize + entriesLength])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: input[headerSize...]))
                }
            }
            // Second pass: new values over old ones (same length), new keys at the end.
            var end = newHeaderSize + entriesLength
            for entry in changes.entries {
                let key = Key(entry.key)!
                if let existing = values[key] {
                    var patcher = RawWriter(buffer)
                    patcher.offset = existing.content.lowerBound - headerSize + newHeaderSize
                    entry.stored.writeContent(into: &patcher)
                } else {
                    writer.offset = end
                    writer.writeMsgpackString(entry.key)
                    entry.stored.write(into: &writer)
                    end = writer.offset
                }
            }
            // A longer map header moves every value by the difference.
            patch.apply(to: buffer, shift: newHeaderSize - headerSize)
            precondition(end == totalLength, "metadata length miscounted")
            return totalLength
        }
        return output
    }
}

/// Trace digits to write over encoded metadata (`MetadataView.patch(_:over:)`):
/// where its trace values start, and what to write there.
package struct MetadataPatch: Sendable {
    fileprivate let trace: MetadataView.TracePatch
    fileprivate let present: MetadataView.CanonicalTrace?
    /// Where the values' contents start (0 for a value the patch does not write).
    fileprivate let traceparentAt: Int, traceIDAt: Int, spanIDAt: Int

    /// Writes the digits over `metadata`, a copy of the view's bytes.
    package func apply(to metadata: UnsafeMutableRawBufferPointer) {
        apply(to: metadata, shift: 0)
    }

    /// A copy of `bytes` (the view's) with the digits written over it.
    package func applied(to bytes: ByteBuffer) -> ByteBuffer {
        var copy = ByteBuffer()
        copy.writeWithUnsafeMutableBytes(minimumWritableBytes: bytes.readableBytes) { output in
            bytes.withUnsafeReadableBytes { UnsafeMutableRawBufferPointer(rebasing: output[..<$0.count]).copyMemory(from: $0) }
            apply(to: UnsafeMutableRawBufferPointer(rebasing: output[..<bytes.readableBytes]))
            return bytes.readableBytes
        }
        return copy
    }

    /// `shift`: how far the values moved in `buffer` from where they were in the view's bytes.
    fileprivate func apply(to buffer: UnsafeMutableRawBufferPointer, shift: Int) {
        func writer(at offset: Int) -> RawWriter {
            var writer = RawWriter(buffer)
            writer.offset = offset + shift
            return writer
        }
        // Both formats usually carry the same span id: its digits are made once.
        let spanID = trace.traceparent?.spanID ?? trace.yomo?.spanID ?? 0
        let spanDigits = RawWriter.hexDigits(spanID)
        if let fields = trace.traceparent {
            if let old = present?.traceparent, old.traceIDHigh == fields.traceIDHigh, old.traceIDLow == fields.traceIDLow {
                // `00-<trace id>-<span id>-<flags>`: the span id at 36, the flags at 53.
                var writer = writer(at: traceparentAt + 36)
                writer.writeHex(digits: spanDigits)
                writer.offset += 1
                writer.writeHex(byte: fields.flags)
            } else {
                var writer = writer(at: traceparentAt)
                StoredValue.traceparent(fields).writeContent(into: &writer)
            }
        }
        if let yomo = trace.yomo {
            let sameTraceID = present?.traceID.map { $0 == (yomo.traceIDHigh, yomo.traceIDLow) } ?? false
            if !sameTraceID {
                var writer = writer(at: traceIDAt)
                StoredValue.traceID(high: yomo.traceIDHigh, low: yomo.traceIDLow).writeContent(into: &writer)
            }
            var writer = writer(at: spanIDAt)
            writer.writeHex(digits: yomo.spanID == spanID ? spanDigits : RawWriter.hexDigits(yomo.spanID))
        }
    }
}

extension DataFrame {
    /// This frame with `patch` written over a copy of its metadata: for a frame
    /// that is held (queued, or kept for a resend) rather than encoded now.
    package func applying(_ patch: MetadataPatch?) -> DataFrame {
        guard let patch else { return self }
        return DataFrame(tag: tag, metadata: patch.applied(to: metadata), payload: payload)
    }
}
