import Foundation
import NIOCore
import Testing
@testable import YoMoQUIC

/// Our client and server against an independent QUIC stack (Python aioquic).
@Suite("Interop with aioquic", .serialized)
struct InteropTests {
    @Test(
        "client echoes byte-exact through an aioquic server, also one that asks it for a Retry, and with a NEW_TOKEN it does not know",
        arguments: [false, true], [false, true])
    func clientAgainstAioquic(retry: Bool, staleToken: Bool) async throws {
        let (peer, port) = try await PythonPeer.echoServer(retry: retry)
        defer { peer.stop() }
        let address = try UDPAddress.resolve(host: "127.0.0.1", port: port)[0]
        _ = NewTokens.take(for: address)
        if staleToken {
            // What a zipper that had this port before would have given: aioquic asking for
            // Retries refuses it with INVALID_TOKEN, where RFC 9000 §8.1.3 says to ignore it.
            let other = RetryTokens(statelessResetKey: (0..<32).map { _ in UInt8.random(in: 0...255) })
            NewTokens.keep(try #require(other.makeRegular(for: address, now: RetryTokens.now())), for: address)
        }
        let connection = try await QUICConnection.connect(host: "127.0.0.1", port: port)
        #expect(!NewTokens.has(for: address), "a token is used once")
        // Through a Retry the client had to send its Initial again with the token, or never be let in.
        // Flow control and loss recovery get 16 MiB once; the other cases are about the dial.
        let total = retry || staleToken ? 2 << 20 : 16 << 20
        let received = try await Fixture.echo(connection, total: total)
        #expect(received == total)
        await connection.close(reason: "done")
    }

    @Test("server echoes for an aioquic client, also one it asks for a Retry", arguments: [false, true], [false, true])
    func serverAgainstAioquic(bigClientHello: Bool, retry: Bool) async throws {
        let server = try await QUICServer.bind(
            host: "127.0.0.1", port: 0, limits: QUICServer.Limits(maximumUnvalidatedHandshakes: retry ? 0 : 128))
        let echo = Task {
            for await connection in server.connections {
                Task {
                    do {
                        for try await chunk in connection.inbound { try await connection.write(chunk) }
                        try await connection.finishWriting()
                    } catch {}
                }
            }
        }
        // Flow control gets 8 MiB once; the other cases are about the handshake.
        let total = bigClientHello || retry ? 2 << 20 : 8 << 20
        // bigClientHello: the ClientHello spans two Initial datagrams, as Go's does with
        // its post-quantum key share.
        let client = try PythonPeer(
            arguments: ["client", "127.0.0.1", String(server.port), String(total)] + (bigClientHello ? ["big"] : []))
        let line = await client.line(startingWith: "OK")
        let status = await client.waitForExit()
        #expect(line == "OK \(total)")
        #expect(status == 0)
        // The client's Initials before it took the Retry may be several.
        #expect(retry ? server.statistics.retries >= 1 : server.statistics.retries == 0)
        #expect(server.statistics.invalidTokens == 0)
        await server.close()
        echo.cancel()
    }
}
