//! Owner requests, each signed by a log key: register a log, unregister it (deleting its
//! records), or delete the whole thread.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use threads_core::auth::{Action, RequestError, SignedRequest, REQUEST_WINDOW_MS};
use threads_core::ThreadKey;
use threads_store::{Registered, Registration};

use super::presented_token;
use crate::config::RegistrationMode;
use crate::server::error::{ApiError, ApiResult};
use crate::server::{now_ms, AppState};

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/registrations", post(handle))
}

/// Addresses a writer may give for one log.
const MAX_ADDRS: usize = 32;

/// The follow key of a registration; a key that carries the read half is refused.
fn follow_only_key(text: &str) -> ApiResult<threads_core::ServiceKey> {
    let key: ThreadKey = text
        .parse()
        .map_err(|e| ApiError::bad_request("bad_follow_key", format!("bad follow key: {e}")))?;
    if key.read().is_some() {
        return Err(ApiError::bad_request(
            "read_key_refused",
            "send the follow key only: a follower must never hold the read key",
        ));
    }
    Ok(key.service().clone())
}

/// A writer's addresses: multiaddrs, at most [`MAX_ADDRS`], kept in their canonical text.
fn checked_addrs(addrs: &[String]) -> ApiResult<Vec<String>> {
    if addrs.len() > MAX_ADDRS {
        return Err(ApiError::bad_request(
            "bad_addrs",
            format!("{} addresses; at most {MAX_ADDRS} are kept", addrs.len()),
        ));
    }
    addrs
        .iter()
        .map(|a| {
            a.parse::<threads_core::addr::Multiaddr>()
                .map(|m| m.to_string())
                .map_err(|e| {
                    ApiError::bad_request("bad_addrs", format!("{a:?} is not a multiaddr: {e}"))
                })
        })
        .collect()
}

/// Spends a signed request's nonce: a request is honoured once. Call it last, once every other
/// check has passed, so that a refused request can be corrected and sent again.
pub(super) async fn spend_nonce(
    state: &AppState,
    payload: &threads_core::auth::RequestPayload,
    now: i64,
) -> ApiResult<()> {
    let expires = payload.timestamp_ms + REQUEST_WINDOW_MS;
    if !state
        .store
        .use_nonce(payload.nonce.as_bytes(), expires, now)
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "replayed",
            "this request was already used",
        ));
    }
    Ok(())
}

pub(super) fn request_error(error: RequestError) -> ApiError {
    let status = match error {
        RequestError::Payload(_) | RequestError::SignatureEncoding => StatusCode::BAD_REQUEST,
        RequestError::BadSignature | RequestError::Expired => StatusCode::UNAUTHORIZED,
        RequestError::WrongServer(_) => StatusCode::MISDIRECTED_REQUEST,
    };
    ApiError::new(status, error.code(), error.to_string())
}

async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request: SignedRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("bad_request", format!("expected a signed request: {e}"))
    })?;
    let now = now_ms();
    let payload = request
        .verify(&state.server_id, now)
        .map_err(request_error)?;
    let (thread, log) = (payload.thread.clone(), payload.log.clone());
    if matches!(payload.action, Action::Subscribe { .. }) {
        return Err(ApiError::bad_request(
            "bad_action",
            "send subscribe requests to /v1/webhooks",
        ));
    }

    // Registration tokens are checked before the nonce is spent, so a refused request can be
    // retried with the token.
    if matches!(payload.action, Action::Register { .. })
        && state.config.registration == RegistrationMode::Token
    {
        let token = presented_token(&headers, None).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "registration_token_required",
                "this server registers logs only with a token from its operator",
            )
        })?;
        if !state
            .store
            .registration_token_exists(&Sha256::digest(token))
            .await?
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "bad_registration_token",
                "unknown registration token",
            ));
        }
    }
    // Everything about the request is checked before its nonce is spent.
    let registration = match &payload.action {
        Action::Register {
            follow_key,
            addrs,
            public,
        } => Some(Registration {
            thread: thread.clone(),
            log: log.clone(),
            follow_key: follow_only_key(follow_key)?,
            addrs: checked_addrs(addrs)?,
            public: *public,
        }),
        _ => None,
    };
    spend_nonce(&state, &payload, now).await?;

    match payload.action {
        Action::Register { .. } => {
            let registration = registration.expect("prepared for a register action");
            let created = state.store.register(&registration, now).await? == Registered::Created;
            crate::server::p2p::gossip(&state, &thread, registration.public).await;
            tracing::info!(%thread, %log, created, "log registered");
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((
                status,
                Json(json!({"thread": thread, "log": log, "created": created})),
            ))
        }
        Action::Unregister => {
            state
                .store
                .unregister_log(&thread, &log)
                .await
                .map_err(|e| match e {
                    threads_store::StoreError::NotFound => ApiError::not_found("log"),
                    other => other.into(),
                })?;
            tracing::info!(%thread, %log, "log unregistered and deleted");
            Ok((
                StatusCode::OK,
                Json(json!({"thread": thread, "log": log, "deleted": true})),
            ))
        }
        Action::Subscribe { .. } => unreachable!("refused before the nonce was spent"),
        Action::DeleteThread => {
            if state.store.log(&thread, &log).await?.is_none() {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "not_a_writer",
                    "only a log registered in the thread may delete it",
                ));
            }
            state.store.delete_thread(&thread).await?;
            crate::server::p2p::gossip(&state, &thread, false).await;
            tracing::info!(%thread, "thread deleted");
            Ok((
                StatusCode::OK,
                Json(json!({"thread": thread, "deleted": true})),
            ))
        }
    }
}
