import CCurl
package import Logging
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

private let curlGlobalInit: CURLcode = curl_global_init(Int(CURL_GLOBAL_ALL))

/// What one HTTP attempt produced.
struct HTTPAttemptResult: Sendable {
    /// 0 when no response arrived (see `curlCode`).
    var status: Int
    var curlCode: UInt32
    var curlMessage: String
    var body: [UInt8]
    var retryAfter: String?
}

/// The retry policy of OTLP/HTTP (https://opentelemetry.io/docs/specs/otlp/#retryable-response-codes
/// and #failures-1): retry 429, 502, 503, 504 and connection failures, waiting
/// for `Retry-After` when the server sends it, else exponential backoff with
/// jitter; never beyond the export's deadline. Pure, so tests need no sockets.
struct OTLPRetryPolicy: Sendable {
    var initialBackoff: Duration = .milliseconds(500)
    var maxBackoff: Duration = .seconds(5)

    static let retryableStatuses: Set<Int> = [429, 502, 503, 504]

    enum Decision: Equatable {
        case success
        /// Not worth retrying (e.g. 400): report and drop the batch.
        case fail
        case retry(after: Duration)
    }

    /// The clock and the jitter are read only for a retry: a random draw is a
    /// `getrandom` system call, which a successful export need not make.
    ///
    /// - Parameters:
    ///   - attempt: 0 for the first attempt.
    ///   - nowSeconds: wall clock (for HTTP-date `Retry-After`).
    ///   - random: jitter source in 0..<1.
    func decide(
        _ result: HTTPAttemptResult, attempt: Int, nowSeconds: @autoclosure () -> Int64, random: @autoclosure () -> Double
    ) -> Decision {
        if result.status >= 200 && result.status < 300 { return .success }
        let retryable: Bool
        if result.status == 0 && Self.isTLSFailure(result) {
            // A certificate that does not verify (or a client certificate the
            // collector refuses) fails the same way on every attempt.
            retryable = false
        } else if result.status == 0 {
            // A handshake cut off by the network (not refused by TLS) is a
            // connection failure, e.g. a collector restarting.
            retryable = Self.isConnectionFailure(result.curlCode) || result.curlCode == CURLE_SSL_CONNECT_ERROR.rawValue
        } else {
            retryable = Self.retryableStatuses.contains(result.status)
        }
        guard retryable else { return .fail }
        if let header = result.retryAfter, let delay = Self.parseRetryAfter(header, nowSeconds: nowSeconds()) {
            return .retry(after: delay)
        }
        let exponent = min(attempt, 16)
        let base = min(initialBackoff * (1 << exponent), maxBackoff)
        // Jitter in [50%, 100%] of the base keeps retries of many clients apart.
        return .retry(after: base * (0.5 + 0.5 * random()))
    }

    static func isConnectionFailure(_ code: UInt32) -> Bool {
        switch CURLcode(rawValue: code) {
        case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY, CURLE_COULDNT_CONNECT,
             CURLE_OPERATION_TIMEDOUT, CURLE_SEND_ERROR, CURLE_RECV_ERROR, CURLE_GOT_NOTHING,
             CURLE_PARTIAL_FILE:
            true
        default:
            false
        }
    }

    /// The TLS errors of libcurl (OpenSSL backend). Under TLS 1.3 a collector
    /// refuses a missing or untrusted client certificate after the handshake,
    /// so curl reports it as a receive (or send) error carrying the TLS alert.
    static func isTLSFailure(_ result: HTTPAttemptResult) -> Bool {
        switch CURLcode(rawValue: result.curlCode) {
        case CURLE_SSL_CONNECT_ERROR:
            !(result.curlMessage.contains("reset by peer") || result.curlMessage.contains("SSL_ERROR_SYSCALL"))
        case CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER, CURLE_PEER_FAILED_VERIFICATION,
             CURLE_SSL_CACERT_BADFILE, CURLE_SSL_ISSUER_ERROR, CURLE_SSL_ENGINE_NOTFOUND,
             CURLE_SSL_ENGINE_SETFAILED, CURLE_SSL_CRL_BADFILE, CURLE_SSL_PINNEDPUBKEYNOTMATCH,
             CURLE_SSL_INVALIDCERTSTATUS, CURLE_SSL_CLIENTCERT:
            true
        case CURLE_RECV_ERROR, CURLE_SEND_ERROR:
            result.curlMessage.lowercased().contains(" alert ")
        default:
            false
        }
    }

