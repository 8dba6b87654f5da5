#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the SDK tests need (a Python venv with the
# pinned protobuf and pytest in sdk/python/.venv; the locked npm packages in sdk/node/node_modules), runs the
# Python and Node SDK suites, then every Rust test (which also drives the SDKs end to end against the real
# binary), then the client suites in tests/clients/ (the PyPI and npm CloudEvents SDKs against target/debug/fwatchdog,
# each installing its pinned packages into tests/clients/python/.venv or tests/clients/node/node_modules on first
# use). Ends with one "N passed, N failed" line summing all of them.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
status=0

run() { # run NAME COMMAND...
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$logs/$name.log"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "== $name failed (exit $rc)"
        status=1
    fi
}

run python bash sdk/python/run-tests.sh -q
run node bash sdk/node/run-tests.sh
run cargo cargo test --locked --workspace
# Client tests: third-party CloudEvents SDKs (PyPI, npm) against the real binary, each in its own venv or
# node_modules under tests/clients/, created on first use.
run build cargo build --locked --bin fwatchdog
run clients-python bash tests/clients/python/run-tests.sh -q
run clients-node bash tests/clients/node/run-tests.sh

passed=0
failed=0
add() { passed=$((passed + ${1:-0})); failed=$((failed + ${2:-0})); }
# cargo: "test result: ok. 51 passed; 0 failed; ..."
read -r p f < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
    END { print p + 0, f + 0 }' "$logs/cargo.log")
add "$p" "$f"
# pytest: "83 passed in 24.65s" or "1 failed, 82 passed, 1 error in ..." (an error counts as a failure)
for log in python clients-python; do
    read -r p f < <(awk '/ in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p = $i; if ($(i+1) ~ /^failed/) f = $i; if ($(i+1) ~ /^error/) e = $i } }
        END { print p + 0, f + e + 0 }' "$logs/$log.log")
    add "$p" "$f"
done
# node --test: "# pass 44" and "# fail 0"
for log in node clients-node; do
    read -r p f < <(awk '/^# pass / { p = $3 } /^# fail / { f = $3 } END { print p + 0, f + 0 }' "$logs/$log.log")
    add "$p" "$f"
done

echo "$passed passed, $failed failed"
exit "$status"
