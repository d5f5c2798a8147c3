# Sourced by the loop scripts: sets `bin` to LOOP_BIN, a directory with release
# builds of yomo and uppercase-sfn, or else builds them here and uses those.
if [[ -n "${LOOP_BIN:-}" ]]; then
    bin="$LOOP_BIN"
else
    swift build -c release --product yomo >/dev/null
    swift build -c release --product uppercase-sfn >/dev/null
    bin="$(swift build -c release --show-bin-path)"
fi
