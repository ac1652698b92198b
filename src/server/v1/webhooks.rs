//! Webhook subscriptions: create (a writer's signed request, or the operator), inspect,
//! list deliveries and their attempts, replay from a cursor, send a test event, rotate the
//! secret, re-enable, delete.
//!
//! A subscription is managed with its secret (`Authorization: Bearer whsec_…`) or the admin
//! token. Deliveries themselves are sent by [`crate::server::webhooks`].

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use threads_core::auth::{Action, SignedRequest};
use threads_core::LogId;
use threads_store::{StoreError, Webhook};

use super::{decode_cursor, parse_thread, presented_token};
use crate::server::error::{ApiError, ApiResult};
use crate::server::webhooks::{check_url, new_secret};
use crate::server::{now_ms, AppState};

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

fn is_admin(state: &AppState, headers: &HeaderMap) -> bool {
    let expected = &state.config.admin_token;
    !expected.is_empty()
        && presented_token(headers, None)
            .is_some_and(|t| Sha256::digest(t) == Sha256::digest(expected))
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
    let now = now_ms();
    let (thread, log, url, signed) = if is_admin(&state, &headers) {
        let r: OperatorRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("expected {{thread, log?, url}}: {e}"),
            )
        })?;
        (parse_thread(&r.thread)?, r.log, r.url, None)
    } else {
        let request: SignedRequest = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("expected a signed subscribe request (or the admin token): {e}"),
            )
        })?;
        let payload = request
            .verify(&state.server_id, now)
            .map_err(super::registrations::request_error)?;
        let Action::Subscribe { url, only_log } = payload.action.clone() else {
            return Err(ApiError::bad_request(
                "bad_action",
                "this endpoint takes subscribe requests",
            ));
        };
        if state
            .store
            .log(&payload.thread, &payload.log)
            .await?
            .is_none()
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_a_writer",
                "only a log registered in the thread may subscribe to it",
            ));
        }
        (payload.thread.clone(), only_log, url, Some(payload))
    };
    let log = check(&state, &url, log.as_deref())?;
    if let Some(log) = &log {
        if state.store.log(&thread, log).await?.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_log",
                format!("{log} is not a log of this thread here"),
            ));
        }
    }
    // Last, once everything else is known to be right: a refused request can be sent again.
    if let Some(payload) = &signed {
        super::registrations::spend_nonce(&state, payload, now).await?;
    }
    let mut id = [0u8; 12];
    OsRng.fill_bytes(&mut id);
    let hook = Webhook {
        id: format!("wh_{}", hex::encode(id)),
        thread,
        log,
        url,
        secret: new_secret(),
        created_ms: now,
        failures: 0,
        disabled_ms: None,
        disabled_reason: None,
        // The store starts it at the thread's newest record: later ones are delivered.
        cursor: 0,
    };
    state
        .store
        .create_webhook(&hook)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("thread"),
            other => other.into(),
        })?;
    tracing::info!(webhook = %hook.id, thread = %hook.thread, "webhook created");
    let mut out = webhook_json(&hook);
    out["secret"] = json!(hook.secret);
    Ok((StatusCode::CREATED, Json(out)))
}

/// Checks a subscription's URL and optional log filter.
fn check(state: &AppState, url: &str, log: Option<&str>) -> ApiResult<Option<LogId>> {
    check_url(url, state.config.webhooks.allow_private_addresses)
        .map_err(|e| ApiError::bad_request("bad_webhook_url", e))?;
    log.map(|l| {
        l.parse()
            .map_err(|e| ApiError::bad_request("bad_log_id", format!("bad log ID: {e}")))
    })
    .transpose()
}

/// The subscription, if the caller holds its secret or the admin token. Unknown and
/// unauthorized look alike, so IDs cannot be probed.
async fn authorized(state: &AppState, headers: &HeaderMap, id: &str) -> ApiResult<Webhook> {
    let hook = state.store.webhook(id).await?;
    let presented = presented_token(headers, None).unwrap_or_default();
    match hook {
        Some(hook)
            if is_admin(state, headers)
                || Sha256::digest(presented) == Sha256::digest(&hook.secret) =>
        {
            Ok(hook)
        }
        _ => Err(ApiError::not_found("webhook")),
    }
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    Ok(Json(webhook_json(
        &authorized(&state, &headers, &id).await?,
    )))
}

async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorized(&state, &headers, &id).await?;
    state.store.delete_webhook(&id).await?;
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
    authorized(&state, &headers, &id).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let list = state
        .store
        .deliveries(&id, q.after.unwrap_or(0), limit)
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
    body: Option<Json<ReplayRequest>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let hook = authorized(&state, &headers, &id).await?;
    let after = body.map(|Json(b)| b.after).unwrap_or_default();
    let info = super::known_thread(&state, &hook.thread).await?;
    let after = decode_cursor(&info, Some(&after))?;
    let queued = state
        .store
        .queue_deliveries(&id, after, false, now_ms())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": queued}))))
}

/// Queues a `webhook.test` event, delivered (and signed) like any other.
async fn test(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<Value>)> {
    authorized(&state, &headers, &id).await?;
    state.store.queue_deliveries(&id, 0, true, now_ms()).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": 1}))))
}

/// A new secret; the old one stops working at once.
async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorized(&state, &headers, &id).await?;
    let secret = new_secret();
    state.store.set_webhook_secret(&id, &secret).await?;
    Ok(Json(json!({"id": id, "secret": secret})))
}

async fn enable(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    authorized(&state, &headers, &id).await?;
    state.store.enable_webhook(&id, now_ms()).await?;
    let hook = state
        .store
        .webhook(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    Ok(Json(webhook_json(&hook)))
}
