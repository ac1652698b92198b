//! Publishing: a granted thread, or one collection of it, as a plaintext Atom and RSS feed with
//! RFC 5005 archives ("an encrypted thread as a public blog"), by the follower's feed code
//! ([`crate::feeds`]). Off unless the operator turns it on for a grant.
//!
//! Positions are the bot's local sequence numbers, up to what the views hold. A thread's feed
//! has an entry per event (its body as JSON); a collection's feed has an entry per document an
//! event inserts or saves there (`title`, `summary` and `content` taken from the document's
//! fields of those names when they are strings), counting only what the thread's ACLs let the
//! event's writer do.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use threads_db::{docs, DocStore, Envelope};
use threads_store::{Store, StoredRecord};

use super::access::require_admin;
use super::api::parse_thread;
use super::state::Published;
use super::{now_ms, Bot, Error, Grant};
use crate::feeds::{self, Channel, Entry, Format, Links, FEED_PAGE};
use crate::server::error::{ApiError, ApiResult};
use crate::server::v1::feeds::FeedQuery;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Publish {
    /// One collection only; none: the whole thread.
    collection: Option<String>,
}

/// `PUT /v1/threads/{id}/feed`: publishes the thread (or `{"collection": …}`) in plaintext.
pub(super) async fn publish(
    State(bot): State<Bot>,
    Path(thread): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    require_admin(&bot, &headers)?;
    let grant = bot.grant_of(&parse_thread(&thread)?)?;
    let request: Publish = match body.iter().all(u8::is_ascii_whitespace) {
        true => Publish::default(),
        false => serde_json::from_slice(&body)
            .map_err(|e| Error::BadQuery(format!("expected {{collection?}}: {e}")))?,
    };
    if let Some(name) = &request.collection {
        let known = grant
            .db
            .query(docs::STORE, |d: &DocStore| {
                d.collections().iter().any(|c| &c.name == name)
            })
            .await?;
        if !known {
            return Err(Error::NotFound("collection"));
        }
    }
    let thread = &grant.row.thread;
    bot.state
        .publish(thread, request.collection.as_deref(), now_ms())
        .await?;
    tracing::info!(%thread, collection = ?request.collection, "feed published");
    Ok(Json(json!({
        "thread": thread.to_string(),
        "collection": request.collection,
        "atom": format!("/v1/threads/{thread}/feed.atom"),
        "rss": format!("/v1/threads/{thread}/feed.rss"),
    })))
}

/// `DELETE /v1/threads/{id}/feed`: the feed is gone at once.
pub(super) async fn unpublish(
    State(bot): State<Bot>,
    Path(thread): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Error> {
    require_admin(&bot, &headers)?;
    let grant = bot.grant_of(&parse_thread(&thread)?)?;
    match bot.state.unpublish(&grant.row.thread).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(Error::NotPublished),
    }
}

/// `GET /v1/threads/{id}/feed.atom` and `feed.rss`: public once published.
pub(super) async fn feed(
    bot: Bot,
    thread: String,
    q: FeedQuery,
    headers: HeaderMap,
    format: Format,
) -> ApiResult<Response> {
    let grant = bot.grant_of(&parse_thread(&thread)?)?;
    let thread = grant.row.thread.clone();
    let published = bot
        .state
        .published(&thread)
        .await
        .map_err(Error::from)?
        .ok_or(Error::NotPublished)?;
    // Never ahead of the views.
    let newest = *grant.reduced.borrow();
    let (id, title) = match &published.collection {
        None => (
            format!("urn:threads:bot:thread:{thread}"),
            format!("Thread {thread}"),
        ),
        Some(c) => (
            format!("urn:threads:bot:collection:{thread}:{c}"),
            format!("Collection {c} of thread {thread}"),
        ),
    };
    let path = format!("/v1/threads/{thread}");
    let channel = Channel {
        id,
        description: format!("{title}, published in plaintext by a threads bot."),
        title,
        author: "threads bot".into(),
        newest,
        public: true,
        created_ms: published.published_ms,
        links: Links {
            base: feeds::origin(&headers, false),
            token: None,
        },
        link: format!("{path}/feed.atom"),
        path,
        version: format!(
            "{newest}:{}:{:?}",
            published.published_ms, published.collection
        ),
    };
    feeds::respond(
        &bot.feeds,
        channel,
        q.page,
        &headers,
        format,
        |first, last| entries(&bot, &grant, published, first, last),
    )
    .await
}

