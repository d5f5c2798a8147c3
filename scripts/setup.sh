#!/usr/bin/env bash
# Installs what swift-yomo needs on a fresh Debian 12 machine with Swift 6.3:
# the C libraries from apt and the Python test peers from PyPI. Safe to re-run:
# it installs only what is missing.
set -euo pipefail

APT_PACKAGES=(
    pkg-config
    libngtcp2-dev libngtcp2-crypto-gnutls-dev libgnutls28-dev gnutls-bin
    libcurl4-openssl-dev zlib1g-dev
    libprotobuf-c-dev protobuf-c-compiler
)
# Test-only: a real Prometheus (2.42) scrapes the metrics endpoints in the
# tests; nftables cuts links between the tests' network namespaces (a
# partition that drops packets silently). Kept apart from APT_PACKAGES, which
# the Docker image mirrors.
TEST_APT_PACKAGES=(prometheus nftables)
# aioquic and opentelemetry-proto: the independent QUIC peer and the OTLP
# receiver of the tests; the rest: scripts/check-deploy.py (the Compose schema
# ships with check-jsonschema, `dockerfile` is BuildKit's Dockerfile parser).
PIP_PACKAGES=(aioquic opentelemetry-proto pyyaml jsonschema check-jsonschema dockerfile)

missing=()
for package in "${APT_PACKAGES[@]}" "${TEST_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! python3 -c "import aioquic, opentelemetry.proto, yaml, jsonschema, check_jsonschema, dockerfile" 2>/dev/null; then
    echo "setup: installing ${PIP_PACKAGES[*]}"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${PIP_PACKAGES[@]}"
fi

command -v swift >/dev/null || { echo "setup: swift is not on PATH (Swift 6.3 is expected at /opt/swift)" >&2; exit 1; }
