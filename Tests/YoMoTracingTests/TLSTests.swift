import Foundation
import Logging
import Testing
import Tracing
@testable import YoMoTracing

@Suite struct OTLPTLSConfigurationTests {
    @Test func certificateAndProtocolVariablesWithPerSignalPrecedence() {
        let defaults = OTLPExporterConfiguration(signal: .traces, environment: [:])
        #expect(defaults.wireProtocol == .httpProtobuf)
        #expect(defaults.certificateFile == nil && defaults.clientCertificateFile == nil && defaults.clientKeyFile == nil)

        let environment = [
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_CERTIFICATE": "/ca/general.pem",
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": "/ca/traces.pem",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/client/general.pem",
            "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE": " /client/logs.pem ",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/client/general.key",
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": "/client/traces.key",
        ]
        let traces = OTLPExporterConfiguration(signal: .traces, environment: environment)
        #expect(traces.wireProtocol == .httpProtobuf)
        #expect(traces.certificateFile == "/ca/traces.pem")
        #expect(traces.clientCertificateFile == "/client/general.pem")
        #expect(traces.clientKeyFile == "/client/traces.key")
        let logs = OTLPExporterConfiguration(signal: .logs, environment: environment)
        #expect(logs.wireProtocol == .grpc)
        #expect(logs.certificateFile == "/ca/general.pem")
        #expect(logs.clientCertificateFile == "/client/logs.pem")
        #expect(logs.clientKeyFile == "/client/general.key")
        #expect(traces.unusableSettings.isEmpty)

        // Where a setting came from does not matter to equality.
        #expect(OTLPExporterConfiguration(signal: .traces, environment: ["OTEL_EXPORTER_OTLP_CERTIFICATE": "/ca.pem"])
            == OTLPExporterConfiguration(url: "http://localhost:4318/v1/traces", certificateFile: "/ca.pem"))
        // Certificates with a plain http:// endpoint are not used: said once, not silently.
        let plain = OTLPExporterConfiguration(signal: .logs, environment: [
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE": "/ca.pem",
        ])
        #expect(plain.unusableSettings
            == ["OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE set but http://collector:4318/v1/logs is plain http://: no TLS, not used"])
    }

    @Test func validateRefusesOtherProtocolsAndUnreadableFilesNamingTheVariable() throws {
        func message(_ environment: [String: String]) -> String? {
            do {
                try OTLPExporterConfiguration(signal: .traces, environment: environment).validate()
                return nil
            } catch {
                #expect(error == .invalidConfiguration)
                return error.message
            }
        }
        #expect(message([:]) == nil)
        #expect(message(["OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"]) == nil)
        #expect(message(["OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"])
            == "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported; supported: http/protobuf")
        #expect(message(["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"])
            == "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json is not supported; supported: http/protobuf")
        let https = ["OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318"]
        #expect(message(https.merging(["OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": "/nonexistent/ca.pem"]) { $1 })
            == "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE /nonexistent/ca.pem: No such file or directory")
        #expect(message(https.merging(["OTEL_EXPORTER_OTLP_CLIENT_KEY": TestCertificates.shared.clientKey]) { $1 })
            == "OTEL_EXPORTER_OTLP_CLIENT_KEY is set without OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
        #expect(message(https.merging(["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": NSTemporaryDirectory()]) { $1 })?
            .hasSuffix("is a directory") == true)
        // Plain http:// uses no certificate file, so a missing one stops nothing (a warning says so).
        #expect(message(["OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"]) == nil)

        // Made in code: the explicit constructor throws, naming the property.
        #expect(throws: TracingError.invalidConfiguration) {
            _ = try OTLPHTTPSpanExporter(
                configuration: OTLPExporterConfiguration(url: "https://collector:4318/v1/traces", certificateFile: "/nonexistent/ca.pem"),
                logger: CapturedLogs().logger()
            )
        }
    }

    @Test func headerValuesStayOutOfDescriptionsAndControlCharactersAreRefused() {
        let configuration = OTLPExporterConfiguration(signal: .traces, environment: [
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cr3t-t0ken,x-bad=a%0D%0AInjected: yes",
        ])
        #expect(configuration.headers.map(\.name) == ["Authorization"])
        #expect(configuration.headers.first?.value == "Bearer s3cr3t-t0ken")
        #expect(!"\(configuration)".contains("s3cr3t"))
        #expect("\(configuration)".contains("Authorization: <redacted>"))
        #expect(configuration.unusableSettings == ["OTEL_EXPORTER_OTLP_HEADERS: header x-bad has a control character; ignored"])
    }

    @Test func tlsFailuresAreNotRetriedConnectionFailuresAre() {
        let policy = OTLPRetryPolicy()
        func decide(_ code: UInt32, _ message: String) -> OTLPRetryPolicy.Decision {
            policy.decide(HTTPAttemptResult(status: 0, curlCode: code, curlMessage: message, body: []),
                          attempt: 0, nowSeconds: 0, random: 1)
        }
        // 60: peer certificate not verified; 35: handshake failed; 58: client certificate unusable.
        #expect(decide(60, "SSL certificate problem: unable to get local issuer certificate") == .fail)
        #expect(decide(35, "SSL connect error: error:0A000410:SSL routines::sslv3 alert handshake failure") == .fail)
        // 35 because the network cut the handshake off (a collector restarting): retried.
        #expect(decide(35, "SSL connect error: OpenSSL SSL_connect: Connection reset by peer in connection to c:4318")
            == .retry(after: .milliseconds(500)))
        #expect(decide(35, "SSL connect error: OpenSSL SSL_connect: SSL_ERROR_SYSCALL in connection to c:4318")
            == .retry(after: .milliseconds(500)))
        #expect(decide(58, "could not load PEM client certificate") == .fail)
        // 56 after a TLS 1.3 handshake: the collector refused the client certificate.
        #expect(decide(56, "Failure when receiving data from the peer: OpenSSL SSL_read: OpenSSL/3.0.19: "
            + "error:0A00045C:SSL routines::tlsv13 alert certificate required, errno 0") == .fail)
        #expect(decide(56, "Failure when receiving data from the peer: Connection reset by peer") == .retry(after: .milliseconds(500)))
    }
}

