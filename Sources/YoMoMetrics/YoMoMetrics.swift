import CoreMetrics
import FoundationEssentials
public import Logging
import Synchronization

private let swiftMetricsBootstrapped = Atomic<Bool>(false)
public import YoMoTracing

/// Sets up metrics for an executable: a meter provider for the process (what
/// components use when given none) with the process's own `process.*`
/// metrics (`ProcessMetrics`), swift-metrics backed by it, and the
/// `/metrics` `/healthz` `/readyz` endpoint when `YOMO_METRICS_LISTEN`
/// (`HOST:PORT`) or `listen` asks for it. Off by default: without an endpoint
/// the provider is `MeterProvider.noop` and recording costs nothing.
/// Libraries never call this; only executables do.
public enum YoMoMetrics {
    public struct Installation: Sendable {
        public let provider: MeterProvider
        /// The endpoint, when one was asked for.
        public let endpoint: MetricsEndpoint?
        /// The OTLP export, when the environment asks for it.
        public let reader: PeriodicMetricReader?

        /// A last OTLP export (bounded by `timeout`), then the endpoint closes.
        public func shutdown(timeout: Duration = .seconds(2)) async {
            await reader?.shutdown(timeout: timeout)
            await endpoint?.close()
        }
    }

    /// - Parameters:
    ///   - listen: `HOST:PORT` for the endpoint (a `--metrics` flag); wins over
    ///     `YOMO_METRICS_LISTEN`.
    ///   - environment: also decides OTLP export: when `OTEL_EXPORTER_OTLP_ENDPOINT`
    ///     or `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` is set (or `OTEL_METRICS_EXPORTER`
    ///     names `otlp`), metrics go to `/v1/metrics` every `OTEL_METRIC_EXPORT_INTERVAL`,
    ///     unless `OTEL_METRICS_EXPORTER` is `none`. Neither endpoint nor export:
    ///     metrics stay off (`MeterProvider.noop`).
    /// - Throws: `MetricsError` when the address is malformed or cannot be bound.
    public static func bootstrap(
        serviceName: String, listen: String? = nil, environment: [String: String] = ProcessEnvironment.current,
        logger: Logger = Logger(label: "swift-yomo.metrics")
    ) async throws -> Installation {
        let address = listen ?? environment["YOMO_METRICS_LISTEN"].flatMap { $0.isEmpty ? nil : $0 }
        let export = wantsOTLPExport(environment)
        guard address != nil || export else { return Installation(provider: .noop, endpoint: nil, reader: nil) }
        let provider = MeterProvider(configuration: .init(serviceName: serviceName, environment: environment))
        guard provider.isEnabled else { return Installation(provider: .noop, endpoint: nil, reader: nil) }
        var endpoint: MetricsEndpoint?
        if let address {
            let (host, port) = try parseListen(address)
            endpoint = try await MetricsEndpoint.start(host: host, port: port, provider: provider)
        }
        var reader: PeriodicMetricReader?
        if export {
            do {
                let exporter = try OTLPHTTPMetricExporter(
                    configuration: OTLPExporterConfiguration(signal: .metrics, environment: environment), logger: logger)
                reader = PeriodicMetricReader(
                    provider: provider, exporter: exporter, configuration: .init(environment: environment))
            } catch {
                // As for traces: one clear line, and no export rather than a wrong one.
                logger.error("OTLP metrics export is off: \(error)")
            }
        }
        ProcessMetrics.observe(provider)
        GlobalMeterProvider.set(provider)
        // swift-metrics allows one bootstrap per process (a second traps).
        if !swiftMetricsBootstrapped.exchange(true, ordering: .relaxed) {
            MetricsSystem.bootstrap(SwiftMetricsFactory(provider))
        }
        return Installation(provider: provider, endpoint: endpoint, reader: reader)
    }

    /// `OTEL_METRICS_EXPORTER` (a list; `none` turns export off), else whether
    /// an OTLP endpoint is set.
    static func wantsOTLPExport(_ environment: [String: String]) -> Bool {
        func isSet(_ key: String) -> Bool { !(environment[key]?.trimming { $0 == " " || $0 == "\t" }.isEmpty ?? true) }
        if let exporters = environment["OTEL_METRICS_EXPORTER"]?.lowercased(), !exporters.trimming({ $0 == " " }).isEmpty {
            let names = exporters.split(separator: ",").map { $0.trimming { $0 == " " || $0 == "\t" } }
            return names.contains("otlp")
        }
        return isSet("OTEL_EXPORTER_OTLP_ENDPOINT") || isSet("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
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

