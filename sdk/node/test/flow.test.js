'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { FakeWatchdog, httpEnvelope, sleep, withTimeout } = require('./fake-watchdog');

const T = { timeout: 60000 };
const KiB = 1024;
const MiB = 1024 * KiB;
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');

test('an 8 MiB body both ways, within the windows, in chunks of at most max_chunk_bytes', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  const body = crypto.randomBytes(8 * MiB);
  const st = wd.open(httpEnvelope({ path: '/echo', contentLength: body.length }));
  const sending = wd.sendBody(st, body);
  const waits = await sending;
  await withTimeout(st.done, 30000, 'the 8 MiB echo');
  assert.equal(st.head.status, 200);
  assert.equal(st.bodyBytes, body.length);
  assert.equal(sha(st.body), sha(body));
  // The fake only sent what the worker's window allowed, so the worker had to return credit, many times.
  assert.ok(waits > 0, 'the sender never had to wait for credit');
  assert.ok(st.windowUpdatesFromWorker >= (8 * MiB - 256 * KiB) / (128 * KiB) - 1, `only ${st.windowUpdatesFromWorker} WindowUpdates`);
  const dataFrames = st.frames.filter((f) => f.kind === 'data');
  assert.ok(dataFrames.every((f) => f.data.data.length <= 64 * KiB));
  assert.ok(dataFrames.length >= 128);
  assert.deepEqual(wd.violations, []);
});

test('small limits from HelloAck are obeyed: max_chunk_bytes and initial_window_bytes', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js', { ack: { max_chunk_bytes: 10000, initial_window_bytes: 30000, max_frame_bytes: 65536 } });
  t.after(() => wd.close());
  const body = crypto.randomBytes(500 * KiB);
  const st = wd.open(httpEnvelope({ path: '/echo' }));
  await wd.sendBody(st, body, { chunk: 10000 });
  await withTimeout(st.done, 20000, 'the echo');
  assert.equal(sha(st.body), sha(body));
  const sizes = st.frames.filter((f) => f.kind === 'data').map((f) => f.data.data.length);
  assert.ok(Math.max(...sizes) <= 10000, `a chunk of ${Math.max(...sizes)} bytes`);
  assert.deepEqual(wd.violations, []);
});

test('the worker stops at the window and resumes only on WindowUpdate', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js', { autoWindow: false });
  t.after(() => wd.close());
  const size = 1 * MiB;
  const st = wd.open(httpEnvelope({ path: '/big', query: `size=${size}` }));
  await wd.sendBody(st, Buffer.alloc(0));
  await sleep(500);
  assert.ok(st.head, 'no ResponseHead');
  assert.equal(st.bodyBytes, 256 * KiB, 'the worker should send exactly its initial window, then wait');
  assert.equal(st.finished, false);
  // 100 more bytes of credit: exactly 100 more bytes.
  wd.grant(st.id, 100);
  await sleep(300);
  assert.equal(st.bodyBytes, 256 * KiB + 100);
  wd.grant(st.id, size);
  await withTimeout(st.done, 10000, 'the rest of the body');
  assert.equal(st.bodyBytes, size);
  const expected = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) expected[i] = (i * 31 + 7) & 0xff;
  assert.ok(st.body.equals(expected));
  assert.deepEqual(wd.violations, []);
});

test('one stalled stream does not hold up the others', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js', { autoWindow: false });
  t.after(() => wd.close());
  const stalled = wd.open(httpEnvelope({ path: '/big', query: `size=${MiB}` }));
  await wd.sendBody(stalled, Buffer.alloc(0));
  await sleep(100);
  const quick = await wd.http('/sync-echo', 'still here');
  assert.equal(quick.body.toString(), 'still here');
  assert.equal(stalled.finished, false);
  assert.deepEqual(wd.violations, []);
});

test('the worker returns credit as it reads a request body (WindowUpdate)', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  const st = wd.open(httpEnvelope({ path: '/sync-echo' }));
  // 1 MiB with a 256 KiB window cannot be sent unless the worker grants more.
  await withTimeout(wd.sendBody(st, Buffer.alloc(MiB, 7)), 10000, 'credit from the worker');
  await withTimeout(st.done, 10000, 'the response');
  assert.ok(st.windowUpdatesFromWorker >= 6);
  assert.equal(st.bodyBytes, MiB);
});

test('a watchdog that overruns the window is a protocol error (the worker enforces its window)', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js', { ack: { initial_window_bytes: 16384 } });
  t.after(() => wd.close());
  const st = wd.open(httpEnvelope({ path: '/echo' }));
  wd.send({ stream_id: st.id, data: { data: Buffer.alloc(16384) } }); // exactly the window: fine
  await sleep(200);
  assert.equal(wd.exitInfo, null, 'a Data frame of exactly the window was refused');
  wd.send({ stream_id: st.id, data: { data: Buffer.alloc(20000) } }); // the worker granted 16384 more, not 20000
  const { code } = await wd.waitExit();
  assert.equal(code, 1);
  assert.match(wd.stderr, /protocol error: Data of 20000 bytes on stream 1 exceeds its window of 16384 bytes/);
});

test('64 concurrent requests on one worker', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  const t0 = Date.now();
  const results = await Promise.all(
    Array.from({ length: 64 }, (_, i) => wd.http('/sleep', `request ${i} `.repeat(i + 1), { query: 'ms=300', requestId: `r${i}` })),
  );
  const elapsed = Date.now() - t0;
  results.forEach((st, i) => {
    assert.equal(st.head.status, 200);
    assert.equal(st.body.toString(), `request ${i} `.repeat(i + 1));
  });
  // One after the other would take 64 × 300 ms.
  assert.ok(elapsed < 3000, `64 requests took ${elapsed} ms`);
  assert.deepEqual(wd.violations, []);
});

test('frames are coalesced: many responses arrive in far fewer socket reads than frames', T, async (t) => {
  const wd = await FakeWatchdog.start('app.js');
  t.after(() => wd.close());
  const reads0 = wd.socketReads;
  const frames0 = wd.framesReceived;
  // All 64 handlers finish in the same tick: their 64 × 3 frames should go out together.
  const envs = Array.from({ length: 64 }, (_, i) => httpEnvelope({ path: '/string', requestId: `c${i}` }));
  const streams = envs.map((env) => wd.open(env));
  for (const st of streams) wd.send({ stream_id: st.id, end: {} });
  await Promise.all(streams.map((st) => withTimeout(st.done, 10000, 'a response')));
  const frames = wd.framesReceived - frames0;
  const reads = wd.socketReads - reads0;
  assert.equal(frames, 64 * 3);
  assert.ok(reads <= 16, `${frames} frames took ${reads} socket reads`);
});

test('examples/http-node/echo.js echoes the body and its content type', T, async (t) => {
  const path = require('node:path');
  const wd = await FakeWatchdog.start(path.resolve(__dirname, '../../../examples/http-node/echo.js'));
  t.after(() => wd.close());
  const body = crypto.randomBytes(300 * KiB);
  const st = await wd.http('/anything', body, { headers: [['Content-Type', 'image/png']] });
  assert.equal(st.head.status, 200);
  assert.equal(Buffer.from(st.head.headers[0].value).toString(), 'image/png');
  assert.ok(st.body.equals(body));
  wd.send({ stream_id: 0, shutdown: {} });
  assert.equal((await wd.waitExit()).code, 0);
  assert.deepEqual(wd.violations, []);
});
