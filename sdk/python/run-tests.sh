#!/usr/bin/env bash
# Runs the Python SDK's tests in sdk/python/.venv (created on first use) with the pinned requirements-test.txt.
# Extra arguments go to pytest, e.g. `bash sdk/python/run-tests.sh -k flow -x`.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
stamp="$venv/.requirements-test.txt"
if ! cmp -s "$here/requirements-test.txt" "$stamp"; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements-test.txt"
  cp "$here/requirements-test.txt" "$stamp"
fi

cd "$here"
# The package is used from the source tree (PYTHONPATH=sdk/python), exactly as the README documents.
exec env PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$venv/bin/python" -m pytest -p no:cacheprovider tests "$@"
