// A follower server over HTTP, as `docs/api.md` describes it: pulls by cursor, live records
// over WebSocket (or long-polling where there is none), registration by signed request, push.
// Nothing here trusts the server: what it returns is verified by `reader.js`.

import { base64, toHex, utf8 } from './bytes.js';

/** An error answer of the API: its HTTP status and stable `code`. */
export class ApiError extends Error {
  /** @param {number} status @param {string} code @param {string} detail */
  constructor(status, code, detail) {
    super(`${code}: ${detail}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

/**
 * A record as the API carries it: IDs as text, nodes as base64.
 * @typedef {object} WireRecord
 * @property {string} thread
 * @property {string} log
 * @property {string} cid what the server says the record's CID is (checked, never trusted)
 * @property {number} counter
 * @property {number} seq
 * @property {number} arrived_ms
 * @property {string} record
 * @property {string} event
 * @property {string} header
 * @property {string} body
 */

const REQUEST_DOMAIN = utf8.encode('/threads/request/1\n');

export class Follower {
  /**
   * @param {string} [base] the server's base URL; by default the page's own origin
   * @param {{ fetch?: typeof fetch }} [options]
   */
  constructor(base = globalThis.location?.origin ?? '', options = {}) {
    this.base = base.replace(/\/+$/, '');
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  async request(path, { method = 'GET', body, token, signal } = {}) {
    const response = await this.send(path, { method, body, token, signal });
    const { json, text } = await readJson(response);
    if (!response.ok && !(response.status === 409 && json?.results)) throw apiError(response, json, text);
    return json;
  }

  /** Sends a request with the API's headers; the caller reads the answer. */
  send(path, { method = 'GET', body, token, signal }) {
    const headers = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (token) headers.authorization = `Bearer ${token}`;
    return this.fetch(this.base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  }

  /** `GET /v1/server`: the server's ID (what signed requests name) and limits. */
  server() {
    return this.request('/v1/server');
  }

  /** `GET /v1/threads/{thread}/logs/{log}`: a log's head and addresses. */
  log(thread, log, { token } = {}) {
    return this.request(`/v1/threads/${thread}/logs/${log}`, { token });
  }

  /**
   * One page of a thread in arrival order, after `after` (null: from the start).
   * @param {string} thread
   * @param {{ after?: string | null, limit?: number, wait?: number, token?: string, signal?: AbortSignal }} [options]
   * @returns {Promise<{ records: WireRecord[], cursor: string, more: boolean }>}
   */
  pull(thread, options = {}) {
    return this.request(pullPath(thread, options), options);
  }

  /**
   * The same page as `pull`, unparsed: its JSON bytes, and its cursor and whether more follow
   * (from the page's headers), so the next page can be asked for before this one is read.
   * @param {string} thread
   * @param {{ after?: string | null, limit?: number, token?: string, signal?: AbortSignal }} [options]
   * @returns {Promise<{ bytes: ArrayBuffer, cursor: string, more: boolean }>}
   */
  async pullBytes(thread, options = {}) {
    const response = await this.send(pullPath(thread, options), options);
    if (!response.ok) {
      const { json, text } = await readJson(response);
      throw apiError(response, json, text);
    }
    const cursor = response.headers.get('x-threads-cursor');
    const more = response.headers.get('x-threads-more');
    if (cursor === null || (more !== 'true' && more !== 'false')) {
      throw new ApiError(response.status, 'http_error', 'the page has no x-threads-cursor or x-threads-more header');
    }
    return { bytes: await response.arrayBuffer(), cursor, more: more === 'true' };
  }

  /** The WebSocket URL for live records. */
  wsUrl() {
    const url = new URL(this.base + '/v1/ws', globalThis.location?.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.toString();
  }

  /**
   * Signs `action` for this server with a log's key (see `signRequest`) and sends it.
   * @param {string} path `/v1/registrations` or `/v1/webhooks`
   * @param {{ thread: string, log: string, key: CryptoKey, action: object, token?: string }} request
   */
  async signed(path, { thread, log, key, action, token }) {
    const { server_id: server } = await this.server();
    const body = await signRequest({ server, thread, log, key, action });
    return this.request(path, { method: 'POST', body, token });
  }

  /**
   * Pushes records (each `{thread, log, nodes}`); answers one result per record, in order.
   * @param {{ thread: string, log: string, nodes: import('./record.js').Nodes }[]} records
   */
  async push(records) {
    const body = {
      records: records.map(({ thread, log, nodes }) => ({
        thread,
        log,
        record: base64.encode(nodes.record),
        event: base64.encode(nodes.event),
        header: base64.encode(nodes.header),
        body: base64.encode(nodes.body),
      })),
    };
    return this.request('/v1/records', { method: 'POST', body });
  }
}

/** The path of a thread page after `after`. */
function pullPath(thread, { after = null, limit, wait } = {}) {
  const query = new URLSearchParams();
  if (after) query.set('after', after);
  if (limit) query.set('limit', String(limit));
  if (wait) query.set('wait', String(wait));
  const qs = query.toString();
  return `/v1/threads/${thread}/records${qs ? '?' + qs : ''}`;
}

/** An answer's text, and its JSON (null when it is not JSON: reported with the status). */
async function readJson(response) {
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON.
  }
  return { json, text };
}

/** An error answer as an `ApiError`: its JSON's code and detail, else what it said. */
function apiError(response, json, text) {
  return new ApiError(response.status, json?.code ?? 'http_error', json?.detail ?? (text.slice(0, 200) || response.statusText));
}

/**
 * The four nodes of a wire record, decoded from base64.
 * @param {WireRecord} wire
 * @returns {import('./record.js').Nodes}
 */
export function wireNodes(wire) {
  return {
    record: base64.decode(wire.record),
    event: base64.decode(wire.event),
    header: base64.decode(wire.header),
    body: base64.decode(wire.body),
  };
}

/**
 * A request signed by a log's Ed25519 key: `{payload, signature}`, the signature over
 * `"/threads/request/1\n" || payload`. The payload names the server it is for, a time and a
 * fresh nonce, so it cannot be replayed elsewhere or twice.
 * @param {{ server: string, thread: string, log: string, key: CryptoKey, action: object, now?: number }} request
 * @returns {Promise<{ payload: string, signature: string }>}
 */
export async function signRequest({ server, thread, log, key, action, now = Date.now() }) {
  const payload = JSON.stringify({
    server,
    thread,
    log,
    timestamp_ms: now,
    nonce: toHex(crypto.getRandomValues(new Uint8Array(16))),
    ...action,
  });
  const text = utf8.encode(payload);
  const message = new Uint8Array(REQUEST_DOMAIN.length + text.length);
  message.set(REQUEST_DOMAIN);
  message.set(text, REQUEST_DOMAIN.length);
  const signature = new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, key, message));
  return { payload, signature: base64.encode(signature) };
}
