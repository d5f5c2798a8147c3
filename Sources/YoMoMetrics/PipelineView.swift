import FoundationEssentials

/// One sample of a scraped `/metrics` page (Prometheus text format).
public struct ScrapedSample: Sendable, Hashable {
    public var name: String
    public var labels: [String: String]
    public var value: Double
}

/// Reads the Prometheus text format (what `/metrics` serves without an
/// `Accept` header): comments skipped, label values unescaped.
public enum PrometheusTextParser {
    public static func parse(_ text: String) -> [ScrapedSample] {
        // Bytes, not Characters: a page at the cardinality limit has tens of
        // thousands of lines, and reading it Character by Character took seconds.
        let bytes = Array(text.utf8)
        var samples: [ScrapedSample] = []
        var lineStart = 0
        while lineStart < bytes.count {
            let lineEnd = bytes[lineStart...].firstIndex(of: newline) ?? bytes.count
            if let sample = sample(bytes, from: lineStart, to: lineEnd) { samples.append(sample) }
            lineStart = lineEnd + 1
        }
        return samples
    }

    private static let newline = UInt8(ascii: "\n")
    private static let space = UInt8(ascii: " ")
    private static let quote = UInt8(ascii: "\"")
    private static let backslash = UInt8(ascii: "\\")
    private static let comma = UInt8(ascii: ",")
    private static let openingBrace = UInt8(ascii: "{")
    private static let closingBrace = UInt8(ascii: "}")
    private static let equals = UInt8(ascii: "=")
    private static let hash = UInt8(ascii: "#")
    private static let tab = UInt8(ascii: "\t")
    private static let carriageReturn = UInt8(ascii: "\r")
    /// `\n` in a label value: the n of the escape.
    private static let letterN = UInt8(ascii: "n")

    /// The sample on the line `bytes[from..<to]`, nil for a blank line, a
    /// comment or a line with no value.
    private static func sample(_ bytes: [UInt8], from: Int, to: Int) -> ScrapedSample? {
        func isBlank(_ byte: UInt8) -> Bool { byte == space || byte == tab || byte == carriageReturn }
        var start = from
        var end = to
        while start < end, isBlank(bytes[start]) { start += 1 }
        while end > start, isBlank(bytes[end - 1]) { end -= 1 }
        guard start < end, bytes[start] != hash else { return nil }
        var name = ""
        var labels: [String: String] = [:]
        var index = start
        if let brace = bytes[start..<end].firstIndex(of: openingBrace) {
            name = String(decoding: bytes[start..<brace], as: UTF8.self)
            index = brace + 1
            // key="value",… until the closing brace, values with \\ \" \n escapes.
            while index < end, bytes[index] != closingBrace {
                guard let equalsSign = bytes[index..<end].firstIndex(of: equals) else { break }
                var keyStart = index
                var keyEnd = equalsSign
                while keyStart < keyEnd, bytes[keyStart] == comma || bytes[keyStart] == space { keyStart += 1 }
                while keyEnd > keyStart, bytes[keyEnd - 1] == comma || bytes[keyEnd - 1] == space { keyEnd -= 1 }
                index = equalsSign + 1
                guard index < end, bytes[index] == quote else { break }
                index += 1
                var value: [UInt8] = []
                var escaped = false
                while index < end {
                    let byte = bytes[index]
                    index += 1
                    if escaped {
                        value.append(byte == letterN ? newline : byte)
                        escaped = false
                    } else if byte == backslash {
                        escaped = true
                    } else if byte == quote {
                        break
                    } else {
                        value.append(byte)
                    }
                }
                labels[String(decoding: bytes[keyStart..<keyEnd], as: UTF8.self)] = String(decoding: value, as: UTF8.self)
                if index < end, bytes[index] == comma { index += 1 }
            }
            if index < end, bytes[index] == closingBrace { index += 1 }
        } else if let firstSpace = bytes[start..<end].firstIndex(of: space) {
            name = String(decoding: bytes[start..<firstSpace], as: UTF8.self)
            index = firstSpace
        }
        // The value is the first field after the name and labels (a timestamp may follow).
        while index < end, bytes[index] == space { index += 1 }
        var fieldEnd = index
        while fieldEnd < end, bytes[fieldEnd] != space { fieldEnd += 1 }
        guard index < fieldEnd else { return nil }
        let field = String(decoding: bytes[index..<fieldEnd], as: UTF8.self)
        let value: Double? = switch field {
        case "+Inf": .infinity
        case "-Inf": -.infinity
        case "NaN": .nan
        default: Double(field)
        }
        return value.map { ScrapedSample(name: name, labels: labels, value: $0) }
    }
}

