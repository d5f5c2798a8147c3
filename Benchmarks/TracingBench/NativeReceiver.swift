import COTLPProto
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A minimal OTLP/HTTP receiver for the benchmark: HTTP/1.1 keep-alive on
/// loopback, every body fully decoded with protobuf-c and its spans counted.
/// (A Python receiver with the official decoder is slower than the exporter, so
/// it would measure itself; `--python` still offers it.)
final class NativeReceiver: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    let spans = Atomic<Int>(0)
    let requests = Atomic<Int>(0)

    init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.listener = listener
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(listener, 16) == 0 else { throw BenchError("cannot listen") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    var endpoint: String { "http://127.0.0.1:\(port)" }

    private func acceptLoop() {
        while true {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { return }
            Thread.detachNewThread { [self] in serve(connection) }
        }
    }

    private func serve(_ connection: Int32) {
        defer { close(connection) }
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 256 * 1024)
        func fill() -> Bool {
            let count = chunk.withUnsafeMutableBytes { read(connection, $0.baseAddress, $0.count) }
            guard count > 0 else { return false }
            buffer.append(contentsOf: chunk[0..<count])
            return true
        }
        let response = Array("HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n".utf8)
        while true {
            var headerEnd: Int?
            while headerEnd == nil {
                headerEnd = findHeaderEnd(buffer)
                if headerEnd == nil && !fill() { return }
            }
            let head = String(decoding: buffer[0..<headerEnd!], as: UTF8.self).lowercased()
            var contentLength = 0
            for line in head.split(separator: "\r\n") where line.hasPrefix("content-length:") {
                contentLength = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces)) ?? 0
            }
            let bodyStart = headerEnd! + 4
            while buffer.count < bodyStart + contentLength {
                if !fill() { return }
            }
            let count = buffer[bodyStart..<(bodyStart + contentLength)].withContiguousStorageIfAvailable { body in
                Self.countSpans(UnsafeRawBufferPointer(body))
            } ?? 0
            buffer.removeFirst(bodyStart + contentLength)
            spans.add(count, ordering: .relaxed)
            requests.add(1, ordering: .relaxed)
            _ = response.withUnsafeBytes { write(connection, $0.baseAddress, $0.count) }
        }
    }

    private func findHeaderEnd(_ buffer: [UInt8]) -> Int? {
        guard buffer.count >= 4 else { return nil }
        for index in 0...(buffer.count - 4)
        where buffer[index] == 13 && buffer[index + 1] == 10 && buffer[index + 2] == 13 && buffer[index + 3] == 10 {
            return index
        }
        return nil
    }

    static func countSpans(_ body: UnsafeRawBufferPointer) -> Int {
        guard let request = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(
            nil, body.count, body.baseAddress?.assumingMemoryBound(to: UInt8.self)
        ) else { return 0 }
        defer { opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(request, nil) }
        var total = 0
        for resourceIndex in 0..<request.pointee.n_resource_spans {
            guard let resource = request.pointee.resource_spans[resourceIndex] else { continue }
            for scopeIndex in 0..<resource.pointee.n_scope_spans {
                total += resource.pointee.scope_spans[scopeIndex]?.pointee.n_spans ?? 0
            }
        }
        return total
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
