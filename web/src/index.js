// threads-web: read, verify and write Threads logs with nothing but the platform's WebCrypto.

export * from './bytes.js';
export * from './cbor.js';
export * from './cid.js';
export * from './ids.js';
export * from './link.js';
export * from './record.js';
export * from './follower.js';
export * from './reader.js';
export * from './writer.js';
export { CheckPool, checkPool } from './pool.js';
