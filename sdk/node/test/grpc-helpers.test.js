'use strict';
// The gRPC helpers on their own (no worker), and the generated descriptor against the current .proto files.
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const sdk = require('..');
const { Frame: SdkFrame } = require('../lib/proto');
const { Frame: ProtoFrame } = require('./fake-watchdog');

const { GrpcStatus, StatusCode, grpcFrame, splitGrpcMessages, GrpcMessageDecoder, PermanentError } = sdk;

test('lib/watchdog.json is what generate.sh makes from the current protos', () => {
  const here = path.resolve(__dirname, '..');
  const proto = path.resolve(here, '../../proto');
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'wd-gen-')), 'watchdog.json');
  execFileSync(path.join(here, 'node_modules/.bin/pbjs'), [
    '-t', 'json', '-p', proto, '-o', out,
    `${proto}/watchdog/v1/frame.proto`, `${proto}/watchdog/v1/envelope.proto`, `${proto}/io/cloudevents/v1/cloudevents.proto`,
  ]);
  assert.deepEqual(JSON.parse(fs.readFileSync(out, 'utf8')), require('../lib/watchdog.json'), 'run sdk/node/generate.sh');
  fs.rmSync(path.dirname(out), { recursive: true, force: true });
});

test('the regenerated fields decode: GrpcCall streaming flags and Envelope.transport', () => {
  const bytes = ProtoFrame.encode(
    ProtoFrame.fromObject({
      stream_id: 5,
      request_head: {
        envelope: {
          request_id: 'r',
          grpc: { method: '/a.B/C', client_streaming: true, server_streaming: true },
          transport: { method: 'POST', path: Buffer.from('/a.B/C'), host: 'h:1', version: 'HTTP/2.0' },
        },
      },
    }),
  ).finish();
  const env = SdkFrame.decode(bytes).requestHead.envelope;
  assert.equal(env.grpc.method, '/a.B/C');
  assert.equal(env.grpc.clientStreaming, true);
  assert.equal(env.grpc.serverStreaming, true);
  assert.equal(env.transport.host, 'h:1');
  assert.equal(env.transport.version, 'HTTP/2.0');
  assert.equal(Buffer.from(env.transport.path).toString(), '/a.B/C');
});

test('StatusCode has gRPC\'s 17 codes', () => {
  assert.equal(Object.keys(StatusCode).length, 17);
  assert.equal(StatusCode.OK, 0);
  assert.equal(StatusCode.INVALID_ARGUMENT, 3);
  assert.equal(StatusCode.NOT_FOUND, 5);
  assert.equal(StatusCode.UNIMPLEMENTED, 12);
  assert.equal(StatusCode.INTERNAL, 13);
  assert.equal(StatusCode.UNAVAILABLE, 14);
  assert.equal(StatusCode.UNAUTHENTICATED, 16);
  assert.ok(Object.isFrozen(StatusCode));
});

test('GrpcStatus: an Error with code (number or name), message, trailers, codeName', () => {
  const s = new GrpcStatus(StatusCode.NOT_FOUND, 'missing', { 'x-a': '1' });
  assert.ok(s instanceof Error);
  assert.equal(s.name, 'GrpcStatus');
  assert.equal(s.code, 5);
  assert.equal(s.codeName, 'NOT_FOUND');
  assert.equal(s.message, 'missing');
  assert.deepEqual(s.trailers, { 'x-a': '1' });
  assert.equal(new GrpcStatus('UNAVAILABLE').code, 14);
  assert.equal(new GrpcStatus('UNAVAILABLE').message, '');
  assert.equal(new GrpcStatus(99, 'custom').codeName, '99');
  assert.throws(() => new GrpcStatus('NOPE'), TypeError);
  assert.throws(() => new GrpcStatus(-1), TypeError);
  assert.throws(() => new GrpcStatus(1.5), TypeError);
});