    /// `Retry-After` is either delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
    static func parseRetryAfter(_ value: String, nowSeconds: Int64) -> Duration? {
        let trimmed = value.trimmingSpaces()
        if let seconds = Int64(trimmed) {
            return seconds >= 0 ? .seconds(seconds) : nil
        }
        guard let date = parseHTTPDate(trimmed) else { return nil }
        return .seconds(max(date - nowSeconds, 0))
    }

    /// Parses IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`, to Unix seconds.
    static func parseHTTPDate(_ value: String) -> Int64? {
        let parts = value.split(separator: " ")
        guard parts.count == 6, parts[5] == "GMT",
              let day = Int64(parts[1]), let year = Int64(parts[3]) else { return nil }
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        guard let monthIndex = months.firstIndex(of: String(parts[2])) else { return nil }
        let time = parts[4].split(separator: ":")
        guard time.count == 3, let hour = Int64(time[0]), let minute = Int64(time[1]), let second = Int64(time[2]),
              (1...31).contains(day), (0...23).contains(hour), (0...59).contains(minute), (0...60).contains(second)
        else { return nil }
        // Days from civil (proleptic Gregorian), after H. Hinnant's algorithm.
        let month = Int64(monthIndex + 1)
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        return days * 86_400 + hour * 3_600 + minute * 60 + second
    }
}

/// Collects a response's body and `Retry-After` header from curl callbacks.
private final class ResponseCollector {
    var body: [UInt8] = []
    var retryAfter: String?
    static let maxBody = 64 * 1024

    func reset() {
        body.removeAll(keepingCapacity: true)
        retryAfter = nil
    }
}

private let writeCallback: ccurl_data_callback = { data, size, count, userdata in
    let length = size * count
    guard let data, let userdata else { return length }
    let collector = Unmanaged<ResponseCollector>.fromOpaque(userdata).takeUnretainedValue()
    if collector.body.count < ResponseCollector.maxBody {
        collector.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
    }
    return length
}

private let headerCallback: ccurl_data_callback = { data, size, count, userdata in
    let length = size * count
    guard let data, let userdata else { return length }
    let collector = Unmanaged<ResponseCollector>.fromOpaque(userdata).takeUnretainedValue()
    let line = String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
    if line.count > 12, line.lowercased().hasPrefix("retry-after:") {
        collector.retryAfter = String(line.dropFirst(12)).trimmingCharacters()
    } else if line.hasPrefix("HTTP/") {
        // A new response (after a redirect or 100-continue) starts over.
        collector.retryAfter = nil
    }
    return length
}

extension String {
    fileprivate func trimmingCharacters() -> String {
        var slice = Substring(self)
        while let last = slice.last, last == "\r\n" || last == "\n" || last == "\r" || last == " " { slice.removeLast() }
        while let first = slice.first, first == " " || first == "\t" { slice.removeFirst() }
        return String(slice)
    }
}

