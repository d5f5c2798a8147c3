#!/usr/bin/env bash
# What keeps the shipped programs' resident memory down (docs/performance.md,
# "Footprint (RSS)") and could silently come undone: each binary packs its
# relative relocations (DT_RELR; RELA entries would be read and kept resident at
# every start), exports no symbols of its own (the dynamic symbol table would be
# read at every start) and does not link libcurl (loaded only when an OTLP exporter
# first sends; linked, it maps OpenSSL, Kerberos, LDAP... into every process);
# every module of the programs imports at most FoundationEssentials, so neither
# the zipper nor a stream function links full Foundation (CoreFoundation's
# start-up alone costs ~4 MB).
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
    # -export-dynamic (which --static-swift-stdlib passes) put ~17,000 symbols in
    # the dynamic table, read by the loader at every start; none are needed.
    exported="$(readelf --dyn-syms -W "$bin/$program" | awk '$7 ~ /^[0-9]+$/' | wc -l)"
    if (( exported > 1000 )); then
        echo "$bin/$program: exports $exported symbols (linked with -export-dynamic?)" >&2; status=1
    fi
    if grep -q 'NEEDED.*libcurl' <<<"$dynamic"; then
        echo "$bin/$program: links libcurl (it should be loaded on first export)" >&2; status=1
    fi
    # A dynamic build names the library; a static one carries CoreFoundation (below).
    if grep -q 'NEEDED.*\[libFoundation\.so\]' <<<"$dynamic"; then
        echo "$bin/$program: links full Foundation (libFoundation.so)" >&2; status=1
    fi
done
# No module of the shipped programs imports full Foundation.
if grep -n '^\(internal \|public \|package \)\?import Foundation$' \
    Sources/{YoMo,YoMoWire,YoMoQUIC,YoMoTracing,YoMoLogging,YoMoMetrics,YoMoTraceView,YoMoZipperYAML,YoMoCLI}/*.swift \
    Sources/YoMoTracing/OTLP/*.swift Sources/YoMoLogging/OTLP/*.swift Examples/UppercaseSFN/*.swift >&2; then
    echo "the lines above import full Foundation (use FoundationEssentials)" >&2; status=1
fi
for program in yomo uppercase-sfn; do
    if nm --defined-only "$bin/$program" | grep ' __CFInitialize$' >/dev/null; then  # not -q: nm would die of SIGPIPE
        echo "$bin/$program: links full Foundation (CoreFoundation)" >&2; status=1
    fi
done
if (( status == 0 )); then echo "binaries in $bin: relocations packed, no symbols exported, libcurl not linked, no full Foundation"; fi
exit $status
