//! Listings: public threads, one thread with its logs, one log, and a log's fork evidence.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use threads_store::{LogInfo, ThreadInfo};

use super::{encode_cursor, parse_thread, presented_token, readable_log, readable_thread};
use crate::server::error::ApiResult;
use crate::server::{now_ms, AppState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/threads", get(list))
        .route("/v1/threads/{thread}", get(one))
        .route("/v1/threads/{thread}/logs/{log}", get(log))
        .route("/v1/threads/{thread}/logs/{log}/forks", get(forks))
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize)]
pub struct TokenQuery {
    pub token: Option<String>,
}

#[derive(Deserialize)]
pub struct OneQuery {
    token: Option<String>,
    /// The caller's own heads digest: when it matches, the logs are left out.
    digest: Option<String>,
}

/// A digest of a thread's heads (every log's ID, head counter and CID, in log order): two
/// followers with the same digest hold the same records, so a replica compares digests
/// before asking for anything more.
pub fn heads_digest(logs: &[LogInfo]) -> String {
    let mut heads: Vec<(Vec<u8>, u64, Vec<u8>)> = logs
        .iter()
        .filter_map(|l| {
            l.head
                .map(|h| (l.log.to_bytes(), h.counter, h.cid.to_bytes()))
        })
        .collect();
    heads.sort();
    let mut hash = Sha256::new();
    for (log, counter, cid) in heads {
        hash.update(&log);
        hash.update(counter.to_be_bytes());
        hash.update(&cid);
    }
    hex::encode(hash.finalize())
}

fn thread_json(info: &ThreadInfo) -> Value {
    json!({
        "id": info.id,
        "public": info.public,
        "records": info.records,
        "bytes": info.bytes,
        "cursor": encode_cursor(info, info.seq),
        "created_ms": info.created_ms,
    })
}

/// A log as the API shows it. Its writer's addresses are shown while they live: they expire
/// `p2p.address_ttl_secs` after the writer last registered.
pub fn log_json(state: &AppState, log: &LogInfo) -> Value {
    let ttl_ms = state.config.p2p.address_ttl_secs.saturating_mul(1000);
    let age_ms = now_ms().saturating_sub(log.addrs_ms).max(0) as u64;
    let live = age_ms <= ttl_ms;
    let addrs: &[String] = if live { &log.addrs } else { &[] };
    json!({
        "log": log.log,
        "head": log.head.map(|h| json!({"cid": h.cid.to_string(), "counter": h.counter})),
        "bytes": log.bytes,
        "addrs": addrs,
        "registered_ms": log.registered_ms,
    })
}

/// Public threads only: private ones are not announced.
async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let after = q.after.as_deref().map(parse_thread).transpose()?;
    let limit = q
        .limit
        .unwrap_or(100)
        .clamp(1, state.config.limits.max_page_records);
    let threads = state.store.public_threads(after.as_ref(), limit).await?;
    let next = (threads.len() == limit as usize).then(|| threads.last().map(|t| t.id.to_string()));
    Ok(Json(json!({
        "threads": threads.iter().map(thread_json).collect::<Vec<_>>(),
        "next": next.flatten(),
    })))
}

async fn one(
    State(state): State<AppState>,
    Path(thread): Path<String>,
    Query(q): Query<OneQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let thread = parse_thread(&thread)?;
    let info = readable_thread(
        &state,
        &thread,
        presented_token(&headers, q.token.as_deref()),
    )
    .await?;
    let logs = state.store.logs(&thread).await?;
    let digest = heads_digest(&logs);
    if q.digest.as_deref() == Some(digest.as_str()) {
        return Ok(Json(
            json!({"id": info.id, "digest": digest, "unchanged": true}),
        ));
    }
    let mut body = thread_json(&info);
    body["digest"] = json!(digest);
    body["logs"] = logs.iter().map(|l| log_json(&state, l)).collect();
    Ok(Json(body))
}

async fn log(
    State(state): State<AppState>,
    Path((thread, log)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let token = presented_token(&headers, q.token.as_deref());
    Ok(Json(log_json(
        &state,
        &readable_log(&state, &thread, &log, token).await?,
    )))
}

async fn forks(
    State(state): State<AppState>,
    Path((thread, log)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let token = presented_token(&headers, q.token.as_deref());
    let info = readable_log(&state, &thread, &log, token).await?;
    let forks = state.store.forks(&info.thread, &info.log).await?;
    let forks: Vec<Value> = forks
        .iter()
        .map(|f| {
            json!({
                "cid": f.cid.to_string(),
                "prev": f.prev.map(|p| p.to_string()),
                "arrived_ms": f.arrived_ms,
                "record": B64.encode(&f.blocks.record),
                "event": B64.encode(&f.blocks.event),
                "header": B64.encode(&f.blocks.header),
                "body": B64.encode(&f.blocks.body),
            })
        })
        .collect();
    Ok(Json(json!({"forks": forks})))
}
