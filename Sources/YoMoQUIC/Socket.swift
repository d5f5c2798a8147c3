import CNGTCP2
import Glibc
import Synchronization

/// A socket address in storage that can be copied into C structs.
struct UDPAddress: Sendable, CustomStringConvertible {
    var storage = sockaddr_storage()
    var length: socklen_t = 0

    init() {}

    init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    var family: Int32 { Int32(storage.ss_family) }

    var port: Int {
        withUnsafeBytes(of: storage) { raw in
            switch family {
            case AF_INET: return Int(UInt16(bigEndian: raw.load(fromByteOffset: 2, as: UInt16.self)))
            case AF_INET6: return Int(UInt16(bigEndian: raw.load(fromByteOffset: 2, as: UInt16.self)))
            default: return 0
            }
        }
    }

    var host: String {
        withUnsafeBytes(of: storage) { raw -> String in
            switch family {
            case AF_INET: return addressText(AF_INET, raw.baseAddress! + 4)
            case AF_INET6: return addressText(AF_INET6, raw.baseAddress! + 8)
            default: return "?"
            }
        }
    }

    var description: String { family == AF_INET6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Same family, address and port (an IPv6 scope or flow label aside).
    func isSameEndpoint(as other: UDPAddress) -> Bool {
        isSameHost(as: other) && port == other.port
    }

    /// Sends `bytes` (equal datagrams of `segment` bytes when it is above 0)
    /// to this address on the unconnected socket `fd`, from `source` if given
    /// (a listener bound to every address answers from the one written to).
    /// Bytes sent or -errno.
    func send(_ bytes: UnsafeRawBufferPointer, segment: Int, on fd: Int32, from source: UDPAddress?) -> Int {
        let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        return withSockaddr { to, toLength in
            guard let source else { return cngtcp2_send(fd, base, bytes.count, segment, to, toLength) }
            return source.withSockaddr { from, _ in cngtcp2_send_from(fd, base, bytes.count, segment, to, toLength, from) }
        }
    }

    /// 0.0.0.0 or ::, which a socket binds to listen on every address.
    var isWildcard: Bool {
        withUnsafeBytes(of: storage) { raw in
            switch family {
            case AF_INET: return raw[4..<8].allSatisfy { $0 == 0 }
            case AF_INET6: return raw[8..<24].allSatisfy { $0 == 0 }
            default: return false
            }
        }
    }

    /// Same family and address, whatever the port.
    func isSameHost(as other: UDPAddress) -> Bool {
        guard family == other.family else { return false }
        return withUnsafeBytes(of: storage) { a in
            withUnsafeBytes(of: other.storage) { b in
                switch family {
                case AF_INET: return a[4..<8].elementsEqual(b[4..<8])
                case AF_INET6: return a[8..<24].elementsEqual(b[8..<24])
                default: return false
                }
            }
        }
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) throws -> R) rethrows -> R {
        try withUnsafeBytes(of: storage) { raw in
            try body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }

    /// Resolves a host and port for UDP (`getaddrinfo`), IPv4 and IPv6, the
    /// IPv4 addresses first (`preferringIPv4()`).
    static func resolve(host: String, port: Int) throws(QUICError) -> [UDPAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        hints.ai_flags = AI_ADDRCONFIG
        var result: UnsafeMutablePointer<addrinfo>?
        let name = unbracketed(host)
        var rv = getaddrinfo(name, String(port), &hints, &result)
        if rv == EAI_NONAME {
            // AI_ADDRCONFIG hides loopback-only families on hosts without a network.
            hints.ai_flags = 0
            rv = getaddrinfo(name, String(port), &hints, &result)
        }
        guard rv == 0, let first = result else {
            throw .addressResolution(host, String(cString: gai_strerror(rv)))
        }
        defer { freeaddrinfo(first) }
        var out: [UDPAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let ai = cursor {
            var address = UDPAddress()
            withUnsafeMutableBytes(of: &address.storage) { raw in
                raw.copyMemory(from: UnsafeRawBufferPointer(start: ai.pointee.ai_addr, count: Int(ai.pointee.ai_addrlen)))
            }
            address.length = ai.pointee.ai_addrlen
            out.append(address)
            cursor = ai.pointee.ai_next
        }
        if out.isEmpty { throw .addressResolution(host, "no addresses") }
        return out.preferringIPv4()
    }
}

extension UDPAddress {
    /// `resolve` on a thread of its own, for a name: `getaddrinfo` blocks (a
    /// DNS server that does not answer holds it for seconds, 5 s per try by
    /// default) and cannot be interrupted. On a thread of Swift's cooperative
    /// pool, which has one thread per core, a zipper whose two mesh entries
    /// were names on a 2-core machine took no client's handshake until both
    /// lookups gave up (5.2 s). Addresses written as numbers resolve inline;
    /// a cancelled task returns at once with `cancelled`, and the thread
    /// finishes its lookup alone.
    static func resolveOffPool(host: String, port: Int) async throws(QUICError) -> [UDPAddress] {
        if isNumeric(host) { return try resolve(host: host, port: port) }
        let lookup = ResolverThread(host: host, port: port)
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in lookup.start(continuation) }
        } onCancel: {
            lookup.finish(.failure(.cancelled))
        }
        return try result.get()
    }

