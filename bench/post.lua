-- wrk script for bench/run.sh: POST the contents of $BODY_FILE to every request.
local path = assert(os.getenv("BODY_FILE"), "BODY_FILE is not set")
local f = assert(io.open(path, "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