/// HTTPS to otlp_receiver.py (python `ssl`), certificates from certtool.
/// Serialized: each test runs its own receiver process.
@Suite(.serialized) struct OTLPTLSReceiverTests {
    let certificates = TestCertificates.shared

    @Test func exportsWithThePrivateCA() async throws {
        let receiver = try await OTLPReceiver.start(arguments: certificates.receiverArguments())
        defer { receiver.stop() }
        let logs = CapturedLogs()
        let provider = TracerProvider.fromEnvironment(serviceName: "tls", environment: [
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_CERTIFICATE": certificates.ca,
        ], logger: logs.logger())
        #expect(receiver.endpoint.hasPrefix("https://"))
        provider.tracer("t").startSpan("over tls").end()
        await provider.shutdown()
        #expect(await receiver.wait { receiver.spans.count == 1 })
        #expect(receiver.spans.first?["name"] as? String == "over tls")
        #expect(receiver.tlsErrors.isEmpty)
        #expect(logs.all.filter { $0.level >= .warning }.isEmpty, "\(logs.all.map(\.message))")
    }

    @Test func wrongCAFailsOnceLoggedAndNotRetriedAndTheTokenIsNeverLogged() async throws {
        let receiver = try await OTLPReceiver.start(arguments: certificates.receiverArguments())
        defer { receiver.stop() }
        let logs = CapturedLogs()
        let configuration = OTLPExporterConfiguration(signal: .traces, environment: [
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_CERTIFICATE": certificates.otherCA,
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cr3t-t0ken",
        ])
        let exporter = try OTLPHTTPSpanExporter(configuration: configuration, logger: logs.logger())
        let error = #expect(throws: TracingError.tlsFailed) {
            try exporter.export(finishedSpans("unverified"), timeout: .seconds(5))
        }
        #expect(await receiver.wait { receiver.tlsErrors.count == 1 })
        #expect(receiver.tlsErrors.count == 1, "one handshake: not retried")
        #expect(receiver.requests.isEmpty)
        let problems = logs.all.filter { $0.level >= .warning }
        #expect(problems.count == 1)
        let line = try #require(problems.first)
        #expect(line.level == .error)
        #expect(line.message.contains("not retrying"), "\(line.message)")
        #expect(line.message.contains("TLS failure: the collector's certificate did not verify against \(certificates.otherCA)"),
                "\(line.message)")
        #expect(error?.message.contains("TLS failure") == true)
        for record in logs.all {
            #expect(!record.message.contains("s3cr3t") && !record.metadata.values.contains { $0.contains("s3cr3t") })
        }
    }

    @Test func mutualTLSSucceedsOnlyWithTheClientCertificateAndKey() async throws {
        let receiver = try await OTLPReceiver.start(arguments: certificates.receiverArguments(requireClientCertificate: true))
        defer { receiver.stop() }
        let base = ["OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_CERTIFICATE": certificates.ca]

        let logs = CapturedLogs()
        let anonymous = try OTLPHTTPSpanExporter(
            configuration: OTLPExporterConfiguration(signal: .traces, environment: base), logger: logs.logger()
        )
        #expect(throws: TracingError.tlsFailed) {
            try anonymous.export(finishedSpans("no client certificate"), timeout: .seconds(5))
        }
        #expect(await receiver.wait { receiver.tlsErrors.count == 1 })
        #expect(receiver.tlsErrors.count == 1, "refused once, not retried")
        #expect((receiver.tlsErrors.first?["error"] as? String)?.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") == true)
        #expect(logs.all.filter { $0.level == .error }.count == 1)
        #expect(receiver.requests.isEmpty)

        let provider = TracerProvider.otlp(serviceName: "mtls", environment: base.merging([
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": certificates.clientCertificate,
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": certificates.clientKey,
        ]) { $1 }, logger: logs.logger())
        provider.tracer("t").startSpan("with client certificate").end()
        await provider.shutdown()
        #expect(await receiver.wait { receiver.spans.count == 1 })
        #expect(receiver.spans.first?["name"] as? String == "with client certificate")
        #expect(receiver.tlsErrors.count == 1)
    }

    @Test func perSignalVariablesOverrideTheGeneralOnes() async throws {
        let receiver = try await OTLPReceiver.start(arguments: certificates.receiverArguments(requireClientCertificate: true))
        defer { receiver.stop() }
        let logs = CapturedLogs()
        // The general settings alone would fail (wrong CA, a file that does
        // not exist); the traces ones replace them.
        let provider = TracerProvider.fromEnvironment(serviceName: "per-signal", environment: [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint + "/v1/traces",
            "OTEL_EXPORTER_OTLP_CERTIFICATE": certificates.otherCA,
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/nonexistent/client.pem",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/nonexistent/client.key",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": certificates.ca,
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": certificates.clientCertificate,
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": certificates.clientKey,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        ], logger: logs.logger())
        provider.tracer("t").startSpan("per signal").end()
        await provider.shutdown()
        #expect(await receiver.wait { receiver.spans.count == 1 })
        #expect(receiver.tlsErrors.isEmpty)
        #expect(logs.all.filter { $0.level >= .warning }.isEmpty, "\(logs.all.map(\.message))")
    }

    @Test func anUnreadableCertificateFileDisablesExportWithOneLine() async throws {
        let receiver = try await OTLPReceiver.start(arguments: certificates.receiverArguments())
        defer { receiver.stop() }
        let logs = CapturedLogs()
        let provider = TracerProvider.fromEnvironment(serviceName: "missing", environment: [
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem",
        ], logger: logs.logger())
        #expect(!provider.isEnabled)
        provider.tracer("t").startSpan("dropped").end()
        await provider.shutdown()
        let problems = logs.all.filter { $0.level >= .warning }
        #expect(problems.map(\.message) == [
            "OTLP span export disabled: OTEL_EXPORTER_OTLP_CERTIFICATE /nonexistent/ca.pem: No such file or directory",
        ])
        #expect(problems.first?.level == .error)
        #expect(receiver.requests.isEmpty && receiver.tlsErrors.isEmpty)
    }
}

