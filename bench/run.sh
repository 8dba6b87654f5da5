#!/usr/bin/env bash
# Benchmark fwatchdog (classic and streaming, fprocess=cat) against a plain
# hyper echo server and against the raw cost of spawning `cat`.
# See bench/README.md. Knobs: DURATION, ROUNDS, CONNECTIONS, THREADS, KEEP_TMP.
set -euo pipefail
export LC_ALL=C

DURATION=${DURATION:-10}       # seconds per wrk run
ROUNDS=${ROUNDS:-3}            # sandwiched rounds per case and body
CONNECTIONS=${CONNECTIONS:-32} # wrk -c
THREADS=${THREADS:-2}          # wrk -t
KEEP_TMP=${KEEP_TMP:-0}        # 1: keep the temp dir (logs, wrk output)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
BIN=$ROOT/target/release
# shellcheck disable=SC2206 # CASES="classic http-rust" picks cases; classic-ce and http-rust-ce send CloudEvents,
# http-rust-hdr plain requests with the events' headers renamed
CASES=(${CASES:-classic fork-server classic-ce streaming http-rust framed-echo http-rust-ce http-rust-hdr framed-echo-ce http-python http-proxy})
# shellcheck disable=SC2206 # BODIES="13B" measures only the small body
BODIES=(${BODIES:-13B 1MiB})
CLK_TCK=$(getconf CLK_TCK)

log() { printf '%s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- clean-up
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ngwd-bench.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP_TMP == 1 ]]; then
        log "temp dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- setup
if ! command -v wrk >/dev/null; then
    log "installing wrk"
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
fi
command -v curl >/dev/null || die "curl is required"

log "building (cargo build --release)"
(cd "$ROOT" && cargo build --release --bin fwatchdog --example echo_server --example spawn_floor --example fork_server \
    --example framed_echo --example startup_probe &&
    cargo build --release -p watchdog-sdk --example echo)
PYTHON_VENV=$ROOT/sdk/python/.venv
if [[ " ${CASES[*]} " == *" http-python "* && ! -x $PYTHON_VENV/bin/python ]]; then
    log "creating $PYTHON_VENV for the Python SDK"
    python3 -m venv "$PYTHON_VENV" && "$PYTHON_VENV/bin/python" -m pip install -q -r "$ROOT/sdk/python/requirements-test.txt"
fi

printf 'Hello, world!' >"$WORK/body-13B"
head -c $((1024 * 1024)) /dev/urandom >"$WORK/body-1MiB"

# ---------------------------------------------------------------- helpers
median() { # numbers as arguments
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
        END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2];
              else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
max() { printf '%s\n' "$@" | sort -g | tail -n 1; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }

