import NIOCore
import YoMoWireInFuzz

/// The zipper reads every peer's metadata in place (`MetadataView`, package
/// API: this package compiles the wire sources itself to reach it). Whatever
/// the bytes, the view must not read past them, must exist only for bytes that
/// decode, must read the keys as decoding does, and trace ids written back as
/// read must leave the bytes unchanged.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMetadataView(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let bytes = ByteBuffer(bytes: UnsafeBufferPointer(start: start, count: count))
    let decoded = try? Metadata(decoding: bytes)
    guard let view = MetadataView(bytes) else { return 0 }
    guard let decoded else { fatalError("a view of metadata that does not decode") }
    precondition(view.decoded == decoded, "the view decodes differently")
    for key in MetadataView.Key.allCases {
        precondition(view.string(key) == decoded[key.string], "the view reads \(key) differently")
    }
    if let trace = view.canonicalTrace {
        let asRead = MetadataView.TracePatch(
            traceparent: trace.traceparent,
            yomo: trace.traceID.flatMap { id in trace.spanID.map { (id.high, id.low, $0) } })
        if let patch = view.patch(asRead) {
            precondition(patch.applied(to: bytes) == bytes, "ids written back as read changed the bytes")
        }
    }
    return 0
}
