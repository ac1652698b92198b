// Strict DAG-CBOR: the reader refuses every encoding the Rust core refuses (non-shortest
// heads, indefinite lengths, map keys out of length-first order or repeated, bytes after the
// item), so a node's CID is always the hash of the bytes received. The same reader also decodes
// whole application bodies (`decodeValue`), and `encodeValue` writes canonical DAG-CBOR.

import { CID } from './cid.js';
import { fromUtf8, utf8 } from './bytes.js';

/**
 * Why bytes were refused. `kind` names the fault as the Rust core's `DecodeError` does:
 * truncated, trailing_bytes, not_canonical, indefinite, unexpected_type, unexpected_key,
 * missing_key, duplicate_key, key_order, key_not_utf8, bad_link, unsupported.
 */
export class CborError extends Error {
  /** @param {string} kind @param {string} message */
  constructor(kind, message) {
    super(message);
    this.name = 'CborError';
    this.kind = kind;
  }
}

/** Faults the API reports as `not_canonical`; every other fault is `malformed`. */
export const NOT_CANONICAL = new Set(['not_canonical', 'key_order', 'duplicate_key', 'indefinite']);

const MAJOR_UINT = 0;
const MAJOR_NEGINT = 1;
const MAJOR_BYTES = 2;
const MAJOR_TEXT = 3;
const MAJOR_ARRAY = 4;
const MAJOR_MAP = 5;
const MAJOR_TAG = 6;
const MAJOR_SIMPLE = 7;
const TAG_CID = 42;
const MAX_DEPTH = 64;

/** A cursor over untrusted bytes; every read checks bounds and canonical form. */
export class Reader {
  /** @param {Uint8Array} bytes */
  constructor(bytes) {
    this.bytes = bytes;
    this.at = 0;
  }

  take(n) {
    if (this.bytes.length - this.at < n) throw new CborError('truncated', 'input ends early');
    const out = this.bytes.subarray(this.at, this.at + n);
    this.at += n;
    return out;
  }

  /** The next item's major type and argument (a number, or a BigInt past 2^53). */
  head() {
    const initial = this.take(1)[0];
    const major = initial >> 5;
    const info = initial & 0x1f;
    if (info < 24) return [major, info];
    let arg;
    let shortest;
    const view = (n) => {
      const b = this.take(n);
      return new DataView(b.buffer, b.byteOffset, n);
    };
    switch (info) {
      case 24: arg = this.take(1)[0]; shortest = arg >= 24; break;
      case 25: arg = view(2).getUint16(0); shortest = arg > 0xff; break;
      case 26: arg = view(4).getUint32(0); shortest = arg > 0xffff; break;
      case 27: {
        const big = view(8).getBigUint64(0);
        shortest = big > 0xffffffffn;
        arg = big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
        break;
      }
      default: throw new CborError('indefinite', 'indefinite-length or reserved encodings are not DAG-CBOR');
    }
    // Floats (major 7) have fixed widths; only integer and length heads must be shortest.
    if (!shortest && major !== MAJOR_SIMPLE) {
      throw new CborError('not_canonical', 'an integer or length is not in its shortest form');
    }
    return [major, arg, info];
  }

  expect(major, what) {
    const [found, arg] = this.head();
    if (found !== major) {
      throw new CborError('unexpected_type', `expected ${what}, found CBOR major type ${found}`);
    }
    return arg;
  }

  sized(len) {
    if (typeof len !== 'number') throw new CborError('truncated', 'input ends early');
    return this.take(len);
  }

  bytesItem() {
    return this.sized(this.expect(MAJOR_BYTES, 'a byte string'));
  }

  mapLen() {
    return this.expect(MAJOR_MAP, 'a map');
  }

  key() {
    const raw = this.sized(this.expect(MAJOR_TEXT, 'a text map key'));
    try {
      return fromUtf8(raw);
    } catch {
      throw new CborError('key_not_utf8', 'map key is not UTF-8');
    }
  }

  link() {
    const tag = this.expect(MAJOR_TAG, 'a link (tag 42)');
    if (tag !== TAG_CID) throw new CborError('bad_link', 'bad link: tag is not 42');
    return this.linkBody();
  }