    /// "[::1]" is the bracketed form of an IPv6 literal.
    static func unbracketed(_ host: String) -> String {
        host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    }

    /// An IPv4 or IPv6 literal (bracketed or not): no lookup needed.
    static func isNumeric(_ host: String) -> Bool {
        let name = unbracketed(host)
        var ipv4 = in_addr(), ipv6 = in6_addr()
        return inet_pton(AF_INET, name, &ipv4) == 1 || inet_pton(AF_INET6, name, &ipv6) == 1
    }
}

/// One lookup on a detached thread; whichever of its result and a
/// cancellation comes first resumes the waiting task.
private final class ResolverThread: Sendable {
    typealias Outcome = Result<[UDPAddress], QUICError>
    let host: String
    let port: Int
    /// The task waiting, until an outcome resumes it; the first outcome, once there is one.
    private let state = Mutex<(waiter: CheckedContinuation<Outcome, Never>?, outcome: Outcome?)>((nil, nil))

    init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    func start(_ continuation: CheckedContinuation<Outcome, Never>) {
        // A cancellation may have come before the task waited.
        let early = state.withLock { state -> Outcome? in
            if state.outcome == nil { state.waiter = continuation }
            return state.outcome
        }
        if let early { return continuation.resume(returning: early) }
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let created = pthread_create(&thread, nil, { raw in
            Unmanaged<ResolverThread>.fromOpaque(raw!).takeRetainedValue().lookUp()
            return nil
        }, context)
        if created == 0 {
            pthread_detach(thread)
        } else {
            // No thread to be had: look up here rather than fail.
            Unmanaged<ResolverThread>.fromOpaque(context).release()
            lookUp()
        }
    }

    private func lookUp() {
        do throws(QUICError) {
            finish(.success(try UDPAddress.resolve(host: host, port: port)))
        } catch {
            finish(.failure(error))
        }
    }

    /// Resumes the waiting task with the first outcome; later ones are dropped.
    func finish(_ outcome: Outcome) {
        let waiter = state.withLock { state -> CheckedContinuation<Outcome, Never>? in
            guard state.outcome == nil else { return nil }
            state.outcome = outcome
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: outcome)
    }
}

extension [UDPAddress] {
    /// IPv4 addresses first, each family in the resolver's order: what Go's
    /// `ResolveUDPAddr` picks, so a name the Go SDK reaches over IPv4 is not
    /// tried over a broken IPv6 route first.
    func preferringIPv4() -> [UDPAddress] {
        filter { $0.family == AF_INET } + filter { $0.family != AF_INET }
    }
}

/// The clients a server counts together for its per-address limit and its
/// receive windows' shares: one IPv4 address (also when it arrives IPv4-mapped
/// on a dual-stack socket), or one IPv6 network of `ipv6PrefixLength` bits,
/// since one IPv6 host has a /64 at least and its temporary addresses rotate
/// within it: counted one by one, each address would be a host of its own.
struct AddressGroup: Hashable, Sendable, CustomStringConvertible {
    private let network: IPNetwork
    /// Non-zero for a client of a trusted network: each of its connections is a group of its own.
    private let port: UInt16

