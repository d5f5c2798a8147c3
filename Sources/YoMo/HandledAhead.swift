/// What a stream function's handlers finished out of order
/// (`ReceiptFrame.handledAhead`), as the zipper keeps it for the function's
/// connection: disjoint ranges of the stream to the function, in order,
/// merged where they touch, past the offset it settled in order. A frame
/// wholly inside one is not taken back when the connection ends. Until the
/// forty-third round of issue 14 only that offset was known, and every frame
/// after the first unfinished one went to the next instance, finished or not
/// (a closing function's copies: hundreds handled twice in
/// `yomo-fault-bench chaos --seed 32 --seconds 60`).
struct HandledAhead: Sendable {
    /// Past this many ranges a new one is not kept: its frames may go to the
    /// next instance as well (at least once), and a function that names
    /// ranges without end costs the zipper no more.
    static let maximumRanges = 1024

    private(set) var ranges: [Range<Int>] = []
    /// The bytes the ranges cover.
    private(set) var bytes = 0

    /// The function finished the frames in `range` (already clamped to what
    /// was written to it, past what it settled).
    mutating func add(_ range: Range<Int>) {
        guard !range.isEmpty else { return }
        // The first range that ends at or after the new one's start: it and the ones after, up to
        // the first that starts after the new one's end, touch it.
        let first = firstIndex { $0.upperBound >= range.lowerBound }
        var last = first
        while last < ranges.count, ranges[last].lowerBound <= range.upperBound { last += 1 }
        guard first < last || ranges.count < Self.maximumRanges else { return }
        var merged = range
        for index in first..<last {
            merged = min(merged.lowerBound, ranges[index].lowerBound)..<max(merged.upperBound, ranges[index].upperBound)
            bytes -= ranges[index].count
        }
        ranges.replaceSubrange(first..<last, with: [merged])
        bytes += merged.count
    }

    /// The function settled its frames in order through `offset`: nothing
    /// before it needs a range.
    mutating func settled(through offset: Int) {
        guard let head = ranges.first, head.lowerBound < offset else { return }
        let passed = firstIndex { $0.upperBound > offset }
        for index in 0..<passed { bytes -= ranges[index].count }
        ranges.removeFirst(passed)
        if let head = ranges.first, head.lowerBound < offset {
            bytes -= offset - head.lowerBound
            ranges[0] = offset..<head.upperBound
        }
    }

    /// Whether the frame written at `frame` is wholly inside a range.
    func contains(_ frame: Range<Int>) -> Bool {
        let index = firstIndex { $0.upperBound >= frame.upperBound }
        return index < ranges.count && ranges[index].lowerBound <= frame.lowerBound
    }

    /// The first index whose range satisfies `predicate`, which holds from some index on (binary search).
    private func firstIndex(where predicate: (Range<Int>) -> Bool) -> Int {
        var (low, high) = (0, ranges.count)
        while low < high {
            let middle = (low + high) / 2
            if predicate(ranges[middle]) { high = middle } else { low = middle + 1 }
        }
        return low
    }
}
