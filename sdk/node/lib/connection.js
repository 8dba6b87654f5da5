'use strict';
// The worker side of watchdog.v1 (proto/README.md): one Unix-socket connection, length-prefixed Frames, many
// request streams with per-stream flow control in both directions.
const net = require('node:net');
const { Frame, ErrorKind, Long } = require('./proto');
const { WatchdogRequest, planResponse, toAsyncIterator, chunkBytes, statusTrailers, errorKindForCode, startsEarly } = require('./types');
const { errorKind } = require('./errors');
const { isGrpcStatus } = require('./grpc');
const { BodyQueue } = require('./body');

const PROTOCOL = 'watchdog.v1';
const KiB = 1024;
const MiB = 1024 * KiB;
/** Largest frame either way before HelloAck sets the connection's limit. */
const PRE_HELLO_MAX_FRAME = 64 * KiB;
/** Used when HelloAck leaves a limit at 0 (proto3 cannot tell "unset" from 0). */
const DEFAULT_MAX_FRAME = 2 * MiB;
const DEFAULT_MAX_CHUNK = 64 * KiB;
const DEFAULT_WINDOW = 256 * KiB;
/** Room around a Data payload inside a frame: stream id, tags, lengths. */
const DATA_FRAME_OVERHEAD = 32;
/** Frames queued this tick are written at the next setImmediate, or at once past this many bytes. */
const FLUSH_BYTES = 256 * KiB;
/** Body senders pause while the socket holds more than this, until it drains. */
const SOCKET_BACKLOG = 1 * MiB;
const MAX_ERROR_MESSAGE = 16 * KiB;

const KIND_BY_NAME = {
  permanent: ErrorKind.ERROR_KIND_PERMANENT,
  retryable: ErrorKind.ERROR_KIND_RETRYABLE,
  internal: ErrorKind.ERROR_KIND_INTERNAL,
};

class ProtocolError extends Error {}

/** Lets a streamed body's generator run its finally blocks when its stream is gone. */
function closeIterator(it) {
  if (!it || typeof it.return !== 'function') return;
  Promise.resolve()
    .then(() => it.return())
    .catch(() => {});
}

/** A result dropped unsent (its stream was cancelled): close it if it is a generator or stream. */
function closeQuietly(result) {
  if (result === null || typeof result !== 'object' || Buffer.isBuffer(result)) return;
  const body = typeof result.next === 'function' ? result : result.body;
  if (body && typeof body === 'object' && typeof body.return === 'function') closeIterator(body);
}

function toNumber(v) {
  if (typeof v === 'number') return v;
  if (v === null || v === undefined) return 0;
  return Long.fromValue(v).toNumber();
}

function truncate(message, max) {
  const b = Buffer.from(message, 'utf8');
  if (b.length <= max) return message;
  // Cut on a character boundary.
  return b.subarray(0, max).toString('utf8').replace(/\uFFFD+$/, '') + '…';
}

function abortReason(reason) {
  return new DOMException(`request cancelled by the watchdog${reason ? `: ${reason}` : ''}`, 'AbortError');
}

/** One request stream, from RequestHead until End/Error sent or Cancel received. */
class Stream {
  constructor(id, envelope, window) {
    this.id = id;
    this.envelope = envelope;
    this.chunks = [];
    this.received = 0;
    /** Bytes the watchdog may still send us on this stream. */
    this.recvWindow = window;
    /** Bytes received and buffered but not yet returned as credit. */
    this.unacked = 0;
    /** Bytes we may still send on this stream. */
    this.sendWindow = window;
    this.bodyDone = false;
    this.done = false;
    this.controller = new AbortController();
    this._wake = null;
    /** Set when the handler started at RequestHead and reads the body as it arrives. */
    this.bodyQueue = null;
  }

  /** Resolves on the next WindowUpdate, Cancel or connection end. */
  waitCredit() {
    return new Promise((resolve) => {
      this._wake = resolve;
    });
  }

  wake() {
    const w = this._wake;
    this._wake = null;
    if (w) w();
  }
}

