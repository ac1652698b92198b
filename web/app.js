// The page at `/`: opens a thread from a link (pasted, or in the URL's fragment, which never
// reaches the server), shows its events verified and decrypted here, live, and lets a writer
// link write. Content is only ever put in the page as text, never as markup.

import { base64, CID, Follower, identityString, indexedDbStore, parseLink, ThreadReader, ThreadWriter } from './src/index.js';

/** The page keeps at most this many events in the document; counts cover them all. */
const MAX_SHOWN = 500;
/**
 * While catching up, the page is drawn at most this often: drawing the newest 500 cards again
 * for each page of 1,000 records cost a page's main thread as much as all else it does for them.
 */
const CATCH_UP_DRAW_MS = 1000;

const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'medium' });
const $ = (id) => document.getElementById(id);
const follower = new Follower();
let session = null;

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function short(text, keep = 10) {
  return text.length > 2 * keep + 1 ? `${text.slice(0, keep)}…${text.slice(-keep)}` : text;
}

/** A body as JSON text: links as `{"/": cid}`, bytes as `{"/": {"bytes": base64}}`. */
function display(value) {
  return JSON.stringify(value, function (key, v) {
    const raw = this[key];
    if (raw instanceof CID) return { '/': raw.toString() };
    if (raw instanceof Uint8Array) return { '/': { bytes: base64.encode(raw) } };
    if (typeof raw === 'bigint') return raw.toString();
    return v;
  }, 2);
}

function renderEntry(entry) {
  const item = element('li', entry.error ? 'event refused' : 'event');
  item.dataset.cid = entry.cid;
  const meta = element('div', 'meta');
  meta.append(element('span', 'log', `log ${short(entry.log, 6)}`));
  if (entry.error) {
    meta.append(element('span', 'verdict bad', `refused: ${entry.error.code}`));
    item.append(meta, element('p', 'reason', entry.error.message));
    item.dataset.code = entry.error.code;
  } else {
    meta.append(
      element('span', 'position', `#${entry.counter}`),
      element('span', 'verdict ok', entry.rule === 'current' ? 'signature verified' : 'legacy signature (allowed)'),
    );
    if (entry.arrivedMs) meta.append(element('time', 'time', timeFormat.format(entry.arrivedMs)));
    const value = entry.value;
    if (value && typeof value === 'object' && typeof value.text === 'string' && Object.keys(value).length === 1) {
      item.append(meta, element('p', 'text', value.text));
    } else if (value === undefined) {
      item.append(meta, element('p', 'reason', `a body of ${entry.body.length} bytes that is not DAG-CBOR`));
    } else {
      item.append(meta, element('pre', 'body', display(value)));
    }
    const author = entry.author?.length === 36 ? identityString(entry.author.subarray(4)) : '';
    item.title = `record ${entry.cid}\nauthor ${author}`;
  }
  item.append(element('code', 'cid', short(entry.cid, 8)));
  return item;
}

/** Counts every entry at once; draws at most once a frame, only what stays in the page. */
function show(entries) {
  for (const entry of entries) {
    if (entry.error) session.bad++;
    else session.ok++;
  }
  session.pending.push(...entries);
  if (session.pending.length > MAX_SHOWN) session.pending.splice(0, session.pending.length - MAX_SHOWN);
  schedule(session);
}

/** Asks for a draw: in the next frame, or, while catching up, once the last draw is old enough. */
function schedule(mine) {
  if (mine.frame) return;
  const wait = mine.caughtUp ? 0 : mine.drawnAt + CATCH_UP_DRAW_MS - performance.now();
  if (wait > 0) {
    mine.timer ??= setTimeout(() => {
      mine.timer = null;
      schedule(mine);
    }, wait);
    return;
  }
  clearTimeout(mine.timer);
  mine.timer = null;
  mine.frame = requestAnimationFrame(() => flush(mine));
}

function flush(mine) {
  mine.frame = null;
  mine.drawnAt = performance.now();
  if (mine !== session) return;
  const list = $('events');
  const fragment = document.createDocumentFragment();
  for (const entry of mine.pending) fragment.prepend(renderEntry(entry));
  mine.pending = [];
  list.prepend(fragment);
  while (list.childElementCount > MAX_SHOWN) list.lastElementChild.remove();
  $('count-ok').textContent = String(mine.ok);
  $('count-bad').textContent = String(mine.bad);
  const total = mine.ok + mine.bad;
  $('shown').hidden = total <= MAX_SHOWN;
  $('shown').textContent = `Showing the newest ${MAX_SHOWN} of ${total} events.`;
  if (mine.caughtUp && !document.body.dataset.caughtUp) {
    // When the page first shows everything it caught up (since navigation): for tests and benchmarks.
    document.body.dataset.caughtUp = String(total);
    document.body.dataset.caughtUpMs = String(Math.round(performance.now()));
  }
}

function status(state, detail) {
  const s = $('status');
  s.textContent = state;
  s.dataset.state = state;
  s.title = detail ?? '';
}

async function open(text) {
  $('open-error').hidden = true;
  let link;
  try {
    link = parseLink(text);
  } catch (e) {
    link = null;
    $('open-error').textContent = `That is not a thread link: ${e.message}.`;
  }
  if (link && !link.key.read) {
    link = null;
    $('open-error').textContent = 'That link only follows the thread: it has no read key, so its events cannot be read. Ask for a reader link.';
  }
  if (!link) {
    $('open-error').hidden = false;
    return;
  }
  session?.abort.abort();
  session = { abort: new AbortController(), ok: 0, bad: 0, link, writer: null, pending: [], frame: null, timer: null, drawnAt: -Infinity };
  $('events').replaceChildren();
  delete document.body.dataset.caughtUp;
  $('thread-id').textContent = link.thread.toString();
  $('thread').hidden = false;
  $('write').hidden = link.role !== 'writer';
  $('write-status').textContent = '';
  status('catching up');
  const reader = new ThreadReader(follower, link);
  const mine = session;
  try {
    await reader.follow((entries) => mine === session && show(entries), {
      signal: mine.abort.signal,
      onStatus: (state, detail) => {
        if (mine !== session) return;
        if (state === 'live' && !mine.caughtUp) {
          mine.caughtUp = true;
          schedule(mine);
        }
        status(state, detail);
      },
    });
  } catch (e) {
    if (mine === session) status('stopped', e.message);
  }
}

async function write(text) {
  const mine = session;
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    value = { text };
  }
  $('write-status').textContent = 'writing…';
  try {
    mine.writer ??= await ThreadWriter.open(follower, mine.link, await indexedDbStore());
    const head = await mine.writer.write(value);
    $('write-status').textContent = `written: #${head.counter} of your log`;
    $('event').value = '';
  } catch (e) {
    mine.writer = null;
    $('write-status').textContent = `not written: ${e.message}`;
  }
}

$('open').addEventListener('submit', (event) => {
  event.preventDefault();
  open($('link').value);
});

$('write').addEventListener('submit', (event) => {
  event.preventDefault();
  const text = $('event').value.trim();
  if (text && session) write(text);
});

$('event').addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) $('write').requestSubmit();
});

function fromFragment() {
  const text = decodeURIComponent(location.hash.slice(1));
  if (text) {
    $('link').value = text;
    open(text);
  }
}

window.addEventListener('hashchange', fromFragment);
fromFragment();
