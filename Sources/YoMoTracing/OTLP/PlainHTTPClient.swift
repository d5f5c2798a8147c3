import CCurl
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// POSTs to a plain `http://` collector over one kept-alive HTTP/1.1
/// connection, without libcurl: loading libcurl brings OpenSSL, Kerberos, LDAP
/// and more into the process (about 5 MB of resident memory) for a request a
/// few lines of HTTP/1.1 can make. https:// endpoints, and any process with a
/// proxy configured, still go through libcurl (`OTLPHTTPTransport`).
///
/// Results carry curl's codes for the same failures, so the retry policy and
/// the messages are the same on both paths. Not thread-safe: the transport
/// serializes calls.
final class PlainHTTPClient {
    struct Endpoint: Equatable {
        var host: String
        var port: UInt16
        /// The request target: path and query.
        var target: String
        /// The Host header: the URL's authority.
        var authority: String
    }

    let endpoint: Endpoint
    private let requestHead: [UInt8]
    private var socket: Int32 = -1
    /// Bytes read past the end of the previous response (none expected; kept for correctness).
    private var pending: [UInt8] = []
    /// Where responses are read into: made at the first response, then kept
    /// (one post per batch; a fresh zeroed 16 KiB each time was for nothing).
    private var receiveBuffer: [UInt8] = []

    /// Responses larger than this are read but not kept (as the curl path does).
    static let maxBody = 64 * 1024

    /// Nil when `url` is not plain http:// or the environment names a proxy
    /// (curl honours those; the plain client does not).
    init?(url: String, headers: [(String, String)], environment: [String: String] = ProcessEnvironment.current) {
        for proxy in ["http_proxy", "all_proxy", "ALL_PROXY"] where !(environment[proxy] ?? "").isEmpty { return nil }
        guard let endpoint = Self.parse(url) else { return nil }
        self.endpoint = endpoint
        var head = "POST \(endpoint.target) HTTP/1.1\r\nHost: \(endpoint.authority)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        requestHead = Array(head.utf8)
    }

    deinit { closeConnection() }

