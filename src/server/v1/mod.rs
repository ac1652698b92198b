//! The HTTP API, version 1. One module per area, each with its own `router()`.

pub mod admin;
pub mod blocks;
pub mod feeds;
pub mod records;
pub mod registrations;
pub mod threads;
pub mod webhooks;
pub mod wire;
pub mod ws;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use threads_core::auth::check_pull_token;
use threads_core::ThreadId;
use threads_store::ThreadInfo;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::config::RegistrationMode;

/// The whole API.
pub fn router() -> Router<AppState> {
    p2p_router()
        .merge(feeds::router())
        .merge(webhooks::router())
        .merge(ws::router())
        .merge(admin::router())
}

/// The part of the API offered to libp2p peers too (see [`crate::server::p2p_app`]): what
/// writers and readers use.
pub fn p2p_router() -> Router<AppState> {
    Router::new()
        .route("/v1/server", get(server))
        .merge(registrations::router())
        .merge(records::router())
        .merge(threads::router())
        .merge(blocks::router())
}

/// What a client needs before talking to this server: the ID to sign requests for, and limits.
async fn server(State(state): State<AppState>) -> Json<Value> {
    let c = &state.config;
    // A log's address at this follower is one of these, then `/thread/<thread id>`.
    let p2p = match state.p2p.as_ref().map(|node| &node.host) {
        Some(host) => json!({
            "peer_id": host.peer_id().to_string(),
            "addrs": host.listen_addrs().await.unwrap_or_default()
                .iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
        None => Value::Null,
    };
    Json(json!({
        "server_id": state.server_id,
        "version": env!("CARGO_PKG_VERSION"),
        "registration": match c.registration {
            RegistrationMode::Open => "open",
            RegistrationMode::Token => "token",
        },
        "limits": {
            "max_body_bytes": c.limits.max_body_bytes,
            "max_batch_records": c.limits.max_batch_records,
            "max_page_records": c.limits.max_page_records,
        },
        "allow_legacy_signatures": c.allow_legacy_signatures,
        "p2p": p2p,
    }))
}

pub fn parse_thread(text: &str) -> ApiResult<ThreadId> {
    text.parse()
        .map_err(|e| ApiError::bad_request("bad_thread_id", format!("bad thread ID: {e}")))
}

pub fn parse_log(text: &str) -> ApiResult<threads_core::LogId> {
    text.parse()
        .map_err(|e| ApiError::bad_request("bad_log_id", format!("bad log ID: {e}")))
}

/// A bearer token from `Authorization`, or else the `token` query parameter (for feed readers
/// and browsers, which cannot always set headers).
pub fn presented_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query)
}

/// The thread, if it exists and the caller may read it: public, or with its pull token.
pub async fn readable_thread(
    state: &AppState,
    thread: &ThreadId,
    token: Option<&str>,
) -> ApiResult<ThreadInfo> {
    let info = known_thread(state, thread).await?;
    check_access(&info, token)?;
    Ok(info)
}

/// The thread, if this server follows it (`404 not_found` otherwise).
pub async fn known_thread(state: &AppState, thread: &ThreadId) -> ApiResult<ThreadInfo> {
    state
        .store
        .thread(thread)
        .await?
        .ok_or_else(|| ApiError::not_found("thread"))
}

/// The log, if its thread is readable by the caller and the log is registered in it.
pub async fn readable_log(
    state: &AppState,
    thread: &str,
    log: &str,
    token: Option<&str>,
) -> ApiResult<threads_store::LogInfo> {
    Ok(readable_thread_and_log(state, thread, log, token).await?.1)
}

/// [`readable_log`], with the thread it belongs to.
pub async fn readable_thread_and_log(
    state: &AppState,
    thread: &str,
    log: &str,
    token: Option<&str>,
) -> ApiResult<(ThreadInfo, threads_store::LogInfo)> {
    let (thread, log) = (parse_thread(thread)?, parse_log(log)?);
    let info = readable_thread(state, &thread, token).await?;
    let log = state
        .store
        .log(&thread, &log)
        .await?
        .ok_or_else(|| ApiError::not_found("log"))?;
    Ok((info, log))
}

pub fn check_access(info: &ThreadInfo, token: Option<&str>) -> ApiResult<()> {
    if info.public {
        return Ok(());
    }
    match token {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "pull_token_required",
            "this thread is private: present its pull token",
        )),
        Some(token) if check_pull_token(&info.follow_key, &info.id, token) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_pull_token",
            "the pull token does not match this thread",
        )),
    }
}

/// A thread cursor: opaque to clients, `created_ms || seq` inside, so a cursor from a deleted and
/// re-created thread restarts from the beginning instead of skipping records.
pub fn encode_cursor(info: &ThreadInfo, seq: u64) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&info.created_ms.to_be_bytes());
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The sequence number after which to continue; an empty cursor starts at the beginning.
pub fn decode_cursor(info: &ThreadInfo, cursor: Option<&str>) -> ApiResult<u64> {
    let Some(cursor) = cursor.filter(|c| !c.is_empty()) else {
        return Ok(0);
    };
    let bytes: [u8; 16] = URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ApiError::bad_request("bad_cursor", "not a cursor from this server"))?;
    let created = i64::from_be_bytes(bytes[..8].try_into().unwrap());
    let seq = u64::from_be_bytes(bytes[8..].try_into().unwrap());
    Ok(if created == info.created_ms { seq } else { 0 })
}
