//! The operator's API, enabled by `admin_token`: issue registration tokens.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::presented_token;
use crate::server::error::{ApiError, ApiResult};
use crate::server::now_ms;
use crate::server::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/admin/registration-tokens", post(issue_token))
}

#[derive(Deserialize, Default)]
struct TokenRequest {
    #[serde(default)]
    note: String,
}

fn check_admin(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let expected = &state.config.admin_token;
    if expected.is_empty() {
        return Err(ApiError::not_found("route"));
    }
    let presented = presented_token(headers, None).unwrap_or_default();
    // Compare digests so the comparison takes the same time whatever the token.
    if Sha256::digest(presented) != Sha256::digest(expected) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin token required",
        ));
    }
    Ok(())
}

async fn issue_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<TokenRequest>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    check_admin(&state, &headers)?;
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let token = URL_SAFE_NO_PAD.encode(secret);
    let note = body.map(|Json(b)| b.note).unwrap_or_default();
    state
        .store
        .add_registration_token(&Sha256::digest(&token), &note, now_ms())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "note": note})),
    ))
}
