internal import Glibc
internal import NIOCore
internal import YoMoWire

/// The frames a zipper held for stream functions when it closed gracefully,
/// kept beside `ZipperConfiguration.functionsFile` (its path with `.held`
/// added) for its next start, which holds them again for those functions:
/// a zipper restarted while a function was away (a rolling deploy restarting
/// both) no longer drops what it held for it. Written anew without the
/// frames a function of the next run said it handled, and removed once all
/// left that run's hold (a crash before finds what is left); a start later
/// than `unrouted_hold.after_last_observer` after the close drops them, said
/// in one line.
///
/// A header line with the close's wall-clock time in milliseconds since
/// 1970, then the frames as the wire carries them (y3 data frames, back to back):
///
///     yomo-zipper-held 1 1764876543210
///
/// The frames upstream zippers forwarded are named by index after the time
/// (since the fifty-ninth round of issue 14), so that what a function of
/// the next start finishes of them is remembered as this run's was
/// (`HeldFrames.remember`):
///
///     yomo-zipper-held 1 1764876543210 links 0-40,45
enum HeldFramesFile {
    static let header = "yomo-zipper-held 1 "
    /// The word after the time before the ranges of the mesh's frames.
    static let linksNote = "links"

    static func path(besides functionsFile: String) -> String { functionsFile + ".held" }

    static func encode(_ frames: [DataFrame], closedAt milliseconds: Int64, header: String = header, note: String = "") -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.writeString(header + "\(milliseconds)\(note.isEmpty ? "" : " " + note)\n")
        for frame in frames { frame.encode(into: &buffer) }
        return Array(buffer.readableBytesView)
    }

    /// The close's time and the frames; nil for a file that is not one
    /// (frames after a damaged one, or a torn last one, are lost with it).
    static func decode(_ bytes: [UInt8], header: String = header) -> (closedAt: Int64, frames: [DataFrame])? {
        decodeNoted(bytes, header: header).map { ($0.closedAt, $0.frames) }
    }

    /// `decode`, with the word the header line may carry after the time.
    static func decodeNoted(_ bytes: [UInt8], header: String) -> (closedAt: Int64, note: String, frames: [DataFrame])? {
        guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        let line = String(decoding: bytes[..<newline], as: UTF8.self)
        guard line.hasPrefix(header) else { return nil }
        let words = line.dropFirst(header.count).split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false)
        guard let closedAt = words.first.flatMap({ Int64($0) }) else { return nil }
        let note = words.count > 1 ? String(words[1]) : ""
        return (closedAt, note, HeldFrames.dataFramesWritten(in: ByteBuffer(bytes: bytes[(newline + 1)...])).map(\.frame))
    }

    /// `encode`, the frames an upstream zipper forwarded named in the header
    /// line, each once: the hold keeps every copy the mesh brought
    /// (`CopyKey.digest`, whose copies a function recognizes and a zipper's
    /// memory leaves out alike), and the next start would hold each again.
    /// Until the sixtieth round of issue 14 a frame was in the file once per
    /// copy held (four times in a `chaos --mesh --seed 12` run).
    static func encode(_ frames: [(frame: DataFrame, fromLink: Bool)], closedAt milliseconds: Int64) -> [UInt8] {
        var keys = Set<CopyDigest>()
        let frames = frames.filter { frame, fromLink in
            guard fromLink, let key = CopyKey.digest(of: frame) else { return true }
            return keys.insert(key).inserted
        }
        var ranges: [String] = []
        var index = 0
        while index < frames.count {
            guard frames[index].fromLink else {
                index += 1
                continue
            }
            let first = index
            while index + 1 < frames.count, frames[index + 1].fromLink { index += 1 }
            ranges.append(first == index ? "\(first)" : "\(first)-\(index)")
            index += 1
        }
        return encode(frames.map(\.frame), closedAt: milliseconds, note: ranges.isEmpty ? "" : linksNote + " " + ranges.joined(separator: ","))
    }

    /// `decode`, with whether an upstream zipper forwarded each frame (none
    /// in a file from before, or one whose note is not understood).
    static func decodeLinks(_ bytes: [UInt8]) -> (closedAt: Int64, frames: [(frame: DataFrame, fromLink: Bool)])? {
        guard let (closedAt, note, frames) = decodeNoted(bytes, header: header) else { return nil }
        var fromLinks = Set<Int>()
        let words = note.split(separator: " ")
        if words.count == 2, words[0] == linksNote {
            for range in words[1].split(separator: ",") {
                let bounds = range.split(separator: "-", maxSplits: 1).map { Int($0) }
                guard let low = bounds.first ?? nil, let high = bounds.last ?? nil, 0 <= low, low <= high, high < frames.count else { continue }
                fromLinks.formUnion(low...high)
            }
        }
        return (closedAt, frames.enumerated().map { ($1, fromLinks.contains($0)) })
    }

    static func remove(_ path: String) { unlink(path) }

    /// Milliseconds since 1970, by the wall clock (the only one two runs share).
    static func now() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1000 + Int64(spec.tv_nsec) / 1_000_000
    }
}

/// What the stream functions of each name finished of the frames upstream
/// zippers forwarded (`HeldFrames.remember`), kept beside
/// `ZipperConfiguration.functionsFile` (its path with `.finished` added)
/// for the next start: copies an upstream sends after a restart or a crash
/// (its own restart's, or what its link had not seen settled) are not given
/// to the name's next instance. Until the fifty-ninth round of issue 14 the
/// memory ended with the run; until the sixtieth only a graceful close
/// wrote it, now the zipper also writes it at most once a second while it
/// grows (`Zipper.writeFinishedFile`). Read at the next start, if written
/// within `unrouted_hold.after_last_observer`, and written anew with that
/// run's time. A header line as the held frames file's (its time: when it
/// was written), then a line per frame and name, oldest first:
///
///     yomo-zipper-finished 1 1764876543210
///     0123456789abcdef0123456789abcdef upper
enum FinishedFramesFile {
    static let header = "yomo-zipper-finished 1 "

