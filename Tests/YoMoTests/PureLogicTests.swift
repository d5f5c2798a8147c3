import Testing
import NIOCore
import YoMoWire
import Logging

@testable import YoMo
import YoMoZipperYAML
@testable import YoMoQUIC

@Suite("Credentials")
struct CredentialTests {
    @Test("a credential splits at the first colon, untrimmed", arguments: [
        ("token:abc", "token", "abc"),
        ("token:a:b:c", "token", "a:b:c"),
        ("abc", "", "abc"),
        (" token : x ", " token ", " x "),
        (":x", "", "x"),
        ("token:", "token", ""),
    ])
    func split(text: String, name: String, payload: String) {
        let credential = Credential(text)
        #expect(credential.name == name)
        #expect(credential.payload == payload)
        #expect(!credential.description.contains(payload) || payload.isEmpty || payload == " x ")
    }
}

@Suite("A client's reconnection, from its id")
struct ReconnectionIDTests {
    @Test("<base>-<count>: the base (which may hold dashes) and the count; anything else is no reconnection")
    func parse() {
        let parsed = Zipper.reconnection(of: "V1StGXR8_Z5jdHi6B-myT-3")
        #expect(parsed?.base == "V1StGXR8_Z5jdHi6B-myT" && parsed?.count == 3)
        #expect(Zipper.reconnection(of: "abc-0")?.count == 0)
        #expect(Zipper.reconnection(of: "abc") == nil)
        #expect(Zipper.reconnection(of: "-3") == nil)
        #expect(Zipper.reconnection(of: "abc-x") == nil)
        #expect(Zipper.reconnection(of: "abc-") == nil)
    }
}

@Suite("Reconnect policy")
struct ReconnectPolicyTests {
    @Test("the first retry comes within 50–250 ms, later ones grow from 500 ms and stop at 1 s, within the jitter")
    func backoff() {
        var rng = SystemRandomNumberGenerator()
        let policy = ReconnectPolicy.default
        for _ in 0..<200 {
            let first = policy.delay(beforeAttempt: 1, using: &rng).seconds
            #expect((0.05...0.25).contains(first))
            let second = policy.delay(beforeAttempt: 2, using: &rng).seconds
            #expect((0.4...0.6).contains(second))
            let tenth = policy.delay(beforeAttempt: 10, using: &rng).seconds
            #expect((0.8...1.2).contains(tenth))
        }
        // The injected generator decides the draw: the same seed, the same delays.
        var a = SplitMix(seed: 7), b = SplitMix(seed: 7)
        for attempt in 1...5 {
            #expect(policy.delay(beforeAttempt: attempt, using: &a) == policy.delay(beforeAttempt: attempt, using: &b))
        }
        let noJitter = ReconnectPolicy(
            firstRetryDelay: .milliseconds(10) ... .milliseconds(10), initialDelay: .milliseconds(100),
            maximumDelay: .seconds(1), multiplier: 3, jitter: 0)
        #expect(noJitter.delay(beforeAttempt: 1, using: &rng) == .milliseconds(10))
        #expect(noJitter.delay(beforeAttempt: 2, using: &rng) == .milliseconds(100))
        #expect(noJitter.delay(beforeAttempt: 4, using: &rng) == .milliseconds(900))
        #expect(noJitter.delay(beforeAttempt: 5, using: &rng) == .seconds(1))
        #expect(noJitter.delay(beforeAttempt: 1000, using: &rng) == .seconds(1))
    }

