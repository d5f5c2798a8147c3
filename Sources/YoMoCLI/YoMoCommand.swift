import ArgumentParser
import Dispatch
import FoundationEssentials
import Glibc
import Logging
import YoMo
import YoMoLogging
import YoMoZipperYAML

// Not an async main: runAsyncMain keeps the main thread parked instead of
// exiting it, which keeps ~2 MB of unwind tables out of memory.
@main
enum Main {
    static func main() { runAsyncMain { await YoMoCommand.main() } }
}

struct YoMoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "yomo",
        abstract: "swift-yomo: run a YoMo zipper, benchmark a pipeline, watch its traces and metrics.",
        subcommands: [Serve.self, Bench.self, TraceView.self, Top.self]
    )
}

/// Logs as YOMO_LOG_LEVEL / YOMO_LOG_FORMAT ask (default: text at info on
/// stderr), with trace ids on every record, and OTLP logs when OTEL_* ask.
func bootstrapLogging(service: String) -> YoMoLogging.Installation {
    YoMoLogging.bootstrap(serviceName: service)
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a zipper.")

    @Option(name: .shortAndLong, help: "A zipper YAML config (name, host, port, auth).")
    var config: String?

    @Option(help: "Address to listen on (overrides the config).")
    var host: String?

    @Option(help: "UDP port to listen on (overrides the config; default 9000).")
    var port: Int?

    @Option(help: "Require clients to present credential token:<TOKEN>.")
    var token: String?

    @Option(
        name: .customLong("stateless-reset-key-file"),
        help: "Key of QUIC stateless resets, kept across restarts so clients reconnect at once (default: $XDG_STATE_HOME/yomo/zipper-<port>.reset-key, else ~/.local/state/yomo/…; 'none': a random key per start).")
    var statelessResetKeyFile: String?

    @Option(
        name: .customLong("functions-file"),
        help: "Where to remember the stream functions connected, so that after a restart each one's frames are held for it until it is back (default: beside the default stateless reset key, zipper-<port>.functions; 'none': nothing remembered).")
    var functionsFile: String?

    @Option(name: .customLong("slow-consumer"), help: "What to do with a stream function that does not keep up: block (default), drop or disconnect.")
    var slowConsumer: String?
    @Option(
        name: .customLong("unrouted-hold"),
        help: "How long frames with no stream function wait for one on its way back, e.g. 5s (the default) or 500ms; 0 drops them at once, as the Go zipper does.")
    var unroutedHold: String?
    @Option(help: "Serve /metrics, /healthz and /readyz on HOST:PORT (default: YOMO_METRICS_LISTEN, else off).") var metrics: String?

    @Option(
        name: .customLong("mesh"),
        help: "A zipper of the mesh to forward to, NAME=HOST:PORT (repeatable; adds to the config's mesh:, replacing an entry of the same name; an entry named like this zipper is skipped).")
    var mesh: [String] = []

    @Option(name: .customLong("mesh-credential"), help: "Credential (e.g. token:secret) for the --mesh zippers.")
    var meshCredential: String?

    @Option(help: "This zipper's name (overrides the config; its mesh entry is skipped).")
    var name: String?

    @Option(
        name: .customLong("congestion-control"),
        help: "How the zipper paces what it sends: bbr (the default; keeps up on a path that loses packets at random), cubic (the Go zipper's) or reno (default: YOMO_QUIC_CONGESTION_CONTROL, else bbr).")
    var congestionControl: String?

    func run() async throws {
        let logging = bootstrapLogging(service: "yomo-zipper")
        let metricsInstallation = try await YoMoMetrics.bootstrap(serviceName: "yomo-zipper", listen: metrics)
        var configuration = try config.map { try ZipperConfiguration(contentsOfFile: $0) } ?? ZipperConfiguration()
        if let name { configuration.name = name }
        if let host { configuration.host = host }
        if let port { configuration.port = port }
        if let token { configuration.authentication = .token(token) }
        if let slowConsumer {
            guard let policy = ZipperConfiguration.SlowConsumer.Policy(slowConsumer) else {
                throw ValidationError("--slow-consumer must be block, drop or disconnect")
            }
            configuration.slowConsumer.policy = policy
        }
        if let unroutedHold {
            guard let duration = ZipperConfiguration.UnroutedHold.parseDuration(unroutedHold) else {
                throw ValidationError("--unrouted-hold must be a duration such as 5s or 500ms (0: off)")
            }
            configuration.unroutedHold.duration = duration
        }
        for entry in mesh {
            let peer: ZipperConfiguration.MeshPeer
            do {
                peer = try ZipperConfiguration.MeshPeer(entry, credential: meshCredential)
            } catch {
                throw ValidationError("--mesh: \(error.message)")
            }
            configuration.mesh.removeAll { $0.name == peer.name }
            configuration.mesh.append(peer)
        }
        configuration.mesh.sort { $0.name < $1.name }
        if let statelessResetKeyFile {
            configuration.statelessResetKeyFile = statelessResetKeyFile == "none" ? nil : statelessResetKeyFile
        } else if configuration.statelessResetKeyFile == nil {
            configuration.useDefaultStatelessResetKey(at: defaultStatelessResetKeyFile(port: configuration.port))
        }
        if let functionsFile {
            configuration.functionsFile = functionsFile == "none" ? nil : functionsFile
        } else if configuration.functionsFile == nil, let keyFile = configuration.statelessResetKeyFile,
                  keyFile == defaultStatelessResetKeyFile(port: configuration.port) {
            // Beside the default key, which could be kept: the directory is writable.
            configuration.functionsFile = String(keyFile.dropLast(".reset-key".count)) + ".functions"
        }
        var options = Zipper.Options()
        if let congestionControl {
            guard let chosen = QUICConfiguration.CongestionControl(congestionControl) else {
                throw ValidationError("--congestion-control must be bbr, cubic or reno")
            }
            options.quic.congestionControl = chosen
        }
        let zipper = Zipper(configuration: configuration, options: options)
        try await zipper.start()
        await zipper.wait()
        // The component already spent its shutdown budget; OTLP logs get 1 s more.
        await metricsInstallation.shutdown()
        await logging.shutdown(timeout: .seconds(1))
    }
}

