// Reading a thread from a follower: every record pulled or pushed is verified here (signature,
// links, its place in its log's chain), then opened with the read key. The server is trusted
// for nothing; what it alters is refused with the reason, and nothing of its content is shown.

import { decodeValue } from './cbor.js';
import { LogId, pullToken } from './ids.js';
import { ChainError, Heads, openRecord, RecordError, verifyRecord } from './record.js';
import { Follower, wireNodes } from './follower.js';
import { base64 } from './bytes.js';
import { checkPool } from './pool.js';

/**
 * One record as the reader saw it. Either `error` is set (and nothing of the content is), or
 * the record verified, continued its log and opened.
 * @typedef {object} Entry
 * @property {string} log
 * @property {string} cid the verified CID (the server's claim when the record was refused)
 * @property {string | null} cursor the thread cursor after this record
 * @property {number | null} arrivedMs when the follower says it arrived
 * @property {{ code: string, node: string | null, message: string } | null} error
 * @property {'current' | 'legacy'} [rule] the signature rule that held
 * @property {number} [counter] the record's position in its log, counted here
 * @property {string | null} [prev]
 * @property {Uint8Array} [author] the author identity's marshalled key
 * @property {Uint8Array} [body] the application's DAG-CBOR
 * @property {unknown} [value] the body decoded (undefined if it is not DAG-CBOR); decoded when first read
 */

/**
 * What a reader needs to verify and open a thread's records; plain data, so it can be sent to
 * a worker. `id` names the set (a worker keeps one opener per set).
 * @typedef {object} OpenerSettings
 * @property {string} id
 * @property {string} thread
 * @property {Uint8Array} follow
 * @property {Uint8Array[]} readKeys the current read key first, then earlier ones
 * @property {boolean} allowLegacy
 */

/**
 * What the follower said of a record, kept for its entry whether or not it verified.
 * @typedef {{ log: string, cid: string, arrivedMs: number | null, cursor: string | null }} Claim
 */

/**
 * One record verified and opened (not yet placed in its log's chain), or why not.
 * @typedef {{ claim: Claim, verified: import('./record.js').VerifiedRecord, log: string, body: Uint8Array, error?: undefined }
 *   | { claim: Claim, error: { code: string, node: string | null, message: string } }} Opened
 */

/**
 * The records of a JSON page, as `Follower.pullBytes` gives it.
 * @param {ArrayBuffer} bytes
 * @returns {import('./follower.js').WireRecord[]}
 */
export function pageRecords(bytes) {
  const page = JSON.parse(new TextDecoder().decode(bytes));
  if (!Array.isArray(page?.records)) throw new Error('the follower sent a page without records');
  return page.records;
}

/** Verifies and opens records of one thread: all of a record's checks but its chain position. */
export class RecordOpener {
  /** @param {OpenerSettings} settings */
  constructor(settings) {
    this.settings = settings;
    /** Log IDs parsed so far, by their text (a thread has few logs). */
    this.logs = new Map();
  }

  /** The log a record names, parsed once per text form; chains are kept by its canonical text. */
  logId(text) {
    let log = this.logs.get(text);
    if (!log) {
      if (this.logs.size >= 10_000) this.logs.clear();
      const id = LogId.parse(text);
      log = { id, text: id.toString() };
      this.logs.set(text, log);
    }
    return log;
  }

  /**
   * Verifies one record and opens it.
   * @returns {Promise<Opened>}
   */
  async open(wire) {
    const { thread, follow, readKeys, allowLegacy } = this.settings;
    const claim = { log: String(wire.log), cid: String(wire.cid), arrivedMs: wire.arrived_ms ?? null, cursor: wire.cursor ?? null };
    try {
      const { id: log, text: logText } = this.logId(String(wire.log));
      if (String(wire.thread ?? thread) !== thread) {
        throw new RecordError('wrong_thread', `the follower sent a record of thread ${wire.thread}`);
      }
      const nodes = wireNodes(wire);
      const verified = await verifyRecord(nodes, follow, log, { allowLegacy });
      let body = null;
      let failure = null;
      for (const read of readKeys) {
        try {
          body = await openRecord(nodes, read);
          break;
        } catch (e) {
          failure = e;
        }
      }
      if (!body) throw failure ?? new RecordError('no_read_key', "reading needs the thread's read key");
      return { claim, verified, log: logText, body };
    } catch (e) {
      if (e instanceof RecordError) return { claim, error: { code: e.code, node: e.node, message: e.message } };
      return { claim, error: { code: 'malformed', node: null, message: `the follower sent a record that does not parse: ${e.message}` } };
    }
  }
}

