import Foundation
import Testing
@testable import YoMoTracing

/// The OTLP exporters' libcurl-free path for plain http:// collectors.
@Suite("Plain HTTP/1.1 client")
struct PlainHTTPTests {
    @Test("collector URLs parse into host, port, target and Host header", arguments: [
        ("http://127.0.0.1:4318/v1/traces", "127.0.0.1", 4318, "/v1/traces", "127.0.0.1:4318"),
        ("http://collector/v1/logs", "collector", 80, "/v1/logs", "collector"),
        ("HTTP://Collector:9/", "Collector", 9, "/", "Collector:9"),
        ("http://[::1]:4318/v1/metrics?x=1#frag", "::1", 4318, "/v1/metrics?x=1", "[::1]:4318"),
        ("http://host:80", "host", 80, "/", "host:80"),
        ("http://host?q", "host", 80, "/?q", "host"),
    ] as [(String, String, Int, String, String)])
    func parse(url: String, host: String, port: Int, target: String, authority: String) throws {
        let endpoint = try #require(PlainHTTPClient.parse(url))
        #expect(endpoint == PlainHTTPClient.Endpoint(host: host, port: UInt16(port), target: target, authority: authority))
    }

    @Test("https, credentials in the URL, bad ports and a proxy in the environment leave it to libcurl")
    func notPlain() {
        for url in ["https://collector:4318/v1/traces", "http://user:pw@collector/", "http://host:99999/", "http://:80/", "http://[::1/", "ftp://x/"] {
            #expect(PlainHTTPClient.parse(url) == nil, "\(url)")
        }
        #expect(PlainHTTPClient(url: "http://c:1/", headers: [], environment: [:]) != nil)
        #expect(PlainHTTPClient(url: "http://c:1/", headers: [], environment: ["http_proxy": "http://proxy:3128"]) == nil)
        #expect(PlainHTTPClient(url: "http://c:1/", headers: [], environment: ["ALL_PROXY": "socks5://p"]) == nil)
    }

