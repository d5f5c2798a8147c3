#if canImport(Glibc)
import Glibc
import Synchronization

// Counts heap allocations of the whole process: this executable's `malloc`
// (and friends) interpose glibc's, which SwiftPM exports dynamically, and pass
// each call on to glibc's own entry points.
let mallocCalls = Atomic<Int>(0)

@_silgen_name("__libc_malloc") private func libcMalloc(_ size: Int) -> UnsafeMutableRawPointer?
@_silgen_name("__libc_calloc") private func libcCalloc(_ count: Int, _ size: Int) -> UnsafeMutableRawPointer?
@_silgen_name("__libc_realloc") private func libcRealloc(_ pointer: UnsafeMutableRawPointer?, _ size: Int) -> UnsafeMutableRawPointer?
@_silgen_name("__libc_memalign") private func libcMemalign(_ alignment: Int, _ size: Int) -> UnsafeMutableRawPointer?

@_cdecl("malloc") public func countingMalloc(_ size: Int) -> UnsafeMutableRawPointer? {
    mallocCalls.wrappingAdd(1, ordering: .relaxed)
    return libcMalloc(size)
}

@_cdecl("calloc") public func countingCalloc(_ count: Int, _ size: Int) -> UnsafeMutableRawPointer? {
    mallocCalls.wrappingAdd(1, ordering: .relaxed)
    return libcCalloc(count, size)
}

@_cdecl("realloc") public func countingRealloc(_ pointer: UnsafeMutableRawPointer?, _ size: Int) -> UnsafeMutableRawPointer? {
    mallocCalls.wrappingAdd(1, ordering: .relaxed)
    return libcRealloc(pointer, size)
}

@_cdecl("posix_memalign") public func countingPosixMemalign(
    _ result: UnsafeMutablePointer<UnsafeMutableRawPointer?>, _ alignment: Int, _ size: Int
) -> Int32 {
    mallocCalls.wrappingAdd(1, ordering: .relaxed)
    guard let pointer = libcMemalign(alignment, size) else { return ENOMEM }
    result.pointee = pointer
    return 0
}
#endif

/// Heap allocations (malloc, calloc, realloc, posix_memalign) so far, in every thread.
func mallocCount() -> Int {
    #if canImport(Glibc)
    mallocCalls.load(ordering: .relaxed)
    #else
    0
    #endif
}
