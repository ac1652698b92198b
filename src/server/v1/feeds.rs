//! The follower's feeds: Atom and RSS 2.0 of a thread or of one log, archived as RFC 5005 says
//! ([`crate::feeds`]). Positions are thread sequence numbers, or log counters.
//!
//! An entry's ID is its record's CID; its content is the record as a one-record CAR (base64 in
//! Atom, an enclosure in RSS): still encrypted, so the feed reveals nothing that the follower
//! could not read either. Private threads take the pull token as `?token=` too, since feed
//! readers cannot set headers; links in the feed carry it on.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use threads_core::{LogId, ThreadId};
use threads_store::StoredRecord;

use super::wire::{write_car, CarItem, CAR, RAW};
use super::{parse_log, parse_thread, presented_token};
use crate::feeds::{self, Channel, Entry, Format, Link, Links, FEED_PAGE};
use crate::server::error::ApiResult;
use crate::server::AppState;

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

#[derive(Deserialize)]
pub struct FeedQuery {
    /// An archive page, from 1; absent for the current feed.
    pub page: Option<u64>,
    pub token: Option<String>,
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
    let title = format!("Thread {thread}");
    let path = format!("/v1/threads/{thread}");
    let channel = Channel {
        id: format!("urn:threads:thread:{thread}"),
        description: described(&title),
        title,
        author: "threads follower".into(),
        newest: info.seq,
        public: info.public,
        created_ms: info.created_ms,
        links: links(&state, &headers, &q),
        link: format!("{path}/records"),
        path,
        version: format!("{}:{}:{}", info.seq, info.records, info.bytes),
    };
    respond(&state, channel, thread, None, q.page, &headers, format).await
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
    let newest = info.head.map_or(0, |h| h.counter);
    let title = format!("Log {log} of thread {thread}");
    let path = format!("/v1/threads/{thread}/logs/{log}");
    let channel = Channel {
        id: format!("urn:threads:log:{thread}:{log}"),
        description: described(&title),
        title,
        author: "threads follower".into(),
        newest,
        public: thread_info.public,
        created_ms: info.registered_ms,
        links: links(&state, &headers, &q),
        link: format!("{path}/records"),
        path,
        version: format!("{newest}:{}:{}", info.bytes, info.registered_ms),
    };
    respond(
        &state,
        channel,
        info.thread,
        Some(info.log),
        q.page,
        &headers,
        format,
    )
    .await
}

fn described(title: &str) -> String {
    format!(
        "Encrypted records of {}, as kept by a threads follower.",
        title.to_lowercase()
    )
}

fn links(state: &AppState, headers: &HeaderMap, q: &FeedQuery) -> Links {
    Links {
        base: feeds::origin(headers, state.config().trust_forwarded_headers),
        token: q.token.clone(),
    }
}

/// Answers a feed document of the thread (or of one log): its records, still encrypted.
async fn respond(
    state: &AppState,
    channel: Channel,
    thread: ThreadId,
    log: Option<LogId>,
    page: Option<u64>,
    headers: &HeaderMap,
    format: Format,
) -> ApiResult<Response> {
    let links = channel.links.clone();
    feeds::respond(
        &state.feeds,
        channel,
        page,
        headers,
        format,
        |first, last| async move {
            let mut records = state
                .follower
                .records(&thread, log.as_ref(), first - 1, FEED_PAGE as u32)
                .await?;
            let position = |r: &StoredRecord| if log.is_some() { r.counter } else { r.seq };
            records.retain(|r| position(r) <= last);
            // Newest first, as feed readers show them.
            records.reverse();
            let mut entries = Vec::with_capacity(records.len());
            for r in &records {
                entries.push(entry(&links, r).await);
            }
            Ok(entries)
        },
    )
    .await
}

/// A record as a feed entry: the one-record CAR (alternate, and the content or enclosure) and
/// each node as a raw block (related).
async fn entry(links: &Links, r: &StoredRecord) -> Entry {
    let car_url = links.url(
        &format!("/v1/threads/{}/logs/{}/records", r.thread, r.log),
        &[
            ("after", (r.counter - 1).to_string()),
            ("limit", "1".into()),
            ("format", "car".into()),
        ],
    );
    let car = write_car([CarItem::stored(r)]).await;
    let n = r.node_cids;
    let mut related: Vec<Link> = [
        ("record", r.cid),
        ("event", n.event),
        ("header", n.header),
        ("body", n.body),
    ]
    .into_iter()
    .map(|(name, cid)| Link {
        rel: "related".into(),
        href: links.url(&format!("/v1/threads/{}/blocks/{cid}", r.thread), &[]),
        mime: RAW.into(),
        title: Some(name.into()),
    })
    .collect();
    related.insert(
        0,
        Link {
            rel: "alternate".into(),
            href: car_url.clone(),
            mime: CAR.into(),
            title: None,
        },
    );
    Entry {
        id: format!("urn:threads:record:{}", r.cid),
        title: format!("Record {} of log {}", r.counter, r.log),
        at_ms: r.arrived_ms,
        summary: format!(
            "Record {} (counter {}, thread position {}), encrypted.",
            r.cid, r.counter, r.seq
        ),
        description: format!(
            "Record {} (counter {}, thread position {}), encrypted; the enclosure is the \
             record as a CAR.",
            r.cid, r.counter, r.seq
        ),
        content: (Some(CAR.into()), B64.encode(&car)),
        links: related,
        enclosure: Some((car_url, car.len(), CAR.into())),
        tag: r.cid.to_bytes(),
    }
}
