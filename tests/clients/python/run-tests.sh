#!/usr/bin/env bash
# Runs the CloudEvents client tests: the PyPI `cloudevents` SDK (and the watchdog's Python SDK for http-mode
# handlers) against the real binary. Creates tests/clients/python/.venv on first use and reinstalls the pinned
# requirements.txt only when it changes. The binary is target/debug/fwatchdog (override with FWATCHDOG=path);
# build it first with `cargo build --locked --bin fwatchdog` (scripts/test.sh does).
# Extra arguments go to pytest, e.g. `bash tests/clients/python/run-tests.sh -k batch -x`.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
stamp="$venv/.requirements.txt"
if ! cmp -s "$here/requirements.txt" "$stamp"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$stamp"
fi

cd "$here"
exec "$venv/bin/python" -m pytest -p no:cacheprovider "$@"
