import Testing

@testable import YoMoQUIC

/// The verdict at the acknowledgement that ends a stall on trial. The netns
/// tests (`pathMTUBlackHole`, `pathDownAndBack`) are the proof on real paths;
/// these pin the arithmetic at the times those runs measured.
@Suite("A stall's trial of smaller datagrams")
struct SmallerDatagramTrialTests {
    private let millisecond: UInt64 = 1_000_000
    private let pto: UInt64 = 30_000_000

    private func trial(firstDataSentAt: UInt64, acknowledgedAt: UInt64) -> SmallerDatagramTrial {
        var trial = SmallerDatagramTrial(from: 1444, limitBefore: .max, stalled: .seconds(1))
        trial.firstDataSentAt = firstDataSentAt
        trial.acknowledgedAt = acknowledgedAt
        return trial
    }

    @Test("acknowledged within 3 PTO of the first smaller datagram, as behind a black hole: they get through")
    func acknowledgedAtOnce() {
        let sent = 5_000 * millisecond
        #expect(trial(firstDataSentAt: sent, acknowledgedAt: sent + 4 * millisecond).smallerDatagramsGotThrough(pto: pto))
        #expect(trial(firstDataSentAt: sent, acknowledgedAt: sent + 3 * pto).smallerDatagramsGotThrough(pto: pto))
    }

    @Test("acknowledged seconds after the first smaller datagram, as when a path that was down comes back: lost as well")
    func acknowledgedLate() {
        let sent = 5_000 * millisecond
        #expect(!trial(firstDataSentAt: sent, acknowledgedAt: sent + 2_006 * millisecond).smallerDatagramsGotThrough(pto: pto))
        #expect(!trial(firstDataSentAt: sent, acknowledgedAt: sent + 3 * pto + 1).smallerDatagramsGotThrough(pto: pto))
    }

    @Test("acknowledged before any smaller datagram went out: what was sent before the trial got through, not a black hole")
    func acknowledgedBeforeAnySent() {
        let acknowledged = 9_000 * millisecond
        #expect(!trial(firstDataSentAt: 0, acknowledgedAt: acknowledged).smallerDatagramsGotThrough(pto: pto))
        #expect(!trial(firstDataSentAt: acknowledged + 1, acknowledgedAt: acknowledged).smallerDatagramsGotThrough(pto: pto))
    }
}
