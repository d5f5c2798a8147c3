#!/usr/bin/env bash
# The zipper's routing pass per hop on the latency-bound loop (16-byte frames,
# one in flight): how long the frame's task runs on the loop thread before the
# loop's flush sends the frame, read from the zipper's system calls with
# kernel tracepoints (Benchmarks/zipper-hop.py says how). Resolves what a hop's
# tracing adds before its packet leaves to a fraction of a microsecond, which
# the loop's p50 (Benchmarks/loop-tracing.sh) does not. The tracepoints slow
# the zipper (p50 about twice), so compare modes and builds, not absolutes.
#
#   Benchmarks/zipper-hop.sh [rounds] [frames]      # defaults: 6 rounds, 3000 frames
#
# LOOP_MODES (default "propagation on"), base:MODE with LOOP_BASELINE_BIN and
# LOOP_BIN as in Benchmarks/loop-tracing.sh; modes alternate within a round.
# Needs perf (apt: linux-perf) and root, or a perf_event_paranoid that allows
# tracepoints.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-6}"
frames="${2:-3000}"
modes="${LOOP_MODES:-propagation on}"
port=9671
otlp_port=4471

command -v perf >/dev/null || { echo "zipper-hop.sh needs perf (apt install linux-perf)" >&2; exit 2; }
source Benchmarks/loop-common.sh
bin="$(release_bin)"
work="$(mktemp -d)"
trap 'stop_all; stop_receiver; rm -rf "$work"' EXIT INT TERM
start_receiver "$bin"

# Prints "<routing µs> <flush µs> <hops>" for one mode.
run_mode() {
    local mode="$1" programs="$bin"
    if [[ "$mode" == base:* ]]; then
        programs="${LOOP_BASELINE_BIN:?set LOOP_BASELINE_BIN for base: modes}"
        mode="${mode#base:}"
    fi
    tracing_environment "$mode" || { echo "unknown mode $mode" >&2; exit 2; }
    local zipper function
    start_zipper_and_function "$programs"
    perf record -q -e raw_syscalls:sys_enter,raw_syscalls:sys_exit -p "$zipper" -o "$work/perf.data" 2>/dev/null &
    local recorder=$!
    sleep 0.3
    "${environment[@]}" "$programs/yomo" bench --zipper "127.0.0.1:$port" --size 16 --inflight 1 --frames "$frames" >/dev/null 2>&1 || true
    kill -INT "$recorder"; wait "$recorder" 2>/dev/null || true
    stop_all
    perf script -i "$work/perf.data" -F tid,time,event,trace 2>/dev/null >"$work/syscalls.txt" || true
    # Too few hops found (the tracepoints refused, the loop stalled): say so, do not average nothing.
    python3 Benchmarks/zipper-hop.py passes "$work/syscalls.txt" || echo "no hops found in mode $1's trace" >&2
}

for round in $(seq "$rounds"); do
    for mode in $modes; do
        read -r routing flush hops < <(run_mode "$mode")
        echo "$round $mode $routing $flush $hops" | tee -a "$work/results"
    done
done
echo
python3 Benchmarks/zipper-hop.py summary "$work/results"