class Connection {
  /**
   * @param {Function} handler
   * @param {{concurrency: number, init?: Function, sdkName: string, sdkVersion: string, log?: Function}} opts
   */
  constructor(handler, opts) {
    this.handler = handler;
    this.opts = opts;
    this.log = opts.log || ((line) => process.stderr.write(`${line}\n`));
    this.phase = 'hello'; // hello → init → ready; closed at the end
    this.maxFrame = PRE_HELLO_MAX_FRAME;
    this.maxChunk = DEFAULT_MAX_CHUNK;
    this.window = DEFAULT_WINDOW;
    this.streams = new Map();
    this.lastStreamId = 0;
    this.draining = false;
    this.shuttingDown = false;
    this.closed = false;
    // Reading.
    this.inChunks = [];
    this.inOffset = 0;
    this.inBuffered = 0;
    this.inNeed = -1; // length of the frame being read, -1 while reading its prefix
    // Writing.
    this.outQueue = [];
    this.outQueued = 0;
    this.flushScheduled = false;
    this.drainPromise = null;
    this._flushNow = () => this._flush();
  }

  /** Connects and serves; resolves with the exit code (0 after Shutdown or the watchdog closing the socket). */
  run(path) {
    return new Promise((resolve) => {
      this._resolve = resolve;
      const sock = net.createConnection({ path });
      this.sock = sock;
      this.connected = false;
      sock.on('connect', () => {
        this.connected = true;
        this._send(0, {
          hello: {
            protocol: PROTOCOL,
            sdkName: this.opts.sdkName,
            sdkVersion: this.opts.sdkVersion,
            maxConcurrency: this.opts.concurrency,
          },
        });
      });
      sock.on('data', (chunk) => this._onData(chunk));
      sock.on('end', () => this._shutdown(0, 'the watchdog closed the connection'));
      sock.on('error', (err) => {
        if (!this.connected) {
          this.log(`watchdog-sdk: cannot connect to WATCHDOG_SOCKET ${path}: ${err.message}`);
          this._shutdown(1);
        } else {
          this._shutdown(0, `connection error: ${err.message}`);
        }
      });
      sock.on('close', () => this._shutdown(this.closed ? this.exitCode : 0, 'connection closed'));
      sock.on('drain', () => {
        const p = this.drainPromise;
        this.drainPromise = null;
        if (p) p.resolve();
      });
    });
  }

  // ---- reading ----------------------------------------------------------------------------------------

  _onData(chunk) {
    if (this.closed) return;
    this.inChunks.push(chunk);
    this.inBuffered += chunk.length;
    try {
      for (;;) {
        if (this.inNeed < 0) {
          if (this.inBuffered < 4) break;
          const n = this._take(4).readUInt32BE(0);
          if (n > this.maxFrame) throw new ProtocolError(`frame of ${n} bytes exceeds the limit of ${this.maxFrame}`);
          this.inNeed = n;
        }
        if (this.inBuffered < this.inNeed) break;
        const bytes = this._take(this.inNeed);
        this.inNeed = -1;
        let frame;
        try {
          frame = Frame.decode(bytes);
        } catch (err) {
          throw new ProtocolError(`undecodable frame: ${err.message}`);
        }
        this._onFrame(frame);
        if (this.closed) return;
      }
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this._protocolError(err.message);
    }
  }

