#!/usr/bin/env bash
# CI check of the README's main job: runs scripts/demo.sh for a few frames
# (bounded by a timeout) and asserts that its output holds at least one whole
# trace — the source's span, the zipper's and the stream function's, nested —
# and that the demo left none of its processes running.
#
#   scripts/check-demo.sh            # DEMO_CONFIGURATION=debug by default here
set -euo pipefail
cd "$(dirname "$0")/.."
output="$(mktemp)"
export DEMO_CONFIGURATION="${DEMO_CONFIGURATION:-debug}"
export DEMO_FRAMES="${DEMO_FRAMES:-3}"
# Ports unlikely to collide with a developer's zipper or Jaeger.
export DEMO_PORT="${DEMO_PORT:-9731}"
export DEMO_OTLP_PORT="${DEMO_OTLP_PORT:-4731}"

status=0
timeout --signal=INT --kill-after=10 300 scripts/demo.sh > "$output" 2>&1 || status=$?
bin="$(swift build -c "$DEMO_CONFIGURATION" --show-bin-path)"
python3 - "$output" "$status" "$bin" <<'PY'
import re, subprocess, sys
path, status, bin_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
text = open(path, encoding="utf-8", errors="replace").read()
failures = []
if status != 0:
    failures.append(f"scripts/demo.sh exited with status {status}")
# A trace block: a "trace <32 hex>  N spans" line, then one line per span:
# service, tree-drawn span name, duration bar, duration, attributes.
blocks = re.split(r"(?m)^(?=trace [0-9a-f]{32} )", text)
whole = []
for block in blocks:
    if not re.match(r"trace [0-9a-f]{32} ", block):
        continue
    lines = block.splitlines()[1:]
    spans = [line for line in lines if line.strip()]
    source = [l for l in spans if re.match(r"\s*demo-source\s+demo-source\s", l) and "send_data_tag=51" in l]
    zipper = [l for l in spans if re.match(r"\s*zipper\s+(└─ )+zipper endpoint\s", l) and "routing_data_tag=51" in l]
    function = [l for l in spans if re.match(r"\s*upper\s+(└─ )+upper\s", l)
                and "sfn_handler_type=async_handler" in l and "recv_data_tag=51" in l]
    if source and zipper and function:
        whole.append(block)
if not whole:
    failures.append("no trace with the source, zipper and stream function spans in the demo's output")
pattern = "^" + re.escape(bin_path) + "/(yomo|uppercase-sfn|demo-source)( |$)"
leftovers = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
if leftovers:
    failures.append(f"processes left running from {bin_path}: {' '.join(leftovers)}")
if failures:
    print(text)
    print("check-demo: FAILED")
    for failure in failures:
        print("  -", failure)
    sys.exit(1)
print(f"check-demo: ok — {len(whole)} whole trace(s); the first:")
print(whole[0].rstrip())
PY
