import Synchronization
import Testing

@testable import YoMoQUIC

/// The verdict at the acknowledgement that ends a stall on trial: the
/// arithmetic at the times the netns runs measured, and a trial on loopback
/// whose path goes down both ways. The netns tests (`pathMTUBlackHole`,
/// `pathDownAndBack`) are the proof on real paths.
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

    /// A trial started just as the path went down both ways, as the claim
    /// inside an outage was (quic.md): its datagrams with data went into the
    /// outage, and its first acknowledgement comes once the path is back,
    /// long after them. Before, the trial counted from that acknowledgement,
    /// found the small datagrams all got through and said the path drops big
    /// ones, for the connection's life.
    @Test("a trial whose first datagrams went into an outage ends when the path is back: the size goes back, nothing is said")
    func outageEndsTheTrial() async throws {
        let server = try await EchoServer()
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: server.port)
        let lowered = Mutex<[QUICConnection.DatagramSizeLowered]>([])
        connection.onDatagramSizeLowered { event in lowered.withLock { $0.append(event) } }
        let tried = Mutex<[QUICConnection.SmallerDatagramsTried]>([])
        connection.onSmallerDatagramsTried { event in tried.withLock { $0.append(event) } }
        let core = connection.core
        #expect(try await Fixture.echo(connection, total: 1 << 20) == 1 << 20)
        #expect(await until { connection.statistics.maximumDatagramSize > ConnectionCore.minimumDatagramSize }, "Path MTU Discovery on loopback")

        await onLoop(core.loop) {
            core.simulateLossEvery = 1
            core.simulateDeafness = true
            core.startTrialForTesting()
        }
        let echoing = Task { try await Fixture.echo(connection, total: 1 << 20) }
        let intoTheOutage = await until(.seconds(2)) {
            await onLoop(core.loop) { (core.smallerDatagramTrial?.firstDataSentAt ?? 0) != 0 }
        }
        #expect(intoTheOutage, "the trial's first datagram with data went out")
        // The outage: far longer than 3 PTO on loopback (about 25 ms each).
        try await Task.sleep(for: .milliseconds(300))
        await onLoop(core.loop) {
            core.simulateLossEvery = 0
            core.simulateDeafness = false
        }
        #expect(try await echoing.value == 1 << 20)
        let (onTrial, limit) = await onLoop(core.loop) { (core.smallerDatagramTrial != nil, core.datagramLimit) }
        #expect(!onTrial)
        #expect(limit == .max, "back to what Path MTU Discovery confirmed")
        #expect(lowered.withLock { $0 }.isEmpty)
        let told = tried.withLock { $0 }
        #expect(told.count == 1 && told.first?.cause == .pathWasDown && (told.first?.size ?? 0) > ConnectionCore.minimumDatagramSize, "\(told)")
        await connection.close()
        await server.stop()
    }
}
