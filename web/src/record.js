// Records: the four DAG-CBOR nodes of one log entry, verified, opened and made as the Rust
// core does (`crates/threads-core/src/record.rs`, `docs/protocol.md`):
//
//   record node = bytes( AES(follow key, {sig, prev?, block, pubKey}) )   signed by the log key
//   event node  = {body: link, header: link}                              plaintext
//   header node = bytes( AES(read key, {key: content key}) )
//   body node   = bytes( AES(content key, application DAG-CBOR) )
//
// A record is refused with the same `code` the core gives (too_large, malformed, not_canonical,
// decrypt_failed, bad_link, bad_signature, legacy_signature, no_read_key), naming the node.

import { concat, utf8 } from './bytes.js';
import { CborError, NOT_CANONICAL, Reader, readMap, Writer } from './cbor.js';
import { cidOf } from './cid.js';
import { LogId } from './ids.js';
import { aesGcmOpen, aesGcmSeal, ed25519Verify } from './platform.js';

export const MAX_RECORD_NODE = 4 * 1024;
export const MAX_EVENT_NODE = 512;
export const MAX_HEADER_NODE = 512;
export const MAX_BODY_NODE = 8 * 1024 * 1024;
const NONCE_LEN = 12;
const TAG_LEN = 16;
const SIGNATURE_DOMAIN = utf8.encode('/threads/record-signature/1\n');
const ENVELOPE_KEYS = ['sig', 'prev', 'block', 'pubKey'];
const EVENT_KEYS = ['body', 'header'];
const HEADER_KEYS = ['key'];

/**
 * Why a record was refused: `code` is the API's, `node` the node at fault (record, event,
 * header, body) if one is, and for `bad_link` the `link` that fails (block, header, body).
 */
export class RecordError extends Error {
  /** @param {string} code @param {string} message @param {string | null} node @param {string | null} link */
  constructor(code, message, node = null, link = null) {
    super(message);
    this.name = 'RecordError';
    this.code = code;
    this.node = node;
    this.link = link;
  }
}

/** Why a verified record does not continue its log: gap, missing_prev or wrong_prev. */
export class ChainError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ChainError';
    this.code = code;
  }
}

/**
 * @typedef {object} Nodes the raw bytes of a record's four nodes
 * @property {Uint8Array} record
 * @property {Uint8Array} event
 * @property {Uint8Array} header
 * @property {Uint8Array} body
 */

/**
 * @typedef {object} VerifiedRecord
 * @property {import('./cid.js').CID} cid the record node's CID, the next record's `prev`
 * @property {import('./cid.js').CID | null} prev
 * @property {import('./cid.js').CID} block the event node's CID
 * @property {Uint8Array} author the author identity's marshalled public key, as signed
 * @property {'current' | 'legacy'} rule which signature rule held
 * @property {Nodes} nodes
 */

function malformed(node, error) {
  if (!(error instanceof CborError)) throw error;
  const code = NOT_CANONICAL.has(error.kind) ? 'not_canonical' : 'malformed';
  return new RecordError(code, `${node} node is not canonical DAG-CBOR: ${error.message}`, node);
}

function checkSize(node, bytes, limit) {
  if (bytes.length > limit) {
    throw new RecordError('too_large', `${node} node is ${bytes.length} bytes; the limit is ${limit}`, node);
  }
}

/** A byte-string node (record, header, body): the ciphertext inside. */
function bytesNode(node, bytes, limit) {
  checkSize(node, bytes, limit);
  try {
    const r = new Reader(bytes);
    const inner = r.bytesItem();
    r.finish();
    return inner;
  } catch (e) {
    throw malformed(node, e);
  }
}

function encodeBytesNode(ciphertext) {
  const w = new Writer();
  w.bytes(ciphertext);
  return w.finish();
}

/** The event node's header and body links. */
function decodeEvent(bytes) {
  checkSize('event', bytes, MAX_EVENT_NODE);
  const links = [null, null];
  try {
    const r = new Reader(bytes);
    readMap(r, EVENT_KEYS, (i, r) => {
      links[i] = r.link();
    });
    r.finish();
  } catch (e) {
    throw malformed('event', e);
  }
  const [body, header] = links;
  if (!header) throw new RecordError('malformed', 'event node is not canonical DAG-CBOR: missing map key "header"', 'event');
  if (!body) throw new RecordError('malformed', 'event node is not canonical DAG-CBOR: missing map key "body"', 'event');
  return { header, body };
}

