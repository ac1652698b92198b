// Prints what this client makes, for the Rust core to check (tests/it/web_client.rs): a thread
// with a link, three chained records written here, a signed registration and a pull token.
// Run: node web/test/make-records.js

import {
  LogId, ThreadId, ThreadKey, createRecord, encodeValue, formatLink, marshalPublicKey, pullToken,
  signRequest, toHex,
} from '../src/index.js';

const random = (n) => crypto.getRandomValues(new Uint8Array(n));
const thread = new ThreadId(Uint8Array.of(1, 0x55, ...random(32)));
const key = new ThreadKey(random(32), random(32));
const logPair = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
const log = new LogId(new Uint8Array(await crypto.subtle.exportKey('raw', logPair.publicKey)));
const identity = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
const author = marshalPublicKey(new Uint8Array(await crypto.subtle.exportKey('raw', identity.publicKey)));

const bodies = [{ text: 'written in JavaScript' }, { op: 'put', key: 'k', value: [1, -2, 2.5, null, true] }, { bytes: random(5) }];
const records = [];
let prev = null;
for (const body of bodies) {
  const encoded = encodeValue(body);
  const { cid, nodes } = await createRecord(encoded, key, logPair.privateKey, author, prev);
  records.push({ cid: cid.toString(), plain: toHex(encoded), ...Object.fromEntries(Object.entries(nodes).map(([k, v]) => [k, toHex(v)])) });
  prev = cid;
}

const registration = await signRequest({
  server: 'threads-test-server',
  thread: thread.toString(),
  log: log.toString(),
  key: logPair.privateKey,
  action: { action: 'register', follow_key: key.followOnly().toString(), addrs: [], public: false },
});

console.log(JSON.stringify({
  thread: thread.toString(),
  thread_key: key.toString(),
  log: log.toString(),
  author: toHex(author),
  records,
  registration,
  pull_token: await pullToken(key.follow, thread),
  link: formatLink({ thread, key, earlierReadKeys: [random(32)], role: 'writer', snapshotsFrom: log, public: false, followers: ['http://127.0.0.1:8006'] }),
}));
