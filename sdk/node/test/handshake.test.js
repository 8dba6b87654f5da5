'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { FakeWatchdog, Long, sleep, encodeFrame, num, httpEnvelope } = require('./fake-watchdog');
const pkg = require('../package.json');

const T = { timeout: 30000 };

test('Hello carries protocol, SDK name and version, max_concurrency; Ready only after HelloAck', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js', { handshake: false, env: { TEST_CONCURRENCY: '7' } });
  t.after(() => wd.close());
  const hello = await wd.nextConnFrame('hello');
  assert.equal(num(hello.stream_id), 0);
  assert.deepEqual(
    { ...hello.hello },
    { protocol: 'watchdog.v1', sdk_name: 'watchdog-sdk-node', sdk_version: pkg.version, max_concurrency: 7 },
  );
  // Without a HelloAck, the worker must not declare itself ready.
  await sleep(300);
  assert.equal(wd.connFrames.filter((f) => f.kind === 'ready').length, 0, 'Ready sent before HelloAck');
  wd.send({ stream_id: 0, hello_ack: { max_frame_bytes: 1 << 21, max_chunk_bytes: 1 << 16, initial_window_bytes: 1 << 18, worker_id: 1 } });
  const ready = await wd.nextConnFrame('ready');
  assert.equal(num(ready.stream_id), 0);
  const res = await wd.http('/string');
  assert.equal(res.head.status, 200);
  assert.deepEqual(wd.violations, []);
});

test('max_concurrency defaults to 0 (no limit)', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  assert.equal(wd.hello.max_concurrency, 0);
  assert.equal(wd.hello.protocol, 'watchdog.v1');
});

test('a failing init sends InitError with its message, no Ready, and exits 1', T, async (t) => {
  const wd = await FakeWatchdog.start('init-fail.js', { handshake: false });
  t.after(() => wd.close());
  await wd.nextConnFrame('hello');
  wd.send({ stream_id: 0, hello_ack: { max_frame_bytes: 1 << 21, max_chunk_bytes: 1 << 16, initial_window_bytes: 1 << 18, worker_id: 1 } });
  const f = await wd.nextConnFrame('init_error');
  assert.equal(f.init_error.message, 'model file /models/x.bin is missing');
  const { code } = await wd.waitExit();
  assert.equal(code, 1);
  assert.equal(wd.readySeen, false);
});

test('serve() with something that is not a function reports InitError', T, async (t) => {
  const wd = await FakeWatchdog.start('not-a-function.js', { handshake: false });
  t.after(() => wd.close());
  await wd.nextConnFrame('hello');
  wd.send({ stream_id: 0, hello_ack: {} });
  const f = await wd.nextConnFrame('init_error');
  assert.match(f.init_error.message, /handler function/);
  assert.equal((await wd.waitExit()).code, 1);
});

test('pings are answered during a slow init, and Ready follows it', T, async (t) => {
  const wd = await FakeWatchdog.start('slow-init.js', { handshake: false });
  t.after(() => wd.close());
  await wd.nextConnFrame('hello');
  wd.send({ stream_id: 0, hello_ack: {} });
  const t0 = Date.now();
  wd.send({ stream_id: 0, ping: { nonce: 42 } });
  const pong = await wd.nextConnFrame('pong');
  assert.equal(num(pong.pong.nonce), 42);
  assert.ok(Date.now() - t0 < 300, 'pong waited for init');
  assert.equal(wd.readySeen, false, 'Ready before init finished');
  await wd.nextConnFrame('ready');
  assert.ok(Date.now() - t0 >= 350);
  const res = await wd.http('/');
  assert.equal(res.body.toString(), 'loaded');
});

test('Ping is answered from the I/O loop while a handler is busy, with the exact 64-bit nonce', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  const st = wd.open(httpEnvelope({ path: '/busy' }));
  await wd.sendBody(st, Buffer.alloc(0));
  await sleep(100);
  const nonce = Long.fromString('18446744073709551615', true);
  const t0 = Date.now();
  wd.send({ stream_id: 0, ping: { nonce } });
  const pong = await wd.nextConnFrame('pong', 1000);
  const elapsed = Date.now() - t0;
  assert.equal(Long.fromValue(pong.pong.nonce).toUnsigned().toString(), '18446744073709551615');
  assert.ok(elapsed < 500, `pong took ${elapsed} ms`);
  assert.equal(st.finished, false, 'the busy handler should still be running');
  await st.done;
  assert.equal(st.body.toString(), 'done');
  assert.deepEqual(wd.violations, []);
});

