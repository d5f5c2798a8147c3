internal import Synchronization
internal import YoMoLogging
internal import YoMoMetrics
internal import YoMoTracing
internal import YoMoWire
internal import YoMoQUIC

/// The data path's instruments, named by the OpenTelemetry messaging semantic
/// conventions (`messaging.system` = `yomo`, the tag as `messaging.destination.name`,
/// e.g. `0x33`). Series are bound once per tag and kept, so recording a frame
/// is a dictionary read under a lock and one atomic add (or one histogram lock);
/// how many tags get series of their own is bounded (`cardinalityLimit`).
final class DataPathMetrics: Sendable {
    private let meter: Meter
    private let enabled: Bool
    private let baseAttributes: MetricAttributes

    private let processDuration: Histogram
    private let consumed: Counter
    private let sent: Counter
    private let operationDuration: Histogram
    private let reconnects: Counter
    private let copiesSkipped: Counter
    private let givenBack: Counter
    private let routed: Counter
    private let routingDuration: Histogram
    let connections: UpDownCounter
    let rejectedHandshakes: Counter
    private let unacknowledgedLost: Counter
    private let unhandledLost: Counter
    private let unacknowledgedHeld: Counter
    private let pathMTUBlackHoles: Counter
    private let stalledFrames: Counter

    struct Consumer: Sendable {
        let duration: BoundHistogram
        let consumed: BoundCounter
    }

    struct Producer: Sendable {
        let sent: BoundCounter
        let duration: BoundHistogram
    }

    struct Router: Sendable {
        let delivered: BoundCounter
        let noRoute: BoundCounter
        let failed: BoundCounter
        let dropped: BoundCounter
        let duration: BoundHistogram
    }

    private struct ConsumerKey: Hashable {
        var tag: UInt32
        var handlerType: String
    }

    private let consumers = Mutex<[ConsumerKey: Consumer]>([:])
    private let producers = Mutex<[UInt32: Producer]>([:])
    private let routers = Mutex<[UInt32: Router]>([:])
    /// Tags a cache keeps. Tags come from peers: past this many, a frame binds
    /// its series again (by then they are the overflow series, past the
    /// instruments' cardinality limit) rather than growing the cache.
    static let maximumCachedTags = 2048

    static let disabled = DataPathMetrics(provider: .noop, scope: "YoMo", component: [:])

    /// `component`: attributes every series of this component carries (e.g. the
    /// stream function's name as `messaging.consumer.group.name`).
    init(provider: MeterProvider, scope: String, component: MetricAttributes) {
        meter = provider.meter(scope)
        enabled = provider.isEnabled
        baseAttributes = component.with("messaging.system", "yomo")
        processDuration = meter.histogram(
            "messaging.process.duration", unit: "s", description: "Time a stream function's handler took per frame.",
            boundaries: Histogram.durationBoundaries)
        consumed = meter.counter("messaging.client.consumed.messages", unit: "{message}", description: "Frames handed to a handler.")
        sent = meter.counter("messaging.client.sent.messages", unit: "{message}", description: "Frames written to the zipper.")
        operationDuration = meter.histogram(
            "messaging.client.operation.duration", unit: "s", description: "Time a write took until the frame was queued.",
            boundaries: Histogram.durationBoundaries)
        reconnects = meter.counter("yomo.client.reconnects", unit: "{reconnect}", description: "Connections to the zipper made again after one was lost.")
        copiesSkipped = meter.counter(
            "yomo.handlers.copies.skipped", unit: "{message}",
            description: "Frames sent again after a reconnection that the stream function had taken already: not handled twice.")
        givenBack = meter.counter(
            "yomo.handlers.given_back", unit: "{message}",
            description: "Frames a closing stream function gave back to its zipper unhandled, for its next instance.")
        routed = meter.counter(
            "yomo.zipper.routed.messages", unit: "{message}",
            description: "Deliveries by outcome: a frame sent to two observers counts two; no_route counts the frame once.")
        routingDuration = meter.histogram(
            "yomo.zipper.routing.duration", unit: "s", description: "Time the zipper took to route a frame to every destination.",
            boundaries: Histogram.durationBoundaries)
        connections = meter.upDownCounter("yomo.zipper.connections", unit: "{connection}", description: "Clients connected, by client type.")
        rejectedHandshakes = meter.counter(
            "yomo.zipper.rejected.handshakes", unit: "{handshake}", description: "Connections refused before or at their handshake, by reason.")
        unacknowledgedLost = meter.counter(
            "yomo.zipper.unacknowledged.lost", unit: "By",
            description: "Bytes written to clients whose connections ended before they acknowledged them: lost with the connection.")
        unhandledLost = meter.counter(
            "yomo.zipper.unhandled.lost", unit: "By",
            description: "Bytes stream functions acknowledged and had not handled when their connections ended, past their share of the zipper's retention (limits.max_unhandled_bytes): lost unless the function handled them.")
        unacknowledgedHeld = meter.counter(
            "yomo.zipper.unacknowledged.held.messages", unit: "{message}",
            description: "Frames written to stream functions whose connections ended before they acknowledged them, held for their return.")
        stalledFrames = meter.counter(
            "yomo.zipper.incomplete_frames.stalled", unit: "{connection}",
            description: "Connections closed because a frame they were sending received nothing while others waited for room.")
        pathMTUBlackHoles = meter.counter(
            "yomo.zipper.path_mtu.black_holes", unit: "{connection}",
            description: "Connections that went on with smaller datagrams because their path dropped the bigger ones (said by ICMP, found by a stall, or by another connection to the same host).")
        observeLogging(provider)
    }

