import CNGTCP2
import Glibc
import NIOCore
import Synchronization

/// Bytes written by the application, waiting for the loop or for acknowledgement.
struct SendShared {
    var pending: [ByteBuffer] = []
    /// Whether the last pending buffer is ours to append small writes to.
    var lastIsOwned = false
    /// Queued plus unacknowledged bytes: what backpressure is measured on.
    var buffered = 0
    /// Writers waiting for room, by ticket (a cancelled writer removes its own).
    var waiters: [(ticket: UInt64, continuation: CheckedContinuation<QUICError?, Never>)] = []
    var nextTicket: UInt64 = 0
    /// Waiting in `waitUntilEnded`, by ticket.
    var endWaiters: [(ticket: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
    /// Bytes ever queued: the stream offset after the last write.
    var enqueuedTotal = 0
    var flushScheduled = false
    var finRequested = false
    var finSent = false
    /// Waiting in `finishWriting` for everything to be acknowledged.
    var drainWaiters: [CheckedContinuation<QUICError?, Never>] = []
    var error: QUICError?
    /// Writes made of two buffers whose second may begin a buffer of its own
    /// (a big frame's payload after its header), until the peer acknowledged
    /// all of it: if the connection ends while such a second part heads what is
    /// unacknowledged, its first part is needed to make the bytes whole again.
    var splitWrites = CircularBuffer<(secondStart: Int, end: Int, first: ByteBuffer)>()
    /// What the peer had not acknowledged when the connection ended, from the
    /// start of a write (`takeUnacknowledged`).
    var unacknowledgedAtEnd: QUICConnection.Unacknowledged?
    /// Acknowledged bytes kept until the peer's application says it is done
    /// with them (`retainAcknowledged`): nil when acknowledged bytes go at once.
    var retention: Retention?

    /// What the peer's QUIC stack acknowledged and its application has not
    /// released yet: whole buffers, in stream order, the first beginning at
    /// or before `settled`.
    struct Retention {
        var buffers = CircularBuffer<(start: Int, bytes: ByteBuffer)>()
        /// The memory they take: their capacity, not what they hold (a buffer
        /// that gathered small writes may be half empty; counted by content,
        /// a 64 MiB budget took the zipper 110 MiB over its idle size).
        var bytes = 0
        /// Shared with the other connections that retain: this one keeps its
        /// share, its address group's part split among that group's connections.
        let budget: RetentionBudget
        let group: RetentionBudget.Group
        /// The application released everything before this offset.
        var released: Int
        /// Past the share, the oldest buffers went as if released: through here.
        var overflowedThrough = 0
        /// Nothing more goes past the share (`pinRetention`).
        var pinned = false

        /// Where what the peer is done with ends.
        var settled: Int { max(released, overflowedThrough) }

        /// Acknowledged bytes the application had not released that went past the share.
        var givenUp: Int { max(0, overflowedThrough - released) }

        mutating func keep(_ buffer: ByteBuffer, at start: Int) {
            guard start + buffer.readableBytes > released else { return }
            buffers.append((start, buffer))
            bytes += buffer.capacity
            let limit = pinned ? .max : budget.share(of: group)
            while bytes > limit, let first = buffers.popFirst() {
                bytes -= first.bytes.capacity
                overflowedThrough = first.start + first.bytes.readableBytes
            }
        }

        mutating func release(through offset: Int) {
            released = max(released, offset)
            while let first = buffers.first, first.start + first.bytes.readableBytes <= released {
                bytes -= first.bytes.capacity
                buffers.removeFirst()
            }
        }
    }

    /// Small writes are copied together so one packet carries many of them;
    /// big ones are queued as they are (no copy).
    mutating func append(_ buffer: ByteBuffer) {
        let n = buffer.readableBytes
        if n >= 4096 {
            pending.append(buffer)
            lastIsOwned = false
        } else if n > 0 {
            appendEncoded(length: n) { $0.writeImmutableBuffer(buffer) }
        }
    }

    mutating func appendEncoded(length: Int, _ encode: (inout ByteBuffer) -> Void) {
        if lastIsOwned, let last = pending.indices.last, pending[last].writableBytes >= length {
            encode(&pending[last])
        } else {
            // A full buffer is followed by a new one rather than grown: growing
            // copies all it holds, which under a burst cost every byte queued an
            // extra copy. Sized to the data when the queue is empty (a fixed
            // 16 KiB per small write, held until acknowledged, cost a zipper
            // fanning out to hundreds of peers hundreds of megabytes); in a
            // burst, each new buffer doubles the last, so a burst takes a few
            // buffers and at most twice its bytes.
            let previous = lastIsOwned ? pending.last?.capacity ?? 0 : 0
            var b = ByteBufferAllocator().buffer(capacity: max(length, min(previous * 2, Self.coalescingLimit)))
            encode(&b)
            pending.append(b)
            lastIsOwned = true
        }
    }

    /// Queues `n` bytes that `append` adds (writes and `tryWrite`); true when the
    /// loop must be woken to send them.
    mutating func accept(_ n: Int, _ append: (inout SendShared) -> Void) throws(QUICError) -> Bool {
        if let error { throw error }
        if finRequested { throw QUICError.invalidConfiguration("write after finishWriting()") }
        append(&self)
        buffered += n
        enqueuedTotal += n
        return scheduleFlush()
    }

    /// True when no flush was scheduled yet (the caller wakes the loop).
    mutating func scheduleFlush() -> Bool {
        defer { flushScheduled = true }
        return !flushScheduled
    }

    /// Small writes share buffers of up to this size.
    static let coalescingLimit = 65536

    mutating func takeAllWaiters() -> [CheckedContinuation<QUICError?, Never>] {
        defer { waiters = [] }
        return waiters.map(\.continuation)
    }

    /// Removes the drain waiters if everything written (and the FIN) went out and was acknowledged.
    mutating func takeDrainedWaiters() -> [CheckedContinuation<QUICError?, Never>] {
        guard finSent, buffered == 0, !drainWaiters.isEmpty else { return [] }
        defer { drainWaiters = [] }
        return drainWaiters
    }
}

/// Received bytes waiting for the reader.
struct RecvShared {
    var chunks = CircularBuffer<ByteBuffer>()
    var waiter: CheckedContinuation<Result<ByteBuffer?, QUICError>, Never>?
    var finished = false
    var error: QUICError?
    /// Bytes the reader consumed that the loop has not yet returned to the peer as window.
    var consumed = 0
    var extendScheduled = false

    /// Queues received bytes, coalescing packet-sized pieces into chunks of
    /// 64 KiB for the reader (bigger chunks measured slower: fresh pages per
    /// burst outweigh fewer copies).
    mutating func append(_ data: UnsafeRawBufferPointer) {
        guard data.count > 0 else { return }
        // Taken out to grow: CircularBuffer's subscript has no in-place
        // accessor, so writing through it copied the whole chunk (all the bytes
        // received so far in it) for every packet: ~50 KB per 1 KiB frame.
        if var last = chunks.popLast() {
            if last.writableBytes >= data.count {
                last.writeBytes(data)
                chunks.append(last)
                return
            }
            chunks.append(last)
        }
        var chunk = ByteBufferAllocator().buffer(capacity: max(65536, data.count))
        chunk.writeBytes(data)
        chunks.append(chunk)
    }
}

/// `YOMO_QUIC_TRACE=1` prints why connections end to stderr; `YOMO_QUIC_DEBUG=1`
/// adds every packet write and ngtcp2's own log. Empty, `0` and `false` mean off.
let debugFlush = environmentFlag("YOMO_QUIC_DEBUG")
let traceEnabled = environmentFlag("YOMO_QUIC_TRACE") || debugFlush

func environmentFlag(_ name: String) -> Bool {
    guard let raw = getenv(name) else { return false }
    let value = String(cString: raw).lowercased()
    return !(value.isEmpty || value == "0" || value == "false")
}

func trace(_ message: String) {
    let line = "yomo-quic: \(message)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
}

/// One QUIC connection's engine. Everything but the two `Mutex`-guarded shared
/// states is confined to `loop`'s thread.
final class ConnectionCore: LoopSource, NGConnectionDelegate, @unchecked Sendable {
    enum Phase {
        case handshaking
        case established
        /// We closed: answer the peer with the saved CONNECTION_CLOSE until the
        /// deadline (3 PTO), in case the first one was lost.
        case closing(until: UInt64)
        /// The peer closed: stay silent until the deadline.
        case draining(until: UInt64)
        case closed
    }

    let loop: QUICEventLoop
    let fd: Int32
    /// Server connections share the listener's socket and send to `remote`, which
    /// follows the peer when ngtcp2 migrates the path (NAT rebinding).
    private let connectedSocket: Bool
    private(set) var remote: UDPAddress
    /// A server's connection on a listener bound to every address: the
    /// address its client wrote to, which its answers go from.
    var sourceAddress: UDPAddress?
    let isServer: Bool
    let configuration: QUICConfiguration
    private(set) var ng: NGConnection?
    private(set) var phase = Phase.handshaking
    private(set) var streamID: Int64?
    private var deadline = UInt64.max
    private var socketClosed = false
    private var statelessResetReceived = false
    /// ICMP port-unreachable reports since the last datagram from the peer.
    private var refusalsInARow = 0
    /// When the last datagram from the peer arrived.
    private var lastReceivedAt: UInt64 = 0
    /// A client's local address is no longer this host's (`transmit` finds
    /// out when sends fail): the connection ends at the flush's end.
    private var localAddressGone = false
    /// Since when stream bytes sent have waited with no acknowledgement (0:
    /// none waits); `acknowledgedSinceFlush` restarts it.
    private var stalledSince: UInt64 = 0
    private var acknowledgedSinceFlush = false
    /// Datagrams over 1200 bytes sent (only those can fall into a black hole).
    private var bigDatagramsSent = 0
    /// Datagrams big enough to carry data (`dataDatagramSize`): what a
    /// trial of smaller datagrams counts its losses against.
    private var dataDatagramsSent = 0
    /// Consumed bytes are no longer returned to the peer as window (a closing
    /// client); they stay counted in `RecvShared.consumed`, for a thaw.
    private var receiveWindowFrozen = false
    /// During a stall: how many big datagrams had been sent when the peer was
    /// first heard from (nil: not yet heard), and when the first one after
    /// that went out (0: none yet).
    private var bigSentWhenHeard: Int?
    private var bigSentAfterHeardAt: UInt64 = 0
    /// The largest datagram sent, once the path was found to drop bigger
    /// ones (`lowerDatagramLimit`): ngtcp2 0.12.1 confirms a path MTU once
    /// and never lowers it.
    private(set) var datagramLimit = Int.max
    /// The largest datagram the connection sends now: what Path MTU Discovery
    /// confirmed, within `datagramLimit`.
    func datagramSize(_ ng: NGConnection) -> Int { min(ng.maxPacketSize, datagramLimit) }
    /// A stall lowered `datagramLimit` on trial: whether the smaller datagrams
    /// get through tells a path that drops big ones from one that loses
    /// packets of any size (`judgeSmallerDatagrams`).
    private(set) var smallerDatagramTrial: SmallerDatagramTrial?
    /// Told on the loop when `datagramLimit` is lowered.
    var onDatagramLimitLowered: (@Sendable (QUICConnection.DatagramSizeLowered) -> Void)?
    /// Told on the loop when a stall's trial ends without a smaller MTU.
    var onSmallerDatagramsTried: (@Sendable (QUICConnection.SmallerDatagramsTried) -> Void)?
    private var closePacket: [UInt8] = []
    private var packetsInClosing = 0
    private(set) var terminalError: QUICError?

    // Send side (loop thread).
    private var inflight = CircularBuffer<ByteBuffer>()
    /// Acknowledged bytes at the front of `inflight.first`.
    private var ackedInHead = 0
    /// The next unsent byte: buffer index from the head, and offset in it.
    private var sendIndex = 0
    private var sendOffset = 0
    private var finQueued = false
    /// Whether what the peer had not acknowledged is kept when the connection
    /// ends (`takeUnacknowledged`): a server's connections, whose application
    /// (the zipper) sends it again elsewhere. A client keeps its own record of
    /// what to resend; its buffers are not held past the end for nobody.
    var keepsUnacknowledgedAtEnd: Bool
    private var finSent = false
    private var finSentShared = false
    /// Whether `SendShared.retention` is on, read where acknowledgements
    /// arrive without the lock. Set as the retention begins: until the
    /// fifty-second round of issue 14 the loop learned of it from a task,
    /// which ran after its next events, and a burst written meanwhile (the
    /// frames a zipper held for a stream function that came back) was
    /// acknowledged and never kept: a zipper took back none of it at the
    /// function's end (39 frames lost in `yomo-fault-bench chaos --mesh --seed 1`).
    private let retaining = Atomic(false)
    private let vecs = UnsafeMutablePointer<ngtcp2_vec>.allocate(capacity: 32)
    private var readerNeedsWake = false
    /// Datagram trains the kernel refused with EAGAIN, oldest first.
    private var blockedBatches: [(bytes: [UInt8], segment: Int, to: UDPAddress)] = []
    private(set) var blockedSends = 0
    private var simulatedSends = 0
    /// Test hook: pretend every n-th send found the socket buffer full (0 = off).
    var simulateFullSocketEvery = 0
    /// Test hook: silently drop every n-th datagram train, as a lossy path would (0 = off).
    var simulateLossEvery = 0
    private var simulatedLossSends = 0
    /// Test hook: drop every datagram received, as a path down toward us would
    /// (with `simulateLossEvery = 1`, a path down both ways).
    var simulateDeafness = false

    let sendShared = Mutex(SendShared())
    /// Health for metrics: ngtcp2's statistics copied out by the loop now and
    /// then, and byte counters bumped per datagram.
    let healthSnapshot = Mutex(QUICConnection.Statistics())
    let bytesSent = Atomic<Int>(0)
    let bytesReceived = Atomic<Int>(0)
    let datagramsSent = Atomic<Int>(0)
    let datagramsReceived = Atomic<Int>(0)
    private var lastHealthUpdate: UInt64 = 0
    /// Stream bytes the peer acknowledged, in order from the start (ngtcp2 reports
    /// the contiguous prefix). Kept after the connection ends.
    let acknowledgedTotal = Atomic<Int>(0)
    let recvShared = Mutex(RecvShared())

    /// Client: told when the stream is open (or the connect failed).
    var onEstablished: ((Result<Void, QUICError>) -> Void)?
    /// Client: the task that connects was cancelled, possibly before the
    /// connect began on the loop (both run there, in order).
    private(set) var isEstablishingCancelled = false
    /// Server hooks.
    weak var server: ServerCore?
    var routes: Set<ConnectionID> = []
    var countedAsHandshaking = false
    /// While handshaking: the address group a Retry proved, counted among its
    /// handshakes; nil for a handshake counted among those no Retry proved.
    var validatedHandshakeGroup: AddressGroup?
    /// Counted in the server's connections per address: its address's count.
    var countedForHost: EstablishedFromHost?
    /// Its window under the server's receive budget (nil: none, or released).
    var managedWindow: ManagedReceiveWindow?
    /// Server: when a connection that has not opened its stream by then is closed
    /// (a peer that completes the QUIC handshake and stays mute is reaped).
    var streamDeadline = UInt64.max
    /// Server: told once the client opened its stream.
    var onStreamOpened: (() -> Void)?

    init(loop: QUICEventLoop, fd: Int32, connectedSocket: Bool, remote: UDPAddress, isServer: Bool, configuration: QUICConfiguration) {
        self.loop = loop
        self.fd = fd
        self.connectedSocket = connectedSocket
        self.remote = remote
        self.isServer = isServer
        keepsUnacknowledgedAtEnd = isServer
        self.configuration = configuration
    }

    deinit {
        vecs.deallocate()
        if connectedSocket && !socketClosed { close(fd) }
    }

    func attach(_ ng: NGConnection) {
        self.ng = ng
        if let interval = configuration.keepAliveInterval { ng.setKeepAlive(interval.nanoseconds) }
    }

    var peerDescription: String { remote.description }

    // MARK: Loop events

    func loopReadable() {
        let rx = loop.rxBuffer
        var from = sockaddr_storage()
        var fromLength = socklen_t(0)
        var segment = 0
        for _ in 0..<64 {
            let n = cngtcp2_recv(fd, rx.baseAddress!.assumingMemoryBound(to: UInt8.self), rx.count, &from, &fromLength, &segment)
            if n < 0 {
                if -n == EAGAIN || -n == EWOULDBLOCK { break }
                continue  // An ICMP error: the error queue holds it too (`loopError`).
            }
            let address = UDPAddress(storage: from, length: fromLength)
            var offset = 0
            let step = max(1, segment)
            while offset < n {
                let length = min(step, n - offset)
                receive(UnsafeRawBufferPointer(rebasing: rx[offset..<(offset + length)]), from: address)
                offset += length
            }
            if case .closed = phase { return }
        }
        afterReceive()
    }

    /// Called after a burst of datagrams (client socket or server dispatch).
    func afterReceive() {
        wakeReader()
        guard isActive else { return }
        applyExtend()
        flush()
    }

    var isActive: Bool {
        switch phase {
        case .handshaking, .established: return true
        default: return false
        }
    }

    /// One datagram for this connection.
    func receive(_ datagram: UnsafeRawBufferPointer, from address: UDPAddress) {
        if simulateDeafness { return }
        switch phase {
        case .closing:
            // Answer a few more packets with the CONNECTION_CLOSE, then only every 8th.
            packetsInClosing += 1
            if packetsInClosing < 4 || packetsInClosing % 8 == 0 { sendRaw(closePacket) }
            return
        case .draining, .closed:
            return
        case .handshaking, .established:
            break
        }
        guard let ng else { return }
        refusalsInARow = 0
        bytesReceived.add(datagram.count, ordering: .relaxed)
        datagramsReceived.add(1, ordering: .relaxed)
        let now = monotonicNow()
        lastReceivedAt = now
        let outcome = ng.read(datagram, from: address, now: now)
        handle(outcome)
    }

    private func handle(_ outcome: NGOutcome) {
        switch outcome {
        case .ok:
            return
        case .draining:
            guard let ng else { return }
            let error = statelessResetReceived ? QUICError.statelessReset : ng.peerCloseError()
            terminate(error, period: .draining(until: monotonicNow() + 3 * ng.pto))
        case .failed(let error):
            sendClose(application: nil, reason: "")
            terminate(error, period: closingPeriod())
        case .drop(let error):
            terminate(error, period: .closed)
        }
    }

    var loopDeadline: UInt64 { deadline }

    func loopTimerFired(now: UInt64) {
        switch phase {
        case .closing, .draining:
            release()
        case .closed:
            deadline = .max
        case .handshaking, .established:
            if streamID == nil, now >= streamDeadline {
                server?.stats.streamTimeouts.add(1, ordering: .relaxed)
                let timeout = server.map { "\($0.limits.streamOpenTimeout)" } ?? "its deadline"
                closeLocally(code: QUICError.yomoCloseCode, reason: "no stream opened within \(timeout)")
                return
            }
            guard let ng else { return }
            handle(ng.handleExpiry(now: now))
            if isActive { flush() }
        }
    }

    private func updateDeadline() {
        switch phase {
        case .closing(let until), .draining(let until): deadline = until
        case .closed: deadline = .max
        case .handshaking, .established:
            deadline = min(ng?.expiry ?? .max, streamID == nil ? streamDeadline : .max, ng.map(blackHoleDeadline) ?? .max)
        }
    }

    private func closingPeriod() -> Phase {
        .closing(until: monotonicNow() + 3 * (ng?.pto ?? 1_000_000_000))
    }

    // MARK: Sending

    /// Sends what ngtcp2 has: stream data, ACKs, retransmissions, PINGs.
    func flush() {
        // While the socket is full, new packets would only queue up behind the held ones.
        guard isActive, let ng, blockedBatches.isEmpty else { return }
        pullPending()
        let tx = loop.txBuffer
        let now = monotonicNow()
        let maxPacket = min(datagramSize(ng), 65527)
        // Room for a PMTUD probe, or ngtcp2 never sends one and every packet
        // stays at the 1200-byte minimum (none once a black hole was found).
        let room = min(max(ng.maxProbeSize, maxPacket), 65527, datagramLimit)
        let maxPackets = max(1, min(64, ng.sendQuantum / max(maxPacket, 1)))
        var batchLength = 0
        var segment = 0
        var packets = 0
        var streamBlocked = false
        writing: while blockedBatches.isEmpty {
            var count = 0
            var total = 0
            var fin = false
            let useStream: Bool
            if let _ = streamID, !streamBlocked, !finSent {
                var i = sendIndex
                var offset = sendOffset
                while i < inflight.count && count < 32 {
                    let buffer = inflight[inflight.index(inflight.startIndex, offsetBy: i)]
                    let length = buffer.readableBytes - offset
                    if length > 0 {
                        buffer.withUnsafeReadableBytes { raw in
                            vecs[count].base = UnsafeMutablePointer(mutating: raw.baseAddress!.assumingMemoryBound(to: UInt8.self)) + offset
                        }
                        vecs[count].len = length
                        count += 1
                        total += length
                    }
                    i += 1
                    offset = 0
                }
                fin = finQueued && i == inflight.count
                useStream = count > 0 || fin
            } else {
                useStream = false
            }
            let dest = UnsafeMutableRawBufferPointer(rebasing: tx[batchLength..<(batchLength + room)])
            let result = ng.write(
                into: dest, stream: useStream ? streamID : nil, data: useStream ? vecs : nil, count: useStream ? count : 0,
                fin: fin, more: useStream, now: now)
            if debugFlush { trace("flush \(isServer ? "S" : "C") stream=\(useStream) count=\(count) -> \(result)") }
            switch result {
            case .more(let consumed):
                advance(consumed)
                if fin && consumed == total { finSent = true }
            case .packet(let length, let consumed):
                if consumed >= 0 {
                    advance(consumed)
                    if fin && consumed == total { finSent = true }
                }
                if !connectedSocket && !ng.lastPacketGoes(to: remote) {
                    // New path: send what was batched for the old one, then switch.
                    if packets > 0 {
                        sendBatch(tx, length: batchLength, segment: segment)
                        memmove(tx.baseAddress!, tx.baseAddress! + batchLength, length)
                        batchLength = 0
                        packets = 0
                    }
                    remote = ng.lastPacketRemote()
                }
                if packets > 0 && length > segment {
                    // Bigger than the batch's segment size: send the batch, restart with this one.
                    sendBatch(tx, length: batchLength, segment: segment)
                    memmove(tx.baseAddress!, tx.baseAddress! + batchLength, length)
                    batchLength = 0
                    packets = 0
                }
                if packets == 0 { segment = length }
                if length > Self.minimumDatagramSize { bigDatagramsSent &+= 1 }
                if length >= Self.dataDatagramSize { dataDatagramsSent &+= 1 }
                if smallerDatagramTrial?.firstDataSentAt == 0, length >= Self.dataDatagramSize || consumed > 0 {
                    smallerDatagramTrial?.firstDataSentAt = now
                }
                batchLength += length
                packets += 1
                if length < segment || packets >= maxPackets || batchLength + room > tx.count {
                    sendBatch(tx, length: batchLength, segment: segment)
                    batchLength = 0
                    packets = 0
                }
            case .streamBlocked:
                streamBlocked = true
            case .idle:
                break writing
            case .failed(let error):
                if batchLength > 0 { sendBatch(tx, length: batchLength, segment: segment) }
                sendClose(application: nil, reason: "")
                terminate(error, period: closingPeriod())
                return
            }
        }
        if batchLength > 0 { sendBatch(tx, length: batchLength, segment: segment) }
        ng.packetsSent(now: now)
        if localAddressGone {
            // Every send fails from here: the client reconnects from an address
            // it has, at once, instead of at the idle timeout.
            let local = (try? localAddress(of: fd))?.host ?? "?"
            terminate(.socket("local address \(local) gone", errno: EADDRNOTAVAIL), period: .closed)
            return
        }
        watchForBlackHole(ng, now: now)
        if now &- lastHealthUpdate > 100_000_000 {
            lastHealthUpdate = now
            let size = datagramSize(ng)
            healthSnapshot.withLock {
                ng.readStatistics(into: &$0, stream: streamID)
                $0.maximumDatagramSize = size
            }
        }
        updateDeadline()
        if finSent && !finSentShared {
            finSentShared = true
            let drained = sendShared.withLock { s in
                s.finSent = true
                return s.takeDrainedWaiters()
            }
            for w in drained { w.resume(returning: nil) }
        }
    }

    /// Finds a path MTU black hole (RFC 9000 section 14.4): after Path MTU
    /// Discovery confirmed big datagrams, the path shrank (a route through a
    /// tunnel, a link with a smaller MTU) and drops every datagram over its
    /// new size, with no ICMP reaching us, or ignored. ngtcp2 0.12.1 goes on
    /// sending at the confirmed size, so stream data never gets through while
    /// the small packets (ACKs, PINGs) keep the connection alive: before,
    /// writes stalled silently until the connection was closed. Sent bytes
    /// unacknowledged for `blackHoleAfter` while the peer is still heard
    /// from: from then on every datagram is at most 1200 bytes, the size
    /// every QUIC path carries, on trial (`judgeSmallerDatagrams`); once
    /// judged a black hole, kept for the connection's life (a new connection
    /// discovers the path again).
    private func watchForBlackHole(_ ng: NGConnection, now: UInt64) {
        if acknowledgedSinceFlush {
            acknowledgedSinceFlush = false
            restartStall(at: 0)
            if let trial = smallerDatagramTrial, trial.stalled != nil, trial.lostBefore == nil, let streamID {
                if trial.smallerDatagramsGotThrough(pto: ng.pto) {
                    // The acknowledgement that ended the stall also declared the
                    // big datagrams before it lost: the trial counts from here.
                    smallerDatagramTrial?.lostBefore = ng.lossCount(stream: streamID)
                    smallerDatagramTrial?.sentBefore = dataDatagramsSent
                    smallerDatagramTrial?.probeTimeoutsInARow = ng.probeTimeoutsInARow
                } else {
                    endTrial(trial, ng, .pathWasDown)
                }
            }
        }
        if smallerDatagramTrial?.lostBefore != nil { judgeSmallerDatagrams(ng) }
        guard stalledSince != 0 else {
            if sendIndex > 0 || sendOffset > ackedInHead { restartStall(at: now) }
            return
        }
        if bigSentWhenHeard == nil, lastReceivedAt > stalledSince { bigSentWhenHeard = bigDatagramsSent }
        if let heard = bigSentWhenHeard, bigSentAfterHeardAt == 0, bigDatagramsSent > heard { bigSentAfterHeardAt = now }
        guard now >= blackHoleDeadline(ng) else { return }
        let stalled = now &- stalledSince
        // What was lost goes out again at the new size when ngtcp2 next sends.
        restartStall(at: now)
        startTrial(ng, stalled: .nanoseconds(Int64(stalled)))
        server?.smallerDatagramsOnTrial(by: self)
    }

    /// 1200-byte datagrams until the trial is judged (`stalled` nil: another
    /// connection's trial, whose verdict this one takes).
    private func startTrial(_ ng: NGConnection, stalled: Duration?) {
        smallerDatagramTrial = SmallerDatagramTrial(from: datagramSize(ng), limitBefore: datagramLimit, stalled: stalled)
        datagramLimit = Self.minimumDatagramSize
    }

    /// Test hook: the trial a stall of 1 s would start now.
    func startTrialForTesting() {
        guard isActive, let ng else { return }
        startTrial(ng, stalled: .seconds(1))
    }

    /// Another connection to the same host tries smaller datagrams: this one
    /// too, on its verdict.
    func followTrial() {
        guard isActive, let ng, smallerDatagramTrial == nil, datagramSize(ng) > Self.minimumDatagramSize else { return }
        startTrial(ng, stalled: nil)
    }

    /// The trial this connection followed found a lossy path.
    func endFollowedTrial() {
        guard let trial = smallerDatagramTrial, trial.stalled == nil else { return }
        smallerDatagramTrial = nil
        datagramLimit = trial.limitBefore
    }

    /// Random loss stalls a stream too: a lost packet's resend lost again,
    /// and again, while probe timeouts back off (seen at 20 % loss under
    /// CUBIC, 40 % under BBR). So a stall lowers the datagrams only on trial,
    /// and the next `trialDatagrams` sent decide. Under a twentieth of them lost
    /// (or sent again at a probe timeout): the path drops big datagrams only,
    /// and the lowering stands (said, and taken by the server's connections
    /// to the same host that followed it). More: small ones are lost as well,
    /// a lossy path, not a smaller MTU, and the size goes back to what it was.
    /// (A followed trial whose connection ends first stays at 1200 bytes,
    /// unsaid: safe on any path.)
    private func judgeSmallerDatagrams(_ ng: NGConnection) {
        guard let trial = smallerDatagramTrial, let stalled = trial.stalled, let lostBefore = trial.lostBefore, let streamID else {
            return
        }
        // ngtcp2 counts no loss of a packet whose data a probe timeout had
        // already sent again: the timeouts count too.
        let inARow = ng.probeTimeoutsInARow
        let probeTimeouts = trial.probeTimeouts + max(0, inARow - trial.probeTimeoutsInARow)
        smallerDatagramTrial?.probeTimeouts = probeTimeouts
        smallerDatagramTrial?.probeTimeoutsInARow = inARow
        let sent = dataDatagramsSent - trial.sentBefore
        guard sent >= Self.trialDatagrams else { return }
        let lost = ng.lossCount(stream: streamID) - lostBefore + probeTimeouts
        smallerDatagramTrial = nil
        // Under a tenth until the forty-second round of issue 14: a path losing
        // a quarter at random, under CUBIC, now and then showed fewer (losses
        // of the last round trips not yet declared, probe timeouts between
        // samples), taken for a black hole in about one full test run in three.
        if lost * 20 < sent {
            announceLowered(from: trial.from, to: datagramLimit, because: .unacknowledged(for: stalled))
        } else {
            endTrial(trial, ng, .lossyPath(lost: lost, sent: sent))
        }
    }

    /// Not a smaller MTU after all: back to the size before the trial, and
    /// the connections that followed it too.
    private func endTrial(_ trial: SmallerDatagramTrial, _ ng: NGConnection, _ cause: QUICConnection.SmallerDatagramsTried.Cause) {
        smallerDatagramTrial = nil
        datagramLimit = trial.limitBefore
        server?.smallerDatagramsOnTrial(by: self, ended: true)
        onSmallerDatagramsTried?(.init(size: datagramSize(ng), cause: cause))
        if traceEnabled { trace("\(peerDescription): a stall's smaller datagrams found no smaller MTU (\(cause)); back to \(datagramSize(ng)) bytes") }
    }

    private func restartStall(at now: UInt64) {
        stalledSince = now
        bigSentWhenHeard = nil
        bigSentAfterHeardAt = 0
    }

    /// When the stall under way, if any, counts as a black hole: sent bytes
    /// wait, the peer was heard from since they began to, a big datagram was
    /// sent after that and had 3 PTO to be acknowledged, and datagrams are
    /// over 1200 bytes. The datagram sent after the peer was heard tells a
    /// black hole from a path that was down both ways and is back (a link
    /// that flapped, a handover): there ngtcp2's next probe, backed off to
    /// seconds, is acknowledged at once; taken for a black hole before. The
    /// loop's timer wakes for the moment (`updateDeadline`), rather than at
    /// ngtcp2's next probe timeout, which backs off.
    private func blackHoleDeadline(_ ng: NGConnection) -> UInt64 {
        guard stalledSince != 0, bigSentAfterHeardAt != 0, datagramSize(ng) > Self.minimumDatagramSize else {
            return .max
        }
        let pto3 = 3 &* ng.pto
        return max(stalledSince &+ max(Self.blackHoleAfter, pto3), bigSentAfterHeardAt &+ pto3)
    }

    /// An ICMP error (fragmentation needed, packet too big) or the local
    /// interface says a datagram to the peer was too big for an MTU of `mtu`.
    /// Smaller than what Path MTU Discovery confirmed: the path shrank, and
    /// datagrams are kept within it from now on, without waiting for the
    /// stall above. Not smaller: it is about a discovery probe, which ngtcp2
    /// counts as lost on its own. Never below 1200 bytes, so a forged ICMP
    /// error costs at most the bigger datagrams.
    func pathTooBig(mtu: Int) {
        let headers = remote.family == AF_INET6 ? 48 : 28
        if lowerDatagramLimit(to: max(Self.minimumDatagramSize, mtu - headers), because: .tooBig) { flush() }
    }

    /// Sends datagrams of at most `limit` bytes from now on (the next flush),
    /// if that is less than now; true if so. A server's other connections to
    /// the same host follow (the path to it is theirs too, as the kernel's
    /// per-destination MTU cache assumes): each would otherwise stall first.
    @discardableResult
    func lowerDatagramLimit(to limit: Int, because cause: QUICConnection.DatagramSizeLowered.Cause) -> Bool {
        guard isActive, let ng else { return false }
        if let trial = smallerDatagramTrial {
            // Told while on trial (its own, or followed): a datagram was too
            // big after all, unless it was a discovery probe.
            guard limit < trial.from else { return false }
            smallerDatagramTrial = nil
            datagramLimit = min(trial.limitBefore, limit)
            announceLowered(from: trial.from, to: datagramSize(ng), because: cause)
            return true
        }
        let current = datagramSize(ng)
        guard limit < current else { return false }
        datagramLimit = limit
        announceLowered(from: current, to: limit, because: cause)
        return true
    }

    private func announceLowered(from: Int, to limit: Int, because cause: QUICConnection.DatagramSizeLowered.Cause) {
        onDatagramLimitLowered?(.init(from: from, to: limit, cause: cause))
        if cause != .sameHost { server?.datagramLimitLowered(to: limit, by: self) }
    }

    /// A client's socket: its error queue (IP_RECVERR) holds what ICMP said
    /// about its datagrams, one entry each (a receive or send reports only
    /// the latest, and reading the queue clears that). A port unreachable
    /// before the handshake: nobody listens there; after it, a refusal
    /// (`peerRefused`). A datagram too big: `pathTooBig`, with the path's MTU.
    func loopError() {
        guard connectedSocket else { return }
        readICMPErrors(fd) { error in
            switch error {
            case .unreachable:
                if case .handshaking = phase {
                    terminate(.socket("connect \(peerDescription)", errno: ECONNREFUSED), period: .closed)
                    return false
                }
                return !peerRefused()
            case .tooBig(_, let mtu):
                pathTooBig(mtu: mtu)
                return true
            }
        }
    }

    /// The datagram size every QUIC path must carry (RFC 9000 section 14).
    static let minimumDatagramSize = 1200
    /// The shortest stall taken for a black hole, far above a loss's recovery
    /// on any path this runs on (a PTO is round trips plus 25 ms).
    static let blackHoleAfter: UInt64 = 1_000_000_000
    /// Datagrams a stall's smaller size is tried on before it is judged (2 s
    /// at 100 frames a second). (Measured: 30–40 losses in 100 datagrams at
    /// 25 % random loss, none behind a black hole; the count lags the losses,
    /// and at 25 % it came out under a tenth about once in three full test
    /// runs, hence a twentieth.)
    static let trialDatagrams = 200
    /// The smallest datagram a trial counts as sent. Acknowledgements and
    /// PINGs alone are far smaller (under 200 bytes with many ranges), and
    /// their loss is never counted: counted as sent, they diluted a lossy
    /// path's losses under a tenth (a connection that acknowledges about as
    /// much as it sends, at 25 % loss under CUBIC: a black hole claimed once
    /// in a full test run, thirtieth round of issue 14).
    static let dataDatagramSize = 600

    private func advance(_ consumed: Int) {
        var remaining = consumed
        while remaining > 0 && sendIndex < inflight.count {
            let buffer = inflight[inflight.index(inflight.startIndex, offsetBy: sendIndex)]
            let available = buffer.readableBytes - sendOffset
            if remaining >= available {
                remaining -= available
                sendIndex += 1
                sendOffset = 0
            } else {
                sendOffset += remaining
                remaining = 0
            }
        }
    }

    /// Sends a train of equal-size datagrams (GSO). When the socket buffer is full
    /// (EAGAIN) the bytes are kept and sent, in order, once the socket is writable.
    private func sendBatch(_ tx: UnsafeMutableRawBufferPointer, length: Int, segment: Int) {
        let bytes = UnsafeRawBufferPointer(rebasing: tx[0..<length])
        if !blockedBatches.isEmpty {
            blockedBatches.append((Array(bytes), segment, remote))
            return
        }
        if !transmit(bytes, segment: segment, to: remote) {
            blockedBatches.append((Array(bytes), segment, remote))
            blockedSends += 1
            if connectedSocket {
                loop.setWantsWritable(fd: fd, true)
            } else {
                server?.watchWritable(self)
            }
        }
    }

    /// One send (with GSO fallback); false when the socket buffer is full.
    private func transmit(_ bytes: UnsafeRawBufferPointer, segment: Int, to address: UDPAddress) -> Bool {
        let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        func send(_ offset: Int, _ length: Int, _ segment: Int) -> Int {
            if simulateLossEvery > 0 {
                simulatedLossSends += 1
                if simulatedLossSends % simulateLossEvery == 0 { return length }
            }
            let every = simulateFullSocketEvery
            if every > 0 {
                simulatedSends += 1
                if simulatedSends % every == 0 { return -Int(EAGAIN) }
            }
            if connectedSocket { return cngtcp2_send(fd, base + offset, length, segment, nil, 0) }
            return address.send(UnsafeRawBufferPointer(start: base + offset, count: length), segment: segment, on: fd, from: sourceAddress)
        }
        var rv = send(0, bytes.count, segment)
        // A socket reports a pending ICMP error (port, host or network
        // unreachable, too big; on a server's shared socket about any of its
        // peers) on its next call, this send perhaps: the error is read from
        // the error queue (`loopError`), the datagram is sent again. One that
        // is too big itself fails again, and the queue says for which MTU.
        if Self.icmpErrors.contains(-rv) || rv == -Int(EMSGSIZE) { rv = send(0, bytes.count, segment) }
        if rv == -Int(EAGAIN) || rv == -Int(EWOULDBLOCK) { return false }
        if rv >= 0 {
            bytesSent.add(bytes.count, ordering: .relaxed)
            datagramsSent.add(segment > 0 ? (bytes.count + segment - 1) / segment : 1, ordering: .relaxed)
        }
        if (rv == -Int(EIO) || rv == -Int(EINVAL)) && bytes.count > segment {
            // No GSO here (e.g. a NIC without checksum offload): send one by one.
            var offset = 0
            while offset < bytes.count {
                let n = min(segment, bytes.count - offset)
                _ = send(offset, n, 0)
                offset += n
            }
        }
        // A client's socket keeps the address it connected from: once the host
        // no longer has it, every send fails so.
        if connectedSocket, rv == -Int(ENETUNREACH) || rv == -Int(EADDRNOTAVAIL), !localAddressGone {
            localAddressGone = !localAddressIsStillHere(fd)
        }
        // Other errors (ENOBUFS, EHOSTUNREACH): the datagrams count as lost; ngtcp2 resends them.
        return true
    }

    /// What an ICMP error about a peer turns into on a socket (`icmp_err_convert`).
    static let icmpErrors: Set<Int> = [Int(ECONNREFUSED), Int(EHOSTUNREACH), Int(ENETUNREACH), Int(EHOSTDOWN), Int(EPROTO)]

    /// Whether the server's socket sends this connection's datagrams to `address`.
    func isRemote(_ address: UDPAddress) -> Bool { remote.isSameEndpoint(as: address) }

    /// A datagram to the peer was refused (ICMP port unreachable, read from
    /// the socket's error queue); true when that ended the connection.
    /// `receive` resets the count.
    @discardableResult
    func peerRefused() -> Bool {
        refusalsInARow += 1
        return endIfUnreachable()
    }

    /// Port unreachable twice with nothing received in between: the peer's
    /// process is gone (a crashed zipper, or a killed client of a server).
    /// Ending now, instead of at the idle timeout, stops writes from vanishing
    /// into a dead connection. One refusal alone may be stale; it is ignored.
    private func endIfUnreachable() -> Bool {
        guard refusalsInARow >= 2, case .established = phase else { return false }
        terminate(.socket("peer \(peerDescription) unreachable", errno: ECONNREFUSED), period: .closed)
        return true
    }

    /// The socket became writable: send what was held back, then carry on.
    func retryBlockedSends() -> Bool {
        while let (bytes, segment, to) = blockedBatches.first {
            let sent = bytes.withUnsafeBytes { transmit($0, segment: segment, to: to) }
            if !sent { return false }
            blockedBatches.removeFirst()
        }
        if connectedSocket { loop.setWantsWritable(fd: fd, false) }
        flush()
        return blockedBatches.isEmpty  // flush may have filled the socket again
    }

    func loopWritable() { _ = retryBlockedSends() }

    private func sendRaw(_ packet: [UInt8]) {
        guard !packet.isEmpty else { return }
        packet.withUnsafeBytes { raw in
            let base = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            if connectedSocket {
                _ = cngtcp2_send(fd, base, raw.count, 0, nil, 0)
            } else {
                _ = remote.send(raw, segment: 0, on: fd, from: sourceAddress)
            }
        }
    }

    /// Takes what writers queued.
    private func pullPending() {
        let (pending, fin) = sendShared.withLock { s -> ([ByteBuffer], Bool) in
            s.flushScheduled = false
            var taken: [ByteBuffer] = []
            swap(&taken, &s.pending)
            s.lastIsOwned = false
            return (taken, s.finRequested)
        }
        for buffer in pending { inflight.append(buffer) }
        if fin { finQueued = true }
    }

    /// Writes and sends a CONNECTION_CLOSE (application close when `code` is set, else the pending local error).
    private func sendClose(application code: UInt64?, reason: String) {
        guard let ng, !ng.isInClosingOrDraining else { return }
        let tx = loop.txBuffer
        let n = ng.writeClose(into: UnsafeMutableRawBufferPointer(rebasing: tx[0..<1500]), application: code, reason: reason, now: monotonicNow())
        guard n > 0 else { return }
        closePacket = Array(UnsafeRawBufferPointer(rebasing: tx[0..<n]))
        sendRaw(closePacket)
    }

    // MARK: Application requests (on the loop)

    /// Closes with an application error code and reason.
    func closeLocally(code: UInt64, reason: String) {
        guard isActive else { return }
        sendClose(application: code, reason: reason)
        terminate(.closedLocally(code: code, reason: reason), period: closingPeriod())
    }

    func applyExtend() {
        let frozen = receiveWindowFrozen
        let n = recvShared.withLock { s -> Int in
            s.extendScheduled = false
            guard !frozen else { return 0 }
            defer { s.consumed = 0 }
            return s.consumed
        }
        guard n > 0, let ng, let streamID, isActive else { return }
        let returned = managedWindow == nil ? n : server?.receiveWindowExtension(for: self, consumed: n, ng: ng) ?? n
        if returned > 0 { ng.extendReceiveWindow(stream: streamID, by: returned) }
    }

    /// The peer may send only what the window already allows.
    func freezeReceiveWindow() { receiveWindowFrozen = true }

    /// The window moves again, by what was consumed while it was frozen too.
    func thawReceiveWindow() {
        guard receiveWindowFrozen else { return }
        receiveWindowFrozen = false
        applyExtend()
    }

    /// Closes only at a moment when nothing received is unread, the reader
    /// waits for more, everything written was acknowledged and `quiet()`
    /// holds. On the loop, where packets arrive: none is taken (and
    /// acknowledged) between the check and the close. True if closed now or before.
    func closeIfQuiet(code: UInt64, reason: String, quiet: () -> Bool) -> Bool {
        guard isActive else { return true }
        guard isQuiet, quiet() else { return false }
        closeLocally(code: code, reason: reason)
        return true
    }

    /// Nothing received is unread, the reader waits for more, and everything
    /// written was acknowledged (or the connection has ended). On the loop.
    var isQuiet: Bool {
        isQuietReceiving && (!isActive || sendShared.withLock({ $0.buffered == 0 }))
    }

    /// Nothing received is unread and the reader waits for more (or the
    /// connection has ended), whatever it has yet to send. On the loop.
    var isQuietReceiving: Bool {
        guard isActive else { return true }
        return recvShared.withLock({ $0.chunks.isEmpty && $0.waiter != nil })
    }

    // MARK: Ending

    /// Fails everything waiting on the connection and frees it (now, or after a closing/draining period).
    func terminate(_ error: QUICError, period: Phase) {
        guard isActive else { return }
        if traceEnabled { trace("\(isServer ? "server" : "client") connection \(peerDescription) ended: \(error)") }
        terminalError = error
        phase = period
        // Its address's share and its window are free from now, not after the closing period.
        server?.releaseHostShare(of: self)
        server?.releaseReceiveWindow(of: self)
        // Record the error on both sides before waking anyone: a woken reader may write at once.
        let headStart = acknowledgedTotal.load(ordering: .relaxed) - ackedInHead
        let writers = sendShared.withLock { s -> [CheckedContinuation<QUICError?, Never>] in
            s.error = error
            keepUnacknowledged(&s, headStart: headStart)
            // What it kept is taken now (or freed): its share goes to the others.
            // Once: `terminate` runs once, and no retention begins after it (`s.error`).
            if let retention = s.retention { retention.budget.leave(retention.group) }
            let w = s.takeAllWaiters() + s.drainWaiters
            s.drainWaiters = []
            return w
        }
        let ended = sendShared.withLock { s in
            defer { s.endWaiters = [] }
            return s.endWaiters.map(\.continuation)
        }
        for waiter in ended { waiter.resume() }
        let (readerWaiter, readerResult) = recvShared.withLock { s -> (CheckedContinuation<Result<ByteBuffer?, QUICError>, Never>?, Result<ByteBuffer?, QUICError>) in
            if s.error == nil { s.error = error }
            let w = s.waiter
            s.waiter = nil
            return (w, s.finished ? .success(nil) : .failure(error))
        }
        readerWaiter?.resume(returning: readerResult)
        for w in writers { w.resume(returning: error) }
        if let onEstablished {
            self.onEstablished = nil
            onEstablished(.failure(error))
        }
        if case .closed = period {
            release()
        } else {
            updateDeadline()
        }
    }

    /// Keeps what was written and not acknowledged (sent or not), from the
    /// start of the write it begins in, for `takeUnacknowledged`: the buffers
    /// themselves, no copy.
    private func keepUnacknowledged(_ s: inout SendShared, headStart: Int) {
        defer { s.splitWrites.removeAll() }
        guard keepsUnacknowledgedAtEnd, s.buffered > 0 || s.retention?.bytes ?? 0 > 0 else { return }
        var parts: [ByteBuffer] = []
        var firstStart = headStart
        if let retention = s.retention, let first = retention.buffers.first {
            firstStart = first.start
            parts.append(contentsOf: retention.buffers.lazy.map(\.bytes))
        }
        if let split = s.splitWrites.first(where: { $0.secondStart == firstStart }) {
            // The first part is a write's second part; its first part was acknowledged and freed.
            parts.insert(split.first, at: 0)
            firstStart -= split.first.readableBytes
        }
        parts.append(contentsOf: inflight)
        parts.append(contentsOf: s.pending)
        // What the peer is done with: acknowledged, or, when retained, released
        // (its application's last word may still be read: see `takeUnacknowledged`).
        let done = s.retention?.settled ?? (headStart + ackedInHead)
        s.retention?.buffers.removeAll()
        s.retention?.bytes = 0
        s.unacknowledgedAtEnd = QUICConnection.Unacknowledged(parts: parts, acknowledgedPrefix: max(0, done - firstStart), streamOffset: firstStart)
    }

    /// Frees the ngtcp2 connection, TLS session and socket registration.
    func release() {
        phase = .closed
        deadline = .max
        if connectedSocket && !socketClosed {
            loop.unregister(fd: fd)
            close(fd)
            socketClosed = true
        }
        loop.removeTimed(self)
        server?.remove(self)
        inflight.removeAll()
        ng?.delegate = nil
        ng = nil
        onStreamOpened = nil
    }

    // MARK: NGConnectionDelegate (called from inside ngtcp2: no ngtcp2 calls that free state here)

    func ngHandshakeCompleted() {
        if debugFlush { trace("handshake completed \(isServer ? "S" : "C")") }
        phase = .established
        server?.handshakeCompleted(self)
        if !isServer, streamID == nil {
            // Open the stream after the callback returns.
            loop.execute { [self] in openClientStream() }
        }
    }

    /// Client: the connecting task was cancelled. A connect still under way
    /// ends now with `cancelled` (the peer is told, as by `close`), not at the
    /// handshake timeout: a peer that drops every packet held a cancelled
    /// `connect()` for that long.
    func cancelEstablishing() {
        isEstablishingCancelled = true
        guard let pending = onEstablished else { return }
        onEstablished = nil
        closeLocally(code: QUICError.yomoCloseCode, reason: "cancelled")
        pending(.failure(.cancelled))
    }

    private func openClientStream() {
        guard isActive, streamID == nil, let ng else { return }
        if let id = ng.openBidiStream() {
            streamID = id
            if let onEstablished {
                self.onEstablished = nil
                onEstablished(.success(()))
            }
            flush()
        }
        // Otherwise wait for ngExtendMaxLocalBidiStreams.
    }

    func ngExtendMaxLocalBidiStreams() {
        if !isServer, streamID == nil, case .established = phase {
            loop.execute { [self] in openClientStream() }
        }
    }

    func ngStreamOpened(_ id: Int64) {
        // Client-initiated bidirectional streams have the two low bits 00.
        guard isServer, streamID == nil, id & 0x3 == 0 else { return }
        streamID = id
        onStreamOpened?()
        onStreamOpened = nil
    }

    func ngStreamData(_ id: Int64, _ data: UnsafeRawBufferPointer, fin: Bool) {
        guard id == streamID else { return }
        // Queued only: the reader is woken once per burst of datagrams (wakeReader),
        // not once per packet, which would cost a thread wake-up each.
        recvShared.withLock { s in
            if fin { s.finished = true }
            s.append(data)
        }
        readerNeedsWake = true
    }

    /// Hands queued data (or the end) to a waiting reader.
    private func wakeReader() {
        guard readerNeedsWake else { return }
        readerNeedsWake = false
        loop.expectAnswer()
        let handoff = recvShared.withLock { s -> (CheckedContinuation<Result<ByteBuffer?, QUICError>, Never>, Result<ByteBuffer?, QUICError>)? in
            guard let w = s.waiter, let r = Self.take(&s) else { return nil }
            s.waiter = nil
            return (w, r)
        }
        if let (waiter, result) = handoff {
            waiter.resume(returning: result)
        }
    }

    func ngStreamAcked(_ id: Int64, length: UInt64) {
        guard id == streamID else { return }
        acknowledgedSinceFlush = true
        if smallerDatagramTrial?.acknowledgedAt == 0 { smallerDatagramTrial?.acknowledgedAt = lastReceivedAt }
        var remaining = Int(length)
        // Whole buffers acknowledged now, each with its stream offset, for a retention.
        var headStart = acknowledgedTotal.load(ordering: .relaxed) - ackedInHead
        var acknowledgedWhole: [(start: Int, bytes: ByteBuffer)] = []
        let retains = retaining.load(ordering: .acquiring)
        while remaining > 0, let head = inflight.first {
            let available = head.readableBytes - ackedInHead
            if remaining >= available {
                remaining -= available
                if retains { acknowledgedWhole.append((headStart, head)) }
                headStart += head.readableBytes
                inflight.removeFirst()
                ackedInHead = 0
                sendIndex -= 1
            } else {
                ackedInHead += remaining
                remaining = 0
            }
        }
        let limit = configuration.sendBufferSize / 2
        let acknowledged = acknowledgedTotal.add(Int(length), ordering: .relaxed).newValue
        let waiters = sendShared.withLock { s -> [CheckedContinuation<QUICError?, Never>] in
            s.buffered -= Int(length)
            for (start, bytes) in acknowledgedWhole { s.retention?.keep(bytes, at: start) }
            // A retained second part needs its first part until released.
            let done = min(acknowledged, s.retention?.settled ?? acknowledged)
            while let split = s.splitWrites.first, split.end <= done { s.splitWrites.removeFirst() }
            var w = s.takeDrainedWaiters()
            guard s.buffered <= limit, !s.waiters.isEmpty else { return w }
            w += s.takeAllWaiters()
            return w
        }
        for w in waiters { w.resume(returning: nil) }
    }

    func ngStreamClosed(_ id: Int64, appErrorCode: UInt64?) {}

    func ngStreamReset(_ id: Int64, appErrorCode: UInt64) {
        guard id == streamID else { return }
        let error = QUICError.streamReset(code: appErrorCode)
        let waiter = recvShared.withLock { s -> CheckedContinuation<Result<ByteBuffer?, QUICError>, Never>? in
            if s.error == nil && !s.finished { s.error = error }
            let w = s.waiter
            s.waiter = nil
            return w
        }
        waiter?.resume(returning: .failure(error))
    }

    func ngStatelessReset() { statelessResetReceived = true }

    func ngNewConnectionID(_ cid: ConnectionID) {
        guard isServer else { return }
        routes.insert(cid)
        server?.addRoute(cid, self)
    }

    func ngNewToken(_ token: [UInt8]) {
        guard !isServer else { return }
        NewTokens.keep(token, for: remote)
    }

    func ngRemoveConnectionID(_ cid: ConnectionID) {
        guard isServer else { return }
        routes.remove(cid)
        server?.removeRoute(cid)
    }
}

// MARK: Application side (any thread)

extension ConnectionCore {
    @discardableResult
    nonisolated(nonsending) func write(_ buffer: ByteBuffer) async throws(QUICError) -> Int {
        let n = buffer.readableBytes
        guard n > 0 else { return sendShared.withLock { $0.enqueuedTotal } }
        return try await enqueue(bytes: n) { $0.append(buffer) }
    }

    /// Writes two buffers back to back, with no other write between them.
    @discardableResult
    nonisolated(nonsending) func write(
        _ first: ByteBuffer, _ second: ByteBuffer, endingAfterQueueingThrows: Bool = true
    ) async throws(QUICError) -> Int {
        try await enqueue(bytes: first.readableBytes + second.readableBytes, endingAfterQueueingThrows: endingAfterQueueingThrows) {
            let secondStart = $0.enqueuedTotal + first.readableBytes
            $0.append(first)
            $0.append(second)
            if first.readableBytes > 0, second.readableBytes > 0 {
                $0.splitWrites.append((secondStart, secondStart + second.readableBytes, first))
            }
        }
    }

    /// Writes `length` bytes produced by `encode` straight into the send queue (no
    /// intermediate buffer: small frames cost no allocation).
    @discardableResult
    nonisolated(nonsending) func write(
        length: Int, endingAfterQueueingThrows: Bool = true, _ encode: (inout ByteBuffer) -> Void
    ) async throws(QUICError) -> Int {
        try await enqueue(bytes: length, endingAfterQueueingThrows: endingAfterQueueingThrows) { $0.appendEncoded(length: length, encode) }
    }

    /// Returns the stream offset just past these bytes (compare `acknowledgedTotal`).
    /// `endingAfterQueueingThrows` false: the connection's end during the wait
    /// for room returns (the bytes were queued: see `takeUnacknowledged`).
    private nonisolated(nonsending) func enqueue(
        bytes n: Int, endingAfterQueueingThrows: Bool = true, _ append: (inout SendShared) -> Void
    ) async throws(QUICError) -> Int {
        let limit = configuration.sendBufferSize
        let (wake, mustWait, end) = try sendShared.withLock { s throws(QUICError) -> (Bool, Bool, Int) in
            let wake = try s.accept(n, append)
            return (wake, s.buffered > limit, s.enqueuedTotal)
        }
        if wake { loop.execute { [self] in flushFromApplication() } }
        if mustWait {
            // The bytes are queued already: a cancelled wait returns without error,
            // since the write did happen (only the backpressure wait is cut short).
            let ticket = sendShared.withLock { s -> UInt64 in
                s.nextTicket += 1
                return s.nextTicket
            }
            let error = await withTaskCancellationHandler {
                await withCheckedContinuation { (c: CheckedContinuation<QUICError?, Never>) in
                    let immediate = sendShared.withLock { s -> QUICError?? in
                        if let e = s.error { return .some(e) }
                        if s.buffered <= limit / 2 || Task.isCancelled { return .some(nil) }
                        s.waiters.append((ticket, c))
                        return .none
                    }
                    if let immediate { c.resume(returning: immediate) }
                }
            } onCancel: {
                let waiter = sendShared.withLock { s -> CheckedContinuation<QUICError?, Never>? in
                    guard let index = s.waiters.firstIndex(where: { $0.ticket == ticket }) else { return nil }
                    return s.waiters.remove(at: index).continuation
                }
                waiter?.resume(returning: nil)
            }
            if let error, endingAfterQueueingThrows { throw error }
        }
        return end
    }

    /// Queues a frame unless more than `limit` bytes are already buffered: the
    /// zipper's non-blocking write for its drop and disconnect policies.
    /// Returns the stream offset just past the frame, or nil (and queues
    /// nothing) when over the limit.
    func tryWrite(length: Int, limit: Int, _ encode: (inout ByteBuffer) -> Void) throws(QUICError) -> Int? {
        let accepted = try sendShared.withLock { s throws(QUICError) -> (wake: Bool, end: Int)? in
            // Errors first, as for any write; then the limit (an idle connection takes any frame).
            if s.error == nil, !s.finRequested, s.buffered + length > limit, s.buffered > 0 { return nil }
            let wake = try s.accept(length) { $0.appendEncoded(length: length, encode) }
            return (wake, s.enqueuedTotal)
        }
        guard let accepted else { return nil }
        if accepted.wake { loop.execute { [self] in flushFromApplication() } }
        return accepted.end
    }

    /// Bytes written but not yet acknowledged by the peer.
    var unacknowledgedBytes: Int { sendShared.withLock { $0.buffered } }

    var unreadBytes: Int { recvShared.withLock { $0.chunks.reduce(0) { $0 + $1.readableBytes } } }

    /// From now on, acknowledged bytes are kept until `releaseRetained`
    /// passes them (or more than the budget's share are kept: the oldest then
    /// go), and what is taken at the end begins after what was released.
    /// `group`: the address group's text the connection's share is counted under.
    func retainAcknowledged(budget: RetentionBudget, group: String) {
        let begun = sendShared.withLock { s -> Bool in
            guard s.retention == nil, s.error == nil else { return false }
            s.retention = SendShared.Retention(budget: budget, group: budget.join(group: group), released: s.enqueuedTotal)
            return true
        }
        // Before the caller writes anything more: what it writes next is kept.
        if begun { retaining.store(true, ordering: .releasing) }
    }

    /// The peer's application is done with the stream's bytes before `offset`.
    func releaseRetained(through offset: Int) {
        sendShared.withLock { $0.retention?.release(through: offset) }
    }

    /// From now on nothing kept goes past the share (a closing peer was told
    /// what is kept; nothing more is written to it beyond what was). Where what
    /// went past it ends (0: nothing did); nil without a retention.
    func pinRetention() -> Int? {
        sendShared.withLock { s in
            s.retention?.pinned = true
            return s.retention?.overflowedThrough
        }
    }

    /// With a retention: (where what the peer released ends, bytes kept,
    /// bytes not released that went past the share).
    var retentionProgress: (settled: Int, bytes: Int, givenUp: Int)? {
        sendShared.withLock { s in s.retention.map { ($0.settled, $0.bytes, $0.givenUp) } }
    }

    func takeUnacknowledged() -> QUICConnection.Unacknowledged? {
        sendShared.withLock { s in
            defer { s.unacknowledgedAtEnd = nil }
            // A release read after the end (the peer's last receipt before its close) still counts.
            if var taken = s.unacknowledgedAtEnd, let retention = s.retention {
                taken.acknowledgedPrefix = max(taken.acknowledgedPrefix, retention.settled - taken.streamOffset)
                return taken
            }
            return s.unacknowledgedAtEnd
        }
    }

    /// Returns once the connection has ended, or the task is cancelled.
    func waitUntilEnded() async {
        let ticket = sendShared.withLock { s -> UInt64 in
            s.nextTicket += 1
            return s.nextTicket
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = sendShared.withLock { s -> Bool in
                    if s.error != nil || Task.isCancelled { return true }
                    s.endWaiters.append((ticket, c))
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            let waiter = sendShared.withLock { s -> CheckedContinuation<Void, Never>? in
                guard let index = s.endWaiters.firstIndex(where: { $0.ticket == ticket }) else { return nil }
                return s.endWaiters.remove(at: index).continuation
            }
            waiter?.resume()
        }
    }

    /// Sends FIN after the queued bytes and waits until all of it is acknowledged.
    func finishWriting() async throws(QUICError) {
        let wake = try sendShared.withLock { s throws(QUICError) -> Bool in
            if let error = s.error { throw error }
            s.finRequested = true
            return s.scheduleFlush()
        }
        if wake { loop.execute { [self] in flushFromApplication() } }
        // Cancelling gives up waiting for the acknowledgements (a bounded close).
        let error = await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<QUICError?, Never>) in
                let immediate = sendShared.withLock { s -> QUICError?? in
                    if let e = s.error { return .some(e) }
                    if s.finSent && s.buffered == 0 { return .some(nil) }
                    if Task.isCancelled { return .some(.cancelled) }
                    s.drainWaiters.append(c)
                    return .none
                }
                if let immediate { c.resume(returning: immediate) }
            }
        } onCancel: {
            let waiters = sendShared.withLock { s -> [CheckedContinuation<QUICError?, Never>] in
                defer { s.drainWaiters = [] }
                return s.drainWaiters
            }
            for waiter in waiters { waiter.resume(returning: .cancelled) }
        }
        if let error { throw error }
    }

