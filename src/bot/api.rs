//! The bot's HTTP API. Grants and tokens are the operator's (admin token); the views of each
//! granted thread answer whoever [`super::access`] lets read.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use threads_core::ThreadId;
use threads_db::{crdt, docs, kv, CrdtStore, DocStore, KvStore};

use super::access::{self, Reader};
use super::feeds;
use super::{now_ms, Bot, Error, Grant};
use crate::feeds::Format;

/// Entries a key/value listing answers at most.
const MAX_LIST: usize = 1000;

pub fn router(bot: Bot) -> Router {
    Router::new()
        .route("/v1/bot", get(status))
        .route("/v1/grants", post(grant).get(grants))
        .route("/v1/grants/{thread}", delete(revoke))
        .route("/v1/threads/{thread}", get(thread_status))
        .route("/v1/threads/{thread}/tokens", post(issue_token))
        .route("/v1/threads/{thread}/tokens/{id}", delete(revoke_token))
        .route("/v1/threads/{thread}/kv", get(kv_list))
        .route("/v1/threads/{thread}/kv/{*key}", get(kv_get))
        .route("/v1/threads/{thread}/collections", get(collections))
        .route(
            "/v1/threads/{thread}/collections/{collection}/find",
            get(find).post(find),
        )
        .route(
            "/v1/threads/{thread}/collections/{collection}/docs/{id}",
            get(doc_get),
        )
        .route("/v1/threads/{thread}/crdt/{doc}", get(crdt_get))
        .route("/v1/threads/{thread}/events", get(events))
        .route("/v1/webhooks", post(super::webhooks::subscribe))
        .route(
            "/v1/threads/{thread}/feed",
            axum::routing::put(feeds::publish).delete(feeds::unpublish),
        )
        .route(
            "/v1/threads/{thread}/feed.atom",
            get(|State(b), Path(t), Query(q), h| feeds::feed(b, t, q, h, Format::Atom)),
        )
        .route(
            "/v1/threads/{thread}/feed.rss",
            get(|State(b), Path(t), Query(q), h| feeds::feed(b, t, q, h, Format::Rss)),
        )
        .merge(crate::webhooks::routes::router())
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(ready))
        .route("/openapi.json", get(openapi))
        .with_state(bot)
}

pub(super) fn parse_thread(text: &str) -> Result<ThreadId, Error> {
    text.parse()
        .map_err(|e| Error::BadQuery(format!("bad thread ID: {e}")))
}

/// What a signed read request must match: the request's method, path and headers.
pub(super) struct Asked {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Asked {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        })
    }
}

/// The granted thread a request names, and who is reading it.
struct Reading {
    grant: Arc<Grant>,
    reader: Reader,
}

impl Reading {
    async fn new(bot: &Bot, thread: &str, asked: &Asked, body: &[u8]) -> Result<Self, Error> {
        let grant = bot.grant_of(&parse_thread(thread)?)?;
        let (method, uri, headers) = (&asked.method, &asked.uri, &asked.headers);
        let reader = access::reader(bot, &grant, method, uri, headers, body).await?;
        Ok(Self { grant, reader })
    }

    /// Refuses a member whose ACLs keep `entity` of `store` from it.
    async fn require(&self, store: &str, entity: &str) -> Result<(), Error> {
        match self.reader.may_read(&self.grant, store, Some(entity)).await {
            true => Ok(()),
            false => Err(Error::NoReadRole),
        }
    }
}

async fn status(State(bot): State<Bot>, headers: HeaderMap) -> Result<Json<Value>, Error> {
    let settings = &bot.settings;
    let mut out = json!({
        "identity": bot.id,
        "keys": if settings.main_keys.is_some() { "sealed" } else { "clear" },
        "views": if settings.views_in_memory { "memory" } else { "disk" },
        "grant_policy": if settings.open_grants || settings.admin_token.is_none() { "open" } else { "admin" },
        "grants": bot.grant_count(),
        "bridges": {
            // The local store holds granted threads only: its webhooks are theirs.
            "webhooks": bot.hooks.count().await?,
            "feeds": bot.state.published_count().await?,
        },
    });
    // Which threads it reads, from where and how far: to its operator.
    if access::is_admin(&bot, &headers) {
        out["threads"] = json!(bot.statuses().await?);
    }
    Ok(Json(out))
}

async fn openapi() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

async fn ready(State(bot): State<Bot>) -> Response {
    match bot.state.grants().await {
        Ok(_) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "bot.db does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"code": "not_ready", "detail": "the bot's state database does not answer"})),
            )
                .into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    invite: String,
    /// The follower to follow the thread from (default: the invite's first).
    #[serde(default)]
    follower: Option<String>,
}

