#!/usr/bin/env bash
# What keeps the shipped programs' resident memory down (docs/performance.md,
# "Footprint (RSS)") and could silently come undone: each binary packs its
# relative relocations (DT_RELR; RELA entries would be read and kept resident at
# every start) and does not link libcurl (loaded only when an OTLP exporter
# first sends; linked, it maps OpenSSL, Kerberos, LDAP... into every process).
#
#   scripts/check-binaries.sh [BIN_DIR]     # default: the debug build's bin path
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-$(swift build --show-bin-path)}"
status=0
for program in yomo uppercase-sfn; do
    dynamic="$(readelf -d "$bin/$program")"
    if ! grep -q '(RELR)' <<<"$dynamic"; then
        echo "$bin/$program: no DT_RELR (relative relocations not packed)" >&2; status=1
    fi
    if grep -q 'NEEDED.*libcurl' <<<"$dynamic"; then
        echo "$bin/$program: links libcurl (it should be loaded on first export)" >&2; status=1
    fi
done
if (( status == 0 )); then echo "binaries in $bin: relocations packed, libcurl not linked"; fi
exit $status
