'use strict';
// What a handler receives (WatchdogRequest) and may return (Response, CloudEvent), and their conversion from
// and to the watchdog.v1 messages.
const { randomUUID } = require('node:crypto');
const { Long } = require('./proto');

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
  if (typeof v === 'object') return v.constructor && v.constructor.name ? `a ${v.constructor.name}` : 'an object';
  return `a ${typeof v}`;
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

/** What a handler receives: one request, whichever ingress (HTTP, gRPC, CloudEvent) it came through. */
class WatchdogRequest {
  constructor(envelope, body, signal, streamId) {
    const env = envelope || {};
    const { headers, raw } = buildHeaders(env.headers);
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
    /** [name, Buffer value] pairs in arrival order, repeats kept. */
    this.rawHeaders = raw;
    /** The whole request body (for a CloudEvent, its data). */
    this.body = body;
    this.grpcMethod = null;
    this.event = null;
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
      this.path = this.grpcMethod;
      this.rawPath = Buffer.from(this.path, 'utf8');
    } else if (env.cloudevent) {
      const ce = env.cloudevent;
      this.kind = 'cloudevent';
      this.method = 'POST';
      this.path = '/';
      this.rawPath = Buffer.from('/');
      if (body.length === 0) {
        // The data travels as the body (proto/README.md); accept it inside the message too.
        if (ce.data === 'binaryData') this.body = Buffer.from(ce.binaryData);
        else if (ce.data === 'textData') this.body = Buffer.from(ce.textData, 'utf8');
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
 * status defaults to 200, headers to none, body to empty (Buffer, Uint8Array or string). trailers (gRPC) go
 * into the End frame.
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

/**
 * A handler's return value → { head, body, trailers } for the wire. Throws TypeError for an unsupported value.
 */
function toWireResponse(result, request) {
  if (result === undefined || result === null) {
    return { head: { status: 202 }, body: EMPTY, trailers: [] };
  }
  if (result instanceof Response) {
    return {
      head: { status: result.status, headers: toHeaderList(result.headers) },
      body: toBuffer(result.body, 'Response body'),
      trailers: toHeaderList(result.trailers, 'trailer'),
    };
  }
  if (result instanceof CloudEvent) {
    return {
      head: { status: 200, reply: buildReply(result, request) },
      body: toBuffer(result.data, 'CloudEvent data'),
      trailers: [],
    };
  }
  if (typeof result === 'string' || result instanceof Uint8Array || result instanceof ArrayBuffer) {
    return { head: { status: 200 }, body: toBuffer(result, 'the returned body'), trailers: [] };
  }
  throw new TypeError(
    `the handler returned ${describe(result)}: return a Response, a CloudEvent, a Buffer, a string, or nothing`,
  );
}

module.exports = {
  WatchdogRequest,
  RequestHeaders,
  Response,
  CloudEvent,
  toWireResponse,
  rfc3339,
  attributeString,
};
