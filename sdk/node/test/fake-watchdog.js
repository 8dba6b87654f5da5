'use strict';
// A fake watchdog for the tests: listens on a Unix socket in a temp dir, starts a worker (node <fixture>) with
// WATCHDOG_SOCKET set, and speaks watchdog.v1 to it. It reads the .proto files themselves (not the SDK's
// generated descriptor, and with the .proto field names), so it also checks that the SDK's generated code
// matches the contract. It records every rule the worker breaks in `violations`.
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const protobuf = require('protobufjs');

const PROTO_DIR = path.resolve(__dirname, '../../../proto');

function loadProtos() {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => (path.isAbsolute(target) ? target : path.join(PROTO_DIR, target));
  root.loadSync(['watchdog/v1/frame.proto'], { keepCase: true });
  return {
    Frame: root.lookupType('watchdog.v1.Frame'),
    ErrorKind: root.lookupEnum('watchdog.v1.ErrorKind').values,
  };
}

const { Frame, ErrorKind } = loadProtos();
const Long = protobuf.util.Long;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function encodeFrame(obj) {
  const body = Frame.encode(Frame.fromObject(obj)).finish();
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE(body.length, 0);
  return Buffer.concat([prefix, body]);
}

function num(v) {
  return typeof v === 'number' ? v : Long.fromValue(v).toNumber();
}

/** Envelope helpers (plain objects with .proto field names). */
function httpEnvelope({ method = 'POST', path: p = '/', query = '', host = 'localhost:8080', headers = [], requestId = 'req-1', deadline, contentLength = -1, trace } = {}) {
  const env = {
    request_id: requestId,
    headers: headers.map(([name, value]) => ({ name, value: Buffer.from(value) })),
    content_length: contentLength,
    http: { method, path: Buffer.from(p), query, host, version: 'HTTP/1.1' },
  };
  if (deadline) env.deadline = deadline;
  if (trace) env.trace = trace;
  return env;
}

/** A gRPC call's envelope (.proto field names): metadata as [name, value] pairs, the HTTP/2 request as transport. */
function grpcEnvelope(method, { clientStreaming = false, serverStreaming = false, headers = [], requestId = 'grpc-1', transport = true } = {}) {
  const env = {
    request_id: requestId,
    headers: [['content-type', 'application/grpc'], ['te', 'trailers'], ...headers].map(([name, value]) => ({ name, value: Buffer.from(value) })),
    content_length: -1,
    grpc: { method, client_streaming: clientStreaming, server_streaming: serverStreaming },
  };
  if (transport) env.transport = { method: 'POST', path: Buffer.from(method), query: '', host: 'fn.example:8080', version: 'HTTP/2.0' };
  return env;
}

/** gRPC's 5-byte framing, written independently of the SDK's helper. */
function frameMessages(...messages) {
  return Buffer.concat(
    messages.map((m) => {
      const b = Buffer.from(m);
      const p = Buffer.alloc(5);
      p.writeUInt32BE(b.length, 1);
      return Buffer.concat([p, b]);
    }),
  );
}

/** Splits a framed response body, failing the test on anything malformed. */
function unframeMessages(body) {
  const out = [];
  let off = 0;
  while (off < body.length) {
    if (body.length - off < 5) throw new Error(`a truncated prefix at byte ${off}`);
    if (body[off] !== 0) throw new Error(`flag ${body[off]} at byte ${off}`);
    const n = body.readUInt32BE(off + 1);
    if (body.length - off - 5 < n) throw new Error(`a truncated message at byte ${off}`);
    out.push(body.subarray(off + 5, off + 5 + n));
    off += 5 + n;
  }
  return out;
}

