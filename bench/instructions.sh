#!/usr/bin/env bash
# Instructions the watchdog and the Rust SDK echo worker each execute per request in http mode, counted by
# valgrind (callgrind), for plain requests and binary-mode CloudEvents: one run per process and case, the other
# process running natively. Unlike requests/s on a shared VM, the counts repeat to within a fraction of a
# percent, so they show small changes to either side's user-space work (the kernel's part is not counted).
# See bench/README.md.
# Knobs: DURATION (seconds of wrk load per case, 5), CASES ("plain ce"; "hdr" sends plain requests with the events'
# headers renamed), BODY (13B or 1MiB), KEEP_TMP.
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
# One run per case and process: the one counted runs under valgrind, the other natively.
for who in watchdog worker; do
for case in "${CASES[@]}"; do
    prefix=
    [[ $case == ce ]] && prefix=ce-
    [[ $case == hdr ]] && prefix=x-
    run=$who.$case
    mkdir -p "$WORK/tmp-$run"
    callgrind=(valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.$run")
    if [[ $who == watchdog ]]; then
        watchdog=("${callgrind[@]}" "$BIN/fwatchdog") fprocess=$BIN/examples/echo
    else
        watchdog=("$BIN/fwatchdog") fprocess="${callgrind[*]} $BIN/examples/echo"
    fi
    env -i PATH="$PATH" mode=http fprocess="$fprocess" port=$port metrics_port=0 TMPDIR="$WORK/tmp-$run" \
        healthcheck_interval=0 "${watchdog[@]}" 2>"$WORK/$run.log" &
    SERVER=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$port/_/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    HEADER_PREFIX=$prefix BODY_FILE=$WORK/body wrk -t2 -c32 -d"${DURATION}s" -s "$ROOT/bench/post.lua" \
        "http://127.0.0.1:$port/" >"$WORK/wrk.$run"
    kill -TERM "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    SERVER=
    port=$((port + 1))
    # The worker's callgrind writes its file as the worker exits, after the watchdog has stopped it.
    for _ in $(seq 100); do
        [[ -s $WORK/callgrind.$run ]] && grep -q '^totals:' "$WORK/callgrind.$run" && break
        sleep 0.1
    done
    requests=$(awk '/requests in/ { print $1 }' "$WORK/wrk.$run")
    if grep -q 'Non-2xx' "$WORK/wrk.$run"; then
        echo "WARNING: $run: non-2xx answers" >&2
    fi
    total=$(awk '/^totals:/ { print $2 }' "$WORK/callgrind.$run" 2>/dev/null)
    if [[ -z $total ]]; then
        echo "WARNING: $run: no callgrind totals (the $who was killed before it could write them?)" >&2
        continue
    fi
    # Start-up and shutdown are in the total too: about as much as ten requests.
    PER_REQUEST[$run]=$((total / requests))
    printf '%-8s %-6s %6d requests  %8d instructions per request\n' "$who" "$case" "$requests" "${PER_REQUEST[$run]}"
done
done
for who in watchdog worker; do
    p=${PER_REQUEST[$who.plain]:-}
    [[ -n $p ]] || continue
    for case in hdr ce; do
        c=${PER_REQUEST[$who.$case]:-}
        [[ -n $c ]] || continue
        what="an event"
        [[ $case == hdr ]] && what="a request with the events' headers"
        awk -v who="$who" -v what="$what" -v p="$p" -v c="$c" \
            'BEGIN { printf "%s: %s costs %.2f times a plain request (%d more instructions)\n", who, what, c / p, c - p }'
    done
done
