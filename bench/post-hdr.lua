-- wrk script for bench/run.sh's *-hdr cases: POST the contents of $BODY_FILE as a plain request carrying the
-- same five headers as post-ce.lua's events, renamed `x-`: the headers' own cost, without an event.
local path = assert(os.getenv("BODY_FILE"), "BODY_FILE is not set")
local f = assert(io.open(path, "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["x-specversion"] = "1.0"
wrk.headers["x-id"] = "bench-0001"
wrk.headers["x-source"] = "/bench/wrk"
wrk.headers["x-type"] = "dev.ngwatchdog.bench"
wrk.headers["x-time"] = "2026-11-26T12:00:00Z"
