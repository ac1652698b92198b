// Links: `threads:link:` + base64url (no padding) of JSON naming a thread, its key set, the
// joiner's role and the followers to reach. A link is a secret: whoever holds it holds the keys.

import { base64url, EncodingError, fromHex, fromUtf8, toHex, utf8 } from './bytes.js';
import { LogId, ThreadId, ThreadKey } from './ids.js';

const PREFIX = 'threads:link:';
const ROLES = ['writer', 'reader', 'follower'];

/**
 * @typedef {object} Link
 * @property {ThreadId} thread
 * @property {ThreadKey} key
 * @property {Uint8Array[]} earlierReadKeys read keys the thread used before, newest first
 * @property {'writer' | 'reader' | 'follower'} role
 * @property {LogId | null} snapshotsFrom
 * @property {boolean} public
 * @property {string[]} followers follower base URLs
 */

/**
 * Reads a link, refusing what the Rust client refuses.
 * @param {string} text
 * @returns {Link}
 */
export function parseLink(text) {
  const trimmed = text.trim();
  if (!trimmed.startsWith(PREFIX)) throw new EncodingError('expected threads:link:…');
  let json;
  try {
    json = JSON.parse(fromUtf8(base64url.decode(trimmed.slice(PREFIX.length))));
  } catch {
    throw new EncodingError('the link is damaged');
  }
  if (typeof json !== 'object' || json === null || !ROLES.includes(json.role)) {
    throw new EncodingError('the contents do not parse');
  }
  const key = ThreadKey.parse(String(json.key));
  if (json.role !== 'follower' && !key.read) throw new EncodingError('a writer or reader link must carry the read key');
  const earlier = (json.earlier_read_keys ?? []).map((k) => {
    const b = fromHex(String(k));
    if (b.length !== 32) throw new EncodingError('bad earlier read key');
    return b;
  });
  return {
    thread: ThreadId.parse(String(json.thread)),
    key,
    earlierReadKeys: earlier,
    role: json.role,
    snapshotsFrom: json.snapshots_from ? LogId.parse(String(json.snapshots_from)) : null,
    public: json.public === true,
    followers: Array.isArray(json.followers) ? json.followers.map(String) : [],
  };
}

/**
 * Writes a link that the Rust client reads.
 * @param {Link} link
 * @returns {string}
 */
export function formatLink(link) {
  const json = {
    thread: link.thread.toString(),
    key: link.key.toString(),
    role: link.role,
    public: link.public,
    followers: link.followers,
  };
  if (link.earlierReadKeys?.length) json.earlier_read_keys = link.earlierReadKeys.map(toHex);
  if (link.snapshotsFrom) json.snapshots_from = link.snapshotsFrom.toString();
  return PREFIX + base64url.encode(utf8.encode(JSON.stringify(json)));
}
