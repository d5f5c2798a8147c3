import Foundation
import NIOCore
import Testing
@testable import YoMoQUIC

/// Helpers shared by the YoMoQUIC tests: certificates made with `certtool`
/// (gnutls-bin), the aioquic peer script, and a byte pattern that exposes gaps
/// and reordering.
enum Fixture {
    static let resources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Resources")
    static let peerScript = resources.appendingPathComponent("aioquic_peer.py").path

    /// Byte `i` of the stream is `(i * 31 + 7) & 0xFF` (period 256).
    static let patternBlock: ByteBuffer = {
        var b = ByteBuffer()
        for i in 0..<(65536 + 256) { b.writeInteger(UInt8(truncatingIfNeeded: i &* 31 &+ 7)) }
        return b
    }()

    static func pattern(offset: Int, length: Int) -> ByteBuffer {
        precondition(length <= 65536)
        return patternBlock.getSlice(at: offset % 256, length: length)!
    }

    /// Checks a received chunk against the pattern at `offset`.
    static func matches(_ chunk: ByteBuffer, offset: Int) -> Bool {
        var checked = 0
        while checked < chunk.readableBytes {
            let n = min(65536, chunk.readableBytes - checked)
            if chunk.getSlice(at: chunk.readerIndex + checked, length: n) != pattern(offset: offset + checked, length: n) {
                return false
            }
            checked += n
        }
        return true
    }

    /// Writes `total` pattern bytes in `chunk`-sized writes.
    static func send(_ connection: QUICConnection, total: Int, chunk: Int = 65536) async throws {
        var sent = 0
        while sent < total {
            let n = min(chunk, total - sent)
            try await connection.write(pattern(offset: sent, length: n))
            sent += n
        }
    }

    /// Sends `total` pattern bytes while reading the echo back; returns how many
    /// came back intact.
    static func echo(_ connection: QUICConnection, total: Int, chunk: Int = 65536) async throws -> Int {
        try await withThrowingTaskGroup(of: Int.self) { group in
            group.addTask { try await send(connection, total: total, chunk: chunk); return -1 }
            group.addTask { try await receive(connection, total: total) }
            var received = 0
            for try await n in group where n >= 0 { received = n }
            return received
        }
    }

    /// Reads until `total` bytes arrived, checking the pattern; returns the count.
    static func receive(_ connection: QUICConnection, total: Int) async throws -> Int {
        var received = 0
        for try await chunk in connection.inbound {
            guard matches(chunk, offset: received) else {
                Issue.record("pattern mismatch at offset \(received)")
                return received
            }
            received += chunk.readableBytes
            if received >= total { break }
        }
        return received
    }
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate
/// signed by it, plus an unrelated CA. Made once per test run with certtool.
struct Certificates: Sendable {
    let directory: String
    var caCert: String { directory + "/ca.pem" }
    var otherCACert: String { directory + "/other-ca.pem" }
    var serverCert: String { directory + "/server.pem" }
    var serverKey: String { directory + "/server.key" }
    var clientCert: String { directory + "/client.pem" }
    var clientKey: String { directory + "/client.key" }
    var otherClientCert: String { directory + "/other-client.pem" }
    var otherClientKey: String { directory + "/other-client.key" }

    static let shared: Certificates = {
        let dir = NSTemporaryDirectory() + "yomo-quic-certs-\(getpid())"
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        func write(_ name: String, _ text: String) { try! text.write(toFile: dir + "/" + name, atomically: true, encoding: .utf8) }
        write("ca.tmpl", "cn = \"YoMo Test CA\"\nca\ncert_signing_key\nexpiration_days = 30\n")
        write("server.tmpl", "cn = \"localhost\"\ndns_name = \"localhost\"\nip_address = \"127.0.0.1\"\nip_address = \"::1\"\ntls_www_server\nsigning_key\nexpiration_days = 30\n")
        write("client.tmpl", "cn = \"yomo-client\"\ntls_www_client\nsigning_key\nexpiration_days = 30\n")
        func certtool(_ args: String...) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/certtool")
            p.arguments = args
            p.currentDirectoryURL = URL(fileURLWithPath: dir)
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try! p.run()
            p.waitUntilExit()
            precondition(p.terminationStatus == 0, "certtool \(args) failed")
        }
        // Keys from Python `cryptography` (aioquic's dependency): certtool's EC keys
        // sometimes drop a leading zero byte, which `cryptography` rejects.
        let keygen = Process()
        keygen.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        keygen.arguments = [
            "python3", "-c",
            """
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.hazmat.primitives import serialization as s
            for name in ["ca", "other-ca", "server", "client", "other-client"]:
                k = ec.generate_private_key(ec.SECP256R1())
                open(name + ".key", "wb").write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))
            """,
        ]
        keygen.currentDirectoryURL = URL(fileURLWithPath: dir)
        try! keygen.run()
        keygen.waitUntilExit()
        precondition(keygen.terminationStatus == 0, "key generation failed")
        for ca in ["ca", "other-ca"] {
            certtool("--generate-self-signed", "--load-privkey", "\(ca).key", "--template", "ca.tmpl", "--outfile", "\(ca).pem")
        }
        certtool("--generate-certificate", "--load-privkey", "server.key", "--load-ca-certificate", "ca.pem",
                 "--load-ca-privkey", "ca.key", "--template", "server.tmpl", "--outfile", "server.pem")
        certtool("--generate-certificate", "--load-privkey", "client.key", "--load-ca-certificate", "ca.pem",
                 "--load-ca-privkey", "ca.key", "--template", "client.tmpl", "--outfile", "client.pem")
        certtool("--generate-certificate", "--load-privkey", "other-client.key", "--load-ca-certificate", "other-ca.pem",
                 "--load-ca-privkey", "other-ca.key", "--template", "client.tmpl", "--outfile", "other-client.pem")
        return Certificates(directory: dir)
    }()
}

