#!/usr/bin/env bash
# Tracing overhead on the YoMo loop, as ratios within one run: `yomo bench`
# through `yomo serve` and `uppercase-sfn` with tracing off, with propagation
# only (ids carried, nothing recorded) and with every span exported to a local
# receiver that discards bodies. Modes alternate so drift hits them alike.
#
#   Benchmarks/loop-tracing.sh [rounds] [frames]      # defaults: 3 rounds, 50000 frames
#
# LOOP_MODES (default "off propagation on") picks the modes; LOOP_SIZE and
# LOOP_INFLIGHT the frame size (1024) and window (256). Needs release builds
# of yomo and uppercase-sfn (built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
frames="${2:-50000}"
modes="${LOOP_MODES:-off propagation on}"
size="${LOOP_SIZE:-1024}"
inflight="${LOOP_INFLIGHT:-256}"
port=9611
otlp_port=4411

swift build -c release --product yomo >/dev/null
swift build -c release --product uppercase-sfn >/dev/null
bin="$(swift build -c release --show-bin-path)"

pids=()
stop_all() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop_all EXIT INT TERM

"$bin/yomo" trace-view --listen "127.0.0.1:$otlp_port" --discard >/dev/null 2>&1 &
receiver=$!

run_mode() {
    local mode="$1"
    local -a environment=(env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_TRACES_SAMPLER)
    case "$mode" in
        off) ;;
        propagation) environment+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port" OTEL_TRACES_SAMPLER=always_off) ;;
        on) environment+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port") ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    "${environment[@]}" "$bin/yomo" serve --host 127.0.0.1 --port "$port" 2>/dev/null &
    pids=($!)
    sleep 0.3
    "${environment[@]}" "$bin/uppercase-sfn" --zipper "127.0.0.1:$port" 2>/dev/null &
    pids+=($!)
    sleep 0.5
    "${environment[@]}" "$bin/yomo" bench --zipper "127.0.0.1:$port" --size "$size" --inflight "$inflight" --frames "$frames" 2>/dev/null \
        | tail -1 | sed -n 's/.*throughput=\([0-9]*\).*/\1/p'
    stop_all
}

declare -A results
for round in $(seq "$rounds"); do
    for mode in $modes; do
        rate="$(run_mode "$mode")"
        results[$mode]+="${rate:-0} "
        echo "round $round $mode: ${rate:-failed} frames/s"
    done
done
kill "$receiver" 2>/dev/null || true

baseline_mode="${modes%% *}"
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
baseline="$(echo "${results[$baseline_mode]}" | median)"
echo
printf '%-12s %12s %8s   %s\n' mode "median f/s" ratio runs
for mode in $modes; do
    value="$(echo "${results[$mode]}" | median)"
    printf '%-12s %12s %8s   %s\n' "$mode" "$value" "$(awk -v v="$value" -v b="$baseline" 'BEGIN {printf "%.2f", (b > 0) ? v / b : 0}')" "${results[$mode]}"
done