    var isEnabled: Bool { enabled }

    static func tagName(_ tag: UInt32) -> String { "0x" + String(tag, radix: 16) }

    private func attributes(tag: UInt32) -> MetricAttributes {
        baseAttributes.with("messaging.destination.name", Self.tagName(tag))
    }

    func consumer(tag: UInt32, handlerType: String) -> Consumer {
        // handlerType is a literal: the key costs no allocation.
        let key = ConsumerKey(tag: tag, handlerType: handlerType)
        return consumers.withLock { cache in
            if let bound = cache[key] { return bound }
            let attributes = attributes(tag: tag).with("yomo.handler.type", handlerType)
            let bound = Consumer(duration: processDuration.bind(attributes), consumed: consumed.bind(attributes))
            if cache.count < Self.maximumCachedTags { cache[key] = bound }
            return bound
        }
    }

    /// A handler that threw: its duration goes to the series with `error.type`.
    func recordFailure(tag: UInt32, handlerType: String, seconds: Double, error: any Error, spanContext: SpanContext?) {
        let attributes = attributes(tag: tag).with("yomo.handler.type", handlerType)
            .with("error.type", String(describing: type(of: error)))
        processDuration.bind(attributes).record(seconds, spanContext: spanContext)
    }

    func producer(tag: UInt32) -> Producer {
        producers.withLock { cache in
            if let bound = cache[tag] { return bound }
            let attributes = attributes(tag: tag).with("messaging.operation.name", "send")
            let bound = Producer(sent: sent.bind(attributes), duration: operationDuration.bind(attributes))
            if cache.count < Self.maximumCachedTags { cache[tag] = bound }
            return bound
        }
    }

    func router(tag: UInt32) -> Router {
        routers.withLock { cache in
            if let bound = cache[tag] { return bound }
            let attributes = attributes(tag: tag)
            let bound = Router(
                delivered: routed.bind(attributes.with("outcome", "delivered")),
                noRoute: routed.bind(attributes.with("outcome", "no_route")),
                failed: routed.bind(attributes.with("outcome", "failed")),
                dropped: routed.bind(attributes.with("outcome", "dropped")),
                duration: routingDuration.bind(attributes))
            if cache.count < Self.maximumCachedTags { cache[tag] = bound }
            return bound
        }
    }


