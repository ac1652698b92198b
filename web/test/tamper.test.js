// Every tampered record of the Rust core's vectors gets the same refusal here: the same code,
// at the same stage (verifying with the follow key, or opening with the read key), naming the
// same node or link.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { LogId, RecordError, ThreadKey, fromHex, openRecord, toHex, verifyRecord } from '../src/index.js';

const cases = JSON.parse(readFileSync(new URL('../../crates/threads-core/tests/it/tamper.json', import.meta.url)));

async function outcome(c) {
  const nodes = { record: fromHex(c.record), event: fromHex(c.event), header: fromHex(c.header), body: fromHex(c.body) };
  const key = ThreadKey.parse(c.thread_key);
  let stage = 'verify';
  try {
    const verified = await verifyRecord(nodes, key.follow, LogId.parse(c.log), { allowLegacy: c.allow_legacy });
    stage = 'open';
    const body = await openRecord(nodes, key.read);
    return { rule: verified.rule, body: toHex(body) };
  } catch (e) {
    if (!(e instanceof RecordError)) throw e;
    return { stage, code: e.code, node: e.node, link: e.link };
  }
}

test('the tamper vectors exist', () => assert.ok(cases.length >= 40));

for (const c of cases) {
  test(c.name, async () => {
    assert.deepEqual(await outcome(c), c.outcome);
  });
}
