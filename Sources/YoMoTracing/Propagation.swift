public import Instrumentation

/// Reads and writes trace context in string-keyed carriers (YoMo frame metadata,
/// HTTP headers) through swift-distributed-tracing's `Injector` / `Extractor`.
///
/// By default writes both the YoMo keys (`yomo-trace-id`, `yomo-span-id`, read by
/// the Go SDK) and W3C `traceparent` / `tracestate`, and reads `traceparent` when
/// it is valid, else the YoMo keys; a YoMo-only parent has no flags on the wire
/// and counts as sampled (PROTOCOL.md "Tracing in metadata"). `formats` (from
/// `OTEL_PROPAGATORS`) narrows both to one of the two. Malformed values are ignored.
public struct TraceContextPropagator: Sendable {
    public static let traceparentKey = "traceparent"
    public static let tracestateKey = "tracestate"
    public static let yomoTraceIDKey = "yomo-trace-id"
    public static let yomoSpanIDKey = "yomo-span-id"

    /// Which trace-context formats travel: the `OTEL_PROPAGATORS` choice.
    public struct Formats: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }

        /// W3C `traceparent` / `tracestate` (`OTEL_PROPAGATORS=tracecontext`).
        public static let traceContext = Formats(rawValue: 1)
        /// The YoMo keys `yomo-trace-id` / `yomo-span-id`, what the Go SDK reads (`OTEL_PROPAGATORS=yomo`).
        public static let yomo = Formats(rawValue: 2)
        /// Both, the default: Go components follow the trace, and the sampled
        /// flag still travels between Swift ones.
        public static let all: Formats = [.traceContext, .yomo]

        /// `OTEL_PROPAGATORS`: a comma-separated list of `tracecontext`, `yomo`,
        /// or `none`; unset or empty means both. Names this SDK does not
        /// implement (`baggage`, `b3`, …) are ignored and reported in the warning;
        /// a list with none that it does implement falls back to both.
        public static func fromEnvironment(_ environment: [String: String]) -> (Formats, warning: String?) {
            guard let value = environment["OTEL_PROPAGATORS"], !value.trimmingSpaces().isEmpty else { return (.all, nil) }
            var formats: Formats = []
            var unknown: [String] = []
            var none = false
            for name in value.split(separator: ",").map({ String($0).trimmingSpaces().lowercased() }) where !name.isEmpty {
                switch name {
                case "tracecontext": formats.insert(.traceContext)
                case "yomo": formats.insert(.yomo)
                case "none": none = true
                default: unknown.append(name)
                }
            }
            if none && formats.isEmpty { return ([], nil) }
            let warning = unknown.isEmpty ? nil
                : "OTEL_PROPAGATORS: \(unknown.joined(separator: ", ")) not supported (supported: tracecontext, yomo, none)"
            return (formats.isEmpty ? .all : formats, warning)
        }
    }

    /// W3C trace-context caps tracestate at 32 members; longer values are dropped
    /// rather than forwarded.
    package static let maxTraceStateLength = 512

    public let formats: Formats

    public init(formats: Formats = .all) {
        self.formats = formats
    }

    public func inject<Carrier, Inject: Injector>(
        _ spanContext: SpanContext,
        into carrier: inout Carrier,
        using injector: Inject
    ) where Inject.Carrier == Carrier {
        guard spanContext.isValid else { return }
        if formats.contains(.traceContext) {
            injector.inject(Self.formatTraceparent(spanContext), forKey: Self.traceparentKey, into: &carrier)
            if !spanContext.traceState.isEmpty {
                injector.inject(spanContext.traceState, forKey: Self.tracestateKey, into: &carrier)
            }
        }
        if formats.contains(.yomo) {
            injector.inject(spanContext.traceID.description, forKey: Self.yomoTraceIDKey, into: &carrier)
            injector.inject(spanContext.spanID.description, forKey: Self.yomoSpanIDKey, into: &carrier)
        }
    }

    /// `00-<32 hex>-<16 hex>-<2 hex>`, written in one buffer (this runs for every frame).
    static func formatTraceparent(_ context: SpanContext) -> String {
        String(unsafeUninitializedCapacity: 55) { buffer in
            buffer[0] = UInt8(ascii: "0")
            buffer[1] = UInt8(ascii: "0")
            buffer[2] = UInt8(ascii: "-")
            writeHex(context.traceID.high, into: buffer, at: 3)
            writeHex(context.traceID.low, into: buffer, at: 19)
            buffer[35] = UInt8(ascii: "-")
            writeHex(context.spanID.rawValue, into: buffer, at: 36)
            buffer[52] = UInt8(ascii: "-")
            buffer[53] = UInt8(ascii: "0")
            buffer[54] = context.isSampled ? UInt8(ascii: "1") : UInt8(ascii: "0")
            return 55
        }
    }

    /// The remote parent found in `carrier`, or nil.
    public func extract<Carrier, Extract: Extractor>(
        from carrier: Carrier,
        using extractor: Extract
    ) -> SpanContext? where Extract.Carrier == Carrier {
        if formats.contains(.traceContext),
           let traceparent = extractor.extract(key: Self.traceparentKey, from: carrier),
           var context = Self.parseTraceparent(traceparent) {
            if let traceState = extractor.extract(key: Self.tracestateKey, from: carrier),
               traceState.utf8.count <= Self.maxTraceStateLength {
                context.traceState = traceState.trimmingSpaces()
            }
            return context
        }
        guard formats.contains(.yomo),
              let traceIDString = extractor.extract(key: Self.yomoTraceIDKey, from: carrier),
              let spanIDString = extractor.extract(key: Self.yomoSpanIDKey, from: carrier),
              let traceID = TraceID(hexString: traceIDString), traceID.isValid,
              let spanID = SpanID(hexString: spanIDString), spanID.isValid
        else { return nil }
        return SpanContext(traceID: traceID, spanID: spanID, traceFlags: .sampled, isRemote: true)
    }

    /// Parses a W3C `traceparent` (version 00, or a later version read as 00 with
    /// trailing fields ignored, as the spec asks). Returns nil when invalid.
    public static func parseTraceparent(_ value: String) -> SpanContext? {
        var value = value
        // Parse the UTF-8 in place: no copies on the per-frame path.
        return value.withUTF8 { utf8 in
            var start = 0
            var end = utf8.count
            while start < end, utf8[start] == UInt8(ascii: " ") || utf8[start] == UInt8(ascii: "\t") { start += 1 }
            while end > start, utf8[end - 1] == UInt8(ascii: " ") || utf8[end - 1] == UInt8(ascii: "\t") { end -= 1 }
            return parseTraceparent(UnsafeBufferPointer(rebasing: utf8[start..<end]))
        }
    }

    private static func parseTraceparent(_ bytes: UnsafeBufferPointer<UInt8>) -> SpanContext? {
        guard bytes.count >= 55,
              bytes[2] == UInt8(ascii: "-"), bytes[35] == UInt8(ascii: "-"), bytes[52] == UInt8(ascii: "-"),
              let versionHigh = hexValue(bytes[0]), let versionLow = hexValue(bytes[1]),
              !isUppercaseHex(bytes[0]), !isUppercaseHex(bytes[1])
        else { return nil }
        let version = versionHigh << 4 | versionLow
        // Version ff is forbidden; version 00 has exactly 55 characters; later
        // versions may append fields after a dash.
        guard version != 0xFF else { return nil }
        if version == 0 {
            guard bytes.count == 55 else { return nil }
        } else if bytes.count > 55 {
            guard bytes[55] == UInt8(ascii: "-") else { return nil }
        }
        guard let traceHigh = parseHex64(contiguous: UnsafeBufferPointer(rebasing: bytes[3..<19]), lowercaseOnly: true),
              let traceLow = parseHex64(contiguous: UnsafeBufferPointer(rebasing: bytes[19..<35]), lowercaseOnly: true),
              let spanID = parseHex64(contiguous: UnsafeBufferPointer(rebasing: bytes[36..<52]), lowercaseOnly: true),
              let flagsHigh = hexValue(bytes[53]), let flagsLow = hexValue(bytes[54]),
              !isUppercaseHex(bytes[53]), !isUppercaseHex(bytes[54])
        else { return nil }
        let traceID = TraceID(high: traceHigh, low: traceLow)
        guard traceID.isValid, spanID != 0 else { return nil }
        let flags = TraceFlags(rawValue: (flagsHigh << 4 | flagsLow) & TraceFlags.sampled.rawValue)
        return SpanContext(traceID: traceID, spanID: SpanID(rawValue: spanID), traceFlags: flags, isRemote: true)
    }

    @inline(__always) private static func isUppercaseHex(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "F")
    }
}

/// Injects into a `[String: String]` carrier.
public struct DictionaryInjector: Injector {
    public init() {}
    public func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) {
        carrier[key] = value
    }
}

/// Extracts from a `[String: String]` carrier.
public struct DictionaryExtractor: Extractor {
    public init() {}
    public func extract(key: String, from carrier: [String: String]) -> String? {
        carrier[key]
    }
}