    /// The room frames still arriving take, and the connections waiting for
    /// some, read when metrics are collected.
    func observeIncompleteFrames(_ read: @escaping @Sendable () -> (bytes: Int, waiting: Int)) {
        guard enabled else { return }
        let base = baseAttributes
        meter.observableGauge(
            "yomo.zipper.incomplete_frames.size", unit: "By",
            description: "Bytes reserved for frames over 64 KiB still arriving, across connections."
        ) { [(base, Double(read().bytes))] }
        meter.observableGauge(
            "yomo.zipper.incomplete_frames.waiting", unit: "{connection}",
            description: "Connections whose next frame waits for room (maximumIncompleteFrameBytes)."
        ) { [(base, Double(read().waiting))] }
    }

    /// What the clients may send ahead of the zipper's reading, read when metrics are collected.
    func observeReceiveWindows(_ read: @escaping @Sendable () -> Int) {
        guard enabled else { return }
        let base = baseAttributes
        meter.observableGauge(
            "yomo.zipper.receive_window", unit: "By",
            description: "Bytes all clients together may send ahead of what the zipper read: their receive windows summed (maximumReceiveWindowBytes)."
        ) { [(base, Double(read()))] }
    }

    /// QUIC Retries the zipper sent, and the tokens it refused, read when metrics are collected.
    func observeAddressValidation(
        _ read: @escaping @Sendable () -> (retries: Int, invalidTokens: Int, refusedPerAddress: Int, tokensAccepted: Int)
    ) {
        guard enabled else { return }
        let base = baseAttributes
        meter.observableCounter(
            "yomo.zipper.address_validation.retries", unit: "{packet}",
            description: "New clients answered with a QUIC Retry to prove their address first (maximumUnvalidatedHandshakes reached)."
        ) { [(base, Double(read().retries))] }
        meter.observableCounter(
            "yomo.zipper.address_validation.invalid_tokens", unit: "{packet}",
            description: "Initials whose Retry token was not this zipper's or too old: closed with INVALID_TOKEN."
        ) { [(base, Double(read().invalidTokens))] }
        meter.observableCounter(
            "yomo.zipper.address_validation.refused", unit: "{packet}",
            description: "QUIC handshakes refused (CONNECTION_REFUSED) because their address, proven by a Retry, had its share in progress (maximumPendingHandshakesPerAddress)."
        ) { [(base, Double(read().refusedPerAddress))] }
        meter.observableCounter(
            "yomo.zipper.address_validation.tokens_accepted", unit: "{connection}",
            description: "Clients whose address a token from an earlier connection (a QUIC NEW_TOKEN this zipper sent) proved: no Retry for them."
        ) { [(base, Double(read().tokensAccepted))] }
    }

    func stalledFrame() { stalledFrames.add(1, attributes: baseAttributes) }

    /// Each mesh link's state, per downstream name, read when metrics are
    /// collected: what it dropped because its downstream did not keep up,
    /// whether it is connected, what waits to be forwarded, what it sent, and
    /// what it keeps until the downstream's receipt.
    func observeMeshLinks(_ read: @escaping @Sendable () -> [MeshLinkHealth]) {
        guard enabled else { return }
        let base = baseAttributes
        @Sendable func series(_ value: @escaping @Sendable (MeshLinkHealth) -> Double) -> [(MetricAttributes, Double)] {
            read().map { (base.with("yomo.mesh.downstream", $0.downstream), value($0)) }
        }
        meter.observableCounter(
            "yomo.zipper.mesh.dropped.messages", unit: "{message}",
            description: "Frames not forwarded to a mesh downstream because its queue was full or its link could not take them."
        ) {
            // With the last traced drop as the exemplar.
            read().map {
                Observation(attributes: base.with("yomo.mesh.downstream", $0.downstream), value: Double($0.dropped), exemplar: $0.lastDropTraced)
            }
        }
        meter.observableGauge(
            "yomo.zipper.mesh.connected", unit: "{link}", description: "1 while the link to a mesh downstream is connected, 0 while it dials."
        ) { series { $0.connected ? 1 : 0 } }
        meter.observableGauge(
            "yomo.zipper.mesh.queued.messages", unit: "{message}",
            description: "Frames waiting to be forwarded to a mesh downstream: queued, or held while its link reconnects."
        ) { series { Double($0.queuedFrames) } }
        meter.observableGauge(
            "yomo.zipper.mesh.queued.size", unit: "By", description: "Bytes of the frames waiting to be forwarded to a mesh downstream."
        ) { series { Double($0.queuedBytes) } }
        meter.observableCounter(
            "yomo.zipper.mesh.sent.messages", unit: "{message}", description: "Frames a mesh link sent to its downstream."
        ) { series { Double($0.sentFrames) } }
        meter.observableGauge(
            "yomo.zipper.mesh.unsettled.messages", unit: "{message}",
            description: "Frames sent to a mesh downstream and kept until its receipt says its functions have them (sent again if it crashes)."
        ) { series { Double($0.unsettledFrames) } }
    }

