import Testing
@testable import YoMoQUIC

/// The loop's polling after it hands received data over: the answer (a
/// forward, a reply) runs without waking the loop, and no task is lost
/// whether it arrives while the loop polls, as polling ends, or after.
@Suite struct EventLoopPollingTests {
    @Test func pollingComesFromTheEnvironment() {
        #expect(LoopPolling(window: nil, trigger: nil) == LoopPolling(nanoseconds: 50_000, trigger: .afterHandOff))
        #expect(LoopPolling(window: "0", trigger: nil).nanoseconds == 0)
        #expect(LoopPolling(window: "20", trigger: "answers") == LoopPolling(nanoseconds: 20_000, trigger: .afterHandOff))
        #expect(LoopPolling(window: "5000", trigger: "always") == LoopPolling(nanoseconds: 1_000_000, trigger: .afterAnyWork))
        // Typos fall back to the defaults (and say so on stderr).
        #expect(LoopPolling(window: "fast", trigger: "sometimes") == LoopPolling(nanoseconds: 50_000, trigger: .afterHandOff))
    }

    @Test func pollingBacksOffWhereNothingAnswersAndComesBackOnAnAnswer() {
        var backoff = PollBackoff()
        for _ in 0..<PollBackoff.missLimit {
            let polls = backoff.shouldPoll()
            #expect(polls)
            backoff.record(answered: false)
        }
        // Backed off: one poll in `probeEvery` chances.
        var polls = 0
        for _ in 0..<(PollBackoff.probeEvery * 4) where backoff.shouldPoll() {
            polls += 1
            backoff.record(answered: false)
        }
        #expect(polls == 4)
        // A probe that is answered ends the back-off.
        while !backoff.shouldPoll() {}
        backoff.record(answered: true)
        #expect(backoff.misses == 0)
        let pollsAgain = backoff.shouldPoll()
        #expect(pollsAgain)
    }

    /// Rounds of "data handed over on the loop thread, then an answer from
    /// another thread", as a connection's reader and its writer make them.
    /// Returns how many wake-ups the answers needed.
    private func answerWakeUps(pollWindow: UInt64, rounds: Int) async -> Int {
        let loop = QUICEventLoop(name: "yomo-poll-test", polling: LoopPolling(nanoseconds: pollWindow, trigger: .afterHandOff))
        defer { loop.shutdownAndWait() }
        var answerWakeUps = 0
        for _ in 0..<rounds {
            await onLoop(loop) { loop.expectAnswer() }
            let before = loop.wakeUpCount
            // Hangs (and the time limit fails the test) if a wake-up is lost.
            await onLoop(loop) {}
            answerWakeUps += loop.wakeUpCount - before
        }
        return answerWakeUps
    }

    @Test(.timeLimit(.minutes(1)))
    func answersWhileThePollRunsNeedNoWakeUp() async {
        // A 1 ms window: answers from a resumed task come well within it.
        let wakeUps = await answerWakeUps(pollWindow: 1_000_000, rounds: 200)
        #expect(wakeUps < 200, "every answer woke the loop: polling never took one")
    }

    @Test(.timeLimit(.minutes(1)))
    func answersAsThePollEndsOrAfterItAreNotLost() async {
        // A 1 µs window ends around the time the answers come: each either
        // sees the loop polling or wakes it; none may be left queued.
        let wakeUps = await answerWakeUps(pollWindow: 1_000, rounds: 500)
        #expect(wakeUps <= 500)
    }

    @Test(.timeLimit(.minutes(1)))
    func withoutPollingEveryAnswerWakesTheLoop() async {
        #expect(await answerWakeUps(pollWindow: 0, rounds: 100) == 100)
    }
}

/// A loop as a task executor: what the zipper routes on.
@Suite struct EventLoopExecutorTests {
    @Test(.timeLimit(.minutes(1)))
    func tasksThatPreferALoopRunOnItsThreadAndQueueWorkWithoutWakingIt() async {
        let loop = QUICEventLoop(name: "yomo-executor-test", polling: .off)
        defer { loop.shutdownAndWait() }
        let (onLoopThread, wakeUps) = await withTaskExecutorPreference(loop) { () async -> (Bool, Int) in
            await Task.yield()
            let before = loop.wakeUpCount
            // Work handed to the loop from its own thread, and the task resumed there.
            for _ in 0..<10 { await onLoop(loop) {} }
            return (loop.inLoop, loop.wakeUpCount - before)
        }
        #expect(onLoopThread)
        #expect(wakeUps == 0)
        // Outside the preference, work from another thread wakes the loop.
        let before = loop.wakeUpCount
        await onLoop(loop) {}
        #expect(loop.wakeUpCount - before == 1)
    }

    @Test(.timeLimit(.minutes(1)))
    func aStoppedLoopStillFinishesTheTasksThatPreferIt() async {
        let loop = QUICEventLoop(name: "yomo-executor-stopped", polling: .off)
        loop.shutdownAndWait()
        // Hangs (and the time limit fails the test) if the job is dropped.
        let finished = await withTaskExecutorPreference(loop) { () async -> Bool in
            await Task.yield()
            return true
        }
        #expect(finished)
    }
}
