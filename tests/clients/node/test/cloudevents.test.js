'use strict';
// ng-watchdog as a CloudEvents sink (SPEC section 6), driven by the npm `cloudevents` SDK 10.x against the real
// binary. Events are serialised with HTTP.binary / HTTP.structured and replies parsed with HTTP.toEvent.
//
// Unlike the Python SDK, this one does not percent-encode binary-mode header values: it hands `café` to the
// HTTP client as it is, and decodes nothing it receives. We send such values as raw UTF-8 bytes (what a Go or
// Rust client does with the same string) and expect them to reach the function unchanged.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { CloudEvent, HTTP } = require('cloudevents');

const REPO = path.resolve(__dirname, '../../../..');
const FWATCHDOG = process.env.FWATCHDOG || path.join(REPO, 'target/debug/fwatchdog');

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// One request on a fresh connection. Header values are JS strings and go on the wire as UTF-8 bytes
// (node:http writes Latin-1, so each value is re-spelt as its UTF-8 bytes first).
function request(port, method, urlPath, headers = {}, body = '') {
  const raw = {};
  for (const [name, value] of Object.entries(headers)) {
    raw[name] = Buffer.from(String(value), 'utf8').toString('latin1');
  }
  const payload = Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8');
  raw['content-length'] = String(payload.length);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers: raw, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Starts fwatchdog with `fprocess` and `env` on a free port, its own TMPDIR, metrics off; waits for /_/health.
async function start(t, fprocess, env = {}) {
  if (!fs.existsSync(FWATCHDOG)) {
    throw new Error(`${FWATCHDOG} is missing: run \`cargo build --locked --bin fwatchdog\` first`);
  }
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ngwd-node-'));
  const port = await freePort();
  const logPath = path.join(tmp, 'watchdog.log');
  const log = fs.openSync(logPath, 'w');
  const child = spawn(FWATCHDOG, [], {
    env: {
      PATH: process.env.PATH,
      TMPDIR: tmp,
      port: String(port),
      metrics_port: '0',
      healthcheck_interval: '0',
      fprocess,
      ...env,
    },
    stdio: ['ignore', log, log],
  });
  fs.closeSync(log);
  let exited = null;
  child.on('exit', (code, signal) => (exited = { code, signal }));
  t.after(async () => {
    if (exited === null) {
      const done = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await done;
    }
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  const deadline = Date.now() + 20000;
  for (;;) {
    if (exited) throw new Error(`fwatchdog exited ${JSON.stringify(exited)}: ${fs.readFileSync(logPath, 'utf8')}`);
    try {
      if ((await request(port, 'GET', '/_/health')).status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`fwatchdog not healthy: ${fs.readFileSync(logPath, 'utf8')}`);
    await sleep(20);
  }
  return {
    tmp,
    send: (message) => request(port, 'POST', '/', message.headers, message.body ?? ''),
    post: (headers, body) => request(port, 'POST', '/', headers, body),
    script(body) {
      const p = path.join(tmp, `f${Math.random().toString(36).slice(2)}.sh`);
      fs.writeFileSync(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
      return p;
    },
  };
}

// A function script in its own directory (needed before the watchdog starts).
function scriptFile(t, body) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ngwd-fn-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const p = path.join(dir, 'f.sh');
  fs.writeFileSync(p, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return { path: p, dir };
}

// The reply as the SDK reads it.
function parse(reply) {
  return HTTP.toEvent({ headers: reply.headers, body: reply.body.toString('utf8') });
}

function textEvent(data = 'hello', extra = {}) {
  return new CloudEvent({ type: 'com.example.created', source: '/clients/node', datacontenttype: 'text/plain', data, ...extra });
}

test('binary event: the reply parses with HTTP.toEvent', async (t) => {
  const wd = await start(t, 'cat');
  const sent = textEvent('hello');
  const reply = await wd.send(HTTP.binary(sent));
  assert.equal(reply.status, 200, reply.body.toString());
  const got = parse(reply);
  assert.equal(got.specversion, '1.0');
  assert.ok(got.id && got.id !== sent.id, `fresh id, got ${got.id}`);
  assert.equal(got.source, '/fwatchdog');
  assert.equal(got.type, 'com.example.created.reply');
  assert.equal(got.datacontenttype, 'text/plain');
  assert.equal(got.data, 'hello');
});

test('structured event with JSON data: the reply carries the same JSON', async (t) => {
  const wd = await start(t, 'cat');
  const data = { order: 42, items: [1, 2.5], note: 'crème brûlée' };
  const sent = new CloudEvent({ type: 'com.example.ordered', source: '/clients/node', datacontenttype: 'application/json', data });
  const message = HTTP.structured(sent);
  assert.equal(message.headers['content-type'], 'application/cloudevents+json; charset=utf-8');
  const reply = await wd.send(message);
  assert.equal(reply.status, 200, reply.body.toString());
  const got = parse(reply);
  assert.equal(got.type, 'com.example.ordered.reply');
  assert.equal(got.datacontenttype, 'application/json');
  assert.deepEqual(got.data, data);
});

for (const mode of ['binary', 'structured']) {
  test(`spec 0.3 ${mode} event gets a 0.3 reply`, async (t) => {
    const wd = await start(t, 'cat');
    const sent = textEvent('old', { specversion: '0.3', type: 'com.example.legacy' });
    const reply = await wd.send(HTTP[mode](sent));
    assert.equal(reply.status, 200, reply.body.toString());
    const got = parse(reply);
    assert.equal(got.specversion, '0.3');
    assert.equal(got.type, 'com.example.legacy.reply');
    assert.notEqual(got.id, sent.id);
    assert.equal(got.data, 'old');
  });
}

test('raw UTF-8 and bare % in header values reach the function unchanged', async (t) => {
  const f = scriptFile(t, 'printf "%s|%s" "$CE_SUBJECT" "$CE_DISCOUNT"');
  const wd = await start(t, f.path);
  const sent = textEvent('x', { subject: 'café', discount: '100% sure, 5%zz off' });
  const message = HTTP.binary(sent);
  // The SDK leaves the values as they are: no percent-encoding.
  assert.equal(message.headers['ce-subject'], 'café');
  assert.equal(message.headers['ce-discount'], '100% sure, 5%zz off');
  const reply = await wd.send(message);
  assert.equal(reply.status, 200, reply.body.toString());
  assert.equal(reply.body.toString('utf8'), 'café|100% sure, 5%zz off');
});

test('time reaches the function as the SDK sent it', async (t) => {
  const f = scriptFile(t, 'printf "%s" "$CE_TIME"');
  const wd = await start(t, f.path);
  const message = HTTP.binary(textEvent('x', { time: '2024-05-01T12:00:00.500Z' }));
  assert.equal(message.headers['ce-time'], '2024-05-01T12:00:00.500Z');
  const reply = await wd.send(message);
  assert.equal(reply.body.toString('utf8'), '2024-05-01T12:00:00.500Z');
});

test('reply attributes are percent-encoded; this SDK hands them over still encoded', async (t) => {
  const wd = await start(t, 'cat', { ce_reply_source: '/a b/café' });
  const reply = await wd.send(HTTP.binary(textEvent('x')));
  assert.equal(reply.status, 200);
  for (const [name, value] of Object.entries(reply.headers)) {
    assert.match(String(value), /^[\x20-\x7e]*$/, `header ${name} must be ASCII`);
  }
  const got = parse(reply);
  // The npm SDK does not percent-decode; the value decodes to what was configured.
  assert.equal(decodeURIComponent(got.source), '/a b/café');
});

test('batch: each event one invocation, replies as a batch the SDK parses', async (t) => {
  const order = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'ngwd-order-')), 'order.log');
  t.after(() => fs.rmSync(path.dirname(order), { recursive: true, force: true }));
  const f = scriptFile(t, `echo "$CE_ID" >> ${order}; [ "$CE_ID" = quiet ] && exit 0; printf "r-%s" "$CE_ID"`);
  const wd = await start(t, f.path);
  const events = [textEvent('1', { id: 'a' }), textEvent('2', { id: 'quiet' }), textEvent('3', { id: 'b', specversion: '0.3' })];
  // The SDK has no batch serialiser: a batch is a JSON array of the events' JSON forms.
  const reply = await wd.post({ 'content-type': 'application/cloudevents-batch+json' }, JSON.stringify(events));
  assert.equal(reply.status, 200, reply.body.toString());
  assert.match(reply.headers['content-type'], /^application\/cloudevents-batch\+json/);
  const got = parse(reply);
  assert.ok(Array.isArray(got));
  assert.deepEqual(got.map((e) => e.type), ['com.example.created.reply', 'com.example.created.reply']);
  assert.deepEqual(got.map((e) => e.specversion), ['1.0', '0.3']);
  assert.deepEqual(got.map((e) => Buffer.from(e.data).toString()), ['r-a', 'r-b']);
  assert.equal(fs.readFileSync(order, 'utf8'), 'a\nquiet\nb\n');
});

test('invalid events are 400 or 415 and never reach the function', async (t) => {
  const f = scriptFile(t, 'touch "$TMPDIR/ran"; cat');
  const wd = await start(t, f.path);
  const base = HTTP.binary(textEvent('x'));
  const { 'ce-source': _source, ...noSource } = base.headers;
  let reply = await wd.post(noSource, 'x');
  assert.equal(reply.status, 400);
  assert.match(reply.body.toString(), /source/);
  reply = await wd.post({ ...base.headers, 'ce-id': '' }, 'x');
  assert.equal(reply.status, 400);
  assert.match(reply.body.toString(), /id/);
  reply = await wd.post({ ...base.headers, 'ce-time': 'yesterday' }, 'x');
  assert.equal(reply.status, 400);
  assert.match(reply.body.toString(), /time/);
  reply = await wd.post({ 'content-type': 'application/cloudevents+xml' }, '<event/>');
  assert.equal(reply.status, 415);
  // Invalid UTF-8 after percent-decoding.
  reply = await wd.post({ ...base.headers, 'ce-subject': 'bad %FF byte' }, 'x');
  assert.equal(reply.status, 400);
  assert.ok(!fs.existsSync(path.join(wd.tmp, 'ran')), 'an invalid event reached the function');
});

test('no output is 202 with an empty body; a failing function is 500', async (t) => {
  let wd = await start(t, 'true');
  let reply = await wd.send(HTTP.binary(textEvent('ignored')));
  assert.equal(reply.status, 202);
  assert.equal(reply.body.length, 0);
  assert.equal(reply.headers['ce-id'], undefined);
  const f = scriptFile(t, 'exit 7');
  wd = await start(t, f.path);
  reply = await wd.send(HTTP.binary(textEvent('x')));
  assert.equal(reply.status, 500);
  assert.equal(reply.headers['ce-id'], undefined);
});
