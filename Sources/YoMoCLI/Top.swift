import ArgumentParser
import FoundationEssentials
import Glibc
import YoMoMetrics
import YoMoTraceView
import YoMoWire

/// `yomo top`: a live view of a pipeline from its components' `/metrics`
/// endpoints (each started with `--metrics HOST:PORT`), refreshed every second.
struct Top: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Watch a pipeline: rates, errors, handler latency, connections, RTT, span drops, from each component's /metrics.",
        discussion: "Start each component with --metrics HOST:PORT (or YOMO_METRICS_LISTEN) and list those addresses."
    )

    @Option(help: "Comma-separated HOST:PORT of the components' metrics endpoints.") var targets: String
    @Option(help: "Seconds between refreshes.") var interval = 1.0
    @Flag(help: "Print one table (two scrapes, --interval apart) and exit: for scripts.") var once = false
    @Option(help: "Also list up to N clients of each zipper target, from the zipper's side of their connections: the most backlogged first, then the slowest (0: none).")
    var clients = 0

    func validate() throws {
        guard !targets.isEmpty else { throw ValidationError("--targets needs at least one HOST:PORT") }
        guard interval > 0 else { throw ValidationError("--interval must be positive") }
        guard clients >= 0 else { throw ValidationError("--clients must be 0 or more") }
    }

    func run() async throws {
        let list = targets.split(separator: ",").map { $0.trimming(\.isHorizontalSpace) }.filter { !$0.isEmpty }
        var previous = await scrapeAll(list)
        var previousAt = Date()
        while true {
            try await Task.sleep(for: .milliseconds(Int64(interval * 1000)))
            let current = await scrapeAll(list)
            let now = Date()
            let seconds = now.timeIntervalSince(previousAt)
            var lines: [String] = []
            if !once { lines.append("\u{1B}[H\u{1B}[2J") }  // clear the screen
            lines.append("yomo top  \(now.formatted(.iso8601))  every \(interval) s")
            lines.append(Self.header)
            for target in list {
                // `scrapeAll` answers for every target it was given.
                switch current[target, default: .failure(ScrapeFailure(description: "unreachable"))] {
                case .success(let samples):
                    let before = (try? previous[target]?.get()) ?? []
                    lines.append(Self.format(PipelineRow.compute(target: target, previous: before, current: samples, seconds: seconds)))
                case .failure(let failure):
                    lines.append(Self.pad("-", 23) + " " + Self.pad(target, 21) + "  " + failure.description)
                }
            }
            if clients > 0 { lines += clientLines(list, previous: previous, current: current, seconds: seconds) }
            print(lines.joined(separator: "\n"))
            fflush(nil)  // every stream: `stdout` is a global Swift 6 rejects
            if once { return }
            previous = current
            previousAt = now
        }
    }

    static let header = "component               target                  in/s     out/s   err%    p50 ms    p99 ms  conns  reconn  noroute/s  drop/s  rtt ms  span drops  held%  rss MiB"

    /// Values come from whatever answers at a target: `fixed` prints any
    /// double (NaN, infinities and huge counts too), where `Int(_:)` would trap.
    static func format(_ row: PipelineRow) -> String {
        func milliseconds(_ value: Double?) -> String { value.map { fixed($0 * 1000, decimals: 2) } ?? "-" }
        func number(_ value: Double) -> String { fixed(value, decimals: 1) }
        func count(_ value: Double) -> String { fixed(value, decimals: 0) }
        return pad(String(terminalSafe(row.service).prefix(23)), 23) + " " + pad(String(row.target.prefix(21)), 21)
            + padLeft(number(row.inRate), 8) + padLeft(number(row.outRate), 10) + padLeft(number(row.errorPercent), 7)
            + padLeft(milliseconds(row.p50), 10) + padLeft(milliseconds(row.p99), 10)
            + padLeft(row.connections.map(count) ?? "-", 7) + padLeft(count(row.reconnects), 8)
            + padLeft(number(row.noRouteRate), 11) + padLeft(number(row.droppedRate), 8)
            + padLeft(milliseconds(row.rtt), 8) + padLeft(count(row.exporterDrops), 12) + padLeft(number(row.heldPercent), 7)
            + padLeft(row.residentBytes.map { number($0 / 1_048_576) } ?? "-", 9)
    }

    /// Each zipper target's clients, one line each, under a header.
    func clientLines(
        _ list: [String], previous: [String: Result<[ScrapedSample], ScrapeFailure>],
        current: [String: Result<[ScrapedSample], ScrapeFailure>], seconds: Double
    ) -> [String] {
        var lines: [String] = []
        for target in list {
            guard let samples = try? current[target]?.get() else { continue }
            let rows = ClientRow.compute(previous: (try? previous[target]?.get()) ?? [], current: samples, seconds: seconds)
            guard !rows.isEmpty else { continue }
            lines.append("")
            lines.append("clients of \(target)")
            lines.append(Self.clientHeader)
            lines += rows.prefix(clients).map(Self.format)
            if rows.count > clients { lines.append("… and \(rows.count - clients) more") }
        }
        return lines
    }

    static let clientHeader = "zipper            type             name                  id                        rtt ms  lost/s  pace Mbit/s  datagram  unacked KiB"

    static func format(_ row: ClientRow) -> String {
        func field(_ text: String, _ width: Int) -> String { pad(String(terminalSafe(text).prefix(width - 1)), width) }
        return field(row.zipper, 18) + field(row.clientType, 17) + field(row.name, 22) + field(row.id, 24)
            + padLeft(fixed(row.rtt * 1000, decimals: 2), 8) + padLeft(row.lostRate.map { fixed($0, decimals: 1) } ?? "-", 8)
            + padLeft(fixed(row.pacingRate * 8 / 1_000_000, decimals: 1), 13) + padLeft(fixed(row.datagramSize, decimals: 0), 10)
            + padLeft(fixed(row.unacknowledged / 1024, decimals: 1), 13)
    }

    static func pad(_ text: String, _ width: Int) -> String { text + String(repeating: " ", count: max(0, width - text.count)) }
    static func padLeft(_ text: String, _ width: Int) -> String { String(repeating: " ", count: max(1, width - text.count)) + text }

    /// Why a target gave no samples, as its row says it.
    struct ScrapeFailure: Error, CustomStringConvertible {
        let description: String
    }

    /// A whole answer within this, or the target's row says why not: a
    /// target that trickles or never stops must not freeze the table.
    static let scrapeDeadline: Duration = .seconds(2)
    /// `/metrics` pages are kilobytes; anything this big is not one.
    static let maximumAnswerBytes = 16 << 20

    /// Each target's samples, or why there are none.
    func scrapeAll(_ list: [String]) async -> [String: Result<[ScrapedSample], ScrapeFailure>] {
        await withTaskGroup(of: (String, Result<[ScrapedSample], ScrapeFailure>).self) { group in
            for target in list {
                group.addTask { (target, await Self.scrape(target)) }
            }
            var result: [String: Result<[ScrapedSample], ScrapeFailure>] = [:]
            for await (target, samples) in group { result[target] = samples }
            return result
        }
    }

    /// `GET /metrics` over a plain socket (HTTP/1.0, so the server closes).
    static func scrape(_ target: String) async -> Result<[ScrapedSample], ScrapeFailure> {
        guard let (host, port) = try? YoMoMetrics.parseListen(target) else {
            return .failure(ScrapeFailure(description: "not HOST:PORT"))
        }
        return await httpGet(host: host, port: port, path: "/metrics").map(PrometheusTextParser.parse)
    }

    static func httpGet(host: String, port: Int, path: String) async -> Result<String, ScrapeFailure> {
        switch await plainHTTPGet(host: host, port: port, path: path, deadline: scrapeDeadline, maximumBytes: maximumAnswerBytes) {
        case .failure(let failure): .failure(ScrapeFailure(description: failure.description))
        case .success(let answer) where answer.status != 200: .failure(ScrapeFailure(description: "HTTP \(answer.status)"))
        case .success(let answer): .success(answer.body)
        }
    }
}
