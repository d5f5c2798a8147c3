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
enum HeldFramesFile {
    static let header = "yomo-zipper-held 1 "

    static func path(besides functionsFile: String) -> String { functionsFile + ".held" }

    static func encode(_ frames: [DataFrame], closedAt milliseconds: Int64, header: String = header) -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.writeString(header + "\(milliseconds)\n")
        for frame in frames { frame.encode(into: &buffer) }
        return Array(buffer.readableBytesView)
    }

    /// The close's time and the frames; nil for a file that is not one
    /// (frames after a damaged one are lost with it).
    static func decode(_ bytes: [UInt8], header: String = header) -> (closedAt: Int64, frames: [DataFrame])? {
        guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        let line = String(decoding: bytes[..<newline], as: UTF8.self)
        guard line.hasPrefix(header), let closedAt = Int64(line.dropFirst(header.count)) else { return nil }
        return (closedAt, HeldFrames.dataFramesWritten(in: ByteBuffer(bytes: bytes[(newline + 1)...])).map(\.frame))
    }

    static func remove(_ path: String) { unlink(path) }

    /// Milliseconds since 1970, by the wall clock (the only one two runs share).
    static func now() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1000 + Int64(spec.tv_nsec) / 1_000_000
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
enum MeshKeptFile {
    static let header = "yomo-zipper-mesh 1 "
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
                name += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return name
    }

    static func encode(_ frames: [DataFrame], closedAt milliseconds: Int64) -> [UInt8] {
        HeldFramesFile.encode(frames, closedAt: milliseconds, header: header)
    }

    static func decode(_ bytes: [UInt8]) -> (closedAt: Int64, frames: [DataFrame])? {
        HeldFramesFile.decode(bytes, header: header)
    }

    static func remove(_ path: String) { unlink(path) }
}
