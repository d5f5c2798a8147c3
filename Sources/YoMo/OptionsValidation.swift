internal import YoMoQUIC

extension StreamFunction.Options {
    /// Refuses values that would make a client misbehave rather than fail: a
    /// handler limit of 0 took no frame and never closed; a negative retry
    /// delay redialled without pause until the delay's arithmetic trapped.
    func validate(_ client: String) throws(YoMoError) {
        func invalid(_ what: String) -> YoMoError { YoMoError(.invalidConfiguration, "\(client): \(what)") }
        if let count = handlerConcurrency, count < 1 {
            throw invalid("handlerConcurrency must be at least 1 (nil: no limit), not \(count)")
        }
        if let bytes = maximumHandlerBytes, bytes < 1 {
            throw invalid("maximumHandlerBytes must be at least 1 (nil: no limit), not \(bytes)")
        }
        guard handshakeTimeout > .zero else { throw invalid("handshakeTimeout must be positive, not \(handshakeTimeout)") }
        guard shutdownTimeout >= .zero else { throw invalid("shutdownTimeout must not be negative, not \(shutdownTimeout)") }
        guard outageBufferFrames >= 0, outageBufferBytes >= 0 else {
            throw invalid("outageBufferFrames and outageBufferBytes must not be negative (0 turns holding off)")
        }
        if let problem = reconnect.validate() { throw invalid("reconnect: \(problem)") }
        do {
            try quic.validate()
        } catch {
            throw invalid("\(error)")
        }
    }
}

extension ReconnectPolicy {
    /// What is wrong with the policy, if anything (its fields may be set after `init`).
    func validate() -> String? {
        if firstRetryDelay.lowerBound < .zero { return "firstRetryDelay must not be negative" }
        if initialDelay < .zero || maximumDelay < .zero { return "initialDelay and maximumDelay must not be negative" }
        if !(multiplier >= 1 && multiplier.isFinite) { return "multiplier must be a finite number of at least 1, not \(multiplier)" }
        if !(0...1).contains(jitter) { return "jitter must be between 0 and 1, not \(jitter)" }
        if let attempts = maximumAttempts, attempts < 0 { return "maximumAttempts must not be negative (nil: retry forever)" }
        return nil
    }
}

extension Zipper {
    /// Refuses what the YAML loader refuses, for a configuration built in code.
    func validate() throws(YoMoError) {
        func invalid(_ what: String) -> YoMoError { YoMoError(.invalidConfiguration, "zipper \(configuration.name): \(what)") }
        guard (0...65535).contains(configuration.port) else { throw invalid("port must be from 0 to 65535, not \(configuration.port)") }
        if let problem = configuration.authentication?.problem { throw invalid(problem) }
        let limits = configuration.limits
        for (name, value) in [
            ("maximumConnections", limits.maximumConnections), ("maximumPendingHandshakes", limits.maximumPendingHandshakes),
            ("maximumConnectionsPerAddress", limits.maximumConnectionsPerAddress),
            ("maximumPendingHandshakesPerAddress", limits.maximumPendingHandshakesPerAddress),
            ("maximumQUICHandshakes", limits.maximumQUICHandshakes),
            ("maximumHandshakeSize", limits.maximumHandshakeSize), ("maximumFrameSize", limits.maximumFrameSize),
            ("maximumIncompleteFrameBytes", limits.maximumIncompleteFrameBytes),
            ("slowConsumer.maximumBufferedBytes", configuration.slowConsumer.maximumBufferedBytes),
            ("meshQueue.maximumFrames", configuration.meshQueue.maximumFrames),
            ("meshQueue.maximumBytes", configuration.meshQueue.maximumBytes),
        ] where value < 1 {
            throw invalid("\(name) must be positive, not \(value)")
        }
        if let bad = limits.trustedNetworks.first(where: { IPNetwork($0) == nil }) {
            throw invalid("trustedNetworks: \"\(bad)\" is not a network such as 10.0.0.0/8 or fd00::/8")
        }
        guard limits.maximumUnvalidatedHandshakes >= 0 else {
            throw invalid("maximumUnvalidatedHandshakes must not be negative (0: a QUIC Retry for every client), not \(limits.maximumUnvalidatedHandshakes)")
        }
        guard (1...128).contains(limits.ipv6PrefixLength) else {
            throw invalid("ipv6PrefixLength must be from 1 to 128 (128: each IPv6 address on its own), not \(limits.ipv6PrefixLength)")
        }
        guard limits.maximumUnhandledBytes >= 0 else {
            throw invalid("maximumUnhandledBytes must not be negative (0: keep nothing a function acknowledged), not \(limits.maximumUnhandledBytes)")
        }
        if let budget = limits.maximumReceiveWindowBytes, budget < 32 << 10 {
            throw invalid("maximumReceiveWindowBytes must be at least 32768 (nil: no budget), not \(budget)")
        }
        guard limits.stalledFrameTimeout > .zero else {
            throw invalid("stalledFrameTimeout must be positive, not \(limits.stalledFrameTimeout)")
        }
        guard options.handshakeTimeout > .zero else { throw invalid("handshakeTimeout must be positive, not \(options.handshakeTimeout)") }
        guard options.shutdownTimeout >= .zero else { throw invalid("shutdownTimeout must not be negative, not \(options.shutdownTimeout)") }
        let hold = configuration.unroutedHold
        guard hold.duration >= .zero, hold.afterLastObserver >= .zero else {
            throw invalid("unroutedHold.duration and unroutedHold.afterLastObserver must not be negative (a zero duration turns holding off)")
        }
        if hold.isOn, hold.maximumBytes < 1 {
            throw invalid("unroutedHold.maximumBytes must be positive, not \(hold.maximumBytes) (a zero duration turns holding off)")
        }
        do {
            try options.quic.validate()
        } catch {
            throw invalid("\(error)")
        }
    }
}
