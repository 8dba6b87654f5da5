'use strict';
// What a handler receives (WatchdogRequest) and may return (Response, CloudEvent), and their conversion from
// and to the watchdog.v1 messages.
const { randomUUID } = require('node:crypto');
const { Long } = require('./proto');
const { BodyQueue } = require('./body');
const {
  isGrpcStatus,
  httpStatusForCode,
  grpcFrame,
  splitGrpcMessages,
  GrpcMessageDecoder,
  isPassthrough,
  INVOKE_STREAM,
} = require('./grpc');

const EMPTY = Buffer.alloc(0);

function toNumber(v) {
  if (v === null || v === undefined) return 0;
  if (typeof v === 'number') return v;
  if (typeof v === 'string') return Number(v);
  return Long.fromValue(v).toNumber();
}

/** Buffer | Uint8Array | ArrayBuffer | string | null/undefined → Buffer. Anything else is a TypeError. */
function toBuffer(body, what) {
  if (body === undefined || body === null) return EMPTY;
  if (Buffer.isBuffer(body)) return body;
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (body instanceof Uint8Array) return Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (body instanceof ArrayBuffer) return Buffer.from(body);
  throw new TypeError(`${what} must be a Buffer, Uint8Array or string, not ${describe(body)}`);
}

function describe(v) {
  if (v === null) return 'null';
  const article = (word) => `${/^[aeiou]/i.test(word) ? 'an' : 'a'} ${word}`;
  if (typeof v === 'object') {
    const name = v.constructor && v.constructor.name;
    return !name || name === 'Object' ? 'a plain object' : article(name);
  }
  return article(typeof v);
}

/**
 * The request's headers: own enumerable properties are the lower-case header names, each with its value as a
 * string (UTF-8; repeated names joined with ", ", "; " for cookie). `get(name)` and `has(name)` are
 * case-insensitive. The exact list, in arrival order with repeats and raw bytes, is `request.rawHeaders`.
 */
class RequestHeaders {
  /** The value of header `name` (any case), or undefined. */
  get(name) {
    const key = String(name).toLowerCase();
    return Object.prototype.hasOwnProperty.call(this, key) ? this[key] : undefined;
  }

  /** Whether header `name` (any case) is present. */
  has(name) {
    return Object.prototype.hasOwnProperty.call(this, String(name).toLowerCase());
  }
}

function buildHeaders(list) {
  const headers = new RequestHeaders();
  const raw = [];
  for (const h of list || []) {
    const name = String(h.name);
    const value = h.value ? Buffer.from(h.value) : EMPTY;
    raw.push([name, value]);
    const key = name.toLowerCase();
    const text = value.toString('utf8');
    if (Object.prototype.hasOwnProperty.call(headers, key)) {
      headers[key] += (key === 'cookie' ? '; ' : ', ') + text;
    } else {
      headers[key] = text;
    }
  }
  return { headers, raw };
}

/** A google.protobuf.Timestamp as RFC 3339 in UTC, with the fraction of a second only as long as needed. */
function rfc3339(ts) {
  const seconds = toNumber(ts.seconds);
  const nanos = ts.nanos | 0;
  let s = new Date(seconds * 1000).toISOString().slice(0, 19);
  if (nanos) s += '.' + String(nanos).padStart(9, '0').replace(/0+$/, '');
  return s + 'Z';
}

/** One CloudEventAttributeValue in the CloudEvents canonical string form. */
function attributeString(v) {
  if (!v) return '';
  switch (v.attr) {
    case 'ceString':
      return v.ceString;
    case 'ceUri':
      return v.ceUri;
    case 'ceUriRef':
      return v.ceUriRef;
    case 'ceBoolean':
      return v.ceBoolean ? 'true' : 'false';
    case 'ceInteger':
      return String(v.ceInteger | 0);
    case 'ceBytes':
      return Buffer.from(v.ceBytes).toString('base64');
    case 'ceTimestamp':
      return rfc3339(v.ceTimestamp);
    default:
      return '';
  }
}