/// What `yomo top` shows for one component, from two scrapes of its `/metrics`.
public struct PipelineRow: Sendable, Hashable {
    public var target: String
    public var service: String
    /// Frames handed to handlers (functions) or delivered (zippers), per second.
    public var inRate: Double
    /// Frames written per second.
    public var outRate: Double
    /// Share of handled frames whose handler threw, 0–100.
    public var errorPercent: Double
    /// Handler time quantiles over the interval, seconds (nil: nothing handled).
    public var p50: Double?
    public var p99: Double?
    public var connections: Double?
    public var reconnects: Double
    /// Zipper: frames with no observer, and frames dropped (slow consumers, mesh), per second.
    public var noRouteRate: Double
    public var droppedRate: Double
    /// Smoothed RTT of a client's connection to its zipper, seconds.
    public var rtt: Double?
    /// Spans the component's exporter lost (queue full, failed, cut at shutdown), in all.
    public var exporterDrops: Double
    /// Function: share of the interval its handlers' limits held reading, 0–100.
    public var heldPercent: Double = 0
    /// The process's resident memory, bytes (nil: not reported).
    public var residentBytes: Double?

    /// The row for `target` from `previous` and `current` scrapes `seconds` apart.
    public static func compute(target: String, previous: [ScrapedSample], current: [ScrapedSample], seconds: Double) -> PipelineRow {
        func total(_ samples: [ScrapedSample], _ name: String, _ match: (([String: String]) -> Bool)? = nil) -> Double {
            samples.filter { $0.name == name && (match?($0.labels) ?? true) }.reduce(0) { $0 + $1.value }
        }
        func rate(_ name: String, _ match: (([String: String]) -> Bool)? = nil) -> Double {
            guard seconds > 0 else { return 0 }
            return max(0, total(current, name, match) - total(previous, name, match)) / seconds
        }
        let service = current.first { $0.name == "target_info" }?.labels["service_name"] ?? target
        let consumed = rate("messaging_client_consumed_messages_total")
        let delivered = rate("yomo_zipper_routed_messages_total") { $0["outcome"] == "delivered" }
        let handled = rate("messaging_process_duration_seconds_count")
        let failed = rate("messaging_process_duration_seconds_count") { $0["error_type"] != nil }
        let isZipper = current.contains { $0.name.hasPrefix("yomo_zipper_") }
        // A client has one connection; several clients in one process: their mean.
        let rtts = current.filter { $0.name == "yomo_quic_smoothed_rtt_seconds" }
        let quantiles = intervalQuantiles(previous: previous, current: current, name: "messaging_process_duration_seconds")
        return PipelineRow(
            target: target, service: service,
            inRate: isZipper ? delivered : consumed,
            outRate: rate("messaging_client_sent_messages_total"),
            errorPercent: handled > 0 ? failed / handled * 100 : 0,
            p50: quantiles.map { $0.0 }, p99: quantiles.map { $0.1 },
            connections: isZipper ? total(current, "yomo_zipper_connections") : nil,
            reconnects: total(current, "yomo_client_reconnects_total"),
            noRouteRate: rate("yomo_zipper_routed_messages_total") { $0["outcome"] == "no_route" },
            droppedRate: rate("yomo_zipper_routed_messages_total") { $0["outcome"] == "dropped" }
                + rate("yomo_zipper_mesh_dropped_messages_total"),
            rtt: rtts.isEmpty ? nil : rtts.reduce(0) { $0 + $1.value } / Double(rtts.count),
            exporterDrops: total(current, "yomo_sdk_spans_dropped_total"),
            heldPercent: min(100, rate("yomo_handlers_reading_held_time_seconds_total") * 100),
            residentBytes: current.first { $0.name == "process_memory_usage_bytes" }?.value)
    }

