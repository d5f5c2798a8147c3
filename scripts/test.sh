#!/usr/bin/env bash
# The whole test suite: installs prerequisites, builds, runs every test, then
# the checks of what is not Swift: the deploy files and dashboards, the docs'
# code samples, and the README's main job (scripts/demo.sh) run for a few frames.
#
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
python3 scripts/check-deploy.py
python3 Benchmarks/loop-pool.py --self-test
python3 Benchmarks/zipper-hop.py --self-test
swift build --build-tests
# The programs pack their relocations and load libcurl lazily (resident memory).
scripts/check-binaries.sh
# Every ```swift block of README.md and docs/ compiles (the DocSamples target,
# just built) and docs/configuration.md names every option and variable.
scripts/check-doc-samples.py
# One test at a time. The tests no longer hold a thread of the cooperative
# pool while a Python peer starts or runs, and the wire tests' fixtures no
# longer take seconds unoptimized (a parallel run went from 15 s stalls of
# every async test to about 2 s). But several tests bound wall-clock times
# (a 2 s handshake timeout, a loopback RTT under 100 ms) that 333 tests
# sharing two cores can still miss.
# The suites between network namespaces (MeshHostsTests.swift) spend most
# of their 110 s waiting on the path (delays, losses, outages; under half a
# core busy), so they run in a second process beside the rest, one at a time
# too: the whole run is that much shorter. SwiftPM lets one `swift test` use
# .build at a time, so the second runs the test binary itself.
# What failed is repeated at the end: a CI log is often read from its tail.
# Those suites are the ones with the `.needsNetworkNamespaces` trait, found
# here rather than listed by hand: a new one left off a list would run in
# the first process, beside them, and their hosts' names would clash.
namespace_suites=$(awk '/\.needsNetworkNamespaces\)/ {want = 1; next}
    want && /^(final class|struct) / {name = $2; sub(/[^A-Za-z0-9_].*/, "", name); print name; want = 0}' Tests/YoMoTests/*.swift | paste -sd'|')
if [ -z "$namespace_suites" ]; then
    echo "no test suite with the .needsNetworkNamespaces trait found: scripts/test.sh cannot split the run" >&2
    exit 1
fi
namespaces="YoMoTests\.($namespace_suites)/"
log=$(mktemp)
namespaces_log=$(mktemp)
trap 'rm -f "$log" "$namespaces_log"' EXIT
NO_COLOR=1 .build/debug/swift-yomoPackageTests.xctest --testing-library swift-testing --no-parallel --filter "$namespaces" \
    > "$namespaces_log" 2>&1 &
namespaces_pid=$!
status=0
swift test --skip-build --no-parallel --skip "$namespaces" 2>&1 | tee "$log" || status=1
wait "$namespaces_pid" || status=1
echo "=== the suites between network namespaces ==="
cat "$namespaces_log"
# The second half must have run: a filter that matched nothing would pass empty.
grep -qE "Test run with [0-9]+ tests? in [0-9]+ suites? passed" "$namespaces_log" || status=1
if [ "$status" -ne 0 ]; then
    echo "=== the tests that failed, and why ==="
    grep -hE "^✘ Test .*(recorded an issue|failed after)" "$log" "$namespaces_log" | cut -c1-1500 | tail -n 40
    exit 1
fi
# The demo on the debug build just made: one whole trace, nothing left running.
scripts/check-demo.sh