const REQUIRED = ['specversion', 'id', 'source', 'type'];

function eventAttributes(ce) {
  const attributes = {
    specversion: ce.specVersion || '',
    id: ce.id || '',
    source: ce.source || '',
    type: ce.type || '',
  };
  for (const name of Object.keys(ce.attributes || {}).sort()) {
    if (REQUIRED.includes(name)) continue;
    attributes[name] = attributeString(ce.attributes[name]);
  }
  return attributes;
}

// Internal request state under symbols, so Object.keys/JSON.stringify of a request show only its fields.
const WHOLE = Symbol('watchdog-sdk.wholeBody');
const SOURCE = Symbol('watchdog-sdk.bodySource');
const READING = Symbol('watchdog-sdk.bodyReading');

/** Whether the SDK starts the handler at RequestHead, before the body has arrived (client-streaming gRPC). */
function startsEarly(envelope) {
  const g = envelope && envelope.grpc;
  return Boolean(g && (g.clientStreaming || g.method === INVOKE_STREAM));
}

function transportView(t) {
  if (!t) return null;
  const rawPath = t.path && t.path.length ? Buffer.from(t.path) : Buffer.from('/');
  return Object.freeze({
    method: t.method || '',
    path: rawPath.toString('utf8'),
    rawPath,
    query: t.query || '',
    host: t.host || '',
    version: t.version || '',
  });
}

/**
 * What a handler receives: one request, whichever ingress (HTTP, gRPC, CloudEvent) it came through.
 *
 * `body` is the whole body once it has arrived, which is when the handler is called, except for a
 * client-streaming gRPC call (`grpc.clientStreaming`, or `/watchdog.v1.Function/InvokeStream`): that handler
 * starts as soon as the call does, and reads the body as it arrives with `messages()`, `stream()` or `await
 * bytes()`.
 */
class WatchdogRequest {
  /**
   * @param {object} envelope the decoded watchdog.v1.Envelope
   * @param {Buffer|BodyQueue} body the whole body, or the queue it arrives through
   * @param {AbortSignal} signal
   * @param {number} streamId
   */
  constructor(envelope, body, signal, streamId) {
    const env = envelope || {};
    const { headers, raw } = buildHeaders(env.headers);
    const streaming = body instanceof BodyQueue;
    this[WHOLE] = streaming ? null : body;
    this[SOURCE] = streaming ? body : null;
    this[READING] = false;
    /** "http" | "grpc" | "cloudevent" */
    this.kind = 'http';
    this.method = '';
    /** Percent-decoded path without the query, as a string (UTF-8); rawPath has the bytes. */
    this.path = '';
    this.rawPath = EMPTY;
    /** Raw query string without "?". */
    this.query = '';
    this.host = '';
    this.headers = headers;
    /** gRPC metadata: the same object as `headers` (lower-case names; get/has ignore case). */
    this.metadata = headers;
    /** [name, Buffer value] pairs in arrival order, repeats kept. */
    this.rawHeaders = raw;
    if (streaming) {
      Object.defineProperty(this, 'body', { enumerable: true, configurable: true, get: () => this._wholeBody('body') });
    } else {
      /** The whole request body (for a CloudEvent, its data). */
      this.body = body;
    }
    this.grpcMethod = null;
    /** { method, clientStreaming, serverStreaming } for a gRPC call, else null. */
    this.grpc = null;
    this.event = null;
    /** The HTTP request that carried a gRPC call or CloudEvent ({ method, path, rawPath, query, host, version }), else null. */
    this.transport = transportView(env.transport);
    this.requestId = env.requestId || '';
    this.deadline = env.deadline ? new Date(toNumber(env.deadline.seconds) * 1000 + ((env.deadline.nanos | 0) / 1e6)) : null;
    this.trace = {
      traceparent: (env.trace && env.trace.traceparent) || '',
      tracestate: (env.trace && env.trace.tracestate) || '',
    };
    /** Declared body length, -1 when unknown. */
    this.contentLength = env.contentLength === undefined || env.contentLength === null ? -1 : toNumber(env.contentLength);
    /** Aborted when the watchdog cancels the request (client gone, deadline passed) or the connection ends. */
    this.signal = signal;
    this.streamId = streamId;

    if (env.grpc) {
      this.kind = 'grpc';
      this.method = 'POST';
      this.grpcMethod = env.grpc.method || '';
      this.grpc = Object.freeze({
        method: this.grpcMethod,
        clientStreaming: Boolean(env.grpc.clientStreaming),
        serverStreaming: Boolean(env.grpc.serverStreaming),
      });
      this.path = this.grpcMethod;
      this.rawPath = Buffer.from(this.path, 'utf8');
      if (this.transport) this.host = this.transport.host;
    } else if (env.cloudevent) {
      const ce = env.cloudevent;
      this.kind = 'cloudevent';
      this.method = 'POST';
      // The HTTP request that carried the event, when there was one (not for CloudEvents/Send over gRPC).
      this.rawPath = this.transport ? this.transport.rawPath : Buffer.from('/');
      this.path = this.rawPath.toString('utf8');
      if (this.transport) {
        this.query = this.transport.query;
        this.host = this.transport.host;
      }
      if (body.length === 0) {
        // The data travels as the body (proto/README.md); accept it inside the message too.
        if (ce.data === 'binaryData') this.body = Buffer.from(ce.binaryData);
        else if (ce.data === 'textData') this.body = Buffer.from(ce.textData, 'utf8');
        this[WHOLE] = this.body;
      }
      this.event = Object.freeze({ attributes: eventAttributes(ce), data: this.body });
    } else {
      const http = env.http || {};
      this.method = http.method || '';
      this.rawPath = http.path && http.path.length ? Buffer.from(http.path) : Buffer.from('/');
      this.path = this.rawPath.toString('utf8');
      this.query = http.query || '';
      this.host = http.host || '';
    }
  }

