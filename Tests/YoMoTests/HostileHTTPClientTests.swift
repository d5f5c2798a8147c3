import Foundation
import Testing
import YoMoMetrics
import YoMoTraceView

/// The metrics endpoint is plain HTTP on a port anyone who reaches it can open,
/// in the same process as a zipper, and `yomo trace-view`'s receiver takes
/// spans from whoever reaches its port: clients that hold connections without
/// finishing a request must not keep them, nor take more than the limit, and
/// the receiver bounds what a request may make it hold.
/// Driven by Resources/hostile_http.py, plain sockets from another process.
@Suite("HTTP ends (metrics endpoint, trace-view, yomo top) against hostile peers", .serialized)
struct HostileHTTPClientTests {
    /// The two servers that share the request timeout and the connection cap.
    enum GuardedServer: String, CaseIterable, Sendable {
        case metricsEndpoint, traceViewReceiver

        /// Its port, what it answers `GET /healthz`, and how to close it.
        func start(
            requestTimeout: Duration, maximumConnections: Int = 64
        ) async throws -> (port: Int, healthz: Int, close: @Sendable () async -> Void) {
            switch self {
            case .metricsEndpoint:
                let limits = MetricsEndpoint.Limits(requestTimeout: requestTimeout, maximumConnections: maximumConnections)
                let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: .noop, limits: limits)
                return (endpoint.port, 200, { await endpoint.close() })
            case .traceViewReceiver:
                let receiver = try await OTLPHTTPReceiver.start(
                    host: "127.0.0.1", port: 0, requestTimeout: requestTimeout, maximumConnections: maximumConnections,
                    onSpans: { _ in }, onError: { _ in })
                return (receiver.port, 405, { await receiver.close() })  // it takes POSTs only
            }
        }
    }

    @Test("a request not finished within the request timeout, or an idle keep-alive connection, is closed; the server keeps answering",
          arguments: GuardedServer.allCases)
    func requestTimeout(_ server: GuardedServer) async throws {
        let endpoint = try await server.start(requestTimeout: .milliseconds(300))
        let slow = try await runResourceScript("hostile_http.py", ["slow", "\(endpoint.port)", "3", "10"])
        #expect(slow.count == 3)
        for line in slow {
            #expect(line.hasPrefix("CLOSED"), "\(line)")
            // Never before its time (a loaded machine may close it later).
            #expect((secondsAfter(line) ?? 0) >= 0.25, "\(line)")
        }
        let idle = try await runResourceScript("hostile_http.py", ["idle", "\(endpoint.port)", "2", "10"])
        #expect(idle.count == 2)
        for line in idle {
            #expect(line.hasPrefix("ANSWERED status=\(endpoint.healthz) CLOSED"), "\(line)")
            #expect((secondsAfter(line) ?? 0) >= 0.25, "\(line)")
        }
        #expect(await httpGet("http://127.0.0.1:\(endpoint.port)/healthz")?.status == endpoint.healthz)
        await endpoint.close()
    }

    @Test("bytes that are not HTTP get a 400 and the connection closes; the endpoint keeps answering")
    func malformedRequests() async throws {
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, provider: .noop)
        let lines = try await runResourceScript("hostile_http.py", ["garbage", "\(endpoint.port)", "2", "10"])
        #expect(lines.count == 2)
        // Closed right after the answer, well before the 10 s request timeout.
        for line in lines {
            #expect(line.hasPrefix("ANSWERED status=400 CLOSED"), "\(line)")
            #expect((secondsAfter(line) ?? 99) < 5, "\(line)")
        }
        #expect(await httpGet("http://127.0.0.1:\(endpoint.port)/healthz")?.status == 200)
        await endpoint.close()
    }

    @Test("trace-view's receiver: a body over its limit gets a 413 and the connection closes, bytes that are not HTTP a 400; it keeps receiving")
    func traceViewReceiver() async throws {
        let errors = Inbox<String>()
        let receiver = try await OTLPHTTPReceiver.start(
            host: "127.0.0.1", port: 0, maximumBodySize: 1 << 20, onSpans: { _ in }, onError: { errors.append($0) })
        let big = try await runResourceScript("hostile_http.py", ["big", "\(receiver.port)", "4", "10"])
        #expect(big.count == 1 && big[0].hasPrefix("ANSWERED status=413 CLOSED"), "\(big)")
        #expect(errors.items == ["refused a request body over 1048576 bytes"])
        let garbage = try await runResourceScript("hostile_http.py", ["garbage", "\(receiver.port)", "2", "10"])
        for line in garbage {
            #expect(line.hasPrefix("ANSWERED status=400 CLOSED"), "\(line)")
            #expect((secondsAfter(line) ?? 99) < 5, "\(line)")
        }
        // A body within the limit is still received (empty: no spans, answered 200).
        let fine = try await runResourceScript("hostile_http.py", ["big", "\(receiver.port)", "0", "1"])
        #expect(fine.first?.hasPrefix("ANSWERED status=200") == true, "\(fine)")
        await receiver.close()
    }

    @Test("yomo trace-view draws spans with hostile times, ids and parents, each once, refuses values nested past its limit, and keeps receiving")
    func traceViewHostileSpans() async throws {
        let port = try await freeTCPPort()
        let (process, printed) = try startYomo(["trace-view", "--listen", "127.0.0.1:\(port)", "--quiet-ms", "200", "--max-traces", "4",
                                                "--seconds", "120", "--no-colour"])
        defer { if process.isRunning { process.terminate() } }
        let depth = 50_000
        let posted = try await runResourceScript("hostile_otlp.py", ["\(port)", "\(depth)", "20"])
        // The second nests values 5,000 deep: refused before protobuf-c recurses through it.
        #expect(posted.prefix(3) == ["ANSWERED status=200", "ANSWERED status=400", "ANSWERED status=200"], "\(posted)")
        // It exits by itself after the fourth trace.
        await waitForExit(process)
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)

        // Each trace: its header, then a row per span, then a blank line.
        let text = await printed.value
        var traces: [String: (header: String, rows: [String])] = [:]
        var current: String?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            if line.hasPrefix("trace ") {
                current = String(line.split(separator: " ")[1])
                traces[current!] = (line, [])
            } else if line.isEmpty {
                current = nil
            } else if let current {
                traces[current]?.rows.append(line)
            }
        }
        let expected = posted.filter { $0.hasPrefix("TRACE ") }.map { $0.split(separator: " ").map(String.init) }
        try #require(expected.count == 4, "\(posted)")
        for fields in expected {
            let (name, id, count) = (fields[1], fields[2], Int(fields[3]) ?? -1)
            let trace = try #require(traces[id], "trace \(name) printed: \(text.prefix(2_000))")
            #expect(trace.header.hasPrefix("trace \(id)  \(count) span"), "\(name): \(trace.header)")
            #expect(trace.rows.count == count, "\(name): a row per span")
        }
        // The graph's odd spans, and the chain's head, each on one row of their own.
        let graph = try #require(traces[expected[2][2]]).rows
        for name in ["link-0", "own-parent", "cycle-a", "cycle-b", "same-id"] {
            #expect(graph.filter { $0.contains(" \(name) ") || $0.contains("─ \(name) ") }.count == 1, "\(name)")
        }
        // The deepest rows are clipped to the tree's column, not indented a step per level.
        #expect(graph.allSatisfy { $0.count < 200 })
    }

    @Test("yomo top against hostile endpoints: odd values and escapes shown literally, a trickle or a flood bounded, each row says why")
    func topAgainstHostileEndpoints() async throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Resources/hostile_metrics.py")
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["python3", script.path, "60"]
        let announced = Pipe()
        server.standardOutput = announced
        try server.run()
        defer { server.terminate() }
        let ports = await withCheckedContinuation { (continuation: CheckedContinuation<[String: String], Never>) in
            Thread.detachNewThread {
                var line = [UInt8]()
                while let byte = announced.fileHandleForReading.readData(ofLength: 1).first, byte != 10 { line.append(byte) }
                let fields = String(decoding: line, as: UTF8.self).split(separator: " ").dropFirst().map { $0.split(separator: "=") }
                continuation.resume(returning: Dictionary(uniqueKeysWithValues: fields.map { (String($0[0]), String($0[1])) }))
            }
        }
        let modes = ["odd", "trickle", "endless", "status", "garbage"]
        try #require(Set(ports.keys) == Set(modes), "\(ports)")

        let (process, output) = try startYomo(["top", "--once", "--interval", "0.2", "--clients", "10", "--targets",
                                               modes.map { "127.0.0.1:\(ports[$0]!)" }.joined(separator: ",")])
        let text = await output.value
        await waitForExit(process)
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
        #expect(!text.contains("\u{1B}"), "no escape from a target reaches the terminal")
        func row(_ mode: String) -> String { text.split(separator: "\n").map(String.init).first { $0.contains(":\(ports[mode]!)") } ?? "" }
        #expect(row("odd").hasPrefix("evil\\x1b[2J "), "\(row("odd"))")
        #expect(row("trickle").hasSuffix("no whole answer within 2 s"), "\(row("trickle"))")
        #expect(row("endless").hasSuffix("answer over 16 MiB"), "\(row("endless"))")
        #expect(row("status").hasSuffix("HTTP 503"), "\(row("status"))")
        #expect(row("garbage").hasSuffix("not an HTTP answer"), "\(row("garbage"))")
        // --clients: the odd page's three clients, names escaped, in order
        // (an infinite backlog first; NaN as the smallest value, not a broken sort).
        let lines = text.split(separator: "\n").map(String.init)
        let header = try #require(lines.firstIndex(of: "clients of 127.0.0.1:\(ports["odd"]!)"), "\(text)")
        let clients = lines.dropFirst(header + 2).prefix(3).map { $0.split(separator: " ").map(String.init) }
        #expect(clients.map { $0.first ?? "" } == ["c\\x1b]0;pwned\\x07", "d", "e"], "\(text)")
        #expect(clients.dropFirst().first?.dropFirst().first == "b\\x1b[2J", "\(text)")
    }

    @Test("connections past the limit are closed as accepted; one freed lets the next in", arguments: GuardedServer.allCases)
    func connectionLimit(_ server: GuardedServer) async throws {
        // A request timeout far above the test's run: only the limit closes anything.
        let endpoint = try await server.start(requestTimeout: .seconds(60), maximumConnections: 3)
        let lines = try await runResourceScript("hostile_http.py", ["cap", "\(endpoint.port)", "3", "10"])
        #expect(lines == ["EXTRA CLOSED unanswered", "AFTER-RELEASE ANSWERED status=\(endpoint.healthz)"], "\(lines)")
        await endpoint.close()
    }
}
