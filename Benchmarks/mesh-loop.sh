#!/usr/bin/env bash
# The YoMo loop through two zippers of a mesh against one, in the same run:
#   one: yomo bench ─▶ zipper-1 ─▶ uppercase-sfn ─▶ zipper-1 ─▶ bench
#   two: yomo bench ─▶ zipper-1 ═▶ zipper-2 ─▶ uppercase-sfn ─▶ zipper-2 ═▶ zipper-1 ─▶ bench
# (═▶ a mesh link: the zippers list each other with --mesh), for 1 KiB and 16 B
# frames. Modes alternate so drift hits them alike. Tracing off.
#
#   Benchmarks/mesh-loop.sh [rounds] [frames]       # defaults: 3 rounds, 20000 frames
#
# MESH_SIZES (default "1024 16") and MESH_INFLIGHT (default 256) set the frame
# sizes and window. Prints frames/s and the CPU time all processes spent per
# frame (zippers, stream function, bench). Needs release builds of yomo and
# uppercase-sfn: LOOP_BIN, or built here.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
frames="${2:-20000}"
sizes="${MESH_SIZES:-1024 16}"
inflight="${MESH_INFLIGHT:-256}"
port1=9621
port2=9622

source Benchmarks/loop-common.sh
bin="$(release_bin)"

trap stop_all EXIT INT TERM

quiet=(env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT -u OTEL_TRACES_EXPORTER)

# Prints "<frames/s> <CPU µs per frame> <frames lost>".
run_mode() {
    local mode="$1" size="$2" sfn_port="$port1"
    local -a zippers=()
    if [[ "$mode" == one ]]; then
        "${quiet[@]}" "$bin/yomo" serve --host 127.0.0.1 --port "$port1" --name zipper-1 --stateless-reset-key-file none 2>/dev/null &
        zippers=($!)
    else
        "${quiet[@]}" "$bin/yomo" serve --host 127.0.0.1 --port "$port1" --name zipper-1 --stateless-reset-key-file none \
            --mesh "zipper-2=127.0.0.1:$port2" 2>/dev/null &
        zippers=($!)
        "${quiet[@]}" "$bin/yomo" serve --host 127.0.0.1 --port "$port2" --name zipper-2 --stateless-reset-key-file none \
            --mesh "zipper-1=127.0.0.1:$port1" 2>/dev/null &
        zippers+=($!)
        sfn_port="$port2"
    fi
    pids=("${zippers[@]}")
    sleep 0.5
    "${quiet[@]}" "$bin/uppercase-sfn" --zipper "127.0.0.1:$sfn_port" 2>/dev/null &
    local function=$!
    pids+=($function)
    sleep 0.7  # the sfn and (two) both mesh links connected
    local bench_output
    bench_output="$(/usr/bin/time -f "bench_cpu=%U+%S" "${quiet[@]}" "$bin/yomo" bench --zipper "127.0.0.1:$port1" \
        --size "$size" --inflight "$inflight" --frames "$frames" 2>&1)" || true
    local rate; rate="$(sed -n 's/.*throughput=\([0-9]*\).*/\1/p' <<<"$bench_output")"
    local lost; lost="$(sed -n 's/.*lost=\([0-9]*\).*/\1/p' <<<"$bench_output")"
    local bench_cpu; bench_cpu="$(sed -n 's/.*bench_cpu=\([0-9.+]*\).*/\1/p' <<<"$bench_output" | bc -l 2>/dev/null || echo 0)"
    local zipper_cpu=0 z
    for z in "${zippers[@]}"; do zipper_cpu="$(awk -v a="$zipper_cpu" -v b="$(cpu_seconds "$z")" 'BEGIN { print a + b }')"; done
    local total
    total="$(awk -v z="$zipper_cpu" -v f="$(cpu_seconds "$function")" -v b="$bench_cpu" -v n="$frames" \
        'BEGIN { printf "%.1f", (z + f + b) * 1e6 / n }')"
    stop_all
    echo "${rate:-0} $total ${lost:-?}"
}

declare -A rates cpus
for round in $(seq "$rounds"); do
    for size in $sizes; do
        for mode in one two; do
            read -r rate cpu lost < <(run_mode "$mode" "$size")
            rates[$mode/$size]+="$rate "
            cpus[$mode/$size]+="$cpu "
            echo "round $round size $size $mode zipper(s): $rate frames/s, $cpu µs CPU per frame, lost $lost"
        done
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "medians of $rounds rounds ($frames frames, window $inflight), ratios two/one:"
printf '%-8s %-6s %10s %7s %12s %7s\n' size zippers "frames/s" ratio "CPU µs/frame" ratio
for size in $sizes; do
    base_rate="$(echo "${rates[one/$size]}" | median)"
    base_cpu="$(echo "${cpus[one/$size]}" | median)"
    for mode in one two; do
        rate="$(echo "${rates[$mode/$size]}" | median)"
        cpu="$(echo "${cpus[$mode/$size]}" | median)"
        printf '%-8s %-6s %10.0f %7.2f %12.1f %7.2f\n' "$size" "$mode" "$rate" \
            "$(awk -v v="$rate" -v b="$base_rate" 'BEGIN {print (b > 0) ? v / b : 0}')" \
            "$cpu" "$(awk -v v="$cpu" -v b="$base_cpu" 'BEGIN {print (b > 0) ? v / b : 0}')"
    done
done
