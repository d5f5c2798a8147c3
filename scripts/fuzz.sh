#!/usr/bin/env bash
# Fuzzes the frame and metadata decoders, the zipper's in-place metadata view,
# trace-view's body decoding and drawing, and `yomo top`'s reading of pages,
# with libFuzzer (+ AddressSanitizer) for a bounded time, seeded with the golden
# vectors, trace metadata as the SDK writes it, OTLP trace bodies and /metrics
# pages.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
#
# Exits non-zero if a target crashes (crash inputs land in fuzz-artifacts/) or
# was built without coverage counters.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
scratch=.build-fuzz

targets=(FrameFuzzer:frames MetadataFuzzer:metadata MetadataViewFuzzer:metadata TraceViewFuzzer:otlp MetricsPageFuzzer:pages)
# swiftc keeps only the last of several -sanitize= flags, and SwiftPM writes
# one per --sanitize in an order that changes from run to run: half the builds
# had coverage without AddressSanitizer, half ASan without coverage. One
# combined flag, last on the command line, gives every Swift file both.
build=(swift build -c release --package-path Fuzz --scratch-path "$scratch" --sanitize=fuzzer --sanitize=address
       -Xswiftc -sanitize=fuzzer,address)
mkdir -p "$scratch"
if ! "${build[@]}" > "$scratch/build.log" 2>&1; then
    grep -E "error" -A3 "$scratch/build.log" | head -40
    echo "fuzz: build failed (full log: $scratch/build.log)" >&2
    exit 1
fi
bin="$("${build[@]}" --show-bin-path)"
# Every target must have coverage counters (libFuzzer's first line reports
# "cov:" only then): a guard against the flag order above coming back.
for target in "${targets[@]}"; do
    if [[ "$("$bin/${target%%:*}" -runs=0 2>&1 | grep -m1 INITED || true)" != *"cov:"* ]]; then
        echo "fuzz: ${target%%:*} was built without coverage counters (log: $scratch/build.log)" >&2
        exit 1
    fi
done

# Seed corpora: every golden frame and metadata map, and every invalid/lenient input.
corpus="$scratch/corpus"
rm -rf "$corpus" && mkdir -p "$corpus/frames" "$corpus/metadata" "$corpus/otlp" "$corpus/pages" fuzz-artifacts
python3 - "$corpus" <<'PY'
import json, sys, os, hashlib
corpus = sys.argv[1]
data = json.load(open("Tests/YoMoWireTests/Vectors/frames.json"))
def write(kind, raw):
    with open(os.path.join(corpus, kind, hashlib.sha1(raw).hexdigest()), "wb") as f:
        f.write(raw)
for case in data["cases"]:
    if "hex" not in case: continue
    raw = bytes.fromhex(case["hex"])
    if case["kind"] == "metadata":
        write("metadata", raw)
    else:
        write("frames", b"\x07" + raw)  # first byte picks the chunk size
        if case["fields"].get("metadata_hex"):
            write("metadata", bytes.fromhex(case["fields"]["metadata_hex"]))
for case in data["invalid"] + data["lenient"]:
    write("frames", b"\x01" + bytes.fromhex(case["hex"]))
# Trace metadata as the SDK writes it (the Go vectors carry no traceparent), for
# the view's in-place trace reads: ids that agree, that differ, an unsampled
# flag, uppercase digits, a tracestate.
def packed(text):
    raw = text.encode()
    return (bytes([0xA0 | len(raw)]) if len(raw) < 32 else bytes([0xD9, len(raw)])) + raw
def metadata(pairs):
    return bytes([0x80 | len(pairs)]) + b"".join(packed(k) + packed(v) for k, v in pairs)
trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
for extra, trace_id, flags in [([], trace, "01"), ([("yomo-tid", "t-1")], trace, "00"),
                               ([], "0" * 31 + "1", "01"), ([], trace.upper(), "01"),
                               ([("tracestate", "a=1")], trace, "01")]:
    write("metadata", metadata(extra + [("traceparent", f"00-{trace}-{span}-{flags}"),
                                        ("yomo-trace-id", trace_id), ("yomo-span-id", span)]))
