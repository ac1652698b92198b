//! The operator's API, enabled by `admin_token`: issue registration tokens.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{json_body, presented_token};
use crate::server::error::ApiResult;
use crate::server::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/registration-tokens", post(issue_token))
}

#[derive(Deserialize, Default)]
struct TokenRequest {
    #[serde(default)]
    note: String,
}

async fn issue_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let admin = presented_token(&headers, None);
    state.follower.check_admin(admin)?;
    let request: TokenRequest = json_body(&body, "{note?}")?.unwrap_or_default();
    let token = state
        .follower
        .issue_registration_token(admin, &request.note)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "note": request.note})),
    ))
}