  /**
   * The gRPC request messages, as Buffers. A client-streaming passthrough call's body is split on gRPC's 5-byte
   * framing (a truncated or malformed frame throws PermanentError → INVALID_ARGUMENT; a compressed message throws
   * GrpcStatus UNIMPLEMENTED); otherwise the body is one message (for InvokeStream, the chunks joined). For a
   * client-streaming call this needs the whole body: call it after `await request.bytes()`, or use messages().
   */
  grpcMessages() {
    this._requireGrpc('grpcMessages()');
    const body = this._wholeBody('grpcMessages()');
    return this._framedRequest() ? splitGrpcMessages(body) : [body];
  }

  /**
   * The gRPC request messages as they arrive (an async iterator of Buffers): for a client-streaming passthrough
   * call each message as soon as it is complete, for InvokeStream each chunk, otherwise the one message. Errors
   * as grpcMessages(); rejects with the AbortError if the call is cancelled. Reads the body once.
   */
  messages() {
    this._requireGrpc('messages()');
    if (this.grpcMethod === INVOKE_STREAM) return this.stream();
    if (!this._framedRequest()) {
      const self = this;
      return (async function* one() {
        yield await self.bytes();
      })();
    }
    const chunks = this.stream();
    return (async function* split() {
      const decoder = new GrpcMessageDecoder();
      for await (const chunk of chunks) {
        for (const message of decoder.push(chunk)) yield message;
      }
      decoder.finish();
    })();
  }

  /**
   * The body as it arrives: an async iterator of Buffer chunks (one chunk, or none, when the body is already
   * whole). Credit for more is returned to the watchdog as you read, so a slow reader slows its caller down.
   * Rejects with the AbortError if the request is cancelled. The body can be read this way once.
   */
  stream() {
    const whole = this[WHOLE];
    if (whole !== null) {
      return (async function* wholeBody() {
        if (whole.length) yield whole;
      })();
    }
    if (this[READING]) throw new TypeError('the request body is already being read: stream(), messages() and bytes() read it once');
    this[READING] = true;
    const source = this[SOURCE];
    return (async function* arriving() {
      for (;;) {
        const chunk = await source.next();
        if (chunk === null) return;
        yield chunk;
      }
    })();
  }

