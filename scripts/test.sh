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
# What failed is repeated at the end: a CI log is often read from its tail.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! swift test --skip-build --no-parallel 2>&1 | tee "$log"; then
    echo "=== the tests that failed, and why ==="
    grep -E "^✘ Test .*(recorded an issue|failed after)" "$log" | cut -c1-1500 | tail -n 40
    exit 1
fi
# The demo on the debug build just made: one whole trace, nothing left running.
scripts/check-demo.sh