function decodeEnvelope(bytes) {
  const fields = [null, null, null, null];
  const r = new Reader(bytes);
  readMap(r, ENVELOPE_KEYS, (i, r) => {
    fields[i] = i === 0 || i === 3 ? r.bytesItem().slice() : r.link();
  });
  r.finish();
  const [sig, prev, block, author] = fields;
  for (const [value, key] of [[sig, 'sig'], [block, 'block'], [author, 'pubKey']]) {
    if (!value) throw new CborError('missing_key', `missing map key ${JSON.stringify(key)}`);
  }
  return { sig, prev, block, author };
}

function encodeEnvelope({ sig, prev, block, author }) {
  const w = new Writer();
  w.map(prev ? 4 : 3);
  w.key('sig');
  w.bytes(sig);
  if (prev) {
    w.key('prev');
    w.link(prev);
  }
  w.key('block');
  w.link(block);
  w.key('pubKey');
  w.bytes(author);
  return w.finish();
}

/** `DOMAIN || event CID || (00 | 01 || prev CID) || author key`: what the log key signs. */
function signedMessage(block, prev, author) {
  return concat(SIGNATURE_DOMAIN, block.bytes, prev ? concat(Uint8Array.of(1), prev.bytes) : Uint8Array.of(0), author);
}

/** go-threads' message: `block || prev`, or the author key alone for a log's first record. */
function legacyMessage({ block, prev, author }) {
  return prev ? concat(block.bytes, prev.bytes) : author;
}

/** Opens AES-256-GCM `nonce || ciphertext || tag`. */
async function open(node, key, sealed) {
  if (sealed.length < NONCE_LEN + TAG_LEN) {
    throw new RecordError('decrypt_failed', `${node} node cannot be opened: ciphertext is ${sealed.length} bytes, shorter than its nonce and tag`, node);
  }
  try {
    return await aesGcmOpen(key, sealed.subarray(0, NONCE_LEN), sealed.subarray(NONCE_LEN));
  } catch {
    throw new RecordError('decrypt_failed', `${node} node cannot be opened: wrong key or tampered ciphertext`, node);
  }
}

/** Seals with AES-256-GCM under a fresh random nonce. */
async function seal(key, plaintext) {
  const nonce = crypto.getRandomValues(new Uint8Array(NONCE_LEN));
  return concat(nonce, await aesGcmSeal(key, nonce, plaintext));
}

/**
 * Verifies everything the follow key allows: canonical nodes, the block, header and body
 * links, and the log key's signature. Chain continuity is `Heads.advance`.
 * @param {Nodes} nodes
 * @param {Uint8Array} follow the thread's follow key
 * @param {LogId} log the log the record claims to belong to
 * @param {{ allowLegacy?: boolean }} [options] accept go-threads' weaker rule (off by default)
 * @returns {Promise<VerifiedRecord>}
 */
export async function verifyRecord(nodes, follow, log, options = {}) {
  const sealed = bytesNode('record', nodes.record, MAX_RECORD_NODE);
  const links = decodeEvent(nodes.event);
  bytesNode('header', nodes.header, MAX_HEADER_NODE);
  bytesNode('body', nodes.body, MAX_BODY_NODE);

  // Hash while the envelope is being opened; errors are still reported in the core's order.
  const cids = Promise.all([nodes.record, nodes.event, nodes.header, nodes.body].map(cidOf));
  cids.catch(() => {});
  const plaintext = await open('record', follow, sealed);
  let envelope;
  try {
    envelope = decodeEnvelope(plaintext);
  } catch (e) {
    throw malformed('record', e);
  }
  const [cid, eventCid, headerCid, bodyCid] = await cids;
  if (!envelope.block.equals(eventCid)) throw new RecordError('bad_link', 'the block link does not match the event node', null, 'block');
  if (!links.header.equals(headerCid)) throw new RecordError('bad_link', 'the header link does not match the header node', null, 'header');
  if (!links.body.equals(bodyCid)) throw new RecordError('bad_link', 'the body link does not match the body node', null, 'body');
  if (envelope.sig.length !== 64) throw new RecordError('bad_signature', `signature is not 64 bytes long (${envelope.sig.length})`);

  const check = (message) => ed25519Verify(log, log.publicKey, envelope.sig, message);
  let rule;
  if (await check(signedMessage(envelope.block, envelope.prev, envelope.author))) {
    rule = 'current';
  } else if (await check(legacyMessage(envelope))) {
    if (!options.allowLegacy) {
      throw new RecordError('legacy_signature', "signature verifies only under go-threads' legacy rule, which is not allowed here");
    }
    rule = 'legacy';
  } else {
    throw new RecordError('bad_signature', "signature does not verify under the log's key");
  }
  return { cid, prev: envelope.prev, block: envelope.block, author: envelope.author, rule, nodes };
}

