//! Atom (RFC 4287) and RSS 2.0 feeds of a thread or of one log, archived as RFC 5005 says.
//!
//! The *current* feed holds the newest [`FEED_PAGE`] entries and links `prev-archive` to the
//! newest complete archive page. Archive page `k` (`?page=k`) holds positions
//! `(k-1)·N+1 ..= k·N` (thread sequence numbers, or log counters); once complete it never
//! changes and is cacheable forever. Every answer has an ETag and a Last-Modified, and answers
//! a matching conditional GET with 304.
//!
//! An entry's ID is its record's CID; its content is the record as a one-record CAR (base64 in
//! Atom, an enclosure in RSS): still encrypted, so the feed reveals nothing that the follower
//! could not read either. Private threads take the pull token as `?token=` too, since feed
//! readers cannot set headers; links in the feed carry it on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use atom_syndication as atom;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, FixedOffset};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use threads_core::{LogId, ThreadId};
use threads_store::StoredRecord;

use super::wire::{write_car, CarItem, CAR, RAW};
use super::{parse_log, parse_thread, presented_token};
use crate::server::error::{ApiError, ApiResult};
use crate::server::AppState;

/// Entries per feed document (current feed and each archive page).
pub const FEED_PAGE: u64 = 100;
const HISTORY_NS: &str = "http://purl.org/syndication/history/1.0";
const ATOM_TYPE: &str = "application/atom+xml";
const RSS_TYPE: &str = "application/rss+xml";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/threads/{thread}/feed.atom",
            get(|s, p, q, h| thread_feed(s, p, q, h, Format::Atom)),
        )
        .route(
            "/v1/threads/{thread}/feed.rss",
            get(|s, p, q, h| thread_feed(s, p, q, h, Format::Rss)),
        )
        .route(
            "/v1/threads/{thread}/logs/{log}/feed.atom",
            get(|s, p, q, h| log_feed(s, p, q, h, Format::Atom)),
        )
        .route(
            "/v1/threads/{thread}/logs/{log}/feed.rss",
            get(|s, p, q, h| log_feed(s, p, q, h, Format::Rss)),
        )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Atom,
    Rss,
}

#[derive(Deserialize)]
struct FeedQuery {
    /// An archive page, from 1; absent for the current feed.
    page: Option<u64>,
    token: Option<String>,
}

/// Which records a feed is about, and what it needs to describe them.
struct Feed {
    thread: ThreadId,
    log: Option<LogId>,
    /// The newest position (sequence number or counter): how many pages exist.
    newest: u64,
    public: bool,
    created_ms: i64,
    /// The origin links start with, e.g. `http://127.0.0.1:8006`.
    base: String,
    /// `?token=…` to carry on in links, when one was given in the query.
    token: Option<String>,
    /// Changes whenever the feed's records do (arrivals and deletions): keys the cache.
    version: String,
}

/// Rendered feed documents, reused until their records change: a feed reader polling a busy
/// feed costs one small query, not a hundred records read and encoded. Bounded in bytes; when
/// full it starts afresh.
#[derive(Default)]
pub struct FeedCache {
    docs: std::sync::Mutex<(usize, HashMap<String, Arc<Rendered>>)>,
}

/// Bytes of rendered documents the cache may hold.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

struct Rendered {
    body: Bytes,
    etag: String,
    updated_ms: i64,
}

impl FeedCache {
    fn get(&self, key: &str) -> Option<Arc<Rendered>> {
        self.docs.lock().expect("not poisoned").1.get(key).cloned()
    }

    fn put(&self, key: String, doc: Arc<Rendered>) {
        let mut docs = self.docs.lock().expect("not poisoned");
        if docs.0 + doc.body.len() > CACHE_BYTES {
            *docs = Default::default();
        }
        docs.0 += doc.body.len();
        docs.1.insert(key, doc);
    }
}

async fn thread_feed(
    State(state): State<AppState>,
    Path(thread): Path<String>,
    Query(q): Query<FeedQuery>,
    headers: HeaderMap,
    format: Format,
) -> ApiResult<Response> {
    let thread = parse_thread(&thread)?;
    let token = presented_token(&headers, q.token.as_deref());
    let info = state.follower.readable_thread(&thread, token).await?;
    let feed = Feed {
        thread,
        log: None,
        newest: info.seq,
        public: info.public,
        created_ms: info.created_ms,
        base: origin(&state, &headers),
        token: q.token.clone(),
        version: format!("{}:{}:{}", info.seq, info.records, info.bytes),
    };
    respond(&state, feed, q.page, &headers, format).await
}

