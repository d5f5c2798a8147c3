import Foundation
import Synchronization
import Testing

@testable import YoMo

/// A signal set of `/proc/PID/status` (`SigBlk`, `ShdPnd`, `SigCgt`, …) as bits (signal n is bit n - 1).
func signalSet(_ field: String, of pid: Int32) -> UInt64 {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }),
          let value = line.split(separator: "\t").last else { return 0 }
    return UInt64(value.trimmingCharacters(in: .whitespaces), radix: 16) ?? 0
}

func bit(_ signal: Int32) -> UInt64 { 1 << UInt64(signal - 1) }

@Suite("Signals", .serialized)
struct SignalTests {
    @Test("a SIGTERM sent while the signal was blocked, before wait() began (a parent that spawned the function from a Swift task passes its blocked mask on), is not lost: the function closes gracefully")
    func pendingBeforeWait() async throws {
        let port = try await freePort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        // Blocks SIGTERM, then becomes uppercase-sfn with that mask; it dials a zipper not yet there.
        process.arguments = [
            "-c", "import os, signal, sys; signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM]); os.execv(sys.argv[1], sys.argv[1:])",
            try builtExecutable("uppercase-sfn").path, "--zipper", "127.0.0.1:\(port)",
        ]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let log = Task.detached { await readToEnd(errors) }
        let pid = process.processIdentifier
        defer { if process.isRunning { kill(pid, SIGKILL) } }
        let exec = await eventually {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe"))?.hasSuffix("uppercase-sfn") == true
        }
        #expect(exec)
        #expect(signalSet("SigBlk", of: pid) & bit(SIGTERM) != 0, "started with SIGTERM blocked")
        kill(pid, SIGTERM)
        #expect(await eventually { signalSet("ShdPnd", of: pid) & bit(SIGTERM) != 0 }, "pending: wait() has not begun, nothing dialled yet")
        let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: port))
        try await zipper.start()
        // Connected, it begins wait(): the pending signal must reach it.
        let ended = await eventually(within: .seconds(30)) { !process.isRunning }
        #expect(ended, "still running 30 s after its SIGTERM")
        if !ended { kill(pid, SIGKILL) }
        await waitForExit(process)
        let text = await log.value
        #expect(text.contains("signal received, closing"), "\(text)")
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
        await zipper.close()
    }

    @Test("every wait() in one process hears SIGTERM, and after the last the signal does what it did before")
    func everyWaitHearsTheSignal() async throws {
        let caughtBefore = signalSet("SigCgt", of: getpid()) & bit(SIGTERM)
        for round in 1...2 {
            let zipper = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0))
            try await zipper.start()
            let returned = Mutex(false)
            let waiting = Task {
                await zipper.wait()
                returned.withLock { $0 = true }
            }
            // Signalled only once wait() watches: before, SIGTERM would end the test process.
            #expect(await eventually { SignalRelay.shared.watcherCount == 1 })
            kill(getpid(), SIGTERM)
            #expect(await eventually(within: .seconds(10)) { returned.withLock { $0 } }, "round \(round): wait() did not hear SIGTERM")
            if returned.withLock({ $0 }) { await waiting.value }
            await zipper.close()
        }
        #expect(SignalRelay.shared.watcherCount == 0)
        #expect(signalSet("SigCgt", of: getpid()) & bit(SIGTERM) == caughtBefore, "the earlier disposition is back")
    }
}
