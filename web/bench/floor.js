// The platform's floor: how long the cryptography alone of checking and opening N records takes,
// with no decoding, network or page around it. Per record a reader makes the calls
// `verifyRecord` and `openRecord` make: four SHA-256 digests (record, event, header and body
// nodes), three AES-256-GCM openings (envelope under the follow key, header under the read key,
// body under the event's own content key, which is imported first) and one Ed25519
// verification. All N records' calls are issued at once, so the platform may overlap them as
// much as it can. Run: node web/bench/floor.js [records] [rounds]

import { createServer } from 'node:http';
import { launchChromium } from '../e2e/harness.js';

const count = Number(process.argv[2] ?? 10_000);
const rounds = Number(process.argv[3] ?? 3);

/**
 * Makes `count` records' worth of inputs (untimed), then times their checks. Runs as it is in
 * Node.js and, serialized by Playwright, in a page.
 * @param {number} count
 * @returns {Promise<Record<string, number>>} milliseconds per phase
 */
async function floor(count) {
  const subtle = crypto.subtle;
  const random = (n) => crypto.getRandomValues(new Uint8Array(n));
  const aes = (raw) => subtle.importKey('raw', raw, 'AES-GCM', false, ['encrypt', 'decrypt']);
  const seal = async (key, iv, data) => new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv }, key, data));
  // The sizes of a record with a 1 KiB body, as the follower serves it.
  const sizes = { record: 180, event: 110, header: 90, body: 1090 };
  const follow = await aes(random(32));
  const read = await aes(random(32));
  const pair = await subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
  const records = [];
  for (let i = 0; i < count; i++) {
    const content = random(32);
    const iv = random(12);
    const message = random(120);
    records.push({
      nodes: Object.values(sizes).map(random),
      iv,
      content,
      envelope: await seal(follow, iv, random(sizes.record - 28)),
      header: await seal(read, iv, random(sizes.header - 28)),
      body: await seal(await aes(content), iv, random(sizes.body - 28)),
      message,
      sig: new Uint8Array(await subtle.sign({ name: 'Ed25519' }, pair.privateKey, message)),
    });
  }
  const time = async (work) => {
    const start = performance.now();
    await Promise.all(records.map(work));
    return performance.now() - start;
  };
  const verifyKey = pair.publicKey;
  const ms = {};
  ms.sha256 = await time((r) => Promise.all(r.nodes.map((n) => subtle.digest('SHA-256', n))));
  ms.aesGcm = await time(async (r) => {
    const body = aes(r.content);
    await Promise.all([
      subtle.decrypt({ name: 'AES-GCM', iv: r.iv }, follow, r.envelope),
      subtle.decrypt({ name: 'AES-GCM', iv: r.iv }, read, r.header),
      subtle.decrypt({ name: 'AES-GCM', iv: r.iv }, await body, r.body),
    ]);
  });
  ms.ed25519 = await time(async (r) => {
    if (!(await subtle.verify({ name: 'Ed25519' }, verifyKey, r.sig, r.message))) throw new Error('verify failed');
  });
  ms.all = await time(async (r) => {
    const body = aes(r.content);
    await Promise.all([
      ...r.nodes.map((n) => subtle.digest('SHA-256', n)),
      subtle.decrypt({ name: 'AES-GCM', iv: r.iv }, follow, r.envelope),
      subtle.decrypt({ name: 'AES-GCM', iv: r.iv }, read, r.header),
      subtle.decrypt({ name: 'AES-GCM', iv: r.iv }, await body, r.body),
      subtle.verify({ name: 'Ed25519' }, verifyKey, r.sig, r.message),
    ]);
  });
  return ms;
}

/** Ed25519 through `node:crypto` called synchronously: one core, no thread pool. */
async function nodeSyncEd25519(count) {
  const { generateKeyPairSync, sign, verify, randomBytes } = await import('node:crypto');
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const messages = Array.from({ length: count }, () => randomBytes(120));
  const sigs = messages.map((m) => sign(null, m, privateKey));
  const start = performance.now();
  messages.forEach((m, i) => verify(null, m, publicKey, sigs[i]));
  return performance.now() - start;
}

const line = (where, ms) => console.log(`${where}: ` + Object.entries(ms)
  .map(([phase, t]) => `${phase} ${t.toFixed(0)} ms (${(t * 1000 / count).toFixed(1)} µs/record)`).join(', '));

console.log(`the cryptography of ${count} records (1 KiB bodies), every call in flight at once`);
for (let round = 0; round < rounds; round++) {
  line(`node ${process.version} WebCrypto, round ${round + 1}`, await floor(count));
  line(`node ${process.version} node:crypto, round ${round + 1}`, { ed25519Sync: await nodeSyncEd25519(count) });
}

// A page on loopback (WebCrypto needs a secure context; localhost is one).
const server = createServer((_, res) => res.end('<!doctype html><title>floor</title>'));
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const browser = await launchChromium();
const page = await browser.newPage();
await page.goto(`http://127.0.0.1:${server.address().port}/`);
const version = await page.evaluate(() => navigator.userAgent.match(/Chrome\/([\d.]+)/)?.[1]);
for (let round = 0; round < rounds; round++) {
  line(`chromium ${version}, round ${round + 1}`, await page.evaluate(floor, count));
}
await browser.close();
server.close();
