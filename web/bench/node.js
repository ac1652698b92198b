// How fast the client verifies and opens records under Node.js: 10,000 records with 1 KiB
// bodies, checked as a reader checks a pulled page (signature, links, chain, then header and
// body opened and decoded). Prints records per second of wall time and CPU per record.
// Run: node web/bench/node.js [records] [rounds]

import { base64, ThreadReader } from '../src/index.js';
import { makeRecords, makeThread } from './records.js';

const count = Number(process.argv[2] ?? 10_000);
const rounds = Number(process.argv[3] ?? 5);
const t = await makeThread();
const made = await makeRecords(t, count);
const wires = made.map(({ cid, nodes }, i) => ({
  thread: t.thread.toString(),
  log: t.log.toString(),
  cid: cid.toString(),
  counter: i + 1,
  seq: i + 1,
  arrived_ms: 0,
  record: base64.encode(nodes.record),
  event: base64.encode(nodes.event),
  header: base64.encode(nodes.header),
  body: base64.encode(nodes.body),
}));

const page = 1000;
console.log(`node ${process.version}: ${count} records (1 KiB bodies), pages of ${page}`);
for (let round = 0; round < rounds; round++) {
  const reader = new ThreadReader(null, { thread: t.thread, key: t.key });
  const cpu = process.cpuUsage();
  const start = performance.now();
  let ok = 0;
  for (let i = 0; i < wires.length; i += page) {
    for (const entry of await reader.check(wires.slice(i, i + page))) if (!entry.error) ok++;
  }
  const ms = performance.now() - start;
  const used = process.cpuUsage(cpu);
  if (ok !== count) throw new Error(`${count - ok} records refused`);
  const cpuMs = (used.user + used.system) / 1000;
  console.log(`round ${round + 1}: ${Math.round(count / (ms / 1000))} records/s, ${(ms).toFixed(0)} ms wall, ` +
    `${(cpuMs / count * 1000).toFixed(1)} µs CPU per record (all threads)`);
}
