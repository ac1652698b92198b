// Writing to a thread from a browser: the log's Ed25519 key is made by WebCrypto as a
// non-extractable key and kept in IndexedDB (the page can sign with it, nobody can read it),
// the log is registered with the follower by a signed request, and records are pushed.

import { encodeValue } from './cbor.js';
import { CID } from './cid.js';
import { LogId, marshalPublicKey, pullToken } from './ids.js';
import { createRecord } from './record.js';
import { ApiError } from './follower.js';

/**
 * Where a writer keeps its keys and its log's head: IndexedDB in a browser, memory elsewhere.
 * @typedef {object} KeyStore
 * @property {(name: string) => Promise<any>} get
 * @property {(name: string, value: any) => Promise<void>} put
 */

/** A KeyStore in memory (Node.js, tests): keys die with the process. @returns {KeyStore} */
export function memoryStore() {
  const map = new Map();
  return { get: async (name) => map.get(name), put: async (name, value) => void map.set(name, value) };
}

/**
 * A KeyStore in IndexedDB. CryptoKeys are stored as they are (structured clone), so a
 * non-extractable key stays non-extractable.
 * @param {string} [database]
 * @returns {Promise<KeyStore>}
 */
export async function indexedDbStore(database = 'threads') {
  const db = await new Promise((resolve, reject) => {
    const open = indexedDB.open(database, 1);
    open.onupgradeneeded = () => open.result.createObjectStore('keys');
    open.onsuccess = () => resolve(open.result);
    open.onerror = () => reject(open.error);
  });
  const run = (mode, act) => new Promise((resolve, reject) => {
    const tx = db.transaction('keys', mode);
    const request = act(tx.objectStore('keys'));
    tx.oncomplete = () => resolve(request.result);
    tx.onerror = () => reject(tx.error);
  });
  return {
    get: (name) => run('readonly', (s) => s.get(name)),
    put: (name, value) => run('readwrite', (s) => s.put(value, name)).then(() => {}),
  };
}

async function keyPair(store, name) {
  let pair = await store.get(name);
  if (!pair) {
    pair = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    await store.put(name, pair);
  }
  const raw = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
  return { pair, raw };
}

/** One writer's log in one thread. */
export class ThreadWriter {
  /**
   * Opens (or makes) this store's log in the thread and registers it with the follower.
   * @param {import('./follower.js').Follower} follower
   * @param {import('./link.js').Link} link a writer link
   * @param {KeyStore} store
   * @param {{ registrationToken?: string }} [options]
   */
  static async open(follower, link, store, options = {}) {
    if (link.role !== 'writer' || !link.key.read) throw new Error('writing needs a writer link');
    const thread = link.thread.toString();
    const identity = await keyPair(store, 'identity');
    const log = await keyPair(store, `log:${thread}`);
    const writer = new ThreadWriter(follower, link, log.pair, new LogId(log.raw), marshalPublicKey(identity.raw), store);
    writer.head = (await store.get(`head:${thread}`)) ?? null;
    writer.pending = (await store.get(`pending:${thread}`)) ?? null;
    await writer.register(options.registrationToken);
    if (!writer.head) {
      // A store that lost its head (or a log registered elsewhere first): the follower's word.
      try {
        const info = await follower.log(thread, writer.log.toString(), { token: await writer.token() });
        if (info?.head) writer.head = { cid: info.head.cid, counter: info.head.counter };
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 404)) throw e;
      }
    }
    return writer;
  }

  constructor(follower, link, pair, log, author, store) {
    this.follower = follower;
    this.link = link;
    this.thread = link.thread.toString();
    this.pair = pair;
    /** @type {LogId} */
    this.log = log;
    this.author = author;
    this.store = store;
    /** @type {{ cid: string, counter: number } | null} */
    this.head = null;
    /** @type {{ cid: string, nodes: import('./record.js').Nodes } | null} made, not yet acknowledged */
    this.pending = null;
  }

  token() {
    return pullToken(this.link.key.follow, this.link.thread);
  }

  /** Registers the log (again: it renews, and is harmless). Sends the follow key only. */
  register(registrationToken) {
    return this.follower.signed('/v1/registrations', {
      thread: this.thread,
      log: this.log.toString(),
      key: this.pair.privateKey,
      action: { action: 'register', follow_key: this.link.key.followOnly().toString(), addrs: [], public: this.link.public },
      token: registrationToken,
    });
  }

  /**
   * Appends `value` (any IPLD value: see `encodeValue`) to the log and pushes it.
   * @returns {Promise<{ cid: string, counter: number }>}
   */
  async write(value) {
    // A record whose push got no answer may be stored already: it is sent again (a duplicate
    // then) before anything follows it, so that the log never forks.
    await this.flush();
    const prev = this.head ? CID.parse(this.head.cid) : null;
    const { cid, nodes } = await createRecord(encodeValue(value), this.link.key, this.pair.privateKey, this.author, prev);
    this.pending = { cid: cid.toString(), nodes };
    await this.store.put(`pending:${this.thread}`, this.pending);
    return this.flush();
  }

  /** Pushes the record written but not yet acknowledged, if there is one; answers the head. */
  async flush() {
    const pending = this.pending;
    if (!pending) return this.head;
    let result;
    try {
      const answer = await this.follower.push([{ thread: this.thread, log: this.log.toString(), nodes: pending.nodes }]);
      result = answer.results[0];
    } catch (e) {
      // A refusal (4xx): it will never be stored. No answer, or a server error (which may
      // come after the commit): keep it, and send it again before anything follows it.
      if (e instanceof ApiError && e.status < 500) await this.settle(null);
      throw e;
    }
    if (result.outcome !== 'accepted' && result.outcome !== 'duplicate') {
      await this.settle(null);
      throw new ApiError(409, result.code ?? result.outcome, result.detail ?? `the follower answered ${result.outcome}`);
    }
    await this.settle({ cid: pending.cid, counter: result.counter });
    return this.head;
  }

  /** Ends the pending record: stored (the new head) or refused (`null`: the head stays). */
  async settle(head) {
    this.pending = null;
    await this.store.put(`pending:${this.thread}`, null);
    if (head) {
      this.head = head;
      await this.store.put(`head:${this.thread}`, head);
    }
  }
}
