//! Subscribing a webhook to the follower: a writer's signed request, or the operator's plain
//! one. Managing it afterwards is [`crate::webhooks::routes`], shared with the bot.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::{json, Value};
use threads_core::auth::SignedRequest;
use threads_store::Webhook;

use super::{parse_thread, presented_token};
use crate::follower::webhooks::Subscriber;
use crate::server::error::{ApiError, ApiResult};
use crate::server::AppState;
use crate::webhooks::routes::{self, webhook_json, HookHost};
use crate::webhooks::Hooks;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", post(create))
        .merge(routes::router())
}

impl HookHost for AppState {
    fn hooks(&self) -> &Hooks {
        self.follower.hooks()
    }

    fn is_operator(&self, token: Option<&str>) -> bool {
        self.follower.is_admin(token)
    }

    /// A thread cursor, as pulls and WebSocket messages give them.
    fn replay_after<'a>(
        &'a self,
        hook: &'a Webhook,
        after: &'a str,
    ) -> BoxFuture<'a, ApiResult<u64>> {
        async move {
            let info = self.follower.known_thread(&hook.thread).await?;
            Ok(crate::follower::decode_cursor(&info, Some(after))?)
        }
        .boxed()
    }
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
