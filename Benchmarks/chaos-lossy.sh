#!/usr/bin/env bash
# Runs a command (`yomo-fault-bench chaos …`) inside a network namespace of
# its own whose loopback drops LOSS % of the packets it carries, at random
# (nftables, on input: each direction loses its share). Process faults and
# a lossy path at once: QUIC's loss recovery, the clients' redials and the
# zippers' closes all run over it. The namespace isolates the ports, so
# several runs may go side by side. Needs root (ip netns, nft).
#
#   Benchmarks/chaos-lossy.sh LOSS COMMAND...
#   Benchmarks/chaos-lossy.sh 5 .build/release/yomo-fault-bench chaos --mesh --seed 4 --seconds 30
#
# Found in the forty-eighth round of issue 14: a zipper stopped while its
# mesh downstream was away lost what its link held (docs/reliability.md,
# "Delivery receipts").
set -euo pipefail
loss="${1:?usage: $0 LOSS COMMAND...}"
shift
[[ $# -gt 0 ]] || { echo "usage: $0 LOSS COMMAND..." >&2; exit 2; }
ns="chaos$$"
ip netns add "$ns"
cleanup() {
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ip -n "$ns" link set lo up
if [[ "$loss" != 0 ]]; then
    ip netns exec "$ns" nft add table inet fault
    ip netns exec "$ns" nft add chain inet fault input "{ type filter hook input priority 0; }"
    ip netns exec "$ns" nft add rule inet fault input numgen random mod 100 "<" "$loss" drop
fi
ip netns exec "$ns" "$@"