    init(_ address: UDPAddress, ipv6PrefixLength: Int, trusted: [IPNetwork] = []) {
        let whole = IPNetwork(address)
        if trusted.contains(where: { $0.contains(whole) }) {
            (network, port) = (whole, UInt16(truncatingIfNeeded: address.port))
        } else {
            (network, port) = (whole.isIPv4 ? whole : whole.prefix(ipv6PrefixLength), 0)
        }
    }

    /// `192.0.2.7`, `2001:db8:1:2::/64`, a whole IPv6 address when the
    /// prefix is 128, or `10.1.2.3 port 40000` in a trusted network.
    var description: String { port == 0 ? network.description : "\(network.address) port \(port)" }
}

/// An IPv4 or IPv6 network (an address and a prefix length), IPv4-mapped
/// IPv6 addresses taken as the IPv4 ones they carry.
package struct IPNetwork: Hashable, Sendable, CustomStringConvertible {
    let isIPv4: Bool
    /// The address's first and last 64 bits (IPv4: the last 32), the bits past the prefix zero.
    private let high: UInt64
    private let low: UInt64
    let length: Int

    private init(isIPv4: Bool, high: UInt64, low: UInt64, length: Int) {
        let (highMask, lowMask): (UInt64, UInt64)
        if isIPv4 {
            (highMask, lowMask) = (0, length == 0 ? 0 : UInt64(UInt32.max << (32 - length)))
        } else {
            highMask = length >= 64 ? .max : length == 0 ? 0 : .max << (64 - length)
            lowMask = length <= 64 ? 0 : length == 128 ? .max : .max << (128 - length)
        }
        (self.isIPv4, self.high, self.low, self.length) = (isIPv4, high & highMask, low & lowMask, length)
    }

    /// The whole address of a socket address.
    init(_ address: UDPAddress) {
        let bytes: [UInt8] = withUnsafeBytes(of: address.storage) { raw in
            switch address.family {
            case AF_INET: return Array(raw[4..<8])
            case AF_INET6: return Array(raw[8..<24])
            default: return []
            }
        }
        self.init(bytes: bytes, length: nil)!
    }

    /// `10.0.0.0/8`, `fd00::/8`, or an address alone (the whole of it); nil for anything else.
    package init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        var bytes = [UInt8](repeating: 0, count: 16)
        let host = String(parts[0])
        let family: Int32 = host.contains(":") ? AF_INET6 : AF_INET
        guard inet_pton(family, host, &bytes) == 1 else { return nil }
        var length: Int?
        if parts.count == 2 {
            guard let value = Int(parts[1]), value >= 0, value <= (family == AF_INET ? 32 : 128) else { return nil }
            length = value
        }
        self.init(bytes: Array(bytes.prefix(family == AF_INET ? 4 : 16)), length: length)
    }

    private init?(bytes: [UInt8], length: Int?) {
        func number(_ slice: ArraySlice<UInt8>) -> UInt64 { slice.reduce(0) { $0 << 8 | UInt64($1) } }
        let isMapped = bytes.count == 16 && bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xFF && bytes[11] == 0xFF
        if bytes.count == 4 || isMapped {
            let length = length.map { isMapped ? max(0, $0 - 96) : $0 } ?? 32
            self.init(isIPv4: true, high: 0, low: number(bytes.suffix(4)), length: length)
        } else if bytes.count == 16 {
            self.init(isIPv4: false, high: number(bytes[0..<8]), low: number(bytes[8..<16]), length: length ?? 128)
        } else {
            self.init(isIPv4: false, high: 0, low: 0, length: 0)
        }
    }

    /// The network of this address's first `length` bits.
    func prefix(_ length: Int) -> IPNetwork {
        IPNetwork(isIPv4: isIPv4, high: high, low: low, length: min(max(length, 0), isIPv4 ? 32 : 128))
    }

    /// Whether `other` (an address, or a network) lies within this network.
    func contains(_ other: IPNetwork) -> Bool {
        other.isIPv4 == isIPv4 && other.length >= length && other.prefix(length) == self
    }

    /// The address part, as text.
    var address: String {
        func bigEndianBytes(_ value: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: value >> (56 - 8 * $0)) } }
        let bytes = isIPv4 ? Array(bigEndianBytes(low).suffix(4)) : bigEndianBytes(high) + bigEndianBytes(low)
        return bytes.withUnsafeBytes { addressText(isIPv4 ? AF_INET : AF_INET6, $0.baseAddress!) }
    }

    /// `192.0.2.7`, `10.0.0.0/8`, `2001:db8:1:2::/64`: the length only for less than a whole address.
    package var description: String { length == (isIPv4 ? 32 : 128) ? address : "\(address)/\(length)" }
}

