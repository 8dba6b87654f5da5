'use strict';
// gRPC calls end to end against the fake watchdog: request details and metadata, message splitting, GrpcStatus
// as trailers, streamed responses (server streaming) and bodies read as they arrive (client streaming).
const test = require('node:test');
const assert = require('node:assert/strict');
const { FakeWatchdog, ErrorKind, grpcEnvelope, httpEnvelope, frameMessages, unframeMessages, headerMap, sleep, withTimeout } = require('./fake-watchdog');

const T = { timeout: 30000 };
const KiB = 1024;

let wd;
test.before(async () => {
  wd = await FakeWatchdog.start('grpc-app.js');
});
test.after(async () => {
  await wd.close();
});
test.afterEach(() => {
  assert.deepEqual(wd.violations, [], 'the worker broke the protocol');
});

const call = (method, body = Buffer.alloc(0), opts = {}) => wd.request(grpcEnvelope(method, opts), body);
const text = (bufs) => bufs.map((b) => b.toString('utf8'));

// ---- the request -----------------------------------------------------------------------------------------

test('a unary call: request.grpc, metadata (= headers), transport, host and the one message', T, async () => {
  const st = await call('/test.Echo/Describe', Buffer.from('raw message'), { headers: [['x-user', 'ada'], ['x-multi', '1'], ['x-multi', '2']] });
  assert.equal(st.head.status, 200);
  const r = JSON.parse(st.body.toString());
  assert.equal(r.kind, 'grpc');
  assert.deepEqual(r.grpc, { method: '/test.Echo/Describe', clientStreaming: false, serverStreaming: false });
  assert.equal(r.grpcMethod, '/test.Echo/Describe');
  assert.equal(r.path, '/test.Echo/Describe');
  assert.equal(r.metadataIsHeaders, true);
  assert.equal(r.user, 'ada');
  assert.deepEqual(r.metadata, { 'content-type': 'application/grpc', te: 'trailers', 'x-user': 'ada', 'x-multi': '1, 2' });
  assert.equal(r.host, 'fn.example:8080');
  assert.deepEqual(r.transport, {
    method: 'POST',
    path: '/test.Echo/Describe',
    rawPath: Buffer.from('/test.Echo/Describe').toString('hex'),
    query: '',
    host: 'fn.example:8080',
    version: 'HTTP/2.0',
  });
  // Unary: the body is the message, whatever its bytes look like (no framing to strip).
  assert.deepEqual(r.messages, ['raw message']);
});

test('the streaming flags reach the handler; a client-streaming body is split into its messages', T, async () => {
  const body = frameMessages('first', '', 'third message');
  const st = await call('/test.Echo/Describe', body, { clientStreaming: true, serverStreaming: true });
  // server_streaming: the JSON answer is itself one framed message.
  const [answer] = unframeMessages(st.body);
  const r = JSON.parse(answer.toString());
  assert.deepEqual(r.grpc, { method: '/test.Echo/Describe', clientStreaming: true, serverStreaming: true });
  assert.deepEqual(r.messages, ['first', '', 'third message']);
});

test('without transport, request.transport is null and host empty', T, async () => {
  const st = await call('/test.Echo/Describe', Buffer.from('m'), { transport: false });
  const r = JSON.parse(st.body.toString());
  assert.equal(r.transport, null);
  assert.equal(r.host, '');
});

test('grpcMessages() on a plain HTTP request is an internal error naming the cause', T, async () => {
  const st = await wd.http('/messages-on-http', 'x');
  assert.equal(st.error.kind, ErrorKind.ERROR_KIND_INTERNAL);
  assert.match(st.error.message, /grpcMessages\(\) is for gRPC calls; this request is http/);
});

// ---- unary answers, metadata, GrpcStatus -----------------------------------------------------------------

test('unary: raw response message, headers as initial metadata, trailers as trailing metadata', T, async () => {
  const st = await call('/test.Greeter/SayHello', Buffer.from('ada'));
  assert.equal(st.head.status, 200);
  assert.deepEqual(headerMap(st.head.headers), { 'x-greeter': 'node' });
  assert.equal(st.body.toString(), 'hello ada');
  assert.deepEqual(headerMap(st.end.trailers), { 'x-served-by': 'watchdog-sdk-node' });
});

