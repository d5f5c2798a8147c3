import Testing
@testable import YoMoQUIC

@Suite("Address groups: what a server counts as one client address")
struct AddressGroupTests {
    private func group(_ host: String, prefix: Int = 64) throws -> AddressGroup {
        AddressGroup(try UDPAddress.resolve(host: host, port: 9000)[0], ipv6PrefixLength: prefix)
    }

    @Test("IPv6 addresses count by their network: the same /64, one group whatever the rest")
    func ipv6Networks() throws {
        #expect(try group("2001:db8:1:2::a") == group("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        #expect(try group("2001:db8:1:2::a") != group("2001:db8:1:3::a"))
        #expect(try group("2001:db8:1:2::a").description == "2001:db8:1:2::/64")
        #expect(try group("2001:db8:1:2::a", prefix: 48) == group("2001:db8:1:ffff::1", prefix: 48))
        #expect(try group("2001:db8:1:2::a", prefix: 48).description == "2001:db8:1::/48")
        #expect(try group("2001:db8::2", prefix: 127) == group("2001:db8::3", prefix: 127))
        #expect(try group("2001:db8::2", prefix: 127) != group("2001:db8::4", prefix: 127))
        #expect(try group("2001:db8::2", prefix: 1).description == "::/1")
        #expect(try group("8001:db8::2", prefix: 1).description == "8000::/1")
    }

    @Test("a prefix of 128 counts each IPv6 address on its own, and names it whole")
    func wholeAddresses() throws {
        #expect(try group("2001:db8:1:2::a", prefix: 128) != group("2001:db8:1:2::b", prefix: 128))
        #expect(try group("2001:db8:1:2::a", prefix: 128).description == "2001:db8:1:2::a")
    }

    @Test("IPv4 counts by address, also IPv4-mapped on a dual-stack socket, where a /64 would lump every IPv4 client together")
    func ipv4() throws {
        #expect(try group("192.0.2.7") != group("192.0.2.8"))
        #expect(try group("192.0.2.7").description == "192.0.2.7")
        #expect(try group("::ffff:192.0.2.7") == group("192.0.2.7"))
        #expect(try group("::ffff:192.0.2.7") != group("::ffff:192.0.2.8"))
        #expect(try group("::ffff:192.0.2.7").description == "192.0.2.7")
        // ::/64 holds the mapped range: without the special case these would be one group.
        #expect(try group("::1") != group("::ffff:192.0.2.7"))
    }
}

extension AddressGroupTests {
    @Test("a server refuses a prefix length outside 1 to 128, and a share of handshakes per address under 1")
    func prefixOutOfRange() async {
        let error = await #expect(throws: QUICError.self) {
            _ = try await QUICServer.bind(host: "127.0.0.1", port: 0, limits: QUICServer.Limits(maximumHandshakesPerAddress: 0))
        }
        #expect(error?.description.contains("maximumHandshakesPerAddress must be positive, not 0") == true, "\(String(describing: error))")
        for bad in [0, 129, -64] {
            let error = await #expect(throws: QUICError.self) {
                _ = try await QUICServer.bind(host: "127.0.0.1", port: 0, limits: QUICServer.Limits(ipv6PrefixLength: bad))
            }
            #expect(error?.description.contains("ipv6PrefixLength must be from 1 to 128, not \(bad)") == true, "\(String(describing: error))")
        }
    }
}
