#!/usr/bin/env bash
# Honest clients under the zipper's room for frames still arriving: four
# `yomo bench` runs at once, each 20 frames of 3 MB with 4 in flight, through
# `uppercase-sfn`, against `yomo serve` with ROOM_BYTES of room. Prints each
# bench's summary (lost=N, p99), the wall time, the connections closed for a
# stalled frame (the zipper's yomo.zipper.incomplete_frames.stalled; none
# expected: honest clients only wait) and the zipper's peak resident memory.
# Compare a small room with the default (268435456).
#
#   Benchmarks/big-frames.sh [ROOM_BYTES] [BIN]
#
# Defaults: 16 MiB, .build/debug. Measured in the twenty-ninth round of
# issue 14 (docs/reliability.md, "Limits before trust").
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/loop-common.sh
room="${1:-$((16 << 20))}"
bin="$(cd "${2:-.build/debug}" && pwd)"
work="$(mktemp -d)"
port=$((20000 + RANDOM % 20000))
metrics=$((port + 1))
trap 'stop_all; rm -rf "$work"' EXIT

printf 'limits:\n  max_incomplete_frame_bytes: %s\n' "$room" >"$work/zipper.yaml"
environment=(env)
zipper_args=(-c "$work/zipper.yaml" --stateless-reset-key-file none --functions-file none --metrics "127.0.0.1:$metrics")
start_zipper_and_function "$bin"
started=$(date +%s.%N)
benches=()
for i in 1 2 3 4; do
    "$bin/yomo" bench --zipper "127.0.0.1:$port" --frames 20 --size 3000000 --inflight 4 --timeout 120 >"$work/bench$i.log" 2>&1 &
    benches+=("$!")
done
wait "${benches[@]}" || true
ended=$(date +%s.%N)
for i in 1 2 3 4; do tail -1 "$work/bench$i.log"; done
stalled=$(curl -s "http://127.0.0.1:$metrics/metrics" | awk '/^yomo_zipper_incomplete_frames_stalled_total/ {print $2}')
echo "room_bytes=$room seconds=$(echo "$ended - $started" | bc) stalled=${stalled:-0} peak_rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$zipper/status")"