test('Shutdown finishes the open requests, then the worker exits 0', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  const st = wd.open(httpEnvelope({ path: '/sleep', query: 'ms=400' }));
  await wd.sendBody(st, Buffer.from('finish me'));
  await sleep(50);
  wd.send({ stream_id: 0, shutdown: { grace_ms: 10000 } });
  let exitedBeforeResponse = false;
  wd.exited.then(() => {
    if (!st.finished) exitedBeforeResponse = true;
  });
  await st.done;
  assert.equal(st.head.status, 200);
  assert.equal(st.body.toString(), 'finish me');
  const { code, signal } = await wd.waitExit();
  assert.equal(exitedBeforeResponse, false);
  assert.equal(code, 0);
  assert.equal(signal, null);
  assert.deepEqual(wd.violations, []);
});

test('an idle worker exits 0 at once on Shutdown', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  const t0 = Date.now();
  wd.send({ stream_id: 0, shutdown: { grace_ms: 10000 } });
  const { code } = await wd.waitExit();
  assert.equal(code, 0);
  assert.ok(Date.now() - t0 < 2000);
});

test('the watchdog closing the socket makes the worker exit 0 and aborts running handlers', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  const st = wd.open(httpEnvelope({ path: '/wait-cancel', requestId: 'gone' }));
  await wd.sendBody(st, Buffer.alloc(0));
  await sleep(100);
  wd.conn.end();
  const { code } = await wd.waitExit();
  assert.equal(code, 0);
  assert.match(wd.stdout, /aborted gone: AbortError/);
});

test('Drain: the open requests finish, and the worker stays up until Shutdown', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  const st = wd.open(httpEnvelope({ path: '/sleep', query: 'ms=200' }));
  await wd.sendBody(st, Buffer.from('drained'));
  wd.send({ stream_id: 0, drain: {} });
  await st.done;
  assert.equal(st.body.toString(), 'drained');
  await sleep(200);
  assert.equal(wd.exitInfo, null, 'the worker exited on Drain');
  // A request that crosses the Drain is refused as retryable rather than run.
  const late = await wd.http('/string');
  assert.equal(late.error.kind, 2);
  wd.send({ stream_id: 0, shutdown: {} });
  assert.equal((await wd.waitExit()).code, 0);
});

test('a frame longer than max_frame_bytes is a protocol error: the worker exits non-zero', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js', { ack: { max_frame_bytes: 1 << 20 } });
  t.after(() => wd.close());
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE((1 << 20) + 1, 0);
  wd.sendRaw(prefix);
  const { code } = await wd.waitExit();
  assert.equal(code, 1);
  assert.match(wd.stderr, /protocol error: frame of 1048577 bytes/);
});

test('a frame without a kind is a protocol error', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  wd.sendRaw(encodeFrame({ stream_id: 0 }));
  assert.equal((await wd.waitExit()).code, 1);
  assert.match(wd.stderr, /frame without a kind/);
});

test('frames for unknown or finished streams are ignored', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  const first = await wd.http('/string');
  assert.equal(first.head.status, 200);
  // Never-opened stream 999, and the finished stream 1.
  for (const id of [999, first.id]) {
    wd.send({ stream_id: id, data: { data: Buffer.from('stray') } });
    wd.send({ stream_id: id, window_update: { increment: 1000 } });
    wd.send({ stream_id: id, cancel: { reason: 'stray' } });
    wd.send({ stream_id: id, end: {} });
  }
  // A RequestHead reusing a finished id is not a new request.
  wd.send({ stream_id: first.id, request_head: { envelope: { request_id: 'again', http: { method: 'GET', path: Buffer.from('/string') } } } });
  wd.send({ stream_id: first.id, end: {} });
  await sleep(300);
  const second = await wd.http('/string');
  assert.equal(second.body.toString(), 'héllo');
  assert.equal(wd.exitInfo, null);
  assert.deepEqual(wd.violations, []);
});