    static func path(besides functionsFile: String) -> String { functionsFile + ".finished" }

    static func encode(_ finished: [(digest: CopyDigest, function: String)], closedAt milliseconds: Int64) -> [UInt8] {
        var text = header + "\(milliseconds)\n"
        for (digest, function) in finished where !function.contains("\n") {
            text += String(digest.fnv, radix: 16).leftPadded(to: 16) + String(digest.mix, radix: 16).leftPadded(to: 16) + " " + function + "\n"
        }
        return Array(text.utf8)
    }

    /// When it was written and what was finished; nil for a file that is not one
    /// (a damaged line is skipped).
    static func decode(_ bytes: [UInt8]) -> (closedAt: Int64, finished: [(digest: CopyDigest, function: String)])? {
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true)
        guard let first = lines.first, first.hasPrefix(header), let closedAt = Int64(first.dropFirst(header.count)) else { return nil }
        let finished = lines.dropFirst().compactMap { line -> (digest: CopyDigest, function: String)? in
            let utf8 = line.utf8
            guard utf8.count > 33, utf8[utf8.index(utf8.startIndex, offsetBy: 32)] == UInt8(ascii: " "),
                  let fnv = UInt64(line.prefix(16), radix: 16), let mix = UInt64(line.dropFirst(16).prefix(16), radix: 16)
            else { return nil }
            return (CopyDigest(fnv: fnv, mix: mix), String(line.dropFirst(33)))
        }
        return (closedAt, finished)
    }
}

/// The frames a zipper's mesh link had not delivered to its downstream when
/// the zipper closed gracefully (the downstream down or slow), kept beside
/// `ZipperConfiguration.functionsFile` for the next start, whose link
/// delivers them before anything newer: their sources had let go of them
/// (the link's receipt patience, or the close's end). One file per
/// downstream, named after it, in `HeldFramesFile`'s format with its own
/// header line:
///
///     yomo-zipper-mesh 1 1764876543210
///
/// While the zipper runs, the link appends to it each frame whose senders
/// its receipt patience lets go of (the spool), so that a crash before the
/// downstream settles them does not lose them; a file the spool began says
/// so after its time, which is when it began, and then how many of its
/// first frames the downstream settled (rewritten in place as they are, so
/// that a start after a crash does not send them again):
///
///     yomo-zipper-mesh 1 1764876543210 spooled 0000000042
enum MeshKeptFile {
    static let header = "yomo-zipper-mesh 1 "
    /// The word after the time in a file the spool began.
    static let spooledNote = "spooled"
    /// The settled count's digits, the header line's last before its newline.
    static let settledDigits = 10
    static let infix = ".mesh-"

    /// `functionsFile` with `.mesh-` and the downstream's name added, its
    /// bytes outside letters, digits, `.`, `_` and `-` written as `%XX`.
    static func path(besides functionsFile: String, downstream: String) -> String {
        functionsFile + infix + fileName(downstream)
    }

    static func fileName(_ downstream: String) -> String {
        var name = ""
        for byte in downstream.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
                name.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                name += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return name
    }

    /// The header line of a file the spool begins, none of its frames settled.
    static func spoolHeader(startedAt milliseconds: Int64) -> [UInt8] {
        encode([], closedAt: milliseconds, note: spoolNote(settled: 0))
    }

    /// What follows the time in a file the spool began, `settled` of its first frames settled.
    static func spoolNote(settled: Int) -> String { spooledNote + " " + settledField(settled) }

    /// `count` as the header's settled count: `settledDigits` digits, zeros first.
    static func settledField(_ count: Int) -> String { String(count).leftPadded(to: settledDigits) }

    /// `note`: what follows the time in a file the spool began (`spoolHeader`).
    static func encode(_ frames: [DataFrame], closedAt milliseconds: Int64, note: String = "") -> [UInt8] {
        HeldFramesFile.encode(frames, closedAt: milliseconds, header: header, note: note)
    }

    /// The most a link's file holds: what a close may write (its queue, and
    /// its client's outage buffer, each bounded by `mesh_queue max_bytes`).
    static func maximumBytes(_ queue: ZipperConfiguration.MeshQueue) -> Int { 2 * queue.maximumBytes }

    /// The file at `path` whole, or nil if there is none; one larger than
    /// `maximumBytes` and its header line is refused.
    static func read(_ path: String, queue: ZipperConfiguration.MeshQueue) throws(YoMoError) -> [UInt8]? {
        try readWholeFile(path, maximumBytes: maximumBytes(queue) + (1 << 20), what: "mesh kept frames file")
    }

    /// The time of the close (or of the spool's beginning), whether the
    /// spool began the file, how many of its first frames the downstream
    /// settled, and the frames (all of them); nil for a file that is not one.
    static func decode(_ bytes: [UInt8]) -> (closedAt: Int64, spooled: Bool, settled: Int, frames: [DataFrame])? {
        guard let (closedAt, note, frames) = HeldFramesFile.decodeNoted(bytes, header: header) else { return nil }
        if note.isEmpty { return (closedAt, false, 0, frames) }
        let words = note.split(separator: " ")
        guard words.count == 2, words[0] == spooledNote, words[1].count == settledDigits, let settled = Int(words[1]), settled >= 0 else {
            return nil
        }
        return (closedAt, true, min(settled, frames.count), frames)
    }

    static func remove(_ path: String) { unlink(path) }
}