  /** The whole body, once it has all arrived (a Promise of a Buffer); `body` then holds it too. */
  async bytes() {
    if (this[WHOLE] !== null) return this[WHOLE];
    const chunks = [];
    let n = 0;
    for await (const chunk of this.stream()) {
      chunks.push(chunk);
      n += chunk.length;
    }
    this[WHOLE] = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, n);
    return this[WHOLE];
  }

  _wholeBody(what) {
    if (this[WHOLE] !== null) return this[WHOLE];
    // Never "whatever has arrived so far": that would work for small bodies in tests and fail for large ones.
    if (this[READING]) {
      throw new TypeError(`${what}: the body of this call is being read with stream()/messages(); it is not kept`);
    }
    throw new TypeError(
      `${what}: the body of this client-streaming call is still arriving; use \`for await (const m of request.messages())\` or \`await request.bytes()\` first`,
    );
  }

  _requireGrpc(what) {
    if (this.kind !== 'grpc') throw new TypeError(`${what} is for gRPC calls; this request is ${this.kind}`);
  }

  _framedRequest() {
    return this.grpc.clientStreaming && isPassthrough(this.grpcMethod);
  }
}

// Header names: RFC 9110 tokens. Values: any byte but CR, LF and NUL (proto/watchdog/v1/envelope.proto).
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function headerValue(name, v) {
  const b = Buffer.isBuffer(v) || v instanceof Uint8Array ? Buffer.from(v) : Buffer.from(String(v), 'utf8');
  if (b.includes(13) || b.includes(10) || b.includes(0)) {
    throw new TypeError(`the value of header ${JSON.stringify(name)} contains CR, LF or NUL`);
  }
  return b;
}

/** Response headers: a plain object (a value may be an array for repeats), a Map, a Headers, or [name, value] pairs. */
function toHeaderList(headers, what = 'header') {
  if (headers === undefined || headers === null) return [];
  let entries;
  if (typeof headers[Symbol.iterator] === 'function' && typeof headers !== 'string') entries = headers;
  else if (typeof headers === 'object') entries = Object.entries(headers);
  else throw new TypeError(`headers must be an object, a Map or a list of [name, value] pairs, not ${describe(headers)}`);
  const list = [];
  for (const entry of entries) {
    if (!Array.isArray(entry) || entry.length !== 2) throw new TypeError('each header must be a [name, value] pair');
    const name = String(entry[0]);
    if (!TOKEN.test(name)) throw new TypeError(`invalid ${what} name ${JSON.stringify(name)}`);
    const values = Array.isArray(entry[1]) ? entry[1] : [entry[1]];
    for (const v of values) {
      if (v === undefined || v === null) continue;
      list.push({ name, value: headerValue(name, v) });
    }
  }
  return list;
}

/**
 * A handler's answer: `new Response(status, headers, body)` or `new Response({ status, headers, body, trailers })`.
 * status defaults to 200, headers (gRPC: initial metadata) to none, body to empty (Buffer, Uint8Array or
 * string), or an async or sync iterable of such chunks, each sent as soon as it is produced (for a
 * server-streaming gRPC passthrough call each chunk is one message, which the SDK frames). trailers (gRPC:
 * trailing metadata) go into the End frame.
 */
class Response {
  constructor(status, headers, body, trailers) {
    if (status !== null && typeof status === 'object' && !(status instanceof Uint8Array)) {
      ({ status, headers, body, trailers } = status);
    }
    this.status = status === undefined || status === null ? 200 : status;
    if (!Number.isInteger(this.status) || this.status < 100 || this.status > 999) {
      throw new TypeError(`status must be an integer HTTP status code, not ${JSON.stringify(status)}`);
    }
    this.headers = headers === undefined || headers === null ? {} : headers;
    this.body = body === undefined || body === null ? EMPTY : body;
    this.trailers = trailers === undefined || trailers === null ? {} : trailers;
  }
}

