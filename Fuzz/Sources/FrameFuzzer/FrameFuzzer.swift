import NIOCore
import YoMoWire

/// Feeds the input to the streaming decoder in chunks whose sizes come from the
/// input's first byte, so the fuzzer explores partial frames too. Every frame
/// that decodes must re-encode to bytes that decode to the same frame.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrames(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let input = UnsafeBufferPointer(start: start, count: count)
    guard let chunkSeed = input.first else { return 0 }
    let chunkSize = Int(chunkSeed % 64) + 1
    var decoder = FrameDecoder(maximumFrameSize: 1 << 20)
    var received = ByteBuffer()
    var offset = 1
    do {
        while offset < input.count {
            let end = min(offset + chunkSize, input.count)
            received.writeBytes(UnsafeBufferPointer(rebasing: input[offset..<end]))
            offset = end
            while let frame = try decoder.decodeFrame(buffer: &received) {
                check(frame)
            }
        }
        _ = try decoder.decodeLast(buffer: &received, seenEOF: true)
    } catch is WireError {
        // Rejecting bad input is the expected outcome; crashing is not.
    } catch {
        fatalError("decoder threw a non-wire error: \(error)")
    }
    return 0
}

func check(_ frame: Frame) {
    do {
        let again = try Frame(decoding: frame.encoded())
        precondition(again == frame, "re-encoded frame decodes differently: \(frame) vs \(again)")
        if case .data(let data) = frame, let metadata = try? Metadata(decoding: data.metadata) {
            let metadataAgain = try Metadata(decoding: metadata.encoded())
            precondition(metadataAgain == metadata, "metadata round trip differs")
        }
    } catch {
        fatalError("a decoded frame did not survive re-encoding: \(error)")
    }
}