/**
 * Opens the header with the read key (revealing the event's content key), then the body: the
 * application's DAG-CBOR bytes. Verify first; AES-GCM alone refuses altered header or body bytes.
 * @param {Nodes} nodes
 * @param {Uint8Array} read the thread's read key
 * @returns {Promise<Uint8Array>}
 */
export async function openRecord(nodes, read) {
  if (!read) throw new RecordError('no_read_key', "reading needs the thread's read key");
  const header = await open('header', read, bytesNode('header', nodes.header, MAX_HEADER_NODE));
  let contentKey = null;
  try {
    const r = new Reader(header);
    readMap(r, HEADER_KEYS, (_, r) => {
      contentKey = r.bytesItem();
    });
    r.finish();
    if (!contentKey) throw new CborError('missing_key', 'missing map key "key"');
    if (contentKey.length !== 32) throw new CborError('unexpected_type', 'expected a 32-byte content key');
  } catch (e) {
    throw malformed('header', e);
  }
  const body = bytesNode('body', nodes.body, MAX_BODY_NODE);
  return open('body', contentKey.slice(), body);
}

/**
 * Builds and signs a new record, as `VerifiedRecord::create` does.
 * @param {Uint8Array} body the application's DAG-CBOR
 * @param {import('./ids.js').ThreadKey} keys the thread key, with its read half
 * @param {CryptoKey} logKey the log's Ed25519 private key (it may be non-extractable)
 * @param {Uint8Array} author the author identity's marshalled public key
 * @param {import('./cid.js').CID | null} prev the log's head (null for its first record)
 * @returns {Promise<{cid: import('./cid.js').CID, nodes: Nodes}>}
 */
export async function createRecord(body, keys, logKey, author, prev) {
  if (!keys.read) throw new RecordError('no_read_key', "writing needs the thread's read key");
  const contentKey = crypto.getRandomValues(new Uint8Array(32));
  const bodyNode = encodeBytesNode(await seal(contentKey, body));
  const headerPlain = new Writer();
  headerPlain.map(1);
  headerPlain.key('key');
  headerPlain.bytes(contentKey);
  const header = encodeBytesNode(await seal(keys.read, headerPlain.finish()));
  const eventWriter = new Writer();
  eventWriter.map(2);
  eventWriter.key('body');
  eventWriter.link(await cidOf(bodyNode));
  eventWriter.key('header');
  eventWriter.link(await cidOf(header));
  const event = eventWriter.finish();
  const block = await cidOf(event);
  const sig = new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, logKey, signedMessage(block, prev, author)));
  const record = encodeBytesNode(await seal(keys.follow, encodeEnvelope({ sig, prev, block, author })));
  if (bodyNode.length > MAX_BODY_NODE) throw new RecordError('too_large', `body node is ${bodyNode.length} bytes; the limit is ${MAX_BODY_NODE}`, 'body');
  if (record.length > MAX_RECORD_NODE) throw new RecordError('too_large', `record node is ${record.length} bytes; the limit is ${MAX_RECORD_NODE}`, 'record');
  return { cid: await cidOf(record), nodes: { record, event, header, body: bodyNode } };
}

/** Each log's head (newest record and count), to check that records continue their log. */
export class Heads {
  constructor() {
    /** @type {Map<string, {cid: import('./cid.js').CID, counter: number}>} */
    this.byLog = new Map();
  }

  /** @param {LogId | string} log */
  get(log) {
    return this.byLog.get(String(log)) ?? null;
  }

  /**
   * The record's position in its log, moving the head: 1 for a first record, head + 1 for one
   * whose `prev` is the head. Throws a ChainError otherwise and leaves the head where it was.
   * @param {LogId | string} log
   * @param {VerifiedRecord} record
   */
  advance(log, record) {
    const head = this.get(log);
    let counter;
    if (!head && !record.prev) counter = 1;
    else if (!head) throw new ChainError('gap', `record continues ${record.prev}, which this log does not have yet`);
    else if (!record.prev) throw new ChainError('missing_prev', `record has no prev but the log already has records (head ${head.cid})`);
    else if (record.prev.equals(head.cid)) counter = head.counter + 1;
    else throw new ChainError('wrong_prev', `record continues ${record.prev}, which is not the log's head`);
    this.byLog.set(String(log), { cid: record.cid, counter });
    return counter;
  }
}
