// yomo-quic-bench: loopback benchmark of YoMoQUIC (client and server in one process,
// each on its own thread). Not a test: run it in release mode.
//
//   swift build -c release --product yomo-quic-bench && .build/release/yomo-quic-bench
//   options: --handshakes N  --bulk-mib N  --small-frames N  --small-writes N  --echo-server PORT
import Foundation
import NIOCore
import YoMoQUIC
import YoMoWire

struct Options {
    var handshakes = 1000
    var bulkMiB = 1024
    var smallFrames = 4_000_000
    var smallWrites = 4_000_000
    var echoPort: Int?

    init(_ args: [String]) {
        var i = 1
        func next() -> Int {
            i += 1
            return i < args.count ? Int(args[i]) ?? 0 : 0
        }
        while i < args.count {
            switch args[i] {
            case "--handshakes": handshakes = next()
            case "--bulk-mib": bulkMiB = next()
            case "--small-frames": smallFrames = next()
            case "--small-writes": smallWrites = next()
            case "--echo-server": echoPort = next()
            default: print("unknown option \(args[i])"); exit(2)
            }
            i += 1
        }
    }
}

func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    sorted[min(sorted.count - 1, Int(Double(sorted.count - 1) * p + 0.5))]
}

/// Server side of the throughput runs: counts data-frame payload bytes and frames,
/// answers with a HandshakeAck frame once `frames` frames arrived.
func serve(_ server: QUICServer, framesPerConnection: @escaping @Sendable () -> Int) async {
    await withDiscardingTaskGroup { group in
        for await connection in server.connections {
            group.addTask {
                let frames = QUICFrameConnection(connection)
                let expected = framesPerConnection()
                var count = 0
                do {
                    for try await frame in frames.frames {
                        if case .data = frame { count += 1 }
                        if count == expected {
                            try await frames.write(.handshakeAck)
                            count = 0
                        }
                    }
                } catch {}
            }
        }
    }
}

final class Expectation: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func set(_ v: Int) { lock.lock(); value = v; lock.unlock() }
    func get() -> Int { lock.lock(); defer { lock.unlock() }; return value }
}

let options = Options(CommandLine.arguments)

if let port = options.echoPort {
    // An echo server for interop checks (e.g. against the Go client or aioquic).
    let server = try await QUICServer.bind(host: "127.0.0.1", port: port)
    print("echo server listening on 127.0.0.1:\(server.port)")
    await withDiscardingTaskGroup { group in
        for await connection in server.connections {
            group.addTask {
                do {
                    for try await chunk in connection.inbound { try await connection.write(chunk) }
                    try await connection.finishWriting()
                } catch { print("echo: \(error)") }
            }
        }
    }
    exit(0)
}

let expected = Expectation()
let server = try await QUICServer.bind(host: "127.0.0.1", port: 0)
let serverTask = Task { await serve(server, framesPerConnection: { expected.get() }) }
print("yomo-quic-bench: loopback 127.0.0.1:\(server.port), \(ProcessInfo.processInfo.activeProcessorCount) cores")

// 1. Handshakes: connect (QUIC + TLS 1.3 handshake, stream open) then close.
if options.handshakes > 0 {
    var samples: [Double] = []
    for _ in 0..<options.handshakes {
        let t0 = now()
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        samples.append(Double(now() - t0) / 1e6)
        await connection.close()
    }
    samples.sort()
    print(String(format: "handshake: n=%d p50 %.2f ms  p99 %.2f ms  (min %.2f, max %.2f)", samples.count,
                 percentile(samples, 0.5), percentile(samples, 0.99), samples.first!, samples.last!))
}

// 2. Bulk: one connection sends 64 KiB data frames; timed until the server has them all.
if options.bulkMiB > 0 {
    let frameCount = options.bulkMiB * 16
    expected.set(frameCount)
    let connection = try await QUICFrameConnection.connect(host: "127.0.0.1", port: server.port)
    var payload = ByteBuffer()
    payload.writeRepeatingByte(0x5A, count: 65536)
    let frame = Frame.data(DataFrame(tag: 0x33, payload: payload))
    let t0 = now()
    let reader = Task {
        var it = connection.frames.makeAsyncIterator()
        return try await it.next()
    }
    for _ in 0..<frameCount { try await connection.write(frame) }
    _ = try await reader.value
    let seconds = Double(now() - t0) / 1e9
    let mb = Double(frameCount) * 65536 / 1e6
    print(String(format: "bulk: %d x 64 KiB frames (%.0f MB) in %.2f s = %.0f MB/s", frameCount, mb, seconds, mb / seconds))
    await connection.close()
}

// 3. Small frames: one connection sends data frames with a 16-byte payload.
if options.smallFrames > 0 {
    expected.set(options.smallFrames)
    let connection = try await QUICFrameConnection.connect(host: "127.0.0.1", port: server.port)
    var payload = ByteBuffer()
    payload.writeRepeatingByte(0x42, count: 16)
    let frame = Frame.data(DataFrame(tag: 0x33, payload: payload))
    var encoded = ByteBuffer()
    frame.encode(into: &encoded)
    let t0 = now()
    let reader = Task {
        var it = connection.frames.makeAsyncIterator()
        return try await it.next()
    }
    for _ in 0..<options.smallFrames { try await connection.write(frame) }
    _ = try await reader.value
    let seconds = Double(now() - t0) / 1e9
    print(String(format: "small frames: %d data frames (16 B payload, %d B on the wire) in %.2f s = %.0f frames/s (%.0f MB/s)",
                 options.smallFrames, encoded.readableBytes, seconds, Double(options.smallFrames) / seconds,
                 Double(options.smallFrames * encoded.readableBytes) / seconds / 1e6))
    await connection.close()
}

// 4. Raw 16-byte writes on the byte stream (what quic-go's 4.2 M writes/s measures).
if options.smallWrites > 0 {
    let rawServer = try await QUICServer.bind(host: "127.0.0.1", port: 0)
    let total = options.smallWrites * 16
    let sink = Task {
        var iterator = rawServer.connections.makeAsyncIterator()
        guard let connection = await iterator.next() else { return }
        var received = 0
        do {
            for try await chunk in connection.inbound {
                received += chunk.readableBytes
                if received >= total { break }
            }
            try await connection.write(ByteBuffer(string: "done"))
            for try await _ in connection.inbound {}  // until the client closes
        } catch {}
    }
    let connection = try await QUICConnection.connect(host: "127.0.0.1", port: rawServer.port)
    var sixteen = ByteBuffer()
    sixteen.writeRepeatingByte(0x42, count: 16)
    let t0 = now()
    let reader = Task {
        var it = connection.inbound.makeAsyncIterator()
        return try await it.next()
    }
    for _ in 0..<options.smallWrites { try await connection.write(sixteen) }
    _ = try await reader.value
    let seconds = Double(now() - t0) / 1e9
    print(String(format: "small writes: %d x 16 B on the byte stream in %.2f s = %.0f writes/s (%.0f MB/s)",
                 options.smallWrites, seconds, Double(options.smallWrites) / seconds, Double(total) / seconds / 1e6))
    await connection.close()
    await sink.value
    await rawServer.close()
}

await server.close()
serverTask.cancel()