async fn grant(
    State(bot): State<Bot>,
    headers: HeaderMap,
    Json(body): Json<GrantBody>,
) -> Result<Response, Error> {
    let open = bot.settings.open_grants || bot.settings.admin_token.is_none();
    if !open {
        access::require_admin(&bot, &headers)?;
    }
    let (new, status) = bot.grant(&body.invite, body.follower.as_deref()).await?;
    let code = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(status)).into_response())
}

async fn grants(State(bot): State<Bot>, headers: HeaderMap) -> Result<Json<Value>, Error> {
    access::require_admin(&bot, &headers)?;
    Ok(Json(json!({"grants": bot.statuses().await?})))
}

async fn revoke(
    State(bot): State<Bot>,
    headers: HeaderMap,
    Path(thread): Path<String>,
) -> Result<StatusCode, Error> {
    access::require_admin(&bot, &headers)?;
    bot.revoke(&parse_thread(&thread)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn issue_token(
    State(bot): State<Bot>,
    headers: HeaderMap,
    Path(thread): Path<String>,
) -> Result<Response, Error> {
    access::require_admin(&bot, &headers)?;
    let grant = bot.grant_of(&parse_thread(&thread)?)?;
    let mut bytes = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    let token = format!("rt_{}", hex::encode(bytes));
    let id = hex::encode(&bytes[..8]);
    bot.state
        .add_token(&id, &grant.row.thread, &token, now_ms())
        .await?;
    let body = json!({"id": id, "token": token, "thread": grant.row.thread.to_string()});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn revoke_token(
    State(bot): State<Bot>,
    headers: HeaderMap,
    Path((thread, id)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    access::require_admin(&bot, &headers)?;
    match bot.state.delete_token(&parse_thread(&thread)?, &id).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(Error::NotFound("token")),
    }
}

async fn thread_status(
    State(bot): State<Bot>,
    Path(thread): Path<String>,
    asked: Asked,
) -> Result<Json<Value>, Error> {
    let r = Reading::new(&bot, &thread, &asked, &[]).await?;
    Ok(Json(json!(bot.status_of(&r.grant).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KvList {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
    limit: Option<usize>,
}

async fn kv_list(
    State(bot): State<Bot>,
    Path(thread): Path<String>,
    Query(q): Query<KvList>,
    asked: Asked,
) -> Result<Json<Value>, Error> {
    let r = Reading::new(&bot, &thread, &asked, &[]).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(Error::BadQuery(format!("limit is 1 to {MAX_LIST}")));
    }
    let listed = r
        .grant
        .db
        .query(kv::STORE, |kv: &KvStore| {
            kv.list(&q.prefix, q.after.as_deref())
                .take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        })
        .await?;
    let mut entries = Vec::with_capacity(listed.len());
    for (key, value) in listed {
        if r.reader.may_read(&r.grant, kv::STORE, Some(&key)).await {
            entries.push(json!({"key": key, "value": value}));
        }
    }
    Ok(Json(json!({"entries": entries})))
}

async fn kv_get(
    State(bot): State<Bot>,
    Path((thread, key)): Path<(String, String)>,
    asked: Asked,
) -> Result<Json<Value>, Error> {
    let r = Reading::new(&bot, &thread, &asked, &[]).await?;
    r.require(kv::STORE, &key).await?;
    let value = r
        .grant
        .db
        .query(kv::STORE, |kv: &KvStore| kv.get(&key).cloned())
        .await?
        .ok_or(Error::NotFound("key"))?;
    Ok(Json(json!({"key": key, "value": value})))
}

async fn collections(
    State(bot): State<Bot>,
    Path(thread): Path<String>,
    asked: Asked,
) -> Result<Json<Value>, Error> {
    let r = Reading::new(&bot, &thread, &asked, &[]).await?;
    let list = r
        .grant
        .db
        .query(docs::STORE, |d: &DocStore| d.collections())
        .await?;
    Ok(Json(json!({"collections": list})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FindQuery {
    query: Option<String>,
}

/// Finds documents with the query language of `threads db find`: the query is the body
/// (POST) or the `query` parameter (GET), JSON either way.
async fn find(
    State(bot): State<Bot>,
    Path((thread, collection)): Path<(String, String)>,
    Query(q): Query<FindQuery>,
    asked: Asked,
    body: Bytes,
) -> Result<Json<Value>, Error> {
    let r = Reading::new(&bot, &thread, &asked, &body).await?;
    let text = match (&asked.method, q.query) {
        (&Method::POST, None) if body.is_empty() => "{}".to_owned(),
        (&Method::POST, None) => String::from_utf8(body.to_vec())
            .map_err(|_| Error::BadQuery("the query is not UTF-8".into()))?,
        (&Method::POST, Some(_)) => {
            return Err(Error::BadQuery(
                "send the query as the body or as ?query=, not both".into(),
            ))
        }
        (_, query) => query.unwrap_or_else(|| "{}".to_owned()),
    };
    let query: Value = serde_json::from_str(&text)
        .map_err(|e| Error::BadQuery(format!("the query is not JSON: {e}")))?;
    let page = r
        .grant
        .db
        .query(docs::STORE, |d: &DocStore| d.find(&collection, &query))
        .await?
        .map_err(Error::BadQuery)?;
    let mut found = Vec::with_capacity(page.docs.len());
    for doc in page.docs {
        let id = doc[docs::ID].as_str().unwrap_or_default();
        let entity = format!("{collection}/{id}");
        if r.reader
            .may_read(&r.grant, docs::STORE, Some(&entity))
            .await
        {
            found.push(doc);
        }
    }
    Ok(Json(json!({"docs": found, "next": page.next})))
}

async fn doc_get(
    State(bot): State<Bot>,
    Path((thread, collection, id)): Path<(String, String, String)>,
    asked: Asked,
) -> Result<Json<Value>, Error> {
    let r = Reading::new(&bot, &thread, &asked, &[]).await?;
    let entity = format!("{collection}/{id}");
    if !r
        .reader
        .may_read(&r.grant, docs::STORE, Some(&entity))
        .await
    {
        return Err(Error::NoReadRole);
    }
    let doc = r
        .grant
        .db
        .query(docs::STORE, |d: &DocStore| d.get(&collection, &id).cloned())
        .await?
        .ok_or(Error::NotFound("document"))?;
    Ok(Json(doc))
}

async fn crdt_get(
    State(bot): State<Bot>,
    Path((thread, doc)): Path<(String, String)>,
    asked: Asked,
) -> Result<Json<Value>, Error> {
    let r = Reading::new(&bot, &thread, &asked, &[]).await?;
    r.require(crdt::STORE, &doc).await?;
    let value = r
        .grant
        .db
        .query(crdt::STORE, |c: &CrdtStore| c.get(&doc))
        .await?
        .ok_or(Error::NotFound("document"))?;
    Ok(Json(json!({"doc": doc, "value": value})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
}

/// How long an `EventSource` waits before reconnecting.
const SSE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// The thread's events, decrypted, as Server-Sent Events in the order they reached the bot:
/// each event's `id` is its local sequence number, so a reconnection (`Last-Event-ID`, or
/// `?after=` on the first connection) resumes with no gap and no duplicate. What is held is
/// sent first, then each event once it is reduced into the views.
async fn events(
    State(bot): State<Bot>,
    Path(thread): Path<String>,
    Query(q): Query<EventsQuery>,
    asked: Asked,
) -> Result<Response, Error> {
    let r = Reading::new(&bot, &thread, &asked, &[]).await?;
    let resume = asked
        .headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::BadQuery("Last-Event-ID is not an event ID".into()))
        })
        .transpose()?;
    let after = resume.or(q.after).unwrap_or(0);
    let reduced = r.grant.reduced.subscribe();
    let (client, thread) = (bot.client.clone(), r.grant.row.thread.clone());
    let start = (after, std::collections::VecDeque::new(), reduced);
    let stream = futures_util::stream::unfold(start, move |(mut after, mut queue, mut reduced)| {
        let (client, thread) = (client.clone(), thread.clone());
        async move {
            loop {
                if let Some(event) = queue.pop_front() {
                    let event: threads_client::Event = event;
                    after = event.seq;
                    let data = serde_json::to_string(&event).expect("events serialize");
                    let sse = axum::response::sse::Event::default()
                        .id(event.seq.to_string())
                        .retry(SSE_RETRY)
                        .data(data);
                    return Some((
                        Ok::<_, std::convert::Infallible>(sse),
                        (after, queue, reduced),
                    ));
                }
                // Only what the views hold: a stream never runs ahead of the queries.
                let upto = *reduced.borrow_and_update();
                let page = match upto > after {
                    true => client.read(&thread, after, 500).await,
                    false => Ok(Vec::new()),
                };
                match page {
                    Ok(page) if !page.is_empty() => {
                        queue.extend(page.into_iter().filter(|e| e.seq <= upto));
                        if queue.is_empty() {
                            reduced.changed().await.ok()?;
                        }
                    }
                    // Nothing new, or sealed with a key the bot was not handed: wait for news.
                    Ok(_) | Err(threads_client::Error::Rejected { .. }) => {
                        // Ends when the grant is deleted.
                        reduced.changed().await.ok()?;
                    }
                    Err(error) => {
                        tracing::warn!(%thread, %error, "an event stream stopped");
                        return None;
                    }
                }
            }
        }
    });
    let sse =
        axum::response::sse::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default());
    Ok(sse.into_response())
}
