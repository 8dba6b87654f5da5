#!/usr/bin/env bash
# gRPC benchmark: unary watchdog.v1.Function/Invoke calls from bench/grpc_load.rs against
#   grpc-echo     bench/grpc_echo.rs, a plain tonic echo server (the baseline)
#   grpc-classic  fwatchdog, fprocess=cat (one process per call)
#   grpc-http     fwatchdog mode=http with the Rust SDK echo worker
# Each case run sits between two baseline runs; its ratio is its calls/s over their mean; the median over ROUNDS
# is reported. Knobs: DURATION (10), ROUNDS (3), CONCURRENCY (32), BODY bytes (13), CASES, BIN (target/release).
set -euo pipefail
export LC_ALL=C

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONCURRENCY=${CONCURRENCY:-32}
BODY=${BODY:-13}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
# shellcheck disable=SC2206 # CASES="grpc-classic" picks cases
CASES=(${CASES:-grpc-classic grpc-http})
PORT=${PORT:-18080}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ngwd-grpc-bench.XXXXXX")
SRV_PID=

stop_server() {
    if [[ -n $SRV_PID ]]; then
        kill -TERM "$SRV_PID" 2>/dev/null || true
        wait "$SRV_PID" 2>/dev/null || true
        SRV_PID=
    fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT

if [[ $BIN == "$ROOT/target/release" && -z ${SKIP_BUILD:-} ]]; then
    (cd "$ROOT" && cargo build --release --bin fwatchdog --example grpc_load --example grpc_echo --example spawn_floor \
        && cargo build --release -p watchdog-sdk --example echo) >&2
fi

start_server() {
    local case=$1
    case $case in
    grpc-echo) "$BIN/examples/grpc_echo" "127.0.0.1:$PORT" 2>>"$WORK/$case.log" & ;;
    grpc-classic)
        env -i PATH="$PATH" TMPDIR="$WORK" port=$PORT metrics_port=0 fprocess=cat healthcheck_interval=0 \
            "$BIN/fwatchdog" 2>>"$WORK/$case.log" & ;;
    grpc-http)
        env -i PATH="$PATH" TMPDIR="$WORK" port=$PORT metrics_port=0 mode=http fprocess="$BIN/examples/echo" \
            healthcheck_interval=0 "$BIN/fwatchdog" 2>>"$WORK/$case.log" & ;;
    *) echo "unknown case $case" >&2; exit 1 ;;
    esac
    SRV_PID=$!
    # Ready when a call succeeds (the load client with one call for a second).
    for _ in $(seq 1 150); do
        if "$BIN/examples/grpc_load" --addr "127.0.0.1:$PORT" -c 1 -d 0 --connections 1 >/dev/null 2>&1; then
            sleep 0.2
            "$BIN/examples/grpc_load" --addr "127.0.0.1:$PORT" -c 1 -d 1 --connections 1 | grep -q ' errors: 0 ' && return
        fi
        sleep 0.1
    done
    echo "$case did not come up (see $WORK/$case.log)" >&2
    exit 1
}

# Runs one case; prints "calls/s p50 p99".
measure() {
    local case=$1 out
    start_server "$case"
    out=$("$BIN/examples/grpc_load" --addr "127.0.0.1:$PORT" -c "$CONCURRENCY" -d "$DURATION" --body "$BODY")
    stop_server
    echo "$out" >&2
    awk '{for (i = 1; i < NF; i++) if ($i == "calls/s:") r = $(i+1); else if ($i == "p50:") p = $(i+1); else if ($i == "p99:") q = $(i+1); print r, p, q}' <<<"$out"
}

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# The fork case's ceiling: spawning `cat` per request, as fast as two threads can (bench/spawn_floor.rs), measured
# right before and right after each grpc-classic run, since it drifts with the machine as the echo baseline does.
floor() { "$BIN/examples/spawn_floor" "$DURATION" 2>/dev/null; }

declare -A RATIOS RESULTS RPS
FLOORS="" FLOOR_RATIOS=""
for ((round = 1; round <= ROUNDS; round++)); do
    read -r before _ _ < <(measure grpc-echo)
    for case in "${CASES[@]}"; do
        [[ $case == grpc-classic ]] && floor_before=$(floor)
        read -r rps p50 p99 < <(measure "$case")
        if [[ $case == grpc-classic ]]; then
            floor_after=$(floor)
            FLOORS+="$floor_before $floor_after "
            FLOOR_RATIOS+="$(awk -v r="$rps" -v a="$floor_before" -v b="$floor_after" \
                'BEGIN {printf "%.4f", r / ((a + b) / 2)}') "
        fi
        read -r after _ _ < <(measure grpc-echo)
        RATIOS[$case]+="$(awk -v r="$rps" -v a="$before" -v b="$after" 'BEGIN {printf "%.4f", r / ((a + b) / 2)}') "
        RESULTS[$case]+="$rps/$p50/$p99 "
        RPS[$case]+="$rps "
        before=$after
    done
done
printf '%-14s %12s %s\n' case 'median ratio' 'runs (calls/s/p50/p99)'
for case in "${CASES[@]}"; do
    printf '%-14s %12s %s\n' "$case" "$(tr ' ' '\n' <<<"${RATIOS[$case]}" | grep . | median)" "${RESULTS[$case]}"
done

if [[ -n $FLOOR_RATIOS ]]; then
    echo "spawn floor: $(tr ' ' '\n' <<<"$FLOORS" | grep . | median) spawns/s (median of its runs);" \
        "grpc-classic / spawn floor = $(tr ' ' '\n' <<<"$FLOOR_RATIOS" | grep . | median) (median over rounds: $FLOOR_RATIOS)"
fi
verdict() { awk -v f="$1" -v l="$2" 'BEGIN { print (f >= l) ? "met" : "missed" }'; }
if [[ -n ${RATIOS[grpc-http]:-} ]]; then
    r=$(tr ' ' '\n' <<<"${RATIOS[grpc-http]}" | grep . | median)
    echo "target (issue 5): grpc-http / tonic echo $r >= 0.65 $(verdict "$r" 0.65)"
fi
if [[ -n $FLOOR_RATIOS ]]; then
    r=$(tr ' ' '\n' <<<"$FLOOR_RATIOS" | grep . | median)
    echo "target (issue 5): grpc-classic / spawn floor $r >= 0.90 $(verdict "$r" 0.90)"
fi
echo "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
