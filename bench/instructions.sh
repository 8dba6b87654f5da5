#!/usr/bin/env bash
# Instructions the watchdog executes per request in http mode, counted by valgrind (callgrind), for plain
# requests and binary-mode CloudEvents to the Rust SDK echo worker. Unlike requests/s on a shared VM, the
# count repeats to within a fraction of a percent, so it shows small changes to the watchdog's own user-space
# work (the kernel's part and the worker's are not counted). See bench/README.md.
# Knobs: DURATION (seconds of wrk load per case, 5), CASES ("plain ce"), BODY (13B or 1MiB), KEEP_TMP.
set -euo pipefail
export LC_ALL=C

DURATION=${DURATION:-5}
# shellcheck disable=SC2206 # CASES="plain" picks cases
CASES=(${CASES:-plain ce})
BODY=${BODY:-13B}
KEEP_TMP=${KEEP_TMP:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/target/release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ngwd-instr.XXXXXX")
SERVER=
cleanup() {
    [[ -n $SERVER ]] && kill -TERM "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    if [[ $KEEP_TMP == 1 ]]; then echo "temp dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

for tool in valgrind wrk; do
    if ! command -v $tool >/dev/null; then
        echo "installing $tool" >&2
        apt-get update -qq && apt-get install -y -qq $tool >/dev/null
    fi
done
(cd "$ROOT" && cargo build --release --bin fwatchdog && cargo build --release -p watchdog-sdk --example echo) >&2

case $BODY in
13B) printf 'Hello, world!' >"$WORK/body" ;;
1MiB) head -c $((1024 * 1024)) /dev/urandom >"$WORK/body" ;;
*) echo "BODY must be 13B or 1MiB" >&2; exit 2 ;;
esac

# Below the ephemeral range, so no client socket holds it.
port=$((20000 + RANDOM % 10000))
declare -A PER_REQUEST
for case in "${CASES[@]}"; do
    script=$ROOT/bench/post.lua
    [[ $case == ce ]] && script=$ROOT/bench/post-ce.lua
    mkdir -p "$WORK/tmp-$case"
    # Only the watchdog runs under valgrind; the worker it starts runs natively.
    env -i PATH="$PATH" mode=http fprocess="$BIN/examples/echo" port=$port metrics_port=0 TMPDIR="$WORK/tmp-$case" \
        healthcheck_interval=0 valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.$case" \
        "$BIN/fwatchdog" 2>"$WORK/$case.log" &
    SERVER=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$port/_/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    BODY_FILE=$WORK/body wrk -t2 -c32 -d"${DURATION}s" -s "$script" "http://127.0.0.1:$port/" >"$WORK/wrk.$case"
    kill -TERM "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
    requests=$(awk '/requests in/ { print $1 }' "$WORK/wrk.$case")
    if grep -q 'Non-2xx' "$WORK/wrk.$case"; then
        echo "WARNING: $case: non-2xx answers" >&2
    fi
    total=$(awk '/^totals:/ { print $2 }' "$WORK/callgrind.$case")
    # Start-up and shutdown are in the total too: about as much as ten requests.
    PER_REQUEST[$case]=$((total / requests))
    printf '%-6s %6d requests  %8d instructions per request\n' "$case" "$requests" "${PER_REQUEST[$case]}"
    port=$((port + 1))
done
if [[ -n ${PER_REQUEST[plain]:-} && -n ${PER_REQUEST[ce]:-} ]]; then
    awk -v p="${PER_REQUEST[plain]}" -v c="${PER_REQUEST[ce]}" \
        'BEGIN { printf "an event costs %.2f times a plain request (%d more instructions)\n", c / p, c - p }'
fi
