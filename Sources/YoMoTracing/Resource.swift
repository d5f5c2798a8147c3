public import Tracing
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The SDK's name and version as reported in `telemetry.sdk.*` and the OTLP `User-Agent`.
public enum YoMoTracingSDK {
    public static let name = "swift-yomo"
    public static let version = "0.1.0"
    public static let language = "swift"
    public static var userAgent: String { "\(name)/\(version)" }
}

/// The entity producing telemetry: attributes shared by every span of a provider.
public struct Resource: Sendable, Equatable {
    public var attributes: SpanAttributes

    public init(attributes: SpanAttributes = [:]) {
        self.attributes = attributes
    }

    /// The detected resource, lowest precedence first: SDK and host defaults,
    /// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`, then `serviceName` and
    /// `attributes` passed in code (the Go SDK's `NewTracerProviderWithJaeger`
    /// lets the name given in code win, and so do we).
    public static func detect(
        serviceName: String? = nil,
        attributes: SpanAttributes = [:],
        environment: [String: String] = ProcessEnvironment.current
    ) -> Resource {
        var result = SpanAttributes()
        result["service.name"] = "unknown_service:\(processName())"
        result["telemetry.sdk.name"] = YoMoTracingSDK.name
        result["telemetry.sdk.language"] = YoMoTracingSDK.language
        result["telemetry.sdk.version"] = YoMoTracingSDK.version
        if let host = hostName() { result["host.name"] = host }
        result["process.pid"] = Int(getpid())
        for (key, value) in parseKeyValueList(environment["OTEL_RESOURCE_ATTRIBUTES"]) {
            result[key] = value
        }
        if let name = environment["OTEL_SERVICE_NAME"]?.trimmingSpaces(), !name.isEmpty {
            result["service.name"] = name
        }
        if let serviceName, !serviceName.isEmpty { result["service.name"] = serviceName }
        result.merge(attributes)
        return Resource(attributes: result)
    }

    public var serviceName: String? {
        if case .string(let name)? = attributes.get("service.name") { return name }
        return nil
    }

    private static func hostName() -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func processName() -> String {
        #if os(Linux)
        if let name = readSmallFile("/proc/self/comm", maximumBytes: 256)?.trimmingSpaces().split(separator: "\n").first {
            return String(name)
        }
        #endif
        return "swift"
    }
}

/// Names the code that made a span (the OTLP `InstrumentationScope`), e.g. "StreamFunction".
public struct InstrumentationScope: Sendable, Hashable {
    public var name: String
    public var version: String?

    public init(name: String, version: String? = nil) {
        self.name = name
        self.version = version
    }
}

/// Caps on what one span keeps; the excess is dropped and counted in the
/// exported `dropped_*_count` fields. Defaults are the OTel SDK's (128 each).
public struct SpanLimits: Sendable, Hashable {
    public var attributeCountLimit: Int
    public var eventCountLimit: Int
    public var linkCountLimit: Int
    public var attributePerEventCountLimit: Int
    public var attributePerLinkCountLimit: Int

    public static let `default` = SpanLimits(environment: [:])

    /// Reads `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT` (falling back to
    /// `OTEL_ATTRIBUTE_COUNT_LIMIT`), `OTEL_SPAN_EVENT_COUNT_LIMIT`,
    /// `OTEL_SPAN_LINK_COUNT_LIMIT`, `OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT` and
    /// `OTEL_LINK_ATTRIBUTE_COUNT_LIMIT`; negative or malformed values are ignored.
    public init(environment: [String: String] = ProcessEnvironment.current) {
        func limit(_ keys: String...) -> Int {
            for key in keys {
                if let value = parseInteger(environment[key]), value >= 0 { return value }
            }
            return 128
        }
        attributeCountLimit = limit("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_ATTRIBUTE_COUNT_LIMIT")
        eventCountLimit = limit("OTEL_SPAN_EVENT_COUNT_LIMIT")
        linkCountLimit = limit("OTEL_SPAN_LINK_COUNT_LIMIT")
        attributePerEventCountLimit = limit("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT")
        attributePerLinkCountLimit = limit("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT")
    }
}
