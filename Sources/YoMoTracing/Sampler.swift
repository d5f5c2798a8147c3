public import Tracing

/// What a sampler decided for a new span.
public struct SamplingDecision: Sendable, Hashable, CustomStringConvertible {
    private enum Code: Sendable, Hashable { case drop, recordOnly, recordAndSample }
    private let code: Code

    /// Not recorded, not exported; the span still gets ids so children stay connected.
    public static let drop = SamplingDecision(code: .drop)
    /// Recorded (processors see it) but not sampled, so not exported.
    public static let recordOnly = SamplingDecision(code: .recordOnly)
    /// Recorded and exported.
    public static let recordAndSample = SamplingDecision(code: .recordAndSample)

    public var isRecording: Bool { code != .drop }
    public var isSampled: Bool { code == .recordAndSample }

    public var description: String {
        switch code {
        case .drop: "drop"
        case .recordOnly: "recordOnly"
        case .recordAndSample: "recordAndSample"
        }
    }
}

/// Decides, at span start, whether a span is recorded and exported.
public protocol Sampler: Sendable, CustomStringConvertible {
    /// - Parameters:
    ///   - parent: the parent's span context (local or remote), nil for a root span.
    ///   - traceID: the trace id the new span will have.
    func shouldSample(parent: SpanContext?, traceID: TraceID, name: String, kind: SpanKind) -> SamplingDecision
}

/// Samples every span.
public struct AlwaysOnSampler: Sampler {
    public init() {}
    public func shouldSample(parent: SpanContext?, traceID: TraceID, name: String, kind: SpanKind) -> SamplingDecision {
        .recordAndSample
    }
    public var description: String { "AlwaysOnSampler" }
}

/// Samples nothing.
public struct AlwaysOffSampler: Sampler {
    public init() {}
    public func shouldSample(parent: SpanContext?, traceID: TraceID, name: String, kind: SpanKind) -> SamplingDecision {
        .drop
    }
    public var description: String { "AlwaysOffSampler" }
}

/// Samples a deterministic fraction of trace ids, so every process that sees a
/// trace makes the same choice. Reads the low 63 bits of the id's last 8 bytes.
public struct TraceIDRatioBasedSampler: Sampler {
    public let ratio: Double
    private let threshold: UInt64

    /// `ratio` is clamped to 0...1.
    public init(ratio: Double) {
        let clamped = ratio.isNaN ? 0 : min(max(ratio, 0), 1)
        self.ratio = clamped
        if clamped >= 1 {
            threshold = UInt64.max
        } else {
            threshold = UInt64(clamped * Double(UInt64(1) << 63))
        }
    }

    public func shouldSample(parent: SpanContext?, traceID: TraceID, name: String, kind: SpanKind) -> SamplingDecision {
        if threshold == .max { return .recordAndSample }
        return (traceID.low & 0x7FFF_FFFF_FFFF_FFFF) < threshold ? .recordAndSample : .drop
    }

    public var description: String { "TraceIDRatioBased{\(ratio)}" }
}

/// Follows the parent's sampled flag; root spans go to `root`.
public struct ParentBasedSampler: Sampler {
    public let root: any Sampler
    public let remoteParentSampled: any Sampler
    public let remoteParentNotSampled: any Sampler
    public let localParentSampled: any Sampler
    public let localParentNotSampled: any Sampler

    public init(
        root: any Sampler,
        remoteParentSampled: any Sampler = AlwaysOnSampler(),
        remoteParentNotSampled: any Sampler = AlwaysOffSampler(),
        localParentSampled: any Sampler = AlwaysOnSampler(),
        localParentNotSampled: any Sampler = AlwaysOffSampler()
    ) {
        self.root = root
        self.remoteParentSampled = remoteParentSampled
        self.remoteParentNotSampled = remoteParentNotSampled
        self.localParentSampled = localParentSampled
        self.localParentNotSampled = localParentNotSampled
    }

    public func shouldSample(parent: SpanContext?, traceID: TraceID, name: String, kind: SpanKind) -> SamplingDecision {
        guard let parent, parent.isValid else {
            return root.shouldSample(parent: parent, traceID: traceID, name: name, kind: kind)
        }
        let delegate: any Sampler = switch (parent.isRemote, parent.isSampled) {
        case (true, true): remoteParentSampled
        case (true, false): remoteParentNotSampled
        case (false, true): localParentSampled
        case (false, false): localParentNotSampled
        }
        return delegate.shouldSample(parent: parent, traceID: traceID, name: name, kind: kind)
    }

    public var description: String { "ParentBased{root:\(root)}" }
}

/// Builds samplers from configuration.
public enum Samplers {
    /// The sampler named by `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`,
    /// `traceidratio`, `parentbased_always_on` — the default —,
    /// `parentbased_always_off`, `parentbased_traceidratio`) with the ratio in
    /// `OTEL_TRACES_SAMPLER_ARG` (default 1.0). An unknown name falls back to the
    /// default and is reported in `warning`.
    public static func fromEnvironment(
        _ environment: [String: String] = ProcessEnvironment.current
    ) -> (sampler: any Sampler, warning: String?) {
        let name = environment["OTEL_TRACES_SAMPLER"]?.trimmingSpaces().lowercased() ?? ""
        var warning: String?
        func ratio() -> Double {
            guard let argument = environment["OTEL_TRACES_SAMPLER_ARG"]?.trimmingSpaces(), !argument.isEmpty else {
                return 1
            }
            guard let value = Double(argument), value >= 0, value <= 1 else {
                warning = "invalid OTEL_TRACES_SAMPLER_ARG '\(argument)', using 1.0"
                return 1
            }
            return value
        }
        switch name {
        case "always_on": return (AlwaysOnSampler(), nil)
        case "always_off": return (AlwaysOffSampler(), nil)
        case "traceidratio": return (TraceIDRatioBasedSampler(ratio: ratio()), warning)
        case "parentbased_always_off": return (ParentBasedSampler(root: AlwaysOffSampler()), nil)
        case "parentbased_traceidratio":
            return (ParentBasedSampler(root: TraceIDRatioBasedSampler(ratio: ratio())), warning)
        case "", "parentbased_always_on": return (ParentBasedSampler(root: AlwaysOnSampler()), nil)
        default:
            return (ParentBasedSampler(root: AlwaysOnSampler()),
                    "unknown OTEL_TRACES_SAMPLER '\(name)', using parentbased_always_on")
        }
    }
}
