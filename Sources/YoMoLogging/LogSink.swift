import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where encoded records go: a file descriptor, memory, a socket. A `LogWriter`
/// calls `write` from one thread at a time (its writer thread, or the logging
/// thread in synchronous mode). Throwing makes the writer drop and count the records.
public protocol LogSink: Sendable {
    /// Writes one or more complete records, each ending in `\n`.
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// True for an interactive terminal; the text format then colours levels.
    var isTerminal: Bool { get }
}

extension LogSink {
    public var isTerminal: Bool { false }
}

/// Writes with `write(2)` to a file descriptor (stderr, stdout, an opened file).
/// Bypasses stdio buffering, so each batch of records reaches the descriptor at once.
public struct FileDescriptorSink: LogSink {
    public let fileDescriptor: Int32

    public init(fileDescriptor: Int32) {
        self.fileDescriptor = fileDescriptor
    }

    public static let standardError = FileDescriptorSink(fileDescriptor: 2)
    public static let standardOutput = FileDescriptorSink(fileDescriptor: 1)

    public var isTerminal: Bool { isatty(fileDescriptor) == 1 }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        try writeAll(fileDescriptor, bytes)
    }
}

/// Writes all of `bytes` to `descriptor`, again after a short write or EINTR;
/// on a failure, `errno` says why.
package func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) throws(LoggingError) {
    guard var base = bytes.baseAddress else { return }
    var remaining = bytes.count
    while remaining > 0 {
        let written = write(descriptor, base, remaining)
        if written < 0 {
            if errno == EINTR { continue }
            throw .sinkFailed("write(\(descriptor)) failed: errno \(errno)")
        }
        base += written
        remaining -= written
    }
}

/// Keeps everything written in memory, for tests.
public final class InMemoryLogSink: LogSink {
    private let storage = Mutex<[UInt8]>([])

    public init() {}

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        storage.withLock { $0.append(contentsOf: bytes) }
    }

    /// Everything written so far, decoded as UTF-8.
    public var text: String { storage.withLock { String(decoding: $0, as: UTF8.self) } }

    /// The records written so far, one per line, without the newline.
    public var lines: [String] { text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init) }

    public func reset() { storage.withLock { $0.removeAll() } }
}
