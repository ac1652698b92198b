// Thread IDs, log IDs, thread keys, and the pull token derived from a follow key.

import { base58btc, base64url, concat, EncodingError, equal, multibaseBase32, multibaseDecode, readVarint, utf8 } from './bytes.js';
import { CID } from './cid.js';

const THREAD_ID_VERSION = 1;
const VARIANTS = { 0x55: 'raw', 0x70: 'access_controlled' };
const MAX_RANDOM_LEN = 128;
/** A marshalled Ed25519 public key starts with these bytes (libp2p's protobuf). */
export const ED25519_PUBLIC_HEADER = Uint8Array.of(0x08, 0x01, 0x12, 0x20);
const IDENTITY_MULTIHASH_PREFIX = Uint8Array.of(0x00, 0x24);
const LIBP2P_KEY = 0x72;

/** A thread's identity: `varint(1) || varint(variant) || random`, multibase base32 as text. */
export class ThreadId {
  /** @param {Uint8Array} bytes */
  constructor(bytes) {
    const [version, a] = readVarint(bytes, 0);
    if (version !== THREAD_ID_VERSION) throw new EncodingError(`unsupported thread ID version ${version} (only 1 exists)`);
    const [variant, b] = readVarint(bytes, a);
    if (!(variant in VARIANTS)) throw new EncodingError(`unknown thread ID variant 0x${variant.toString(16)}`);
    const random = bytes.length - b;
    if (random === 0) throw new EncodingError('thread ID has no random part');
    if (random > MAX_RANDOM_LEN) throw new EncodingError(`thread ID random part is ${random} bytes; at most ${MAX_RANDOM_LEN} are allowed`);
    this.bytes = bytes.slice();
    /** @type {'raw' | 'access_controlled'} */
    this.variant = VARIANTS[variant];
  }

  /** Any multibase text, as go-threads accepts. @param {string} text */
  static parse(text) {
    return new ThreadId(multibaseDecode(text));
  }

  toString() {
    return multibaseBase32(this.bytes);
  }
}

/** A log's identity: the libp2p peer ID of its Ed25519 key, base58btc as text. */
export class LogId {
  /** @param {Uint8Array} publicKey the raw 32-byte Ed25519 key */
  constructor(publicKey) {
    if (publicKey.length !== 32) throw new EncodingError('an Ed25519 public key is 32 bytes');
    this.publicKey = publicKey.slice();
    this.bytes = concat(IDENTITY_MULTIHASH_PREFIX, ED25519_PUBLIC_HEADER, publicKey);
  }

  /** The peer ID bytes: an identity multihash over the marshalled key. @param {Uint8Array} bytes */
  static fromBytes(bytes) {
    if (bytes.length !== 38 || !equal(bytes.subarray(0, 2), IDENTITY_MULTIHASH_PREFIX)) {
      throw new EncodingError('not an identity multihash of an Ed25519 key');
    }
    return new LogId(unmarshalPublicKey(bytes.subarray(2)));
  }

  /** `12D3KooW…`, or the CIDv1 form with the libp2p-key codec (`bafzaa…`). @param {string} text */
  static parse(text) {
    if (text.startsWith('b')) {
      let cid = null;
      try {
        cid = CID.parse(text);
      } catch {
        // Not a CID: read it as base58 below.
      }
      if (cid) {
        if (cid.codec !== LIBP2P_KEY) throw new EncodingError('not an identity multihash of an Ed25519 key');
        return LogId.fromBytes(concat(Uint8Array.of(cid.hashCode, cid.digest.length), cid.digest));
      }
    }
    return LogId.fromBytes(base58btc.decode(text));
  }

  toString() {
    return base58btc.encode(this.bytes);
  }
}

/** The 36-byte libp2p form of an Ed25519 public key. @param {Uint8Array} key */
export function marshalPublicKey(key) {
  return concat(ED25519_PUBLIC_HEADER, key);
}

/** @param {Uint8Array} bytes */
export function unmarshalPublicKey(bytes) {
  if (bytes.length !== 36 || !equal(bytes.subarray(0, 4), ED25519_PUBLIC_HEADER)) {
    throw new EncodingError('not a marshalled Ed25519 public key');
  }
  return bytes.slice(4);
}

/** An identity's text form: multibase base32 of the marshalled key (`bbaareie…`). */
export function identityString(key) {
  return multibaseBase32(marshalPublicKey(key));
}

/**
 * A thread's key set: the follow (service) key, and the read key unless only following.
 * Binary `follow(32) || read(32)` or `follow(32)`; multibase base32 as text. A secret.
 */
export class ThreadKey {
  /** @param {Uint8Array} follow @param {Uint8Array | null} read */
  constructor(follow, read = null) {
    if (follow.length !== 32 || (read && read.length !== 32)) throw new EncodingError('thread keys are 32 bytes each');
    this.follow = follow;
    this.read = read;
  }

  /** @param {string} text */
  static parse(text) {
    const bytes = multibaseDecode(text);
    if (bytes.length === 32) return new ThreadKey(bytes, null);
    if (bytes.length === 64) return new ThreadKey(bytes.slice(0, 32), bytes.slice(32));
    throw new EncodingError(`a thread key is 32 or 64 bytes, not ${bytes.length}`);
  }

  /** The same key without its read half: what a follower is given. */
  followOnly() {
    return new ThreadKey(this.follow, null);
  }

  toString() {
    return multibaseBase32(this.read ? concat(this.follow, this.read) : this.follow);
  }

  toJSON() {
    return '<thread key>';
  }
}

const PULL_TOKEN_DOMAIN = utf8.encode('/threads/pull-token/1\n');

/**
 * The bearer token that reads a private thread: base64url(HMAC-SHA256(follow key,
 * "/threads/pull-token/1\n" || thread ID bytes)). The follow key itself is never sent.
 * @param {Uint8Array} follow @param {ThreadId} thread
 * @returns {Promise<string>}
 */
export async function pullToken(follow, thread) {
  const key = await crypto.subtle.importKey('raw', follow, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const mac = await crypto.subtle.sign('HMAC', key, concat(PULL_TOKEN_DOMAIN, thread.bytes));
  return base64url.encode(new Uint8Array(mac));
}
