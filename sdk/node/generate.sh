#!/usr/bin/env bash
# Regenerates lib/watchdog.json, the protobuf descriptor the SDK loads at run time, from the repository's
# proto/ files (proto/README.md: generate, never edit by hand). Needs the devDependencies: `npm ci` first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto="$(cd "$here/../../proto" && pwd)"
cd "$here"
[ -x node_modules/.bin/pbjs ] || npm ci --no-audit --no-fund
# frame.proto imports envelope.proto, which imports the CloudEvents format and google/protobuf/{timestamp,any};
# pbjs resolves the google well-known types from protobufjs's bundled copies.
node_modules/.bin/pbjs -t json -p "$proto" -o lib/watchdog.json \
  "$proto/watchdog/v1/frame.proto" "$proto/watchdog/v1/envelope.proto" "$proto/io/cloudevents/v1/cloudevents.proto"
echo "wrote $here/lib/watchdog.json"
