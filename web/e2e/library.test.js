// The library under Node.js against a real server: a writer registers and writes, a reader
// follows by long-polling (Node.js 20 has no WebSocket) and resumes after the server restarts,
// with no gap and no duplicate.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Follower, ThreadId, ThreadKey, ThreadReader, ThreadWriter, memoryStore } from '../src/index.js';
import { startServer, tempDir } from './harness.js';

const random = (n) => crypto.getRandomValues(new Uint8Array(n));

test('write, follow by long-polling, resume across a restart', async () => {
  const dataDir = tempDir('data');
  let server = await startServer({ dataDir });
  const link = {
    thread: new ThreadId(Uint8Array.of(1, 0x55, ...random(32))),
    key: new ThreadKey(random(32), random(32)),
    earlierReadKeys: [],
    role: 'writer',
    snapshotsFrom: null,
    public: false,
    followers: [server.url],
  };
  const store = memoryStore();
  let writer = await ThreadWriter.open(new Follower(server.url), link, store);
  for (let i = 1; i <= 3; i++) assert.equal((await writer.write({ n: i })).counter, i);

  // A private thread: the reader's pull token comes from the follow key.
  const follower = new Follower(server.url);
  const seen = [];
  const reader = new ThreadReader(follower, link);
  const abort = new AbortController();
  const live = reader.follow((entries) => seen.push(...entries), { signal: abort.signal, transport: 'poll' });
  const until = async (n) => {
    for (let i = 0; seen.length < n; i++) {
      if (i > 200) throw new Error(`saw ${seen.length} of ${n}`);
      await new Promise((ok) => setTimeout(ok, 25));
    }
  };
  await until(3);
  await writer.write({ n: 4 });
  await until(4);

  // The server restarts on the same data; the reader carries on from its cursor.
  await server.stop();
  server = await startServer({ dataDir, port: new URL(server.url).port });
  writer = await ThreadWriter.open(new Follower(server.url), link, store);
  await writer.write({ n: 5 });
  await until(5);
  abort.abort();
  await live;

  assert.deepEqual(seen.map((e) => e.error), [null, null, null, null, null]);
  assert.deepEqual(seen.map((e) => e.value.n), [1, 2, 3, 4, 5]);
  assert.deepEqual(seen.map((e) => e.counter), [1, 2, 3, 4, 5]);
  await server.stop();
});

test('a wrong pull token and a refused push are clear errors', async () => {
  const server = await startServer();
  const link = {
    thread: new ThreadId(Uint8Array.of(1, 0x55, ...random(32))),
    key: new ThreadKey(random(32), random(32)),
    role: 'writer',
    public: false,
  };
  const writer = await ThreadWriter.open(new Follower(server.url), link, memoryStore());
  await writer.write({ n: 1 });
  const stranger = new ThreadReader(new Follower(server.url), { ...link, key: new ThreadKey(random(32), random(32)) });
  await assert.rejects(stranger.catchUp().next(), { code: 'bad_pull_token', status: 403 });
  writer.head = null; // as if the browser lost its head: the push is a fork of the log
  await assert.rejects(writer.write({ n: 2 }), (e) => ['fork', 'gap'].includes(e.code));
  await server.stop();
});

test('a push whose answer is lost is sent again, and the log does not fork', async () => {
  const server = await startServer();
  let loseNext = null;
  // The request reaches the server; its answer does not reach the writer: the connection is
  // reset, or a proxy answers 502 in its place.
  const lossy = async (url, init) => {
    const response = await fetch(url, init);
    const lose = url.endsWith('/v1/records') && loseNext;
    loseNext = null;
    if (!lose) return response;
    await response.text();
    if (lose === 'reset') throw new TypeError('the connection was reset');
    return new Response(JSON.stringify({ code: 'bad_gateway', detail: 'upstream went away' }), { status: 502 });
  };
  const link = {
    thread: new ThreadId(Uint8Array.of(1, 0x55, ...random(32))),
    key: new ThreadKey(random(32), random(32)),
    role: 'writer',
    public: true,
  };
  const store = memoryStore();
  const writer = await ThreadWriter.open(new Follower(server.url, { fetch: lossy }), link, store);
  await writer.write({ n: 1 });
  loseNext = 'reset';
  await assert.rejects(writer.write({ n: 2 }), /reset/);
  // A fresh writer on the same store (a reload) finds the record it could not confirm.
  const again = await ThreadWriter.open(new Follower(server.url, { fetch: lossy }), link, store);
  assert.equal((await again.write({ n: 3 })).counter, 3);
  // A server error may come after the commit: the record is kept and sent again too.
  loseNext = 'error';
  await assert.rejects(again.write({ n: 4 }), (e) => e.status === 502);
  assert.equal((await again.write({ n: 5 })).counter, 5);
  const entries = [];
  for await (const page of new ThreadReader(new Follower(server.url), link).catchUp()) entries.push(...page);
  assert.deepEqual(entries.map((e) => [e.error, e.value?.n]), [[null, 1], [null, 2], [null, 3], [null, 4], [null, 5]]);
  await server.stop();
});
