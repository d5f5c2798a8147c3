import CNGTCP2
import Dispatch
import FoundationEssentials
import Glibc
import NIOCore
import Synchronization

/// Something the loop watches: a socket, a timer deadline, or both.
/// All methods run on the loop's thread.
protocol LoopSource: AnyObject {
    /// The socket became readable / writable (after `setWantsWritable`).
    func loopReadable()
    func loopWritable()
    /// The socket reported an error (before `loopReadable`): ICMP errors
    /// waiting in its error queue (IP_RECVERR).
    func loopError()
    /// Absolute monotonic nanoseconds, `UInt64.max` for none.
    var loopDeadline: UInt64 { get }
    func loopTimerFired(now: UInt64)
}

extension LoopSource {
    func loopReadable() {}
    func loopWritable() {}
    func loopError() {}
    var loopDeadline: UInt64 { .max }
    func loopTimerFired(now: UInt64) {}
}

/// Monotonic clock in nanoseconds: the clock of every ngtcp2 timestamp here.
@inline(__always)
func monotonicNow() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// One thread running epoll. ngtcp2 connections are not thread-safe, so each
/// connection lives on exactly one loop and is touched only from its thread;
/// other threads hand work over with `execute`.
final class QUICEventLoop: @unchecked Sendable {
    private let epfd: Int32
    private let wakeFD: Int32
    private struct Inbox {
        var tasks: [@Sendable () -> Void] = []
        var wakePending = false
        /// The loop is polling instead of sleeping: a new task needs no wake-up.
        var polling = false
        var stopped = false
        /// eventfd writes so far (tests count the wake-ups polling saves).
        var wakeUps = 0
    }
    private let inbox = Mutex(Inbox())
    /// The loop thread's `pthread_self()` (0 before it starts): `execute` from
    /// the loop itself (a task running on it as its executor) needs no wake-up.
    private let loopThread = Atomic<UInt>(0)

    // Loop-thread state.
    private var sources: [Int32: any LoopSource] = [:]
    private var timed: [ObjectIdentifier: any LoopSource] = [:]
    private var running = true
    /// When and how long the loop polls before it sleeps.
    private let polling: LoopPolling
    /// Whether the loop polls before its next sleep: set when received data
    /// went to the application (whose answer, a forward or a reply, usually
    /// comes within microseconds), or after any work with `.afterAnyWork`.
    private var pollWanted = false
    private var pollBackoff = PollBackoff()

    /// Scratch buffers shared by every connection of this loop (one at a time).
    let txBuffer: UnsafeMutableRawBufferPointer
    let rxBuffer: UnsafeMutableRawBufferPointer
    static let scratchSize = 65536 + 4096

    private let exited = DispatchSemaphore(value: 0)

    init(name: String, polling: LoopPolling = .fromEnvironment) {
        self.polling = polling
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        precondition(epfd >= 0 && wakeFD >= 0, "epoll/eventfd failed: errno \(errno)")
        txBuffer = .allocate(byteCount: Self.scratchSize, alignment: 16)
        rxBuffer = .allocate(byteCount: Self.scratchSize, alignment: 16)
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue
        ev.data.fd = wakeFD
        epoll_ctl(epfd, EPOLL_CTL_ADD, wakeFD, &ev)
        startLoopThread(stackSize: 1 << 20) { [self] in self.run() }
    }

    deinit {
        txBuffer.deallocate()
        rxBuffer.deallocate()
        close(epfd)
        close(wakeFD)
    }

    /// Loops shared by all client connections, started on first use and never stopped.
    /// NIO's core count honours cgroup quotas and cpusets as Foundation's
    /// `activeProcessorCount` does, but reads them with plain system calls:
    /// Foundation's reads go through its URL and file-reading code, run by
    /// nothing else in a stream function, which kept ~0.3 MB of code resident.
    static let shared: [QUICEventLoop] = (0..<max(2, System.coreCount)).map {
        QUICEventLoop(name: "yomo-quic-\($0)")
    }
    private static let nextShared = Atomic<Int>(0)
    static func nextSharedLoop() -> QUICEventLoop {
        let i = nextShared.wrappingAdd(1, ordering: .relaxed).oldValue
        return shared[i % shared.count]
    }