    /// Frames the zipper holds for a stream function on its way back, and
    /// their bytes, read when metrics are collected.
    func observeHeldFrames(_ read: @escaping @Sendable () -> (frames: Int, bytes: Int)) {
        guard enabled else { return }
        let base = baseAttributes
        meter.observableGauge(
            "yomo.zipper.held.messages", unit: "{message}",
            description: "Frames with no stream function, held for one on its way back."
        ) { [(base, Double(read().frames))] }
        meter.observableGauge(
            "yomo.zipper.held.size", unit: "By", description: "Bytes of the frames held for a stream function on its way back."
        ) { [(base, Double(read().bytes))] }
    }

    /// The SDK's own health: spans waiting for export and spans lost (queue
    /// full, failed or abandoned exports), read when metrics are collected. The
    /// provider is held weakly: a closed component's series simply vanish.
    func observeTracing(_ provider: TracerProvider?) {
        guard enabled, let provider, provider.isEnabled else { return }
        let base = baseAttributes
        meter.observableGauge(
            "otel.sdk.processor.span.queue.size", unit: "{span}", description: "Spans waiting in the batch processor."
        ) { [weak provider] in provider.map { [(base, Double($0.queuedSpanCount))] } ?? [] }
        meter.observableCounter(
            "yomo.sdk.spans.dropped", unit: "{span}",
            description: "Spans never exported: queue full, export failed or cut short at shutdown."
        ) { [weak provider] in provider.map { [(base, Double($0.droppedSpanCount))] } ?? [] }
        meter.observableCounter(
            "otel.sdk.exporter.span.exported", unit: "{span}", description: "Spans the exporter took without an error."
        ) { [weak provider] in provider.map { [(base, Double($0.exportedSpanCount))] } ?? [] }
        meter.observableCounter(
            "yomo.sdk.span.export.failures", unit: "{export}", description: "Span export calls that failed (their spans are dropped)."
        ) { [weak provider] in provider.map { [(base, Double($0.failedExportCount))] } ?? [] }
        let duration = meter.histogram(
            "otel.sdk.exporter.operation.duration", unit: "s", description: "Time one span export call took.",
            boundaries: Histogram.durationBoundaries)
        let succeeded = duration.bind(base)
        let failed = duration.bind(base.with("error.type", "export_failed"))
        provider.observeExports { seconds, didFail in (didFail ? failed : succeeded).record(seconds, spanContext: nil) }
    }

    /// Log records the process's logging (what `YoMoLogging.bootstrap`
    /// installed) lost: never written by its writer (queue full, or a sink
    /// failing, such as a pipe nobody reads) or never exported over OTLP. One
    /// count for the process, so registered once per provider and without the
    /// component's attributes; nothing when the process did not bootstrap it.
    private func observeLogging(_ provider: MeterProvider) {
        guard enabled, provider.isFirstRegistration(of: "yomo.sdk.log.records.dropped") else { return }
        meter.observableCounter(
            "yomo.sdk.log.records.dropped", unit: "{record}",
            description: "Log records never written (queue full, sink failing) or never exported over OTLP."
        ) {
            guard let installed = YoMoLogging.installed else { return [] }
            let process: MetricAttributes = [:]
            var series = [(process.with("yomo.log.pipeline", "writer"), Double(installed.writer.droppedRecordCount))]
            if let processor = installed.logProcessor {
                series.append((process.with("yomo.log.pipeline", "otlp"), Double(processor.droppedRecordCount)))
            }
            return series
        }
    }