async fn log_feed(
    State(state): State<AppState>,
    Path((thread, log)): Path<(String, String)>,
    Query(q): Query<FeedQuery>,
    headers: HeaderMap,
    format: Format,
) -> ApiResult<Response> {
    let token = presented_token(&headers, q.token.as_deref());
    let (thread, log) = (parse_thread(&thread)?, parse_log(&log)?);
    let (thread_info, info) = state.follower.readable_log(&thread, &log, token).await?;
    let feed = Feed {
        thread: info.thread,
        log: Some(info.log),
        newest: info.head.map_or(0, |h| h.counter),
        public: thread_info.public,
        created_ms: info.registered_ms,
        base: origin(&state, &headers),
        token: q.token.clone(),
        version: format!(
            "{}:{}:{}",
            info.head.map_or(0, |h| h.counter),
            info.bytes,
            info.registered_ms
        ),
    };
    respond(&state, feed, q.page, &headers, format).await
}

/// Where the client reached this server: links in feeds must be absolute. The forwarding
/// headers count only when the operator says a proxy sets them.
fn origin(state: &AppState, headers: &HeaderMap) -> String {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let forwarded = |name: &str| get(name).filter(|_| state.config().trust_forwarded_headers);
    let host = forwarded("x-forwarded-host")
        .or_else(|| get(header::HOST.as_str()))
        .unwrap_or("localhost");
    let scheme = forwarded("x-forwarded-proto").unwrap_or("http");
    format!("{scheme}://{host}")
}

impl Feed {
    fn path(&self) -> String {
        match &self.log {
            None => format!("/v1/threads/{}", self.thread),
            Some(log) => format!("/v1/threads/{}/logs/{log}", self.thread),
        }
    }

    /// A URL on this server, with the token carried on when one came in the query.
    fn url(&self, path: &str, query: &[(&str, String)]) -> String {
        let mut pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(token) = &self.token {
            let token: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
            pairs.push(format!("token={token}"));
        }
        if pairs.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{}", self.base, pairs.join("&"))
        }
    }

    fn feed_url(&self, format: Format, page: Option<u64>) -> String {
        let file = match format {
            Format::Atom => "feed.atom",
            Format::Rss => "feed.rss",
        };
        let query: Vec<(&str, String)> =
            page.map(|p| ("page", p.to_string())).into_iter().collect();
        self.url(&format!("{}/{file}", self.path()), &query)
    }

    fn id(&self) -> String {
        match &self.log {
            None => format!("urn:threads:thread:{}", self.thread),
            Some(log) => format!("urn:threads:log:{}:{log}", self.thread),
        }
    }

    fn title(&self) -> String {
        match &self.log {
            None => format!("Thread {}", self.thread),
            Some(log) => format!("Log {log} of thread {}", self.thread),
        }
    }

    /// Complete archive pages.
    fn archives(&self) -> u64 {
        self.newest / FEED_PAGE
    }

    fn position(&self, r: &StoredRecord) -> u64 {
        match self.log {
            None => r.seq,
            Some(_) => r.counter,
        }
    }
}

async fn respond(
    state: &AppState,
    feed: Feed,
    page: Option<u64>,
    headers: &HeaderMap,
    format: Format,
) -> ApiResult<Response> {
    let (first, last) = match page {
        None => (feed.newest.saturating_sub(FEED_PAGE) + 1, feed.newest),
        Some(k) if k >= 1 && k <= feed.archives() => ((k - 1) * FEED_PAGE + 1, k * FEED_PAGE),
        Some(k) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_archive",
                format!(
                    "archive page {k} does not exist: pages 1 to {} are complete",
                    feed.archives()
                ),
            ))
        }
    };
    let key = format!("{}|{}", feed.feed_url(format, page), feed.version);
    let doc = match state.feeds.get(&key) {
        Some(doc) => doc,
        None => {
            let doc = Arc::new(render(state, &feed, page, format, first, last).await?);
            state.feeds.put(key, doc.clone());
            doc
        }
    };
    let cache = match (page.is_some(), feed.public) {
        (true, true) => "public, max-age=31536000, immutable",
        (true, false) => "private, max-age=31536000, immutable",
        (false, true) => "public, no-cache",
        (false, false) => "private, no-cache",
    };
    let mut response = if not_modified(headers, &doc.etag, doc.updated_ms) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let content_type = match format {
            Format::Atom => ATOM_TYPE,
            Format::Rss => RSS_TYPE,
        };
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("{content_type}; charset=utf-8"))
                    .expect("a valid header"),
            )],
            doc.body.clone(),
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&doc.etag).expect("hex is ASCII"),
    );
    h.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_str(&httpdate::fmt_http_date(to_system_time(doc.updated_ms)))
            .expect("HTTP dates are ASCII"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(response)
}

