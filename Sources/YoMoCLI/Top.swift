import ArgumentParser
import Dispatch
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

    /// `GET /metrics` over a plain socket (HTTP/1.0, so the server closes), off the cooperative pool.
    static func scrape(_ target: String) async -> Result<[ScrapedSample], ScrapeFailure> {
        guard let (host, port) = try? YoMoMetrics.parseListen(target) else {
            return .failure(ScrapeFailure(description: "not HOST:PORT"))
        }
        return await withCheckedContinuation { continuation in
            // Blocking socket I/O: a Dispatch worker, not the cooperative pool.
            DispatchQueue.global().async {
                continuation.resume(returning: httpGet(host: host, port: port, path: "/metrics").map(PrometheusTextParser.parse))
            }
        }
    }

    static func httpGet(host: String, port: Int, path: String) -> Result<String, ScrapeFailure> {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: scrapeDeadline)
        let unreachable = Result<String, ScrapeFailure>.failure(ScrapeFailure(description: "unreachable"))
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var info: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host == "0.0.0.0" ? "127.0.0.1" : host, String(port), &hints, &info) == 0, let first = info else { return unreachable }
        defer { freeaddrinfo(info) }
        let fd = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
        guard fd >= 0 else { return unreachable }
        defer { close(fd) }
        // Bounds the connect and the send; the reads are bounded by the deadline below.
        var timeout = timeval(tv_sec: Int(scrapeDeadline.components.seconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else { return unreachable }
        let request = "GET \(path) HTTP/1.0\r\nHost: \(host)\r\n\r\n"
        guard request.withCString({ send(fd, $0, strlen($0), 0) }) > 0 else { return unreachable }
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let left = clock.now.duration(to: deadline)
            guard left > .zero else {
                return .failure(ScrapeFailure(description: "no whole answer within \(scrapeDeadline.components.seconds) s"))
            }
            var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let milliseconds = Int32(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            guard poll(&ready, 1, milliseconds) >= 0 || errno == EINTR else { return unreachable }
            guard ready.revents != 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            guard data.count + n <= maximumAnswerBytes else {
                return .failure(ScrapeFailure(description: "answer over \(maximumAnswerBytes >> 20) MiB"))
            }
            data.append(contentsOf: buffer[0..<n])
        }
        let text = String(decoding: data, as: UTF8.self)
        guard text.hasPrefix("HTTP/1."), let bodyStart = text.firstRange(of: "\r\n\r\n") else {
            return .failure(ScrapeFailure(description: data.isEmpty ? "closed without an answer" : "not an HTTP answer"))
        }
        let status = text.split(separator: " ", maxSplits: 2).dropFirst().first.map(String.init) ?? ""
        guard status.count == 3, status.allSatisfy(\.isASCII), status.allSatisfy(\.isNumber) else {
            return .failure(ScrapeFailure(description: "not an HTTP answer"))
        }
        guard status == "200" else { return .failure(ScrapeFailure(description: "HTTP \(status)")) }
        return .success(String(text[bodyStart.upperBound...]))
    }
}
