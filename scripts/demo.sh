#!/usr/bin/env bash
# The main job: installs prerequisites, builds, and runs what swift-yomo has so far.
#
#   scripts/demo.sh
#
# Today that is the wire codec, measured on this machine. The traced
# zipper → stream function → source demo replaces this once `yomo serve`
# and the examples exist (see docs/roadmap.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "demo: building (release)…"
swift build -c release --product yomo-wire-bench 2>&1 | grep -E "error|warning: .*deprecated|Compiling|Build complete" | tail -3
echo
echo "demo: the zipper, stream function and source are not there yet (docs/roadmap.md)."
echo "demo: meanwhile, the YoMo wire codec on this machine (frames with source id, tid, trace id, span id):"
echo
"$(swift build -c release --show-bin-path)/yomo-wire-bench" --quick
