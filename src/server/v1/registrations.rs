//! Owner requests, each signed by a log key: register a log, unregister it (deleting its
//! records), or delete the whole thread ([`crate::follower::owners`]).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use threads_core::auth::SignedRequest;

use super::presented_token;
use crate::follower::owners::OwnerAnswer;
use crate::server::error::{ApiError, ApiResult};
use crate::server::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/registrations", post(handle))
}

async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let request: SignedRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request("bad_request", format!("expected a signed request: {e}"))
    })?;
    let registration_token = presented_token(&headers, None);
    Ok(
        match state
            .follower
            .owner_request(&request, registration_token)
            .await?
        {
            OwnerAnswer::Registered {
                thread,
                log,
                created,
            } => (
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                Json(json!({"thread": thread, "log": log, "created": created})),
            ),
            OwnerAnswer::Unregistered { thread, log } => (
                StatusCode::OK,
                Json(json!({"thread": thread, "log": log, "deleted": true})),
            ),
            OwnerAnswer::ThreadDeleted { thread } => (
                StatusCode::OK,
                Json(json!({"thread": thread, "deleted": true})),
            ),
        },
    )
}