  linkBody() {
    const raw = this.bytesItem();
    if (raw.length === 0 || raw[0] !== 0) {
      throw new CborError('bad_link', 'bad link: missing the 0x00 multibase prefix');
    }
    try {
      return CID.decode(raw.subarray(1));
    } catch {
      throw new CborError('bad_link', 'bad link: not a CID');
    }
  }

  finish() {
    const left = this.bytes.length - this.at;
    if (left !== 0) throw new CborError('trailing_bytes', `${left} bytes follow the encoded item`);
  }
}

/** Length-first, then bytewise: DAG-CBOR's canonical order of map keys. */
function keyOrder(a, b) {
  const x = utf8.encode(a);
  const y = utf8.encode(b);
  if (x.length !== y.length) return x.length - y.length;
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return x[i] - y[i];
  return 0;
}

/**
 * Reads a map whose allowed keys are `keys`, given in canonical order, calling
 * `field(index, reader)` once per present key. Absent keys are the caller's check.
 * @param {Reader} r
 * @param {string[]} keys
 * @param {(index: number, r: Reader) => void} field
 */
export function readMap(r, keys, field) {
  const len = r.mapLen();
  const seen = new Array(keys.length).fill(false);
  let last = -1;
  for (let n = 0; n < len; n++) {
    const key = r.key();
    const index = keys.indexOf(key);
    if (index < 0) throw new CborError('unexpected_key', `unexpected map key ${JSON.stringify(key)}`);
    if (seen[index]) throw new CborError('duplicate_key', `map key ${JSON.stringify(key)} appears twice`);
    if (last > index) throw new CborError('key_order', `map key ${JSON.stringify(key)} is out of canonical order`);
    seen[index] = true;
    last = index;
    field(index, r);
  }
}

/** Appends canonical DAG-CBOR items. */
export class Writer {
  constructor() {
    this.parts = [];
    this.len = 0;
  }

  push(bytes) {
    this.parts.push(bytes);
    this.len += bytes.length;
  }

  head(major, arg) {
    const m = major << 5;
    if (typeof arg === 'bigint' || arg > 0xffffffff) {
      const out = new Uint8Array(9);
      out[0] = m | 27;
      new DataView(out.buffer).setBigUint64(1, BigInt(arg));
      this.push(out);
    } else if (arg < 24) {
      this.push(Uint8Array.of(m | arg));
    } else if (arg <= 0xff) {
      this.push(Uint8Array.of(m | 24, arg));
    } else if (arg <= 0xffff) {
      this.push(Uint8Array.of(m | 25, arg >> 8, arg & 0xff));
    } else {
      const out = new Uint8Array(5);
      out[0] = m | 26;
      new DataView(out.buffer).setUint32(1, arg);
      this.push(out);
    }
  }

  bytes(b) {
    this.head(MAJOR_BYTES, b.length);
    this.push(b);
  }

  map(len) {
    this.head(MAJOR_MAP, len);
  }

  key(k) {
    const b = utf8.encode(k);
    this.head(MAJOR_TEXT, b.length);
    this.push(b);
  }

  /** @param {CID} cid */
  link(cid) {
    this.head(MAJOR_TAG, TAG_CID);
    this.head(MAJOR_BYTES, cid.bytes.length + 1);
    this.push(Uint8Array.of(0));
    this.push(cid.bytes);
  }

