import FoundationEssentials
import Synchronization
import YoMoWire

/// Groups received spans by trace and renders a finished trace as a waterfall:
/// service, span tree, a duration bar on the trace's time line, key attributes,
/// errors in red.
public final class TraceAssembler: Sendable {
    private struct Pending {
        var spans: [ReceivedSpan] = []
        var lastArrival: ContinuousClock.Instant
    }

    private struct State {
        var traces: [String: Pending] = [:]
        var spanCount = 0
    }

    private let state = Mutex(State())
    private let clock = ContinuousClock()
    /// Held spans beyond which the least recently extended traces are handed
    /// out before they are quiet: printed early, never dropped.
    public let maximumPendingSpans: Int

    public init(maximumPendingSpans: Int = 200_000) {
        self.maximumPendingSpans = max(1, maximumPendingSpans)
    }

    public func add(_ spans: [ReceivedSpan]) {
        let now = clock.now
        state.withLock { state in
            for span in spans {
                state.traces[span.traceID, default: Pending(lastArrival: now)].spans.append(span)
                state.traces[span.traceID]?.lastArrival = now
            }
            state.spanCount += spans.count
        }
    }

    /// Traces that got no new span for `quiet`, and while more than
    /// `maximumPendingSpans` are held, the least recently extended others:
    /// taken out, oldest first.
    public func takeFinished(quiet: Duration) -> [[ReceivedSpan]] {
        let now = clock.now
        return state.withLock { state in
            var done = state.traces.filter { now - $0.value.lastArrival >= quiet }
            var held = state.spanCount - done.values.reduce(0) { $0 + $1.spans.count }
            if held > maximumPendingSpans {
                let waiting = state.traces.filter { done[$0.key] == nil }.sorted { $0.value.lastArrival < $1.value.lastArrival }
                for (traceID, trace) in waiting where held > maximumPendingSpans {
                    done[traceID] = trace
                    held -= trace.spans.count
                }
            }
            for key in done.keys { state.traces[key] = nil }
            state.spanCount = held
            return done.values.map(\.spans).sorted { ($0.map(\.startNanoseconds).min() ?? 0) < ($1.map(\.startNanoseconds).min() ?? 0) }
        }
    }

    public var pendingCount: Int { state.withLock { $0.traces.count } }

    /// Spans held, of all pending traces.
    public var pendingSpanCount: Int { state.withLock { $0.spanCount } }
}

public struct WaterfallRenderer: Sendable {
    public var colour: Bool
    public var barWidth = 32
    /// Attributes not worth a column.
    static let hiddenAttributes: Set<String> = ["thread.name", "code.function", "code.filepath", "code.lineno"]

    public init(colour: Bool) { self.colour = colour }

    /// Spans come from whoever can reach the receiver: any timestamps, ids
    /// that repeat, parents that form a cycle or a chain a million deep. Each
    /// span is drawn once, and none of that can trap or exhaust the stack.
    public func render(_ spans: [ReceivedSpan]) -> String {
        guard let first = spans.first else { return "" }
        let barWidth = max(1, self.barWidth)
        let start = spans.map(\.startNanoseconds).min() ?? 0
        let latest = spans.map(\.endNanoseconds).max() ?? start
        let total = latest > start ? latest - start : 1
        let rows = Self.treeRows(spans)

        let serviceWidth = min(24, rows.map(\.service.count).max() ?? 0)
        let treeWidth = min(Self.treeColumns, rows.map(\.tree.count).max() ?? 0)
        let errors = spans.filter(\.isError).count
        var lines: [String] = []
        let header = "trace \(terminalSafe(first.traceID))  \(spans.count) span\(spans.count == 1 ? "" : "s")  \(Self.format(total))"
            + (errors > 0 ? "  \(errors) error\(errors == 1 ? "" : "s")" : "")
        lines.append(bold(header))
        for row in rows {
            let span = row.span
            // Clamped as doubles: a span may start after every other span ends.
            let offset = min(Double(span.startNanoseconds - start) / Double(total) * Double(barWidth), Double(barWidth - 1))
            let length = min((Double(span.durationNanoseconds) / Double(total) * Double(barWidth)).rounded(), Double(barWidth))
            let barStart = Int(offset)
            let barLength = max(1, min(Int(length), barWidth - barStart))
            let bar = String(repeating: "·", count: barStart) + String(repeating: "█", count: barLength)
                + String(repeating: "·", count: barWidth - barStart - barLength)
            let attributes = span.attributes.filter { !Self.hiddenAttributes.contains($0.key) }
                .sorted { $0.key < $1.key }
                .map { terminalSafe("\($0.key)=\($0.value)") }.joined(separator: " ")
            var line = "  " + pad(row.service, serviceWidth) + "  " + pad(row.tree, treeWidth) + "  " + bar + "  "
                + pad(Self.format(span.durationNanoseconds), 9, left: true) + "  " + attributes
            if span.isError {
                line += "  ✗ " + (span.statusMessage.isEmpty ? "error" : terminalSafe(span.statusMessage))
                line = red(line)
            }
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }

    /// The tree column's width: rows deeper than it holds are clipped.
    static let treeColumns = 40

    /// Each span once, as a row of the tree: roots (no parent, or one this view
    /// never saw) first, by start time, each followed by its subtree; then
    /// whatever a cycle kept from any root, the same way. Walked with an
    /// explicit stack, and the indentation stops growing past what the column
    /// shows, so a hostile chain costs neither stack nor quadratic memory.
    static func treeRows(_ spans: [ReceivedSpan]) -> [(service: String, tree: String, span: ReceivedSpan)] {
        let ids = Set(spans.map(\.spanID))
        var children: [String: [Int]] = [:]
        var roots: [Int] = []
        for index in spans.indices {
            let span = spans[index]
            if ids.contains(span.parentSpanID) {
                children[span.parentSpanID, default: []].append(index)
            } else {
                roots.append(index)
            }
        }
        let byStart = { (left: Int, right: Int) in spans[left].startNanoseconds < spans[right].startNanoseconds }
        for key in children.keys { children[key]?.sort(by: byStart) }
        // Children are listed under their parent's id: a repeated id lists them once.
        var listed = Set<String>()

        var rows: [(service: String, tree: String, span: ReceivedSpan)] = []
        rows.reserveCapacity(spans.count)
        var drawn = [Bool](repeating: false, count: spans.count)
        var stack: [(index: Int, prefix: String, isLast: Bool, depth: Int)] = []
        func walk(from root: Int) {
            stack.append((root, "", true, 0))
            while let (index, prefix, isLast, depth) = stack.popLast() {
                guard !drawn[index] else { continue }
                drawn[index] = true
                let span = spans[index]
                rows.append((terminalSafe(span.service), (depth == 0 ? "" : prefix + (isLast ? "└─ " : "├─ ")) + terminalSafe(span.name), span))
                guard listed.insert(span.spanID).inserted, let next = children[span.spanID] else { continue }
                let childPrefix = depth == 0 || prefix.count >= treeColumns ? prefix : prefix + (isLast ? "   " : "│  ")
                for (position, child) in next.enumerated().reversed() where !drawn[child] {
                    stack.append((child, childPrefix, position == next.count - 1, depth + 1))
                }
            }
        }
        for root in roots.sorted(by: byStart) { walk(from: root) }
        for index in spans.indices.sorted(by: byStart) where !drawn[index] { walk(from: index) }
        return rows
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
