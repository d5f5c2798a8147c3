internal import Glibc
internal import YoMoLogging

/// The stream functions a zipper expects back after a restart, kept in
/// `ZipperConfiguration.functionsFile`: those connected, and those that left
/// within `unrouted_hold.after_last_observer`. A restarted zipper holds the
/// frames of their tags for each of them until it is back (`HeldFrames`), so
/// that in a fan-out a function back later than another of its tag misses
/// nothing; without it, it missed what was routed to the other meanwhile.
///
/// One line per function name: the name and its wanted target, with `%`, tab,
/// line breaks and other control bytes written `%XX`, then its tags in hex:
///
///     yomo-zipper-functions 1
///     alerter<TAB><TAB>0x33,0x34
enum RememberedFunctions {
    static let header = "yomo-zipper-functions 1"
    /// Names come from peers: at most this many (tag, name) pairs are kept, as
    /// `HeldFrames` keeps, and a longer file is not read.
    static let maximumPairs = HeldFrames.maximumRememberedTags
    static let maximumFileBytes = 4 << 20

    static func encode(_ functions: [RouteMember]) -> [UInt8] {
        var out = Array((header + "\n").utf8)
        var pairs = 0
        for function in functions.sorted(by: { $0.name < $1.name }) where !function.observedTags.isEmpty {
            guard pairs + function.observedTags.count <= maximumPairs else { break }
            pairs += function.observedTags.count
            escape(function.name, into: &out)
            out.append(UInt8(ascii: "\t"))
            escape(function.wantedTarget, into: &out)
            out.append(UInt8(ascii: "\t"))
            out += Array(function.observedTags.sorted().map { "0x" + String($0, radix: 16) }.joined(separator: ",").utf8)
            out.append(UInt8(ascii: "\n"))
        }
        return out
    }

    /// The functions in `bytes`, and how many lines were not understood
    /// (skipped: a damaged file costs what it lost, not the start).
    static func decode(_ bytes: [UInt8]) -> (functions: [RouteMember], skippedLines: Int) {
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true)
        guard let first = lines.first, String(decoding: first, as: UTF8.self) == header else {
            return ([], lines.count)
        }
        lines.removeFirst()
        var functions: [RouteMember] = []
        var skipped = 0, pairs = 0
        for line in lines {
            let fields = line.split(separator: UInt8(ascii: "\t"), maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3, let name = unescape(fields[0]), !name.isEmpty, let target = unescape(fields[1]) else {
                skipped += 1
                continue
            }
            let tags = fields[2].split(separator: UInt8(ascii: ",")).map { UInt32(yomoTag: String(decoding: $0, as: UTF8.self)) }
            guard !tags.isEmpty, !tags.contains(nil), pairs + tags.count <= maximumPairs else {
                skipped += 1
                continue
            }
            pairs += tags.count
            functions.append(RouteMember(
                connectionID: 0, name: name, clientID: "", clientType: .streamFunction,
                observedTags: Set(tags.compactMap { $0 }), wantedTarget: target))
        }
        return (functions, skipped)
    }

    private static func escape(_ text: String, into out: inout [UInt8]) {
        for byte in text.utf8 {
            if byte < 0x20 || byte == 0x7F || byte == UInt8(ascii: "%") {
                out += Array("%".utf8) + Array(String(byte, radix: 16, uppercase: true).leftPadded(to: 2).utf8)
            } else {
                out.append(byte)
            }
        }
    }