  /** Any IPLD value: see `encodeValue`. */
  value(v, depth = 0) {
    if (depth > MAX_DEPTH) throw new CborError('unsupported', 'value nests too deeply');
    if (v === null) return this.push(Uint8Array.of(0xf6));
    if (v === true) return this.push(Uint8Array.of(0xf5));
    if (v === false) return this.push(Uint8Array.of(0xf4));
    if (typeof v === 'bigint') {
      return v >= 0n ? this.head(MAJOR_UINT, v) : this.head(MAJOR_NEGINT, -1n - v);
    }
    if (typeof v === 'number') {
      if (Number.isSafeInteger(v)) {
        return v >= 0 ? this.head(MAJOR_UINT, v) : this.head(MAJOR_NEGINT, -1 - v);
      }
      if (!Number.isFinite(v)) throw new CborError('unsupported', 'DAG-CBOR has no NaN or infinities');
      const out = new Uint8Array(9);
      out[0] = 0xfb;
      new DataView(out.buffer).setFloat64(1, v);
      return this.push(out);
    }
    if (typeof v === 'string') {
      const b = utf8.encode(v);
      this.head(MAJOR_TEXT, b.length);
      return this.push(b);
    }
    if (v instanceof Uint8Array) return this.bytes(v);
    if (v instanceof CID) return this.link(v);
    if (Array.isArray(v)) {
      this.head(MAJOR_ARRAY, v.length);
      for (const item of v) this.value(item, depth + 1);
      return undefined;
    }
    if (typeof v === 'object') {
      const keys = Object.keys(v).filter((k) => v[k] !== undefined).sort(keyOrder);
      this.map(keys.length);
      for (const k of keys) {
        this.key(k);
        this.value(v[k], depth + 1);
      }
      return undefined;
    }
    throw new CborError('unsupported', `cannot encode a ${typeof v}`);
  }

  finish() {
    const out = new Uint8Array(this.len);
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

/**
 * Canonical DAG-CBOR of a value: objects (keys sorted), arrays, strings, safe integers and
 * BigInts, other numbers as 64-bit floats, booleans, null, Uint8Array (bytes) and CID (links).
 * @param {unknown} value
 * @returns {Uint8Array}
 */
export function encodeValue(value) {
  const w = new Writer();
  w.value(value);
  return w.finish();
}

function readValue(r, depth) {
  if (depth > MAX_DEPTH) throw new CborError('unsupported', 'value nests too deeply');
  const [major, arg, info] = r.head();
  switch (major) {
    case MAJOR_UINT: return arg;
    case MAJOR_NEGINT: return typeof arg === 'bigint' || arg === Number.MAX_SAFE_INTEGER ? -1n - BigInt(arg) : -1 - arg;
    case MAJOR_BYTES: return r.sized(arg).slice();
    case MAJOR_TEXT: {
      try {
        return fromUtf8(r.sized(arg));
      } catch (e) {
        if (e instanceof CborError) throw e;
        throw new CborError('unsupported', 'text is not UTF-8');
      }
    }
    case MAJOR_ARRAY: {
      if (typeof arg !== 'number' || arg > r.bytes.length - r.at) throw new CborError('truncated', 'input ends early');
      const out = [];
      for (let i = 0; i < arg; i++) out.push(readValue(r, depth + 1));
      return out;
    }
    case MAJOR_MAP: {
      if (typeof arg !== 'number' || arg > r.bytes.length - r.at) throw new CborError('truncated', 'input ends early');
      const out = {};
      let last = null;
      for (let i = 0; i < arg; i++) {
        const key = r.key();
        if (last !== null) {
          const order = keyOrder(last, key);
          if (order === 0) throw new CborError('duplicate_key', `map key ${JSON.stringify(key)} appears twice`);
          if (order > 0) throw new CborError('key_order', `map key ${JSON.stringify(key)} is out of canonical order`);
        }
        last = key;
        Object.defineProperty(out, key, { value: readValue(r, depth + 1), enumerable: true, writable: true, configurable: true });
      }
      return out;
    }
    case MAJOR_TAG:
      if (arg !== TAG_CID) throw new CborError('unsupported', `tag ${arg} is not DAG-CBOR`);
      return r.linkBody();
    default:
      if (info === undefined) {
        if (arg === 20) return false;
        if (arg === 21) return true;
        if (arg === 22) return null;
      }
      if (info === 27) {
        const b = r.bytes.subarray(r.at - 8, r.at);
        const f = new DataView(b.buffer, b.byteOffset, 8).getFloat64(0);
        if (!Number.isFinite(f)) throw new CborError('unsupported', 'DAG-CBOR has no NaN or infinities');
        return f;
      }
      throw new CborError('not_canonical', 'DAG-CBOR floats are 64-bit; other simple values are not allowed');
  }
}

/**
 * Decodes one whole DAG-CBOR value, strictly.
 * @param {Uint8Array} bytes
 * @returns {unknown}
 */
export function decodeValue(bytes) {
  const r = new Reader(bytes);
  const value = readValue(r, 0);
  r.finish();
  return value;
}
