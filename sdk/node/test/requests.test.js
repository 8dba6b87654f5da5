'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { FakeWatchdog, ErrorKind, httpEnvelope, headerMap, sleep } = require('./fake-watchdog');

const T = { timeout: 30000 };

// One worker for the tests that only send requests to it.
let wd;
test.before(async () => {
  wd = await FakeWatchdog.start('app.js');
});
test.after(async () => {
  await wd.close();
});
test.afterEach(() => {
  assert.deepEqual(wd.violations, [], 'the worker broke the protocol');
});

const json = (st) => JSON.parse(st.body.toString('utf8'));

test('an HTTP request reaches the handler with every field', T, async () => {
  const st = await wd.request(
    httpEnvelope({
      method: 'PUT',
      path: '/info/café au lait',
      query: 'a=1&b=%20x&a=2',
      host: 'fn.example:8080',
      requestId: 'call-42',
      deadline: { seconds: 1893456000, nanos: 500000000 },
      trace: { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', tracestate: 'k=v' },
      contentLength: 5,
      headers: [
        ['Content-Type', 'text/plain'],
        ['X-Multi', 'a'],
        ['x-multi', 'b'],
        ['Cookie', 'a=1'],
        ['cookie', 'b=2'],
        ['X-Utf8', 'żółw'],
      ],
    }),
    Buffer.from('hello'),
  );
  assert.equal(st.head.status, 200);
  const r = json(st);
  assert.equal(r.kind, 'http');
  assert.equal(r.method, 'PUT');
  assert.equal(r.path, '/info/café au lait');
  assert.equal(r.rawPath, Buffer.from('/info/café au lait').toString('hex'));
  assert.equal(r.query, 'a=1&b=%20x&a=2');
  assert.equal(r.host, 'fn.example:8080');
  assert.deepEqual(r.headers, {
    'content-type': 'text/plain',
    'x-multi': 'a, b',
    cookie: 'a=1; b=2',
    'x-utf8': 'żółw',
  });
  assert.deepEqual(r.headerKeys, ['content-type', 'x-multi', 'cookie', 'x-utf8']);
  assert.equal(r.getContentType, 'text/plain');
  assert.equal(r.getMissing, null);
  assert.equal(r.hasMulti, true);
  assert.deepEqual(r.rawHeaders, [
    ['Content-Type', 'text/plain'],
    ['X-Multi', 'a'],
    ['x-multi', 'b'],
    ['Cookie', 'a=1'],
    ['cookie', 'b=2'],
    ['X-Utf8', 'żółw'],
  ]);
  assert.equal(r.body, 'hello');
  assert.equal(r.bodyIsBuffer, true);
  assert.equal(r.grpcMethod, null);
  assert.equal(r.event, null);
  assert.equal(r.requestId, 'call-42');
  assert.equal(r.deadline, '2030-01-01T00:00:00.500Z');
  assert.deepEqual(r.trace, { traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', tracestate: 'k=v' });
  assert.equal(r.contentLength, 5);
  assert.equal(r.hasSignal, true);
});

test('no deadline gives null, unknown length gives -1', T, async () => {
  const r = json(await wd.http('/info', ''));
  assert.equal(r.deadline, null);
  assert.equal(r.contentLength, -1);
  assert.equal(r.body, '');
});

test('a gRPC call has kind grpc and grpcMethod', T, async () => {
  const st = await wd.request(
    { request_id: 'g1', content_length: 3, headers: [{ name: 'x-md', value: Buffer.from('v') }], grpc: { method: '/watchdog.v1.Function/Invoke' } },
    Buffer.from([1, 2, 3]),
  );
  const r = json(st);
  assert.equal(r.kind, 'grpc');
  assert.equal(r.grpcMethod, '/watchdog.v1.Function/Invoke');
  assert.equal(r.method, 'POST');
  assert.equal(r.headers['x-md'], 'v');
  assert.equal(r.event, null);
});

test('a sync handler returning a Buffer gives 200 with that body', T, async () => {
  const st = await wd.http('/sync-echo', Buffer.from([0, 1, 2, 255]));
  assert.equal(st.head.status, 200);
  assert.deepEqual(st.head.headers, []);
  assert.deepEqual([...st.body], [0, 1, 2, 255]);
  assert.ok(st.end, 'ends with End');
  assert.equal(st.error, null);
});

test('an async handler returning a Response', T, async () => {
  const st = await wd.http('/echo', 'abc', { headers: [['content-type', 'text/x-test']] });
  assert.equal(st.head.status, 200);
  assert.deepEqual(headerMap(st.head.headers), { 'content-type': 'text/x-test', 'x-len': '3' });
  assert.equal(st.body.toString(), 'abc');
});

test('a string gives 200 with its UTF-8 bytes', T, async () => {
  const st = await wd.http('/string');
  assert.equal(st.head.status, 200);
  assert.equal(st.body.toString('utf8'), 'héllo');
});

test('undefined and null give 202 with no body', T, async () => {
  for (const p of ['/nothing', '/null']) {
    const st = await wd.http(p, 'ignored');
    assert.equal(st.head.status, 202, p);
    assert.equal(st.bodyBytes, 0, p);
    assert.equal(st.frames.filter((f) => f.kind === 'data').length, 0, p);
    assert.ok(st.end, p);
  }
});

test('Response status and headers (repeated values, numbers), positional and options forms', T, async () => {
  let st = await wd.http('/headers');
  assert.equal(st.head.status, 201);
  assert.deepEqual(
    st.head.headers.map((h) => [h.name, Buffer.from(h.value).toString()]),
    [
      ['Content-Type', 'text/plain'],
      ['x-many', 'a'],
      ['x-many', 'b'],
      ['x-num', '7'],
    ],
  );
  assert.equal(st.body.toString(), 'created');
  st = await wd.http('/options');
  assert.equal(st.head.status, 418);
  assert.deepEqual(headerMap(st.head.headers), { 'x-tea': 'pot' });
  assert.equal(st.body.toString(), 'short and stout');
});

test('Response trailers travel in End', T, async () => {
  const st = await wd.http('/trailers');
  assert.deepEqual(headerMap(st.end.trailers), { 'grpc-status': '0' });
  assert.equal(st.body.toString(), 'm');
});

test('PermanentError and RetryableError become Error frames of their kind, with no ResponseHead', T, async () => {
  let st = await wd.http('/permanent');
  assert.equal(st.head, null);
  assert.equal(st.error.kind, ErrorKind.ERROR_KIND_PERMANENT);
  assert.equal(st.error.message, 'bad input: field x is missing');
  st = await wd.http('/retryable');
  assert.equal(st.head, null);
  assert.equal(st.error.kind, ErrorKind.ERROR_KIND_RETRYABLE);
  assert.equal(st.error.message, 'database unavailable');
});

test('any other error is INTERNAL with its message only; the stack goes to stderr', T, async () => {
  const cases = [
    ['/crash', 'boom'],
    ['/crash-async', 'async boom'],
    ['/throw-string', 'just a string'],
  ];
  for (const [p, message] of cases) {
    const st = await wd.http(p);
    assert.equal(st.error.kind, ErrorKind.ERROR_KIND_INTERNAL, p);
    assert.equal(st.error.message, message, p);
    assert.doesNotMatch(st.error.message, /\bat\b|\n/, p);
  }
  await sleep(50);
  assert.match(wd.stderr, /Error: boom\n\s+at /);
  assert.match(wd.stderr, /TypeError: async boom\n\s+at /);
});

test('an unsupported return value or a header with CR/LF is an internal error, not a crash', T, async () => {
  let st = await wd.http('/bad-return');
  assert.equal(st.error.kind, ErrorKind.ERROR_KIND_INTERNAL);
  assert.match(st.error.message, /return a Response, a CloudEvent, a Buffer, a string, or nothing/);
  st = await wd.http('/bad-header');
  assert.equal(st.head, null);
  assert.equal(st.error.kind, ErrorKind.ERROR_KIND_INTERNAL);
  assert.match(st.error.message, /CR, LF or NUL/);
});

const cloudEvent = (type, extra = {}) => ({
  request_id: 'ce-1',
  content_length: -1,
  headers: [{ name: 'traceparent', value: Buffer.from('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01') }],
  cloudevent: {
    id: 'evt-1',
    source: 'urn:test',
    spec_version: '1.0',
    type,
    attributes: {
      subject: { ce_string: 'héllo %41' },
      time: { ce_timestamp: { seconds: 1700000000, nanos: 120000000 } },
      whole: { ce_timestamp: { seconds: 0, nanos: 0 } },
      dataschema: { ce_uri: 'https://example.com/schema' },
      ref: { ce_uri_ref: '/relative/ref' },
      flag: { ce_boolean: true },
      off: { ce_boolean: false },
      count: { ce_integer: -5 },
      blob: { ce_bytes: Buffer.from([1, 2, 3, 250]) },
      datacontenttype: { ce_string: 'application/json' },
    },
    ...extra,
  },
});

test('a CloudEvent reaches the handler with its attributes in canonical string form and its data', T, async () => {
  const st = await wd.request(cloudEvent('test.echo'), Buffer.from('{"x": 1}'));
  assert.equal(st.head.status, 200);
  const r = json(st);
  assert.equal(r.kind, 'cloudevent');
  assert.equal(r.method, 'POST');
  assert.equal(r.grpcMethod, null);
  assert.deepEqual(r.event.attributes, {
    specversion: '1.0',
    id: 'evt-1',
    source: 'urn:test',
    type: 'test.echo',
    blob: 'AQID+g==',
    count: '-5',
    datacontenttype: 'application/json',
    dataschema: 'https://example.com/schema',
    flag: 'true',
    off: 'false',
    ref: '/relative/ref',
    subject: 'héllo %41',
    time: '2023-11-14T22:13:20.12Z',
    whole: '1970-01-01T00:00:00Z',
  });
  assert.equal(r.event.data, '{"x": 1}');
  assert.equal(r.event.dataIsBuffer, true);
  assert.equal(r.body, '{"x": 1}');
  assert.equal(r.headers.traceparent, '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
});

test('a CloudEvent request has the path and query of the HTTP request that carried it', T, async () => {
  const posted = cloudEvent('test.echo');
  posted.transport = { method: 'POST', path: Buffer.from('/events/in'), query: 'x=1', host: 'sink.test' };
  const r = json(await wd.request(posted, Buffer.from('d')));
  assert.deepEqual([r.path, r.query, r.host], ['/events/in', 'x=1', 'sink.test']);
  // Over gRPC (CloudEvents/Send) there is no HTTP request: the root path.
  const sent = json(await wd.request(cloudEvent('test.echo'), Buffer.from('d')));
  assert.deepEqual([sent.path, sent.query], ['/', '']);
});

test('a CloudEvent reply: status 200, reply attributes, data as the body', T, async () => {
  const st = await wd.request(cloudEvent('test.reply'), Buffer.from('order 7'));
  assert.equal(st.head.status, 200);
  const reply = st.head.reply;
  assert.ok(reply, 'ResponseHead.reply is set');
  assert.match(reply.id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(reply.source, '/tests');
  assert.equal(reply.spec_version, '1.0');
  assert.equal(reply.type, 'test.replied');
  const attrs = Object.fromEntries(Object.entries(reply.attributes).map(([k, v]) => [k, [v.attr, v[v.attr]]]));
  assert.deepEqual(attrs, {
    subject: ['ce_string', 'sub-1'],
    count: ['ce_string', '3'],
    datacontenttype: ['ce_string', 'text/plain'],
  });
  assert.equal(st.body.toString(), 're: order 7');
  // Two replies get two different ids.
  const again = await wd.request(cloudEvent('test.reply'), Buffer.from('x'));
  assert.notEqual(again.head.reply.id, reply.id);
});

test('a reply event without attributes gets a fresh id, the request specversion, default source and type', T, async () => {
  const ev = cloudEvent('test.reply-defaults');
  ev.cloudevent.spec_version = '0.3';
  const st = await wd.request(ev, Buffer.from('d'));
  const reply = st.head.reply;
  assert.ok(reply.id.length >= 32);
  assert.equal(reply.spec_version, '0.3');
  assert.equal(reply.source, '/fwatchdog');
  assert.equal(reply.type, 'test.reply-defaults.reply');
  assert.deepEqual(Object.keys(reply.attributes), []);
  assert.equal(st.body.toString(), 'd');
});

test('reply attribute values are put in canonical string form; data is not an attribute', T, async () => {
  const st = await wd.request(cloudEvent('test.reply-values'), Buffer.alloc(0));
  const attrs = Object.fromEntries(Object.entries(st.head.reply.attributes).map(([k, v]) => [k, v.ce_string]));
  assert.deepEqual(attrs, { when: '2024-01-02T03:04:05.600Z', raw: 'AQID', yes: 'true', n: '42' });
  assert.deepEqual([...st.body], [9, 8, 7]);
});

test('CloudEvent data carried inside the message (with an empty body) still reaches the handler', T, async () => {
  const st = await wd.request(cloudEvent('test.echo', { text_data: 'inline' }), Buffer.alloc(0));
  const r = json(st);
  assert.equal(r.event.data, 'inline');
  assert.equal(r.body, 'inline');
  assert.equal(r.path, '/');
});

test('an HTTP request with an empty path is "/"', T, async () => {
  const st = await wd.request({ request_id: 'p', http: { method: 'GET' } }, Buffer.alloc(0));
  assert.equal(st.head.status, 404);
  assert.equal(st.body.toString(), 'no route /');
});

test('a CloudEvent handler returning nothing gives 202 and no reply', T, async () => {
  const st = await wd.request(cloudEvent('test.sink'), Buffer.from('x'));
  assert.equal(st.head.status, 202);
  assert.equal(st.head.reply, null);
  assert.equal(st.bodyBytes, 0);
});

test('a handler writing to stdout does not corrupt frames', T, async () => {
  const results = await Promise.all([wd.http('/stdout', 'one'), wd.http('/stdout', 'two'), wd.http('/string')]);
  assert.deepEqual(
    results.map((st) => st.body.toString()),
    ['one', 'two', 'héllo'],
  );
  await sleep(100);
  assert.match(wd.stdout, /STDOUT-MARKER from the handler/);
  assert.match(wd.stdout, /\x00\x00\x00\x04\x08\x01b\x00\xff\xff\xff\xff/);
  assert.match(wd.stderr, /STDERR-MARKER from the handler/);
});

test('Cancel aborts request.signal and nothing more is sent on that stream', T, async () => {
  const st = wd.open(httpEnvelope({ path: '/wait-cancel', requestId: 'cancel-me' }));
  await wd.sendBody(st, Buffer.from('x'));
  await sleep(100);
  assert.equal(st.frames.length, 0);
  wd.cancel(st, 'client disconnected');
  // Frames that cross the Cancel are ignored by the worker.
  wd.send({ stream_id: st.id, data: { data: Buffer.from('late') } });
  wd.send({ stream_id: st.id, end: {} });
  for (let i = 0; i < 40 && !/aborted cancel-me/.test(wd.stdout); i++) await sleep(25);
  assert.match(wd.stdout, /aborted cancel-me: AbortError: request cancelled by the watchdog: client disconnected/);
  await sleep(200);
  assert.equal(st.afterCancel || 0, 0, 'the worker sent frames after Cancel');
  // The worker is fine afterwards.
  assert.equal((await wd.http('/string')).head.status, 200);
});

test('a handler that ignores Cancel: its late answer is dropped', T, async () => {
  const st = wd.open(httpEnvelope({ path: '/ignore-cancel' }));
  await wd.sendBody(st, Buffer.alloc(0));
  await sleep(50);
  wd.cancel(st, 'deadline exceeded');
  for (let i = 0; i < 40 && !/ignore-cancel handler returned/.test(wd.stdout); i++) await sleep(25);
  assert.match(wd.stdout, /ignore-cancel handler returned/);
  await sleep(200);
  assert.equal(st.afterCancel || 0, 0, 'the worker answered a cancelled stream');
  assert.equal((await wd.http('/string')).head.status, 200);
});
