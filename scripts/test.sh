#!/usr/bin/env bash
# The whole test suite: installs prerequisites, builds, runs every test.
#
#   scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
swift build --build-tests
swift test --skip-build