/// Reads a feed document's records (positions `first..=last`) and renders it.
async fn render(
    state: &AppState,
    feed: &Feed,
    page: Option<u64>,
    format: Format,
    first: u64,
    last: u64,
) -> ApiResult<Rendered> {
    let mut records = state
        .follower
        .records(&feed.thread, feed.log.as_ref(), first - 1, FEED_PAGE as u32)
        .await?;
    records.retain(|r| feed.position(r) <= last);
    // Newest first, as feed readers show them.
    records.reverse();

    let updated_ms = records
        .iter()
        .map(|r| r.arrived_ms)
        .max()
        .unwrap_or(feed.created_ms);
    let mut tag = Sha256::new();
    tag.update([format as u8]);
    tag.update(feed.feed_url(format, page));
    tag.update(feed.newest.to_be_bytes());
    for r in &records {
        tag.update(r.cid.to_bytes());
    }
    let body = match format {
        Format::Atom => atom_feed(feed, page, &records, updated_ms).await,
        Format::Rss => rss_feed(feed, page, &records, updated_ms).await,
    };
    Ok(Rendered {
        body: Bytes::from(body),
        etag: format!("\"{}\"", hex::encode(&tag.finalize()[..16])),
        updated_ms,
    })
}

/// Whether a conditional GET already has this version: `If-None-Match` decides when present
/// (RFC 9110 §13.2.2), `If-Modified-Since` otherwise.
fn not_modified(headers: &HeaderMap, etag: &str, updated_ms: i64) -> bool {
    if let Some(tags) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        return tags
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*");
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| to_system_time(updated_ms) <= since)
}

/// Milliseconds to a time at whole seconds (HTTP dates have no finer resolution).
fn to_system_time(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(ms.max(0) as u64 / 1000)
}

fn date(ms: i64) -> DateTime<FixedOffset> {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .fixed_offset()
}

/// What a feed document links to, besides its entries: itself, the current feed, archives.
fn history_links(feed: &Feed, format: Format, page: Option<u64>) -> Vec<(String, String)> {
    let mut links = vec![("self".to_owned(), feed.feed_url(format, page))];
    let prev = match page {
        None => Some(feed.archives()),
        Some(k) => {
            links.push(("current".into(), feed.feed_url(format, None)));
            if k < feed.archives() {
                links.push(("next-archive".into(), feed.feed_url(format, Some(k + 1))));
            }
            Some(k - 1)
        }
    };
    if let Some(prev) = prev.filter(|&p| p >= 1) {
        links.push(("prev-archive".into(), feed.feed_url(format, Some(prev))));
    }
    links
}

/// A record's links: the one-record CAR (alternate) and each node as a raw block (related).
fn record_links(feed: &Feed, r: &StoredRecord) -> (String, Vec<(String, String)>) {
    let car = feed.url(
        &format!("/v1/threads/{}/logs/{}/records", feed.thread, r.log),
        &[
            ("after", (r.counter - 1).to_string()),
            ("limit", "1".into()),
            ("format", "car".into()),
        ],
    );
    let n = r.node_cids;
    let blocks = [
        ("record", r.cid),
        ("event", n.event),
        ("header", n.header),
        ("body", n.body),
    ]
    .into_iter()
    .map(|(name, cid)| (name.to_owned(), feed.url(&format!("/v1/blocks/{cid}"), &[])))
    .collect();
    (car, blocks)
}

async fn one_record_car(r: &StoredRecord) -> Vec<u8> {
    write_car([CarItem::stored(r)]).await
}

fn entry_title(r: &StoredRecord) -> String {
    format!("Record {} of log {}", r.counter, r.log)
}

