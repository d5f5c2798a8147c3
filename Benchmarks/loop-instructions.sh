#!/usr/bin/env bash
# Instructions per round trip of the zipper and of the stream function on the
# YoMo loop, counted by valgrind's callgrind: within about 2 % from run to run
# (how frames share packets and acknowledgements varies), where times on a
# shared VM vary by ±10–20 %. Compare builds within one run, and a single
# function's inclusive count (LOOP_KEEP, callgrind_annotate --inclusive=yes)
# for changes of a few hundred instructions. One process at a time runs under callgrind
# (counting only while `yomo bench` sends the measured frames); the others run
# natively. Also prints where the most instructions went.
#
#   Benchmarks/loop-instructions.sh [frames]        # default 2000 (1 KiB, 16 in flight)
#
# Each process is counted over two runs of `yomo bench`, of N and 3N frames;
# the figures are their difference over 2N frames, so a run's fixed costs (a
# new connection's TLS handshake) do not count.
#
# LOOP_BIN: a directory with release builds of yomo and uppercase-sfn (default:
# built here); LOOP_BASELINE_BIN: another (e.g. an older commit), measured the
# same way, for before/after. LOOP_MODES (default "off propagation on", as in
# Benchmarks/loop-tracing.sh); LOOP_PROCESSES (default "zipper function"; "bench"
# counts the `yomo bench` process, the source and observer, a third of the loop);
# LOOP_SIZE (1024) and LOOP_INFLIGHT (16); LOOP_TOP (8) functions listed per
# run, LOOP_KEEP=DIR keeps the callgrind files (Benchmarks/loop-calls.py counts
# retains, releases, mallocs, locks and clock reads per round trip in them, and
# who calls them). Needs valgrind (apt).
set -euo pipefail
cd "$(dirname "$0")/.."
frames="${1:-2000}"
modes="${LOOP_MODES:-off propagation on}"
processes="${LOOP_PROCESSES:-zipper function}"
size="${LOOP_SIZE:-1024}"
inflight="${LOOP_INFLIGHT:-16}"
top="${LOOP_TOP:-8}"
port=9661
otlp_port=4461
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }

# LOOP_BIN: a directory with release builds of yomo and uppercase-sfn (default: built here).
source Benchmarks/loop-common.sh
bin="$(release_bin)"
builds="new"
if [[ -n "${LOOP_BASELINE_BIN:-}" ]]; then builds="new base"; fi
bin_of() { if [[ "$1" == base ]]; then echo "$LOOP_BASELINE_BIN"; else echo "$bin"; fi; }