@Suite(.serialized) struct OTLPProtocolAndSecretTests {
    @Test(arguments: ["grpc", "http/json"])
    func unsupportedProtocolIsRefusedWithOneLineAndNothingIsExported(_ name: String) async throws {
        let receiver = try await OTLPReceiver.start()
        defer { receiver.stop() }
        let logs = CapturedLogs()
        let provider = TracerProvider.fromEnvironment(serviceName: "proto", environment: [
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": name.uppercased(),
        ], logger: logs.logger())
        #expect(!provider.isEnabled)
        provider.tracer("t").startSpan("must not leave").end()
        await provider.shutdown()
        #expect(logs.all.map(\.message) == [
            "OTLP span export disabled: OTEL_EXPORTER_OTLP_PROTOCOL=\(name) is not supported; supported: http/protobuf",
        ])
        #expect(logs.all.first?.level == .error)
        #expect(receiver.requests.isEmpty)
    }

    @Test func aBearerTokenEchoedByTheCollectorAppearsInNoLogLine() async throws {
        let receiver = try await OTLPReceiver.start(arguments: ["--status", "401", "--echo-auth"])
        defer { receiver.stop() }
        let logs = CapturedLogs()
        let provider = TracerProvider.otlp(serviceName: "token", environment: [
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20s3cr3t-t0ken",
        ], logger: logs.logger())
        provider.tracer("t").startSpan("refused").end()
        await provider.shutdown()

        #expect(await receiver.wait { receiver.requests.count == 1 })
        let headers = try #require(receiver.requests.first?["headers"] as? [String: String])
        #expect(headers["authorization"] == "Bearer s3cr3t-t0ken", "percent-decoded and sent")
        let failure = try #require(logs.all.first { $0.level == .error && $0.message.contains("HTTP 401") })
        #expect(failure.message.contains("bad credentials <redacted>"), "\(failure.message)")
        #expect(!logs.all.isEmpty)
        for record in logs.all {
            #expect(!record.message.contains("s3cr3t"), "\(record.message)")
            #expect(!record.metadata.values.contains { $0.contains("s3cr3t") }, "\(record.metadata)")
        }
    }
}
