'use strict';
// The watchdog.v1 messages, from lib/watchdog.json, which generate.sh produces from the repository's proto/ files
// with protobufjs-cli (`pbjs -t json`). Field names are protobufjs's camelCase forms of the .proto names.
const protobuf = require('protobufjs');

const root = protobuf.Root.fromJSON(require('./watchdog.json'));

module.exports = {
  protobuf,
  Long: protobuf.util.Long,
  Frame: root.lookupType('watchdog.v1.Frame'),
  ErrorKind: root.lookupEnum('watchdog.v1.ErrorKind').values,
};
