#!/usr/bin/env bash
# Time from SIGTERM to exit of the zipper (`yomo serve`) and `uppercase-sfn`
# when their OTLP collector is healthy, answers 503 (Retry-After: 30), accepts
# TCP and never answers (black hole), or refuses connections. Spans are left
# queued for the shutdown (long OTEL_BSP_SCHEDULE_DELAY), the worst case:
# without a shutdown deadline each queued batch got the full export timeout.
# Loopback only; every process is bounded (SIGKILL after FAULT_KILL_AFTER s).
#
#   Benchmarks/fault-shutdown.sh [BIN]     # BIN: a directory with yomo, uppercase-sfn
#                                          # and demo-source (default: a release build made here)
#
# FAULT_FRAMES (default 200) frames flow before the SIGTERM; FAULT_MODES
# (default "healthy 503 blackhole refused") picks the collectors;
# YOMO_TELEMETRY_SHUTDOWN_TIMEOUT passes through (default 5000 ms).
# Prints one line per mode and process: seconds to exit, and the report line.
set -euo pipefail
cd "$(dirname "$0")/.."
frames="${FAULT_FRAMES:-200}"
modes="${FAULT_MODES:-healthy 503 blackhole refused}"
kill_after="${FAULT_KILL_AFTER:-60}"
port=9621

if [[ $# -ge 1 ]]; then
    bin="$1"
else
    source Benchmarks/loop-common.sh
    for product in yomo uppercase-sfn demo-source; do "${release_build[@]}" --product "$product" >/dev/null; done
    bin="$("${release_build[@]}" --show-bin-path)"
fi
receiver_script="Tests/YoMoTracingTests/otlp_receiver.py"
work="$(mktemp -d)"

pids=()
stop_all() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT INT TERM

# Waits (up to 30 s) until `check` succeeds.
wait_for() {
    local what="$1"; shift
    for _ in $(seq 300); do
        if "$@" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "fault-shutdown: $what did not come up in 30 s (logs in $work)" >&2
    return 1
}

now() { date +%s.%N; }

# SIGTERM, then polls until the process is gone; prints the seconds it took.
time_to_exit() {
    local pid="$1" start; start="$(now)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((kill_after * 10))
    for _ in $(seq "$deadline"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null || true
        echo "killed-after-${kill_after}s"
        return
    fi
    awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'
}

printf "%-10s %-14s %-8s %s\n" mode process exit_s "report line (if any)"
for mode in $modes; do
    dir="$work/$mode"; mkdir -p "$dir"
    case "$mode" in
        healthy) arguments=(--count-only) ;;
        503) arguments=(--status 503 --retry-after 30) ;;
        blackhole) arguments=(--fault blackhole) ;;
        refused) arguments=(--fault refused) ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    python3 "$receiver_script" --port-file "$dir/port" --out "$dir/received.jsonl" "${arguments[@]}" &
    pids+=($!)
    wait_for "the $mode collector" test -s "$dir/port"
    endpoint="http://127.0.0.1:$(cat "$dir/port")"

    export OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint" OTEL_BSP_SCHEDULE_DELAY=60000
    "$bin/yomo" serve --host 127.0.0.1 --port "$port" 2> "$dir/zipper.log" &
    zipper=$!; pids+=($zipper)
    wait_for "the zipper" grep -q "zipper listening" "$dir/zipper.log"
    "$bin/uppercase-sfn" --zipper "127.0.0.1:$port" --observe 0x33 --emit 0x34 2> "$dir/sfn.log" &
    sfn=$!; pids+=($sfn)
    wait_for "uppercase-sfn" grep -q "connected to zipper" "$dir/sfn.log"
    timeout 60 "$bin/demo-source" --zipper "127.0.0.1:$port" --count "$frames" --interval 1 2> "$dir/source.log" || true
    unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_BSP_SCHEDULE_DELAY

    # The function first (it is the client), then the zipper, as a rollout would.
    sfn_seconds="$(time_to_exit "$sfn")"
    zipper_seconds="$(time_to_exit "$zipper")"
    for entry in "uppercase-sfn:$sfn_seconds:$dir/sfn.log" "zipper:$zipper_seconds:$dir/zipper.log"; do
        IFS=: read -r name seconds log <<<"$entry"
        report="$(grep -m1 "not exported" "$log" | sed 's/^.*\(Shutdown[^"]*\).*$/\1/' | cut -c1-150 || true)"
        printf "%-10s %-14s %-8s %s\n" "$mode" "$name" "$seconds" "$report"
    done
    received=0
    if [[ "$mode" == healthy ]]; then
        received="$(python3 -c 'import json,sys; print(sum(max(json.loads(l).get("spans", 0), 0) for l in open(sys.argv[1]) if "\"request\"" in l))' "$dir/received.jsonl" 2>/dev/null || echo 0)"
        echo "healthy    spans received by the collector: $received"
    fi
    stop_all
done