test('a thrown GrpcStatus: trailers grpc-status, grpc-message (one line) and its own, overriding grpc-status', T, async () => {
  const st = await call('/test.Greeter/Throw');
  assert.equal(st.error, null, 'a status is an answer, not an Error frame');
  assert.equal(st.head.status, 200);
  assert.equal(st.bodyBytes, 0);
  assert.deepEqual(
    st.end.trailers.map((h) => [h.name, Buffer.from(h.value).toString('utf8')]),
    [
      ['grpc-status', '5'],
      ['grpc-message', 'no such greeter: żółw'],
      ['x-detail', 'd1'],
    ],
  );
});

test('a returned GrpcStatus (code given by name), and OK without a message', T, async () => {
  let st = await call('/test.Greeter/Return');
  assert.deepEqual(headerMap(st.end.trailers), { 'grpc-status': '7', 'grpc-message': 'nope' });
  st = await call('/test.Greeter/ReturnOk');
  assert.deepEqual(headerMap(st.end.trailers), { 'grpc-status': '0' });
});

test('an unknown method answered with UNIMPLEMENTED', T, async () => {
  const st = await call('/test.Nope/Missing');
  assert.deepEqual(headerMap(st.end.trailers), { 'grpc-status': '12', 'grpc-message': 'unknown method /test.Nope/Missing' });
});

test('returning nothing from a gRPC handler is OK with an empty message, not 202', T, async () => {
  let st = await call('/test.Greeter/Nothing');
  assert.equal(st.head.status, 200);
  assert.equal(st.bodyBytes, 0);
  st = await call('/test.Greeter/Nothing', Buffer.alloc(0), { serverStreaming: true });
  assert.equal(st.head.status, 200);
  assert.equal(st.bodyBytes, 0, 'no message at all on a server stream');
});

test('errors keep their Error frames: PermanentError before the first chunk gives no ResponseHead', T, async () => {
  const st = await call('/test.Greeter/FailFirst', Buffer.alloc(0), { serverStreaming: true });
  assert.equal(st.head, null);
  assert.equal(st.error.kind, ErrorKind.ERROR_KIND_PERMANENT);
  assert.equal(st.error.message, 'name is required');
});

test('a GrpcStatus thrown before the first chunk (sync generator) is a trailers-only answer', T, async () => {
  const st = await call('/test.Greeter/StatusFirst', Buffer.alloc(0), { serverStreaming: true });
  assert.equal(st.bodyBytes, 0);
  assert.deepEqual(headerMap(st.end.trailers), { 'grpc-status': '9', 'grpc-message': 'not yet' });
});

test('GrpcStatus on plain HTTP: the matching HTTP status with the message as body', T, async () => {
  let st = await wd.http('/grpc-status');
  assert.equal(st.head.status, 404);
  assert.equal(st.body.toString(), 'gone');
  st = await wd.http('/grpc-status-ok');
  assert.equal(st.head.status, 200);
});

// ---- streamed responses -----------------------------------------------------------------------------------

test('server streaming: each message framed and sent as produced, several Data frames before End', T, async () => {
  const st = wd.open(grpcEnvelope('/test.Greeter/SayHellos', { serverStreaming: true }));
  await wd.sendBody(st, Buffer.from('ada'));
  const t0 = Date.now();
  await st.until((s) => s.dataFrames.length >= 1, 5000, 'the first message');
  assert.equal(st.finished, false, 'the first message came only with End');
  assert.deepEqual(headerMap(st.head.headers), { 'x-greeter': 'node' });
  assert.equal(st.dataFrames.length, 1);
  await st.until((s) => s.dataFrames.length >= 2, 5000, 'the second message');
  assert.equal(st.finished, false);
  await withTimeout(st.done, 5000, 'End');
  assert.ok(Date.now() - t0 >= 250, 'the messages were not spread out in time');
  assert.equal(st.dataFrames.length, 3);
  assert.deepEqual(text(unframeMessages(st.body)), ['hello ada #1', 'hello ada #2', 'hello ada #3']);
  // Every Data frame holds exactly one whole message, so the watchdog can forward each as it comes.
  assert.deepEqual(st.dataFrames.map((f) => unframeMessages(Buffer.from(f.data.data)).length), [1, 1, 1]);
  assert.ok(st.end);
});

