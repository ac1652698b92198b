// Checking records in Web Workers. In a page, every WebCrypto call is paid for on the thread
// that makes it (an Ed25519 verification costs its full ~55 µs there), so a page that checks
// records itself has one core for fetching, checking and rendering. A pool of module workers
// (`check-worker.js`) verifies and opens records on the other cores; the page keeps what must
// be in order (chain positions) and what it shows. Browsers' main threads only: Node.js's
// WebCrypto already runs on its own thread pool, and a worker checks its records itself.

import { CID } from './cid.js';

/** Records a worker takes at once: a page of 1,000 spreads over every worker, a few go to one. */
const MIN_SHARE = 32;

/** @type {CheckPool | null | undefined} */
let shared;

/**
 * The page's pool, made on first use; null where there are no workers to make (Node.js, a
 * worker, a page whose policy refuses them).
 * @returns {CheckPool | null}
 */
export function checkPool() {
  if (shared === undefined) {
    const inPage = typeof Worker === 'function' && typeof document === 'object';
    const size = Math.min(4, globalThis.navigator?.hardwareConcurrency ?? 2);
    try {
      shared = inPage ? new CheckPool(size) : null;
    } catch {
      shared = null;
    }
  }
  return shared;
}

export class CheckPool {
  /** @param {number} size workers */
  constructor(size) {
    this.workers = Array.from({ length: size }, () => this.start());
    this.next = 0;
    /** @type {Map<number, { resolve: (results: object[]) => void, reject: (e: Error) => void }>} */
    this.pending = new Map();
    this.ids = 0;
    /** Set once a worker failed: the pool is no longer used. */
    this.broken = null;
  }

  start() {
    const worker = new Worker(new URL('./check-worker.js', import.meta.url), { type: 'module', name: 'threads-check' });
    worker.onmessage = ({ data }) => {
      const call = this.pending.get(data.id);
      if (!call) return;
      this.pending.delete(data.id);
      if (data.error) call.reject(new Error(data.error));
      else call.resolve(data.results);
    };
    const fail = (what) => {
      this.broken ??= new Error(`a record-checking worker failed: ${what}`);
      for (const [id, call] of this.pending) {
        this.pending.delete(id);
        call.reject(this.broken);
      }
    };
    worker.onerror = (event) => {
      event.preventDefault();
      fail(event.message || 'it did not load');
    };
    worker.onmessageerror = () => fail('a message did not arrive whole');
    return worker;
  }

  /**
   * Verifies and opens `wires` in the workers, as `RecordOpener.open` does each; answers in
   * the order given. Rejects if a worker fails (the caller then checks them itself).
   * @param {import('./reader.js').OpenerSettings} settings
   * @param {object[]} wires
   * @returns {Promise<import('./reader.js').Opened[]>}
   */
  async open(settings, wires) {
    const shares = Math.max(1, Math.min(this.workers.length, Math.floor(wires.length / MIN_SHARE)));
    const size = Math.ceil(wires.length / shares);
    const parts = [];
    for (let i = 0; i < wires.length; i += size) parts.push(this.call({ settings, wires: wires.slice(i, i + size) }));
    return (await Promise.all(parts)).flat().map(fromPortable);
  }

  /**
   * `open` for the records of a page's JSON bytes, parsed by the worker too. The bytes are
   * copied, not moved, so the caller can still read them if the worker fails.
   * @param {import('./reader.js').OpenerSettings} settings
   * @param {ArrayBuffer} page
   * @returns {Promise<import('./reader.js').Opened[]>}
   */
  async openPage(settings, page) {
    return (await this.call({ settings, page })).map(fromPortable);
  }

  /** Sends one batch to the next worker; resolves with its portable results. */
  call(message) {
    if (this.broken) return Promise.reject(this.broken);
    const worker = this.workers[this.next++ % this.workers.length];
    const id = ++this.ids;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.postMessage({ id, ...message });
    });
  }
}

/**
 * What a worker sends back for one record: plain bytes and strings, the body's buffer
 * transferred rather than copied. `transfer` collects the buffers to move.
 * @param {import('./reader.js').Opened} opened
 * @param {ArrayBuffer[]} transfer
 */
export function toPortable(opened, transfer) {
  if (opened.error) return { claim: opened.claim, error: opened.error };
  const { claim, verified, log, body } = opened;
  if (body.byteOffset === 0 && body.byteLength === body.buffer.byteLength) transfer.push(body.buffer);
  return {
    claim,
    log,
    body,
    cid: verified.cid.bytes,
    prev: verified.prev?.bytes ?? null,
    block: verified.block.bytes,
    author: verified.author.slice(), // a view of the envelope: copied, not its whole buffer
    rule: verified.rule,
  };
}

/** @returns {import('./reader.js').Opened} */
function fromPortable(p) {
  if (p.error) return { claim: p.claim, error: p.error };
  const verified = {
    cid: CID.decode(p.cid),
    prev: p.prev ? CID.decode(p.prev) : null,
    block: CID.decode(p.block),
    author: p.author,
    rule: p.rule,
  };
  return { claim: p.claim, verified, log: p.log, body: p.body };
}
