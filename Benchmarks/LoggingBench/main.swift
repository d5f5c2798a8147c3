// Cost per record of the YoMoLogging handlers, measured on the logging thread.
// Not a test: `swift run -c release yomo-logging-bench [iterations]`.
import Logging
import Tracing
import YoMoLogging
import YoMoTracing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Discards everything: measures the handler, not the disk.
struct NullSink: LogSink {
    func write(_ bytes: UnsafeRawBufferPointer) throws {}
}

let iterations = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 1_000_000
/// Optional second argument: run only the cases whose name contains it.
let only = CommandLine.arguments.dropFirst(2).first

func measure(_ name: String, writer: LogWriter? = nil, _ body: (Int) -> Void) {
    if let only, !name.contains(only) { return }
    body(min(iterations / 10, 10_000)) // warm-up
    _ = writer?.flush(timeout: .seconds(30))
    let droppedBefore = writer?.droppedRecordCount ?? 0
    let start = ContinuousClock.now
    body(iterations)
    let elapsed = ContinuousClock.now - start
    _ = writer?.flush(timeout: .seconds(30))
    let (seconds, attoseconds) = elapsed.components
    let nanoseconds = Double(seconds) * 1e9 + Double(attoseconds) / 1e9
    let perRecord = nanoseconds / Double(iterations)
    var line = "\(name): \((perRecord * 10).rounded() / 10) ns/record"
    if let writer { line += " (dropped \(writer.droppedRecordCount - droppedBefore) of \(iterations))" }
    print(line)
}

func makeLogger(_ format: LogFormat, writer: LogWriter, level: Logger.Level = .info) -> Logger {
    var logger = Logger(label: "bench") { label in
        YoMoLogHandler(
            label: label, format: format, writer: writer, logLevel: level,
            metadataProvider: nil, traceCorrelation: false
        )
    }
    logger = logger.yomoStreamFunction(name: "uppercase", id: "sfn-7f3a", zipperAddress: "localhost:9000")
    return logger
}

print("iterations: \(iterations); records carry 4 logger fields + 2 call fields")

for format in [LogFormat.json, .logfmt, .text] {
    let writer = LogWriter(sink: NullSink(), configuration: .synchronous)
    let logger = makeLogger(format, writer: writer)
    measure("\(format), synchronous, null sink", writer: writer) { count in
        for index in 0..<count {
            logger.info("frame handled", metadata: ["tid": "c0ffee", YoMoLogField.dataLength: .stringConvertible(index)])
        }
    }
}

do {
    let devNull = open("/dev/null", O_WRONLY)
    let writer = LogWriter(sink: FileDescriptorSink(fileDescriptor: devNull), configuration: .init(maxQueuedRecords: 1 << 20, maxQueuedBytes: 1 << 30))
    let logger = makeLogger(.json, writer: writer)
    measure("json, writer thread, /dev/null", writer: writer) { count in
        for index in 0..<count {
            logger.info("frame handled", metadata: ["tid": "c0ffee", YoMoLogField.dataLength: .stringConvertible(index)])
        }
    }
}

do {
    let writer = LogWriter(sink: NullSink(), configuration: .synchronous)
    var logger = makeLogger(.json, writer: writer)
    logger.handler.metadataProvider = .yomoTracing
    measure("json, synchronous, null sink, with .yomoTracing provider (no span)", writer: writer) { count in
        for index in 0..<count {
            logger.info("frame handled", metadata: ["tid": "c0ffee", YoMoLogField.dataLength: .stringConvertible(index)])
        }
    }
}

do {
    let writer = LogWriter(sink: NullSink(), configuration: .synchronous)
    var logger = makeLogger(.json, writer: writer)
    logger.handler.metadataProvider = .yomoTracing
    let tracer = TracerProvider(configuration: .init(environment: [:]), processors: []).tracer("bench")
    tracer.withSpan("frame") { _ in
        measure(".yomoTracing provider alone, inside a span") { count in
            var total = 0
            for _ in 0..<count { total &+= Logger.MetadataProvider.yomoTracing.get().count }
            precondition(total == 2 * count)
        }
        measure("ServiceContext.current?.spanContext alone, inside a span") { count in
            var total = 0
            for _ in 0..<count { total &+= ServiceContext.current?.spanContext?.isValid == true ? 1 : 0 }
            precondition(total == count)
        }
        measure("json, synchronous, null sink, with .yomoTracing provider inside a span", writer: writer) { count in
            for index in 0..<count {
                logger.info("frame handled", metadata: ["tid": "c0ffee", YoMoLogField.dataLength: .stringConvertible(index)])
            }
        }
        var direct = logger
        direct.handler.metadataProvider = nil
        (direct.handler as? YoMoLogHandler).map { handler in
            var handler = handler
            handler.traceCorrelation = true
            direct.handler = handler
        }
        measure("json, synchronous, null sink, traceCorrelation (default of makeHandler/bootstrap) inside a span", writer: writer) { count in
            for index in 0..<count {
                direct.info("frame handled", metadata: ["tid": "c0ffee", YoMoLogField.dataLength: .stringConvertible(index)])
            }
        }
    }
}

do {
    let writer = LogWriter(sink: NullSink(), configuration: .synchronous)
    let logger = makeLogger(.json, writer: writer, level: .info)
    measure("filtered out (debug record, logger at info)") { count in
        for index in 0..<count {
            logger.debug("frame received", metadata: ["tid": "c0ffee", YoMoLogField.dataLength: .stringConvertible(index)])
        }
    }
}

/// Discards what swift-log's StreamLogHandler writes: a reference point.
struct NullStream: TextOutputStream, Sendable {
    mutating func write(_ string: String) {}
}

do {
    var logger = Logger(label: "bench") { StreamLogHandler(label: $0, stream: NullStream(), metadataProvider: nil) }
    logger = logger.yomoStreamFunction(name: "uppercase", id: "sfn-7f3a", zipperAddress: "localhost:9000")
    measure("reference: swift-log StreamLogHandler, null stream") { count in
        for index in 0..<count {
            logger.info("frame handled", metadata: ["tid": "c0ffee", YoMoLogField.dataLength: .stringConvertible(index)])
        }
    }
}

/// Discards batches: measures the OTLP handler and the processor's queue.
struct NullExporter: LogRecordExporter {
    func export(_ records: [OTLPLogRecord], timeout: Duration) throws(LoggingError) {}
}

do {
    var configuration = BatchLogRecordProcessor.Configuration(environment: [:])
    configuration.maxQueueSize = 1 << 20
    let processor = BatchLogRecordProcessor(
        exporter: NullExporter(), configuration: configuration,
        logger: Logger(label: "quiet") { _ in SwiftLogNoOpLogHandler() }
    )
    var logger = Logger(label: "bench") { OTLPLogHandler(label: $0, processor: processor, metadataProvider: nil) }
    logger = logger.yomoStreamFunction(name: "uppercase", id: "sfn-7f3a", zipperAddress: "localhost:9000")
    measure("OTLP handler, batch processor, null exporter") { count in
        for index in 0..<count {
            logger.info("frame handled", metadata: ["tid": "c0ffee", YoMoLogField.dataLength: .stringConvertible(index)])
        }
    }
    print("  (OTLP records dropped: \(processor.droppedRecordCount))")
}