    private func flushFromApplication() {
        flush()
    }

    /// The next received bytes; a cancelled wait throws `QUICError.cancelled` and
    /// loses nothing (bytes arriving later go to the next call).
    nonisolated(nonsending) func receive() async throws(QUICError) -> ByteBuffer? {
        if let fast = takeChunk() { return try fast.get() }
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Result<ByteBuffer?, QUICError>, Never>) in
                let immediate = recvShared.withLock { s -> Result<ByteBuffer?, QUICError>? in
                    if let r = Self.take(&s) { return r }
                    // Checked under the lock that onCancel takes: no lost wake-up.
                    if Task.isCancelled { return .failure(.cancelled) }
                    precondition(s.waiter == nil, "QUICConnection.inbound supports one reader at a time")
                    s.waiter = c
                    return nil
                }
                if let immediate { c.resume(returning: immediate) }
            }
        } onCancel: {
            let waiter = recvShared.withLock { s -> CheckedContinuation<Result<ByteBuffer?, QUICError>, Never>? in
                defer { s.waiter = nil }
                return s.waiter
            }
            waiter?.resume(returning: .failure(.cancelled))
        }
        scheduleExtend()
        return try result.get()
    }

    private func takeChunk() -> Result<ByteBuffer?, QUICError>? {
        let result = recvShared.withLock { Self.take(&$0) }
        if result != nil { scheduleExtend() }
        return result
    }

    /// Returns consumed bytes to the peer as flow-control window (manual in ngtcp2).
    private func scheduleExtend() {
        let schedule = recvShared.withLock { s -> Bool in
            guard s.consumed > 0 && !s.extendScheduled else { return false }
            s.extendScheduled = true
            return true
        }
        if schedule { loop.execute { [self] in applyExtend(); flush() } }
    }

    private static func take(_ s: inout RecvShared) -> Result<ByteBuffer?, QUICError>? {
        if let chunk = s.chunks.popFirst() {
            s.consumed += chunk.readableBytes
            return .success(chunk)
        }
        if s.finished { return .success(nil) }
        if let error = s.error { return .failure(error) }
        return nil
    }
}

