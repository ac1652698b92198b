//! The API that manages a subscription once it exists, the same on both servers: show it,
//! list its deliveries and their attempts, replay from a cursor, send a test event, rotate
//! its secret, re-enable it, delete it. A subscription is managed with its secret
//! (`Authorization: Bearer whsec_…`) or the operator's admin token. Subscribing is each
//! server's own route, since who may subscribe differs.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};
use threads_store::Webhook;

use super::{HookError, Hooks};
use crate::server::error::{ApiError, ApiResult};
use crate::server::v1::{json_body, presented_token};

/// A server with webhooks, as the routes see it.
pub trait HookHost: Clone + Send + Sync + 'static {
    fn hooks(&self) -> &Hooks;
    /// Whether the token is the operator's.
    fn is_operator(&self, token: Option<&str>) -> bool;
    /// The thread position a replay starts after, from the cursor the caller sent (empty:
    /// from the start).
    fn replay_after<'a>(
        &'a self,
        hook: &'a Webhook,
        after: &'a str,
    ) -> BoxFuture<'a, ApiResult<u64>>;
}

pub fn router<S: HookHost>() -> Router<S> {
    Router::new()
        .route("/v1/webhooks/{id}", get(show::<S>).delete(delete::<S>))
        .route("/v1/webhooks/{id}/deliveries", get(deliveries::<S>))
        .route("/v1/webhooks/{id}/replay", post(replay::<S>))
        .route("/v1/webhooks/{id}/test", post(test::<S>))
        .route("/v1/webhooks/{id}/rotate-secret", post(rotate::<S>))
        .route("/v1/webhooks/{id}/enable", post(enable::<S>))
}

impl From<HookError> for ApiError {
    fn from(error: HookError) -> Self {
        match error {
            HookError::BadUrl(e) => ApiError::bad_request("bad_webhook_url", e),
            HookError::UnknownLog(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_log", error.to_string())
            }
            HookError::NotFound(what) => ApiError::not_found(what),
            HookError::Store(e) => ApiError::internal(e),
        }
    }
}

/// A subscription as the API shows it (without its secret).
pub fn webhook_json(hook: &Webhook) -> Value {
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

/// The subscription, if the bearer token is its secret or the operator's.
async fn authorized<S: HookHost>(host: &S, id: &str, headers: &HeaderMap) -> ApiResult<Webhook> {
    let token = presented_token(headers, None);
    Ok(host.hooks().get(id, token, host.is_operator(token)).await?)
}

async fn show<S: HookHost>(
    State(host): State<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let hook = authorized(&host, &id, &headers).await?;
    Ok(Json(webhook_json(&hook)))
}

async fn delete<S: HookHost>(
    State(host): State<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let hook = authorized(&host, &id, &headers).await?;
    host.hooks().delete(&hook).await?;
    Ok(Json(json!({"id": id, "deleted": true})))
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

async fn deliveries<S: HookHost>(
    State(host): State<S>,
    Path(id): Path<String>,
    Query(q): Query<DeliveriesQuery>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let hook = authorized(&host, &id, &headers).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let list = host
        .hooks()
        .deliveries(&hook, q.after.unwrap_or(0), limit)
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
    /// A cursor in the thread, as the server's reads give them; empty: from the start.
    #[serde(default)]
    after: String,
}

/// Queues again the subscription's records after a cursor, up to where its own cursor has
/// reached (the later ones are on their way).
async fn replay<S: HookHost>(
    State(host): State<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    // Who asks is checked before what they sent is read.
    let hook = authorized(&host, &id, &headers).await?;
    let request: ReplayRequest = json_body(&body, "{after?}")?.unwrap_or_default();
    let after = host.replay_after(&hook, &request.after).await?;
    let queued = host.hooks().replay(&hook, after).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": queued}))))
}

/// Queues a `webhook.test` event, delivered (and signed) like any other.
async fn test<S: HookHost>(
    State(host): State<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let hook = authorized(&host, &id, &headers).await?;
    host.hooks().test(&hook).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": 1}))))
}

/// A new secret; the old one stops working at once.
async fn rotate<S: HookHost>(
    State(host): State<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let hook = authorized(&host, &id, &headers).await?;
    let secret = host.hooks().rotate_secret(&hook).await?;
    Ok(Json(json!({"id": id, "secret": secret})))
}

async fn enable<S: HookHost>(
    State(host): State<S>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let hook = authorized(&host, &id, &headers).await?;
    host.hooks().enable(&hook).await?;
    let hook = authorized(&host, &id, &headers).await?;
    Ok(Json(webhook_json(&hook)))
}