/// An IPv4 (4 bytes) or IPv6 (16 bytes) address in network order at
/// `bytes`, as text (`inet_ntop`); "?" if it cannot be written.
private func addressText(_ family: Int32, _ bytes: UnsafeRawPointer) -> String {
    var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
    guard inet_ntop(family, bytes, &text, socklen_t(text.count)) != nil else { return "?" }
    return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// A non-blocking UDP socket with large buffers and receive coalescing.
func makeUDPSocket(family: Int32) throws(QUICError) -> Int32 {
    let fd = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    if fd < 0 { throw .socket("socket", errno: errno) }
    var size: Int32 = 4 << 20
    // FORCE variants exceed rmem_max when privileged; the plain ones are the fallback.
    if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, 4) != 0 {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, 4)
    }
    if setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, 4) != 0 {
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, 4)
    }
    _ = cngtcp2_enable_gro(fd)
    _ = cngtcp2_set_dont_fragment(fd, family)
    return fd
}

func localAddress(of fd: Int32) throws(QUICError) -> UDPAddress {
    var address = UDPAddress()
    address.length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let rv = withUnsafeMutableBytes(of: &address.storage) { raw in
        getsockname(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &address.length)
    }
    if rv != 0 { throw .socket("getsockname", errno: errno) }
    return address
}

/// Whether `fd`'s local address is still one of this host's: false once it
/// is gone (a DHCP lease that ended, a network switched), which a UDP socket
/// connected from it cannot leave. Anything unclear counts as still here.
func localAddressIsStillHere(_ fd: Int32) -> Bool {
    guard var address = try? localAddress(of: fd) else { return true }
    let probe = socket(Int32(address.family), Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard probe >= 0 else { return true }
    defer { close(probe) }
    // Any port: only the address matters.
    withUnsafeMutableBytes(of: &address.storage) { raw in
        raw.storeBytes(of: 0, toByteOffset: 2, as: UInt16.self)
    }
    let rv = address.withSockaddr { bind(probe, $0, $1) }
    return rv == 0 || errno != EADDRNOTAVAIL
}

/// What an ICMP error in a socket's error queue (IP_RECVERR) says about a
/// datagram sent to `address`.
enum ICMPError {
    /// Port unreachable: nobody listens there (any more).
    case unreachable(UDPAddress)
    /// Too big for the path's MTU (ICMP, ICMPv6 or the local interface).
    case tooBig(UDPAddress, mtu: Int)

    /// Where the datagram went.
    var address: UDPAddress {
        switch self {
        case .unreachable(let address), .tooBig(let address, _): return address
        }
    }
}

/// Reads the errors `fd`'s error queue holds, up to 1024 at a time, and hands
/// each that says something to `body`, which returns false to stop. Others
/// (host or network unreachable: the idle timer's business) are skipped.
/// What is left reports itself again: the socket's error is level-triggered.
func readICMPErrors(_ fd: Int32, _ body: (ICMPError) -> Bool) {
    var from = sockaddr_storage()
    var fromLength = socklen_t(0)
    var mtu: UInt32 = 0
    for _ in 0..<1024 {
        let n = cngtcp2_recv_icmp_error(fd, &from, &fromLength, &mtu)
        if n < 0 { return }
        let error: ICMPError
        switch n {
        case CNGTCP2_ICMP_UNREACHABLE: error = .unreachable(UDPAddress(storage: from, length: fromLength))
        case CNGTCP2_ICMP_TOO_BIG: error = .tooBig(UDPAddress(storage: from, length: fromLength), mtu: Int(mtu))
        default: continue
        }
        if !body(error) { return }
    }
}