test('server streaming from a returned array; an explicit empty body is one empty message', T, async () => {
  let st = await call('/test.Greeter/Array', Buffer.alloc(0), { serverStreaming: true });
  assert.deepEqual(text(unframeMessages(st.body)), ['a', 'bb', 'ccc']);
  st = await call('/test.Greeter/Empty', Buffer.alloc(0), { serverStreaming: true });
  assert.deepEqual([...st.body], [0, 0, 0, 0, 0]);
  st = await call('/test.Greeter/Empty');
  assert.equal(st.bodyBytes, 0, 'unary: the empty message is the empty body');
});

test('a GrpcStatus thrown after messages ends the stream with it, plus the Response trailers', T, async () => {
  const st = await call('/test.Greeter/StreamThenStatus', Buffer.alloc(0), { serverStreaming: true });
  assert.equal(st.error, null);
  assert.deepEqual(text(unframeMessages(st.body)), ['one', 'two']);
  assert.deepEqual(
    st.end.trailers.map((h) => [h.name, Buffer.from(h.value).toString()]),
    [
      ['grpc-status', '10'],
      ['grpc-message', 'stopped after two'],
      ['x-t', '1'],
    ],
  );
});

test('any other error after messages is an Error frame after the ResponseHead; the worker lives on', T, async () => {
  let st = await call('/test.Greeter/StreamThenCrash', Buffer.alloc(0), { serverStreaming: true });
  assert.ok(st.head);
  assert.deepEqual(text(unframeMessages(st.body)), ['one']);
  assert.equal(st.error.kind, ErrorKind.ERROR_KIND_INTERNAL);
  assert.equal(st.error.message, 'kaput');
  st = await call('/test.Greeter/BadChunk', Buffer.alloc(0), { serverStreaming: true });
  assert.equal(st.error.kind, ErrorKind.ERROR_KIND_INTERNAL);
  assert.match(st.error.message, /a streamed chunk must be a Buffer, Uint8Array or string, not a plain object/);
  assert.equal((await call('/test.Greeter/SayHello', Buffer.from('again'))).body.toString(), 'hello again');
});

test('a streamed response waits for credit: it stops at the window and resumes on WindowUpdate', T, async (t) => {
  const slow = await FakeWatchdog.start('grpc-app.js', { autoWindow: false });
  t.after(() => slow.close());
  const st = slow.open(grpcEnvelope('/test.Greeter/Big', { serverStreaming: true }));
  await slow.sendBody(st, Buffer.alloc(0));
  await sleep(400);
  assert.equal(st.bodyBytes, 256 * KiB, 'the worker should send exactly its window, then wait');
  assert.equal(st.finished, false);
  slow.grant(st.id, 8 * 101 * KiB);
  await withTimeout(st.done, 10000, 'the rest of the stream');
  const messages = unframeMessages(st.body);
  assert.equal(messages.length, 8);
  messages.forEach((m, i) => assert.ok(m.equals(Buffer.alloc(100 * KiB, i)), `message ${i}`));
  assert.deepEqual(slow.violations, []);
});

test('Cancel stops a streamed response and closes the generator (its finally runs)', T, async () => {
  const st = wd.open(grpcEnvelope('/test.Greeter/Endless', { serverStreaming: true }));
  await wd.sendBody(st, Buffer.alloc(0));
  await st.until((s) => s.dataFrames.length >= 3, 5000, 'some ticks');
  wd.cancel(st);
  for (let i = 0; i < 40 && !/endless generator closed/.test(wd.stdout); i++) await sleep(25);
  assert.match(wd.stdout, /endless generator closed, aborted=true/);
  await sleep(100);
  assert.equal(st.afterCancel || 0, 0);
});

test('HTTP responses stream too: chunks as Data frames as they are produced', T, async () => {
  const st = wd.open(httpEnvelope({ path: '/stream' }));
  await wd.sendBody(st, Buffer.alloc(0));
  await st.until((s) => s.dataFrames.length >= 1, 5000, 'the first line');
  assert.equal(st.finished, false);
  await withTimeout(st.done, 5000, 'End');
  assert.deepEqual(text(st.dataFrames.map((f) => Buffer.from(f.data.data))), ['line 1\n', 'line 2\n']);
  assert.deepEqual(headerMap(st.head.headers), { 'content-type': 'text/plain' });
});