port_busy() { { : >&3; } 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1"; }
# Servers' ports come from below the kernel's ephemeral range: a port a client socket (wrk's, or one in
# TIME_WAIT) holds looks free to port_busy but cannot be bound, and a server would exit during start-up.
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range || EPHEMERAL_LOW=32768
((EPHEMERAL_LOW > 11000)) || EPHEMERAL_LOW=32768
free_port() { # free_port [PORT_TO_AVOID]
    local p
    while :; do
        p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
        [[ $p == "${1:-}" ]] && continue
        port_busy "$p" || { echo "$p"; return; }
    done
}

# 0 when GET $2 on port $1 answers 200; no fork, so the poll loop is tight.
probe() {
    local line=
    { printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3 &&
        IFS= read -r -t 2 line <&3; } 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    [[ $line == "HTTP/1."?" 200"* ]]
}

# 0 while process $1 runs (an exited child stays a zombie, state Z, until waited for); no fork
proc_alive() {
    local s
    IFS= read -r s 2>/dev/null <"/proc/$1/stat" || return 1
    s=${s##*) }
    [[ ${s:0:1} != [ZX] ]]
}
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
cpu_ticks() { # utime + stime of the process itself (children not included)
    local s
    s=$(<"/proc/$1/stat")
    s=${s##*) }
    local -a f
    read -r -a f <<<"$s"
    echo $((f[11] + f[12]))
}

# start_server CASE: sets SRV_PID, SRV_PORT, SRV_STARTUP_MS, SRV_IDLE_KB
start_server() {
    local case=$1 path=/_/health t0 t1 deadline
    SRV_PORT=$(free_port)
    case $case in
    baseline)
        path=/
        t0=${EPOCHREALTIME/./}
        "$BIN/examples/echo_server" "$SRV_PORT" 2>>"$WORK/baseline.log" &
        ;;
    fork-server)
        # A reference, not the watchdog: hyper and tokio::process spawning `cat`, with none of classic mode's work.
        path=/
        t0=${EPOCHREALTIME/./}
        env -i PATH="$PATH" "$BIN/examples/fork_server" "$SRV_PORT" 2>>"$WORK/$case.log" &
        ;;
    framed-echo)
        # A reference, not the watchdog: hyper and a worker echoing bare frames, with none of http mode's work
        # (an event's `ce-` headers are copied to its answer unread).
        path=/
        t0=${EPOCHREALTIME/./}
        env -i PATH="$PATH" "$BIN/examples/framed_echo" "$SRV_PORT" 2>>"$WORK/$case.log" &
        ;;
    classic | streaming)
        local tmp=$WORK/tmp-$case-$SRV_PORT
        mkdir -p "$tmp"
        # A clean environment: only what the case sets (mode unset means classic; write_timeout unset).
        local -a envs=(PATH="$PATH" fprocess=cat port="$SRV_PORT" metrics_port="$(free_port "$SRV_PORT")"
            TMPDIR="$tmp" healthcheck_interval=0)
        [[ $case == streaming ]] && envs+=(mode=streaming)
        t0=${EPOCHREALTIME/./}
        env -i "${envs[@]}" "$BIN/fwatchdog" 2>>"$WORK/$case.log" &
        ;;
    http-proxy)
        # of-watchdog's http mode: the baseline echo server is the upstream the watchdog starts and proxies to.
        local tmp=$WORK/tmp-$case-$SRV_PORT upstream_port
        mkdir -p "$tmp"
        upstream_port=$(free_port "$SRV_PORT")
        local -a envs=(PATH="$PATH" mode=http fprocess="$BIN/examples/echo_server $upstream_port"
            upstream_url="http://127.0.0.1:$upstream_port" port="$SRV_PORT" metrics_port=0 TMPDIR="$tmp"
            healthcheck_interval=0)
        t0=${EPOCHREALTIME/./}
        env -i "${envs[@]}" "$BIN/fwatchdog" 2>>"$WORK/$case.log" &
        ;;
    http-rust | http-python)
        local tmp=$WORK/tmp-$case-$SRV_PORT worker
        mkdir -p "$tmp"
        if [[ $case == http-rust* ]]; then
            worker=$BIN/examples/echo
        else
            worker="$PYTHON_VENV/bin/python $ROOT/examples/http-python/echo.py"
        fi
        local -a envs=(PATH="$PATH" mode=http fprocess="$worker" PYTHONPATH="$ROOT/sdk/python" port="$SRV_PORT"
            metrics_port="$(free_port "$SRV_PORT")" TMPDIR="$tmp" healthcheck_interval=0)
        t0=${EPOCHREALTIME/./}
        env -i "${envs[@]}" "$BIN/fwatchdog" 2>>"$WORK/$case.log" &
        ;;
    *) die "unknown case $case" ;;
    esac
    SRV_PID=$!
    PIDS+=("$SRV_PID")
    deadline=$((t0 + 15000000))
    until probe "$SRV_PORT" "$path"; do
        proc_alive "$SRV_PID" || die "$case exited during start-up; its log ends: $(tail -n 3 "$WORK/$case.log")"
        ((${EPOCHREALTIME/./} < deadline)) || die "$case not ready after 15 s"
    done
    t1=${EPOCHREALTIME/./}
    SRV_STARTUP_MS=$(calc "($t1 - $t0) / 1000" 1)
    sleep 0.2
    SRV_IDLE_KB=$(status_kb "$SRV_PID" VmRSS)
}

stop_server() {
    local i
    kill -TERM "$SRV_PID" 2>/dev/null || true
    for i in $(seq 100); do
        proc_alive "$SRV_PID" || break
        sleep 0.05
    done
    kill -KILL "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    local -a keep=()
    for i in "${PIDS[@]}"; do
        [[ $i == "$SRV_PID" ]] || keep+=("$i")
    done
    PIDS=("${keep[@]}")
}