export class ThreadReader {
  /**
   * @param {Follower} follower
   * @param {{ thread: import('./ids.js').ThreadId, key: import('./ids.js').ThreadKey, earlierReadKeys?: Uint8Array[] }} link
   * @param {{ allowLegacy?: boolean, pageSize?: number, pool?: import('./pool.js').CheckPool | null }} [options]
   *   `pool`: workers to check records in (by default the page's own; null checks them here)
   */
  constructor(follower, link, options = {}) {
    this.follower = follower;
    this.threadId = link.thread;
    this.thread = link.thread.toString();
    this.key = link.key;
    const readKeys = [link.key.read, ...(link.earlierReadKeys ?? [])].filter(Boolean);
    const allowLegacy = options.allowLegacy ?? false;
    this.opener = new RecordOpener({
      id: [this.thread, allowLegacy, ...[link.key.follow, ...readKeys].map((k) => base64.encode(k))].join(' '),
      thread: this.thread,
      follow: link.key.follow,
      readKeys,
      allowLegacy,
    });
    this.pool = options.pool === undefined ? checkPool() : options.pool;
    this.pageSize = options.pageSize ?? 1000;
    this.heads = new Heads();
    /** @type {string | null} the cursor after the last record handled */
    this.cursor = null;
    /** @type {Promise<string> | null} */
    this.token = null;
  }

  /** The thread's pull token, derived from the follow key (sent always; public threads ignore it). */
  pullToken() {
    this.token ??= pullToken(this.key.follow, this.threadId);
    return this.token;
  }

  /**
   * Checks and opens records in the order given. Verification and decryption run
   * concurrently (in workers where there are some); chain positions are then taken one by
   * one, in order.
   * @param {(import('./follower.js').WireRecord & { cursor?: string })[]} wires
   * @param {string | null} [pageCursor] the cursor after the last of them, for pages
   * @returns {Promise<Entry[]>}
   */
  async check(wires, pageCursor = null) {
    return this.place(await this.openAll(wires), pageCursor);
  }

  /**
   * Takes the chain positions of opened records, in order.
   * @param {Opened[]} opened
   * @param {string | null} pageCursor the cursor after the last of them, for pages
   * @returns {Entry[]}
   */
  place(opened, pageCursor) {
    return opened.map((o, i) => {
      const { claim } = o;
      const cursor = claim.cursor ?? (i === opened.length - 1 ? pageCursor : null);
      if (cursor) this.cursor = cursor;
      const entry = { log: o.log ?? claim.log, cid: claim.cid, cursor, arrivedMs: claim.arrivedMs, error: null };
      if (o.error) return { ...entry, error: o.error };
      try {
        const counter = this.heads.advance(o.log, o.verified);
        const { verified, body } = o;
        return {
          ...entry, cid: verified.cid.toString(), rule: verified.rule, counter, prev: verified.prev?.toString() ?? null, author: verified.author, body,
          // Decoded when first asked for: a page shows only the newest of what it catches up.
          get value() {
            let value;
            try {
              value = decodeValue(body);
            } catch {
              value = undefined;
            }
            Object.defineProperty(this, 'value', { value, enumerable: true, writable: true });
            return value;
          },
        };
      } catch (e) {
        if (!(e instanceof ChainError)) throw e;
        return { ...entry, cid: o.verified.cid.toString(), error: { code: e.code, node: null, message: e.message } };
      }
    });
  }

  /**
   * Verifies and opens records, in workers where there are some.
   * @param {object[]} wires
   * @returns {Promise<Opened[]>}
   */
  async openAll(wires) {
    return this.inPool((pool) => pool.open(this.opener.settings, wires), () => Promise.all(wires.map((w) => this.opener.open(w))));
  }

  /**
   * `openAll` for the records of a page's JSON bytes: a worker parses them too.
   * @param {ArrayBuffer} bytes
   * @returns {Promise<Opened[]>}
   */
  async openPage(bytes) {
    return this.inPool((pool) => pool.openPage(this.opener.settings, bytes), () => Promise.all(pageRecords(bytes).map((w) => this.opener.open(w))));
  }

  /** Runs `work` in the pool, or `here` where there is none or it has failed. */
  async inPool(work, here) {
    if (this.pool) {
      try {
        return await work(this.pool);
      } catch (e) {
        if (!this.pool.broken) throw e;
        // The workers failed (they may not load under some policies): check here from now on.
        this.pool = null;
      }
    }
    return here();
  }

