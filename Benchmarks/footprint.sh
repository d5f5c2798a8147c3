#!/usr/bin/env bash
# Resident memory of `yomo serve` and `uppercase-sfn` built as deploy/Dockerfile
# builds them (release, --static-swift-stdlib): idle (both connected, nothing
# flowing) and busy (peak while `yomo bench` runs through them), with tracing
# off and with every span exported to a local receiver that discards bodies.
#
#   Benchmarks/footprint.sh [rounds] [frames]      # defaults: 3 rounds, 100000 frames
#
# FOOTPRINT_BIN: a directory with static release builds of yomo and
# uppercase-sfn (default: built here into .build-static by scripts/static-build.sh,
# as the Dockerfile builds them, so the normal .build stays valid). FOOTPRINT_BASELINE_BIN: another such directory (e.g. builds of
# an older commit); each round then runs both, for before/after in one run.
# FOOTPRINT_MODES (default "off on"); FOOTPRINT_SIZE (1024) and
# FOOTPRINT_INFLIGHT (256) shape the bench load; FOOTPRINT_SMAPS=DIR keeps
# /proc/PID/smaps of each idle process there and prints where their RSS sits.
# Idle figures: VmRSS (RssAnon + RssFile) and the thread count from
# /proc/PID/status; busy: the highest VmRSS sampled every 100 ms during the
# bench and the kernel's VmHWM at its end. One `yomo bench` binary (the
# FOOTPRINT_BIN one) drives every run so the load is the same.
set -euo pipefail
cd "$(dirname "$0")/.."
source Benchmarks/loop-common.sh
rounds="${1:-3}"
frames="${2:-100000}"
modes="${FOOTPRINT_MODES:-off on}"
size="${FOOTPRINT_SIZE:-1024}"
inflight="${FOOTPRINT_INFLIGHT:-256}"
port=9631
otlp_port=4431

if [[ -n "${FOOTPRINT_BIN:-}" ]]; then
    bin="$FOOTPRINT_BIN"
else
    bin="$(scripts/static-build.sh yomo uppercase-sfn 2>/dev/null)"
fi
builds="new"
if [[ -n "${FOOTPRINT_BASELINE_BIN:-}" ]]; then builds="base new"; fi
bin_of() { if [[ "$1" == base ]]; then echo "$FOOTPRINT_BASELINE_BIN"; else echo "$bin"; fi; }

trap 'stop_all; stop_receiver' EXIT INT TERM

if [[ " $modes " == *" on "* ]]; then start_receiver "$bin"; fi

# kB of a /proc/PID/status field.
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

# Prints "zipper_idle zipper_anon zipper_file zipper_threads function_idle
# function_anon function_file function_threads zipper_busy zipper_hwm
# function_busy function_hwm" (kB, threads) for one run.
run_once() {
    local build="$1" mode="$2" programs; programs="$(bin_of "$build")"
    local -a environment
    tracing_environment "$mode" || { echo "unknown mode $mode" >&2; exit 2; }
    local zipper function
    start_zipper_and_function "$programs"
    sleep 1.5  # idle: 2 s after the function started
    local idle=()
    for pid in $zipper $function; do
        idle+=("$(status_kb "$pid" VmRSS)" "$(status_kb "$pid" RssAnon)" "$(status_kb "$pid" RssFile)" "$(status_kb "$pid" Threads)")
    done
    if [[ -n "${FOOTPRINT_SMAPS:-}" ]]; then
        mkdir -p "$FOOTPRINT_SMAPS"
        cp "/proc/$zipper/smaps" "$FOOTPRINT_SMAPS/$build-$mode-zipper.smaps"
        cp "/proc/$function/smaps" "$FOOTPRINT_SMAPS/$build-$mode-function.smaps"
    fi
    "${environment[@]}" "$bin/yomo" bench --zipper "127.0.0.1:$port" --size "$size" --inflight "$inflight" \
        --frames "$frames" >/dev/null 2>&1 &
    local bench=$!
    local zipper_peak=0 function_peak=0 value
    while kill -0 "$bench" 2>/dev/null; do
        value="$(status_kb "$zipper" VmRSS)"; (( value > zipper_peak )) && zipper_peak=$value
        value="$(status_kb "$function" VmRSS)"; (( value > function_peak )) && function_peak=$value
        sleep 0.1
    done
    wait "$bench" || echo "bench failed ($build $mode)" >&2
    echo "${idle[*]} $zipper_peak $(status_kb "$zipper" VmHWM) $function_peak $(status_kb "$function" VmHWM)"
    stop_all
}

declare -A results
for round in $(seq "$rounds"); do
    for mode in $modes; do
        for build in $builds; do
            line="$(run_once "$build" "$mode")"
            results[$build-$mode]+="$line"$'\n'
            echo "round $round $build $mode: $line" >&2
        done
    done
done

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
column_median() { awk -v c="$2" 'NF { print $c }' <<<"$1" | median; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo
echo "medians of $rounds rounds, MiB (threads); busy = --size $size --inflight $inflight --frames $frames"
printf '%-5s %-4s | %-28s %-28s | %-16s %-16s\n' build mode "zipper idle (anon+file, thr)" "function idle (anon+file, thr)" "zipper busy/hwm" "function busy/hwm"
for mode in $modes; do
    for build in $builds; do
        r="${results[$build-$mode]}"
        c() { column_median "$r" "$1"; }
        printf '%-5s %-4s | %-28s %-28s | %-16s %-16s\n' "$build" "$mode" \
            "$(mib "$(c 1)") ($(mib "$(c 2)")+$(mib "$(c 3)"), $(c 4))" \
            "$(mib "$(c 5)") ($(mib "$(c 6)")+$(mib "$(c 7)"), $(c 8))" \
            "$(mib "$(c 9)")/$(mib "$(c 10)")" "$(mib "$(c 11)")/$(mib "$(c 12)")"
    done
done

# Where the idle RSS sits (last round): kB per mapped file, anonymous memory
# (heap, malloc arenas, thread stacks) as one line.
if [[ -n "${FOOTPRINT_SMAPS:-}" ]]; then
    for file in "$FOOTPRINT_SMAPS"/*.smaps; do
        echo
        echo "$(basename "$file" .smaps): idle RSS by mapping, kB"
        awk '/^[0-9a-f]+-[0-9a-f]+ / { name = ($6 ~ /^\//) ? $6 : "anonymous (heap, arenas, stacks)"; next }
             /^Rss:/ { rss[name] += $2; total += $2 }
             END { for (n in rss) if (rss[n] > 0) printf "%8d  %s\n", rss[n], n; printf "%8d  total\n", total }' "$file" |
            sort -rn | head -16
    done
fi
