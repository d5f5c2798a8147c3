import Logging
import Testing
import YoMoLogging

@Suite struct ConfigurationTests {
    @Test func defaultsAreInfoAndText() {
        let configuration = YoMoLogging.Configuration(environment: [:])
        #expect(configuration.logLevel == .info)
        #expect(configuration.format == .text)
        #expect(configuration.warnings.isEmpty)
    }

    @Test(arguments: [
        ("trace", Logger.Level.trace), ("DEBUG", .debug), ("info", .info), ("notice", .notice),
        ("warn", .warning), ("Warning", .warning), (" error ", .error), ("critical", .critical),
    ])
    func levelNames(name: String, level: Logger.Level) {
        #expect(YoMoLogging.Configuration(environment: ["YOMO_LOG_LEVEL": name]).logLevel == level)
    }

    @Test func formatsAndInvalidValues() {
        #expect(YoMoLogging.Configuration(environment: ["YOMO_LOG_FORMAT": "json"]).format == .json)
        #expect(YoMoLogging.Configuration(environment: ["YOMO_LOG_FORMAT": "LOGFMT"]).format == .logfmt)
        let bad = YoMoLogging.Configuration(environment: ["YOMO_LOG_FORMAT": "xml", "YOMO_LOG_LEVEL": "loud"])
        #expect(bad.format == .text)
        #expect(bad.logLevel == .info)
        #expect(bad.warnings.count == 2)
    }

    @Test func errorLevelSilencesInfo() throws {
        let sink = InMemoryLogSink()
        let writer = LogWriter(sink: sink, configuration: .synchronous)
        let environment = ["YOMO_LOG_LEVEL": "error", "YOMO_LOG_FORMAT": "json"]
        let logger = Logger(label: "env") { YoMoLogging.makeHandler(label: $0, environment: environment, writer: writer) }
        logger.info("silenced")
        logger.warning("silenced too")
        logger.error("kept")
        let lines = sink.lines
        #expect(lines.count == 1)
        #expect(try parseJSONLine(lines[0])["msg"] as? String == "kept")
    }

    @Test func otlpLogExportOnlyWhenAsked() async {
        #expect(YoMoLogging.otlpProcessorFromEnvironment(environment: [:]) == nil)
        #expect(YoMoLogging.otlpProcessorFromEnvironment(environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"]) == nil)
        #expect(YoMoLogging.otlpProcessorFromEnvironment(environment: [
            "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://c:4318/v1/logs", "OTEL_LOGS_EXPORTER": "none",
        ]) == nil)
        #expect(YoMoLogging.otlpProcessorFromEnvironment(environment: [
            "OTEL_LOGS_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true",
        ]) == nil)
        for environment in [["OTEL_LOGS_EXPORTER": "otlp"], ["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://c:4318/v1/logs"]] {
            let processor = YoMoLogging.otlpProcessorFromEnvironment(environment: environment)
            #expect(processor != nil)
            await processor?.shutdown()
        }
    }

    @Test func goFieldNamesOnRecords() throws {
        let (base, sink) = memoryLogger(.json)
        let logger = base.yomoStreamFunction(name: "upper", id: "id1", zipperAddress: "localhost:9000")
        logger.debug("frame", metadata: YoMoLogField.frame(tid: "t1", tag: 33, dataLength: 5))
        let record = try parseJSONLine(try #require(sink.lines.first))
        #expect(record["service"] as? String == "stream-function")
        #expect(record["sfn_name"] as? String == "upper")
        #expect(record["sfn_id"] as? String == "id1")
        #expect(record["zipper_addr"] as? String == "localhost:9000")
        #expect(record["tid"] as? String == "t1")
        #expect(record["tag"] as? Int == 33)
        #expect(record["data_length"] as? Int == 5)
    }
}
