//! The HTTP API, version 1. One module per area, each with its own `router()`: a handler
//! decodes the request, calls the follower's core ([`crate::follower`]) and encodes its answer
//! (errors through [`crate::server::error`]).

pub mod admin;
pub mod blocks;
pub mod events;
pub mod feeds;
pub mod records;
pub mod registrations;
pub mod threads;
pub mod webhooks;
pub mod wire;
pub mod ws;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use threads_core::ThreadId;

use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::config::RegistrationMode;

/// The whole API.
pub fn router() -> Router<AppState> {
    p2p_router()
        .merge(feeds::router())
        .merge(webhooks::router())
        .merge(ws::router())
        .merge(events::router())
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
    let c = state.config();
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
        "server_id": state.follower.server_id(),
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

/// An optional JSON body, read whatever its content type says (one rule for every endpoint
/// that takes JSON): empty or `null` is none; anything else must be `shape`.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> ApiResult<Option<T>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("bad_request", format!("expected {shape}: {e}")))
}

/// A bearer token from `Authorization`, or else the `token` query parameter (for feed readers
/// and browsers, which cannot always set headers).
pub fn presented_token<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme's name is case-insensitive (RFC 9110).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .or(query)
}
