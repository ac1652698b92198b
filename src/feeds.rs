//! Atom (RFC 4287) and RSS 2.0 feeds, archived as RFC 5005 says, for the follower and the bot
//! alike: each server says what a feed is about ([`Channel`]) and what its entries are
//! ([`Entry`]); paging, archives, caching and conditional GETs are the same code.
//!
//! A feed's items have positions `1..=newest` (thread sequence numbers, log counters). The
//! *current* feed holds the newest [`FEED_PAGE`] positions and links `prev-archive` to the
//! newest complete archive page. Archive page `k` (`?page=k`) holds positions
//! `(k-1)·N+1 ..= k·N`; once complete it never changes and is cacheable forever. Every answer
//! has an ETag and a Last-Modified, and answers a matching conditional GET with 304. Links
//! carry a `?token=` given in the query on, since feed readers cannot set headers.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use atom_syndication as atom;
use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, FixedOffset};
use sha2::{Digest, Sha256};

use crate::server::error::{ApiError, ApiResult};

/// Positions per feed document (current feed and each archive page).
pub const FEED_PAGE: u64 = 100;
const HISTORY_NS: &str = "http://purl.org/syndication/history/1.0";
pub const ATOM_TYPE: &str = "application/atom+xml";
pub const RSS_TYPE: &str = "application/rss+xml";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Atom,
    Rss,
}

/// What a feed is about, and where it is.
pub struct Channel {
    /// A URN that never changes.
    pub id: String,
    pub title: String,
    /// The RSS channel's description.
    pub description: String,
    /// The Atom feed's author.
    pub author: String,
    /// The newest position: how many pages exist.
    pub newest: u64,
    pub public: bool,
    /// Last-Modified of a feed with no entries.
    pub created_ms: i64,
    /// How its links are made.
    pub links: Links,
    /// The feed documents are `{path}/feed.atom` and `{path}/feed.rss`.
    pub path: String,
    /// The RSS channel's link, a path on this server.
    pub link: String,
    /// Changes whenever the feed's items do: keys the cache.
    pub version: String,
}

/// One entry (Atom) or item (RSS).
pub struct Entry {
    pub id: String,
    pub title: String,
    pub at_ms: i64,
    /// The Atom summary.
    pub summary: String,
    /// The RSS item's description.
    pub description: String,
    /// The Atom content: a MIME type (none: text) and the value.
    pub content: (Option<String>, String),
    /// Atom links; the first `alternate` one is the RSS item's link too.
    pub links: Vec<Link>,
    /// The RSS item's enclosure: URL, length in bytes, MIME type.
    pub enclosure: Option<(String, usize, String)>,
    /// Bytes that change when the entry does (for the ETag).
    pub tag: Vec<u8>,
}

pub struct Link {
    pub rel: String,
    pub href: String,
    pub mime: String,
    pub title: Option<String>,
}

/// How a feed's links are made: absolute, with the token carried on.
#[derive(Clone)]
pub struct Links {
    /// The origin links start with, e.g. `http://127.0.0.1:8006`.
    pub base: String,
    /// `?token=…` to carry on in links, when one was given in the query.
    pub token: Option<String>,
}

impl Links {
    /// A URL on this server, with the token carried on when one came in the query.
    pub fn url(&self, path: &str, query: &[(&str, String)]) -> String {
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
}

impl Channel {
    fn feed_url(&self, format: Format, page: Option<u64>) -> String {
        let file = match format {
            Format::Atom => "feed.atom",
            Format::Rss => "feed.rss",
        };
        let query: Vec<(&str, String)> =
            page.map(|p| ("page", p.to_string())).into_iter().collect();
        self.links.url(&format!("{}/{file}", self.path), &query)
    }

    /// Complete archive pages.
    fn archives(&self) -> u64 {
        self.newest / FEED_PAGE
    }
}

/// Where the client reached this server: links in feeds must be absolute. The forwarding
/// headers count only when the operator says a proxy sets them.
pub fn origin(headers: &HeaderMap, trust_forwarded: bool) -> String {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let forwarded = |name: &str| get(name).filter(|_| trust_forwarded);
    let host = forwarded("x-forwarded-host")
        .or_else(|| get(header::HOST.as_str()))
        .unwrap_or("localhost");
    let scheme = forwarded("x-forwarded-proto").unwrap_or("http");
    format!("{scheme}://{host}")
}

/// Rendered feed documents, reused until their items change: a feed reader polling a busy
/// feed costs one small query, not a hundred items read and encoded. Bounded in bytes; when
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

/// Answers a feed document: the current one (`page` none) or an archive page, from the cache
/// or rendered from `entries(first, last)` (the entries at positions `first..=last`, newest
/// first).
pub async fn respond<F, Fut>(
    cache: &FeedCache,
    channel: Channel,
    page: Option<u64>,
    headers: &HeaderMap,
    format: Format,
    entries: F,
) -> ApiResult<Response>
where
    F: FnOnce(u64, u64) -> Fut,
    Fut: Future<Output = ApiResult<Vec<Entry>>>,
{
    let (first, last) = match page {
        None => (channel.newest.saturating_sub(FEED_PAGE) + 1, channel.newest),
        Some(k) if k >= 1 && k <= channel.archives() => ((k - 1) * FEED_PAGE + 1, k * FEED_PAGE),
        Some(k) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_archive",
                format!(
                    "archive page {k} does not exist: pages 1 to {} are complete",
                    channel.archives()
                ),
            ))
        }
    };
    let key = format!("{}|{}", channel.feed_url(format, page), channel.version);
    let doc = match cache.get(&key) {
        Some(doc) => doc,
        None => {
            let entries = entries(first, last).await?;
            let doc = Arc::new(render(&channel, page, format, &entries));
            cache.put(key, doc.clone());
            doc
        }
    };
    let cache_control = match (page.is_some(), channel.public) {
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
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    Ok(response)
}

