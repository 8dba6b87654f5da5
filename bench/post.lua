-- wrk script for bench/run.sh and bench/instructions.sh: POST the contents of $BODY_FILE to every request. With
-- $HEADER_PREFIX set, each request also carries five CloudEvents attributes as headers named with that prefix:
-- `ce-` makes it a binary-mode event, `x-` a plain request with the same headers (what they cost on their own).
local path = assert(os.getenv("BODY_FILE"), "BODY_FILE is not set")
local f = assert(io.open(path, "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
local prefix = os.getenv("HEADER_PREFIX")
if prefix and prefix ~= "" then
    wrk.headers[prefix .. "specversion"] = "1.0"
    wrk.headers[prefix .. "id"] = "bench-0001"
    wrk.headers[prefix .. "source"] = "/bench/wrk"
    wrk.headers[prefix .. "type"] = "dev.ngwatchdog.bench"
    wrk.headers[prefix .. "time"] = "2026-11-26T12:00:00Z"
end
