//! Listings: public threads, one thread with its logs, one log, and a log's fork evidence.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use threads_store::{LogInfo, ThreadInfo};

use super::{parse_log, parse_thread, presented_token};
use crate::follower::encode_cursor;
use crate::server::error::ApiResult;
use crate::server::AppState;

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

/// A log as the API shows it, with its writer's addresses while they live.
pub fn log_json(state: &AppState, log: &LogInfo) -> Value {
    let addrs = state.follower.live_addrs(log);
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
    let (threads, next) = state.follower.threads(after.as_ref(), q.limit).await?;
    Ok(Json(json!({
        "threads": threads.iter().map(thread_json).collect::<Vec<_>>(),
        "next": next.map(|t| t.to_string()),
    })))
}

async fn one(
    State(state): State<AppState>,
    Path(thread): Path<String>,
    Query(q): Query<OneQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let thread = parse_thread(&thread)?;
    let token = presented_token(&headers, q.token.as_deref());
    let view = state
        .follower
        .thread(&thread, token, q.digest.as_deref())
        .await?;
    let Some(logs) = view.logs else {
        return Ok(Json(
            json!({"id": view.info.id, "digest": view.digest, "unchanged": true}),
        ));
    };
    let mut body = thread_json(&view.info);
    body["digest"] = json!(view.digest);
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
    let (thread, log) = (parse_thread(&thread)?, parse_log(&log)?);
    let log = state.follower.log(&thread, &log, token).await?;
    Ok(Json(log_json(&state, &log)))
}

async fn forks(
    State(state): State<AppState>,
    Path((thread, log)): Path<(String, String)>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let token = presented_token(&headers, q.token.as_deref());
    let (thread, log) = (parse_thread(&thread)?, parse_log(&log)?);
    let forks = state.follower.forks(&thread, &log, token).await?;
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