fn render(channel: &Channel, page: Option<u64>, format: Format, entries: &[Entry]) -> Rendered {
    let updated_ms = entries
        .iter()
        .map(|e| e.at_ms)
        .max()
        .unwrap_or(channel.created_ms);
    let mut tag = Sha256::new();
    tag.update([format as u8]);
    tag.update(channel.feed_url(format, page));
    tag.update(channel.newest.to_be_bytes());
    for e in entries {
        tag.update(&e.tag);
    }
    let body = match format {
        Format::Atom => atom_feed(channel, page, entries, updated_ms),
        Format::Rss => rss_feed(channel, page, entries, updated_ms),
    };
    Rendered {
        body: Bytes::from(body),
        etag: format!("\"{}\"", hex::encode(&tag.finalize()[..16])),
        updated_ms,
    }
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
fn history_links(channel: &Channel, format: Format, page: Option<u64>) -> Vec<(String, String)> {
    let mut links = vec![("self".to_owned(), channel.feed_url(format, page))];
    let prev = match page {
        None => Some(channel.archives()),
        Some(k) => {
            links.push(("current".into(), channel.feed_url(format, None)));
            if k < channel.archives() {
                links.push(("next-archive".into(), channel.feed_url(format, Some(k + 1))));
            }
            Some(k - 1)
        }
    };
    if let Some(prev) = prev.filter(|&p| p >= 1) {
        links.push(("prev-archive".into(), channel.feed_url(format, Some(prev))));
    }
    links
}

fn atom_feed(channel: &Channel, page: Option<u64>, entries: &[Entry], updated_ms: i64) -> String {
    let mut doc = atom::Feed {
        title: channel.title.clone().into(),
        id: channel.id.clone(),
        updated: date(updated_ms),
        authors: vec![atom::Person {
            name: channel.author.clone(),
            ..Default::default()
        }],
        generator: Some(atom::Generator {
            value: "threads".into(),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    doc.links = history_links(channel, Format::Atom, page)
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
    for e in entries {
        let links = e
            .links
            .iter()
            .map(|l| atom::Link {
                rel: l.rel.clone(),
                href: l.href.clone(),
                mime_type: Some(l.mime.clone()),
                title: l.title.clone(),
                ..Default::default()
            })
            .collect();
        let content = atom::Content {
            content_type: e.content.0.clone(),
            value: Some(e.content.1.clone()),
            ..Default::default()
        };
        doc.entries.push(atom::Entry {
            title: e.title.clone().into(),
            id: e.id.clone(),
            updated: date(e.at_ms),
            published: Some(date(e.at_ms)),
            links,
            summary: Some(e.summary.clone().into()),
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

fn rss_feed(channel: &Channel, page: Option<u64>, entries: &[Entry], updated_ms: i64) -> String {
    let mut rss = rss::Channel {
        title: channel.title.clone(),
        link: channel.links.url(&channel.link, &[]),
        description: channel.description.clone(),
        generator: Some(format!("threads {}", env!("CARGO_PKG_VERSION"))),
        last_build_date: Some(date(updated_ms).to_rfc2822()),
        ..Default::default()
    };
    rss.namespaces
        .insert("atom".into(), "http://www.w3.org/2005/Atom".into());
    rss.atom_ext = Some(rss::extension::atom::AtomExtension {
        links: history_links(channel, Format::Rss, page)
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
        rss.namespaces.insert("fh".into(), HISTORY_NS.into());
        rss.extensions.entry("fh".into()).or_default().insert(
            "archive".into(),
            vec![rss::extension::Extension {
                name: "fh:archive".into(),
                ..Default::default()
            }],
        );
    }
    for e in entries {
        let link = e
            .links
            .iter()
            .find(|l| l.rel == "alternate")
            .map(|l| l.href.clone());
        rss.items.push(rss::Item {
            title: Some(e.title.clone()),
            link,
            description: Some(e.description.clone()),
            guid: Some(rss::Guid {
                value: e.id.clone(),
                permalink: false,
            }),
            pub_date: Some(date(e.at_ms).to_rfc2822()),
            enclosure: e
                .enclosure
                .as_ref()
                .map(|(url, length, mime)| rss::Enclosure {
                    url: url.clone(),
                    length: length.to_string(),
                    mime_type: mime.clone(),
                }),
            ..Default::default()
        });
    }
    rss.to_string()
}
