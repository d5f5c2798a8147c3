// Encode/decode throughput of YoMo DataFrames, the numbers of docs/performance.md.
//
//   swift run -c release yomo-wire-bench [--quick]
//
// Each case runs for a fixed number of iterations, five times; the best run is
// reported (the least disturbed by the other core's work). Payloads are 16 B,
// 1 KiB and 64 KiB with the metadata a traced source writes: source id, tid,
// trace id, span id.
import NIOCore
import YoMoWire

let quick = CommandLine.arguments.contains("--quick")
/// `--only TEXT` runs just the cases whose name contains TEXT (e.g. under callgrind).
let only: String? = CommandLine.arguments.firstIndex(of: "--only").flatMap {
    CommandLine.arguments.indices.contains($0 + 1) ? CommandLine.arguments[$0 + 1] : nil
}

let metadata: Metadata = [
    Metadata.ReservedKey.sourceID: NanoID.generate() + "-0",
    Metadata.ReservedKey.tid: NanoID.generate(),
    Metadata.ReservedKey.traceID: "4bf92f3577b34da6a3ce929d0e0e4736",
    Metadata.ReservedKey.spanID: "00f067aa0ba902b7",
]
let encodedMetadata = metadata.encoded()

struct Result {
    var name: String
    var nanosecondsPerOp: Double
    var bytesPerOp: Int
}

@inline(never)
func blackHole<T>(_ value: T) { withExtendedLifetime(value) {} }

func measure(_ name: String, bytesPerOp: Int, iterations: Int, _ body: () throws -> Void) rethrows -> Result {
    if let only, !name.contains(only) { return Result(name: name, nanosecondsPerOp: .nan, bytesPerOp: bytesPerOp) }
    let clock = ContinuousClock()
    for _ in 0..<max(1, iterations / 10) { try body() }  // warm up caches and allocator
    var best = Duration.seconds(1_000_000)
    for _ in 0..<(quick ? 2 : 5) {
        let elapsed = try clock.measure {
            for _ in 0..<iterations { try body() }
        }
        best = min(best, elapsed)
    }
    let (seconds, attoseconds) = best.components
    let nanoseconds = Double(seconds) * 1e9 + Double(attoseconds) / 1e9
    return Result(name: name, nanosecondsPerOp: nanoseconds / Double(iterations), bytesPerOp: bytesPerOp)
}

func format(_ value: Double, _ digits: Int) -> String {
    var text = String(Int((value * pow10(digits)).rounded()))
    if digits > 0 {
        while text.count <= digits { text = "0" + text }
        text.insert(".", at: text.index(text.endIndex, offsetBy: -digits))
    }
    return text
}

func pow10(_ digits: Int) -> Double { (0..<digits).reduce(1.0) { value, _ in value * 10 } }

func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
}

var results: [Result] = []
let scale = quick ? 10 : 1

for size in [16, 1024, 65_536] {
    var payload = ByteBuffer()
    payload.writeBytes((0..<size).map { UInt8(truncatingIfNeeded: $0) })
    let frame = DataFrame(tag: 0x33, metadata: encodedMetadata, payload: payload)
    let wire = Frame.data(frame).encoded()
    let iterations = (size >= 65_536 ? 20_000 : 400_000) / scale
    let label = size >= 1024 ? "\(size / 1024) KiB" : "\(size) B"

    var out = ByteBuffer()
    out.reserveCapacity(wire.readableBytes)
    results.append(measure("encode \(label) (metadata map + frame)", bytesPerOp: wire.readableBytes, iterations: iterations) {
        out.clear()
        var frame = frame
        frame.metadata = metadata.encoded()
        frame.encode(into: &out)
        blackHole(out)
    })
    results.append(measure("encode \(label) (frame only)", bytesPerOp: wire.readableBytes, iterations: iterations) {
        out.clear()
        frame.encode(into: &out)
        blackHole(out)
    })
    results.append(try measure("decode \(label) (frame + metadata)", bytesPerOp: wire.readableBytes, iterations: iterations) {
        var decoder = FrameDecoder()
        var input = wire
        guard case .data(let decoded)? = try decoder.decodeFrame(buffer: &input) else { fatalError("not a data frame") }
        let decodedMetadata = try Metadata(decoding: decoded.metadata)
        blackHole(decodedMetadata)
        blackHole(decoded)
    })
}

