#!/usr/bin/env bash
# The path under live connections: three network namespaces (a client host
# with `uppercase-sfn` and `yomo bench`, a router, a zipper host), a fault
# applied five seconds into a run of 1,300-byte frames at 100/s, and the
# bench's summary (lost=N, p99) with every "the path drops big datagrams"
# warning and reconnection the programs logged. Needs root (ip netns).
#
#   Benchmarks/path-faults.sh FAULT [BIN]
#
# FAULT is one of
#   mtu          the router's links drop to MTU 1280 (it answers with ICMP)
#   mtu-silent   the same, the router's ICMP dropped by nftables
#   mtu-local    the two hosts' own links drop to MTU 1280
#   mtu6         `mtu` over IPv6 (ICMPv6 "packet too big")
#   readdress    the client host's address changes (10.99.1.2 -> 10.99.1.3)
#   second       no fault: the zipper listens on every address and the
#                clients dial the zipper host's second one
#   lossN        the router drops N % of the packets it forwards, at random,
#                both ways (nftables), e.g. loss20
#   onewayN      the router drops N % of what the client host sends, at
#                random (the uplink of a radio link), e.g. oneway40
#   downN        the router drops everything for N seconds, then nothing
#                (a link that flapped), e.g. down3
#   A+B          both at once, e.g. mtu-silent+loss3 (a black hole on a
#                path that also loses packets at random)
# BIN is the directory of `yomo` and `uppercase-sfn` (default .build/debug).
# YOMO_QUIC_CONGESTION_CONTROL (bbr, cubic, reno) reaches every program.
# Measured in the twenty-seventh round of issue 14 (docs/quic.md, "A path
# whose MTU shrinks"; docs/reliability.md).
set -euo pipefail
cd "$(dirname "$0")/.."
fault="${1:?usage: $0 mtu|mtu-silent|mtu-local|mtu6|readdress|second|lossN|onewayN|downN|A+B [BIN]}"
bin="$(cd "${2:-.build/debug}" && pwd)"
prefix="pf$$"
work="$(mktemp -d)"
ipv6=false
[[ "+$fault+" == *+mtu6+* ]] && ipv6=true

cleanup() {
    for host in c r z; do
        for pid in $(ip netns pids "$prefix$host" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    done
    wait 2>/dev/null || true
    for host in c r z; do ip netns del "$prefix$host" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

for host in c r z; do
    ip netns add "$prefix$host"
    ip -n "$prefix$host" link set lo up
done
ip link add "${prefix}cr" netns "${prefix}c" type veth peer name "${prefix}rc" netns "${prefix}r"
ip link add "${prefix}rz" netns "${prefix}r" type veth peer name "${prefix}zr" netns "${prefix}z"
ip netns exec "${prefix}r" /bin/sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv6/conf/all/forwarding'
# host device address/prefix
for link in "c ${prefix}cr 10.99.1.2/24 fd99:1::2/64" "r ${prefix}rc 10.99.1.1/24 fd99:1::1/64" \
            "r ${prefix}rz 10.99.2.1/24 fd99:2::1/64" "z ${prefix}zr 10.99.2.2/24 fd99:2::2/64"; do
    read -r host device v4 v6 <<<"$link"
    ip -n "$prefix$host" addr add "$v4" dev "$device"
    ip -n "$prefix$host" addr add "$v6" dev "$device" nodad
    ip -n "$prefix$host" link set "$device" up
done
ip -n "${prefix}c" route add default via 10.99.1.1
ip -n "${prefix}z" route add default via 10.99.2.1
ip -n "${prefix}c" -6 route add default via fd99:1::1
ip -n "${prefix}z" -6 route add default via fd99:2::1

listen=10.99.2.2 dial=10.99.2.2:9000
if $ipv6; then listen=fd99:2::2 dial="[fd99:2::2]:9000"; fi
if [[ "+$fault+" == *+second+* ]]; then
    ip -n "${prefix}z" addr add 10.99.2.3/24 dev "${prefix}zr"
    listen=0.0.0.0 dial=10.99.2.3:9000
fi
ip netns exec "${prefix}z" "$bin/yomo" serve --host "$listen" --port 9000 --functions-file none \
    --stateless-reset-key-file none >"$work/zipper.log" 2>&1 &
sleep 1
ip netns exec "${prefix}c" "$bin/uppercase-sfn" --zipper "$dial" >"$work/function.log" 2>&1 &
sleep 1
ip netns exec "${prefix}c" "$bin/yomo" bench --zipper "$dial" --frames 1500 --size 1300 --rate 100 --inflight 64 \
    --timeout 40 >"$work/bench.log" 2>&1 &
bench=$!
sleep 5
# The fault as an nftables table on the router: a chain on HOOK with one RULE.
router_drops() {
    local hook="$1"; shift
    ip netns exec "${prefix}r" nft add table inet fault
    ip netns exec "${prefix}r" nft add chain inet fault "$hook" "{ type filter hook $hook priority 0; }"
    ip netns exec "${prefix}r" nft add rule inet fault "$hook" "$@"
}
IFS=+ read -ra parts <<<"$fault"
for part in "${parts[@]}"; do
case "$part" in
    mtu|mtu6) ip -n "${prefix}r" link set "${prefix}rc" mtu 1280; ip -n "${prefix}r" link set "${prefix}rz" mtu 1280 ;;
    mtu-silent)
        router_drops output icmp type destination-unreachable drop
        ip -n "${prefix}r" link set "${prefix}rc" mtu 1280; ip -n "${prefix}r" link set "${prefix}rz" mtu 1280 ;;
    mtu-local) ip -n "${prefix}c" link set "${prefix}cr" mtu 1280; ip -n "${prefix}z" link set "${prefix}zr" mtu 1280 ;;
    readdress)
        ip -n "${prefix}c" addr del 10.99.1.2/24 dev "${prefix}cr"
        ip -n "${prefix}c" addr add 10.99.1.3/24 dev "${prefix}cr"
        ip -n "${prefix}c" route add default via 10.99.1.1 ;;
    second) ;;
    oneway[0-9]*)
        router_drops forward iifname "${prefix}rc" numgen random mod 100 "<" "${part#oneway}" drop ;;
    down[0-9]*)
        router_drops forward drop
        sleep "${part#down}"
        ip netns exec "${prefix}r" nft delete chain inet fault forward ;;
    loss[0-9]*)
        router_drops forward numgen random mod 100 "<" "${part#loss}" drop ;;
    *) echo "unknown fault $part" >&2; exit 2 ;;
esac
done
wait "$bench" || true
echo "fault=$fault congestion_control=${YOMO_QUIC_CONGESTION_CONTROL:-bbr} $(tail -n 1 "$work/bench.log")"
grep -h 'path drops big datagrams\|reconnected from\|reconnecting' "$work"/*.log | cut -c1-300 || true