class StreamState {
  constructor(id, window) {
    this.id = id;
    this.frames = [];
    this.head = null;
    this.chunks = [];
    this.bodyBytes = 0;
    this.end = null;
    this.error = null;
    this.finished = false;
    this.cancelled = false;
    /** What we may still send the worker (its window for this stream). */
    this.sendWindow = window;
    /** What the worker may still send us. */
    this.recvWindow = window;
    this.unacked = 0;
    this.windowUpdatesFromWorker = 0;
    this.waiters = [];
    this.creditWaiters = [];
    this.done = new Promise((resolve) => {
      this._resolveDone = resolve;
    });
  }

  get body() {
    return Buffer.concat(this.chunks);
  }

  notify() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  changed() {
    return new Promise((r) => this.waiters.push(r));
  }

  /** Resolves once `predicate(this)` holds (checked after every frame on this stream). */
  async until(predicate, ms = 10000, what = 'a condition') {
    const deadline = Date.now() + ms;
    while (!predicate(this)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what} on stream ${this.id}`);
      await Promise.race([this.changed(), sleep(Math.min(left, 50))]);
    }
    return this;
  }

  get dataFrames() {
    return this.frames.filter((f) => f.kind === 'data');
  }
}

class FakeWatchdog {
  /**
   * Starts `fixture` as a worker. opts.env: extra environment; opts.ack: HelloAck fields (.proto names);
   * opts.handshake: false to stop after accepting the connection; opts.autoWindow: false to never return
   * credit to the worker automatically.
   */
  static async start(fixture, opts = {}) {
    const wd = new FakeWatchdog(opts);
    await wd._start(fixture);
    if (opts.handshake !== false) await wd.handshake(opts.ack);
    return wd;
  }

  constructor(opts) {
    this.opts = opts;
    this.autoWindow = opts.autoWindow !== false;
    this.violations = [];
    this.connFrames = [];
    this.connWaiters = [];
    this.streams = new Map();
    this.nextStreamId = 1;
    this.limits = { max_frame_bytes: 64 * 1024, max_chunk_bytes: 64 * 1024, initial_window_bytes: 256 * 1024 };
    this.stdout = '';
    this.stderr = '';
    this.inBuf = Buffer.alloc(0);
    this.framesReceived = 0;
    this.socketReads = 0;
    this.helloSeen = false;
    this.readySeen = false;
  }

  async _start(fixture) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wd-node-'));
    this.socketPath = path.join(this.dir, 'worker.sock');
    this.server = net.createServer();
    const accepted = new Promise((resolve) => this.server.once('connection', resolve));
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(this.socketPath, resolve);
    });
    const env = { ...process.env, ...(this.opts.env || {}), WATCHDOG_SOCKET: this.socketPath, WATCHDOG_PROTOCOL: 'watchdog.v1' };
    this.child = spawn(process.execPath, [path.resolve(__dirname, 'fixtures', fixture), ...(this.opts.args || [])], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout.setEncoding('latin1');
    this.child.stderr.setEncoding('utf8');
    this.child.stdout.on('data', (s) => {
      this.stdout += s;
    });
    this.child.stderr.on('data', (s) => {
      this.stderr += s;
    });
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => resolve({ code, signal }));
    });
    this.exitInfo = null;
    this.exited.then((info) => {
      this.exitInfo = info;
    });
    this.conn = await withTimeout(
      Promise.race([accepted, this.exited.then((i) => Promise.reject(new Error(`worker exited ${JSON.stringify(i)} before connecting: ${this.stderr}`)))]),
      10000,
      'the worker to connect',
    );
    this.conn.on('data', (chunk) => this._onData(chunk));
    this.conn.on('error', () => {});
    this.connClosed = new Promise((resolve) => this.conn.once('close', resolve));
  }

  async handshake(ack = {}) {
    const hello = await this.nextConnFrame('hello');
    this.hello = hello.hello;
    this.limits = {
      max_frame_bytes: 2 * 1024 * 1024,
      max_chunk_bytes: 64 * 1024,
      initial_window_bytes: 256 * 1024,
      worker_id: 3,
      ...ack,
    };
    this.send({ stream_id: 0, hello_ack: this.limits });
    await this.nextConnFrame('ready');
  }

  // ---- frames from the worker -------------------------------------------------------------------------

  _onData(chunk) {
    this.socketReads++;
    this.inBuf = this.inBuf.length ? Buffer.concat([this.inBuf, chunk]) : chunk;
    while (this.inBuf.length >= 4) {
      const n = this.inBuf.readUInt32BE(0);
      const limit = this.readySeen || this.helloAckSent ? this.limits.max_frame_bytes : 64 * 1024;
      if (n > limit) this.violations.push(`frame of ${n} bytes exceeds ${limit}`);
      if (this.inBuf.length < 4 + n) break;
      const bytes = this.inBuf.subarray(4, 4 + n);
      this.inBuf = this.inBuf.subarray(4 + n);
      let frame;
      try {
        frame = Frame.decode(bytes);
      } catch (err) {
        this.violations.push(`undecodable frame: ${err.message}`);
        continue;
      }
      this.framesReceived++;
      this._onFrame(frame);
    }
  }

  _onFrame(f) {
    const kind = f.kind;
    if (!kind) {
      this.violations.push('frame without kind');
      return;
    }
    const id = num(f.stream_id);
    if (id === 0) {
      if (!['hello', 'ready', 'init_error', 'ping', 'pong', 'log'].includes(kind)) {
        this.violations.push(`${kind} on stream 0`);
      }
      if (kind === 'hello') {
        if (this.helloSeen) this.violations.push('second hello');
        this.helloSeen = true;
      }
      if (kind === 'ready') {
        if (this.readySeen) this.violations.push('second ready');
        if (!this.helloAckSent) this.violations.push('ready before hello_ack');
        this.readySeen = true;
      }
      if (kind === 'ping') this.send({ stream_id: 0, pong: { nonce: f.ping.nonce } });
      this.connFrames.push(f);
      const w = this.connWaiters;
      this.connWaiters = [];
      for (const fn of w) fn();
      return;
    }
    const st = this.streams.get(id);
    if (!st) {
      this.violations.push(`${kind} on stream ${id}, which was never opened`);
      return;
    }
    if (st.cancelled) {
      st.afterCancel = (st.afterCancel || 0) + 1;
      this.violations.push(`${kind} on stream ${id} after Cancel`);
      return;
    }
    if (st.finished) {
      this.violations.push(`${kind} on stream ${id} after it finished`);
      return;
    }
    st.frames.push(f);
    switch (kind) {
      case 'response_head':
        if (st.head) this.violations.push(`second response_head on stream ${id}`);
        st.head = f.response_head;
        break;
      case 'data': {
        const n = f.data.data.length;
        if (!st.head) this.violations.push(`data before response_head on stream ${id}`);
        if (n > this.limits.max_chunk_bytes) this.violations.push(`data of ${n} bytes > max_chunk_bytes on stream ${id}`);
        if (n > st.recvWindow) this.violations.push(`data of ${n} bytes exceeds the window ${st.recvWindow} on stream ${id}`);
        st.recvWindow -= n;
        st.chunks.push(Buffer.from(f.data.data));
        st.bodyBytes += n;
        st.unacked += n;
        if (this.autoWindow && st.unacked >= this.limits.initial_window_bytes / 2) {
          this.grant(id, st.unacked);
        }
        break;
      }
      case 'end':
        if (!st.head) this.violations.push(`end before response_head on stream ${id}`);
        st.end = f.end;
        st.finished = true;
        st._resolveDone(st);
        break;
      case 'error':
        st.error = f.error;
        st.finished = true;
        st._resolveDone(st);
        break;
      case 'window_update':
        st.windowUpdatesFromWorker++;
        st.sendWindow += f.window_update.increment;
        break;
      case 'log':
        break;
      default:
        this.violations.push(`worker sent ${kind} on stream ${id}`);
    }
    st.notify();
  }

  /** The next stream-0 frame of `kind` (earlier frames of other kinds stay queued). */
  async nextConnFrame(kind, ms = 10000) {
    const find = () => this.connFrames.findIndex((f) => f.kind === kind);
    const deadline = Date.now() + ms;
    for (;;) {
      const i = find();
      if (i >= 0) return this.connFrames.splice(i, 1)[0];
      const left = deadline - Date.now();
      if (left <= 0 || this.exitInfo) {
        throw new Error(`no ${kind} frame from the worker (exit ${JSON.stringify(this.exitInfo)}); stderr: ${this.stderr}`);
      }
      await Promise.race([new Promise((r) => this.connWaiters.push(r)), sleep(Math.min(left, 50))]);
    }
  }

  // ---- frames to the worker ---------------------------------------------------------------------------

  send(obj) {
    if (obj.hello_ack) this.helloAckSent = true;
    this.conn.write(encodeFrame(obj));
  }

  sendRaw(buf) {
    this.conn.write(buf);
  }

  grant(id, increment) {
    const st = this.streams.get(id);
    if (st) {
      st.unacked = Math.max(0, st.unacked - increment);
      st.recvWindow += increment;
    }
    this.send({ stream_id: id, window_update: { increment } });
  }

  open(envelope) {
    const id = this.nextStreamId;
    this.nextStreamId += 2;
    const st = new StreamState(id, this.limits.initial_window_bytes);
    this.streams.set(id, st);
    this.send({ stream_id: id, request_head: { envelope } });
    return st;
  }

  /** Sends a body respecting the worker's window, waiting for its WindowUpdates. */
  async sendBody(st, body, { chunk = this.limits.max_chunk_bytes, end = true } = {}) {
    let off = 0;
    let waits = 0;
    while (off < body.length) {
      if (st.finished || st.cancelled) return waits;
      if (st.sendWindow <= 0) {
        waits++;
        await withTimeout(st.changed(), 10000, `a window_update on stream ${st.id}`);
        continue;
      }
      const n = Math.min(chunk, st.sendWindow, body.length - off);
      this.send({ stream_id: st.id, data: { data: body.subarray(off, off + n) } });
      st.sendWindow -= n;
      off += n;
    }
    if (end) this.send({ stream_id: st.id, end: {} });
    st.senderWaits = waits;
    return waits;
  }

  /** Opens a stream, sends the body and End, resolves with the stream once its response ends. */
  async request(envelope, body = Buffer.alloc(0), { ms = 10000 } = {}) {
    const st = this.open(envelope);
    await this.sendBody(st, Buffer.isBuffer(body) ? body : Buffer.from(body));
    return withTimeout(st.done, ms, `the response on stream ${st.id}; stderr: ${this.stderr}`);
  }

  http(p, body, opts = {}) {
    return this.request(httpEnvelope({ path: p, ...opts }), body, opts);
  }

  cancel(st, reason = 'client disconnected') {
    st.cancelled = true;
    this.send({ stream_id: st.id, cancel: { reason } });
  }

  async waitExit(ms = 10000) {
    return withTimeout(this.exited, ms, `the worker to exit; stderr: ${this.stderr}`);
  }

  async close() {
    if (!this.exitInfo) this.child.kill('SIGKILL');
    await this.exited.catch(() => {});
    if (this.conn) this.conn.destroy();
    await new Promise((r) => this.server.close(r));
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function headerMap(list) {
  const m = {};
  for (const h of list || []) {
    const k = h.name;
    const v = Buffer.from(h.value).toString('utf8');
    if (m[k] === undefined) m[k] = v;
    else m[k] = [].concat(m[k], v);
  }
  return m;
}

module.exports = {
  FakeWatchdog,
  ErrorKind,
  Frame,
  Long,
  httpEnvelope,
  grpcEnvelope,
  frameMessages,
  unframeMessages,
  headerMap,
  sleep,
  withTimeout,
  encodeFrame,
  num,
};
