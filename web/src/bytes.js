// Byte helpers: text encodings (hex, base64, base32, base58btc, multibase) and varints.
// Every decoder refuses what it cannot read exactly rather than guessing.

const ALPHABET_32 = 'abcdefghijklmnopqrstuvwxyz234567';
const ALPHABET_58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
const ALPHABET_64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const ALPHABET_64_URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Thrown when text is not the encoding it should be. */
export class EncodingError extends Error {
  constructor(message) {
    super(message);
    this.name = 'EncodingError';
  }
}

export const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/**
 * Decodes UTF-8, refusing invalid sequences.
 * @param {Uint8Array} bytes
 * @returns {string}
 */
export function fromUtf8(bytes) {
  return utf8Strict.decode(bytes);
}

/**
 * @param {...Uint8Array} parts
 * @returns {Uint8Array}
 */
export function concat(...parts) {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * @param {Uint8Array} a
 * @param {Uint8Array} b
 */
export function equal(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** @param {Uint8Array} bytes */
export function toHex(bytes) {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

/** @param {string} text */
export function fromHex(text) {
  if (text.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(text)) throw new EncodingError('not hex');
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(2 * i, 2), 16);
  return out;
}

function lookup(alphabet) {
  const table = new Int16Array(128).fill(-1);
  for (let i = 0; i < alphabet.length; i++) table[alphabet.charCodeAt(i)] = i;
  return table;
}

const TABLE_32 = lookup(ALPHABET_32);
const TABLE_58 = lookup(ALPHABET_58);
const TABLE_64 = lookup(ALPHABET_64);
const TABLE_64_URL = lookup(ALPHABET_64_URL);

/** Encodes bits `bitsPerChar` at a time, most significant first, without padding. */
function encodeBits(bytes, alphabet, bitsPerChar) {
  let out = '';
  let buffer = 0;
  let bits = 0;
  const mask = (1 << bitsPerChar) - 1;
  for (const b of bytes) {
    buffer = (buffer << 8) | b;
    bits += 8;
    while (bits >= bitsPerChar) {
      bits -= bitsPerChar;
      out += alphabet[(buffer >> bits) & mask];
    }
  }
  if (bits > 0) out += alphabet[(buffer << (bitsPerChar - bits)) & mask];
  return out;
}

/** The inverse of encodeBits; refuses unknown characters and non-zero leftover bits. */
function decodeBits(text, table, bitsPerChar, name) {
  const out = new Uint8Array(Math.floor((text.length * bitsPerChar) / 8));
  let buffer = 0;
  let bits = 0;
  let at = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    const value = code < 128 ? table[code] : -1;
    if (value < 0) throw new EncodingError(`not ${name}: ${JSON.stringify(text[i])}`);
    buffer = ((buffer << bitsPerChar) | value) & 0xffffff;
    bits += bitsPerChar;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (buffer >> bits) & 0xff;
    }
  }
  if (bits >= bitsPerChar || (buffer & ((1 << bits) - 1)) !== 0) {
    throw new EncodingError(`not ${name}: bad length or trailing bits`);
  }
  return out;
}

/** RFC 4648 base32, lower case, no padding (multibase `b`). */
export const base32 = {
  encode: (bytes) => encodeBits(bytes, ALPHABET_32, 5),
  decode: (text) => decodeBits(text, TABLE_32, 5, 'base32'),
};

/** Standard base64 with padding, as the API's JSON carries node bytes. */
export const base64 = {
  encode(bytes) {
    const s = encodeBits(bytes, ALPHABET_64, 6);
    return s + '='.repeat((4 - (s.length % 4)) % 4);
  },
  decode(text) {
    if (text.length % 4 !== 0) throw new EncodingError('not base64: bad length');
    // The platform's decoder where there is one (pages carry megabytes of base64). Those are
    // lenient (whitespace, bits under the padding); the length and padding checks make them exact.
    const pad = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0;
    const len = (text.length / 4) * 3 - pad;
    if (pad && TABLE_64[text.charCodeAt(text.length - pad - 1)] & (pad === 2 ? 0xf : 0x3)) {
      throw new EncodingError('not base64: bits under the padding');
    }
    let out = null;
    try {
      if (Uint8Array.fromBase64) out = Uint8Array.fromBase64(text);
      // Node's decoder also takes the URL-safe alphabet.
      else if (globalThis.Buffer && !/[-_]/.test(text)) out = new Uint8Array(globalThis.Buffer.from(text, 'base64'));
    } catch {
      throw new EncodingError('not base64');
    }
    if (out) {
      if (out.length !== len) throw new EncodingError('not base64');
      return out;
    }
    const bare = text.replace(/={1,2}$/, '');
    return decodeBits(bare, TABLE_64, 6, 'base64');
  },
};

