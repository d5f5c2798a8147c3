#!/usr/bin/env bash
# Tracing overhead on the YoMo loop, as ratios within one run: `yomo bench`
# through `yomo serve` and `uppercase-sfn` with tracing off, with propagation
# only (ids carried, nothing recorded) and with every span exported to a local
# receiver that discards bodies. Modes alternate so drift hits them alike.
#
#   Benchmarks/loop-tracing.sh [rounds] [frames]      # defaults: 3 rounds, 50000 frames
#
# LOOP_MODES (default "off propagation on") picks the modes (also: ratio, head
# sampling of LOOP_RATIO, default 0.1, of the traces; propagation-tracecontext
# and propagation-yomo, propagation with one format (OTEL_PROPAGATORS); metrics, tracing off and
# every process serving /metrics, scraped once a second); a mode written
# base:MODE runs the binaries in LOOP_BASELINE_BIN instead (e.g. a release build
# of an older commit in a git worktree), for before/after ratios in one run, and
# alt:MODE those in LOOP_ALT_BIN (default: the new ones); LOOP_BASELINE_ENV and
# LOOP_ALT_ENV add NAME=VALUE words to their processes' environment, so one
# build can be compared with itself under other settings (e.g.
# LOOP_BASELINE_BIN=<the same> LOOP_BASELINE_ENV="YOMO_QUIC_POLL_US=0").
# bytes: tracing off with each payload LOOP_PAD bytes (default 147, what both
# formats' keys and values add to a frame's metadata) bigger, for what the trace
# context's bytes alone cost (the function also uppercases them: ~19
# instructions a byte, about 1.5 % of a 1 KiB round trip).
# LOOP_SIZE and LOOP_INFLIGHT set the frame size (1024) and window (256);
# LOOP_RATE paces the frames (frames/s), for CPU per frame under a light load;
# LOOP_ZIPPER_HOST (default 127.0.0.1) is where the zipper listens (0.0.0.0:
# every address, each client answered from the one it dialled);
# LOOP_VERBOSE=1 also prints each process's CPU per frame, and the four
# processes' user and system time per frame.
# Prints frames/s, the CPU time all four processes spent per frame (zipper,
# stream function, bench, receiver; on a saturated machine the steadier
# measure) and the median round-trip latency (for the latency-bound case:
# LOOP_SIZE=16 LOOP_INFLIGHT=1): medians against the first mode's, then the
# medians of each round's ratio to the same build's off in that round, with a
# 95 % confidence interval for each (from 6 rounds on).
# Benchmarks/loop-pool.py pools the output of several runs: on this kind of VM
# a few percent needs tens of rounds. Needs release builds of yomo and
# uppercase-sfn (built here).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
frames="${2:-50000}"
modes="${LOOP_MODES:-off propagation on}"
size="${LOOP_SIZE:-1024}"
inflight="${LOOP_INFLIGHT:-256}"
port=9611
otlp_port=4411

# LOOP_BIN: a directory with release builds of yomo and uppercase-sfn (default: built here).
source Benchmarks/loop-common.sh
bin="$(release_bin)"

trap 'stop_all; stop_receiver' EXIT INT TERM
start_receiver "$bin"

