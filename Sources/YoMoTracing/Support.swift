#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The process environment as a dictionary, for the `environment:` parameters of
/// the configuration types (tests pass their own dictionary instead).
public enum ProcessEnvironment {
    public static var current: [String: String] {
        var result: [String: String] = [:]
        guard var pointer = environ as UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? else { return result }
        while let entry = pointer.pointee {
            let line = String(cString: entry)
            if let equals = line.firstIndex(of: "=") {
                result[String(line[..<equals])] = String(line[line.index(after: equals)...])
            }
            pointer += 1
        }
        return result
    }
}

/// A pthread mutex plus condition variable. The batch processors (spans here,
/// log records in YoMoLogging) and the log writer need a lock that their
/// threads can also wait on; `Synchronization.Mutex` has no condition.
package final class ConditionLock: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    package init() {
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        #if os(Linux)
        // Timed waits measure a monotonic clock, immune to wall-clock jumps.
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        #endif
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    @inline(__always) package func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) package func unlock() { pthread_mutex_unlock(mutex) }

    @inline(__always) package func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Call with the lock held.
    package func signal() { pthread_cond_signal(condition) }

    /// Call with the lock held.
    package func broadcast() { pthread_cond_broadcast(condition) }

    /// Call with the lock held.
    package func wait() { pthread_cond_wait(condition, mutex) }

    /// Call with the lock held. Waits until signalled or until the monotonic clock
    /// reaches `deadlineNanoseconds` (see `monotonicNanoseconds()`).
    package func wait(untilMonotonicNanoseconds deadline: UInt64) {
        #if os(Linux)
        var spec = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_cond_timedwait(condition, mutex, &spec)
        #else
        let now = monotonicNanoseconds()
        let delta = deadline > now ? deadline - now : 0
        var spec = timespec(tv_sec: Int(delta / 1_000_000_000), tv_nsec: Int(delta % 1_000_000_000))
        pthread_cond_timedwait_relative_np(condition, mutex, &spec)
        #endif
    }
}

@inline(__always) package func monotonicNanoseconds() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return UInt64(spec.tv_sec) &* 1_000_000_000 &+ UInt64(spec.tv_nsec)
}

/// The monotonic time `duration` from now, saturating (a huge or negative duration stays in range).
package func monotonicNanoseconds(after duration: Duration) -> UInt64 {
    let now = monotonicNanoseconds()
    let delta = duration.clampedNanoseconds
    return now > UInt64.max - 1 - delta ? UInt64.max - 1 : now + delta
}

extension Duration {
    /// Whole nanoseconds, saturating at zero for negative durations.
    package var clampedNanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        let (product, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : product &+ UInt64(attoseconds / 1_000_000_000)
    }
}

/// The first `maximumBytes` of a small file such as `/proc/self/stat` (one
/// read: the kernel's pseudo-files answer whole), or nil when it cannot be read.
package func readSmallFile(_ path: String, maximumBytes: Int = 4096) -> String? {
    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else { return nil }
    defer { close(descriptor) }
    var bytes = [UInt8](repeating: 0, count: maximumBytes)
    let count = bytes.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
    guard count > 0 else { return nil }
    return String(decoding: bytes[..<count], as: UTF8.self)
}

@inline(__always) package func wallClockNanoseconds() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return UInt64(spec.tv_sec) &* 1_000_000_000 &+ UInt64(spec.tv_nsec)
}

private final class ThreadBody {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Starts a detached OS thread. Export work (encoding, blocking HTTP, backoff
/// sleeps) and log writing run here, so they never occupy the Swift concurrency
/// pool or the data path.
package func startThread(_ body: @escaping @Sendable () -> Void) {
    let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    #if os(Linux)
    var thread = pthread_t()
    #else
    var thread: pthread_t? = nil
    #endif
    let result = pthread_create(&thread, &attributes, { argument in
        let body = Unmanaged<ThreadBody>.fromOpaque(argument!).takeRetainedValue()
        body.body()
        return nil
    }, box)
    pthread_attr_destroy(&attributes)
    precondition(result == 0, "pthread_create failed: \(result)")
}

/// Parses the OTel environment's integers, tolerating surrounding whitespace.
func parseInteger(_ value: String?) -> Int? {
    guard let value else { return nil }
    return Int(value.trimmingSpaces())
}

extension StringProtocol {
    /// Drops leading and trailing spaces and tabs (environment values, schedules).
    package func trimmingSpaces() -> String {
        var slice = Substring(self)
        while let first = slice.first, first == " " || first == "\t" { slice.removeFirst() }
        while let last = slice.last, last == " " || last == "\t" { slice.removeLast() }
        return String(slice)
    }
}

/// Decodes `%XX` escapes (OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS
/// values are percent-encoded W3C-baggage-style). Invalid escapes stay as written.
func percentDecoded(_ value: String) -> String {
    guard value.utf8.contains(UInt8(ascii: "%")) else { return value }
    var bytes: [UInt8] = []
    let utf8 = Array(value.utf8)
    var index = 0
    while index < utf8.count {
        if utf8[index] == UInt8(ascii: "%"), index + 2 < utf8.count,
           let high = hexValue(utf8[index + 1]), let low = hexValue(utf8[index + 2]) {
            bytes.append(high << 4 | low)
            index += 3
        } else {
            bytes.append(utf8[index])
            index += 1
        }
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Arithmetic rather than range patterns: `case "0"..."9"` compiles to a
/// generic `ClosedRange.contains` call per byte, which showed up in profiles of
/// trace-context parsing (twice per frame at every hop).
@inline(__always) func hexValue(_ byte: UInt8) -> UInt8? {
    let digit = byte &- UInt8(ascii: "0")
    if digit < 10 { return digit }
    let letter = (byte | 0x20) &- UInt8(ascii: "a")  // folds A-F onto a-f
    if letter < 6 { return letter + 10 }
    return nil
}

/// Splits `k1=v1,k2=v2` lists (OTEL_RESOURCE_ATTRIBUTES, OTEL_EXPORTER_OTLP_HEADERS);
/// malformed entries are skipped.
func parseKeyValueList(_ value: String?) -> [(key: String, value: String)] {
    guard let value, !value.isEmpty else { return [] }
    var result: [(key: String, value: String)] = []
    for entry in value.split(separator: ",") {
        guard let equals = entry.firstIndex(of: "=") else { continue }
        let key = percentDecoded(entry[..<equals].trimmingSpaces())
        let value = percentDecoded(entry[entry.index(after: equals)...].trimmingSpaces())
        if !key.isEmpty { result.append((key, value)) }
    }
    return result
}
