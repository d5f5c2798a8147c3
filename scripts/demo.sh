#!/usr/bin/env bash
# The main job: installs prerequisites, builds, then runs a zipper, the
# uppercase stream function and a source on this machine, all traced, and shows
# each frame's trace — source → zipper → stream function — as a waterfall in
# the terminal (`yomo trace-view`, a local OTLP/HTTP receiver).
#
#   scripts/demo.sh                 # 5 frames, then stops
#   DEMO_FRAMES=0 scripts/demo.sh   # a frame a second until Ctrl-C
#
# DEMO_PORT (zipper, default 9000), DEMO_OTLP_PORT (trace view, default 4318)
# and DEMO_METRICS_PORT (the zipper's /metrics, default 9464; the function's is
# the next port) move the ports; DEMO_CONFIGURATION=debug reuses a debug build (CI does, after
# building the tests). To send the same traces to a real Jaeger instead, run the
# programs with OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 (docs/observability.md).
# Stops everything it started on exit or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
port="${DEMO_PORT:-9000}"
otlp_port="${DEMO_OTLP_PORT:-4318}"
metrics_port="${DEMO_METRICS_PORT:-9464}"
frames="${DEMO_FRAMES:-5}"
configuration="${DEMO_CONFIGURATION:-release}"
logs="$(mktemp -d)"

echo "demo: building ($configuration; the first build takes a few minutes)…"
build=(swift build -c "$configuration")
# A release build optimizes across modules, as the image's does (deploy/Dockerfile).
if [[ "$configuration" == release ]]; then build+=(-Xswiftc -cross-module-optimization); fi
for product in yomo uppercase-sfn demo-source; do
    "${build[@]}" --product "$product" > "$logs/build.log" 2>&1 || { tail -30 "$logs/build.log"; exit 1; }
done
bin="$("${build[@]}" --show-bin-path)"

pids=()
cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "demo: stopped (logs in $logs)"
}
trap cleanup EXIT INT TERM

# Waits (up to 60 s) until `check` succeeds: fixed sleeps raced slow starts
# (a debug build on a busy machine connected its function after the source wrote).
# A program that exits meanwhile (a port in use) ends the wait at once, with its
# last words.
wait_for() {
    local what="$1" pid="$2" log="$3"; shift 3
    for _ in $(seq 600); do
        if "$@" 2>/dev/null; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: $what exited${log:+: $(tail -n 2 "$log")}" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "demo: $what did not come up in 60 s (logs in $logs)" >&2
    exit 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

"$bin/yomo" trace-view --listen "127.0.0.1:$otlp_port" --quiet-ms 800 &
pids+=($!)
wait_for "the trace view" "$!" "" port_open "$otlp_port"

export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port"
export OTEL_BSP_SCHEDULE_DELAY=200
"$bin/yomo" serve --host 127.0.0.1 --port "$port" --metrics "127.0.0.1:$metrics_port" 2> "$logs/zipper.log" &
pids+=($!)
wait_for "the zipper" "$!" "$logs/zipper.log" grep -q "zipper listening" "$logs/zipper.log"
"$bin/uppercase-sfn" --zipper "127.0.0.1:$port" --observe 0x33 --emit 0x34 --metrics "127.0.0.1:$((metrics_port + 1))" 2> "$logs/uppercase-sfn.log" &
pids+=($!)
wait_for "uppercase-sfn" "$!" "$logs/uppercase-sfn.log" grep -q "connected to zipper" "$logs/uppercase-sfn.log"

targets="127.0.0.1:$metrics_port,127.0.0.1:$((metrics_port + 1))"
if [ "$frames" = "0" ]; then
    echo "demo: a source writes a frame a second with tag 0x33; Ctrl-C stops everything"
    echo "demo: watch the pipeline's metrics with: $bin/yomo top --targets $targets"
    "$bin/demo-source" --zipper "127.0.0.1:$port" --interval 1000 2> "$logs/source.log"
else
    echo "demo: a source writes $frames frames with tag 0x33; uppercase-sfn answers with tag 0x34"
    # The pipeline's metrics over one second while the frames flow (yomo top).
    "$bin/yomo" top --once --targets "$targets" > "$logs/top.txt" 2>&1 &
    top=$!
    "$bin/demo-source" --zipper "127.0.0.1:$port" --count "$frames" --interval 300 2> "$logs/source.log"
    wait "$top" || true
    sleep 2.5  # the last spans' batch and the trace view's quiet period
    echo "demo: the pipeline's metrics, from each component's /metrics (yomo top --once):"
    cat "$logs/top.txt"
fi
