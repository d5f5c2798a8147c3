# Sourced by the benchmark scripts that run the loop (loop-tracing.sh,
# loop-instructions.sh, zipper-hop.sh, footprint.sh, mesh-loop.sh,
# fault-shutdown.sh, which keeps its own stop_all: it kills with SIGKILL).

# Release builds here are optimized across modules, as deploy/Dockerfile and
# scripts/static-build.sh build: what users run is what is measured.
release_build=(swift build -c release -Xswiftc -cross-module-optimization)

# Prints LOOP_BIN, a directory with release builds of yomo and uppercase-sfn,
# or else builds them here and prints where.
release_bin() {
    if [[ -n "${LOOP_BIN:-}" ]]; then echo "$LOOP_BIN"; return; fi
    "${release_build[@]}" --product yomo >/dev/null
    "${release_build[@]}" --product uppercase-sfn >/dev/null
    "${release_build[@]}" --show-bin-path
}

# The processes of the current run; stop_all stops them and waits for them
# alone (a bare `wait` would also wait for the receiver, which outlives runs).
pids=()
stop_all() {
    if (( ${#pids[@]} )); then kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; fi
    pids=()
}

# Starts `yomo trace-view --discard` from directory $1 on $otlp_port as
# `receiver` and returns once it accepts connections. A receiver that cannot
# listen (one of an earlier run still holding the port) stops the script with
# its error, rather than leaving every later mode to read a dead pid.
receiver=""
start_receiver() {
    local log; log="$(mktemp)"
    "$1/yomo" trace-view --listen "127.0.0.1:$otlp_port" --discard >/dev/null 2>"$log" &
    receiver=$!
    for _ in $(seq 100); do
        if ! kill -0 "$receiver" 2>/dev/null; then
            echo "the span receiver did not start on port $otlp_port: $(cat "$log")" >&2
            rm -f "$log"; receiver=""; exit 1
        fi
        if ss -Hltnp "sport = :$otlp_port" | grep -q "pid=$receiver,"; then rm -f "$log"; return; fi
        sleep 0.05
    done
    echo "the span receiver did not listen on port $otlp_port within 5 s" >&2
    rm -f "$log"; exit 1
}

# Stops the receiver and waits for it, so a run started right after this one
# finds its port free.
stop_receiver() {
    if [[ -n "$receiver" ]]; then kill "$receiver" 2>/dev/null || true; wait "$receiver" 2>/dev/null || true; fi
    receiver=""
}

# Prints "<user seconds> <system seconds>" that pid $1 has used (10 ms ticks).
cpu_split() { awk '{ printf "%.2f %.2f", $14 / 100, $15 / 100 }' "/proc/$1/stat"; }
# Prints the CPU seconds, user and system, that pid $1 has used.
cpu_seconds() { cpu_split "$1" | awk '{ printf "%.2f", $1 + $2 }'; }

# Starts `yomo serve` on $port and uppercase-sfn attached to it, both from
# directory $1 under `environment` (see tracing_environment), with the
# arguments in `zipper_args` and `function_args` when set. Sets `zipper` and
# `function` to their pids, adds them to `pids`, and gives each time to come up.
start_zipper_and_function() {
    local programs="$1"
    # LOOP_ZIPPER_HOST=0.0.0.0: the zipper listens on every address (and
    # answers each client from the address it wrote to); its clients still dial 127.0.0.1.
    "${environment[@]}" "$programs/yomo" serve --host "${LOOP_ZIPPER_HOST:-127.0.0.1}" --port "$port" ${zipper_args[@]+"${zipper_args[@]}"} >/dev/null 2>&1 &
    zipper=$!
    pids+=("$zipper")
    sleep 0.3
    "${environment[@]}" "$programs/uppercase-sfn" --zipper "127.0.0.1:$port" ${function_args[@]+"${function_args[@]}"} >/dev/null 2>&1 &
    function=$!
    pids+=("$function")
    sleep 0.5
}

# Sets `environment`, the env prefix of every process, for tracing mode $1
# (off, propagation, propagation-tracecontext, propagation-yomo, ratio, on),
# with spans going to the receiver on $otlp_port; returns 1 for another mode.
# OTLP metric export stays off in every mode (an OTLP endpoint would turn it
# on): the tracing modes measure tracing alone.
tracing_environment() {
    environment=(env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_TRACES_SAMPLER -u OTEL_TRACES_SAMPLER_ARG -u YOMO_METRICS_LISTEN
        OTEL_METRICS_EXPORTER=none)
    local endpoint="OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$otlp_port"
    case "$1" in
        off) ;;
        propagation) environment+=("$endpoint" OTEL_TRACES_SAMPLER=always_off) ;;
        propagation-tracecontext | propagation-yomo)
            environment+=("$endpoint" OTEL_TRACES_SAMPLER=always_off OTEL_PROPAGATORS="${1#propagation-}") ;;
        on) environment+=("$endpoint") ;;
        ratio) environment+=("$endpoint" OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG="${LOOP_RATIO:-0.1}") ;;
        *) return 1 ;;
    esac
}