/// The aioquic peer as a subprocess; killed on `stop()`.
final class PythonPeer: @unchecked Sendable {
    let process = Process()
    let output = Pipe()

    init(arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", Fixture.peerScript] + arguments
        process.standardOutput = output
        process.standardError = FileHandle.standardError
        try process.run()
    }

    /// Reads stdout until a line starting with `prefix` (or EOF); returns it.
    /// The blocking reads run on a thread of their own: on one of the
    /// cooperative pool's two threads they would stall every other test's
    /// tasks in a parallel run for as long as the peer takes.
    func line(startingWith prefix: String) async -> String? {
        let fd = output.fileHandleForReading.fileDescriptor
        return await withCheckedContinuation { continuation in
            Thread.detachNewThread { continuation.resume(returning: Self.readLine(fd, startingWith: prefix)) }
        }
    }

    private static func readLine(_ fd: Int32, startingWith prefix: String) -> String? {
        var text = ""
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            text += String(decoding: buffer[0..<n], as: UTF8.self)
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) { return String(line) }
        }
    }

    /// `retry`: the server asks every new connection for a Retry first.
    static func echoServer(retry: Bool = false) async throws -> (PythonPeer, Int) {
        let certs = Certificates.shared
        let peer = try PythonPeer(arguments: ["server", certs.serverCert, certs.serverKey] + (retry ? ["retry"] : []))
        guard let line = await peer.line(startingWith: "PORT "), let port = Int(line.dropFirst(5)) else {
            peer.stop()
            throw QUICTestError("aioquic server did not start")
        }
        return (peer, port)
    }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
    }

    /// Polled with `Task.sleep`, for the same reason as `line(startingWith:)`.
    func waitForExit() async -> Int32 {
        while process.isRunning { try? await Task.sleep(for: .milliseconds(5)) }
        return process.terminationStatus
    }
}

struct QUICTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Open file descriptors of this process.
func openFileDescriptorCount() -> Int {
    openFileDescriptors().count
}

/// Open file descriptors and what they point to.
func openFileDescriptors() -> [String: String] {
    var result: [String: String] = [:]
    for fd in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
        // Unreadable links are the directory listing's own descriptor: skip.
        if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + fd) { result[fd] = target }
    }
    return result
}

/// Resident set size in KiB.
func residentSetKiB() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return -1 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
    }
    return -1
}

/// Our server echoing every stream; `stop()` closes it (code 0 to clients).
final class EchoServer: Sendable {
    let server: QUICServer
    private let task: Task<Void, Never>

    init(
        configuration: QUICConfiguration = .default, tls: ServerTLSConfiguration = .selfSigned, host: String = "127.0.0.1",
        limits: QUICServer.Limits = .default
    ) async throws {
        let server = try await QUICServer.bind(host: host, port: 0, configuration: configuration, tls: tls, limits: limits)
        self.server = server
        task = Task {
            await withDiscardingTaskGroup { group in
                for await connection in server.connections {
                    group.addTask {
                        do {
                            for try await chunk in connection.inbound { try await connection.write(chunk) }
                            try await connection.finishWriting()
                        } catch {}
                    }
                }
            }
        }
    }

    var port: Int { server.port }

    func stop() async {
        await server.close()
        await task.value
    }
}

/// Writes `payload`, reads the same number of bytes back, returns them.
func echo(_ connection: QUICConnection, _ payload: ByteBuffer) async throws -> ByteBuffer {
    try await connection.write(payload)
    var received = ByteBuffer()
    for try await chunk in connection.inbound {
        received.writeImmutableBuffer(chunk)
        if received.readableBytes >= payload.readableBytes { break }
    }
    return received
}

/// Runs `body` on a connection's (or the server's) loop thread, where their
/// state lives, and returns its result.
func onLoop<T: Sendable>(_ loop: QUICEventLoop, _ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        loop.execute { continuation.resume(returning: body()) }
    }
}

/// Polls `condition` (which may ask a loop thread) until it holds; false after `timeout`.
func until(_ timeout: Duration = .seconds(10), _ condition: () async -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !(await condition()) {
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return true
}

/// One datagram from `fd` without waiting, for the tests' UDP relays: its
/// length (0 or less when none is there) and where it came from.
func receiveDatagram(on fd: Int32, into buffer: inout [UInt8]) -> (Int, UDPAddress) {
    var from = UDPAddress()
    from.length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let n = withUnsafeMutableBytes(of: &from.storage) { raw in
        recvfrom(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT), raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &from.length)
    }
    return (n, from)
}
