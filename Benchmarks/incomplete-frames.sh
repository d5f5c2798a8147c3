#!/usr/bin/env bash
# A zipper's memory under peers that each send most of a big frame and never
# finish it (then only PINGs): N aioquic peers (Tests/YoMoTests/Resources/
# hostile_peer.py big-partial) against `yomo serve` with the given room for
# frames still arriving, and the zipper's peak resident memory (VmHWM) and
# how the peers ended.
#
#   Benchmarks/incomplete-frames.sh [PEERS] [FRAME_BYTES] [ROOM_BYTES] [BIN]
#
# Defaults: 32 peers, 15 MiB frames, 64 MiB of room, .build/debug. A BIN
# older than the room (the twenty-ninth round of issue 14) ignores the limit:
# its figure is the unbounded one. Measured in that round (docs/reliability.md,
# "Limits before trust").
set -euo pipefail
cd "$(dirname "$0")/.."
peers="${1:-32}"
frame="${2:-$((15 << 20))}"
room="${3:-$((64 << 20))}"
bin="$(cd "${4:-.build/debug}" && pwd)"
work="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))
trap 'kill "$zipper" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

cat > "$work/zipper.yaml" <<YAML
name: incomplete-frames
host: 127.0.0.1
port: $port
limits:
  max_incomplete_frame_bytes: $room
YAML
"$bin/yomo" serve -c "$work/zipper.yaml" --stateless-reset-key-file none --functions-file none >"$work/zipper.log" 2>&1 &
zipper=$!
for _ in $(seq 1 100); do grep -q 'listening' "$work/zipper.log" 2>/dev/null && break; sleep 0.1; done
idle=$(awk '/VmRSS/ {print $2}' "/proc/$zipper/status")
# The peers hold on for 40 s: the stall timeout (10 s) takes the room from
# those with room while others wait.
BIG_PARTIAL_BYTES="$frame" python3 Tests/YoMoTests/Resources/hostile_peer.py big-partial 127.0.0.1 "$port" "$peers" 40 >"$work/peers.txt"
peak=$(awk '/VmHWM/ {print $2}' "/proc/$zipper/status")
echo "peers=$peers frame_bytes=$frame room_bytes=$room idle_rss_kib=$idle peak_rss_kib=$peak"
sed -E 's/ after=[0-9.]+//; s/ granted=[0-9]+//; s/frame stalled: .*/frame stalled/' "$work/peers.txt" | sort | uniq -c
