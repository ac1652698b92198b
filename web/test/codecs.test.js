// Encodings against independent implementations (@ipld/dag-cbor, multiformats) and their edges.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as dagCbor from '@ipld/dag-cbor';
import { CID as McCID } from 'multiformats/cid';
import { base58btc as mcBase58 } from 'multiformats/bases/base58';
import {
  CID, CborError, Heads, ThreadId, ThreadKey, LogId, base32, base58btc, base64, base64url,
  decodeValue, encodeValue, formatLink, fromHex, parseLink, readVarint, toHex, writeVarint, cidOf,
} from '../src/index.js';

const random = (n) => crypto.getRandomValues(new Uint8Array(n));

test('base encodings round-trip and refuse junk', () => {
  for (let n = 0; n < 70; n++) {
    const b = random(n);
    if (n % 3 === 0) b.fill(0, 0, Math.min(2, n));
    assert.deepEqual(base32.decode(base32.encode(b)), b);
    assert.deepEqual(base64.decode(base64.encode(b)), b);
    assert.deepEqual(base64url.decode(base64url.encode(b)), b);
    assert.deepEqual(base58btc.decode(base58btc.encode(b)), b);
    assert.equal('z' + base58btc.encode(b), mcBase58.encode(b));
    assert.equal(base64.encode(b), Buffer.from(b).toString('base64'));
  }
  assert.throws(() => base32.decode('a1'), /base32/);
  assert.throws(() => base64.decode('abc'), /base64/);
  assert.throws(() => base58btc.decode('0'), /base58/);
  assert.throws(() => fromHex('abc'), /hex/);
});

test('varints are minimal', () => {
  for (const n of [0, 1, 127, 128, 300, 2 ** 32, Number.MAX_SAFE_INTEGER]) {
    assert.deepEqual(readVarint(writeVarint(n)), [n, writeVarint(n).length]);
  }
  assert.throws(() => readVarint(Uint8Array.of(0x81, 0x00)), /minimal/);
  assert.throws(() => readVarint(Uint8Array.of(0x80)), /early/);
});

test('values encode as @ipld/dag-cbor does, and decode what it encodes', () => {
  const link = McCID.parse('bafyreidqck6v4sa4fw3456ntqe6gjutgvl5y5vtx4zyrqth5jv6lsseo3m');
  const values = [
    null, true, false, 0, 23, 24, 255, 256, 65535, 65536, 2 ** 32, -1, -24, -25, -(2 ** 40), 1.5, -0.25, 1e300,
    '', 'héllo', 'x'.repeat(300), new Uint8Array(0), random(40), [], [1, [2, [3]]],
    { b: 1, a: 2, aa: 3, '': 4 }, { nested: { list: [{ z: null }] } },
  ];
  for (const v of values) {
    const ours = encodeValue(v);
    assert.equal(toHex(ours), toHex(dagCbor.encode(v)), JSON.stringify(v));
    assert.deepEqual(decodeValue(dagCbor.encode(v)), v);
  }
  const withLink = { link: CID.parse(link.toString()) };
  assert.equal(toHex(encodeValue(withLink)), toHex(dagCbor.encode({ link })));
  assert.ok(decodeValue(dagCbor.encode({ link })).link.equals(withLink.link));
});

test('non-canonical values are refused', () => {
  const kinds = [
    ['1817', 'not_canonical'], // 23 in a one-byte head
    ['a2616201616102', 'key_order'],
    ['a2616101616102', 'duplicate_key'],
    ['9f01ff', 'indefinite'],
    ['f93c00', 'not_canonical'], // a 16-bit float
    ['0101', 'trailing_bytes'],
    ['62c328', 'unsupported'], // not UTF-8
    ['c11a514b67b0', 'unsupported'], // tag 1
    ['5a00010000', 'truncated'],
  ];
  for (const [hex, kind] of kinds) {
    assert.throws(() => decodeValue(fromHex(hex)), (e) => e instanceof CborError && e.kind === kind, hex);
  }
  assert.throws(() => encodeValue(NaN), CborError);
});

test('CIDs agree with multiformats', async () => {
  const bytes = random(100);
  const ours = await cidOf(bytes);
  const theirs = McCID.parse(ours.toString());
  assert.equal(theirs.code, 0x71);
  assert.deepEqual(theirs.bytes, ours.bytes);
  assert.equal(CID.decode(theirs.bytes).toString(), ours.toString());
  const v0 = 'QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n';
  assert.equal(CID.parse(v0).toString(), v0);
  assert.throws(() => CID.parse(v0 + 'a'));
  assert.throws(() => CID.decode(Uint8Array.of(1, 0x71, 0x12, 0x20, 1)), /length/);
});

test('log IDs in their CID form', () => {
  const log = new LogId(random(32));
  const cid = McCID.createV1(0x72, { code: 0, digest: log.bytes.subarray(2), bytes: log.bytes, size: 36 });
  assert.equal(LogId.parse(cid.toString()).toString(), log.toString());
});

test('links round-trip, and damaged ones are refused', () => {
  const thread = new ThreadId(Uint8Array.of(1, 0x70, ...random(32)));
  const link = { thread, key: new ThreadKey(random(32), random(32)), earlierReadKeys: [], role: 'reader', snapshotsFrom: null, public: true, followers: ['http://127.0.0.1:1'] };
  const parsed = parseLink(formatLink(link));
  assert.equal(parsed.thread.toString(), thread.toString());
  assert.equal(parsed.key.toString(), link.key.toString());
  assert.equal(parsed.role, 'reader');
  assert.equal(parsed.thread.variant, 'access_controlled');
  assert.throws(() => parseLink('threads:invite:abc'), /expected/);
  assert.throws(() => parseLink('threads:link:!!'), /damaged/);
  const noRead = formatLink({ ...link, key: link.key.followOnly() });
  assert.throws(() => parseLink(noRead), /read key/);
  assert.equal(parseLink(formatLink({ ...link, key: link.key.followOnly(), role: 'follower' })).key.read, null);
});

test('chain errors', () => {
  const c = (n) => CID.v1(0x71, new Uint8Array(32).fill(n));
  const heads = new Heads();
  const log = 'log';
  assert.throws(() => heads.advance(log, { cid: c(2), prev: c(1) }), { code: 'gap' });
  assert.equal(heads.advance(log, { cid: c(1), prev: null }), 1);
  assert.throws(() => heads.advance(log, { cid: c(3), prev: null }), { code: 'missing_prev' });
  assert.throws(() => heads.advance(log, { cid: c(3), prev: c(9) }), { code: 'wrong_prev' });
  assert.equal(heads.advance(log, { cid: c(2), prev: c(1) }), 2);
  assert.equal(heads.get(log).counter, 2);
});
