// CIDs: content identifiers of nodes, read exactly (nothing may follow a CID's bytes or text).

import { base58btc, concat, equal, EncodingError, multibaseBase32, multibaseDecode, readVarint, writeVarint } from './bytes.js';
import { sha256 } from './platform.js';

/** Multicodec of DAG-CBOR, the codec of every record node. */
export const DAG_CBOR = 0x71;
/** Multicodec of sha2-256, the hash of every record node. */
export const SHA2_256 = 0x12;
/** The largest digest a CID may carry, as the Rust core's `Cid` allows. */
const MAX_DIGEST = 64;

export class CID {
  /**
   * @param {number} version 0 or 1
   * @param {number} codec multicodec of the content
   * @param {number} hashCode multicodec of the hash function
   * @param {Uint8Array} digest
   * @param {Uint8Array} bytes the binary CID
   */
  constructor(version, codec, hashCode, digest, bytes) {
    this.version = version;
    this.codec = codec;
    this.hashCode = hashCode;
    this.digest = digest;
    this.bytes = bytes;
  }

  /** A CIDv1 of `codec` over a sha2-256 digest. */
  static v1(codec, digest) {
    const bytes = concat(writeVarint(1), writeVarint(codec), Uint8Array.of(SHA2_256, digest.length), digest);
    return new CID(1, codec, SHA2_256, digest, bytes);
  }

  /**
   * The binary form, exactly: refuses non-minimal varints and trailing bytes.
   * @param {Uint8Array} bytes
   */
  static decode(bytes) {
    if (bytes.length === 34 && bytes[0] === 0x12 && bytes[1] === 0x20) {
      return new CID(0, DAG_PB, SHA2_256, bytes.slice(2), bytes.slice());
    }
    const [version, a] = readVarint(bytes, 0);
    if (version !== 1) throw new EncodingError(`CID version ${version} is not 1`);
    const [codec, b] = readVarint(bytes, a);
    const [hashCode, c] = readVarint(bytes, b);
    const [size, d] = readVarint(bytes, c);
    if (size > MAX_DIGEST) throw new EncodingError('CID digest is too long');
    if (bytes.length !== d + size) throw new EncodingError('CID length does not match its digest');
    return new CID(1, codec, hashCode, bytes.slice(d), bytes.slice());
  }

  /**
   * The text form, exactly: multibase for CIDv1, bare base58btc (`Qm…`) for CIDv0.
   * @param {string} text
   */
  static parse(text) {
    if (text.length === 46 && text.startsWith('Qm')) return CID.decode(base58btc.decode(text));
    const cid = CID.decode(multibaseDecode(text));
    if (cid.version === 0) throw new EncodingError('a CIDv0 is not multibase text');
    return cid;
  }

  /** @param {CID} other */
  equals(other) {
    return other instanceof CID && equal(this.bytes, other.bytes);
  }

  toString() {
    return this.version === 0 ? base58btc.encode(this.bytes) : multibaseBase32(this.bytes);
  }

  toJSON() {
    return { '/': this.toString() };
  }
}

const DAG_PB = 0x70;

/**
 * The CIDv1 (dag-cbor, sha2-256) of a node's exact bytes.
 * @param {Uint8Array} bytes
 * @returns {Promise<CID>}
 */
export async function cidOf(bytes) {
  return CID.v1(DAG_CBOR, await sha256(bytes));
}