/// POSTs OTLP protobuf bodies (plain http:// without libcurl, see
/// `PlainHTTPClient`; https:// with libcurl), with the OTLP retry policy. Blocking:
/// call it from an export thread, never from the data path. One connection is
/// kept alive and reused; calls are serialized. Shared by the span exporter and
/// (later) the logs exporter.
package final class OTLPHTTPTransport: @unchecked Sendable {
    package let configuration: OTLPExporterConfiguration
    private let logger: Logger
    private let signalName: String
    private let lock = ConditionLock()
    var retryPolicy = OTLPRetryPolicy()

    // Guarded by `lock`.
    private var handle: UnsafeMutableRawPointer?
    /// Drives `handle`, so that a transfer can be abandoned between two polls
    /// (see `abandon(atMonotonicNanoseconds:)`).
    private var multi: UnsafeMutableRawPointer?
    private var headers: UnsafeMutablePointer<curl_slist>?
    private let collector = ResponseCollector()
    /// For plain http:// collectors: no libcurl at all (see `PlainHTTPClient`).
    private let plain: PlainHTTPClient?
    private var isShutdown = false
    /// curl's detailed message of the last failure (CURLOPT_ERRORBUFFER), e.g.
    /// which certificate check failed; `curl_easy_strerror` only names the code.
    private let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)

    /// Guards `abandonDeadline`; separate from `lock`, which `send` holds
    /// throughout, so that another thread can set the deadline mid-send.
    private let abandonLock = ConditionLock()
    /// Monotonic time at which every send gives up (`.max`: none). Set when
    /// the owning processor's shutdown starts.
    private var abandonDeadline = UInt64.max

    /// Call `configuration.validate()` first: the transport trusts it (files
    /// readable, protocol `http/protobuf`).
    /// - Parameter signalName: what the bodies carry ("spans", "log records"), for log lines.
    package init(configuration: OTLPExporterConfiguration, signalName: String, logger: Logger) {
        self.configuration = configuration
        plain = PlainHTTPClient(
            url: configuration.url, headers: [("User-Agent", configuration.userAgent)] + Self.requestHeaders(configuration))
        self.signalName = signalName
        var logger = logger
        logger[metadataKey: "otlp_endpoint"] = "\(configuration.url)"
        self.logger = logger
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
    }

    /// `text` with every header value of the configuration blanked out: a
    /// collector may echo the credentials it refused in its error body or in
    /// a partial-success message, and such text goes to logs and errors.
    package func redacting(_ text: String) -> String {
        var text = text
        for secret in configuration.secrets where text.contains(secret) {
            text = text.replacing(secret, with: "<redacted>")
        }
        return text
    }

    deinit {
        if let multi, let handle { curl_multi_remove_handle(multi, handle) }
        if let multi { curl_multi_cleanup(multi) }
        if let handle { curl_easy_cleanup(handle) }
        if let headers { curl_slist_free_all(headers) }
        errorBuffer.deallocate()
    }

    /// Sends `body` (an uncompressed protobuf message), retrying within `timeout`.
    /// Returns the body of the 2xx response. Logs a failure once, then throws.
    package func send(_ body: [UInt8], timeout: Duration, itemCount: Int) throws(TracingError) -> [UInt8] {
        try body.withUnsafeBytesTyped { bytes throws(TracingError) in try send(bytes, timeout: timeout, itemCount: itemCount) }
    }

    /// Sends `body`, borrowed for the call (retries resend it from where it lies).
    package func send(_ body: UnsafeRawBufferPointer, timeout: Duration, itemCount: Int) throws(TracingError) -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        guard !isShutdown else { throw .shutdown("OTLP exporter is shut down") }
        let handle: UnsafeMutableRawPointer?
        if plain == nil {
            handle = prepareHandle()
            guard handle != nil else {
                logger.error("OTLP export failed: cannot create a curl handle")
                throw .exportFailed("curl_easy_init failed")
            }
        } else {
            handle = nil
        }

        guard configuration.compression == .gzip else {
            return try post(body, handle: handle, timeout: timeout, itemCount: itemCount)
        }
        guard let compressed = gzip(body) else {
            logger.error("OTLP export failed: gzip compression failed")
            throw .encodingFailed("gzip failed")
        }
        return try compressed.withUnsafeBytesTyped { compressed throws(TracingError) in
            try post(compressed, handle: handle, timeout: timeout, itemCount: itemCount)
        }
    }

    /// Call with the lock held: the attempts and retries of one export.
    private func post(
        _ payload: UnsafeRawBufferPointer, handle: UnsafeMutableRawPointer?, timeout: Duration, itemCount: Int
    ) throws(TracingError) -> [UInt8] {
        let start = monotonicNanoseconds()
        let exportEnd = start + UInt64(max(timeout.nanoseconds, 1_000_000))
        var attempt = 0
        // What the attempt before a retry wait met: the deadline may end the
        // wait or the next attempt, and the report should still say why the
        // export failed.
        var failureBeforeWait: String?
        while true {
            // A shutdown deadline set meanwhile shortens what is left.
            let now = monotonicNanoseconds()
            guard now < abandonDeadlineNow else {
                throw .abandoned("collector \(configuration.url): \(failureBeforeWait ?? "shutdown deadline reached")")
            }
            // curl times out at the export's own end; `perform` drops the
            // transfer itself at the shutdown deadline (set now or later).
            let remaining = exportEnd > now ? exportEnd - now : 0
            let result = if let plain {
                perform(plain, payload, deadline: now + max(remaining, 1_000_000))
            } else {
                perform(handle!, payload, timeoutMilliseconds: max(Int(remaining / 1_000_000), 1))
            }
            let decision = retryPolicy.decide(
                result, attempt: attempt,
                nowSeconds: Int64(wallClockNanoseconds() / 1_000_000_000),
                random: Double.random(in: 0..<1)
            )
            switch decision {
            case .success:
                if attempt > 0 {
                    logger.debug("OTLP export succeeded after retries", metadata: ["attempts": "\(attempt + 1)"])
                }
                return result.body
            case .fail:
                let detail = describe(result)
                // While shutting down, the processor reports every loss in one line.
                let level: Logger.Level = isAbandoning ? .debug : .error
                logger.log(level: level, "OTLP export failed, not retrying: \(detail)", metadata: [
                    "http_status": "\(result.status)", "dropped_\(signalNameKey)": "\(itemCount)",
                ])
                let message = "collector \(configuration.url): \(detail), not retrying"
                if result.curlMessage == Self.abandonedMessage {
                    let before = failureBeforeWait.map { " (the attempt before: \($0))" } ?? ""
                    throw .abandoned("collector \(configuration.url): \(detail)\(before)")
                }
                if result.status == 0 && OTLPRetryPolicy.isTLSFailure(result) { throw .tlsFailed(message) }
                if result.status == 0 { throw .connectionFailed(message) }
                throw .httpStatus(message)
            case .retry(let delay):
                let delayNanoseconds = UInt64(max(delay.nanoseconds, 0))
                let wakeAt = monotonicNanoseconds() + delayNanoseconds
                // The shutdown deadline stops a retry that an export without
                // one would have made (the caller's timeout may already be
                // clipped to the deadline, hence the configured timeout here).
                let abandoning = wakeAt >= abandonDeadlineNow
                    && wakeAt < start + UInt64(max(configuration.timeout.nanoseconds, 0))
                guard wakeAt < min(exportEnd, abandonDeadlineNow) else {
                    let detail = describe(result)
                    let limit = abandoning ? "the shutdown deadline" : "the export timeout"
                    logger.log(level: isAbandoning ? .debug : .error,
                               "OTLP export failed, giving up: retries would exceed \(limit): \(detail)", metadata: [
                        "attempts": "\(attempt + 1)", "dropped_\(signalNameKey)": "\(itemCount)",
                    ])
                    let message = "collector \(configuration.url): \(detail)"
                    if abandoning { throw .abandoned(message) }
                    if result.status == 0 { throw .connectionFailed(message) }
                    throw .timeout(message)
                }
                let detail = describe(result)
                failureBeforeWait = detail
                logger.debug("OTLP export will retry", metadata: [
                    "reason": "\(detail)", "delay_ms": "\(delayNanoseconds / 1_000_000)",
                    "attempt": "\(attempt + 1)",
                ])
                pause(untilMonotonicNanoseconds: wakeAt)
                attempt += 1
            }
        }
    }

    package func shutdown() {
        lock.withLock { isShutdown = true }
    }

    /// From `deadline` (monotonic, see `monotonicNanoseconds()`) on, a send in
    /// progress gives up within a poll interval and later sends fail at once;
    /// retry waits and request timeouts are clipped to it. Until then, failures
    /// are logged at debug only: the processor that is shutting down reports
    /// what it could not export in one line. Callable from any thread; the
    /// earliest deadline wins.
    package func abandon(atMonotonicNanoseconds deadline: UInt64) {
        abandonLock.withLock {
            abandonDeadline = min(abandonDeadline, deadline)
            abandonLock.broadcast()
        }
    }

    private var abandonDeadlineNow: UInt64 { abandonLock.withLock { abandonDeadline } }
    private var isAbandoning: Bool { abandonDeadlineNow != .max }

    /// Waits for a retry, returning early when the abandon deadline comes first.
    private func pause(untilMonotonicNanoseconds wakeAt: UInt64) {
        abandonLock.lock()
        defer { abandonLock.unlock() }
        while true {
            let end = min(wakeAt, abandonDeadline)
            guard monotonicNanoseconds() < end else { return }
            abandonLock.wait(untilMonotonicNanoseconds: end)
        }
    }

    private static let abandonedMessage = "abandoned at the shutdown deadline"

    private var signalNameKey: String { signalName.replacingSpaces() }

    /// Never holds a header value: see `redacting(_:)`.
    private func describe(_ result: HTTPAttemptResult) -> String {
        redacting(describeUnredacted(result))
    }

    private func describeUnredacted(_ result: HTTPAttemptResult) -> String {
        if result.curlMessage == Self.abandonedMessage {
            return "no answer before the shutdown deadline"
        }
        if result.status == 0 && OTLPRetryPolicy.isTLSFailure(result) {
            let what = switch CURLcode(rawValue: result.curlCode) {
            case CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_ISSUER_ERROR:
                "the collector's certificate did not verify"
                    + (configuration.certificateFile.map { " against \($0)" } ?? " against the system CAs")
            case CURLE_SSL_CACERT_BADFILE: "the CA file could not be loaded"
            case CURLE_SSL_CERTPROBLEM: "the client certificate or key could not be loaded"
            default: "the TLS handshake failed"
            }
            return "TLS failure: \(what) (curl \(result.curlCode): \(result.curlMessage))"
        }
        if result.status == 0 {
            return "connection failed (curl \(result.curlCode): \(result.curlMessage))"
        }
        var text = "HTTP \(result.status)"
        if !result.body.isEmpty {
            // Error bodies are usually a protobuf google.rpc.Status; show printable bytes only.
            let printable = String(decoding: result.body.prefix(200).map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: ".") }, as: UTF8.self)
            text += " body: \(printable)"
        }
        return text
    }

    /// The headers of every request on both paths (the user agent is set apart:
    /// curl has an option for it).
    private static func requestHeaders(_ configuration: OTLPExporterConfiguration) -> [(String, String)] {
        var headers = [("Content-Type", "application/x-protobuf")]
        if configuration.compression == .gzip { headers.append(("Content-Encoding", "gzip")) }
        return headers + configuration.headers.map { ($0.name, $0.value) }
    }

    /// Call with the lock held. What curl reports for the same failures, so
    /// the retry policy and the messages do not depend on the path.
    private func perform(_ plain: PlainHTTPClient, _ payload: UnsafeRawBufferPointer, deadline: UInt64) -> HTTPAttemptResult {
        var (result, abandoned) = plain.post(payload, deadline: deadline) { monotonicNanoseconds() >= abandonDeadlineNow }
        // A timeout clipped to the deadline is the same event (as on the curl path).
        if result.curlCode == CURLE_OPERATION_TIMEDOUT.rawValue, monotonicNanoseconds() + 50_000_000 >= abandonDeadlineNow {
            abandoned = true
        }
        if abandoned { result.curlMessage = Self.abandonedMessage }
        return result
    }

    /// Call with the lock held.
    private func prepareHandle() -> UnsafeMutableRawPointer? {
        _ = curlGlobalInit  // loads libcurl (see CCurl): only https:// and proxied exports need it
        if let handle { return handle }
        guard let handle = curl_easy_init() else { return nil }
        guard let multi = curl_multi_init() else {
            curl_easy_cleanup(handle)
            return nil
        }
        self.multi = multi
        var list: UnsafeMutablePointer<curl_slist>?
        // "Expect:" stops curl from waiting for a 100 Continue before large bodies.
        let lines = Self.requestHeaders(configuration).map { "\($0): \($1)" } + ["Expect:"]
        for line in lines { list = curl_slist_append(list, line) }
        headers = list
        ccurl_setopt_string(handle, CURLOPT_URL, configuration.url)
        ccurl_setopt_long(handle, CURLOPT_POST, 1)
        ccurl_setopt_slist(handle, CURLOPT_HTTPHEADER, list)
        ccurl_setopt_string(handle, CURLOPT_USERAGENT, configuration.userAgent)
        // No signals: curl runs on our export thread, not the main thread.
        ccurl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        ccurl_setopt_callback(handle, CURLOPT_WRITEFUNCTION, writeCallback)
        ccurl_setopt_callback(handle, CURLOPT_HEADERFUNCTION, headerCallback)
        let collectorPointer = Unmanaged.passUnretained(collector).toOpaque()
        ccurl_setopt_pointer(handle, CURLOPT_WRITEDATA, collectorPointer)
        ccurl_setopt_pointer(handle, CURLOPT_HEADERDATA, collectorPointer)
        ccurl_setopt_pointer(handle, CURLOPT_ERRORBUFFER, errorBuffer)
        // TLS (https:// endpoints), per the OTLP exporter spec's certificate
        // settings: always verify the collector and its name; a private CA
        // replaces the system store; a client certificate for mutual TLS.
        ccurl_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, 1)
        ccurl_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, 2)
        if let file = configuration.certificateFile { ccurl_setopt_string(handle, CURLOPT_CAINFO, file) }
        if let file = configuration.clientCertificateFile { ccurl_setopt_string(handle, CURLOPT_SSLCERT, file) }
        if let file = configuration.clientKeyFile { ccurl_setopt_string(handle, CURLOPT_SSLKEY, file) }
        self.handle = handle
        return handle
    }

    /// Call with the lock held.
    private func perform(_ handle: UnsafeMutableRawPointer, _ payload: UnsafeRawBufferPointer, timeoutMilliseconds: Int) -> HTTPAttemptResult {
        collector.reset()
        errorBuffer[0] = 0
        ccurl_setopt_long(handle, CURLOPT_TIMEOUT_MS, timeoutMilliseconds)
        ccurl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, timeoutMilliseconds)
        var abandoned = false
        ccurl_setopt_off(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(payload.count))
        ccurl_setopt_pointer(handle, CURLOPT_POSTFIELDS, UnsafeMutableRawPointer(mutating: payload.baseAddress))
        let code: CURLcode = {
            guard let multi else { return curl_easy_perform(handle) }
            // The multi interface instead of curl_easy_perform: between polls
            // (50 ms at most) we can drop a transfer that a shutdown deadline
            // has overtaken, e.g. one waiting on a collector that never answers.
            curl_multi_add_handle(multi, handle)
            defer { curl_multi_remove_handle(multi, handle) }
            var code = CURLE_OK
            while ccurl_multi_step(multi, 50, &code) > 0 {
                if monotonicNanoseconds() >= abandonDeadlineNow {
                    abandoned = true
                    return CURLE_ABORTED_BY_CALLBACK
                }
            }
            // A timeout clipped to the deadline can beat the check above by
            // a poll interval; it is the same event.
            if code == CURLE_OPERATION_TIMEDOUT, monotonicNanoseconds() + 50_000_000 >= abandonDeadlineNow {
                abandoned = true
            }
            return code
        }()
        // POSTFIELDS only borrowed the payload for this perform.
        ccurl_setopt_pointer(handle, CURLOPT_POSTFIELDS, nil)
        var status = 0
        if code == CURLE_OK {
            ccurl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        }
        return HTTPAttemptResult(
            status: status,
            curlCode: code.rawValue,
            curlMessage: abandoned ? Self.abandonedMessage : curlMessage(code),
            body: collector.body,
            retryAfter: collector.retryAfter
        )
    }

    private func curlMessage(_ code: CURLcode) -> String {
        let summary = String(cString: curl_easy_strerror(code))
        var detail = String(cString: errorBuffer)
        while detail.last == "\n" { detail.removeLast() }
        return detail.isEmpty || detail == summary ? summary : "\(summary): \(detail)"
    }

    private func gzip(_ input: UnsafeRawBufferPointer) -> [UInt8]? {
        var output: UnsafeMutablePointer<UInt8>?
        var length = 0
        let start = input.baseAddress?.assumingMemoryBound(to: UInt8.self)
        guard ccurl_gzip(start, input.count, &output, &length) == 0, let output else { return nil }
        defer { free(output) }
        return Array(UnsafeBufferPointer(start: output, count: length))
    }
}

extension Array where Element == UInt8 {
    /// `withUnsafeBytes` rethrows untyped errors; the transport throws
    /// `TracingError` (as YoMoWire's `withUnsafeReadableBytesTyped` does for
    /// `ByteBuffer` and `WireError`).
    fileprivate func withUnsafeBytesTyped<Result>(
        _ body: (UnsafeRawBufferPointer) throws(TracingError) -> Result
    ) throws(TracingError) -> Result {
        let outcome = withUnsafeBytes { bytes in Swift.Result { () throws(TracingError) in try body(bytes) } }
        return try outcome.get()
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

extension String {
    fileprivate func replacingSpaces() -> String {
        String(map { $0 == " " ? "_" : $0 })
    }
}