/// A stall's lowering of the datagram size, until judged.
struct SmallerDatagramTrial {
    /// The largest datagram before, and the limit to go back to.
    var from: Int
    var limitBefore: Int
    /// How long the stall lasted; nil for a trial followed from another
    /// connection to the same host, whose verdict this one takes.
    var stalled: Duration?
    /// The stream's lost-packet count and the datagrams sent when the first
    /// acknowledgement after the stall came (nil before it).
    var lostBefore: Int?
    var sentBefore = 0
    /// Probe timeouts since, and ngtcp2's count of those in a row when last read.
    var probeTimeouts = 0
    var probeTimeoutsInARow = 0
    /// When the first datagram with stream data went out at the trial's size
    /// (0: none yet).
    var firstDataSentAt: UInt64 = 0
    /// When the first acknowledgement of stream data came (0: not yet).
    var acknowledgedAt: UInt64 = 0

    /// Whether the acknowledgement that ended the stall says the smaller
    /// datagrams get through: it came within 3 PTO of the first one sent, as
    /// behind a black hole (measured: 1–7 ms). Later, they were lost like the
    /// big ones, and it acknowledged what went out after them; before any went
    /// out, it acknowledged what was sent before the trial. Either way the path
    /// was down both ways and is back (an outage that began just after the
    /// stall did, with the peer heard in between), not narrowed. (Behind a
    /// black hole, small data sent just before the trial can be acknowledged
    /// first: that costs another stall, then another trial.)
    func smallerDatagramsGotThrough(pto: UInt64) -> Bool {
        firstDataSentAt != 0 && firstDataSentAt <= acknowledgedAt && acknowledgedAt - firstDataSentAt <= 3 &* pto
    }
}