    @Test("fields set after init to anything give a delay, never a trap: negative is 0, beyond Int64 nanoseconds saturates")
    func extremeFields() {
        var rng = SplitMix(seed: 3)
        var negative = ReconnectPolicy()
        negative.initialDelay = .seconds(-1)
        negative.maximumDelay = .seconds(-1)
        // The delay that trapped: -1 s times 2^62 is below Int64.min nanoseconds.
        for attempt in [2, 40, 64, 1000] { #expect(negative.delay(beforeAttempt: attempt, using: &rng) == .zero) }
        var huge = ReconnectPolicy()
        huge.maximumDelay = .seconds(Int64.max / 2)
        huge.jitter = 0
        #expect(huge.delay(beforeAttempt: 200, using: &rng) == .seconds(9_000_000_000))
        var nonsense = ReconnectPolicy()
        nonsense.multiplier = .nan
        nonsense.jitter = 7
        #expect(nonsense.delay(beforeAttempt: 5, using: &rng) == .zero)
        #expect(negative.validate() != nil && huge.validate() == nil && nonsense.validate() != nil)
    }
}

/// A seeded generator (SplitMix64): reproducible draws for tests.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("Schedules")
struct ScheduleTests {
    @Test("Go durations parse", arguments: [
        ("1s", Duration.seconds(1)), ("500ms", .milliseconds(500)), ("1m30s", .seconds(90)),
        ("1.5h", .seconds(5400)), ("250us", .microseconds(250)), ("2h0m1s", .seconds(7201)),
    ])
    func every(text: String, duration: Duration) throws {
        let schedule = try Schedule("@every \(text)")
        #expect(schedule.interval == duration)
    }

    @Test("bad schedules say what is wrong", arguments: [
        ("@every", "5 fields"),
        ("@every 10", "is not a duration"),
        ("@every 5x", "is not a duration"),
        ("@every 0s", "must be positive"),
        ("* * * *", "found 4"),
        ("60 * * * *", "minute field \"60\" has 60 outside 0-59"),
        ("* * * FOO *", "has \"FOO\", not a number"),
        ("5-1 * * * *", "runs backwards"),
        ("*/0 * * * *", "not a positive number"),
    ])
    func invalid(text: String, expected: String) {
        let error = #expect(throws: YoMoError.self) { try Schedule(text) }
        #expect(error?.message.contains(expected) == true, "got: \(error?.message ?? "nothing")")
        #expect(error?.code == .invalidSchedule)
    }

    /// 2026-11-25T13:07:30Z, a Wednesday.
    static let now: Int64 = 1_795_612_050

    @Test("cron lines fire at the next matching minute (UTC)", arguments: [
        ("* * * * *", "2026-11-25 13:08"),
        ("*/15 * * * *", "2026-11-25 13:15"),
        ("0 * * * *", "2026-11-25 14:00"),
        ("30 9 * * *", "2026-11-26 09:30"),
        ("0 0 1 * *", "2026-12-01 00:00"),
        ("0 0 * * SUN", "2026-11-29 00:00"),
        ("0 0 * * 7", "2026-11-29 00:00"),
        ("0 12 * * MON-FRI", "2026-11-26 12:00"),
        ("0 0 29 2 *", "2028-02-29 00:00"),
        ("0 0 1 JAN *", "2027-01-01 00:00"),
        ("@hourly", "2026-11-25 14:00"),
        ("@weekly", "2026-11-29 00:00"),
        ("0 0 13 * FRI", "2026-11-27 00:00"),  // either day field matches when both are set
        ("5,10 13 * * *", "2026-11-25 13:10"),
    ])
    func nextFire(line: String, expected: String) throws {
        let schedule = try Schedule(line)
        let fire = try #require(schedule.nextFire(afterUnixSeconds: Self.now))
        #expect(Self.format(fire) == expected)
    }

    @Test("an impossible date never fires")
    func impossible() throws {
        #expect(try Schedule("0 0 31 2 *").nextFire(afterUnixSeconds: Self.now) == nil)
    }

    static func format(_ seconds: Int64) -> String {
        let days = seconds.floorDivided(by: 86_400)
        let (year, month, day) = civilDate(daysSinceEpoch: days)
        let minuteOfDay = (seconds - days * 86_400) / 60
        func two(_ value: Int) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(year)-\(two(month))-\(two(day)) \(two(Int(minuteOfDay / 60))):\(two(Int(minuteOfDay % 60)))"
    }
}

@Suite("Zipper routing rules")
struct RouteTableTests {
    static func sfn(_ id: UInt64, _ name: String, tags: Set<UInt32>, target: String = "") -> RouteMember {
        RouteMember(connectionID: id, name: name, clientID: "c\(id)", clientType: .streamFunction, observedTags: tags, wantedTarget: target)
    }

