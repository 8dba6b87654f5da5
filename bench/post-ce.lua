-- wrk script for bench/run.sh's *-ce cases: POST the contents of $BODY_FILE as a binary-mode CloudEvent.
local path = assert(os.getenv("BODY_FILE"), "BODY_FILE is not set")
local f = assert(io.open(path, "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["ce-specversion"] = "1.0"
wrk.headers["ce-id"] = "bench-0001"
wrk.headers["ce-source"] = "/bench/wrk"
wrk.headers["ce-type"] = "dev.ngwatchdog.bench"
wrk.headers["ce-time"] = "2026-11-26T12:00:00Z"