    /// `http://host[:port][/path]`, host a name, an IPv4 address or `[IPv6]`; nil otherwise.
    static func parse(_ url: String) -> Endpoint? {
        guard url.lowercased().hasPrefix("http://") else { return nil }
        let rest = url.dropFirst("http://".count)
        let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        let authority = String(rest[..<authorityEnd])
        var target = String(rest[authorityEnd...])
        if let fragment = target.firstIndex(of: "#") { target = String(target[..<fragment]) }
        if target.isEmpty || target.hasPrefix("?") { target = "/" + target }
        guard !authority.isEmpty, !authority.contains("@") else { return nil }
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return nil }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = Substring(authority)
        }
        var port: UInt16 = 80
        if let portText, !portText.isEmpty {
            guard let value = UInt16(portText) else { return nil }
            port = value
        }
        guard !host.isEmpty else { return nil }
        return Endpoint(host: String(host), port: port, target: target, authority: authority)
    }

    /// One POST of `payload`. Gives up at `deadline` (monotonic nanoseconds;
    /// curl's timeout code) or, polling every 50 ms, once `abandon()` says so
    /// (curl's "aborted" code; the caller names it).
    func post(
        _ payload: UnsafeRawBufferPointer, deadline: UInt64, abandon: () -> Bool
    ) -> (result: HTTPAttemptResult, abandoned: Bool) {
        // The head alone: the body (tens of kilobytes per batch) goes out from
        // where it lies, after the head in the same `sendmsg`, not copied behind it.
        var head = requestHead
        head.append(contentsOf: "Content-Length: \(payload.count)\r\n\r\n".utf8)
        // A kept-alive connection the collector closed meanwhile fails at once
        // (or answers nothing): then once more on a fresh one.
        for attempt in 0..<2 {
            let reused = socket >= 0
            if !reused, let failure = connect(deadline: deadline, abandon: abandon) { return failure }
            let outcome = exchange(head, payload, deadline: deadline, abandon: abandon)
            switch outcome {
            case .response(let result, let keepAlive):
                if !keepAlive { closeConnection() }
                return (result, false)
            case .staleConnection where reused && attempt == 0:
                closeConnection()
                continue
            case .staleConnection:
                closeConnection()
                return (failure(CURLE_RECV_ERROR, "Connection closed by \(endpoint.authority) before a response"), false)
            case .failed(let result, let abandoned):
                closeConnection()
                return (result, abandoned)
            }
        }
        return (failure(CURLE_RECV_ERROR, "no response from \(endpoint.authority)"), false)
    }

    func closeConnection() {
        if socket >= 0 { close(socket) }
        socket = -1
        pending.removeAll()
    }

    // MARK: Connecting

    private func connect(deadline: UInt64, abandon: () -> Bool) -> (result: HTTPAttemptResult, abandoned: Bool)? {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(endpoint.host, String(endpoint.port), &hints, &list)
        guard status == 0, let first = list else {
            return (failure(CURLE_COULDNT_RESOLVE_HOST, "Could not resolve host: \(endpoint.host)"), false)
        }
        defer { freeaddrinfo(list) }
        var lastError: Int32 = ECONNREFUSED
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let address = candidate {
            candidate = address.pointee.ai_next
            let descriptor = Glibc.socket(address.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard descriptor >= 0 else { lastError = errno; continue }
            if Glibc.connect(descriptor, address.pointee.ai_addr, address.pointee.ai_addrlen) != 0 && errno != EINPROGRESS {
                lastError = errno
                close(descriptor)
                continue
            }
            switch wait(descriptor, for: Int16(POLLOUT), deadline: deadline, abandon: abandon) {
            case .ready:
                var error: Int32 = 0
                var length = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &error, &length)
                guard error == 0 else {
                    lastError = error
                    close(descriptor)
                    continue
                }
                var on: Int32 = 1
                // Small request heads go out with their bodies, not 40 ms later.
                setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
                socket = descriptor
                return nil
            case let stopped:
                close(descriptor)
                return gaveUp(stopped, "Connection timed out to \(endpoint.authority)")
            }
        }
        let reason = String(cString: strerror(lastError))
        return (failure(CURLE_COULDNT_CONNECT, "Failed to connect to \(endpoint.host) port \(endpoint.port): \(reason)"), false)
    }

    // MARK: One request and its response

    private enum Outcome {
        case response(HTTPAttemptResult, keepAlive: Bool)
        /// Nothing at all came back (closed or reset before a byte of response).
        case staleConnection
        case failed(HTTPAttemptResult, abandoned: Bool)
    }

    private func exchange(_ head: [UInt8], _ body: UnsafeRawBufferPointer, deadline: UInt64, abandon: () -> Bool) -> Outcome {
        var sent = 0
        while sent < head.count + body.count {
            let count = head.withUnsafeBytes { head in Self.send(Self.unsent(head, body, after: sent), on: socket) }
            if count > 0 {
                sent += count
                continue
            }
            if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                let waited = wait(socket, for: Int16(POLLOUT), deadline: deadline, abandon: abandon)
                guard waited == .ready else {
                    let (result, abandoned) = gaveUp(waited, "Operation timed out sending to \(endpoint.authority)")
                    return .failed(result, abandoned: abandoned)
                }
                continue
            }
            // Reset or broken pipe: on a kept-alive connection, the collector closed it.
            if sent == 0 || errno == EPIPE || errno == ECONNRESET { return .staleConnection }
            return .failed(failure(CURLE_SEND_ERROR, "Send failure: \(String(cString: strerror(errno)))"), abandoned: false)
        }
        var parser = ResponseParser(maxBody: Self.maxBody)
        if receiveBuffer.isEmpty { receiveBuffer = [UInt8](repeating: 0, count: 16 * 1024) }
        var receivedAny = false
        while true {
            if !pending.isEmpty {
                let bytes = pending
                pending.removeAll()
                if case .failed(let message) = parser.feed(bytes[...]) {
                    return .failed(failure(CURLE_WEIRD_SERVER_REPLY, message), abandoned: false)
                }
            }
            if parser.isComplete { break }
            let count = receiveBuffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, 0) }
            if count > 0 {
                receivedAny = true
                if case .failed(let message) = parser.feed(receiveBuffer[0..<count]) {
                    return .failed(failure(CURLE_WEIRD_SERVER_REPLY, message), abandoned: false)
                }
                if parser.isComplete { break }
                continue
            }
            if count == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                let reset = count < 0
                if !receivedAny { return .staleConnection }
                // A body that runs to the end of the connection ends here.
                if count == 0, parser.finishAtEndOfStream() { break }
                return .failed(failure(CURLE_RECV_ERROR, reset ? "Recv failure: Connection reset by peer" : "Connection closed mid-response"), abandoned: false)
            }
            let waited = wait(socket, for: Int16(POLLIN), deadline: deadline, abandon: abandon)
            guard waited == .ready else {
                let (result, abandoned) = gaveUp(waited, "Operation timed out waiting for \(endpoint.authority)")
                return .failed(result, abandoned: abandoned)
            }
        }
        pending = parser.leftover
        let result = HTTPAttemptResult(status: parser.status, curlCode: CURLE_OK.rawValue, curlMessage: "", body: parser.body, retryAfter: parser.retryAfter)
        return .response(result, keepAlive: parser.keepAlive)
    }

    /// What is left to send of `head` followed by `body` once `offset` bytes of
    /// the two went out: the rest of the head and the whole body, or the rest
    /// of the body (and an empty second part).
    static func unsent(
        _ head: UnsafeRawBufferPointer, _ body: UnsafeRawBufferPointer, after offset: Int
    ) -> (UnsafeRawBufferPointer, UnsafeRawBufferPointer) {
        if offset < head.count { return (UnsafeRawBufferPointer(rebasing: head[offset...]), body) }
        return (UnsafeRawBufferPointer(rebasing: body[(offset - head.count)...]), UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// One `sendmsg` of both parts (an empty second one is left out); what
    /// `send` returns.
    private static func send(_ parts: (UnsafeRawBufferPointer, UnsafeRawBufferPointer), on socket: Int32) -> Int {
        var vectors = (
            iovec(iov_base: UnsafeMutableRawPointer(mutating: parts.0.baseAddress), iov_len: parts.0.count),
            iovec(iov_base: UnsafeMutableRawPointer(mutating: parts.1.baseAddress), iov_len: parts.1.count)
        )
        return withUnsafeMutableBytes(of: &vectors) { vectors in
            var message = msghdr()
            message.msg_iov = vectors.baseAddress!.assumingMemoryBound(to: iovec.self)
            message.msg_iovlen = numericCast(parts.1.isEmpty ? 1 : 2)
            return sendmsg(socket, &message, Int32(MSG_NOSIGNAL))
        }
    }

    private enum Wait { case ready, timedOut, abandoned }

    /// A wait that did not end ready: curl's timeout, or an abandon.
    private func gaveUp(_ wait: Wait, _ timeoutMessage: String) -> (result: HTTPAttemptResult, abandoned: Bool) {
        wait == .abandoned
            ? (failure(CURLE_ABORTED_BY_CALLBACK, "abandoned"), true)
            : (failure(CURLE_OPERATION_TIMEDOUT, timeoutMessage), false)
    }

    /// Polls in slices of at most 50 ms, so that an abandon is seen soon.
    private func wait(_ descriptor: Int32, for events: Int16, deadline: UInt64, abandon: () -> Bool) -> Wait {
        while true {
            if abandon() { return .abandoned }
            let now = monotonicNanoseconds()
            guard now < deadline else { return .timedOut }
            var entry = pollfd(fd: descriptor, events: events, revents: 0)
            let slice = Int32(min((deadline - now) / 1_000_000 + 1, 50))
            let ready = poll(&entry, 1, slice)
            if ready > 0 { return .ready }
        }
    }

    private func failure(_ code: CURLcode, _ message: String) -> HTTPAttemptResult {
        HTTPAttemptResult(status: 0, curlCode: code.rawValue, curlMessage: message, body: [], retryAfter: nil)
    }
}

/// An HTTP/1.1 response, fed in pieces: status line, headers, then a body
/// delimited by Content-Length, chunked encoding or the end of the connection.
struct ResponseParser {
    enum Feed: Equatable { case more, failed(String) }

    private enum State { case head, body(remaining: Int), chunkSize, chunkData(remaining: Int), chunkDataEnd, trailers, untilClose, complete }

    let maxBody: Int
    private(set) var status = 0
    private(set) var body: [UInt8] = []
    private(set) var retryAfter: String?
    private(set) var keepAlive = true
    /// Bytes after the end of this response.
    private(set) var leftover: [UInt8] = []
    private var state = State.head
    private var line: [UInt8] = []
    private var sawStatusLine = false

    init(maxBody: Int) { self.maxBody = maxBody }

    var isComplete: Bool { if case .complete = state { true } else { false } }

    /// A body without length ends with the connection; anything else cut short is an error.
    mutating func finishAtEndOfStream() -> Bool {
        guard case .untilClose = state else { return false }
        state = .complete
        return true
    }

    mutating func feed(_ bytes: ArraySlice<UInt8>) -> Feed {
        var index = bytes.startIndex
        while index < bytes.endIndex {
            switch state {
            case .complete:
                leftover.append(contentsOf: bytes[index...])
                return .more
            case .head, .chunkSize, .chunkDataEnd, .trailers:
                let byte = bytes[index]
                index += 1
                guard byte == UInt8(ascii: "\n") else {
                    guard line.count < 16 * 1024 else { return .failed("response line over 16 KiB") }
                    line.append(byte)
                    continue
                }
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                let text = String(decoding: line, as: UTF8.self)
                line.removeAll(keepingCapacity: true)
                if case .failed(let message) = endOfLine(text) { return .failed(message) }
            case .body(let remaining):
                let take = min(remaining, bytes.endIndex - index)
                keep(bytes[index..<index + take])
                index += take
                state = remaining - take == 0 ? .complete : .body(remaining: remaining - take)
            case .chunkData(let remaining):
                let take = min(remaining, bytes.endIndex - index)
                keep(bytes[index..<index + take])
                index += take
                state = remaining - take == 0 ? .chunkDataEnd : .chunkData(remaining: remaining - take)
            case .untilClose:
                keep(bytes[index...])
                index = bytes.endIndex
            }
        }
        return .more
    }

    private mutating func keep(_ bytes: ArraySlice<UInt8>) {
        if body.count < maxBody { body.append(contentsOf: bytes.prefix(maxBody - body.count)) }
    }

    private var contentLength: Int?
    private var chunked = false

    private mutating func endOfLine(_ text: String) -> Feed {
        switch state {
        case .head where !sawStatusLine:
            // "HTTP/1.1 200 OK"
            let parts = text.split(separator: " ", maxSplits: 2)
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]), (100...999).contains(code) else {
                return .failed("not an HTTP/1.x status line: \(text.prefix(80))")
            }
            status = code
            keepAlive = parts[0] != "HTTP/1.0"
            sawStatusLine = true
        case .head where text.isEmpty:
            // Interim responses (100 Continue) are followed by the real one.
            if (100..<200).contains(status) {
                sawStatusLine = false
                retryAfter = nil
                return .more
            }
            if status == 204 || status == 304 {
                state = .complete
            } else if chunked {
                state = .chunkSize
            } else if let contentLength {
                state = contentLength == 0 ? .complete : .body(remaining: contentLength)
            } else {
                state = .untilClose
                keepAlive = false
            }
        case .head:
            guard let colon = text.firstIndex(of: ":") else { return .failed("malformed header line") }
            let name = text[..<colon].lowercased()
            let value = text[text.index(after: colon)...].trimmingSpaces()
            switch name {
            case "content-length":
                guard let length = Int(value), length >= 0 else { return .failed("bad Content-Length: \(value.prefix(40))") }
                contentLength = length
            case "transfer-encoding": chunked = value.lowercased().hasSuffix("chunked")
            case "connection":
                let tokens = value.lowercased()
                if tokens.contains("close") { keepAlive = false } else if tokens.contains("keep-alive") { keepAlive = true }
            case "retry-after": retryAfter = value
            default: break
            }
        case .chunkSize:
            let sizeText = text.split(separator: ";", maxSplits: 1).first.map { $0.trimmingSpaces() } ?? ""
            guard let size = Int(sizeText, radix: 16), size >= 0 else { return .failed("bad chunk size: \(sizeText.prefix(20))") }
            state = size == 0 ? .trailers : .chunkData(remaining: size)
        case .chunkDataEnd:
            guard text.isEmpty else { return .failed("chunk not followed by CRLF") }
            state = .chunkSize
        case .trailers:
            if text.isEmpty { state = .complete }
        default:
            break
        }
        return .more
    }
}