    /// p50 and p99 of a histogram over the interval between two scrapes, all
    /// series summed, interpolated linearly inside a bucket (as PromQL's
    /// `histogram_quantile`).
    static func intervalQuantiles(previous: [ScrapedSample], current: [ScrapedSample], name: String) -> (Double, Double)? {
        func buckets(_ samples: [ScrapedSample]) -> [Double: Double] {
            var result: [Double: Double] = [:]
            for sample in samples where sample.name == name + "_bucket" {
                guard let text = sample.labels["le"] else { continue }
                let bound = text == "+Inf" ? Double.infinity : Double(text) ?? .nan
                result[bound, default: 0] += sample.value
            }
            return result
        }
        let now = buckets(current)
        let before = buckets(previous)
        let bounds = now.keys.filter { !$0.isNaN }.sorted()
        let cumulative = bounds.map { max(0, now[$0, default: 0] - before[$0, default: 0]) }
        guard let count = cumulative.last, count > 0 else { return nil }
        func quantile(_ q: Double) -> Double {
            let rank = q * count
            var lowerBound = 0.0
            var lowerCount = 0.0
            for (index, bound) in bounds.enumerated() {
                let upTo = cumulative[index]
                if upTo >= rank {
                    if bound.isInfinite { return lowerBound }
                    let inBucket = upTo - lowerCount
                    return inBucket > 0 ? lowerBound + (bound - lowerBound) * (rank - lowerCount) / inBucket : bound
                }
                lowerBound = bound
                lowerCount = upTo
            }
            return lowerBound
        }
        return (quantile(0.5), quantile(0.99))
    }
}

/// What `yomo top --clients` shows for one client of a zipper: the zipper's
/// side of its connection (the `yomo_zipper_client_*` gauges).
public struct ClientRow: Sendable, Hashable {
    public var zipper: String
    public var clientType: String
    public var name: String
    public var id: String
    /// Smoothed round-trip time, seconds.
    public var rtt: Double
    /// Packets toward it declared lost per second over the interval; nil for a
    /// connection the previous scrape did not see.
    public var lostRate: Double?
    /// Bytes per second BBR paces at toward it (0 under CUBIC or Reno).
    public var pacingRate: Double
    public var datagramSize: Double
    /// Bytes written to it that it has not acknowledged: a slow consumer's backlog.
    public var unacknowledged: Double

    /// One row per connected client in `current`, the most backlogged first,
    /// then the slowest.
    public static func compute(previous: [ScrapedSample], current: [ScrapedSample], seconds: Double) -> [ClientRow] {
        struct Key: Hashable { var zipper, clientType, name, id: String }
        func values(_ samples: [ScrapedSample], _ suffix: String) -> [Key: Double] {
            var result: [Key: Double] = [:]
            for sample in samples where sample.name == "yomo_zipper_client_" + suffix {
                let labels = sample.labels
                let key = Key(
                    zipper: labels["yomo_zipper_name"] ?? "", clientType: labels["yomo_client_type"] ?? "",
                    name: labels["yomo_client_name"] ?? "", id: labels["yomo_client_id"] ?? "")
                result[key] = sample.value
            }
            return result
        }
        let rtts = values(current, "smoothed_rtt_seconds")
        let lost = values(current, "packets_lost"), lostBefore = values(previous, "packets_lost")
        let pacing = values(current, "pacing_rate_bytes_per_second")
        let datagrams = values(current, "max_datagram_size_bytes")
        let unacknowledged = values(current, "unacknowledged_bytes")
        let rows = rtts.map { key, rtt in
            let lostRate: Double? = if let now = lost[key], let before = lostBefore[key], seconds > 0 {
                max(0, now - before) / seconds
            } else {
                nil
            }
            return ClientRow(
                zipper: key.zipper, clientType: key.clientType, name: key.name, id: key.id, rtt: rtt, lostRate: lostRate,
                pacingRate: pacing[key] ?? 0, datagramSize: datagrams[key] ?? 0, unacknowledged: unacknowledged[key] ?? 0)
        }
        // A page may hold NaN, which compares false with everything: sorted
        // as the smallest value, so the order stays a strict one.
        func key(_ value: Double) -> Double { value.isNaN ? -.infinity : value }
        return rows.sorted {
            if key($0.unacknowledged) != key($1.unacknowledged) { return key($0.unacknowledged) > key($1.unacknowledged) }
            if key($0.rtt) != key($1.rtt) { return key($0.rtt) > key($1.rtt) }
            return ($0.zipper, $0.name, $0.id) < ($1.zipper, $1.name, $1.id)
        }
    }
}