async fn atom_feed(
    feed: &Feed,
    page: Option<u64>,
    records: &[StoredRecord],
    updated_ms: i64,
) -> String {
    let mut doc = atom::Feed {
        title: feed.title().into(),
        id: feed.id(),
        updated: date(updated_ms),
        authors: vec![atom::Person {
            name: "threads follower".into(),
            ..Default::default()
        }],
        generator: Some(atom::Generator {
            value: "threads".into(),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    doc.links = history_links(feed, Format::Atom, page)
        .into_iter()
        .map(|(rel, href)| atom::Link {
            rel,
            href,
            mime_type: Some(ATOM_TYPE.into()),
            ..Default::default()
        })
        .collect();
    if page.is_some() {
        archive_marker(&mut doc.namespaces, &mut doc.extensions);
    }
    for r in records {
        let (car, blocks) = record_links(feed, r);
        let mut links = vec![atom::Link {
            rel: "alternate".into(),
            href: car,
            mime_type: Some(CAR.into()),
            ..Default::default()
        }];
        links.extend(blocks.into_iter().map(|(name, href)| atom::Link {
            rel: "related".into(),
            href,
            mime_type: Some(RAW.into()),
            title: Some(name),
            ..Default::default()
        }));
        let content = atom::Content {
            content_type: Some(CAR.into()),
            value: Some(B64.encode(one_record_car(r).await)),
            ..Default::default()
        };
        doc.entries.push(atom::Entry {
            title: entry_title(r).into(),
            id: format!("urn:threads:record:{}", r.cid),
            updated: date(r.arrived_ms),
            published: Some(date(r.arrived_ms)),
            links,
            summary: Some(
                format!(
                    "Record {} (counter {}, thread position {}), encrypted.",
                    r.cid, r.counter, r.seq
                )
                .into(),
            ),
            content: Some(content),
            ..Default::default()
        });
    }
    doc.to_string()
}

/// `<fh:archive/>`: this document is an archive page and will not change.
fn archive_marker(
    namespaces: &mut BTreeMap<String, String>,
    extensions: &mut atom::extension::ExtensionMap,
) {
    namespaces.insert("fh".into(), HISTORY_NS.into());
    extensions.entry("fh".into()).or_default().insert(
        "archive".into(),
        vec![atom::extension::Extension {
            name: "fh:archive".into(),
            ..Default::default()
        }],
    );
}

async fn rss_feed(
    feed: &Feed,
    page: Option<u64>,
    records: &[StoredRecord],
    updated_ms: i64,
) -> String {
    let mut channel = rss::Channel {
        title: feed.title(),
        link: feed.url(&format!("{}/records", feed.path()), &[]),
        description: format!(
            "Encrypted records of {}, as kept by a threads follower.",
            feed.title().to_lowercase()
        ),
        generator: Some(format!("threads {}", env!("CARGO_PKG_VERSION"))),
        last_build_date: Some(date(updated_ms).to_rfc2822()),
        ..Default::default()
    };
    channel
        .namespaces
        .insert("atom".into(), "http://www.w3.org/2005/Atom".into());
    channel.atom_ext = Some(rss::extension::atom::AtomExtension {
        links: history_links(feed, Format::Rss, page)
            .into_iter()
            .map(|(rel, href)| atom::Link {
                rel,
                href,
                mime_type: Some(RSS_TYPE.into()),
                ..Default::default()
            })
            .collect(),
    });
    if page.is_some() {
        channel.namespaces.insert("fh".into(), HISTORY_NS.into());
        channel.extensions.entry("fh".into()).or_default().insert(
            "archive".into(),
            vec![rss::extension::Extension {
                name: "fh:archive".into(),
                ..Default::default()
            }],
        );
    }
    for r in records {
        let (car, _) = record_links(feed, r);
        let bytes = one_record_car(r).await;
        channel.items.push(rss::Item {
            title: Some(entry_title(r)),
            link: Some(car.clone()),
            description: Some(format!(
                "Record {} (counter {}, thread position {}), encrypted; the enclosure is the \
                 record as a CAR.",
                r.cid, r.counter, r.seq
            )),
            guid: Some(rss::Guid {
                value: format!("urn:threads:record:{}", r.cid),
                permalink: false,
            }),
            pub_date: Some(date(r.arrived_ms).to_rfc2822()),
            enclosure: Some(rss::Enclosure {
                url: car,
                length: bytes.len().to_string(),
                mime_type: CAR.into(),
            }),
            ..Default::default()
        });
    }
    channel.to_string()
}
