// The page at `/` in headless Chromium against a real server, with the command line as the
// other writer: events show live, the page writes, an altered record is caught, and neither the
// server's output nor its data directory ever holds the read key or a plaintext body.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cliPeer, launchChromium, startServer } from './harness.js';
import { parseLink, toHex } from '../src/index.js';

let server;
let browser;
let alice;
let thread;
let readerLink;
let writerLink;
let earlierOutput = '';
const secrets = [];

before(async () => {
  server = await startServer();
  browser = await launchChromium();
  alice = cliPeer();
  ({ thread } = await alice.run('thread', 'create'));
  await alice.run('follower', 'add', thread, server.url);
  await alice.run('write', thread, JSON.stringify({ text: 'plaintext-first-event' }));
  await alice.run('write', thread, JSON.stringify({ op: 'put', key: 'plaintext-key', value: 1 }));
  await alice.run('push', thread);
  readerLink = (await alice.run('share', thread, '--role', 'reader')).invite;
  writerLink = (await alice.run('share', thread, '--role', 'writer')).invite;
  const key = parseLink(writerLink).key;
  secrets.push(key.toString(), toHex(key.read), Buffer.from(key.read).toString('base64'));
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function openPage(link) {
  const page = await browser.newPage();
  const problems = [];
  page.on('console', (m) => m.type() === 'error' && problems.push(m.text()));
  page.on('pageerror', (e) => problems.push(e.message));
  await page.goto(`${server.url}/#${link}`);
  await page.locator('#status[data-state="live"]').waitFor();
  return { page, problems };
}

test('the page is served with a strict policy, and says why it cannot open a link', async () => {
  const response = await fetch(`${server.url}/`);
  assert.equal(response.status, 200);
  const csp = response.headers.get('content-security-policy');
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /connect-src 'self'/);
  assert.doesNotMatch(csp, /unsafe/);
  assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
  const page = await browser.newPage();
  await page.goto(`${server.url}/`);
  const followerLink = (await alice.run('share', thread, '--role', 'follower')).invite;
  for (const [link, said] of [['threads:link:nonsense', /not a thread link/], [followerLink, /no read key/]]) {
    await page.fill('#link', link);
    await page.click('#open button');
    await page.locator('#open-error', { hasText: said }).waitFor();
    assert.equal(await page.locator('#thread').isHidden(), true);
  }
  await page.close();
  const missing = await fetch(`${server.url}/web/nothing.js`);
  assert.equal(missing.status, 404);
  assert.equal((await missing.json()).code, 'not_found');
});

test('a reader sees the events verified, then a pushed one live within a second', async () => {
  const { page, problems } = await openPage(readerLink);
  await page.locator('.event').nth(1).waitFor();
  assert.equal(await page.locator('#count-ok').textContent(), '2');
  assert.equal(await page.locator('#count-bad').textContent(), '0');
  assert.equal(await page.locator('.event .text').first().textContent(), 'plaintext-first-event');
  assert.equal(await page.locator('#write').isHidden(), true, 'a reader link gets no box to write');
  assert.match(await page.locator('.event').first().textContent(), /#2.*signature verified/);

  await alice.run('write', thread, JSON.stringify({ text: 'plaintext-live-event' }));
  const pushed = Date.now();
  await alice.run('push', thread);
  await page.locator('.event .text', { hasText: 'plaintext-live-event' }).waitFor({ timeout: 1000 });
  const shownMs = Date.now() - pushed;
  assert.ok(shownMs < 1000, `shown ${shownMs} ms after the push`);
  assert.deepEqual(problems, []);
  await page.close();
});

test('the page writes, and the command line reads it', async () => {
  const { page, problems } = await openPage(writerLink);
  await page.locator('#write').waitFor();
  await page.fill('#event', 'plaintext-from-the-browser');
  await page.click('#write button');
  await page.locator('#write-status', { hasText: 'written' }).waitFor();
  await page.locator('.event .text', { hasText: 'plaintext-from-the-browser' }).waitFor();
  await page.fill('#event', '{"op": "put", "key": "b", "value": [1, 2.5, "three"]}');
  await page.click('#write button');
  await page.locator('#write-status', { hasText: 'written: #2' }).waitFor();

  await alice.run('pull', thread);
  const { events } = await alice.run('read', thread);
  const bodies = events.map((e) => e.body);
  assert.deepEqual(bodies.at(-2), { text: 'plaintext-from-the-browser' });
  assert.deepEqual(bodies.at(-1), { op: 'put', key: 'b', value: [1, 2.5, 'three'] });
  assert.deepEqual(problems, []);

  // The key lives on: a reload writes the log's third record, not a new log.
  await page.reload();
  await page.locator('#status[data-state="live"]').waitFor();
  await page.fill('#event', 'plaintext-after-reload');
  await page.click('#write button');
  await page.locator('#write-status', { hasText: 'written: #3' }).waitFor();
  await page.close();
});

test('a live page resumes after the server restarts, with no gap and no duplicate', async () => {
  const { page, problems } = await openPage(readerLink);
  const before = Number(await page.locator('#count-ok').textContent());
  earlierOutput += server.output();
  await server.stop();
  await page.locator('#status[data-state="reconnecting"]').waitFor();
  server = await startServer({ dataDir: server.dataDir, port: new URL(server.url).port });
  await alice.run('write', thread, JSON.stringify({ text: 'plaintext-after-restart' }));
  await alice.run('push', thread);
  await page.locator('.event .text', { hasText: 'plaintext-after-restart' }).waitFor({ timeout: 15_000 });
  assert.equal(await page.locator('#count-ok').textContent(), String(before + 1));
  assert.equal(await page.locator('#status').getAttribute('data-state'), 'live');
  const cids = await page.locator('.event').evaluateAll((items) => items.map((i) => i.dataset.cid));
  assert.equal(new Set(cids).size, cids.length);
  // The browser's failed reconnection attempts are reported as console errors; nothing else.
  assert.deepEqual(problems.filter((p) => !/WebSocket|ERR_CONNECTION_REFUSED/.test(p)), []);
  await page.close();
});

test('a record the follower altered is refused with the reason, and shows nothing', async () => {
  // The follower's database is changed behind its back: one byte of the first record's body.
  const db = join(server.dataDir, 'threads.db');
  execFileSync('python3', ['-c', `
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=10)
row = c.execute("SELECT seq, body FROM records ORDER BY seq LIMIT 1").fetchone()
body = bytearray(row[1]); body[-1] ^= 1
c.execute("UPDATE records SET body = ? WHERE seq = ?", (bytes(body), row[0]))
c.commit()
`, db]);
  const { page } = await openPage(readerLink);
  const refused = page.locator('.event.refused');
  await refused.first().waitFor();
  const first = page.locator('.event').last();
  assert.equal(await first.getAttribute('data-code'), 'bad_link');
  assert.match(await first.textContent(), /body link does not match/);
  assert.doesNotMatch(await page.content(), /plaintext-first-event/);
  // The rest of that log no longer continues a verified record.
  assert.equal(await page.locator('.event.refused[data-code="gap"]').count() > 0, true);
  await page.close();
});

test('the server never holds the read key or a plaintext body', async () => {
  const plain = ['plaintext-first-event', 'plaintext-key', 'plaintext-live-event', 'plaintext-from-the-browser', 'plaintext-after-restart'];
  const haystacks = [['output', earlierOutput + server.output()]];
  for (const name of readdirSync(server.dataDir)) {
    haystacks.push([name, readFileSync(join(server.dataDir, name)).toString('latin1')]);
  }
  for (const [where, text] of haystacks) {
    for (const needle of [...secrets, ...plain]) {
      assert.equal(text.includes(needle), false, `${where} holds ${needle.slice(0, 12)}…`);
    }
  }
});
