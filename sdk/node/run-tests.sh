#!/usr/bin/env bash
# Installs the locked dependencies and runs the SDK's tests (node --test) against the fake watchdog in test/.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
node --test --test-concurrency=4 test/*.test.js