    @Test("every observer gets the frame, same-name instances too; sources get nothing")
    func fanOut() {
        var table = RouteTable()
        table.add(Self.sfn(1, "upper", tags: [0x33]))
        table.add(Self.sfn(2, "upper", tags: [0x33, 0x34]))
        table.add(Self.sfn(3, "other", tags: [0x34]))
        table.add(RouteMember(connectionID: 4, name: "src", clientID: "s", clientType: .source, observedTags: [0x33], wantedTarget: ""))
        #expect(table.destinations(tag: 0x33, target: nil) == [1, 2])
        #expect(table.destinations(tag: 0x34, target: nil) == [2, 3])
        #expect(table.destinations(tag: 0x35, target: nil) == [])
        table.remove(1)
        #expect(table.destinations(tag: 0x33, target: nil) == [2])
        table.remove(2)
        #expect(table.destinations(tag: 0x33, target: "") == [])
    }

    @Test("a target reaches only the functions that want it")
    func target() {
        var table = RouteTable()
        table.add(Self.sfn(1, "f", tags: [0x33], target: "alice"))
        table.add(Self.sfn(2, "f", tags: [0x33], target: "bob"))
        table.add(Self.sfn(3, "f", tags: [0x33]))
        #expect(table.destinations(tag: 0x33, target: "bob") == [2])
        #expect(table.destinations(tag: 0x33, target: "carol") == [])
        #expect(table.destinations(tag: 0x33, target: nil) == [1, 2, 3])
    }

    @Test("reserved tags are 0xF000-0xFFFF")
    func reserved() {
        #expect(RouteTable.isReserved(0xF000))
        #expect(RouteTable.isReserved(0xFFFF))
        #expect(!RouteTable.isReserved(0xEFFF))
        #expect(!RouteTable.isReserved(0x1_0000))
        #expect(!RouteTable.isReserved(0xE001))
    }

    @Test("tokens compare equal exactly when their bytes are equal")
    func tokenComparison() {
        #expect(constantTimeEqual("secret", "secret"))
        #expect(constantTimeEqual("", ""))
        for (a, b) in [("secret", "secreT"), ("secret", "secre"), ("secre", "secret"), ("", "x"), ("é", "e"), ("ab", "ba")] {
            #expect(!constantTimeEqual(a, b), "\(a) \(b)")
        }
    }

    @Test("handshakes are checked for version, then authentication, with Go's messages")
    func authority() {
        let authority = HandshakeAuthority(version: "2024-01-03", authentication: .token("secret"))
        var handshake = HandshakeFrame(name: "f", id: "x-0", clientType: .streamFunction, authName: "token", authPayload: "secret", version: "2024-01-03")
        #expect(authority.rejection(for: handshake) == nil)
        handshake.authPayload = "wrong"
        // Go's message to the client; the zipper's log names no token.
        #expect(authority.rejection(for: handshake)?.message == "invalid token: wrong")
        #expect(authority.rejection(for: handshake)?.logged == "invalid token (5 bytes)")
        for nearMiss in ["secre", "secret ", "Secret", "", "secreT"] {
            handshake.authPayload = nearMiss
            #expect(authority.rejection(for: handshake) != nil, "\(nearMiss)")
        }
        handshake.authName = "jwt"
        #expect(authority.rejection(for: handshake) == .init("authentication not found: jwt"))
        handshake.version = "2023-01-01"
        #expect(authority.rejection(for: handshake) == .init("version negotiation failed: client=2023-01-01, server=2024-01-03"))
        let open = HandshakeAuthority(version: "2024-01-03", authentication: nil)
        handshake.version = "2024-01-03"
        #expect(open.rejection(for: handshake) == nil)
    }
}

@Suite("Zipper configuration")
struct ZipperConfigurationTests {
    @Test("the Go zipper's YAML reads")
    func yaml() throws {
        let config = try ZipperConfiguration(yaml: """
            name: edge
            host: 0.0.0.0
            port: 9100
            auth:
              type: token
              token: Z2FyZmllbGQ=
            """)
        #expect(config.name == "edge")
        #expect(config.host == "0.0.0.0")
        #expect(config.port == 9100)
        #expect(config.authentication == .token("Z2FyZmllbGQ="))
        #expect(try ZipperConfiguration(yaml: "").port == 9000)
    }

