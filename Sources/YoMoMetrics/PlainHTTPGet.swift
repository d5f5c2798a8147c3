import Dispatch
import FoundationEssentials
import Glibc

/// A whole answer to a plain HTTP GET.
package struct PlainHTTPAnswer: Sendable {
    package var status: Int
    package var body: String
}

/// Why a plain HTTP GET has no whole answer, said as `yomo top`'s row says it.
package struct PlainHTTPFailure: Error, CustomStringConvertible, Sendable {
    package let description: String
}

/// `plainHTTPGet` for async callers (`yomo top`, the tests): its blocking
/// socket I/O runs on a Dispatch worker, not a thread of the cooperative pool.
package func plainHTTPGet(
    host: String, port: Int, path: String, accept: String? = nil, deadline: Duration, maximumBytes: Int
) async -> Result<PlainHTTPAnswer, PlainHTTPFailure> {
    await withCheckedContinuation { continuation in
        DispatchQueue.global().async {
            continuation.resume(
                returning: plainHTTPGet(host: host, port: port, path: path, accept: accept, deadline: deadline, maximumBytes: maximumBytes))
        }
    }
}

/// `GET path` over a blocking socket with HTTP/1.0, so the server closes at
/// the answer's end: what `yomo top` scrapes with, and the tests' client
/// (a Python process per request took 0.1–0.4 s each). Blocks the calling
/// thread: async callers take the overload above.
package func plainHTTPGet(
    host: String, port: Int, path: String, accept: String? = nil, deadline: Duration, maximumBytes: Int
) -> Result<PlainHTTPAnswer, PlainHTTPFailure> {
    let clock = ContinuousClock()
    let end = clock.now.advanced(by: deadline)
    let unreachable = Result<PlainHTTPAnswer, PlainHTTPFailure>.failure(PlainHTTPFailure(description: "unreachable"))
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var info: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(host == "0.0.0.0" ? "127.0.0.1" : host, String(port), &hints, &info) == 0, let first = info else { return unreachable }
    defer { freeaddrinfo(info) }
    let fd = socket(first.pointee.ai_family, first.pointee.ai_socktype, first.pointee.ai_protocol)
    guard fd >= 0 else { return unreachable }
    defer { close(fd) }
    // Bounds the connect and the send; the reads are bounded by the deadline below.
    var timeout = timeval(tv_sec: max(1, Int(deadline.components.seconds)), tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    guard connect(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0 else { return unreachable }
    let request = "GET \(path) HTTP/1.0\r\nHost: \(host)\r\n" + (accept.map { "Accept: \($0)\r\n" } ?? "") + "\r\n"
    let requestBytes = Array(request.utf8)
    var sent = 0
    while sent < requestBytes.count {
        let n = requestBytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard n > 0 else { return unreachable }
        sent += n
    }
    var data = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let left = clock.now.duration(to: end)
        guard left > .zero else {
            return .failure(PlainHTTPFailure(description: "no whole answer within \(deadline.components.seconds) s"))
        }
        var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
        guard poll(&ready, 1, milliseconds) >= 0 || errno == EINTR else { return unreachable }
        guard ready.revents != 0 else { continue }
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { break }
        guard data.count + n <= maximumBytes else {
            return .failure(PlainHTTPFailure(description: "answer over \(maximumBytes >> 20) MiB"))
        }
        data.append(contentsOf: buffer[0..<n])
    }
    let text = String(decoding: data, as: UTF8.self)
    guard text.hasPrefix("HTTP/1."), let bodyStart = text.firstRange(of: "\r\n\r\n") else {
        return .failure(PlainHTTPFailure(description: data.isEmpty ? "closed without an answer" : "not an HTTP answer"))
    }
    let status = text.split(separator: " ", maxSplits: 2).dropFirst().first.map(String.init) ?? ""
    guard status.count == 3, status.allSatisfy({ $0.isASCII && $0.isNumber }), let code = Int(status) else {
        return .failure(PlainHTTPFailure(description: "not an HTTP answer"))
    }
    return .success(PlainHTTPAnswer(status: code, body: String(text[bodyStart.upperBound...])))
}