# Prints "<frames/s> <CPU µs per frame>".
run_mode() {
    local mode="$1" programs="$bin"
    local -a settings=()
    if [[ "$mode" == base:* ]]; then
        programs="${LOOP_BASELINE_BIN:?set LOOP_BASELINE_BIN for base: modes}"
        read -r -a settings <<<"${LOOP_BASELINE_ENV:-}"
        mode="${mode#base:}"
    elif [[ "$mode" == alt:* ]]; then
        programs="${LOOP_ALT_BIN:-$bin}"
        read -r -a settings <<<"${LOOP_ALT_ENV:-}"
        mode="${mode#alt:}"
    fi
    local -a environment
    local -a zipper_args=() function_args=() bench_args=()
    local scraper="" payload="$size"
    if [[ "$mode" == bytes ]]; then
        # Tracing off, each frame LOOP_PAD bytes bigger: what the trace keys'
        # bytes alone cost through QUIC, crypto and the kernel.
        tracing_environment off
        payload=$((size + ${LOOP_PAD:-147}))
    elif [[ "$mode" == metrics ]]; then
        # Tracing off, every process serving /metrics, scraped once a second.
        tracing_environment off
        zipper_args=(--metrics "127.0.0.1:$((port + 1))")
        function_args=(--metrics "127.0.0.1:$((port + 2))")
        bench_args=(--metrics "127.0.0.1:$((port + 3))")
        ( while sleep 1; do
            for p in 1 2 3; do curl -s -H 'Accept: application/openmetrics-text' "http://127.0.0.1:$((port + p))/metrics" >/dev/null || true; done
          done ) &
        scraper=$!
    elif ! tracing_environment "$mode"; then
        echo "unknown mode $mode" >&2; exit 2
    fi
    environment+=("${settings[@]}")
    local receiver_before; receiver_before="$(cpu_split "$receiver")"
    local zipper function
    start_zipper_and_function "$programs"
    local bench_output
    bench_output="$(/usr/bin/time -f "bench_cpu=%U %S" "${environment[@]}" "$programs/yomo" bench --zipper "127.0.0.1:$port" \
        --size "$payload" --inflight "$inflight" --frames "$frames" ${LOOP_RATE:+--rate "$LOOP_RATE"} "${bench_args[@]}" 2>&1)" || true
    if [[ -n "$scraper" ]]; then kill "$scraper" 2>/dev/null || true; fi
    local rate; rate="$(sed -n 's/.*throughput=\([0-9]*\).*/\1/p' <<<"$bench_output")"
    local p50; p50="$(sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$bench_output")"
    local bench_cpu; bench_cpu="$(sed -n 's/.*bench_cpu=\([0-9.]* [0-9.]*\).*/\1/p' <<<"$bench_output")"
    # Each process's CPU seconds read once: "<user> <system>" of the zipper,
    # the function, bench, and the receiver during this run.
    local used
    used="$(echo "$(cpu_split "$zipper") $(cpu_split "$function") ${bench_cpu:-0 0} $receiver_before $(cpu_split "$receiver")" |
        awk '{ print $1, $2, $3, $4, $5, $6, $9 - $7, $10 - $8 }')"
    local total
    total="$(awk -v n="$frames" '{ printf "%.1f", ($1 + $2 + $3 + $4 + $5 + $6 + $7 + $8) * 1e6 / n }' <<<"$used")"
    if [[ -n "${LOOP_VERBOSE:-}" ]]; then
        awk -v n="$frames" '{
            printf "  µs CPU per frame: zipper %.1f, function %.1f, bench %.1f, receiver %.1f\n", ($1 + $2) * 1e6 / n, ($3 + $4) * 1e6 / n, ($5 + $6) * 1e6 / n, ($7 + $8) * 1e6 / n
            printf "  µs per frame, all four: user %.1f, system %.1f\n", ($1 + $3 + $5 + $7) * 1e6 / n, ($2 + $4 + $6 + $8) * 1e6 / n
        }' <<<"$used" >&2
    fi
    stop_all
    echo "${rate:-0} $total ${p50:-0}"
}

declare -A rates cpus p50s
results="$(mktemp)"
for round in $(seq "$rounds"); do
    for mode in $modes; do
        read -r rate cpu p50 < <(run_mode "$mode")
        rates[$mode]+="$rate "
        cpus[$mode]+="$cpu "
        p50s[$mode]+="$p50 "
        echo "round $round $mode: $rate frames/s, $cpu µs CPU per frame, p50 $p50 µs" | tee -a "$results"
    done
done

baseline_mode="${modes%% *}"
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
base_rate="$(echo "${rates[$baseline_mode]}" | median)"
base_cpu="$(echo "${cpus[$baseline_mode]}" | median)"
echo
echo "medians of $rounds rounds, ratios to $baseline_mode:"
base_p50="$(echo "${p50s[$baseline_mode]}" | median)"
printf '%-24s %10s %7s %12s %7s %9s %7s\n' mode "frames/s" ratio "CPU µs/frame" ratio "p50 µs" ratio
for mode in $modes; do
    rate="$(echo "${rates[$mode]}" | median)"
    cpu="$(echo "${cpus[$mode]}" | median)"
    p50="$(echo "${p50s[$mode]}" | median)"
    printf '%-24s %10.0f %7.2f %12.1f %7.2f %9.0f %7.2f\n' "$mode" "$rate" "$(awk -v v="$rate" -v b="$base_rate" 'BEGIN {print (b > 0) ? v / b : 0}')" \
        "$cpu" "$(awk -v v="$cpu" -v b="$base_cpu" 'BEGIN {print (b > 0) ? v / b : 0}')" \
        "$p50" "$(awk -v v="$p50" -v b="$base_p50" 'BEGIN {print (b > 0) ? v / b : 0}')"
done

# Paired: each round's ratio to the same build's off in that round, then their
# median, which moves less between runs than the ratio of medians above (the
# host's drift hits a round's modes alike); as Benchmarks/loop-pool.py pools runs.
echo
python3 Benchmarks/loop-pool.py "$results"
rm -f "$results"
