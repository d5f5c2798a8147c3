import ArgumentParser
import Dispatch
import FoundationEssentials
import Glibc
import YoMoMetrics
import YoMoTraceView

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

    func validate() throws {
        guard !targets.isEmpty else { throw ValidationError("--targets needs at least one HOST:PORT") }
        guard interval > 0 else { throw ValidationError("--interval must be positive") }
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
                guard let samples = current[target] else {
                    lines.append(Self.pad("-", 23) + " " + Self.pad(target, 21) + "  unreachable")
                    continue
                }
                let row = PipelineRow.compute(target: target, previous: previous[target] ?? [], current: samples, seconds: seconds)
                lines.append(Self.format(row))
            }
            print(lines.joined(separator: "\n"))
            fflush(nil)  // every stream: `stdout` is a global Swift 6 rejects
            if once { return }
            previous = current
            previousAt = now
        }
    }

    static let header = "component               target                  in/s     out/s   err%    p50 ms    p99 ms  conns  reconn  noroute/s  drop/s  rtt ms  span drops"

    static func format(_ row: PipelineRow) -> String {
        func milliseconds(_ value: Double?) -> String { value.map { fixed($0 * 1000, decimals: 2) } ?? "-" }
        func number(_ value: Double) -> String { fixed(value, decimals: 1) }
        return pad(String(row.service.prefix(23)), 23) + " " + pad(String(row.target.prefix(21)), 21)
            + padLeft(number(row.inRate), 8) + padLeft(number(row.outRate), 10) + padLeft(number(row.errorPercent), 7)
            + padLeft(milliseconds(row.p50), 10) + padLeft(milliseconds(row.p99), 10)
            + padLeft(row.connections.map { String(Int($0)) } ?? "-", 7) + padLeft(String(Int(row.reconnects)), 8)
            + padLeft(number(row.noRouteRate), 11) + padLeft(number(row.droppedRate), 8)
            + padLeft(milliseconds(row.rtt), 8) + padLeft(String(Int(row.exporterDrops)), 12)
    }

    static func pad(_ text: String, _ width: Int) -> String { text + String(repeating: " ", count: max(0, width - text.count)) }
    static func padLeft(_ text: String, _ width: Int) -> String { String(repeating: " ", count: max(1, width - text.count)) + text }

    /// Each target's samples; a target that does not answer is missing.
    func scrapeAll(_ list: [String]) async -> [String: [ScrapedSample]] {
        await withTaskGroup(of: (String, [ScrapedSample]?).self) { group in
            for target in list {
                group.addTask { (target, await Self.scrape(target)) }
            }
            var result: [String: [ScrapedSample]] = [:]
            for await (target, samples) in group { if let samples { result[target] = samples } }
            return result
        }
    }

    /// `GET /metrics` over a plain socket (HTTP/1.0, so the server closes), off the cooperative pool.
    static func scrape(_ target: String) async -> [ScrapedSample]? {
        guard let (host, port) = try? YoMoMetrics.parseListen(target) else { return nil }
        return await withCheckedContinuation { continuation in
            // Blocking socket I/O: a Dispatch worker, not the cooperative pool.
            DispatchQueue.global().async {
                continuation.resume(returning: httpGet(host: host, port: port, path: "/metrics").map(PrometheusTextParser.parse))
            }
        }
    }

    static func httpGet(host: String, port: Int, path: String) -> String? {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var info: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host == "0.0.0.0" ? "127.0.0.1" : host, String(port), &hints, &info) == 0, let first = info else { return nil }
        defer { freeaddrinfo(info) }
        let fd = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else { return nil }
        let request = "GET \(path) HTTP/1.0\r\nHost: \(host)\r\n\r\n"
        guard request.withCString({ send(fd, $0, strlen($0), 0) }) > 0 else { return nil }
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            data.append(contentsOf: buffer[0..<n])
        }
        let text = String(decoding: data, as: UTF8.self)
        guard text.hasPrefix("HTTP/1.") , text.split(separator: " ", maxSplits: 2).dropFirst().first == "200",
              let bodyStart = text.firstRange(of: "\r\n\r\n") else { return nil }
        return String(text[bodyStart.upperBound...])
    }
}
