#!/usr/bin/env bash
# Runs every test of the project. Installs nothing today beyond the Rust toolchain; SDK test setups are added
# here as they land, so that a fresh machine needs only this script. Ends with one "N passed, N failed" line
# summing every test binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log=$(mktemp)
trap 'rm -f "$log"' EXIT

status=0
cargo test --locked 2>&1 | tee "$log" || status=$?

awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
