import Foundation
import Synchronization
import Testing
import YoMoLogging

@testable import YoMo

/// A process whose log (stdout and stderr) goes to a pipe the test reads, and
/// can stop reading: a log shipper that crashed, or `yomo serve | head`.
final class ProcessLoggingToPipe {
    let process = Process()
    private let reading: FileHandle
    private var log = ""

    init(_ executable: URL, arguments: [String], environment: [String: String]? = nil) throws {
        let pipe = Pipe()
        process.executableURL = executable
        process.arguments = arguments
        if let environment { process.environment = environment }
        process.standardOutput = pipe
        process.standardError = pipe
        reading = pipe.fileHandleForReading
        // Read without blocking: a thread blocked in read() would keep the pipe
        // open for reading after the test closes it.
        let flags = fcntl(reading.fileDescriptor, F_GETFL)
        _ = fcntl(reading.fileDescriptor, F_SETFL, flags | O_NONBLOCK)
        try process.run()
    }

    /// Reads the log until it contains `text`; false if the process ended or
    /// `within` passed first.
    func read(until text: String, within: Duration = .seconds(30)) async -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        let deadline = ContinuousClock.now + within
        while ContinuousClock.now < deadline {
            let count = chunk.withUnsafeMutableBytes { Foundation.read(reading.fileDescriptor, $0.baseAddress, $0.count) }
            if count > 0 {
                log += String(decoding: chunk[0..<count], as: UTF8.self)
                if log.contains(text) { return true }
            } else if count == 0 {
                return false
            } else {
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
        return false
    }

    /// Closes the only reading end: the process's next log write meets a pipe
    /// nobody reads (EPIPE, and SIGPIPE unless it is blocked).
    func stopReading() { try? reading.close() }

    /// SIGTERM, then the way the process ended.
    func terminate() async -> (reason: Process.TerminationReason, status: Int32) {
        process.terminate()
        await waitForExit(process)
        return (process.terminationReason, process.terminationStatus)
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
}

@Suite("A log nobody reads", .serialized)
struct LogPipeTests {
    // Neither process serves /metrics here: SwiftNIO, which serves it, ignores
    // SIGPIPE for the whole process once it opens a socket, and would hide the fault.

    @Test("a zipper whose log reader is gone serves on and ends cleanly: SIGPIPE no longer ends it")
    func zipperWithBrokenLogPipe() async throws {
        let port = try await freePort()
        let zipper = try ProcessLoggingToPipe(
            try yomoExecutable(), arguments: ["serve", "--host", "127.0.0.1", "--port", "\(port)"],
            environment: zipperEnvironment())
        #expect(await zipper.read(until: "zipper listening"))
        zipper.stopReading()

        // Each connection is logged by the zipper: writes into the broken pipe.
        let received = Inbox<String>()
        let sink = StreamFunction(name: "sink", zipper: "127.0.0.1:\(port)", options: .init(observedTags: [0x33]))
        sink.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
        try await sink.connect()
        let source = Source(name: "source", zipper: "127.0.0.1:\(port)")
        try await source.connect()
        #expect(try await writeUntilReceived(source, tag: 0x33, "through", received))
        await source.close()
        await sink.close()
        #expect(zipper.process.isRunning)

        let ended = await zipper.terminate()
        #expect(ended.reason == .exit && ended.status == 0, "ended by \(ended.reason == .exit ? "exit" : "signal") \(ended.status)")
    }

    @Test("a stream function whose log reader is gone handles frames and ends cleanly on SIGTERM")
    func functionWithBrokenLogPipe() async throws {
        try await withZipper { address, _ in
            let function = try ProcessLoggingToPipe(try builtExecutable("uppercase-sfn"), arguments: ["--zipper", address])
            #expect(await function.read(until: "connected to zipper"))
            function.stopReading()

            let received = Inbox<String>()
            let sink = StreamFunction(name: "sink", zipper: address, options: .init(observedTags: [0x34]))
            sink.setHandler { ctx in received.append(String(decoding: ctx.data, as: UTF8.self)) }
            try await sink.connect()
            let source = Source(name: "source", zipper: address)
            try await source.connect()
            #expect(try await writeUntilReceived(source, tag: 0x33, "shout", received, expecting: "SHOUT"))
            await source.close()
            await sink.close()

            // It logs `signal received, closing` and its close: writes into the broken pipe.
            let ended = await function.terminate()
            #expect(ended.reason == .exit && ended.status == 0, "ended by \(ended.reason == .exit ? "exit" : "signal") \(ended.status)")
        }
    }

    @Test("the log records a zipper could not write are counted on its /metrics")
    func droppedRecordsOnMetrics() async throws {
        let port = try await freePort()
        let metricsPort = try await freeTCPPort()
        let zipper = try ProcessLoggingToPipe(
            try yomoExecutable(),
            arguments: ["serve", "--host", "127.0.0.1", "--port", "\(port)", "--metrics", "127.0.0.1:\(metricsPort)"],
            environment: zipperEnvironment())
        #expect(await zipper.read(until: "zipper listening"))
        let series = "yomo_sdk_log_records_dropped_total{yomo_log_pipeline=\"writer\",otel_scope_name=\"Zipper\"}"
        let before = await httpGet("http://127.0.0.1:\(metricsPort)/metrics")?.body ?? ""
        #expect(before.contains("\(series) 0"), "\(before)")
        // The process's own metrics, which bootstrap registers for every program.
        let resident = before.split(separator: "\n").first { $0.hasPrefix("process_memory_usage_bytes{") }
        #expect((resident?.split(separator: " ").last.flatMap { Double($0) } ?? 0) > 1_048_576, "\(before)")
        #expect(before.contains("process_cpu_time_seconds_total{cpu_mode=\"user\""), "\(before)")
        #expect(before.contains("process_open_file_descriptor_count{"), "\(before)")
        zipper.stopReading()

        // Two connections and two disconnections: four lines into a pipe nobody reads.
        for name in ["first", "second"] {
            let source = Source(name: name, zipper: "127.0.0.1:\(port)")
            try await source.connect()
            await source.close()
        }
        var page = ""
        var dropped = 0.0
        for _ in 0..<200 where dropped < 4 {
            page = await httpGet("http://127.0.0.1:\(metricsPort)/metrics")?.body ?? ""
            dropped = page.split(separator: "\n").first { $0.hasPrefix(series) }.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
            if dropped < 4 { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(dropped >= 4, "\(page)")
        let ended = await zipper.terminate()
        #expect(ended.reason == .exit && ended.status == 0)
    }

    @Test("records to a pipe whose reader is gone are dropped and counted, and the writer goes on")
    func writerCountsBrokenPipe() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        close(ends[0])
        defer { close(ends[1]) }
        let writer = LogWriter(sink: FileDescriptorSink(fileDescriptor: ends[1]), configuration: .synchronous)
        writer.enqueue(Array("one\n".utf8))
        writer.enqueue(Array("two\n".utf8))
        #expect(writer.droppedRecordCount == 2 && writer.failedWriteCount == 2)
    }

    @Test("a full non-blocking pipe is waited for, not a reason to drop records")
    func nonBlockingPipeIsWaitedFor() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        _ = fcntl(ends[1], F_SETFL, fcntl(ends[1], F_GETFL) | O_NONBLOCK)
        let writer = LogWriter(sink: FileDescriptorSink(fileDescriptor: ends[1]))
        // 4,000 records of 100 bytes: six times what the pipe holds.
        let record = Array((String(repeating: "x", count: 99) + "\n").utf8)
        let readEnd = ends[0]
        let total = Mutex(0)
        let done = DispatchSemaphore(value: 0)
        // A slow reader on a thread of its own: the pipe fills while it sleeps.
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
                if count <= 0 { break }
                let sum = total.withLock { $0 += count; return $0 }
                if sum % 16384 < 4096 { usleep(1000) }
            }
            done.signal()
        }
        for _ in 0..<4000 { writer.enqueue(record) }
        #expect(writer.flush(timeout: .seconds(30)))
        close(ends[1])
        #expect(done.wait(timeout: .now() + 30) == .success)
        close(readEnd)
        #expect(total.withLock { $0 } == 4000 * record.count)
        #expect(writer.droppedRecordCount == 0 && writer.failedWriteCount == 0)
    }
}
