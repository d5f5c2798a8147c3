/// When to log an event that may come in bursts: at once, then at most every
/// `interval`, with how many times it came since it was last said.
struct SaidAtMostEvery {
    let interval: Duration
    private var lastSaid: ContinuousClock.Instant?
    private var since = 0

    init(_ interval: Duration) { self.interval = interval }

    /// Counts one event at `now`: how many to say now (this one included), or
    /// nil within `interval` of the last line.
    mutating func event(at now: ContinuousClock.Instant) -> Int? {
        since += 1
        guard lastSaid.map({ now - $0 >= interval }) ?? true else { return nil }
        defer { (lastSaid, since) = (now, 0) }
        return since
    }
}