  /**
   * Pulls, checks and opens everything after the reader's cursor, page by page.
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {AsyncGenerator<Entry[]>}
   */
  async *catchUp({ signal } = {}) {
    const token = await this.pullToken();
    // Each page is asked for as soon as the one before it arrives (its headers name the next
    // cursor) and checked the moment it arrives, up to one more page than there are workers
    // ahead of the page handed out.
    const depth = (this.pool?.workers.length ?? 1) + 1;
    /** @type {Promise<{ page: { cursor: string, more: boolean }, opened: Promise<Opened[]> }>[]} */
    const loads = [];
    let after = this.cursor;
    let more = true;
    let fetching = false;
    const fill = () => {
      if (!more || fetching || loads.length >= depth) return;
      fetching = true;
      const load = this.follower.pullBytes(this.thread, { after, limit: this.pageSize, token, signal }).then((page) => {
        ({ cursor: after, more } = page);
        fetching = false;
        const opened = this.openPage(page.bytes);
        opened.catch(() => {}); // Seen when awaited.
        fill();
        return { page, opened };
      });
      load.catch(() => {}); // A prefetched page may go unread; its error is seen when awaited.
      loads.push(load);
    };
    fill();
    while (loads.length) {
      const { page, opened } = await loads.shift();
      fill();
      const entries = this.place(await opened, page.cursor);
      if (entries.length) yield entries;
      this.cursor = page.cursor;
    }
  }

  /**
   * Catches up, then follows the thread live until `signal` aborts: over WebSocket where there
   * is one, else by long-polling. After a disconnect it resumes from the last cursor it
   * handled, so no record is missed or seen twice.
   * @param {(entries: Entry[]) => void} onEntries
   * @param {{ signal?: AbortSignal, onStatus?: (status: string, detail?: string) => void, transport?: 'websocket' | 'poll' }} [options]
   */
  async follow(onEntries, { signal, onStatus = () => {}, transport } = {}) {
    for await (const entries of this.catchUp({ signal })) onEntries(entries);
    const useSocket = (transport ?? (globalThis.WebSocket ? 'websocket' : 'poll')) === 'websocket';
    let delay = 250;
    while (!signal?.aborted) {
      try {
        const connected = () => { delay = 250; };
        if (useSocket) await this.followSocket(onEntries, signal, onStatus, connected);
        else await this.followPolling(onEntries, signal, onStatus, connected);
      } catch (e) {
        if (signal?.aborted) return;
        if (e instanceof Error && 'status' in e && e.status >= 400 && e.status < 500 && e.status !== 429) {
          onStatus('stopped', e.message);
          throw e;
        }
        onStatus('reconnecting', e instanceof Error ? e.message : String(e));
      }
      await sleep(delay, signal);
      delay = Math.min(delay * 2, 10_000);
    }
  }

  async followPolling(onEntries, signal, onStatus, connected) {
    const token = await this.pullToken();
    onStatus('live');
    while (!signal?.aborted) {
      const page = await this.follower.pull(this.thread, { after: this.cursor, limit: this.pageSize, wait: 25, token, signal });
      connected();
      if (page.records.length) onEntries(await this.check(page.records, page.cursor));
      this.cursor = page.cursor;
    }
  }

  /** One WebSocket session; resolves when it closes. */
  async followSocket(onEntries, signal, onStatus, onOpen) {
    const token = await this.pullToken();
    const socket = new WebSocket(this.follower.wsUrl());
    let queue = Promise.resolve();
    await new Promise((resolve, reject) => {
      const stop = () => socket.close(1000);
      signal?.addEventListener('abort', stop, { once: true });
      socket.onopen = () => {
        onOpen();
        socket.send(JSON.stringify({ type: 'subscribe', thread: this.thread, cursor: this.cursor, token }));
      };
      socket.onmessage = (event) => {
        // Messages are handled one after another, so the cursor moves in order.
        queue = queue.then(async () => {
          const message = JSON.parse(event.data);
          if (message.type === 'subscribed') onStatus('live');
          else if (message.type === 'record') onEntries(await this.check([message]));
          else if (message.type === 'error') reject(Object.assign(new Error(`${message.code}: ${message.detail}`), { status: 400, code: message.code }));
        }).catch(reject);
      };
      socket.onerror = () => {};
      socket.onclose = () => {
        signal?.removeEventListener('abort', stop);
        queue.then(resolve, reject);
      };
    });
    if (!signal?.aborted) throw new Error('the connection closed');
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