    /// What a client's outage buffer holds while it reconnects, what it could
    /// not hold (lost), and what it sent again after a reconnect, read when
    /// metrics are collected.
    /// `read`: the outage buffer's counts, and the last traced drop (the drop count's exemplar).
    func observeOutage(_ read: @escaping @Sendable () -> (statistics: OutageStatistics, lastDropTraced: Exemplar?)) {
        guard enabled else { return }
        let base = baseAttributes
        meter.observableGauge(
            "yomo.client.outage.held.messages", unit: "{message}",
            description: "Frames written while disconnected, held for the next connection."
        ) { [(base, Double(read().statistics.pendingFrames))] }
        meter.observableGauge(
            "yomo.client.outage.held.size", unit: "By", description: "Bytes of the frames held for the next connection."
        ) { [(base, Double(read().statistics.pendingBytes))] }
        meter.observableCounter(
            "yomo.client.outage.dropped.messages", unit: "{message}",
            description: "Frames lost while reconnecting: writes refused with the outage buffer full or off, and held frames discarded when the client ended."
        ) {
            let (statistics, lastDropTraced) = read()
            return [Observation(attributes: base, value: Double(statistics.dropped), exemplar: lastDropTraced)]
        }
        meter.observableCounter(
            "yomo.client.outage.resent.messages", unit: "{message}",
            description: "Frames a lost connection had not had acknowledged, sent again on the next one (the zipper may see them twice)."
        ) { [(base, Double(read().statistics.resent))] }
    }

    /// Frames a client keeps to send again if its connection dies (its
    /// zipper has not settled them yet), read when metrics are collected.
    func observeUnsettled(_ read: @escaping @Sendable () -> Int) {
        guard enabled else { return }
        let base = baseAttributes
        meter.observableGauge(
            "yomo.client.unsettled.messages", unit: "{message}",
            description: "Frames written on the current connection that the zipper has not yet settled (delivery receipts) or acknowledged: sent again if the connection dies."
        ) { [(base, Double(read()))] }
    }

    /// Delivery receipts the zipper sent, read when metrics are collected.
    func observeReceipts(_ read: @escaping @Sendable () -> Int) {
        guard enabled else { return }
        meter.observableCounter(
            "yomo.zipper.delivery_receipts", unit: "{message}",
            description: "Delivery receipts sent to clients that asked: each tells a client which of its frames it may forget."
        ) { [(self.baseAttributes, Double(read()))] }
    }