# The server must echo both bodies byte for byte before it is measured.
check_echo() {
    local body
    for body in "${BODIES[@]}"; do
        curl -sf -o "$WORK/echo-out" -H 'Content-Type: application/octet-stream' \
            --data-binary "@$WORK/body-$body" "http://127.0.0.1:$SRV_PORT/" ||
            die "$1: POST $body failed"
        cmp -s "$WORK/echo-out" "$WORK/body-$body" || die "$1: POST $body not echoed"
    done
}

# Results: R_<metric>[case|body] is a space-separated list, one value per run.
declare -A R_RPS R_P50 R_P99 R_HWM R_CPU R_RATIO R_STARTUP R_IDLE
add() { # add ARRAY KEY VALUE
    local -n a=$1
    a[$2]="${a[$2]:-} $3"
}

RUN_N=0 TOTAL_NON2XX=0 TOTAL_SOCKERR=0 LOG_ODD=0
# run CASE BODY: one server of its own, one wrk run; sets LAST_RPS
run() {
    start_server "$1"
    check_echo "$1"
    add R_STARTUP "$1" "$SRV_STARTUP_MS"
    add R_IDLE "$1" "$SRV_IDLE_KB"
    measure "$1" "$2"
    stop_server
}

# measure CASE BODY [KEY]: one wrk run against the server running (a `-ce` case sends binary-mode CloudEvents, a
# `-hdr` case plain requests with the same headers renamed `x-`);
# records its figures under KEY (else CASE) and sets LAST_RPS
measure() {
    local case=$1 body=$2 key=${3:-$1} out c0 c1
    RUN_N=$((RUN_N + 1))
    out=$WORK/wrk-$RUN_N-$case-$body.txt
    local prefix=
    [[ $case == *-ce ]] && prefix=ce-
    [[ $case == *-hdr ]] && prefix=x-
    c0=$(cpu_ticks "$SRV_PID")
    HEADER_PREFIX=$prefix BODY_FILE=$WORK/body-$body wrk -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" \
        --latency -s "$BENCH/post.lua" "http://127.0.0.1:$SRV_PORT/" >"$out" 2>&1 ||
        die "wrk failed: $(cat "$out")"
    c1=$(cpu_ticks "$SRV_PID")
    local hwm
    hwm=$(status_kb "$SRV_PID" VmHWM)

    local rps p50 p99 reqs non2xx sockerr
    read -r rps p50 p99 reqs non2xx sockerr < <(awk '
        function ms(v) {
            if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
            if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
            if (v ~ /m$/) return substr(v, 1, length(v) - 1) * 60000
            if (v ~ /s$/) return substr(v, 1, length(v) - 1) * 1000
            return v + 0
        }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        / requests in / { reqs = $1 }
        /Non-2xx or 3xx responses:/ { bad = $NF }
        /Socket errors:/ { gsub(",", ""); err = $4 + $6 + $8 + $10 }
        /^Requests\/sec:/ { rps = $2 }
        END { print rps + 0, p50 + 0, p99 + 0, reqs + 0, bad + 0, err + 0 }' "$out")

    local cpu_us=nan
    ((reqs > 0)) && cpu_us=$(calc "($c1 - $c0) * 1000000 / $CLK_TCK / $reqs" 1)
    printf '  %-9s %-5s %10.1f rps  p50 %7.2f ms  p99 %8.2f ms  peak %6.1f MiB  cpu %7s us/req  non-2xx %s  socket errors %s\n' \
        "$case" "$body" "$rps" "$p50" "$p99" "$(calc "$hwm / 1024" 1)" "$cpu_us" "$non2xx" "$sockerr" >&2
    TOTAL_NON2XX=$((TOTAL_NON2XX + non2xx))
    TOTAL_SOCKERR=$((TOTAL_SOCKERR + sockerr))
    ((non2xx == 0)) || warn "$case $body: $non2xx non-2xx responses (see $out)"
    ((sockerr == 0)) || warn "$case $body: $sockerr socket errors (see $out)"
    ((reqs > 0)) || warn "$case $body: no request completed"

    local k="$key|$body"
    add R_RPS "$k" "$rps"
    add R_P50 "$k" "$p50"
    add R_P99 "$k" "$p99"
    add R_HWM "$k" "$hwm"
    add R_CPU "$k" "$cpu_us"
    LAST_RPS=$rps
}

# ---------------------------------------------------------------- measure
log "runs of ${DURATION}s, $ROUNDS rounds, wrk -t $THREADS -c $CONNECTIONS; temp dir $WORK"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# Warm-up, not measured: the first run after a build or an idle spell is slower.
start_server baseline
BODY_FILE=$WORK/body-13B wrk -t "$THREADS" -c "$CONNECTIONS" -d 2s -s "$BENCH/post.lua" \
    "http://127.0.0.1:$SRV_PORT/" >/dev/null 2>&1 || true
stop_server
# floor: one spawn_floor run; sets LAST_FLOOR and records it with its own CPU per spawn.
floors=() floor_cpus=()
floor() {
    LAST_FLOOR=$("$BIN/examples/spawn_floor" "$DURATION" 2>"$WORK/spawn_floor.err")
    local c
    c=$(awk '{ for (i = 1; i < NF; i++) if ($i == "cpu") print $(i + 1) }' "$WORK/spawn_floor.err")
    log "  spawn_floor $LAST_FLOOR spawns/s, parent cpu ${c:-?} us/spawn"
    floors+=("$LAST_FLOOR")
    floor_cpus+=("${c:-nan}")
}

declare -A R_FLOOR_RATIO
for body in "${BODIES[@]}"; do
    log "body $body"
    run baseline "$body"
    before=$LAST_RPS
    for ((r = 1; r <= ROUNDS; r++)); do
        for case in "${CASES[@]}"; do
            [[ $case == *-ce || $case == *-hdr ]] && continue # measured below, beside plain requests on one server
            # A fork mode with the small body is also held against the spawn floor, measured right before and
            # right after it: the floor drifts with the machine as much as the echo baseline does.
            fork=0
            [[ $body == 13B && $case =~ ^(classic|streaming|fork-server)$ ]] && fork=1
            if ((fork)); then
                floor
                floor_before=$LAST_FLOOR
            fi
            run "$case" "$body"
            mid=$LAST_RPS
            if ((fork)); then
                floor
                add R_FLOOR_RATIO "$case" "$(calc "$mid / (($floor_before + $LAST_FLOOR) / 2)" 4)"
            fi
            run baseline "$body"
            add R_RATIO "$case|$body" "$(calc "$mid / (($before + $LAST_RPS) / 2)" 4)"
            before=$LAST_RPS
        done
    done
done

# Events against plain requests: one server per case and body, taking plain and event runs in turns (plain, then
# event and plain ROUNDS times), each event run held against the mean of the plain runs either side of it. Two
# servers or two minutes apart, this VM's drift (a tenth within minutes) is as large as the difference measured.
declare -A R_EVENT_RATIO
for body in "${BODIES[@]}"; do
    for case in "${CASES[@]}"; do
        [[ $case == *-ce || $case == *-hdr ]] || continue
        plain=${case%-*}
        log "events: $case against $plain on one server, body $body"
        start_server "$plain"
        check_echo "$plain"
        # The plain runs here are recorded apart (KEY `$case-plain`), so the plain case's own figures stay those
        # of its runs between baselines.
        measure "$plain" "$body" "$case-plain"
        before=$LAST_RPS
        for ((r = 1; r <= ROUNDS; r++)); do
            measure "$case" "$body"
            mid=$LAST_RPS
            measure "$plain" "$body" "$case-plain"
            add R_EVENT_RATIO "$case|$body" "$(calc "$mid / (($before + $LAST_RPS) / 2)" 4)"
            before=$LAST_RPS
        done
        stop_server
    done
done

FLOOR=$(median "${floors[@]}")
FLOOR_CPU=$(median "${floor_cpus[@]}")

# ---------------------------------------------------------------- fwatchdog's log
# Start-up and shutdown lines, and one "METHOD PATH - 200 - ..." line per request, are expected; so is a streaming
# function's broken pipe when wrk, its time up, closes connections in the middle of 1 MiB answers.
EXPECTED=' - 200 - |Version:|Watchdog mode:|Timeouts:|[Ll]istening on port|lock-file|SIGTERM|draining|Exiting|worker [0-9]+: (.* connected|ready|worker stopped)|upstream .* is accepting|exited: after [0-9.]+s, error: signal: broken pipe'
for case in "${CASES[@]}"; do
    f=$WORK/$case.log
    [[ -f $f ]] || continue
    odd=$(grep -cvE "$EXPECTED" "$f" || true)
    LOG_ODD=$((LOG_ODD + odd))
    if ((odd > 0)); then
        warn "$case: $odd unexpected line(s) in fwatchdog's log $f, first ones:"
        grep -vE "$EXPECTED" "$f" | head -n 10 >&2
    fi
done

# ---------------------------------------------------------------- report
med() { local -n a=$1; median ${a[$2]:-}; }
echo
echo "machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo);" \
    "load average before $LOAD_BEFORE, after $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t $THREADS -c $CONNECTIONS, ${DURATION}s per run, $ROUNDS sandwiched rounds, fprocess=cat"
echo
printf '%-10s %-5s %10s %8s %9s %9s %10s %10s\n' case body rps ratio 'p50 ms' 'p99 ms' 'peak MiB' 'cpu us/req'
for body in "${BODIES[@]}"; do
    for case in baseline "${CASES[@]}"; do
        k="$case|$body"
        ratio=1.000
        if [[ $case == *-ce || $case == *-hdr ]]; then
            ratio=- # held against plain requests, below
        elif [[ $case != baseline ]]; then
            ratio=$(calc "$(med R_RATIO "$k")" 3)
        fi
        printf '%-10s %-5s %10.1f %8s %9.2f %9.2f %10.1f %10s\n' "$case" "$body" \
            "$(med R_RPS "$k")" "$ratio" "$(med R_P50 "$k")" "$(med R_P99 "$k")" \
            "$(calc "$(max ${R_HWM[$k]}) / 1024" 1)" "$(med R_CPU "$k")"
    done
done
echo
printf '%-10s %12s %12s\n' case 'idle RSS MiB' 'startup ms'
for case in baseline "${CASES[@]}"; do
    [[ $case == *-ce || $case == *-hdr ]] && continue # the plain case's server
    printf '%-10s %12.1f %12.1f\n' "$case" "$(calc "$(med R_IDLE "$case") / 1024" 2)" "$(med R_STARTUP "$case")"
done
echo
if ((${#floors[@]})); then
    echo "spawn floor: $FLOOR spawns/s (median of ${#floors[@]} runs), its own cpu $FLOOR_CPU us/spawn"
    for case in "${CASES[@]}"; do
        [[ -n ${R_FLOOR_RATIO[$case]:-} ]] || continue
        echo "$case 13B / spawn floor = $(calc "$(med R_FLOOR_RATIO "$case")" 3)" \
            "(median over rounds; per round: $(echo ${R_FLOOR_RATIO[$case]}))"
    done
fi
for case in "${CASES[@]}"; do
    [[ $case == *-ce || $case == *-hdr ]] || continue
    for body in "${BODIES[@]}"; do
        [[ -n ${R_EVENT_RATIO["$case|$body"]:-} ]] || continue
        echo "$([[ $case == *-ce ]] && echo events || echo 'with headers') / plain requests, $case $body = $(calc "$(med R_EVENT_RATIO "$case|$body")" 3)" \
            "(median over rounds; per round: $(echo ${R_EVENT_RATIO["$case|$body"]}))"
    done
done
echo "start-up, probed from Python (no shell fork per try):"
python3 "$BENCH/startup.py" "$BIN" 15 | sed 's/^/  /'
echo "start-up, probed from bench/startup_probe.rs (no interpreter in the measured path):"
PROBED=$(env -i PATH="$PATH" fprocess=cat metrics_port=0 healthcheck_interval=0 \
    "$BIN/examples/startup_probe" 15 /_/health -- "$BIN/fwatchdog")
echo "$PROBED" | sed 's/^/  fwatchdog  /'
env -i PATH="$PATH" "$BIN/examples/startup_probe" 15 / -- "$BIN/examples/echo_server" '{port}' |
    sed 's/^/  baseline   /'

# ---------------------------------------------------------------- targets
# The issues' targets, each with the figure of the report above that it applies to; `have` skips a target whose
# case did not run.
have() { [[ -n ${R_RPS["$1"]:-} ]]; }
target() { # name, figure, >=, < or <=, limit
    local verdict=missed
    awk -v f="$2" -v l="$4" -v op="$3" \
        'BEGIN { exit !((op == ">=") ? f >= l : (op == "<=") ? f <= l : f < l) }' && verdict=met
    printf '  %-44s %9s  target %s %-6s %s\n' "$1" "$2" "$3" "$4" "$verdict"
}
echo "targets (issues 2-4; of-watchdog's ratios are the issue's upper figures, 9 % at 13 B and 27 % at 1 MiB):"
if [[ -n ${R_FLOOR_RATIO[classic]:-} ]]; then
    target "classic 13B / spawn floor" "$(calc "$(med R_FLOOR_RATIO classic)" 3)" ">=" 0.90
    target "classic: watchdog CPU per request (us)" "$(med R_CPU "classic|13B")" "<" 100
    target "classic: idle RSS (MiB)" "$(calc "$(med R_IDLE classic) / 1024" 2)" "<" 4
fi
if [[ -n ${R_FLOOR_RATIO[fork-server]:-} ]]; then
    printf '  %-44s %9s  (a reference for the two above, no target)\n' "fork-server 13B / spawn floor" \
        "$(calc "$(med R_FLOOR_RATIO fork-server)" 3)"
    printf '  %-44s %9s\n' "fork-server: its CPU per request (us)" "$(med R_CPU "fork-server|13B")"
fi
have "classic|1MiB" && target "classic: peak RSS, 32 x 1 MiB (MiB)" "$(calc "$(max ${R_HWM["classic|1MiB"]}) / 1024" 1)" "<" 48
have "streaming|1MiB" && target "streaming: peak RSS, 32 x 1 MiB (MiB)" "$(calc "$(max ${R_HWM["streaming|1MiB"]}) / 1024" 1)" "<" 24
startup=$(awk '{ for (i = 1; i < NF; i++) if ($i == "after") print $(i + 1) }' <<<"$PROBED" | head -n 1)
[[ -n $startup ]] && target "first 200 on /_/health (ms, compiled probe)" "$startup" "<=" 3
for body in "${BODIES[@]}"; do
    base_p99=$(med R_P99 "baseline|$body")
    for spec in "http-rust 13B 0.70" "http-rust 1MiB 0.50" "http-python 13B 0.08" "http-proxy 13B 0.135" \
        "http-proxy 1MiB 0.405"; do
        read -r case b limit <<<"$spec"
        [[ $b == "$body" && -n ${R_RATIO["$case|$body"]:-} ]] || continue
        target "$case $body / baseline" "$(calc "$(med R_RATIO "$case|$body")" 3)" ">=" "$limit"
    done
    if [[ -n ${R_RATIO["framed-echo|$body"]:-} ]]; then
        printf '  %-44s %9s  (a reference for http-rust, no target)\n' "framed-echo $body / baseline" \
            "$(calc "$(med R_RATIO "framed-echo|$body")" 3)"
    fi
    for case in http-rust http-python http-proxy; do
        have "$case|$body" || continue
        target "$case $body: p99 / baseline's p99" "$(calc "$(med R_P99 "$case|$body") / $base_p99" 2)" "<=" 2
    done
done
for case in classic-ce http-rust-ce http-rust-hdr framed-echo-ce; do
    for body in "${BODIES[@]}"; do
        [[ -n ${R_EVENT_RATIO["$case|$body"]:-} ]] || continue
        ratio=$(calc "$(med R_EVENT_RATIO "$case|$body")" 3)
        if [[ $case == framed-echo-ce ]]; then
            printf '  %-44s %9s  (a reference for http-rust-ce: hyper alone, no target)\n' "$case / ${case%-ce} $body" "$ratio"
        elif [[ $case == http-rust-hdr ]]; then
            printf '  %-44s %9s  (a reference for http-rust-ce: the headers without an event, no target)\n' \
                "$case / ${case%-hdr} $body" "$ratio"
        else
            target "$case / ${case%-ce} $body" "$ratio" ">=" 0.90
        fi
    done
done
echo "non-2xx responses: $TOTAL_NON2XX, socket errors: $TOTAL_SOCKERR, unexpected fwatchdog log lines: $LOG_ODD"
echo "(rps, p50, p99, cpu: medians over runs; ratio: median over rounds of case rps / mean of the"
echo " baseline runs before and after; peak: max VmHWM; cpu: the server's own utime+stime per request;"
echo " startup: launch to first 200 on GET /_/health (baseline: GET /); idle RSS: VmRSS once ready;"
echo " events (or with headers) / plain requests: median over rounds of an event (or -hdr) run's rps / mean of"
echo " the plain runs either side of it, all on one server)"
