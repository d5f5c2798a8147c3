import Testing
@testable import YoMoQUIC

@Suite("Address groups: what a server counts as one client address")
struct AddressGroupTests {
    private func group(_ host: String, prefix: Int = 64, port: Int = 9000, trusted: [String] = []) throws -> AddressGroup {
        AddressGroup(try UDPAddress.resolve(host: host, port: port)[0], ipv6PrefixLength: prefix, trusted: trusted.compactMap(IPNetwork.init))
    }

    @Test("networks parse as an address and a length, or an address alone; anything else does not")
    func networks() {
        #expect(IPNetwork("10.0.0.0/8")?.description == "10.0.0.0/8")
        #expect(IPNetwork("10.1.2.3/8")?.description == "10.0.0.0/8")
        #expect(IPNetwork("192.0.2.7")?.description == "192.0.2.7")
        #expect(IPNetwork("fd00::/8")?.description == "fd00::/8")
        #expect(IPNetwork("2001:db8::1")?.description == "2001:db8::1")
        #expect(IPNetwork("0.0.0.0/0")?.description == "0.0.0.0/0")
        #expect(IPNetwork("::ffff:10.0.0.0/104")?.description == "10.0.0.0/8")
        for bad in ["", "10.0.0.0/33", "fd00::/129", "10.0.0/8", "10.0.0.0/-1", "10.0.0.0/x", "example.com", "/8", "10.0.0.0/8/8"] {
            #expect(IPNetwork(bad) == nil, "\(bad)")
        }
        #expect(IPNetwork("10.0.0.0/8")!.contains(IPNetwork("10.200.3.4")!))
        #expect(!IPNetwork("10.0.0.0/8")!.contains(IPNetwork("11.0.0.1")!))
        #expect(IPNetwork("0.0.0.0/0")!.contains(IPNetwork("203.0.113.9")!))
        #expect(!IPNetwork("0.0.0.0/0")!.contains(IPNetwork("::1")!), "IPv4 networks hold no IPv6 address")
        #expect(IPNetwork("fd00::/8")!.contains(IPNetwork("fd12:3456::1")!))
        #expect(IPNetwork("10.0.0.0/8")!.contains(IPNetwork("::ffff:10.9.9.9")!), "IPv4-mapped, as a dual-stack socket gives it")
    }

    @Test("a client of a trusted network counts each connection as its own address; others as before")
    func trustedNetworks() throws {
        let trusted = ["10.0.0.0/8", "fd00::/8"]
        #expect(try group("10.1.2.3", port: 1000, trusted: trusted) != group("10.1.2.3", port: 1001, trusted: trusted))
        #expect(try group("10.1.2.3", port: 1000, trusted: trusted).description == "10.1.2.3 port 1000")
        #expect(try group("fd00::1", port: 1000, trusted: trusted) != group("fd00::1", port: 1001, trusted: trusted))
        #expect(try group("::ffff:10.1.2.3", port: 1000, trusted: trusted) == group("10.1.2.3", port: 1000, trusted: trusted))
        // Outside: one group per address (an IPv6 network), whatever the port.
        #expect(try group("192.0.2.7", port: 1000, trusted: trusted) == group("192.0.2.7", port: 1001, trusted: trusted))
        #expect(try group("2001:db8::1", port: 1000, trusted: trusted) == group("2001:db8::2", port: 1001, trusted: trusted))
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
        let network = await #expect(throws: QUICError.self) {
            _ = try await QUICServer.bind(host: "127.0.0.1", port: 0, limits: QUICServer.Limits(trustedNetworks: ["10.0.0.0/40"]))
        }
        #expect(network?.description.contains("trustedNetworks: \"10.0.0.0/40\" is not a network") == true, "\(String(describing: network))")
    }
}
