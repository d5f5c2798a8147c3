import FoundationEssentials
import Synchronization

/// Groups received spans by trace and renders a finished trace as a waterfall:
/// service, span tree, a duration bar on the trace's time line, key attributes,
/// errors in red.
public final class TraceAssembler: Sendable {
    private struct Pending {
        var spans: [ReceivedSpan] = []
        var lastArrival: ContinuousClock.Instant
    }

    private let pending = Mutex<[String: Pending]>([:])
    private let clock = ContinuousClock()

    public init() {}

    public func add(_ spans: [ReceivedSpan]) {
        let now = clock.now
        pending.withLock { pending in
            for span in spans {
                pending[span.traceID, default: Pending(lastArrival: now)].spans.append(span)
                pending[span.traceID]?.lastArrival = now
            }
        }
    }

    /// Traces that got no new span for `quiet`: taken out, oldest first.
    public func takeFinished(quiet: Duration) -> [[ReceivedSpan]] {
        let now = clock.now
        return pending.withLock { pending in
            let done = pending.filter { now - $0.value.lastArrival >= quiet }
            for key in done.keys { pending[key] = nil }
            return done.values.map(\.spans).sorted { ($0.map(\.startNanoseconds).min() ?? 0) < ($1.map(\.startNanoseconds).min() ?? 0) }
        }
    }

    public var pendingCount: Int { pending.withLock { $0.count } }
}

public struct WaterfallRenderer: Sendable {
    public var colour: Bool
    public var barWidth = 32
    /// Attributes not worth a column.
    static let hiddenAttributes: Set<String> = ["thread.name", "code.function", "code.filepath", "code.lineno"]

    public init(colour: Bool) { self.colour = colour }

    public func render(_ spans: [ReceivedSpan]) -> String {
        guard let first = spans.first else { return "" }
        let start = spans.map(\.startNanoseconds).min() ?? 0
        let end = max(spans.map(\.endNanoseconds).max() ?? start, start + 1)
        let total = end - start
        let ids = Set(spans.map(\.spanID))
        let children = Dictionary(grouping: spans.filter { ids.contains($0.parentSpanID) }, by: \.parentSpanID)
        // Roots: no parent, or a parent this trace view never saw.
        let roots = spans.filter { !ids.contains($0.parentSpanID) }.sorted { $0.startNanoseconds < $1.startNanoseconds }

        var rows: [(service: String, tree: String, span: ReceivedSpan)] = []
        func walk(_ span: ReceivedSpan, prefix: String, isLast: Bool, depth: Int) {
            let branch = depth == 0 ? "" : prefix + (isLast ? "└─ " : "├─ ")
            rows.append((span.service, branch + span.name, span))
            let next = (children[span.spanID] ?? []).sorted { $0.startNanoseconds < $1.startNanoseconds }
            let childPrefix = depth == 0 ? "" : prefix + (isLast ? "   " : "│  ")
            for (index, child) in next.enumerated() {
                walk(child, prefix: childPrefix, isLast: index == next.count - 1, depth: depth + 1)
            }
        }
        for root in roots { walk(root, prefix: "", isLast: true, depth: 0) }

        let serviceWidth = min(24, rows.map(\.service.count).max() ?? 0)
        let treeWidth = min(40, rows.map(\.tree.count).max() ?? 0)
        let errors = spans.filter(\.isError).count
        var lines: [String] = []
        let header = "trace \(first.traceID)  \(spans.count) span\(spans.count == 1 ? "" : "s")  \(Self.format(total))"
            + (errors > 0 ? "  \(errors) error\(errors == 1 ? "" : "s")" : "")
        lines.append(bold(header))
        for row in rows {
            let span = row.span
            let offset = Int(Double(span.startNanoseconds - start) / Double(total) * Double(barWidth))
            let length = max(1, Int((Double(span.durationNanoseconds) / Double(total) * Double(barWidth)).rounded()))
            let barStart = min(offset, barWidth - 1)
            let barLength = min(length, barWidth - barStart)
            let bar = String(repeating: "·", count: barStart) + String(repeating: "█", count: barLength)
                + String(repeating: "·", count: barWidth - barStart - barLength)
            let attributes = span.attributes.filter { !Self.hiddenAttributes.contains($0.key) }
                .sorted { $0.key < $1.key }
                .map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            var line = "  " + pad(row.service, serviceWidth) + "  " + pad(row.tree, treeWidth) + "  " + bar + "  "
                + pad(Self.format(span.durationNanoseconds), 9, left: true) + "  " + attributes
            if span.isError {
                line += "  ✗ " + (span.statusMessage.isEmpty ? "error" : span.statusMessage)
                line = red(line)
            }
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }

    static func format(_ nanoseconds: UInt64) -> String {
        if nanoseconds < 1_000_000 { return fixed(Double(nanoseconds) / 1e3, decimals: 0) + " µs" }
        if nanoseconds < 1_000_000_000 { return fixed(Double(nanoseconds) / 1e6, decimals: 2) + " ms" }
        return fixed(Double(nanoseconds) / 1e9, decimals: 2) + " s"
    }

    private func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
        let clipped = text.count > width ? String(text.prefix(width - 1)) + "…" : text
        let padding = String(repeating: " ", count: max(0, width - clipped.count))
        return left ? padding + clipped : clipped + padding
    }

    private func red(_ text: String) -> String { colour ? "\u{1B}[31m\(text)\u{1B}[0m" : text }
    private func bold(_ text: String) -> String { colour ? "\u{1B}[1m\(text)\u{1B}[0m" : text }
}

/// `value` rounded to `decimals` places, as `String(format: "%.Nf")` prints it
/// (which needs full Foundation): from the exact binary value, ties to even;
/// "-" for non-finite values.
package func fixed(_ value: Double, decimals: Int) -> String {
    guard value.isFinite else { return "-" }
    var scale: Double = 1
    for _ in 0..<decimals { scale *= 10 }
    let magnitude = abs(value)
    let product = magnitude * scale
    guard product < 9e18 else { return "\(value)" }
    // The product's rounding error, exactly: the true product is product + error.
    let error = (-product).addingProduct(magnitude, scale)
    let lower = product.rounded(.down)
    let fraction = product - lower
    var units = UInt64(lower)
    if fraction > 0.5 || (fraction == 0.5 && (error > 0 || (error == 0 && units % 2 == 1))) {
        // (Away from 0.5 the error, under half a unit in the last place, cannot
        // change the side: fraction and 0.5 are both whole multiples of that unit.)
        units += 1
    }
    let divisor = UInt64(scale)
    var text = (value.sign == .minus ? "-" : "") + String(units / divisor)
    if decimals > 0 {
        let digits = String(units % divisor)
        text += "." + String(repeating: "0", count: decimals - digits.count) + digits
    }
    return text
}
