import YoMoTraceView

/// `yomo trace-view` decodes whatever is posted to it and draws the spans.
/// Whatever the bytes, decoding must answer or throw (never recurse past the
/// stack: protobuf-c only sees bodies the nesting check let through), and the
/// waterfall must draw every span on one line with no control character.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTraceView(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let body = Array(UnsafeBufferPointer(start: start, count: count))
    guard let spans = try? OTLPTraceDecoder.decode(body), !spans.isEmpty else { return 0 }
    let text = WaterfallRenderer(colour: false).render(spans)
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
    precondition(lines.count == spans.count + 1, "\(spans.count) spans drawn as \(lines.count - 1) rows")
    precondition(!text.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" }, "a control character reached the output")
    return 0
}