    static let responses: [(bytes: String, status: Int, body: String, keepAlive: Bool, retryAfter: String?)] = [
        ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "hello", true, nil),
        ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "", true, nil),
        ("HTTP/1.1 204 No Content\r\n\r\n", 204, "", true, nil),
        ("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 200, "ok", false, nil),
        ("HTTP/1.1 100 Continue\r\nRetry-After: 9\r\n\r\nHTTP/1.1 503 Busy\r\nretry-after:  120 \r\nContent-Length: 4\r\n\r\nbusy", 503, "busy", true, "120"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=v\r\nhello\r\n1\r\n!\r\n0\r\nTrailer: x\r\n\r\n", 200, "hello!", true, nil),
        ("HTTP/1.1 429 Too Many\nContent-Length: 3\n\nabc", 429, "abc", true, nil),
    ]

    @Test("responses parse the same however the bytes are split")
    func parser() {
        for response in Self.responses {
            let bytes = Array(response.bytes.utf8)
            for split in 0...bytes.count {
                var parser = ResponseParser(maxBody: 1024)
                #expect(parser.feed(bytes[..<split]) == .more)
                #expect(parser.feed(bytes[split...]) == .more)
                #expect(parser.isComplete, "\(response.bytes) split at \(split)")
                #expect(parser.status == response.status)
                #expect(String(decoding: parser.body, as: UTF8.self) == response.body)
                #expect(parser.keepAlive == response.keepAlive)
                #expect(parser.retryAfter == response.retryAfter)
            }
        }
    }

    @Test("what is left to send of a head and a body after any number of bytes went out")
    func unsentParts() {
        let head: [UInt8] = Array("POST / HTTP/1.1\r\n\r\n".utf8), body: [UInt8] = (0..<40).map { UInt8($0) }
        head.withUnsafeBytes { head in
            body.withUnsafeBytes { body in
                for offset in 0...(head.count + body.count) {
                    let (first, second) = PlainHTTPClient.unsent(head, body, after: offset)
                    #expect(Array(first) + Array(second) == Array((Array(head) + Array(body))[offset...]), "after \(offset)")
                    // The body is never split in two pieces, nor copied: the second part, when there is one, is all of it.
                    #expect(second.isEmpty || (second.baseAddress == body.baseAddress && second.count == body.count))
                }
            }
        }
    }

    @Test("a body without length ends with the connection; bad responses are errors; big bodies are cut")
    func parserEdges() {
        var untilClose = ResponseParser(maxBody: 1024)
        _ = untilClose.feed(Array("HTTP/1.0 200 OK\r\n\r\nsome bytes".utf8)[...])
        #expect(!untilClose.isComplete && !untilClose.keepAlive)
        let ended = untilClose.finishAtEndOfStream()
        #expect(ended && untilClose.isComplete)
        #expect(String(decoding: untilClose.body, as: UTF8.self) == "some bytes")
        var cut = ResponseParser(maxBody: 1024)
        _ = cut.feed(Array("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".utf8)[...])
        let cutEnded = cut.finishAtEndOfStream()
        #expect(!cutEnded, "a response cut short is not complete")
        for bad in ["SSH-2.0-OpenSSH\r\n", "HTTP/1.1 abc OK\r\n", "HTTP/1.1 200 OK\r\nno colon here\r\n",
                    "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"] {
            var parser = ResponseParser(maxBody: 1024)
            guard case .failed = parser.feed(Array(bad.utf8)[...]) else {
                Issue.record("accepted \(bad.debugDescription)")
                continue
            }
        }
        var big = ResponseParser(maxBody: 4)
        _ = big.feed(Array("HTTP/1.1 500 E\r\nContent-Length: 10\r\n\r\n0123456789".utf8)[...])
        #expect(big.isComplete && big.body == Array("0123".utf8))
    }

    @Test("against a real server: a stale kept-alive connection is redialled, 100-continue, chunked bodies, Retry-After, HTTP/1.0")
    func live() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("plain-http-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let portFile = directory.appendingPathComponent("port").path
        let log = directory.appendingPathComponent("log").path
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = ["python3", URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("http_quirks_server.py").path,
                            "--port-file", portFile]
        server.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        try server.run()
        defer { if server.isRunning { server.terminate() } }
        var port = 0
        for _ in 0..<500 where port == 0 {
            port = (try? String(contentsOfFile: portFile, encoding: .utf8)).flatMap { Int($0) } ?? 0
            if port == 0 { try await Task.sleep(for: .milliseconds(20)) }
        }
        try #require(port != 0, "the test server did not start")
        let client = try #require(PlainHTTPClient(url: "http://127.0.0.1:\(port)/v1/traces", headers: [("X-Test", "1")], environment: [:]))
        let deadline = { monotonicNanoseconds() + 5_000_000_000 }
        // Byte i is i mod 251 (the server checks): the body is sent from where
        // it lies behind the head, over as many sends as the socket takes.
        func pattern(_ count: Int) -> [UInt8] {
            let block = (0..<251).map { UInt8($0) }
            var bytes = [UInt8]()
            bytes.reserveCapacity(count)
            while bytes.count < count { bytes.append(contentsOf: block.prefix(count - bytes.count)) }
            return bytes
        }
        let payload = pattern(100_000)

        // Eight megabytes are more than loopback takes in one send (about 4 MB
        // while the server does not read): sent in pieces, resumed after each wait.
        let first = client.post(pattern(8_000_000), deadline: deadline()) { false }
        #expect(first.result.status == 200 && first.result.body == Array("ok".utf8) && !first.abandoned)
        // The server closed that connection after answering: the client finds out and redials.
        let second = client.post(payload, deadline: deadline()) { false }
        #expect(second.result.status == 200 && second.result.body == Array("abcde".utf8), "\(second.result)")
        let third = client.post(payload, deadline: deadline()) { false }
        #expect(third.result.status == 503 && third.result.retryAfter == "1" && third.result.body == Array("busy".utf8))
        let fourth = client.post([], deadline: deadline()) { false }
        #expect(fourth.result.status == 200 && fourth.result.body == Array("until close".utf8))
        server.waitUntilExit()
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        #expect(lines == [
            "connection=1 request=1 line=POST /v1/traces HTTP/1.1 body=8000000 pattern=ok",
            "connection=2 request=2 line=POST /v1/traces HTTP/1.1 body=100000 pattern=ok",
            "connection=2 request=3 line=POST /v1/traces HTTP/1.1 body=100000 pattern=ok",
            "connection=2 request=4 line=POST /v1/traces HTTP/1.1 body=0 pattern=ok",
        ])
        // Nobody listens now: refused, with curl's code for it, at once.
        let refused = client.post(payload, deadline: deadline()) { false }
        #expect(refused.result.status == 0 && refused.result.curlCode == 7, "\(refused.result)")
        // An abandon is seen within a poll.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        listen(listener, 4)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        let mute = try #require(PlainHTTPClient(url: "http://127.0.0.1:\(UInt16(bigEndian: address.sin_port))/", headers: [], environment: [:]))
        let abandonAt = monotonicNanoseconds() + 200_000_000
        let abandoned = mute.post(payload, deadline: deadline()) { monotonicNanoseconds() >= abandonAt }
        #expect(abandoned.abandoned && abandoned.result.status == 0)
        let timedOut = mute.post(payload, deadline: monotonicNanoseconds() + 100_000_000) { false }
        #expect(timedOut.result.curlCode == 28 && !timedOut.abandoned)
    }
}

extension PlainHTTPClient {
    /// The client posts borrowed bytes; the tests' payloads are arrays.
    fileprivate func post(
        _ payload: [UInt8], deadline: UInt64, abandon: () -> Bool
    ) -> (result: HTTPAttemptResult, abandoned: Bool) {
        payload.withUnsafeBytes { post($0, deadline: deadline, abandon: abandon) }
    }
}
