// Reading a thread from a follower: every record pulled or pushed is verified here (signature,
// links, its place in its log's chain), then opened with the read key. The server is trusted
// for nothing; what it alters is refused with the reason, and nothing of its content is shown.

import { decodeValue } from './cbor.js';
import { LogId, pullToken } from './ids.js';
import { ChainError, Heads, openRecord, RecordError, verifyRecord } from './record.js';
import { Follower, wireNodes } from './follower.js';

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
 * @property {unknown} [value] the body decoded (undefined if it is not DAG-CBOR)
 */

export class ThreadReader {
  /**
   * @param {Follower} follower
   * @param {{ thread: import('./ids.js').ThreadId, key: import('./ids.js').ThreadKey, earlierReadKeys?: Uint8Array[] }} link
   * @param {{ allowLegacy?: boolean, pageSize?: number }} [options]
   */
  constructor(follower, link, options = {}) {
    this.follower = follower;
    this.threadId = link.thread;
    this.thread = link.thread.toString();
    this.key = link.key;
    this.readKeys = [link.key.read, ...(link.earlierReadKeys ?? [])].filter(Boolean);
    this.allowLegacy = options.allowLegacy ?? false;
    this.pageSize = options.pageSize ?? 1000;
    this.heads = new Heads();
    /** Log IDs parsed so far, by their text (a thread has few logs). */
    this.logs = new Map();
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
   * concurrently; chain positions are then taken one by one, in order.
   * @param {(import('./follower.js').WireRecord & { cursor?: string })[]} wires
   * @param {string | null} [pageCursor] the cursor after the last of them, for pages
   * @returns {Promise<Entry[]>}
   */
  async check(wires, pageCursor = null) {
    const opened = await Promise.all(wires.map((w) => this.open(w)));
    return opened.map((o, i) => {
      const cursor = wires[i].cursor ?? (i === wires.length - 1 ? pageCursor : null);
      if (cursor) this.cursor = cursor;
      const entry = { log: o.log ?? String(wires[i].log), cid: String(wires[i].cid), cursor, arrivedMs: wires[i].arrived_ms ?? null, error: null };
      if (o.error) return { ...entry, error: o.error };
      try {
        const counter = this.heads.advance(o.log, o.verified);
        const { verified } = o;
        return { ...entry, cid: verified.cid.toString(), rule: verified.rule, counter, prev: verified.prev?.toString() ?? null, author: verified.author, body: o.body, value: o.value };
      } catch (e) {
        if (!(e instanceof ChainError)) throw e;
        return { ...entry, cid: o.verified.cid.toString(), error: { code: e.code, node: null, message: e.message } };
      }
    });
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

  /** Verifies one record and opens it: `{verified, log, body, value}` or `{error}`. */
  async open(wire) {
    try {
      const { id: log, text: logText } = this.logId(String(wire.log));
      if (String(wire.thread ?? this.thread) !== this.thread) {
        throw new RecordError('wrong_thread', `the follower sent a record of thread ${wire.thread}`);
      }
      const nodes = wireNodes(wire);
      const verified = await verifyRecord(nodes, this.key.follow, log, { allowLegacy: this.allowLegacy });
      let body = null;
      let failure = null;
      for (const read of this.readKeys) {
        try {
          body = await openRecord(nodes, read);
          break;
        } catch (e) {
          failure = e;
        }
      }
      if (!body) throw failure ?? new RecordError('no_read_key', "reading needs the thread's read key");
      let value;
      try {
        value = decodeValue(body);
      } catch {
        value = undefined;
      }
      return { verified, log: logText, body, value };
    } catch (e) {
      if (e instanceof RecordError) return { error: { code: e.code, node: e.node, message: e.message } };
      return { error: { code: 'malformed', node: null, message: `the follower sent a record that does not parse: ${e.message}` } };
    }
  }

  /**
   * Pulls, checks and opens everything after the reader's cursor, page by page.
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {AsyncGenerator<Entry[]>}
   */
  async *catchUp({ signal } = {}) {
    const token = await this.pullToken();
    const pull = (after) => {
      const page = this.follower.pull(this.thread, { after, limit: this.pageSize, token, signal });
      page.catch(() => {}); // A prefetched page may go unread; its error is seen when awaited.
      return page;
    };
    // The next page is fetched while this one is checked.
    let next = pull(this.cursor);
    for (;;) {
      const page = await next;
      if (page.more) next = pull(page.cursor);
      if (page.records.length) yield await this.check(page.records, page.cursor);
      this.cursor = page.cursor;
      if (!page.more) return;
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