    /// How many times `execute` had to wake the loop.
    var wakeUpCount: Int { inbox.withLock { $0.wakeUps } }

    var inLoop: Bool { loopThread.load(ordering: .relaxed) == UInt(pthread_self()) }

    /// Runs `task` on the loop thread, soon. Safe from any thread. Returns false
    /// (and drops the task) when the loop has stopped: callers that wait for the
    /// task must then stop waiting.
    @discardableResult
    func execute(_ task: @escaping @Sendable () -> Void) -> Bool {
        let (accepted, wake) = inbox.withLock { inbox -> (Bool, Bool) in
            // A stopped loop drops work (and what it captured) instead of keeping it forever.
            if inbox.stopped { return (false, false) }
            inbox.tasks.append(task)
            if inbox.wakePending || inbox.polling { return (true, false) }
            // On the loop thread: it runs queued tasks before it sleeps.
            if inLoop { return (true, false) }
            inbox.wakePending = true
            inbox.wakeUps += 1
            return (true, true)
        }
        if wake {
            var one: UInt64 = 1
            _ = write(wakeFD, &one, 8)
        }
        return accepted
    }

    /// Runs `body` on the loop thread and returns what it returned, or
    /// `ifStopped` when the loop has stopped and will run nothing more.
    func run<T: Sendable>(orIfStopped ifStopped: T, _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (c: CheckedContinuation<T, Never>) in
            if !execute({ c.resume(returning: body()) }) { c.resume(returning: ifStopped) }
        }
    }

    /// Stops the thread after the queued tasks ran; waits for it to exit.
    func shutdownAndWait() {
        if execute({ [self] in running = false }) { exited.wait() }
    }

    // MARK: Registration (loop thread only)

    func register(fd: Int32, source: any LoopSource) {
        sources[fd] = source
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue
        ev.data.fd = fd
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)
    }

    /// Also report writability (to resume sends refused with EAGAIN).
    func setWantsWritable(fd: Int32, _ on: Bool) {
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue | (on ? EPOLLOUT.rawValue : 0)
        ev.data.fd = fd
        epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev)
    }

    func unregister(fd: Int32) {
        sources[fd] = nil
        epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil)
    }

    func addTimed(_ source: any LoopSource) { timed[ObjectIdentifier(source)] = source }
    func removeTimed(_ source: any LoopSource) { timed[ObjectIdentifier(source)] = nil }

    // MARK: The loop

    private func run() {
        loopThread.store(UInt(pthread_self()), ordering: .relaxed)
        let maxEvents = 64
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: maxEvents)
        defer { events.deallocate() }
        while running {
            var deadline = UInt64.max
            for source in timed.values { deadline = min(deadline, source.loopDeadline) }
            let hasTasks = inbox.withLock { !$0.tasks.isEmpty }
            var timeout: Int64 = -1
            if hasTasks {
                timeout = 0
            } else if deadline != .max {
                let now = monotonicNow()
                timeout = deadline > now ? Int64(min(deadline - now, UInt64(Int64.max))) : 0
            }
            var n: Int32
            if pollWanted && timeout != 0 && polling.nanoseconds > 0 && pollBackoff.shouldPoll() {
                let answered: Bool
                (n, answered) = pollThenWait(events: events, maxEvents: maxEvents, timeout: timeout)
                pollBackoff.record(answered: answered)
            } else {
                n = cngtcp2_epoll_wait(epfd, events, Int32(maxEvents), timeout)
            }
            pollWanted = false
            if n > 0 {
                for i in 0..<Int(n) {
                    let ev = events[i]
                    let fd = ev.data.fd
                    if fd == wakeFD {
                        var value: UInt64 = 0
                        _ = read(wakeFD, &value, 8)
                        continue
                    }
                    if ev.events & EPOLLOUT.rawValue != 0 { sources[fd]?.loopWritable() }
                    if ev.events & EPOLLERR.rawValue != 0 { sources[fd]?.loopError() }
                    if ev.events & (EPOLLIN.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 {
                        sources[fd]?.loopReadable()
                    }
                }
            }
            let ranTasks = runTasks()
            if polling.trigger == .afterAnyWork && (n > 0 || ranTasks) { pollWanted = true }
            if !timed.isEmpty {
                let now = monotonicNow()
                let due = timed.values.filter { $0.loopDeadline <= now }
                for source in due { source.loopTimerFired(now: now) }
            }
        }
        runTasks()
        inbox.withLock { $0.stopped = true }
        runTasks()
        sources.removeAll()
        timed.removeAll()
        exited.signal()
    }

    /// Waits for the answer to data just handed over by polling (yielding the
    /// core to anything runnable between polls) for up to the polling window,
    /// then by sleeping until `timeout`. A task that comes while the loop polls
    /// runs without the eventfd write and the sleeping thread's wake-up, and a
    /// packet without the wake-up: together, on this kind of VM, tens of
    /// microseconds per hop. `answered`: something came within the window.
    private func pollThenWait(
        events: UnsafeMutablePointer<epoll_event>, maxEvents: Int, timeout: Int64
    ) -> (events: Int32, answered: Bool) {
        let start = monotonicNow()
        inbox.withLock { $0.polling = true }
        var n: Int32 = 0
        var elapsed: UInt64 = 0
        repeat {
            sched_yield()
            if inbox.withLock({ !$0.tasks.isEmpty }) { break }
            n = cngtcp2_epoll_wait(epfd, events, Int32(maxEvents), 0)
            elapsed = monotonicNow() &- start
        } while n == 0 && elapsed < polling.nanoseconds
        // Tasks queued from here on wake the loop as usual.
        let hasTasks = inbox.withLock { inbox in
            inbox.polling = false
            return !inbox.tasks.isEmpty
        }
        if n != 0 || hasTasks { return (n, true) }
        let remaining = timeout < 0 ? timeout : max(0, timeout - Int64(clamping: elapsed))
        return (cngtcp2_epoll_wait(epfd, events, Int32(maxEvents), remaining), false)
    }

    /// Called on the loop thread when received data reached the application:
    /// the loop polls for its answer before sleeping.
    func expectAnswer() { pollWanted = true }

    /// Runs the queued tasks; false when there were none.
    @discardableResult
    private func runTasks() -> Bool {
        let tasks = inbox.withLock { inbox -> [@Sendable () -> Void] in
            inbox.wakePending = false
            var tasks: [@Sendable () -> Void] = []
            swap(&tasks, &inbox.tasks)
            return tasks
        }
        for task in tasks { task() }
        return !tasks.isEmpty
    }
}

/// Tasks that prefer a loop (`withTaskExecutorPreference`, `addTask(executorPreference:)`)
/// run on its thread between its events: a frame a reader resumes on is then
/// handled without waking another thread, and its writes need no wake-up.
extension QUICEventLoop: TaskExecutor {
    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        if !execute({ job.runSynchronously(on: executor) }) {
            // A stopped loop runs nothing more: finish the task elsewhere
            // rather than leave it suspended for ever.
            DispatchQueue.global().async { job.runSynchronously(on: executor) }
        }
    }
}

/// Starts a detached thread that runs `body`: a pthread, since Foundation's
/// `Thread` is not in FoundationEssentials.
func startLoopThread(stackSize: Int, _ body: @escaping @Sendable () -> Void) {
    final class Start {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let start = Unmanaged.passRetained(Start(body)).toOpaque()
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
    pthread_attr_setstacksize(&attributes, stackSize)
    var thread = pthread_t()
    let result = pthread_create(&thread, &attributes, { argument in
        Unmanaged<Start>.fromOpaque(argument!).takeRetainedValue().body()
        return nil
    }, start)
    precondition(result == 0, "pthread_create failed: \(result)")
}