/**
 * A reply event: `new CloudEvent(attributes, data)`. attributes: name → value in canonical string form
 * (booleans "true"/"false", numbers in decimal, Date as RFC 3339, Buffer/Uint8Array as base64); id
 * defaults to a fresh UUID, specversion to the request's (else "1.0"), source to $ce_reply_source (else
 * "/fwatchdog"), type to $ce_reply_type (else the request's type + ".reply"). data: Buffer, Uint8Array or string.
 */
class CloudEvent {
  constructor(attributes, data) {
    if (attributes !== undefined && attributes !== null && typeof attributes !== 'object') {
      throw new TypeError(`CloudEvent attributes must be an object, not ${describe(attributes)}`);
    }
    this.attributes = { ...(attributes || {}) };
    this.data = data === undefined || data === null ? EMPTY : data;
  }
}

/** A reply attribute value in CloudEvents canonical string form. */
function replyAttributeString(v) {
  if (typeof v === 'string') return v;
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (v instanceof Date) return v.toISOString();
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
  return String(v);
}

function buildReply(event, request) {
  const attrs = {};
  for (const [k, v] of Object.entries(event.attributes)) {
    if (v === undefined || v === null || k === 'data' || k === 'data_base64') continue;
    attrs[k] = replyAttributeString(v);
  }
  const incoming = request && request.event ? request.event.attributes : null;
  const take = (name) => {
    const v = attrs[name];
    delete attrs[name];
    return v;
  };
  // The watchdog's reply defaults (SPEC section 6), so the reply is complete whichever side fills it in; with
  // no type given and no request type to derive one from, it is left empty for the watchdog to decide.
  const type = take('type') || process.env.ce_reply_type || (incoming && incoming.type ? `${incoming.type}.reply` : '');
  const reply = {
    id: take('id') || randomUUID(),
    source: take('source') || process.env.ce_reply_source || '/fwatchdog',
    specVersion: take('specversion') || (incoming && incoming.specversion) || '1.0',
    type,
    attributes: {},
  };
  for (const [k, v] of Object.entries(attrs)) reply.attributes[k] = { ceString: v };
  return reply;
}

/** Whether `v` is a body to stream: an async or sync iterable that is not itself bytes or a string. */
function isChunkIterable(v) {
  if (v === null || typeof v !== 'object') return false;
  if (v instanceof Uint8Array || v instanceof ArrayBuffer) return false;
  return typeof v[Symbol.asyncIterator] === 'function' || typeof v[Symbol.iterator] === 'function';
}

/** A streamed body's items as one async iterator; a sync iterable's items may be promises (awaited, as for await). */
function toAsyncIterator(items) {
  if (typeof items[Symbol.asyncIterator] === 'function') return items[Symbol.asyncIterator]();
  const it = items[Symbol.iterator]();
  return {
    async next() {
      const step = it.next();
      return step.done ? step : { done: false, value: await step.value };
    },
    async return() {
      return typeof it.return === 'function' ? it.return() : { done: true, value: undefined };
    },
  };
}

const MAX_STATUS_MESSAGE = 16 * 1024;

/** A grpc-message value: one line (headers carry no CR, LF or NUL), at most 16 KiB. */
function statusMessage(message) {
  let m = String(message || '').replace(/[\r\n\0]+/g, ' ');
  const b = Buffer.from(m, 'utf8');
  if (b.length > MAX_STATUS_MESSAGE) m = b.subarray(0, MAX_STATUS_MESSAGE).toString('utf8').replace(/\uFFFD+$/, '') + '…';
  return m;
}

const STATUS_TRAILERS = new Set(['grpc-status', 'grpc-message']);

/** `base` trailers (a list) with a GrpcStatus's: grpc-status, grpc-message (when not empty), its own trailers. */
function statusTrailers(status, base = []) {
  const own = [{ name: 'grpc-status', value: Buffer.from(String(status.code)) }];
  const message = statusMessage(status.message);
  if (message) own.push({ name: 'grpc-message', value: Buffer.from(message, 'utf8') });
  const rest = [...base, ...toHeaderList(status.trailers, 'trailer')].filter((h) => !STATUS_TRAILERS.has(h.name.toLowerCase()));
  return [...own, ...rest];
}