/// The entries of positions `first..=last`, newest first.
async fn entries(
    bot: &Bot,
    grant: &Grant,
    published: Published,
    first: u64,
    last: u64,
) -> ApiResult<Vec<Entry>> {
    let records = bot
        .client
        .store()
        .records_by_thread(&grant.row.thread, first - 1, FEED_PAGE as u32)
        .await
        .map_err(ApiError::internal)?;
    let records: Vec<StoredRecord> = records.into_iter().filter(|r| r.seq <= last).collect();
    let opened = bot
        .client
        .open_records(&grant.row.thread, &records)
        .map_err(ApiError::internal)?;
    let mut entries = Vec::new();
    for (record, event) in records.iter().zip(opened) {
        // Sealed with a read key the bot was not handed: nothing to publish.
        let Some(event) = event else {
            continue;
        };
        let envelope = Envelope::from_body(event.body.clone());
        match &published.collection {
            None if threads_db::is_snapshot(&event.body) => {}
            None => entries.push(event_entry(record, envelope.as_ref(), &event.body)),
            Some(collection) => {
                let Some(envelope) = envelope else { continue };
                let log = *record.log.public_key().as_bytes();
                for action in &envelope.actions {
                    let p = &action.payload;
                    let saves = action.store == docs::STORE
                        && matches!(action.kind.as_str(), "insert" | "save")
                        && p["collection"].as_str() == Some(collection);
                    if saves && grant.db.dispatcher().admits(&log, action).await {
                        entries.push(doc_entry(record, &envelope, collection, &p["doc"]));
                    }
                }
            }
        }
    }
    entries.reverse();
    Ok(entries)
}

/// When the writer says it wrote the event, else when it reached the bot.
fn written_ms(record: &StoredRecord, envelope: Option<&Envelope>) -> i64 {
    envelope
        .map(|e| e.time)
        .filter(|&t| t > 0)
        .unwrap_or(record.arrived_ms)
}

fn event_entry(record: &StoredRecord, envelope: Option<&Envelope>, body: &Value) -> Entry {
    let changes: Vec<String> = envelope
        .map(|e| {
            e.actions
                .iter()
                .map(|a| format!("{} {}", a.store, a.kind))
                .collect()
        })
        .unwrap_or_default();
    let title = format!("Event {} of log {}", record.counter, record.log);
    let summary = match changes.is_empty() {
        true => title.clone(),
        false => changes.join(", "),
    };
    Entry {
        id: format!("urn:threads:event:{}", record.cid),
        title,
        at_ms: written_ms(record, envelope),
        description: summary.clone(),
        summary,
        content: (
            None,
            serde_json::to_string_pretty(body).expect("JSON serializes"),
        ),
        links: Vec::new(),
        enclosure: None,
        tag: record.cid.to_bytes(),
    }
}

fn doc_entry(record: &StoredRecord, envelope: &Envelope, collection: &str, doc: &Value) -> Entry {
    let id = doc["_id"].as_str().unwrap_or_default();
    let text = |field: &str| doc[field].as_str().map(str::to_owned);
    let title = text("title").unwrap_or_else(|| format!("Document {id}"));
    let content = text("content")
        .unwrap_or_else(|| serde_json::to_string_pretty(doc).expect("JSON serializes"));
    let summary = text("summary").unwrap_or_else(|| title.clone());
    let mut tag = record.cid.to_bytes();
    tag.extend_from_slice(id.as_bytes());
    Entry {
        id: format!("urn:threads:doc:{}:{collection}/{id}", record.thread),
        title,
        at_ms: written_ms(record, Some(envelope)),
        description: summary.clone(),
        summary,
        content: (None, content),
        links: Vec::new(),
        enclosure: None,
        tag,
    }
}
