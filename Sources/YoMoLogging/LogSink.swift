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
///
/// A pipe whose reader is gone (a log shipper that crashed, `| head`) fails
/// the write with EPIPE and is counted as a failed write: SIGPIPE, whose
/// default action ends the process, is blocked in the writing thread for the
/// call, and one it raised is taken off the thread before the mask returns.
/// Without that, a zipper's log reader exiting ended the zipper (status 141).
/// A non-blocking descriptor (a parent can leave stdout so) that is full is
/// waited for, as a blocking one would be, rather than failing.
package func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) throws(LoggingError) {
    guard var base = bytes.baseAddress else { return }
    var remaining = bytes.count
    try withBrokenPipeAsError { () throws(LoggingError) in
        while remaining > 0 {
            let written = write(descriptor, base, remaining)
            if written < 0 {
                let failure = errno
                if failure == EINTR { continue }
                if failure == EAGAIN || failure == EWOULDBLOCK {
                    var writable = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&writable, 1, -1)
                    continue
                }
                if failure == EPIPE {
                    takePendingBrokenPipeSignal()
                    throw .sinkFailed("write(\(descriptor)) failed: its reader is gone (EPIPE)")
                }
                throw .sinkFailed("write(\(descriptor)) failed: errno \(failure)")
            }
            base += written
            remaining -= written
        }
    }
}

#if canImport(Glibc)
/// Runs `body` with SIGPIPE blocked in the calling thread (and only there:
/// the process's disposition, which the program owns, is left alone).
private func withBrokenPipeAsError<E: Error>(_ body: () throws(E) -> Void) throws(E) {
    var pipeOnly = sigset_t()
    sigemptyset(&pipeOnly)
    sigaddset(&pipeOnly, SIGPIPE)
    var previous = sigset_t()
    pthread_sigmask(SIG_BLOCK, &pipeOnly, &previous)
    defer { if sigismember(&previous, SIGPIPE) == 0 { pthread_sigmask(SIG_SETMASK, &previous, nil) } }
    try body()
}

/// Takes the SIGPIPE an EPIPE write raised off the thread, so unblocking it
/// does not deliver it.
private func takePendingBrokenPipeSignal() {
    var pipeOnly = sigset_t()
    sigemptyset(&pipeOnly)
    sigaddset(&pipeOnly, SIGPIPE)
    var now = timespec(tv_sec: 0, tv_nsec: 0)
    while sigtimedwait(&pipeOnly, nil, &now) < 0 && errno == EINTR {}
}
#else
private func withBrokenPipeAsError<E: Error>(_ body: () throws(E) -> Void) throws(E) { try body() }
private func takePendingBrokenPipeSignal() {}
#endif

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
