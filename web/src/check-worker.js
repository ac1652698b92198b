// A worker of `pool.js`: verifies and opens the records it is sent (or a page's JSON bytes
// holds), as the page would.

import { pageRecords, RecordOpener } from './reader.js';
import { toPortable } from './pool.js';

/** Openers by their settings, so a log's ID is parsed once per reader, not once per batch. */
const openers = new Map();

globalThis.onmessage = async ({ data: { id, settings, wires, page } }) => {
  try {
    let opener = openers.get(settings.id);
    if (!opener) {
      if (openers.size >= 16) openers.clear();
      opener = new RecordOpener(settings);
      openers.set(settings.id, opener);
    }
    const opened = await Promise.all((wires ?? pageRecords(page)).map((w) => opener.open(w)));
    const transfer = [];
    const results = opened.map((o) => toPortable(o, transfer));
    globalThis.postMessage({ id, results }, transfer);
  } catch (e) {
    globalThis.postMessage({ id, error: e instanceof Error ? e.message : String(e) });
  }
};