test('a non-OK GrpcStatus during an HTTP stream becomes an Error frame of the matching kind', T, async () => {
  const st = await wd.http('/stream-then-unavailable');
  assert.equal(st.body.toString(), 'partial');
  assert.equal(st.error.kind, ErrorKind.ERROR_KIND_RETRYABLE);
  assert.equal(st.error.message, 'backend went away');
});

test('an async generator function as the handler', T, async (t) => {
  const gen = await FakeWatchdog.start('generator-handler.js');
  t.after(() => gen.close());
  const st = await gen.http('/', '', { query: 'n=3' });
  assert.equal(st.head.status, 200);
  assert.deepEqual(text(st.dataFrames.map((f) => Buffer.from(f.data.data))), ['3\n', '2\n', '1\n']);
  assert.deepEqual(gen.violations, []);
});

// ---- client streaming: the body as it arrives -----------------------------------------------------------------

test('client streaming: messages() yields each message, also when split across Data frames', T, async () => {
  const st = wd.open(grpcEnvelope('/test.Chat/Collect', { clientStreaming: true }));
  const body = frameMessages('alpha', 'x'.repeat(70 * KiB), '', 'omega');
  // Small Data frames, so messages and even prefixes straddle frames.
  await wd.sendBody(st, body, { chunk: 3 });
  await withTimeout(st.done, 10000, 'the answer');
  const got = JSON.parse(st.body.toString());
  assert.deepEqual(got, ['alpha', 'x'.repeat(70 * KiB), '', 'omega']);
});

test('bidirectional: each request message is answered before the next one is sent', T, async () => {
  const st = wd.open(grpcEnvelope('/test.Chat/Bidi', { clientStreaming: true, serverStreaming: true }));
  for (let i = 1; i <= 3; i++) {
    await wd.sendBody(st, frameMessages(`m${i}`), { end: false });
    await st.until((s) => s.dataFrames.length >= i, 5000, `the answer to message ${i}`);
    assert.equal(st.finished, false);
  }
  wd.send({ stream_id: st.id, end: {} });
  await withTimeout(st.done, 5000, 'End');
  assert.deepEqual(text(unframeMessages(st.body)), ['echo: m1', 'echo: m2', 'echo: m3']);
  assert.ok(st.end);
});

test('a truncated client-streaming body is a PERMANENT error naming the truncation', T, async () => {
  const truncated = frameMessages('ok', 'cut short').subarray(0, 7 + 5 + 3);
  const st = await call('/test.Chat/Collect', truncated, { clientStreaming: true });
  assert.equal(st.error.kind, ErrorKind.ERROR_KIND_PERMANENT);
  assert.match(st.error.message, /^truncated gRPC message: message 2 \(at byte 7\) declares 9 bytes but only 3 arrived$/);
});

test('a compressed client message is UNIMPLEMENTED', T, async () => {
  const body = frameMessages('zz');
  body[0] = 1;
  const st = await call('/test.Chat/Collect', body, { clientStreaming: true });
  assert.equal(headerMap(st.end.trailers)['grpc-status'], '12');
});

test('credit for a streamed request goes back only as the handler reads it', T, async () => {
  const st = wd.open(grpcEnvelope('/test.Chat/Slow', { clientStreaming: true }));
  const sending = wd.sendBody(st, Buffer.alloc(1024 * KiB, 1));
  await sleep(300);
  // The handler sleeps before reading: the worker has granted nothing beyond the initial window.
  assert.equal(st.windowUpdatesFromWorker, 0);
  assert.equal(st.sendWindow, 0, 'the fake should have used up the whole window');
  await withTimeout(sending, 10000, 'the body to be sent');
  await withTimeout(st.done, 10000, 'the answer');
  assert.equal(st.body.toString(), String(1024 * KiB));
  assert.ok(st.windowUpdatesFromWorker >= 6);
});

