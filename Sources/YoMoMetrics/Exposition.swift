import FoundationEssentials
public import YoMoTracing
import Tracing

/// Renders snapshots in the Prometheus text format (0.0.4) or OpenMetrics 1.0
/// (with exemplars), naming metrics by the OpenTelemetry → Prometheus rules:
/// dots become underscores, the unit becomes a suffix (`s` → `_seconds`),
/// counters end in `_total`, and the resource goes into `target_info`.
public enum PrometheusExposition {
    public enum Format: Sendable {
        case text
        case openMetrics

        public var contentType: String {
            switch self {
            case .text: "text/plain; version=0.0.4; charset=utf-8"
            case .openMetrics: "application/openmetrics-text; version=1.0.0; charset=utf-8"
            }
        }

        /// OpenMetrics when the scraper's `Accept` header asks for it.
        public init(accept: String?) {
            self = (accept ?? "").contains("application/openmetrics-text") ? .openMetrics : .text
        }
    }

    public static func render(_ snapshots: [MetricSnapshot], resource: Resource, format: Format) -> String {
        var out = ""
        renderTargetInfo(resource, format: format, into: &out)
        // One family per name, whichever meters (scopes) have series in it:
        // a name must not come twice on a page.
        var families: [(name: String, members: [MetricSnapshot])] = []
        var index: [String: Int] = [:]
        for snapshot in snapshots where !snapshot.points.isEmpty {
            if let at = index[snapshot.descriptor.name] {
                families[at].members.append(snapshot)
            } else {
                index[snapshot.descriptor.name] = families.count
                families.append((snapshot.descriptor.name, [snapshot]))
            }
        }
        for family in families { render(family.members, format: format, into: &out) }
        if format == .openMetrics { out += "# EOF\n" }
        return out
    }

    /// `messaging.process.duration` with unit `s` → `messaging_process_duration_seconds`.
    public static func metricName(_ name: String, unit: String) -> String {
        var base = sanitize(name)
        let suffix = unitSuffix(unit)
        if let suffix, !base.hasSuffix("_" + suffix) { base += "_" + suffix }
        return base
    }

    static func unitSuffix(_ unit: String) -> String? {
        // Annotations in braces ({message}, {request}/min) carry no unit.
        var bare = ""
        var inBraces = false
        for character in unit {
            if character == "{" { inBraces = true } else if character == "}" { inBraces = false } else if !inBraces { bare.append(character) }
        }
        bare = bare.trimming { $0 == " " }
        if let slash = bare.firstIndex(of: "/") {
            // A rate (By/s): "bytes_per_second", the OpenTelemetry way.
            let over = String(bare[bare.index(after: slash)...])
            let perUnit = ["s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"][over]
            return (unitSuffix(String(bare[..<slash])).map { $0 + "_" } ?? "") + "per_" + (perUnit ?? sanitize(over))
        }
        switch bare {
        case "": return nil
        case "1": return "ratio"
        case "s": return "seconds"
        case "ms": return "milliseconds"
        case "us": return "microseconds"
        case "ns": return "nanoseconds"
        case "By": return "bytes"
        case "KiBy": return "kibibytes"
        case "MiBy": return "mebibytes"
        case "%": return "percent"
        default: return sanitize(bare)
        }
    }