/** Error kind for a GrpcStatus that must end a non-gRPC response already under way (an Error frame). */
function errorKindForCode(code) {
  if ([3, 5, 6, 7, 9, 11, 12, 16].includes(code)) return 'permanent';
  if ([4, 8, 10, 14].includes(code)) return 'retryable';
  return 'internal';
}

/**
 * A handler's return value → what to send: { head, body, items, frame, trailers }. `body` is a Buffer (already
 * in gRPC framing when `frame`), `items` an iterable whose chunks are sent as they come (each one framed as a
 * gRPC message when `frame`: a server-streaming passthrough call). Throws TypeError for an unsupported value.
 */
function planResponse(result, request) {
  const grpc = request && request.kind === 'grpc';
  // A server-streaming passthrough call answers in gRPC's framing; Invoke/InvokeStream and unary calls in raw bytes.
  const frame = Boolean(grpc && request.grpc.serverStreaming && isPassthrough(request.grpcMethod));
  const message = (bytes, omitted) => {
    if (!frame) return bytes;
    return omitted ? EMPTY : grpcFrame(bytes);
  };
  if (result === undefined || result === null) {
    // For gRPC, 202 would map to UNKNOWN by the HTTP-to-gRPC table: no answer is an OK call with an empty
    // message (or no message, when streaming).
    return { head: { status: grpc ? 200 : 202 }, body: EMPTY, items: null, frame, trailers: [] };
  }
  if (isGrpcStatus(result)) {
    if (grpc) return { head: { status: 200 }, body: EMPTY, items: null, frame, trailers: statusTrailers(result) };
    return {
      head: { status: httpStatusForCode(result.code), headers: [{ name: 'content-type', value: Buffer.from('text/plain; charset=utf-8') }] },
      body: Buffer.from(result.message || '', 'utf8'),
      items: null,
      frame: false,
      trailers: toHeaderList(result.trailers, 'trailer'),
    };
  }
  if (result instanceof Response) {
    const head = { status: result.status, headers: toHeaderList(result.headers) };
    const trailers = toHeaderList(result.trailers, 'trailer');
    if (isChunkIterable(result.body)) return { head, body: null, items: result.body, frame, trailers };
    // An omitted body (the shared EMPTY) is no message at all on a server stream; an explicit empty one is one.
    return { head, body: message(toBuffer(result.body, 'Response body'), result.body === EMPTY), items: null, frame, trailers };
  }
  if (result instanceof CloudEvent) {
    return {
      head: { status: 200, reply: buildReply(result, request) },
      body: toBuffer(result.data, 'CloudEvent data'),
      items: null,
      frame: false,
      trailers: [],
    };
  }
  if (typeof result === 'string' || result instanceof Uint8Array || result instanceof ArrayBuffer) {
    return { head: { status: 200 }, body: message(toBuffer(result, 'the returned body'), false), items: null, frame, trailers: [] };
  }
  if (isChunkIterable(result)) {
    return { head: { status: 200 }, body: null, items: result, frame, trailers: [] };
  }
  throw new TypeError(
    `the handler returned ${describe(result)}: return a Response, a CloudEvent, a Buffer, a string, or nothing ` +
      '(or an iterable of chunks, or a GrpcStatus)',
  );
}

/** One streamed item → the bytes to send. */
function chunkBytes(value, frame) {
  const b = toBuffer(value, 'a streamed chunk');
  return frame ? grpcFrame(b) : b;
}

module.exports = {
  WatchdogRequest,
  RequestHeaders,
  Response,
  CloudEvent,
  planResponse,
  toAsyncIterator,
  chunkBytes,
  statusTrailers,
  errorKindForCode,
  startsEarly,
  rfc3339,
  attributeString,
};
