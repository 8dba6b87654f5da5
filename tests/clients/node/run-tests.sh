#!/usr/bin/env bash
# Runs the CloudEvents client tests: the npm `cloudevents` SDK against the real binary, target/debug/fwatchdog
# (override with FWATCHDOG=path; build it first with `cargo build --locked --bin fwatchdog`, as scripts/test.sh
# does). Installs the locked packages with `npm ci` when node_modules is missing or older than package-lock.json.
# Extra arguments go to `node --test`, e.g. `bash tests/clients/node/run-tests.sh --test-name-pattern=batch`.
set -euo pipefail
cd "$(dirname "$0")"

stamp=node_modules/.ng-watchdog-package-lock.json
if ! cmp -s package-lock.json "$stamp"; then
  npm ci --no-audit --no-fund
  cp package-lock.json "$stamp"
fi
exec node --test --test-concurrency=2 "$@" test/*.test.js