    /// The health of a client's connection to its zipper (from ngtcp2's
    /// statistics), read when metrics are collected; nothing while disconnected.
    func observeQUIC(_ read: @escaping @Sendable () -> QUICConnection.Statistics?) {
        guard enabled else { return }
        let base = baseAttributes
        // Literal names and trailing closures: scripts/check-deploy.py reads them from here.
        meter.observableGauge("yomo.quic.smoothed_rtt", unit: "s", description: "Smoothed round-trip time to the zipper.") {
            read().map { [(base, $0.smoothedRTT.seconds)] } ?? []
        }
        meter.observableGauge("yomo.quic.min_rtt", unit: "s", description: "Smallest round-trip time seen to the zipper.") {
            read().map { [(base, $0.minimumRTT.seconds)] } ?? []
        }
        meter.observableGauge("yomo.quic.congestion_window", unit: "By", description: "Bytes the congestion controller allows in flight.") {
            read().map { [(base, Double($0.congestionWindow))] } ?? []
        }
        meter.observableGauge("yomo.quic.pacing_rate", unit: "By/s", description: "Rate the congestion controller paces at (BBR); 0 for CUBIC and Reno.") {
            read().map { [(base, Double($0.pacingRate))] } ?? []
        }
        meter.observableGauge("yomo.quic.in_flight", unit: "By", description: "Bytes sent and not yet acknowledged or declared lost.") {
            read().map { [(base, Double($0.bytesInFlight))] } ?? []
        }
        meter.observableGauge("yomo.quic.probe_timeouts", unit: "{timeout}", description: "Probe timeouts in a row: loss or a silent peer.") {
            read().map { [(base, Double($0.probeTimeouts))] } ?? []
        }
        meter.observableGauge("yomo.quic.sent", unit: "By", description: "UDP payload bytes sent on the current connection.") {
            read().map { [(base, Double($0.bytesSent))] } ?? []
        }
        meter.observableGauge("yomo.quic.received", unit: "By", description: "UDP payload bytes received on the current connection.") {
            read().map { [(base, Double($0.bytesReceived))] } ?? []
        }
        meter.observableGauge("yomo.quic.packets_sent", unit: "{packet}", description: "QUIC packets sent on the current connection.") {
            read().map { [(base, Double($0.datagramsSent))] } ?? []
        }
        meter.observableGauge("yomo.quic.packets_received", unit: "{packet}", description: "QUIC packets received on the current connection.") {
            read().map { [(base, Double($0.datagramsReceived))] } ?? []
        }
        meter.observableGauge("yomo.quic.packets_lost", unit: "{packet}", description: "Packets with stream data declared lost on the current connection.") {
            read().map { [(base, Double($0.packetsLost))] } ?? []
        }
        meter.observableGauge(
            "yomo.quic.max_datagram_size", unit: "By",
            description: "Largest UDP payload the current connection sends: 1200 until Path MTU Discovery confirms more, or after a black hole."
        ) {
            read().map { [(base, Double($0.maximumDatagramSize))] } ?? []
        }
    }

    struct HandlerStatistics: Sendable {
        var running: Int
        var heldBytes: Int
        var readingHeldSeconds: Double
    }

    /// A stream function's handlers, read when metrics are collected: the
    /// signs of a function whose handlers stall before its source slows down.
    func observeHandlers(_ read: @escaping @Sendable () -> HandlerStatistics?) {
        guard enabled else { return }
        let base = baseAttributes
        meter.observableGauge("yomo.handlers.running", unit: "{handler}", description: "Handlers running: async handlers, or the pipe handler.") {
            read().map { [(base, Double($0.running))] } ?? []
        }
        meter.observableGauge(
            "yomo.handlers.held", unit: "By",
            description: "Bytes held by running async handlers or queued for the pipe handler, as maximumHandlerBytes counts them."
        ) { read().map { [(base, Double($0.heldBytes))] } ?? [] }
        meter.observableCounter(
            "yomo.handlers.reading.held.time", unit: "s",
            description: "Time reading was held because the handlers were at maximumHandlerBytes or handlerConcurrency."
        ) { read().map { [(base, $0.readingHeldSeconds)] } ?? [] }
    }