  /** The next n buffered bytes, without copying when they lie in one chunk. */
  _take(n) {
    if (n === 0) return Buffer.alloc(0);
    const first = this.inChunks[0];
    let out;
    if (first.length - this.inOffset >= n) {
      out = first.subarray(this.inOffset, this.inOffset + n);
      this.inOffset += n;
      if (this.inOffset === first.length) {
        this.inChunks.shift();
        this.inOffset = 0;
      }
    } else {
      out = Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const c = this.inChunks[0];
        const k = Math.min(c.length - this.inOffset, n - filled);
        c.copy(out, filled, this.inOffset, this.inOffset + k);
        filled += k;
        this.inOffset += k;
        if (this.inOffset === c.length) {
          this.inChunks.shift();
          this.inOffset = 0;
        }
      }
    }
    this.inBuffered -= n;
    return out;
  }

  _onFrame(f) {
    const kind = f.kind;
    if (!kind) throw new ProtocolError('frame without a kind');
    const id = toNumber(f.streamId);
    switch (kind) {
      case 'ping':
        // Answered here, on the I/O path, whatever the handlers are doing.
        this._send(f.streamId, { pong: { nonce: f.ping.nonce } });
        return;
      case 'pong':
        return;
      case 'helloAck':
        if (this.phase !== 'hello') throw new ProtocolError('a second HelloAck');
        this._onHelloAck(f.helloAck);
        return;
      default:
        break;
    }
    if (this.phase === 'hello') throw new ProtocolError(`${kind} before HelloAck`);
    switch (kind) {
      case 'requestHead':
        this._onRequestHead(id, f.requestHead);
        return;
      case 'data':
        this._onRequestData(id, f.data.data);
        return;
      case 'end':
        this._onRequestEnd(id);
        return;
      case 'cancel':
        this._onCancel(id, f.cancel.reason);
        return;
      case 'windowUpdate':
        this._onWindowUpdate(id, f.windowUpdate.increment >>> 0);
        return;
      case 'drain':
        this.draining = true;
        return;
      case 'shutdown':
        this.draining = true;
        this.shuttingDown = true;
        this._maybeFinish();
        return;
      default:
        throw new ProtocolError(`unexpected ${kind} frame from the watchdog`);
    }
  }

  _onHelloAck(ack) {
    this.maxFrame = ack.maxFrameBytes || DEFAULT_MAX_FRAME;
    this.maxChunk = Math.min(ack.maxChunkBytes || DEFAULT_MAX_CHUNK, this.maxFrame - DATA_FRAME_OVERHEAD);
    this.window = ack.initialWindowBytes || DEFAULT_WINDOW;
    this.workerId = ack.workerId;
    this.phase = 'init';
    this._initialise();
  }

  async _initialise() {
    try {
      if (typeof this.handler !== 'function') {
        throw new TypeError(`serve() needs a handler function, got ${this.handler === null ? 'null' : typeof this.handler}`);
      }
      if (this.opts.init) await this.opts.init();
    } catch (err) {
      if (this.closed) return;
      this.log(`watchdog-sdk: initialisation failed: ${err && err.stack ? err.stack : err}`);
      const message = err instanceof Error ? err.message : String(err);
      this._send(0, { initError: { message: truncate(message || 'initialisation failed', MAX_ERROR_MESSAGE) } });
      this._shutdown(1);
      return;
    }
    if (this.closed) return;
    this.phase = 'ready';
    this._send(0, { ready: {} });
  }

  _onRequestHead(id, head) {
    if (this.phase !== 'ready') throw new ProtocolError('a request before Ready');
    if (id === 0) throw new ProtocolError('RequestHead on stream 0');
    // Ids only increase: a lower or repeated one belongs to a finished stream, and is ignored.
    if (id <= this.lastStreamId) return;
    this.lastStreamId = id;
    const st = new Stream(id, head.envelope, this.window);
    if (this.draining) {
      // The watchdog sends no requests after Drain; should one cross it, refuse it so it can go elsewhere.
      this._send(id, { error: { kind: ErrorKind.ERROR_KIND_RETRYABLE, message: 'worker is draining' } });
      return;
    }
    this.streams.set(id, st);
    if (startsEarly(st.envelope)) {
      // A client-streaming call: the handler runs now and reads the messages as they arrive.
      st.bodyQueue = new BodyQueue((n) => this._consumed(st, n));
      const request = new WatchdogRequest(st.envelope, st.bodyQueue, st.controller.signal, id);
      st.envelope = null;
      st.chunks = null;
      this._start(st, request);
    }
  }

  _onRequestData(id, data) {
    const st = this.streams.get(id);
    if (!st || st.bodyDone) return; // finished, cancelled or never opened: ignored
    const n = data.length;
    if (n > this.maxChunk) throw new ProtocolError(`Data of ${n} bytes on stream ${id} exceeds max_chunk_bytes ${this.maxChunk}`);
    if (n > st.recvWindow) {
      throw new ProtocolError(`Data of ${n} bytes on stream ${id} exceeds its window of ${st.recvWindow} bytes`);
    }
    if (n === 0) return;
    st.recvWindow -= n;
    if (st.bodyQueue) {
      // Credit for these bytes goes back as the handler reads them (_consumed).
      st.received += n;
      st.bodyQueue.push(data);
      return;
    }
    st.chunks.push(data);
    st.received += n;
    // The body is handed to the application as it arrives (it is assembled for the handler), so credit goes
    // back once half the window is used up.
    st.unacked += n;
    if (st.unacked >= this.window / 2) {
      const inc = st.unacked;
      st.unacked = 0;
      st.recvWindow += inc;
      this._send(id, { windowUpdate: { increment: inc } });
    }
  }

  /** The handler read n bytes of a body it reads as it arrives: return credit once half the window is read. */
  _consumed(st, n) {
    if (st.done || st.bodyDone || this.closed) return;
    st.unacked += n;
    if (st.unacked >= this.window / 2) {
      const inc = st.unacked;
      st.unacked = 0;
      st.recvWindow += inc;
      this._send(st.id, { windowUpdate: { increment: inc } });
    }
  }

  _onRequestEnd(id) {
    const st = this.streams.get(id);
    if (!st || st.bodyDone) return;
    st.bodyDone = true;
    if (st.bodyQueue) {
      st.bodyQueue.end();
      return;
    }
    const body = st.chunks.length === 1 ? st.chunks[0] : Buffer.concat(st.chunks, st.received);
    const request = new WatchdogRequest(st.envelope, body, st.controller.signal, id);
    st.envelope = null;
    st.chunks = null;
    this._start(st, request);
  }

  _start(st, request) {
    // Called after the frames already read have been handled (pings included), sync or async alike.
    Promise.resolve()
      .then(() => this.handler(request))
      .then(
        (result) => this._respond(st, request, result),
        // A GrpcStatus thrown is a status answered, the same as one returned.
        (err) => (isGrpcStatus(err) ? this._respond(st, request, err) : this._fail(st, request, err)),
      )
      .catch((err) => this._fail(st, request, err));
  }

  _onCancel(id, reason) {
    const st = this.streams.get(id);
    if (!st) return;
    const why = abortReason(reason);
    if (st.bodyQueue) st.bodyQueue.fail(why); // before _finishStream, so the reader learns the real cause
    this._finishStream(st);
    st.controller.abort(why);
  }

  _onWindowUpdate(id, increment) {
    const st = this.streams.get(id);
    if (!st || increment === 0) return;
    st.sendWindow += increment;
    st.wake();
  }

  // ---- responding -------------------------------------------------------------------------------------

  async _respond(st, request, result) {
    if (st.done || this.closed) {
      closeQuietly(result);
      return;
    }
    const plan = planResponse(result, request); // a TypeError here becomes an internal error
    let iterator = null;
    let step = null;
    if (plan.items) {
      iterator = toAsyncIterator(plan.items);
      // The first chunk is awaited before ResponseHead goes, so that a generator failing at once (validation
      // before its first yield) still gets a plain error or a trailers-only status, not a broken stream.
      try {
        step = await iterator.next();
      } catch (err) {
        if (isGrpcStatus(err)) return this._respond(st, request, err);
        return this._fail(st, request, err);
      }
      if (st.done || this.closed) {
        closeIterator(iterator);
        return;
      }
    }
    this._enqueue(this._encodeOrExplain(st.id, { responseHead: plan.head }, 'the response head'));
    if (plan.body && !(await this._sendBody(st, plan.body))) return;
    if (iterator) {
      try {
        while (!step.done) {
          if (!(await this._sendBody(st, chunkBytes(step.value, plan.frame)))) {
            closeIterator(iterator);
            return;
          }
          step = await iterator.next();
        }
      } catch (err) {
        closeIterator(iterator);
        return this._failStreaming(st, request, err, plan);
      }
    }
    this._end(st, plan.trailers);
  }

  /** Sends `body` as Data frames within the stream's credit; false when the stream or connection ended first. */
  async _sendBody(st, body) {
    let off = 0;
    while (off < body.length) {
      if (st.done || this.closed) return false;
      if (st.sendWindow <= 0) {
        await st.waitCredit();
        continue;
      }
      if (this.sock.writableLength >= SOCKET_BACKLOG) {
        await this._socketDrained();
        continue;
      }
      const n = Math.min(this.maxChunk, st.sendWindow, body.length - off);
      this._send(st.id, { data: { data: body.subarray(off, off + n) } });
      st.sendWindow -= n;
      off += n;
    }
    return !(st.done || this.closed);
  }

  _end(st, trailers) {
    if (st.done || this.closed) return;
    this._enqueue(this._encodeOrExplain(st.id, { end: { trailers } }, 'the trailers'));
    this._finishStream(st);
  }

  /** A frame that must fit; if it does not, an error the handler's author can act on (→ internal error). */
  _encodeOrExplain(streamId, fields, what) {
    try {
      return this._encode(streamId, fields);
    } catch (err) {
      if (!(err instanceof RangeError)) throw err;
      throw new Error(`${what} is larger than max_frame_bytes (${this.maxFrame})`);
    }
  }

  /** A streamed response failed after its ResponseHead went out. */
  _failStreaming(st, request, err, plan) {
    if (st.done || this.closed) return;
    if (isGrpcStatus(err)) {
      // gRPC: the status ends the stream in the trailers, after the messages already sent.
      if (request.kind === 'grpc') return this._end(st, statusTrailers(err, plan.trailers));
      if (err.code === 0) return this._end(st, plan.trailers);
      return this._fail(st, request, err, errorKindForCode(err.code));
    }
    return this._fail(st, request, err);
  }

  _fail(st, request, err, kindOverride) {
    if (st.done || this.closed) return;
    const kind = kindOverride || errorKind(err);
    let message;
    try {
      message = err instanceof Error ? String(err.message) : String(err);
    } catch {
      message = 'the handler failed';
    }
    if (kind === 'internal') {
      let detail;
      try {
        detail = err instanceof Error && err.stack ? err.stack : String(err);
      } catch {
        detail = message;
      }
      this.log(`watchdog-sdk: request ${request.requestId || st.id} failed: ${detail}`);
    }
    const max = Math.max(0, Math.min(MAX_ERROR_MESSAGE, this.maxFrame - 64));
    this._send(st.id, { error: { kind: KIND_BY_NAME[kind], message: truncate(message, max) } });
    this._finishStream(st);
  }

  _finishStream(st) {
    if (st.done) return;
    st.done = true;
    this.streams.delete(st.id);
    st.wake();
    // A reader still waiting for request body (left running by the handler) must not wait forever.
    if (st.bodyQueue && !st.bodyQueue.ended) st.bodyQueue.fail(new DOMException('the response has already ended', 'AbortError'));
    this._maybeFinish();
  }

  _maybeFinish() {
    if (this.shuttingDown && this.streams.size === 0) this._shutdown(0);
  }

  // ---- writing ----------------------------------------------------------------------------------------

  /** A frame with its length prefix; RangeError if it exceeds max_frame_bytes. */
  _encode(streamId, fields) {
    const body = Frame.encode({ streamId, ...fields }).finish();
    if (body.length > this.maxFrame) {
      throw new RangeError(`frame of ${body.length} bytes exceeds max_frame_bytes ${this.maxFrame}`);
    }
    const prefix = Buffer.allocUnsafe(4);
    prefix.writeUInt32BE(body.length, 0);
    return [prefix, body];
  }

  _send(streamId, fields) {
    this._enqueue(this._encode(streamId, fields));
  }

  _enqueue([prefix, body]) {
    if (this.closed) return;
    this.outQueue.push(prefix, body);
    this.outQueued += 4 + body.length;
    if (this.outQueued >= FLUSH_BYTES) {
      this._flush();
    } else if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this._flushNow);
    }
  }

  /** Writes everything queued in one corked batch (one writev). */
  _flush() {
    this.flushScheduled = false;
    const q = this.outQueue;
    if (q.length === 0) return;
    this.outQueue = [];
    this.outQueued = 0;
    const sock = this.sock;
    if (!sock || sock.destroyed || !sock.writable) return;
    sock.cork();
    for (const b of q) sock.write(b);
    sock.uncork();
  }

  _socketDrained() {
    if (!this.drainPromise) {
      let resolve;
      const p = new Promise((r) => {
        resolve = r;
      });
      this.drainPromise = { promise: p, resolve };
    }
    return this.drainPromise.promise;
  }

  // ---- the end ----------------------------------------------------------------------------------------

  _protocolError(message) {
    this.log(`watchdog-sdk: protocol error: ${message}`);
    this._shutdown(1, `protocol error: ${message}`, true);
  }

  /** Ends the connection once: stops every handler, flushes what is queued, resolves run() with `code`. */
  _shutdown(code, reason, abrupt = false) {
    if (this.closed) return;
    this.closed = true;
    this.exitCode = code;
    const streams = [...this.streams.values()];
    this.streams.clear();
    for (const st of streams) {
      st.done = true;
      st.wake();
      const why = abortReason(reason || 'connection closed');
      st.controller.abort(why);
      if (st.bodyQueue) st.bodyQueue.fail(why);
    }
    const dp = this.drainPromise;
    this.drainPromise = null;
    if (dp) dp.resolve();
    const sock = this.sock;
    const done = () => this._resolve(code);
    if (abrupt || !sock || sock.destroyed || !sock.writable) {
      this.outQueue = [];
      if (sock && !sock.destroyed) sock.destroy();
      done();
      return;
    }
    const q = this.outQueue;
    this.outQueue = [];
    sock.cork();
    for (const b of q) sock.write(b);
    sock.uncork();
    sock.end(done);
    sock.once('close', done);
  }
}

module.exports = { Connection, PROTOCOL };
