'use strict';
// gRPC for handlers: status codes, GrpcStatus (a status a handler returns or throws), and gRPC's own 5-byte
// message framing, which a passthrough call's body uses when it streams (proto/watchdog/v1/envelope.proto,
// GrpcCall).
const { PermanentError } = require('./errors');

/** gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). */
const StatusCode = Object.freeze({
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
});

const CODE_NAMES = Object.freeze(Object.fromEntries(Object.entries(StatusCode).map(([name, code]) => [code, name])));

/** The watchdog's own methods (function.proto): their bodies are plain bytes, never gRPC-framed. */
const INVOKE = '/watchdog.v1.Function/Invoke';
const INVOKE_STREAM = '/watchdog.v1.Function/InvokeStream';

/** Whether a gRPC method is passed through to the function as raw messages (anything but Function's own). */
function isPassthrough(method) {
  return method !== INVOKE && method !== INVOKE_STREAM;
}

// Same brand trick as errors.js: a GrpcStatus from another copy of the SDK is still recognised.
const BRAND = Symbol.for('watchdog-sdk.grpcStatus');

/**
 * A gRPC status chosen by the handler: `return` it or `throw` it. For a gRPC call it goes out as the trailers
 * `grpc-status` (the code) and `grpc-message` (the message), plus `trailers` (trailing metadata), and wins over
 * the HTTP status; after streamed messages it ends the stream with that status. For an HTTP or CloudEvent
 * request it becomes the matching HTTP status (gRPC's usual code → HTTP table) with the message as the body.
 *
 * `new GrpcStatus(StatusCode.NOT_FOUND, 'no such user', { 'x-reason': 'deleted' })`; the code may also be a
 * name (`'NOT_FOUND'`).
 */
class GrpcStatus extends Error {
  constructor(code, message = '', trailers = undefined) {
    super(message === undefined || message === null ? '' : String(message));
    const resolved = typeof code === 'string' && Object.prototype.hasOwnProperty.call(StatusCode, code) ? StatusCode[code] : code;
    if (!Number.isInteger(resolved) || resolved < 0 || resolved > 0x7fffffff) {
      throw new TypeError(`a gRPC status code must be a StatusCode (an integer 0-16 or its name), not ${JSON.stringify(code)}`);
    }
    this.name = 'GrpcStatus';
    /** The numeric gRPC status code. */
    this.code = resolved;
    /** Extra trailing metadata (same forms as Response headers). */
    this.trailers = trailers === undefined || trailers === null ? {} : trailers;
  }

  /** The code's name, e.g. "NOT_FOUND" (or the number, for a code gRPC does not define). */
  get codeName() {
    return CODE_NAMES[this.code] || String(this.code);
  }
}
Object.defineProperty(GrpcStatus.prototype, BRAND, { value: true });

function isGrpcStatus(v) {
  return v !== null && typeof v === 'object' && v[BRAND] === true && Number.isInteger(v.code);
}

/** HTTP status for a gRPC code, for a GrpcStatus answering a plain HTTP or CloudEvent request (grpc-gateway's table). */
const HTTP_FOR_CODE = {
  0: 200,
  1: 499,
  2: 500,
  3: 400,
  4: 504,
  5: 404,
  6: 409,
  7: 403,
  8: 429,
  9: 400,
  10: 409,
  11: 400,
  12: 501,
  13: 500,
  14: 503,
  15: 500,
  16: 401,
};

function httpStatusForCode(code) {
  return HTTP_FOR_CODE[code] || 500;
}

const PREFIX = 5;

/** One message in gRPC's length-prefixed framing: flag byte 0 (not compressed), 4-byte big-endian length, bytes. */
function grpcFrame(message) {
  const b = Buffer.isBuffer(message) ? message : Buffer.from(message instanceof Uint8Array ? message : String(message));
  const out = Buffer.allocUnsafe(PREFIX + b.length);
  out[0] = 0;
  out.writeUInt32BE(b.length, 1);
  b.copy(out, PREFIX);
  return out;
}

/**
 * Splits gRPC length-prefixed messages as their bytes arrive: push(chunk) returns the messages completed by it,
 * finish() checks nothing is left over. A compressed message (flag 1) is refused: the SDK negotiates no
 * grpc-encoding, so it has no codec to undo it.
 */
class GrpcMessageDecoder {
  constructor() {
    this.chunks = [];
    this.buffered = 0;
    this.offset = 0; // bytes of the stream before the first buffered chunk, for error messages
    this.count = 0;
  }

  push(chunk) {
    if (chunk.length) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const out = [];
    for (;;) {
      if (this.buffered < PREFIX) break;
      const head = this._peek(PREFIX);
      const flag = head[0];
      const length = head.readUInt32BE(1);
      if (flag === 1) {
        throw new GrpcStatus(StatusCode.UNIMPLEMENTED, `gRPC message ${this.count + 1} is compressed; this function accepts no grpc-encoding`);
      }
      if (flag !== 0) {
        throw new PermanentError(`malformed gRPC framing: message ${this.count + 1} at byte ${this.offset} has flag ${flag} (0 or 1 expected)`);
      }
      if (this.buffered < PREFIX + length) break;
      this._take(PREFIX);
      out.push(this._take(length));
      this.count++;
    }
    return out;
  }

  /** Throws PermanentError when the body ended inside a message. */
  finish() {
    if (this.buffered === 0) return;
    if (this.buffered < PREFIX) {
      throw new PermanentError(
        `truncated gRPC message: the body ends ${this.buffered} byte(s) into the 5-byte prefix of message ${this.count + 1} (at byte ${this.offset})`,
      );
    }
    const length = this._peek(PREFIX).readUInt32BE(1);
    throw new PermanentError(
      `truncated gRPC message: message ${this.count + 1} (at byte ${this.offset}) declares ${length} bytes but only ${this.buffered - PREFIX} arrived`,
    );
  }

  _peek(n) {
    const first = this.chunks[0];
    return first.length >= n ? first.subarray(0, n) : Buffer.concat(this.chunks).subarray(0, n);
  }

  _take(n) {
    this.buffered -= n;
    this.offset += n;
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0];
    if (first.length >= n) {
      this.chunks[0] = first.subarray(n);
      if (this.chunks[0].length === 0) this.chunks.shift();
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, k);
      filled += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}

/**
 * A whole body in gRPC framing → its messages (Buffers). Throws PermanentError on a truncated or malformed frame,
 * GrpcStatus UNIMPLEMENTED on a compressed one.
 */
function splitGrpcMessages(body) {
  const dec = new GrpcMessageDecoder();
  const messages = dec.push(Buffer.isBuffer(body) ? body : Buffer.from(body));
  dec.finish();
  return messages;
}

module.exports = {
  StatusCode,
  GrpcStatus,
  isGrpcStatus,
  httpStatusForCode,
  grpcFrame,
  splitGrpcMessages,
  GrpcMessageDecoder,
  isPassthrough,
  INVOKE,
  INVOKE_STREAM,
};
