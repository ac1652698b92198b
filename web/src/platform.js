// The platform's primitives on a reader's hot path: SHA-256, AES-256-GCM and Ed25519. Browsers
// have WebCrypto, where every call is a round trip to another thread. Node.js also has
// `node:crypto`, whose synchronous hashing and AES-GCM take microseconds where a WebCrypto
// call costs tens: there a reader checks about half again as many records a second. Both
// accept and refuse the same inputs (Node's WebCrypto is built on `node:crypto`).

/** @type {typeof import('node:crypto') | null} */
const node = globalThis.process?.versions?.node ? await import('node:crypto') : null;

/** @param {Uint8Array} b a Node.js Buffer, as a plain view of the same bytes */
const view = (b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength);

/** @param {Uint8Array} bytes @returns {Promise<Uint8Array>} */
export async function sha256(bytes) {
  if (node) return view(node.createHash('sha256').update(bytes).digest());
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
}

const webAesKeys = new WeakMap();

/**
 * Opens AES-256-GCM `ciphertext || tag` under `key` and `iv`; throws when it does not open.
 * @param {Uint8Array | CryptoKey} key raw 32 bytes, or a WebCrypto key
 * @param {Uint8Array} iv
 * @param {Uint8Array} sealed
 * @returns {Promise<Uint8Array>}
 */
export async function aesGcmOpen(key, iv, sealed) {
  if (node && key instanceof Uint8Array) {
    const decipher = node.createDecipheriv('aes-256-gcm', key, iv);
    decipher.setAuthTag(sealed.subarray(sealed.length - 16));
    const head = decipher.update(sealed.subarray(0, sealed.length - 16));
    const tail = decipher.final();
    return view(tail.length ? Buffer.concat([head, tail]) : head);
  }
  return new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv }, await webAesKey(key), sealed));
}

/**
 * Seals with AES-256-GCM: `ciphertext || tag`.
 * @param {Uint8Array | CryptoKey} key @param {Uint8Array} iv @param {Uint8Array} plaintext
 * @returns {Promise<Uint8Array>}
 */
export async function aesGcmSeal(key, iv, plaintext) {
  return new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv }, await webAesKey(key), plaintext));
}

/** Raw key bytes imported once per key object (a reader passes the same objects each time). */
function webAesKey(key) {
  if (!(key instanceof Uint8Array)) return key;
  let imported = webAesKeys.get(key);
  if (!imported) {
    imported = crypto.subtle.importKey('raw', key, 'AES-GCM', false, ['encrypt', 'decrypt']);
    webAesKeys.set(key, imported);
  }
  return imported;
}

const verifyKeys = new WeakMap();

/**
 * Whether `signature` is the Ed25519 signature of `message` under the 32-byte `publicKey`.
 * WebCrypto on every platform: Node.js runs it on its thread pool, where verifications of a
 * page overlap, which beats its synchronous `node:crypto` call (161 µs against 84 µs here).
 * @param {object} owner what the key is cached under (its LogId)
 * @param {Uint8Array} publicKey @param {Uint8Array} signature @param {Uint8Array} message
 * @returns {Promise<boolean>}
 */
export async function ed25519Verify(owner, publicKey, signature, message) {
  let key = verifyKeys.get(owner);
  if (!key) {
    key = crypto.subtle.importKey('raw', publicKey, { name: 'Ed25519' }, false, ['verify']);
    verifyKeys.set(owner, key);
  }
  return crypto.subtle.verify({ name: 'Ed25519' }, await key, signature, message);
}
