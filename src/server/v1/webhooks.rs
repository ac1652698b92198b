//! Webhook subscriptions: create (a writer's signed request, or the operator), inspect,
//! list deliveries and their attempts, replay from a cursor, send a test event, rotate the
//! secret, re-enable, delete.
//!
//! A subscription is managed with its secret (`Authorization: Bearer whsec_…`) or the admin
//! token ([`crate::follower::webhooks`]). Deliveries themselves are sent by
//! [`crate::follower::deliveries`].

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use threads_core::auth::SignedRequest;
use threads_store::Webhook;

use super::{json_body, parse_thread, presented_token};
use crate::follower::webhooks::Subscriber;
use crate::server::error::{ApiError, ApiResult};
use crate::server::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", post(create))
        .route("/v1/webhooks/{id}", get(show).delete(delete))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries))
        .route("/v1/webhooks/{id}/replay", post(replay))
        .route("/v1/webhooks/{id}/test", post(test))
        .route("/v1/webhooks/{id}/rotate-secret", post(rotate))
        .route("/v1/webhooks/{id}/enable", post(enable))
}

/// A subscription as the API shows it (without its secret).
fn webhook_json(hook: &Webhook) -> Value {
    json!({
        "id": hook.id,
        "thread": hook.thread,
        "log": hook.log,
        "url": hook.url,
        "created_ms": hook.created_ms,
        "failures_in_a_row": hook.failures,
        "disabled_ms": hook.disabled_ms,
        "disabled_reason": hook.disabled_reason,
        "cursor_seq": hook.cursor,
    })
}

/// What the operator sends to subscribe without a writer's signature.
#[derive(Deserialize)]
struct OperatorRequest {
    thread: String,
    #[serde(default)]
    log: Option<String>,
    url: String,
}

/// Subscribes: a writer's signed `subscribe` request, or the operator's plain one.
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let subscriber = if state.follower.is_admin(presented_token(&headers, None)) {
        let r: OperatorRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("expected {{thread, log?, url}}: {e}"),
            )
        })?;
        Subscriber::Operator {
            thread: parse_thread(&r.thread)?,
            log: r.log,
            url: r.url,
        }
    } else {
        let request: SignedRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("expected a signed subscribe request (or the admin token): {e}"),
            )
        })?;
        Subscriber::Writer(request)
    };
    let hook = state.follower.create_webhook(subscriber).await?;
    let mut out = webhook_json(&hook);
    out["secret"] = json!(hook.secret);
    Ok((StatusCode::CREATED, Json(out)))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let hook = state.follower.webhook(&id, token(&headers)).await?;
    Ok(Json(webhook_json(&hook)))
}

/// A subscription is managed with its secret or the admin token, as a bearer token.
fn token(headers: &HeaderMap) -> Option<&str> {
    presented_token(headers, None)
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    state.follower.delete_webhook(&id, token(&headers)).await?;
    Ok(Json(json!({"id": id, "deleted": true})))
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DeliveriesQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let list = state
        .follower
        .deliveries(&id, token(&headers), q.after.unwrap_or(0), limit)
        .await?;
    let next = list.last().map(|(d, _)| d.id);
    let deliveries: Vec<Value> = list
        .into_iter()
        .map(|(d, attempts)| {
            json!({
                "id": d.id,
                "webhook_id": d.message_id,
                "event": d.event,
                "thread": d.thread,
                "log": d.log,
                "seq": d.seq,
                "counter": d.counter,
                "cid": d.cid.map(|c| c.to_string()),
                "created_ms": d.created_ms,
                "state": d.state,
                "attempts": attempts.iter().map(|a| json!({
                    "at_ms": a.at_ms,
                    "status": a.status,
                    "error": a.error,
                    "duration_ms": a.duration_ms,
                })).collect::<Vec<_>>(),
                "next_attempt_ms": (d.state == "pending").then_some(d.next_ms),
                "delivered_ms": d.delivered_ms,
            })
        })
        .collect();
    Ok(Json(json!({"deliveries": deliveries, "next": next})))
}

#[derive(Deserialize, Default)]
struct ReplayRequest {
    /// A thread cursor (as pulls and WebSocket messages give them); empty: from the start.
    #[serde(default)]
    after: String,
}

/// Queues again the subscription's records after a thread cursor, up to where its own
/// cursor has reached (the later ones are on their way).
async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let token = token(&headers);
    // Who asks is checked before what they sent is read.
    state.follower.webhook(&id, token).await?;
    let request: ReplayRequest = json_body(&body, "{after?}")?.unwrap_or_default();
    let queued = state
        .follower
        .replay_webhook(&id, token, &request.after)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": queued}))))
}

/// Queues a `webhook.test` event, delivered (and signed) like any other.
async fn test(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<Value>)> {
    state.follower.test_webhook(&id, token(&headers)).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": 1}))))
}

/// A new secret; the old one stops working at once.
async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let secret = state
        .follower
        .rotate_webhook_secret(&id, token(&headers))
        .await?;
    Ok(Json(json!({"id": id, "secret": secret})))
}

async fn enable(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let hook = state.follower.enable_webhook(&id, token(&headers)).await?;
    Ok(Json(webhook_json(&hook)))
}
