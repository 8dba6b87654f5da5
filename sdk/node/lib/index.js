'use strict';
// watchdog-sdk: write a handler, run it under ng-watchdog's http mode (fprocess="node app.js" mode=http).
const { Connection } = require('./connection');
const { Response, CloudEvent, WatchdogRequest, RequestHeaders } = require('./types');
const { PermanentError, RetryableError } = require('./errors');
const { GrpcStatus, StatusCode, grpcFrame, splitGrpcMessages, GrpcMessageDecoder } = require('./grpc');
const { version } = require('../package.json');

const SDK_NAME = 'watchdog-sdk-node';

/**
 * Serves `handler` over the watchdog's socket ($WATCHDOG_SOCKET) until the watchdog sends Shutdown (after the
 * open requests are answered) or closes the connection; then the process exits with code 0.
 *
 * handler(request) may be sync or async; it returns a Response, a CloudEvent, a Buffer/Uint8Array/string
 * (200), or nothing (202; for gRPC an OK call), or throws PermanentError (400) / RetryableError (503) /
 * anything else (500). It may also stream: return an (async) iterable of chunks, or a Response whose body is
 * one, or be an async generator function; each chunk goes out as it is produced. For gRPC it may return or
 * throw a GrpcStatus. A client-streaming gRPC call starts the handler at once; it reads request.messages().
 *
 * options.concurrency: requests handled at once, sent to the watchdog in Hello (0, the default, = no limit).
 * options.init: optional (async) function run after the handshake and before Ready; if it throws, the watchdog
 *   receives InitError with its message and the process exits 1.
 * options.exit: false to resolve the returned promise with the exit code instead of calling process.exit().
 * options.socketPath: overrides $WATCHDOG_SOCKET.
 */
function serve(handler, options = {}) {
  const { concurrency = 0, init, exit = true, socketPath = process.env.WATCHDOG_SOCKET } = options || {};
  const finish = (code) => {
    if (exit) process.exit(code);
    return code;
  };
  if (!Number.isInteger(concurrency) || concurrency < 0 || concurrency > 0xffffffff) {
    throw new TypeError(`concurrency must be a non-negative integer (0 = no limit), not ${concurrency}`);
  }
  if (init !== undefined && typeof init !== 'function') throw new TypeError('init must be a function');
  if (!socketPath) {
    process.stderr.write('watchdog-sdk: WATCHDOG_SOCKET is not set: run this function under fwatchdog with mode=http\n');
    return Promise.resolve(finish(1));
  }
  const protocol = process.env.WATCHDOG_PROTOCOL;
  if (protocol && protocol !== 'watchdog.v1') {
    process.stderr.write(`watchdog-sdk: WATCHDOG_PROTOCOL is ${protocol}; this SDK speaks watchdog.v1\n`);
  }
  const conn = new Connection(handler, { concurrency, init, sdkName: SDK_NAME, sdkVersion: version });
  return conn.run(socketPath).then(finish);
}

module.exports = {
  serve,
  Response,
  CloudEvent,
  PermanentError,
  RetryableError,
  GrpcStatus,
  StatusCode,
  grpcFrame,
  splitGrpcMessages,
  GrpcMessageDecoder,
  WatchdogRequest,
  RequestHeaders,
  SDK_NAME,
  version,
};