extension ZipperConfiguration {
    /// Takes the key file at `path` (made if missing) as the stateless reset key.
    /// The default is a convenience, not a requirement: where it cannot be kept
    /// (a read-only file system, a home that does not exist), the zipper serves
    /// with a random key, as `none`, and says what that costs. A file named in
    /// the config or on the command line still fails the start.
    mutating func useDefaultStatelessResetKey(at path: String?, logger: Logger = Logger(label: "yomo.zipper")) {
        guard let path else { return }
        statelessResetKeyFile = path
        do {
            _ = try loadStatelessResetKey()
        } catch {
            statelessResetKeyFile = nil
            logger.warning(
                "the stateless reset key cannot be kept across restarts: serving with a random key, so clients notice a restart of this zipper only at their idle timeout (--stateless-reset-key-file names a writable file, or none)",
                metadata: ["error": "\(error.message)", "zipper_name": "\(name)"])
        }
    }
}

/// Where `yomo serve` keeps its stateless reset key unless told otherwise: the
/// XDG state directory, so a restarted zipper resets its old clients' packets.
func defaultStatelessResetKeyFile(port: Int, environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
    // A zipper on an ephemeral port is found at another port after a restart:
    // no client would recognise its resets.
    guard port != 0 else { return nil }
    let base: String
    if let state = environment["XDG_STATE_HOME"], !state.isEmpty {
        base = state
    } else if let home = environment["HOME"], !home.isEmpty {
        base = home + "/.local/state"
    } else {
        return nil
    }
    return "\(base)/yomo/zipper-\(port).reset-key"
}
