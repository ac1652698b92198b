// The Rust core's golden vectors, read and checked here byte for byte.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import {
  CID, LogId, ThreadId, ThreadKey, decodeValue, encodeValue, fromHex, identityString,
  openRecord, toHex, unmarshalPublicKey, verifyRecord, Heads,
} from '../src/index.js';

const vectors = JSON.parse(readFileSync(new URL('../../crates/threads-core/tests/it/vectors.json', import.meta.url)));

export function nodesOf(v) {
  return { record: fromHex(v.record), event: fromHex(v.event), header: fromHex(v.header), body: fromHex(v.body) };
}

test('thread IDs', () => {
  for (const [v, variant] of [[vectors.thread_id_raw, 'raw'], [vectors.thread_id_acl, 'access_controlled']]) {
    const id = ThreadId.parse(v.text);
    assert.equal(toHex(id.bytes), v.hex);
    assert.equal(id.toString(), v.text);
    assert.equal(id.variant, variant);
  }
  assert.throws(() => ThreadId.parse('bafkq'), /random part/);
  assert.throws(() => new ThreadId(Uint8Array.of(2, 0x55, 1)), /version 2/);
  assert.throws(() => new ThreadId(Uint8Array.of(1, 0x56, 1)), /variant/);
});

test('log IDs and identities', () => {
  const log = LogId.parse(vectors.log.id);
  assert.equal(toHex(log.bytes), vectors.log.id_hex);
  assert.equal(log.toString(), vectors.log.id);
  assert.equal(toHex(unmarshalPublicKey(fromHex(vectors.log.public_marshalled))), toHex(log.publicKey));
  const author = fromHex(vectors.author_private).subarray(4 + 32, 4 + 64);
  assert.equal(identityString(author), vectors.author_identity);
  assert.throws(() => LogId.parse('0OIl'), /base58/);
});

test('thread keys', () => {
  const key = ThreadKey.parse(vectors.thread_key.text);
  assert.equal(key.toString(), vectors.thread_key.text);
  assert.equal(key.followOnly().toString(), vectors.thread_key.follow_only);
  assert.equal(ThreadKey.parse(vectors.thread_key.follow_only).read, null);
  assert.equal(JSON.stringify({ key }), '{"key":"<thread key>"}');
});

test('records verify, chain and open', async () => {
  const key = ThreadKey.parse(vectors.thread_key.text);
  const log = LogId.parse(vectors.log.id);
  const heads = new Heads();
  for (const [v, body] of [[vectors.record1, vectors.body1], [vectors.record2, vectors.body2]]) {
    const verified = await verifyRecord(nodesOf(v), key.follow, log);
    assert.equal(verified.cid.toString(), v.cid);
    assert.equal(verified.prev?.toString() ?? null, v.prev);
    assert.equal(verified.block.toString(), v.event_cid);
    assert.equal(verified.rule, 'current');
    assert.equal(identityString(verified.author.subarray(4)), vectors.author_identity);
    assert.equal(heads.advance(log, verified), v === vectors.record1 ? 1 : 2);
    const plain = await openRecord(verified.nodes, key.read);
    assert.equal(toHex(plain), body);
  }
  assert.deepEqual(decodeValue(fromHex(vectors.body1)), { op: 'put', key: 'a', value: 1 });
  assert.equal(toHex(encodeValue({ op: 'put', key: 'a', value: 1 })), vectors.body1);
});

test('CIDs are read exactly', () => {
  const text = vectors.record1.cid;
  assert.equal(CID.parse(text).toString(), text);
  assert.throws(() => CID.parse(text + 'a'));
  assert.throws(() => CID.parse(text + 'aaaa'));
});