    static func sanitize(_ name: String) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(name.utf8.count)
        for (index, byte) in name.utf8.enumerated() {
            let allowed = (byte >= 97 && byte <= 122) || (byte >= 65 && byte <= 90) || byte == 95 || byte == 58
                || (index > 0 && byte >= 48 && byte <= 57)
            let out: UInt8 = allowed ? byte : 95
            // Runs of underscores from e.g. "a..b" collapse, as the spec asks.
            if out == 95, bytes.last == 95 { continue }
            bytes.append(out)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func labelName(_ key: String) -> String { sanitize(key) }

    static func escapeLabel(_ value: String) -> String {
        // Most values need nothing escaped.
        if !value.utf8.contains(where: { $0 == 92 || $0 == 34 || $0 == 10 }) { return value }
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }

    static func escapeHelp(_ value: String) -> String {
        value.replacing("\\", with: "\\\\").replacing("\n", with: "\\n")
    }

    static func number(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value == .infinity { return "+Inf" }
        if value == -.infinity { return "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }

    static func text(_ attribute: SpanAttribute) -> String {
        switch attribute {
        case .string(let value): value
        case .int64(let value): String(value)
        case .int32(let value): String(value)
        case .double(let value): number(value)
        case .bool(let value): String(value)
        case .stringArray(let values): values.joined(separator: ",")
        default: "\(attribute)"
        }
    }

    static func labels(_ pairs: [(String, String)]) -> String {
        guard !pairs.isEmpty else { return "" }
        var out = "{"
        for (index, pair) in pairs.enumerated() {
            if index > 0 { out += "," }
            out += labelName(pair.0)
            out += "=\""
            out += escapeLabel(pair.1)
            out += "\""
        }
        out += "}"
        return out
    }

    /// An OpenMetrics exemplar, as it follows a sample.
    private static func exemplarSuffix(_ exemplar: Exemplar) -> String {
        " # {trace_id=\"\(exemplar.traceID)\",span_id=\"\(exemplar.spanID)\"} \(number(exemplar.value)) \(exemplar.timestamp)"
    }

    private static func renderTargetInfo(_ resource: Resource, format: Format, into out: inout String) {
        var pairs: [(String, String)] = []
        resource.attributes.forEach { key, attribute in pairs.append((key, text(attribute))) }
        guard !pairs.isEmpty else { return }
        pairs.sort { $0.0 < $1.0 }
        if format == .openMetrics {
            out += "# TYPE target info\n# HELP target Target metadata\ntarget_info\(labels(pairs)) 1\n"
        } else {
            out += "# HELP target_info Target metadata\n# TYPE target_info gauge\ntarget_info\(labels(pairs)) 1\n"
        }
    }

    /// One family: the first member's type and help, every member's series
    /// with its own scope.
    private static func render(_ members: [MetricSnapshot], format: Format, into out: inout String) {
        let descriptor = members[0].descriptor
        let name = metricName(descriptor.name, unit: descriptor.unit)
        let type: String
        switch descriptor.kind {
        case .counter: type = "counter"
        case .upDownCounter, .gauge: type = "gauge"
        case .histogram: type = "histogram"
        }
        let isCounter = descriptor.kind == .counter
        // OpenMetrics names the counter family without `_total`; the 0.0.4 text
        // format names it as its sample.
        let family = isCounter && format == .text ? name + "_total" : name
        if !descriptor.description.isEmpty { out += "# HELP \(family) \(escapeHelp(descriptor.description))\n" }
        out += "# TYPE \(family) \(type)\n"
        if format == .openMetrics, let unit = unitSuffix(descriptor.unit), name.hasSuffix("_" + unit) {
            out += "# UNIT \(family) \(unit)\n"
        }
        let bucketName = name + "_bucket"
        let sampleName = isCounter ? name + "_total" : name
        for snapshot in members {
            let scope: [(String, String)] = snapshot.descriptor.scope.isEmpty ? [] : [("otel_scope_name", snapshot.descriptor.scope)]
            for point in snapshot.points {
                let pairs = point.attributes.pairs.map { ($0.key, $0.value) } + scope
                let pointLabels = labels(pairs)
                switch point.value {
                case .scalar(let value):
                    out += sampleName
                    out += pointLabels
                    out += " "
                    out += number(value)
                    // OpenMetrics allows exemplars on a counter's `_total` and a histogram's buckets only.
                    if format == .openMetrics, isCounter, let exemplar = point.exemplar { out += exemplarSuffix(exemplar) }
                    out += "\n"
                case .histogram(let histogram):
                    // The bucket labels are the point's with `le` added: built once.
                    let open = pointLabels.isEmpty ? "{" : String(pointLabels.dropLast()) + ","
                    var cumulative = 0
                    for (index, count) in histogram.counts.enumerated() {
                        cumulative += count
                        let bound = index < histogram.boundaries.count ? number(histogram.boundaries[index]) : "+Inf"
                        out += bucketName
                        out += open
                        out += "le=\""
                        out += bound
                        out += "\"} "
                        out += String(cumulative)
                        if format == .openMetrics, let exemplar = histogram.exemplars[index] { out += exemplarSuffix(exemplar) }
                        out += "\n"
                    }
                    out += "\(name)_sum\(pointLabels) \(number(histogram.sum))\n"
                    out += "\(name)_count\(pointLabels) \(histogram.count)\n"
                }
            }
        }
    }
}
