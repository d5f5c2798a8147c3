import NIOCore
import YoMoWire

/// Decodes the input as metadata; whatever decodes must round-trip exactly.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMetadata(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let bytes = ByteBuffer(bytes: UnsafeBufferPointer(start: start, count: count))
    do {
        let metadata = try Metadata(decoding: bytes)
        let again = try Metadata(decoding: metadata.encoded())
        precondition(again == metadata, "metadata round trip differs")
        precondition(metadata.encodedLength == metadata.encoded().readableBytes, "encodedLength is wrong")
    } catch {
        // A WireError (typed throws): expected for malformed input.
    }
    return 0
}