test('grpcFrame: flag 0, big-endian length, the bytes', () => {
  assert.deepEqual([...grpcFrame(Buffer.from('hi'))], [0, 0, 0, 0, 2, 104, 105]);
  assert.deepEqual([...grpcFrame('')], [0, 0, 0, 0, 0]);
  assert.deepEqual([...grpcFrame(new Uint8Array([7]))], [0, 0, 0, 0, 1, 7]);
  const big = grpcFrame(Buffer.alloc(300));
  assert.equal(big.readUInt32BE(1), 300);
});

test('splitGrpcMessages: several messages, empty ones, an empty body', () => {
  const body = Buffer.concat([grpcFrame('one'), grpcFrame(''), grpcFrame(Buffer.alloc(70000, 1))]);
  const msgs = splitGrpcMessages(body);
  assert.equal(msgs.length, 3);
  assert.equal(msgs[0].toString(), 'one');
  assert.equal(msgs[1].length, 0);
  assert.ok(msgs[2].equals(Buffer.alloc(70000, 1)));
  assert.deepEqual(splitGrpcMessages(Buffer.alloc(0)), []);
});

test('splitGrpcMessages: a truncated prefix or message is a PermanentError saying where', () => {
  const two = Buffer.concat([grpcFrame('abc'), grpcFrame('defgh')]); // 8 + 10 bytes
  assert.throws(() => splitGrpcMessages(two.subarray(0, 10)), (err) => {
    assert.ok(err instanceof PermanentError);
    assert.equal(err.message, 'truncated gRPC message: the body ends 2 byte(s) into the 5-byte prefix of message 2 (at byte 8)');
    return true;
  });
  assert.throws(() => splitGrpcMessages(two.subarray(0, 16)), {
    name: 'PermanentError',
    message: 'truncated gRPC message: message 2 (at byte 8) declares 5 bytes but only 3 arrived',
  });
  assert.throws(() => splitGrpcMessages(Buffer.from([0, 0, 0])), /truncated gRPC message: the body ends 3 byte\(s\) into the 5-byte prefix of message 1/);
});

test('splitGrpcMessages: a compressed message is UNIMPLEMENTED, a bad flag is malformed', () => {
  const c = grpcFrame('x');
  c[0] = 1;
  assert.throws(() => splitGrpcMessages(c), (err) => err instanceof GrpcStatus && err.code === StatusCode.UNIMPLEMENTED);
  const b = grpcFrame('x');
  b[0] = 7;
  assert.throws(() => splitGrpcMessages(b), { name: 'PermanentError', message: /malformed gRPC framing: message 1 at byte 0 has flag 7/ });
});

test('GrpcMessageDecoder: byte by byte gives the same messages, each as soon as it is complete', () => {
  const body = Buffer.concat([grpcFrame('alpha'), grpcFrame(''), grpcFrame('omega')]);
  const dec = new GrpcMessageDecoder();
  const seen = [];
  for (let i = 0; i < body.length; i++) {
    for (const m of dec.push(body.subarray(i, i + 1))) seen.push([i, m.toString()]);
  }
  dec.finish();
  assert.deepEqual(seen, [
    [9, 'alpha'],
    [14, ''],
    [24, 'omega'],
  ]);
  const partial = new GrpcMessageDecoder();
  partial.push(body.subarray(0, 12));
  assert.throws(() => partial.finish(), /truncated gRPC message/);
});

test('new exports are there and the old ones unchanged', () => {
  for (const name of ['serve', 'Response', 'CloudEvent', 'PermanentError', 'RetryableError', 'GrpcStatus', 'StatusCode', 'grpcFrame', 'splitGrpcMessages', 'GrpcMessageDecoder']) {
    assert.ok(sdk[name] !== undefined, name);
  }
  const r = new sdk.Response(201, { a: 'b' }, 'x');
  assert.deepEqual([r.status, r.headers, r.body, r.trailers], [201, { a: 'b' }, 'x', {}]);
});
