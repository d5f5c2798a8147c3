import MetricsPageInFuzz

/// `yomo top` parses whatever a target answers as a Prometheus page and
/// computes its row from two scrapes. Whatever the text: no trap, at most one
/// sample per line, and the row's rates and shares are never negative.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzMetricsPage(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: start, count: count), as: UTF8.self)
    // The first half as the earlier scrape, the whole as the later one.
    let middle = text.index(text.startIndex, offsetBy: text.count / 2)
    let earlier = PrometheusTextParser.parse(String(text[..<middle]))
    let later = PrometheusTextParser.parse(text)
    precondition(later.count <= text.split(separator: "\n").count, "more samples than lines")
    let row = PipelineRow.compute(target: "fuzz:1", previous: earlier, current: later, seconds: 1)
    for rate in [row.inRate, row.outRate, row.noRouteRate, row.droppedRate] {
        precondition(!(rate < 0), "a negative rate: \(rate)")
    }
    return 0
}