    /// The zipper's side of each client's connection (from ngtcp2's
    /// statistics, and what the client has not acknowledged), read when
    /// metrics are collected: a series per connection while it lasts, so a
    /// client on a lossy or slow path shows up by name at the zipper.
    func observeClientConnections(_ read: @escaping @Sendable () -> [ClientConnectionHealth]) {
        guard enabled else { return }
        let base = baseAttributes
        @Sendable func series(_ value: @escaping @Sendable (ClientConnectionHealth) -> Double) -> [(MetricAttributes, Double)] {
            read().map { client in
                let attributes = base.with("yomo.client.type", Self.clientTypeName(client.member.clientType))
                    .with("yomo.client.name", client.member.name).with("yomo.client.id", client.member.clientID)
                return (attributes, value(client))
            }
        }
        // Literal names and trailing closures: scripts/check-deploy.py reads them from here.
        meter.observableGauge("yomo.zipper.client.smoothed_rtt", unit: "s", description: "Smoothed round-trip time to each connected client.") {
            series { $0.statistics.smoothedRTT.seconds }
        }
        meter.observableGauge("yomo.zipper.client.packets_lost", unit: "{packet}", description: "Packets with stream data to each client declared lost on its current connection.") {
            series { Double($0.statistics.packetsLost) }
        }
        meter.observableGauge("yomo.zipper.client.pacing_rate", unit: "By/s", description: "Rate the congestion controller paces at toward each client (BBR); 0 for CUBIC and Reno.") {
            series { Double($0.statistics.pacingRate) }
        }
        meter.observableGauge("yomo.zipper.client.max_datagram_size", unit: "By", description: "Largest datagram sent to each client.") {
            series { Double($0.statistics.maximumDatagramSize) }
        }
        meter.observableGauge("yomo.zipper.client.unacknowledged", unit: "By", description: "Bytes written to each client that its QUIC stack has not acknowledged.") {
            series { Double($0.unacknowledgedBytes) }
        }
        meter.observableGauge("yomo.zipper.client.unhandled", unit: "By", description: "Bytes a stream function acknowledged and its handlers have not finished, kept to give its next instance if it crashes.") {
            series { Double($0.retainedBytes) }
        }
        meter.observableGauge("yomo.zipper.client.unread", unit: "By", description: "Bytes received from each client that the zipper has not read yet: a source held back by a slow stream function.") {
            series { Double($0.unreadBytes) }
        }
    }

    func reconnected() { reconnects.add(1, attributes: baseAttributes) }

    func skippedCopy() { copiesSkipped.add(1, attributes: baseAttributes) }

    func gaveBack(_ frames: Int) { givenBack.add(Double(frames), attributes: baseAttributes) }

    func connection(_ clientType: ClientType, delta: Double) {
        connections.add(delta, attributes: baseAttributes.with("yomo.client.type", Self.clientTypeName(clientType)))
    }

    func rejected(reason: String) {
        rejectedHandshakes.add(1, attributes: baseAttributes.with("reason", reason))
    }

    func lostUnacknowledged(_ bytes: Int, clientType: ClientType) {
        unacknowledgedLost.add(Double(bytes), attributes: baseAttributes.with("yomo.client.type", Self.clientTypeName(clientType)))
    }

    func lostUnhandled(_ bytes: Int) {
        unhandledLost.add(Double(bytes), attributes: baseAttributes)
    }

    func heldUnacknowledged(_ frames: Int) {
        unacknowledgedHeld.add(Double(frames), attributes: baseAttributes)
    }

    func pathMTUBlackHole() {
        pathMTUBlackHoles.add(1, attributes: baseAttributes)
    }

    private static func clientTypeName(_ type: ClientType) -> String {
        switch type {
        case .source: "source"
        case .streamFunction: "stream_function"
        case .upstreamZipper: "upstream_zipper"
        default: "unknown"
        }
    }
}

/// Seconds since `start` on the monotonic clock.
func secondsSince(_ start: ContinuousClock.Instant) -> Double {
    let elapsed = (ContinuousClock.now - start).components
    return Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
}

/// One client connection's health as the zipper sees it.
struct ClientConnectionHealth: Sendable {
    var member: RouteMember
    var statistics: QUICConnection.Statistics
    var unacknowledgedBytes: Int
    /// Acknowledged and kept until its handlers finish (a stream function that acknowledges handling).
    var retainedBytes = 0
    /// Written to it past what its handlers finished in order, that they
    /// finished out of order (`ReceiptFrame.handledAhead`).
    var finishedAheadBytes = 0
    /// Written to it and not finished, as its handling receipts tell (0 without them).
    var unfinishedBytes = 0
    /// Transaction ids it named as handled on an earlier connection (`ReceiptFrame.handledBefore`).
    var handledBeforeCount = 0
    /// Received from it, not yet read (its frames wait for their destinations).
    var unreadBytes: Int
}