/** URL-safe base64 without padding: links and pull tokens. */
export const base64url = {
  encode: (bytes) => encodeBits(bytes, ALPHABET_64_URL, 6),
  decode: (text) => decodeBits(text, TABLE_64_URL, 6, 'base64url'),
};

/** Bitcoin's base58 (libp2p peer IDs): leading zero bytes are leading `1`s. */
export const base58btc = {
  encode(bytes) {
    let zeros = 0;
    while (zeros < bytes.length && bytes[zeros] === 0) zeros++;
    const digits = []; // base 58, least significant first
    for (let i = zeros; i < bytes.length; i++) {
      let carry = bytes[i];
      for (let j = 0; j < digits.length; j++) {
        carry += digits[j] * 256;
        digits[j] = carry % 58;
        carry = Math.floor(carry / 58);
      }
      for (; carry > 0; carry = Math.floor(carry / 58)) digits.push(carry % 58);
    }
    let out = '1'.repeat(zeros);
    for (let i = digits.length - 1; i >= 0; i--) out += ALPHABET_58[digits[i]];
    return out;
  },
  decode(text) {
    let zeros = 0;
    while (zeros < text.length && text[zeros] === '1') zeros++;
    const bytes = []; // base 256, least significant first
    for (let i = zeros; i < text.length; i++) {
      const code = text.charCodeAt(i);
      let carry = code < 128 ? TABLE_58[code] : -1;
      if (carry < 0) throw new EncodingError(`not base58btc: ${JSON.stringify(text[i])}`);
      for (let j = 0; j < bytes.length; j++) {
        carry += bytes[j] * 58;
        bytes[j] = carry & 0xff;
        carry >>= 8;
      }
      for (; carry > 0; carry >>= 8) bytes.push(carry & 0xff);
    }
    const out = new Uint8Array(zeros + bytes.length);
    for (let i = 0; i < bytes.length; i++) out[out.length - 1 - i] = bytes[i];
    return out;
  },
};

/**
 * Multibase text: the first character names the base. Reads the bases IDs and keys use.
 * @param {string} text
 * @returns {Uint8Array}
 */
export function multibaseDecode(text) {
  const rest = text.slice(1);
  switch (text[0]) {
    case 'b': return base32.decode(rest);
    case 'B': return base32.decode(rest.toLowerCase());
    case 'z': return base58btc.decode(rest);
    case 'f': return fromHex(rest);
    case 'u': return base64url.decode(rest);
    case 'm': return decodeBits(rest, TABLE_64, 6, 'base64');
    default: throw new EncodingError(`not multibase text (prefix ${JSON.stringify(text[0] ?? '')})`);
  }
}

/** Multibase base32 (`b…`), the text form of thread IDs, keys and CIDs. */
export function multibaseBase32(bytes) {
  return 'b' + base32.encode(bytes);
}

/**
 * Reads an unsigned LEB128 varint at `at`, refusing non-minimal forms (as unsigned-varint does).
 * @param {Uint8Array} bytes
 * @param {number} at
 * @returns {[number, number]} value and the offset after it
 */
export function readVarint(bytes, at = 0) {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 9; i++) {
    if (at + i >= bytes.length) throw new EncodingError('varint ends early');
    const b = bytes[at + i];
    value += (b & 0x7f) * scale;
    if ((b & 0x80) === 0) {
      if (b === 0 && i > 0) throw new EncodingError('varint is not minimal');
      if (!Number.isSafeInteger(value)) throw new EncodingError('varint is too large');
      return [value, at + i + 1];
    }
    scale *= 128;
  }
  throw new EncodingError('varint is too long');
}

/** @param {number} value */
export function writeVarint(value) {
  const out = [];
  while (value >= 0x80) {
    out.push((value % 128) | 0x80);
    value = Math.floor(value / 128);
  }
  out.push(value);
  return Uint8Array.from(out);
}
