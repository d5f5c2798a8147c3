import Dispatch

/// Runs a program's async entry point on the concurrency pool and parks the
/// main thread until it returns: a lighter `main` for a zipper or stream
/// function than an `async` one.
///
/// An `async` main ends its first step by calling `dispatch_main()`, which
/// exits the main thread with `pthread_exit`; glibc unwinds that thread's
/// stack through every frame's unwind tables, and the pages of those tables
/// and of the unwinder then stay resident: about 2 MB of a 17 MB idle stream
/// function (docs/performance.md, "Footprint (RSS)").
///
/// The catch: nothing drains the main queue, so nothing may run on the main
/// actor (`@MainActor` code or `DispatchQueue.main` would wait forever). Use
/// it from a synchronous `main` of a `@main` type:
///
/// ```swift
/// @main
/// enum Main {
///     static func main() { runAsyncMain { await UppercaseSFN.main() } }
/// }
/// ```
public func runAsyncMain(_ body: @escaping @Sendable () async -> Void) {
    let finished = DispatchSemaphore(value: 0)
    // Detached: a task created here would inherit the main actor, whose queue
    // the parked main thread never drains.
    Task.detached {
        await body()
        finished.signal()
    }
    finished.wait()
}