# OTLP trace bodies for trace-view: every attribute value type, events, links,
# a status, parents, and values nested a few levels deep.
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
def otlp(spans_per_scope, nesting):
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    resource.resource.attributes.add(key="service.name").value.string_value = "fuzz"
    scope = resource.scope_spans.add()
    scope.scope.name = "seed"
    for index in range(spans_per_scope):
        span = scope.spans.add(trace_id=bytes([1] * 16), span_id=bytes([index + 1] * 8), name=f"span-{index}", kind=index % 6,
                               start_time_unix_nano=index * 1000, end_time_unix_nano=index * 1000 + 500)
        if index:
            span.parent_span_id = bytes([index] * 8)
        span.attributes.add(key="s").value.string_value = "text"
        span.attributes.add(key="b").value.bool_value = True
        span.attributes.add(key="i").value.int_value = -7
        span.attributes.add(key="d").value.double_value = 2.5
        span.attributes.add(key="x").value.bytes_value = b"\x00\xff"
        value = span.attributes.add(key="nested").value
        for _ in range(nesting):
            value = value.array_value.values.add()
        value.string_value = "deep"
        listed = span.attributes.add(key="kv").value.kvlist_value.values.add(key="inner")
        listed.value.int_value = 1
        span.events.add(name="event", time_unix_nano=index * 1000 + 10).attributes.add(key="e").value.string_value = "v"
        span.links.add(trace_id=bytes([2] * 16), span_id=bytes([9] * 8)).attributes.add(key="l").value.bool_value = False
        span.status.code, span.status.message = (2, "failed") if index % 2 else (1, "")
    return request.SerializeToString()
for spans, nesting in [(1, 0), (3, 2), (5, 8), (2, 30)]:
    write("otlp", otlp(spans, nesting))
# /metrics pages as `yomo top` reads them: ours (text and OpenMetrics with an
# exemplar), escapes in label values, and values that are not plain numbers.
page = """# HELP yomo_zipper_routed_messages_total Deliveries by outcome.
# TYPE yomo_zipper_routed_messages_total counter
target_info{service_name="zipper",host_name="h"} 1
yomo_zipper_routed_messages_total{messaging_destination_name="0x33",outcome="delivered",otel_scope_name="Zipper"} 40
yomo_zipper_routed_messages_total{messaging_destination_name="0x34",outcome="no_route"} 40
messaging_client_consumed_messages_total{messaging_destination_name="0x33"} 12
messaging_client_sent_messages_total 7
messaging_process_duration_seconds_bucket{le="0.005"} 3
messaging_process_duration_seconds_bucket{le="0.01"} 5 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736",span_id="00f067aa0ba902b7"} 0.007 1764077485.123
messaging_process_duration_seconds_bucket{le="+Inf"} 6
messaging_process_duration_seconds_count{error_type="X"} 1
yomo_zipper_connections{yomo_client_type="source"} 2
yomo_quic_smoothed_rtt_seconds 0.0004
yomo_sdk_spans_dropped_total NaN
label_escapes{a="x\\"y\\\\z\\n",b=""} -Inf
# EOF
"""
write("pages", page.encode())
write("pages", page.replace("40", "41").encode() + page.encode())
PY

status=0
for target in "${targets[@]}"; do
    name="${target%%:*}"; seeds="${target##*:}"
    echo "== $name for ${seconds}s"
    log="$scratch/$name.log"
    if "$bin/$name" "$corpus/$seeds" -max_total_time="$seconds" -max_len=4096 \
        -artifact_prefix=fuzz-artifacts/ -print_final_stats=1 > "$log" 2>&1; then
        grep -E 'stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs' "$log"
        # Coverage at the start and the end.
        grep -E 'INITED|DONE' "$log" | grep -oE '^#[0-9]+[[:space:]]+[A-Z]+[[:space:]]+cov: [0-9]+' | sed 's/^/   /' 
    else
        status=1
        grep -E 'ERROR|SUMMARY|crash-|deadly|Test unit written' -A5 "$log" | head -60
        echo "== $name FAILED (log: $log)"
    fi
done
exit "$status"
