// The page in headless Chromium against a local follower: how long a fresh page takes to catch
// up 10,000 records (1 KiB bodies; pulled, verified, decrypted and shown), and how long a pushed
// record takes to appear on a live page. Run: node web/bench/browser.js [records] [rounds] [pushes]

import { Follower, formatLink } from '../src/index.js';
import { launchChromium, startServer } from '../e2e/harness.js';
import { makeRecords, makeThread } from './records.js';

const count = Number(process.argv[2] ?? 10_000);
const rounds = Number(process.argv[3] ?? 5);
const pushes = Number(process.argv[4] ?? 200);

const server = await startServer();
const follower = new Follower(server.url);
const t = await makeThread();
await follower.signed('/v1/registrations', {
  thread: t.thread.toString(),
  log: t.log.toString(),
  key: t.pair.privateKey,
  action: { action: 'register', follow_key: t.key.followOnly().toString(), addrs: [], public: true },
});
const push = (records) => follower.push(records.map(({ nodes }) => ({ thread: t.thread.toString(), log: t.log.toString(), nodes })));
const stored = await makeRecords(t, count);
for (let i = 0; i < stored.length; i += 500) await push(stored.slice(i, i + 500));
const link = formatLink({ thread: t.thread, key: t.key, role: 'reader', public: true, followers: [server.url] });

const browser = await launchChromium();
console.log(`chromium, ${count} records of 1 KiB at ${server.url}`);
for (let round = 0; round < rounds; round++) {
  const page = await browser.newPage();
  await page.goto(`${server.url}/#${link}`);
  await page.waitForFunction(() => document.body.dataset.caughtUp, null, { timeout: 120_000, polling: 50 });
  const [shown, ms] = await page.evaluate(() => [document.body.dataset.caughtUp, document.body.dataset.caughtUpMs]);
  if (Number(shown) !== count) throw new Error(`caught up ${shown} records, not ${count}`);
  console.log(`catch-up round ${round + 1}: ${ms} ms from navigation to ${shown} records shown`);
  await page.close();
}

// Push latency: a live page; one record pushed at a time, timed until it is in the page.
const page = await browser.newPage();
await page.goto(`${server.url}/#${link}`);
await page.waitForFunction(() => document.body.dataset.caughtUp, null, { timeout: 120_000 });
await page.evaluate(() => {
  window.shownAt = new Map();
  new MutationObserver((changes) => {
    const now = Date.now();
    for (const change of changes) for (const node of change.addedNodes) if (node.dataset?.cid) window.shownAt.set(node.dataset.cid, now);
  }).observe(document.getElementById('events'), { childList: true });
});
const live = await makeRecords(t, pushes);
const latencies = [];
for (const record of live) {
  const cid = record.cid.toString();
  const start = Date.now();
  await push([record]);
  await page.waitForFunction((cid) => window.shownAt.has(cid), cid, { polling: 'raf' });
  latencies.push((await page.evaluate((cid) => window.shownAt.get(cid), cid)) - start);
  await new Promise((ok) => setTimeout(ok, 10));
}
latencies.sort((a, b) => a - b);
const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
console.log(`push to page, ${pushes} records one at a time: p50 ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${latencies.at(-1)} ms`);
await browser.close();
await server.stop();
