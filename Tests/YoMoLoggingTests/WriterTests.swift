import Dispatch
import Logging
import Synchronization
import Testing
@testable import YoMoLogging

/// A sink that blocks every write until the test opens the gate.
final class GatedSink: LogSink {
    let gate = DispatchSemaphore(value: 0)
    let inner = InMemoryLogSink()
    let entered = DispatchSemaphore(value: 0)

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        entered.signal()
        gate.wait()
        gate.signal()
        try inner.write(bytes)
    }
}

struct FailingSink: LogSink {
    func write(_ bytes: UnsafeRawBufferPointer) throws {
        throw LoggingError.sinkFailed("disk full")
    }
}

@Suite struct WriterTests {
    @Test func asynchronousWriterDeliversInOrder() throws {
        let sink = InMemoryLogSink()
        let writer = LogWriter(sink: sink)
        let logger = Logger(label: "w") { YoMoLogHandler(label: $0, format: .json, writer: writer) }
        for index in 0..<500 { logger.info("record", metadata: ["i": .stringConvertible(index)]) }
        #expect(writer.flush(timeout: .seconds(10)))
        let indices = try sink.lines.map { try parseJSONLine($0)["i"] as? Int }
        #expect(indices == Array(0..<500))
        #expect(writer.droppedRecordCount == 0)
    }

    @Test func blockedSinkDropsAndCountsInsteadOfBlocking() throws {
        let sink = GatedSink()
        let writer = LogWriter(sink: sink, configuration: .init(maxQueuedRecords: 10))
        writer.dropNoticeFormat = .logfmt
        let logger = Logger(label: "blocked") { YoMoLogHandler(label: $0, format: .logfmt, writer: writer) }

        logger.info("first")
        sink.entered.wait() // the writer thread is now stuck inside the sink
        let start = ContinuousClock.now
        for index in 0..<1000 { logger.info("more", metadata: ["i": .stringConvertible(index)]) }
        let elapsed = ContinuousClock.now - start
        #expect(elapsed < .seconds(2), "logging must not wait for the sink")
        #expect(writer.droppedRecordCount == 990)
        #expect(!writer.flush(timeout: .milliseconds(50)))

        sink.gate.signal()
        #expect(writer.flush(timeout: .seconds(10)))
        #expect(writer.droppedRecordCount == 990)
        // 11 records, then one notice of the loss.
        let records = sink.inner.lines.compactMap(parseLogfmt)
        #expect(records.count == 12)
        #expect(records.filter { $0["msg"] != nil && $0["logger"] == "blocked" }.count == 11)
        let notice = try #require(records.first { $0["logger"] == "swift-yomo.logging" })
        #expect(notice["level"] == "WARN")
        #expect(notice["dropped_count"] == "990")
    }

    @Test("a sink stuck in one write since a flush gave up is not waited for again at exit; one that moved on is")
    func stuckSinkIsNotWaitedForAgain() throws {
        let sink = GatedSink()
        let writer = LogWriter(sink: sink)
        writer.enqueue(Array("first\n".utf8))
        sink.entered.wait()
        #expect(!writer.sinkIsStuck, "no flush has given up yet")
        #expect(!writer.flush(timeout: .milliseconds(50)))
        #expect(writer.sinkIsStuck)
        sink.gate.signal()
        #expect(writer.flush(timeout: .seconds(10)))
        #expect(!writer.sinkIsStuck, "the write finished")
        #expect(sink.inner.lines == ["first"])
    }

    @Test("Installation.shutdown(timeout:) waits for a stuck writer no longer than its timeout")
    func shutdownBoundsTheWritersFlush() async throws {
        let sink = GatedSink()
        let writer = LogWriter(sink: sink)
        writer.enqueue(Array("stuck\n".utf8))
        sink.entered.wait()
        let installation = YoMoLogging.Installation(configuration: .init(environment: [:]), writer: writer, logProcessor: nil)
        let clock = ContinuousClock()
        let start = clock.now
        await installation.shutdown(timeout: .milliseconds(200))
        let elapsed = clock.now - start
        #expect(elapsed < .seconds(3), "the flush waited \(elapsed)")
        #expect(writer.sinkIsStuck)
        sink.gate.signal()
    }

    @Test func failingSinkCountsDrops() {
        let writer = LogWriter(sink: FailingSink())
        let logger = Logger(label: "fail") { YoMoLogHandler(label: $0, format: .json, writer: writer) }
        for _ in 0..<10 { logger.error("lost") }
        #expect(writer.flush(timeout: .seconds(10)))
        #expect(writer.droppedRecordCount == 10)
        #expect(writer.failedWriteCount >= 1)

        let synchronous = LogWriter(sink: FailingSink(), configuration: .synchronous)
        let syncLogger = Logger(label: "fail") { YoMoLogHandler(label: $0, format: .json, writer: synchronous) }
        syncLogger.error("lost")
        #expect(synchronous.droppedRecordCount == 1)
    }

    @Test func shutdownDropsLaterRecords() {
        let sink = InMemoryLogSink()
        let writer = LogWriter(sink: sink)
        let logger = Logger(label: "s") { YoMoLogHandler(label: $0, format: .text, writer: writer) }
        logger.info("kept")
        #expect(writer.shutdown(timeout: .seconds(10)))
        logger.info("dropped")
        #expect(sink.lines.count == 1)
        #expect(writer.droppedRecordCount == 1)
    }
}
