public import CoreMetrics
import Foundation
import Synchronization

private let swiftMetricsBootstrapped = Atomic<Bool>(false)
public import YoMoTracing

/// Sets up metrics for an executable: a meter provider for the process (what
/// components use when given none), swift-metrics backed by it, and the
/// `/metrics` `/healthz` `/readyz` endpoint when `YOMO_METRICS_LISTEN`
/// (`HOST:PORT`) or `listen` asks for it. Off by default: without an endpoint
/// the provider is `MeterProvider.noop` and recording costs nothing.
/// Libraries never call this; only executables do.
public enum YoMoMetrics {
    public struct Installation: Sendable {
        public let provider: MeterProvider
        /// The endpoint, when one was asked for.
        public let endpoint: MetricsEndpoint?

        public func shutdown() async { await endpoint?.close() }
    }

    /// - Parameters:
    ///   - listen: `HOST:PORT` for the endpoint (a `--metrics` flag); wins over
    ///     `YOMO_METRICS_LISTEN`. `nil` and no variable: no endpoint, no metrics.
    /// - Throws: `MetricsError` when the address is malformed or cannot be bound.
    public static func bootstrap(
        serviceName: String, listen: String? = nil, environment: [String: String] = ProcessEnvironment.current
    ) async throws -> Installation {
        let address = listen ?? environment["YOMO_METRICS_LISTEN"].flatMap { $0.isEmpty ? nil : $0 }
        guard let address else { return Installation(provider: .noop, endpoint: nil) }
        let (host, port) = try parseListen(address)
        let provider = MeterProvider(configuration: .init(serviceName: serviceName, environment: environment))
        guard provider.isEnabled else { return Installation(provider: .noop, endpoint: nil) }
        let endpoint = try await MetricsEndpoint.start(host: host, port: port, provider: provider)
        GlobalMeterProvider.set(provider)
        // swift-metrics allows one bootstrap per process (a second traps).
        if !swiftMetricsBootstrapped.exchange(true, ordering: .relaxed) {
            MetricsSystem.bootstrap(SwiftMetricsFactory(provider))
        }
        return Installation(provider: provider, endpoint: endpoint)
    }

    /// `HOST:PORT`, `[v6]:PORT` or `:PORT` (all interfaces).
    public static func parseListen(_ text: String) throws -> (host: String, port: Int) {
        let invalid = MetricsError("metrics address \"\(text)\" is not HOST:PORT (e.g. 127.0.0.1:9464)")
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw invalid
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.isEmpty { host = "0.0.0.0" }
        return (host, port)
    }
}