    private static func unescape(_ field: ArraySlice<UInt8>) -> String? {
        var bytes: [UInt8] = []
        var index = field.startIndex
        while index < field.endIndex {
            let byte = field[index]
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                index += 1
                continue
            }
            guard index + 2 < field.endIndex,
                  let value = UInt8(String(decoding: field[(index + 1)..<(index + 3)], as: UTF8.self), radix: 16)
            else { return nil }
            bytes.append(value)
            index += 3
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The functions the file at `path` remembers; nil when there is no file.
    static func read(from path: String) throws(YoMoError) -> (functions: [RouteMember], skippedLines: Int)? {
        guard let bytes = try readWholeFile(path, maximumBytes: maximumFileBytes, what: "stream functions file") else { return nil }
        return decode(bytes)
    }

    static func write(_ functions: [RouteMember], to path: String) throws(YoMoError) {
        try writeFileAtomically(path, encode(functions), mode: 0o644, what: "stream functions file")
    }
}

extension String {
    /// With zeros in front, to `width` characters at least.
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// The bytes of the file at `path`, or nil when it does not exist; a file over
/// `maximumBytes` is an error.
func readWholeFile(_ path: String, maximumBytes: Int, what: String) throws(YoMoError) -> [UInt8]? {
    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else {
        if errno == ENOENT { return nil }
        throw fileFailure("read", what, path)
    }
    defer { close(descriptor) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
        if count < 0, errno == EINTR { continue }
        guard count >= 0 else { throw fileFailure("read", what, path) }
        if count == 0 { return bytes }
        bytes += chunk[0..<count]
        guard bytes.count <= maximumBytes else {
            throw YoMoError(.invalidConfiguration, "\(what) \(path) is over \(maximumBytes) bytes")
        }
    }
}

/// "cannot `action` `what` `path`: " and what `errno` says.
private func fileFailure(_ action: String, _ what: String, _ path: String) -> YoMoError {
    YoMoError(.invalidConfiguration, "cannot \(action) \(what) \(path): \(String(cString: strerror(errno)))")
}

/// Writes `bytes` to `path` under another name and renames it, so that a
/// crash never leaves a part of it behind; makes the directories leading to it.
func writeFileAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t, what: String) throws(YoMoError) {
    func failure(_ action: String) -> YoMoError { fileFailure(action, what, path) }
    try makeDirectories(leadingTo: path) { failure("create the directory of the") }
    let temporary = "\(path).\(getpid()).tmp"
    let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard descriptor >= 0 else { throw failure("create") }
    do {
        try bytes.withUnsafeBytes { try writeAll(descriptor, $0) }
    } catch {
        let error = failure("write")
        close(descriptor)
        unlink(temporary)
        throw error
    }
    guard close(descriptor) == 0, rename(temporary, path) == 0 else {
        let error = failure("create")
        unlink(temporary)
        throw error
    }
}

/// Appends `bytes` to `path`, creating it (and the directories leading to
/// it) with `header` first; returns the file's size after. Not synced: what
/// it guards against is the process's end, not the machine's.
func appendToFile(_ path: String, header: [UInt8], _ bytes: [UInt8], mode: mode_t, what: String) throws(YoMoError) -> Int {
    func failure(_ action: String) -> YoMoError { fileFailure(action, what, path) }
    try makeDirectories(leadingTo: path) { failure("create the directory of the") }
    let descriptor = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, mode)
    guard descriptor >= 0 else { throw failure("open") }
    defer { close(descriptor) }
    var status = stat()
    guard fstat(descriptor, &status) == 0 else { throw failure("examine") }
    let whole = status.st_size == 0 ? header + bytes : bytes
    do {
        try whole.withUnsafeBytes { try writeAll(descriptor, $0) }
    } catch {
        let error = failure("append to")
        // A torn frame would hide every frame appended after it.
        _ = ftruncate(descriptor, status.st_size)
        throw error
    }
    return Int(status.st_size) + whole.count
}

/// Writes `bytes` over those at `offset` in the file at `path`, which must exist.
func overwriteInFile(_ path: String, at offset: Int, _ bytes: [UInt8], what: String) throws(YoMoError) {
    let descriptor = open(path, O_WRONLY | O_CLOEXEC)
    guard descriptor >= 0 else { throw fileFailure("open", what, path) }
    defer { close(descriptor) }
    let written = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, off_t(offset)) }
    guard written >= 0 else { throw fileFailure("write", what, path) }
    guard written == bytes.count else { throw YoMoError(.invalidConfiguration, "cannot write \(what) \(path): short write") }
}

/// `mkdir -p` of the directory holding `path`.
func makeDirectories(leadingTo path: String, _ failure: () -> YoMoError) throws(YoMoError) {
    var directory = ""
    let components = path.split(separator: "/", omittingEmptySubsequences: false).dropLast()
    for (index, component) in components.enumerated() {
        directory += index == 0 ? String(component) : "/\(component)"
        guard !directory.isEmpty, !component.isEmpty, component != "." else { continue }
        if mkdir(directory, 0o755) != 0, errno != EEXIST { throw failure() }
    }
}