results.append(try measure("metadata decode (4 keys)", bytesPerOp: encodedMetadata.readableBytes, iterations: 400_000 / scale) {
    blackHole(try Metadata(decoding: encodedMetadata))
})

// What a zipper and a stream function do with every traced frame's metadata:
// scan it in place, then read its trace values as numbers.
let tracedMetadata: Metadata = [
    Metadata.ReservedKey.sourceID: NanoID.generate() + "-0",
    Metadata.ReservedKey.tid: NanoID.generate(),
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    Metadata.ReservedKey.traceID: "4bf92f3577b34da6a3ce929d0e0e4736",
    Metadata.ReservedKey.spanID: "00f067aa0ba902b7",
]
let encodedTracedMetadata = tracedMetadata.encoded()
results.append(measure("metadata view scan (5 keys, traced)", bytesPerOp: encodedTracedMetadata.readableBytes, iterations: 1_000_000 / scale) {
    blackHole(MetadataView(encodedTracedMetadata))
})
let tracedView = MetadataView(encodedTracedMetadata)!
results.append(measure("metadata view canonicalTrace", bytesPerOp: encodedTracedMetadata.readableBytes, iterations: 1_000_000 / scale) {
    blackHole(tracedView.canonicalTrace)
})

// Tids: a source makes one per frame it writes. The baseline draws every word
// from SystemRandomNumberGenerator (a getrandom call per 8 bytes).
results.append(measure("tid (NanoID.generate, pooled system randomness)", bytesPerOp: 21, iterations: 400_000 / scale) {
    blackHole(NanoID.generate())
})
results.append(measure("tid baseline (a getrandom call per word)", bytesPerOp: 21, iterations: 400_000 / scale) {
    var generator = SystemRandomNumberGenerator()
    blackHole(NanoID.generate(using: &generator))
})

// A stream of 1 KiB frames arriving in 1350-byte datagram-sized chunks.
do {
    var payload = ByteBuffer()
    payload.writeBytes((0..<1024).map { UInt8(truncatingIfNeeded: $0) })
    var stream = ByteBuffer()
    let framesInStream = 1000
    for _ in 0..<framesInStream {
        Frame.data(DataFrame(tag: 0x33, metadata: encodedMetadata, payload: payload)).encode(into: &stream)
    }
    let chunks = stride(from: 0, to: stream.readableBytes, by: 1350).map {
        stream.getSlice(at: $0, length: min(1350, stream.readableBytes - $0))!
    }
    let perFrame = stream.readableBytes / framesInStream
    let streamResult = try measure("stream decode 1 KiB frames, 1350 B chunks", bytesPerOp: stream.readableBytes, iterations: 400 / scale) {
        var decoder = FrameDecoder()
        var received = ByteBuffer()
        var count = 0
        for var chunk in chunks {
            received.writeBuffer(&chunk)
            while let frame = try decoder.decodeFrame(buffer: &received) {
                if case .data(let data) = frame { blackHole(try Metadata(decoding: data.metadata)) }
                count += 1
            }
            received.discardReadBytes()
        }
        precondition(count == framesInStream)
    }
    results.append(Result(
        name: streamResult.name + " (per frame)",
        nanosecondsPerOp: streamResult.nanosecondsPerOp / Double(framesInStream),
        bytesPerOp: perFrame
    ))
}

print("case                                              ns/op      frames/s        MB/s")
for result in results where !result.nanosecondsPerOp.isNaN {
    let perSecond = 1e9 / result.nanosecondsPerOp
    let megabytes = perSecond * Double(result.bytesPerOp) / 1e6
    print(
        result.name + String(repeating: " ", count: max(0, 46 - result.name.count))
            + pad(format(result.nanosecondsPerOp, 1), 10)
            + pad(format(perSecond, 0), 14)
            + pad(format(megabytes, 1), 12)
    )
}