    @Test("bad configs say what is wrong", arguments: [
        ("port: 70000", "port must be a number from 1 to 65535"),
        ("auth: {type: jwt}", "auth type \"jwt\" is not supported"),
        ("auth: {type: token}", "needs a non-empty token"),
        ("- a\n- b", "must be a YAML mapping"),
        ("name: [", "not valid YAML"),
    ])
    func invalid(yaml: String, expected: String) {
        let error = #expect(throws: YoMoError.self) { try ZipperConfiguration(yaml: yaml) }
        #expect(error?.message.contains(expected) == true, "got: \(error?.message ?? "nothing")")
    }
}

@Suite("Tags")
struct TagTests {
    @Test("tags parse as hex or decimal", arguments: [("0x33", UInt32(0x33)), ("0X34", 0x34), ("51", 51), ("0xFFFFFFFF", .max)])
    func parse(text: String, value: UInt32) { #expect(UInt32(yomoTag: text) == value) }

    @Test("anything else is not a tag", arguments: ["", "0x", "x33", "-1", "0x1FFFFFFFF", "3.5"])
    func reject(text: String) { #expect(UInt32(yomoTag: text) == nil) }
}

@Suite("Service name of the provider made from the environment")
struct ServiceNameTests {
    @Test func theClientsNameUnlessOTELServiceNameIsSet() async throws {
        let base = ["OTEL_TRACES_EXPORTER": "console"]
        let (_, named) = DataPathTracer.resolve(nil, serviceName: "upper", scope: "StreamFunction", environment: base)
        var overridden = base
        overridden["OTEL_SERVICE_NAME"] = "orders-upper"
        let (_, renamed) = DataPathTracer.resolve(nil, serviceName: "upper", scope: "StreamFunction", environment: overridden)
        let namedProvider = try #require(named)
        let renamedProvider = try #require(renamed)
        #expect(namedProvider.resource.serviceName == "upper")
        #expect(renamedProvider.resource.serviceName == "orders-upper")
        await namedProvider.shutdown()
        await renamedProvider.shutdown()
    }
}

@Suite("Outage buffer")
struct OutageBufferTests {
    func frame(_ byte: UInt8, size: Int = 1) -> DataFrame {
        DataFrame(tag: 1, payload: ByteBuffer(bytes: [UInt8](repeating: byte, count: size)))
    }

    @Test("holds frames in order up to the frame limit, logs once per outage and once per burst of refusals")
    func frameLimit() {
        var buffer = OutageBuffer(maximumFrames: 3, maximumBytes: 1 << 20)
        #expect(buffer.admit(frame(0)) == .buffered(firstOfOutage: true))
        #expect(buffer.admit(frame(1)) == .buffered(firstOfOutage: false))
        #expect(buffer.admit(frame(2)) == .buffered(firstOfOutage: false))
        #expect(buffer.admit(frame(3)) == .full(firstOfBurst: true))
        #expect(buffer.admit(frame(4)) == .full(firstOfBurst: false))
        #expect(buffer.statistics.pendingFrames == 3)
        #expect(buffer.statistics.dropped == 2)

        let taken = buffer.takeWaiting()
        #expect(taken.map { $0.frame.payload.getInteger(at: 0, as: UInt8.self) } == [0, 1, 2])
        #expect(buffer.statistics.pendingFrames == 0 && buffer.statistics.pendingBytes == 0)
        // A new connection failed after the first was written: the rest go back in
        // front of a write made meanwhile.
        #expect(buffer.admit(frame(5)) == .buffered(firstOfOutage: false))
        buffer.delivered(1)
        buffer.putBack(taken[1...])
        let again = buffer.takeWaiting()
        #expect(again.map { $0.frame.payload.getInteger(at: 0, as: UInt8.self) } == [1, 2, 5])
        #expect(again.prefix(2).map(\.since) == taken[1...].map(\.since), "put back as they waited")
        buffer.delivered(3)
        #expect(buffer.endOutage() == (buffered: 4, dropped: 2))
        #expect(buffer.admit(frame(6)) == .buffered(firstOfOutage: true), "a new outage logs again")
        #expect(buffer.statistics.buffered == 5 && buffer.statistics.delivered == 4)
        // The client ends: what is handed over counts as dropped only once nobody keeps it.
        #expect(buffer.handOverAll().count == 1)
        #expect(buffer.statistics.dropped == 2)
        buffer.countDropped(1)
        #expect(buffer.statistics.dropped == 3)
    }

    @Test("a mesh link's buffer admits new frames beside those put back (sent again after a lost connection), up to its limits: a refusal there is a drop; a client's counts them, pushing back on its writer")
    func admitsBesidesPutBack() {
        for besides in [true, false] {
            var buffer = OutageBuffer(maximumFrames: 2, maximumBytes: 1 << 20, admitsBesidesPutBack: besides)
            // Each with its write's number, which a connection that carries it records.
            buffer.resend([(frame(0), 10), (frame(1), 11), (frame(2), 12)])
            #expect(buffer.admit(frame(3), sequence: 13) == (besides ? .buffered(firstOfOutage: true) : .full(firstOfBurst: true)), "\(besides)")
            #expect(buffer.admit(frame(4), sequence: 14) == (besides ? .buffered(firstOfOutage: false) : .full(firstOfBurst: false)), "\(besides)")
            #expect(buffer.admit(frame(5)) == .full(firstOfBurst: besides), "new frames held to the limit: \(besides)")
            // The zipper had routed the first already: not sent again, and no room made for new frames.
            #expect(buffer.takeRouted(1).map(\.sequence) == [10])
            #expect(buffer.admit(frame(6)) == .full(firstOfBurst: false))
            let waiting = buffer.takeWaiting()
            let taken = waiting.map { $0.frame.payload.getInteger(at: 0, as: UInt8.self) }
            #expect(taken == (besides ? [1, 2, 3, 4] : [1, 2]), "\(besides)")
            // What each frame's span ("client outage") says: sent again, or written meanwhile.
            #expect(waiting.map(\.resent) == (besides ? [true, true, false, false] : [true, true]), "\(besides)")
            #expect(waiting.map(\.sequence) == (besides ? [11, 12, 13, 14] : [11, 12]), "\(besides)")
            #expect(buffer.admit(frame(7)) == .buffered(firstOfOutage: !besides), "room again once taken: \(besides)")
        }
    }

    @Test("the byte limit holds; a limit of 0 disables holding")
    func byteLimitAndDisabled() {
        let size = frame(0, size: 100).encodedLength
        var buffer = OutageBuffer(maximumFrames: 1000, maximumBytes: 2 * size)
        #expect(buffer.admit(frame(0, size: 100)) == .buffered(firstOfOutage: true))
        #expect(buffer.admit(frame(1, size: 100)) == .buffered(firstOfOutage: false))
        #expect(buffer.admit(frame(2, size: 100)) == .full(firstOfBurst: true))
        #expect(buffer.statistics.pendingBytes == 2 * size)

        for limits in [(0, 1 << 20), (1000, 0)] {
            var off = OutageBuffer(maximumFrames: limits.0, maximumBytes: limits.1)
            #expect(off.admit(frame(0)) == .disabled(firstOfBurst: true))
            #expect(off.admit(frame(0)) == .disabled(firstOfBurst: false))
            #expect(off.statistics.dropped == 2 && off.isEmpty)
        }
    }
}

@Suite("Client lifecycle state machine")
struct ClientLifecycleTests {
    typealias Machine = ClientLifecycle<SplitMix>
    let policy = ReconnectPolicy(maximumAttempts: 3)

    func machine(retryInitialConnect: Bool = false, policy: ReconnectPolicy? = nil) -> Machine {
        Machine(policy: policy ?? self.policy, retryInitialConnect: retryInitialConnect, random: SplitMix(seed: 42))
    }

    /// The delays a policy draws from the same seed, to compare with the machine's.
    func expectedDelays(_ policy: ReconnectPolicy, attempts: ClosedRange<Int>) -> [Duration] {
        var random = SplitMix(seed: 42)
        return attempts.map { policy.delay(beforeAttempt: $0, using: &random) }
    }

    @Test("connect, serve, lose the connection, redial quickly with the injected randomness, serve again")
    func reconnect() {
        var m = machine()
        #expect(m.start() == .dial)
        #expect(m.start() == .none, "a second start does nothing")
        #expect(m.state == .connecting(attempt: 1))
        #expect(m.dialSucceeded() == .serve)
        #expect(m.state == .serving)
        let delays = expectedDelays(policy, attempts: 1...2)
        #expect(m.connectionLost(final: false) == .dialAfter(delays[0]))
        #expect((Duration.milliseconds(50) ... Duration.milliseconds(250)).contains(delays[0]), "the first redial is quick")
        #expect(m.state == .reconnecting(attempt: 1))
        #expect(m.waitEnded() == .dial)
        #expect(m.dialFailed(final: false) == .dialAfter(delays[1]))
        #expect(m.state == .reconnecting(attempt: 2))
        #expect(m.waitEnded() == .dial)
        #expect(m.dialSucceeded() == .serve)
        #expect(m.state == .serving)
    }

    @Test("redials give up after maximumAttempts failures in a row; a final error ends at once")
    func givingUp() {
        var m = machine()
        _ = m.start()
        _ = m.dialSucceeded()
        _ = m.connectionLost(final: false)
        _ = m.dialFailed(final: false)  // attempt 1 failed: attempt 2 is due
        _ = m.dialFailed(final: false)  // attempt 2 failed: attempt 3 is due
        #expect(m.dialFailed(final: false) == .end(.gaveUp(attempts: 3)))
        #expect(m.state == .closed)

        var rejected = machine()
        _ = rejected.start()
        _ = rejected.dialSucceeded()
        _ = rejected.connectionLost(final: false)
        #expect(rejected.dialFailed(final: true) == .end(.failed))

        var told = machine()
        _ = told.start()
        _ = told.dialSucceeded()
        #expect(told.connectionLost(final: true) == .end(.failed), "the zipper closed with a reason: no redial")
        #expect(told.state == .closed)
    }

    @Test("the first connect retries only when asked to, and never a final error")
    func initialConnect() {
        var once = machine()
        _ = once.start()
        #expect(once.dialFailed(final: false) == .end(.failed))

        var retrying = machine(retryInitialConnect: true)
        _ = retrying.start()
        let delays = expectedDelays(policy, attempts: 1...2)
        #expect(retrying.dialFailed(final: false) == .dialAfter(delays[0]))
        #expect(retrying.state == .connecting(attempt: 2))
        #expect(retrying.waitEnded() == .dial)
        #expect(retrying.dialFailed(final: false) == .dialAfter(delays[1]))
        #expect(retrying.dialFailed(final: false) == .end(.failed), "maximumAttempts covers the first connect too")

        var refused = machine(retryInitialConnect: true)
        _ = refused.start()
        #expect(refused.dialFailed(final: true) == .end(.failed))
    }

    @Test("close while serving drains; while waiting to redial it cancels the wait; before start it ends")
    func closing() {
        var serving = machine()
        _ = serving.start()
        _ = serving.dialSucceeded()
        #expect(serving.closeRequested() == .stopReading)
        #expect(serving.state == .draining && serving.isClosing)
        #expect(serving.closeRequested() == .none, "closing twice is harmless")
        #expect(serving.connectionLost(final: false) == .end(.closed), "the stopped reader ends: close, no redial")
        #expect(serving.state == .closed)

        var waiting = machine()
        _ = waiting.start()
        _ = waiting.dialSucceeded()
        _ = waiting.connectionLost(final: false)
        #expect(waiting.closeRequested() == .cancelWait)
        #expect(waiting.waitEnded() == .end(.closed))

        var dialling = machine()
        _ = dialling.start()
        _ = dialling.dialSucceeded()
        _ = dialling.connectionLost(final: false)
        _ = dialling.waitEnded()
        #expect(dialling.closeRequested() == .cancelWait)
        #expect(dialling.dialSucceeded() == .drain, "a session that came up anyway delivers what is held, then closes")
        #expect(dialling.drained() == .end(.closed))

        var idle = machine()
        #expect(idle.closeRequested() == .end(.closed))
        #expect(idle.start() == .none, "a closed client does not connect again")
    }

    @Test("close while reconnecting with frames held redials on to deliver them, until the deadline")
    func closingWithFramesHeld() {
        func reconnecting() -> Machine {
            var machine = machine()
            _ = machine.start()
            _ = machine.dialSucceeded()
            _ = machine.connectionLost(final: false)
            return machine
        }
        var delivered = reconnecting()
        #expect(delivered.closeRequested(holdingFrames: true) == .deliverBeforeClosing)
        #expect(delivered.state == .delivering(attempt: 1) && delivered.isClosing && !delivered.cancelsDials, "no new work, dials go on")
        #expect(delivered.closeRequested(holdingFrames: true) == .none, "closing twice is harmless")
        #expect(delivered.waitEnded() == .dial)
        if case .dialAfter = delivered.dialFailed(final: false) {} else { Issue.record("a failed dial is retried: \(delivered.state)") }
        #expect(delivered.state == .delivering(attempt: 2))
        #expect(delivered.dialSucceeded() == .drain, "connected: deliver, then close")
        #expect(delivered.state == .draining && delivered.cancelsDials)
        #expect(delivered.stopDelivering() == .none, "the deadline after the reconnect changes nothing here")
        #expect(delivered.drained() == .end(.closed))

        var late = reconnecting()
        _ = late.closeRequested(holdingFrames: true)
        #expect(late.stopDelivering() == .cancelWait, "at the deadline the dial is cancelled")
        #expect(late.state == .draining)
        #expect(late.dialFailed(final: false) == .end(.closed), "the cancelled dial ends the client")

        var refused = reconnecting()
        _ = refused.closeRequested(holdingFrames: true)
        #expect(refused.dialFailed(final: true) == .end(.closed), "a final refusal ends the delivery at once")

        var nothingHeld = reconnecting()
        #expect(nothingHeld.closeRequested(holdingFrames: false) == .cancelWait)

        // Lost under a close (draining): redialled to deliver, until a final end.
        var lost = reconnecting()
        _ = lost.dialSucceeded()
        #expect(lost.lostWhileDraining() == .none, "serving, not closing")
        #expect(lost.closeRequested() == .stopReading)
        #expect(lost.lostWhileDraining() == .deliverBeforeClosing)
        #expect(lost.state == .delivering(attempt: 0) && lost.lostWhileDraining() == .none)
        if case .dialAfter = lost.connectionLost(final: false) {} else { Issue.record("redialled: \(lost.state)") }
        #expect(lost.state == .delivering(attempt: 1))
        #expect(lost.dialSucceeded() == .drain)
        var refusedAfterLoss = reconnecting()
        _ = refusedAfterLoss.dialSucceeded()
        _ = refusedAfterLoss.closeRequested()
        _ = refusedAfterLoss.lostWhileDraining()
        #expect(refusedAfterLoss.connectionLost(final: true) == .end(.closed))
    }
}

@Suite("Zipper routing from the environment")
struct ZipperRoutingSettingTests {
    @Test("YOMO_ZIPPER_ROUTING: loop, pool, unset, or ignored with its value kept")
    func parsing() {
        #expect(Zipper.Routing.fromEnvironment(["YOMO_ZIPPER_ROUTING": "pool"]) == (.pool, nil))
        #expect(Zipper.Routing.fromEnvironment(["YOMO_ZIPPER_ROUTING": "loop"]) == (.loop, nil))
        #expect(Zipper.Routing.fromEnvironment([:]) == (nil, nil))
        #expect(Zipper.Routing.fromEnvironment(["YOMO_ZIPPER_ROUTING": "Pool"]) == (nil, "Pool"))
    }

    @Test("routing set in code is not the environment's; an ignored value is warned about once, by the zipper")
    func warning() {
        #expect(Zipper.Options(routing: .pool).ignoredRoutingSetting == nil)
        let lines = Inbox<String>()
        var options = Zipper.Options(logger: Logger(label: "test.zipper") { _ in CapturingLogHandler(lines: lines) })
        options.ignoredRoutingSetting = "threads"
        options.routing = .loop
        _ = Zipper(configuration: ZipperConfiguration(host: "127.0.0.1", port: 0), options: options)
        let warnings = lines.items.filter { $0.contains("YOMO_ZIPPER_ROUTING") }
        #expect(warnings.count == 1)
        #expect(warnings.first?.hasPrefix("warning YOMO_ZIPPER_ROUTING is neither loop nor pool: ignored") == true)
        #expect(warnings.first?.contains("value=threads") == true && warnings.first?.contains("routing=loop") == true)
    }
}

@Suite("Log lines for events that come in bursts")
struct SaidAtMostEveryTests {
    @Test("the first event is said at once; later ones within the interval are counted and said with the next line")
    func burst() {
        var said = SaidAtMostEvery(.seconds(10))
        let start = ContinuousClock.now
        #expect(said.event(at: start) == 1)
        #expect(said.event(at: start + .seconds(1)) == nil)
        #expect(said.event(at: start + .seconds(9)) == nil)
        #expect(said.event(at: start + .seconds(10)) == 3)
        #expect(said.event(at: start + .seconds(15)) == nil)
        #expect(said.event(at: start + .seconds(30)) == 2)
    }
}

@Suite("How a client takes the end of its connection")
struct ClientEndTests {
    @Test("a zipper's close for a stalled frame is redialled (the frame goes again); other closes with a reason are final")
    func stalledFrameIsRedialled() {
        let stalled = QUICError.closedByPeer(
            application: QUICError.yomoCloseCode,
            reason: "frame stalled: 10 of 6291461 bytes, nothing more for 10.0 seconds while other connections waited for room")
        #expect(!ClientCore.isFinal(stalled, policy: .default))
        #expect(ClientCore.isFinal(QUICError.closedByPeer(application: QUICError.yomoCloseCode, reason: "slow consumer: more than 1 bytes unacknowledged"), policy: .default))
        #expect(!ClientCore.isFinal(QUICError.statelessReset, policy: .default))
        // A Retry token the zipper no longer takes (it restarted in between): dial again.
        #expect(!ClientCore.isFinal(QUICError.closedByPeer(transport: 0xB, reason: ""), policy: .default))
    }

    @Test("a zipper that shuts down (code 0, with or without a reason) is redialled, unless the policy ends the client there as Go's do")
    func zipperShutdownIsRedialled() throws {
        let goAway = ReconnectPolicy(redialsAfterZipperShutdown: false)
        for closed in [QUICError.closedByPeer(application: 0, reason: "zipper shutting down"), QUICError.closedByPeer(application: 0, reason: "")] {
            #expect(!ClientCore.isFinal(closed, policy: .default))
            #expect(ClientCore.isFinal(closed, policy: goAway))
        }
        let described = ClientCore.describe(QUICError.closedByPeer(application: 0, reason: "zipper shutting down"), zipper: try ZipperAddress("127.0.0.1:9000"))
        #expect(described.code == .listenerShutdown)
        #expect(!ClientCore.isFinal(described, policy: .default))
        #expect(ClientCore.isFinal(described, policy: goAway))
        // Rejections and goaways stay final whatever the policy says of shutdowns.
        #expect(ClientCore.isFinal(YoMoError(.rejected, "invalid token"), policy: .default))
        #expect(ClientCore.isFinal(YoMoError(.goaway, "bye"), policy: .default))
    }
}

@Suite("Handlers' admission")
struct HandlerAdmissionTests {
    let one = InFlightCounter.Limits(count: 1, bytes: nil)

    @Test("a frame waiting for the limits is turned away when its connection ends, and so is one that comes to wait after; another connection's frames wait on")
    func connectionEndTurnsAwayItsOwn() async {
        let counter = InFlightCounter()
        let (ended, next) = (counter.newScope(), counter.newScope())
        #expect(await counter.enter(bytes: 0, within: one, scope: ended) == .admitted)
        let waiting = Task { await counter.enter(bytes: 0, within: one, scope: ended) }
        let other = Task { await counter.enter(bytes: 0, within: one, scope: next) }
        counter.interruptAdmissions(scope: ended)
        #expect(await waiting.value == .connectionEnded)
        #expect(await counter.enter(bytes: 0, within: one, scope: ended) == .connectionEnded)
        counter.leave()
        #expect(await other.value == .admitted, "the next connection's frame is let in once a handler leaves")
        #expect(counter.counted.handlers == 1)
    }

    @Test("a close turns a waiting frame away as closing, its connection ended or not")
    func closeComesFirst() async {
        let counter = InFlightCounter()
        let scope = counter.newScope()
        #expect(await counter.enter(bytes: 0, within: one, scope: scope) == .admitted)
        let waiting = Task { await counter.enter(bytes: 0, within: one, scope: scope) }
        counter.stopAdmitting()
        #expect(await waiting.value == .closing)
        counter.interruptAdmissions(scope: scope)
        #expect(await counter.enter(bytes: 0, within: one, scope: scope) == .closing)
    }
}
