# Sourced by the benchmark scripts that run the loop (loop-tracing.sh,
# loop-instructions.sh, footprint.sh, mesh-loop.sh, fault-shutdown.sh).

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