test('InvokeStream: raw chunks in and out, no gRPC framing', T, async () => {
  const st = wd.open(grpcEnvelope('/watchdog.v1.Function/InvokeStream', { clientStreaming: true, serverStreaming: true }));
  await wd.sendBody(st, Buffer.from('abc'), { end: false });
  await st.until((s) => s.dataFrames.length >= 1, 5000, 'the first chunk');
  await wd.sendBody(st, Buffer.from('def'), { end: true });
  await withTimeout(st.done, 5000, 'End');
  assert.deepEqual(text(st.dataFrames.map((f) => Buffer.from(f.data.data))), ['ABC', 'DEF']);
});

test('Invoke: the raw body in, the raw answer out', T, async () => {
  const st = await call('/watchdog.v1.Function/Invoke', Buffer.from('shout'));
  assert.equal(st.body.toString(), 'SHOUT');
});

test('reading request.body of a client-streaming call too early is an internal error with guidance', T, async () => {
  // Whether the body has arrived by then or not (here it has, with the head), so it never works by luck.
  let st = await call('/test.Chat/ReadBodyEarly', frameMessages('x'), { clientStreaming: true });
  assert.equal(st.error.kind, ErrorKind.ERROR_KIND_INTERNAL);
  assert.match(st.error.message, /still arriving; use `for await \(const m of request\.messages\(\)\)` or `await request\.bytes\(\)` first/);
  st = await call('/test.Chat/ReadTwice', Buffer.alloc(0), { clientStreaming: true });
  assert.match(st.error.message, /already being read/);
});

test('Cancel rejects a pending messages() read with the AbortError', T, async () => {
  const st = wd.open(grpcEnvelope('/test.Chat/WaitCancel', { clientStreaming: true }));
  await wd.sendBody(st, frameMessages('first'), { end: false });
  for (let i = 0; i < 40 && !/got first/.test(wd.stdout); i++) await sleep(25);
  wd.cancel(st, 'client disconnected');
  for (let i = 0; i < 40 && !/reader stopped/.test(wd.stdout); i++) await sleep(25);
  assert.match(wd.stdout, /reader stopped: AbortError: request cancelled by the watchdog: client disconnected/);
  await sleep(100);
  assert.equal(st.afterCancel || 0, 0);
});

test('the README Greeter example: unary, server streaming, client streaming, a status', T, async (t) => {
  const protobuf = require('protobufjs');
  const root = protobuf.parse('syntax = "proto3"; message HelloRequest { string name = 1; } message HelloReply { string message = 1; }').root;
  const req = (name) => Buffer.from(root.lookupType('HelloRequest').encode({ name }).finish());
  const msg = (b) => root.lookupType('HelloReply').decode(b).message;
  const g = await FakeWatchdog.start('greeter.js');
  t.after(() => g.close());

  let st = await g.request(grpcEnvelope('/helloworld.Greeter/SayHello'), req('Ada'));
  assert.equal(msg(st.body), 'Hello Ada');
  assert.deepEqual(headerMap(st.head.headers), { 'x-greeter': 'node' });

  st = await g.request(grpcEnvelope('/helloworld.Greeter/SayHello'), req(''));
  assert.deepEqual(headerMap(st.end.trailers), { 'grpc-status': '3', 'grpc-message': 'name is required' });

  st = g.open(grpcEnvelope('/helloworld.Greeter/SayHellos', { serverStreaming: true }));
  await g.sendBody(st, req('Bob'));
  await st.until((s) => s.dataFrames.length >= 1, 5000, 'the first reply');
  assert.equal(st.finished, false);
  await withTimeout(st.done, 10000, 'the last reply');
  assert.deepEqual(unframeMessages(st.body).map(msg), ['Hello Bob #1', 'Hello Bob #2', 'Hello Bob #3']);

  st = await g.request(grpcEnvelope('/helloworld.Greeter/SayHelloToAll', { clientStreaming: true }), frameMessages(req('a'), req('b'), req('c')));
  assert.equal(msg(st.body), 'Hello a, b, c');

  st = await g.request(grpcEnvelope('/helloworld.Greeter/Nope'), Buffer.alloc(0));
  assert.equal(headerMap(st.end.trailers)['grpc-status'], String(12));
  assert.deepEqual(g.violations, []);
});