work="$(mktemp -d)"
cleanup() {
    stop_all
    stop_receiver
    if [[ -n "${LOOP_KEEP:-}" ]]; then mkdir -p "$LOOP_KEEP" && cp "$work"/*.callgrind* "$LOOP_KEEP"/ 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

start_receiver "$bin"

# valgrind cannot read the toolchain's debug info: copies without it.
for build in $builds; do
    mkdir -p "$work/$build"
    for program in yomo uppercase-sfn; do strip --strip-debug -o "$work/$build/$program" "$(bin_of "$build")/$program"; done
done

# Waits until FILE has a line containing TEXT (or fails after 120 s).
wait_for() {
    for _ in $(seq 600); do
        if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "no '$2' in $1" >&2; cat "$1" >&2; exit 1
}

# Prints the instructions per round trip of PROCESS in MODE with BUILD.
measure() {
    local build="$1" mode="$2" process="$3" programs
    programs="$(bin_of "$build")"
    local -a environment
    tracing_environment "$mode" || { echo "unknown mode $mode" >&2; exit 2; }
    local out="$work/$build-$mode-$process.callgrind" log="$work/log"
    local -a counted=(valgrind --tool=callgrind --instr-atstart=no --demangle=no "--callgrind-out-file=$out")
    : >"$log"
    # The process counted runs under callgrind, from its copy without debug info.
    local -a zipper_command=("$programs/yomo") function_command=("$programs/uppercase-sfn")
    if [[ "$process" == zipper ]]; then zipper_command=("${counted[@]}" "$work/$build/yomo")
    elif [[ "$process" == function ]]; then function_command=("${counted[@]}" "$work/$build/uppercase-sfn"); fi
    "${environment[@]}" "${zipper_command[@]}" serve --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
    local zipper=$!
    pids=($zipper)
    wait_for "$log" "zipper listening"
    "${environment[@]}" "${function_command[@]}" --zipper "127.0.0.1:$port" >>"$log" 2>&1 &
    local function=$!
    pids+=($function)
    wait_for "$log" "client connected.*stream function"
    local counted_pid=$zipper
    if [[ "$process" == function ]]; then counted_pid=$function; fi
    local -a load=(bench --zipper "127.0.0.1:$port" --size "$size" --inflight "$inflight" --timeout 300)
    local -a bench=("${environment[@]}" "$programs/yomo" "${load[@]}")
    "${bench[@]}" --frames 200 >/dev/null 2>&1  # first frames: lazy set-up, not counted
    # Two counted runs, of N and 3N frames, each dumped on its own: every run of
    # `yomo bench` is a new connection (a TLS handshake: key exchange and
    # signatures), which their difference cancels along with other fixed costs.
    if [[ "$process" == bench ]]; then
        # The bench process itself (source and observer): each run is counted whole,
        # so its start-up cancels in the difference too.
        local run
        for run in 1 2; do
            "${environment[@]}" valgrind --tool=callgrind --demangle=no "--callgrind-out-file=$out.$run" "$work/$build/yomo" \
                "${load[@]}" --frames $(( run == 1 ? frames : 3 * frames )) >/dev/null 2>&1
        done
    else
        callgrind_control -i on "$counted_pid" >/dev/null 2>&1
        "${bench[@]}" --frames "$frames" >/dev/null 2>&1
        callgrind_control -d "$counted_pid" >/dev/null 2>&1
        "${bench[@]}" --frames $((3 * frames)) >/dev/null 2>&1
        callgrind_control -d "$counted_pid" >/dev/null 2>&1
        callgrind_control -i off "$counted_pid" >/dev/null 2>&1
    fi
    stop_all
    # Dumps land in $out.1 and $out.2 (counters restart at each); per function, run 2 minus run 1.
    python3 - "$out.1" "$out.2" "$((2 * frames))" "$out.per-frame" <<'PY'
import re, subprocess, sys
first, second, frames, output = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def costs(path):
    listing = subprocess.run(["callgrind_annotate", "--threshold=100", path], capture_output=True, text=True).stdout
    found, total = {}, 0
    for line in listing.splitlines():
        match = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
        if not match:
            continue
        count = int(match.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = count
        else:
            found[re.sub(r"\s*\[/.*?\]$", "", match.group(2))] = count
    return found, total
before, before_total = costs(first)
after, after_total = costs(second)
rows = sorted(((after.get(k, 0) - before.get(k, 0)) / frames, k) for k in set(before) | set(after))
with open(output, "w") as f:
    f.write(f"{(after_total - before_total) / frames:.0f}\n")
    for cost, name in reversed(rows):
        f.write(f"{cost:.0f}\t{name}\n")
PY
    head -1 "$out.per-frame"
}

declare -A results
for build in $builds; do
    for mode in $modes; do
        for process in $processes; do
            results[$build,$mode,$process]="$(measure "$build" "$mode" "$process")"
            echo "$build $mode $process: ${results[$build,$mode,$process]} instructions per round trip" >&2
            if (( top > 0 )); then
                sed -n "2,$((top + 1))p" "$work/$build-$mode-$process.callgrind.per-frame" \
                    | awk -F '\t' '{ printf "    %8s  %s\n", $1, substr($2, 1, 120) }' >&2
            fi
        done
    done
done

echo
echo "instructions per round trip (${size} B, ${inflight} in flight; runs of $frames and $((3 * frames)) frames, their difference), ratios to the first mode of the same build:"
printf '%-6s %-12s' build mode
for process in $processes; do printf ' %12s %6s' "$process" ratio; done
echo
first_mode="${modes%% *}"
for build in $builds; do
    for mode in $modes; do
        printf '%-6s %-12s' "$build" "$mode"
        for process in $processes; do
            value="${results[$build,$mode,$process]}"
            base="${results[$build,$first_mode,$process]}"
            printf ' %12s %6.2f' "$value" "$(awk -v v="$value" -v b="$base" 'BEGIN { print (b > 0) ? v / b : 0 }')"
        done
        echo
    done
done
