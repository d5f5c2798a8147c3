#!/usr/bin/env bash
# Builds products as deploy/Dockerfile does: release, the Swift runtime linked
# in (--static-swift-stdlib), every function in a section of its own so that
# the link can lay out the code the programs run together
# (deploy/text-order/; docs/performance.md, "Footprint (RSS)"), and with
# cross-module optimization, so that generic code of other modules (swift-log,
# swift-distributed-tracing, ours) is specialized where the data path calls it
# (docs/performance.md, "A seventh round").
# Prints the directory holding the programs.
#
#   scripts/static-build.sh [--scratch-path DIR] PRODUCT... [-- EXTRA swift build ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=".build-static"
if [[ "${1:-}" == --scratch-path ]]; then scratch="$2"; shift 2; fi
products=()
while (( $# )) && [[ "$1" != -- ]]; do products+=("$1"); shift; done
if [[ "${1:-}" == -- ]]; then shift; fi
flags=(-c release --static-swift-stdlib --scratch-path "$scratch"
    -Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -ffunction-sections
    -Xswiftc -cross-module-optimization "$@")
for product in "${products[@]}"; do
    swift build "${flags[@]}" --product "$product" >&2
done
swift build "${flags[@]}" --show-bin-path
