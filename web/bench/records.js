// Records for benchmarks: one log's chain of `count` records with `bodyBytes`-byte bodies.

import { LogId, ThreadId, ThreadKey, createRecord, encodeValue, marshalPublicKey } from '../src/index.js';

const random = (n) => crypto.getRandomValues(new Uint8Array(n));

export async function makeThread() {
  const pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
  const raw = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  return {
    thread: new ThreadId(Uint8Array.of(1, 0x55, ...random(32))),
    key: new ThreadKey(random(32), random(32)),
    pair,
    log: new LogId(raw),
    author: marshalPublicKey(raw),
    head: null,
  };
}

/** Appends `count` records to the thread's log; returns them as `{cid, nodes}`. */
export async function makeRecords(t, count, bodyBytes = 1024) {
  const out = [];
  for (let i = 0; i < count; i++) {
    // A text body of about `bodyBytes` bytes once encoded.
    const body = encodeValue({ n: i, text: 'x'.repeat(Math.max(0, bodyBytes - 20)) });
    const made = await createRecord(body, t.key, t.pair.privateKey, t.author, t.head);
    t.head = made.cid;
    out.push(made);
  }
  return out;
}
