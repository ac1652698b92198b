//! Server-Sent Events: one thread's records pushed over plain HTTP, for browsers (`EventSource`)
//! and proxies that pass no WebSocket.
//!
//! `GET /v1/threads/{thread}/events` answers `text/event-stream`: first a `subscribed` event,
//! then one `record` event per record (its data the same JSON as a WebSocket `record` message),
//! each with the thread cursor after it as its `id`. A reconnecting `EventSource` sends the last
//! `id` as `Last-Event-ID` and resumes there; a first connection may start after a cursor with
//! `?after=` (an `EventSource` cannot set headers, which is also why `?token=` is read). Records
//! come from the same [`Subscription`] as WebSocket feeds: a reader too slow for the live stream
//! is fed from storage, never dropped. A subscription that may read no more (the thread turned
//! private, or was deleted) ends with an `error` event.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use threads_store::ThreadInfo;
use tokio::sync::OwnedSemaphorePermit;

use super::{parse_thread, presented_token};
use crate::follower::live::Subscription;
use crate::follower::{encode_cursor, Error};
use crate::server::error::{ApiError, ApiResult};
use crate::server::AppState;

/// How long a disconnected `EventSource` waits before reconnecting.
const RETRY: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/threads/{thread}/events", get(events))
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<String>,
    token: Option<String>,
}

async fn events(
    State(state): State<AppState>,
    Path(thread): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let thread = parse_thread(&thread)?;
    // Event streams and WebSockets share one connection limit: both hold a subscription.
    let Ok(permit) = state.ws_slots.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "the server has reached its push connection limit",
        ));
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let after = resume.or(q.after.as_deref());
    let token = presented_token(&headers, q.token.as_deref());
    let (info, subscription) = state.follower.subscribe(&thread, after, token).await?;
    let start = Event::default()
        .event("subscribed")
        .id(encode_cursor(&info, subscription.cursor))
        .retry(RETRY)
        .data(json!({"thread": info.id.to_string()}).to_string());
    let shutdown = state.follower.shutdown().clone();
    let records = feed(subscription, info, permit).take_until(shutdown.cancelled_owned());
    let stream = stream::once(async { Ok(start) }).chain(records);
    let ping = Duration::from_secs(state.config().websocket.ping_interval_secs);
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(ping))
        .into_response();
    // Tell buffering proxies (nginx) to pass events on as they come.
    response
        .headers_mut()
        .insert("x-accel-buffering", "no".parse().expect("static"));
    Ok(response)
}

/// The subscription's records as events, ending after an `error` event when the reader may
/// read no more or storage fails (the client then reconnects from its last event's `id`).
fn feed(
    subscription: Subscription,
    info: ThreadInfo,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    metrics::gauge!("threads_sse_connections").increment(1.0);
    let open = Open {
        _permit: permit,
        lag: metrics::histogram!("threads_push_lag_seconds"),
    };
    stream::unfold(Some((subscription, info, open)), |state| async move {
        let (mut subscription, info, open) = state?;
        match subscription.next().await {
            Ok(record) => {
                let lag_ms = crate::follower::now_ms() - record.record.arrived_ms;
                open.lag.record(lag_ms.max(0) as f64 / 1000.0);
                let wire = super::wire::live_message(&info, &record);
                let event = Event::default()
                    .event("record")
                    .id(encode_cursor(&info, record.record.seq))
                    .data(wire);
                Some((Ok(event), Some((subscription, info, open))))
            }
            Err(error) => {
                let (code, detail) = match &error {
                    Error::Store(e) => {
                        tracing::warn!(error = %e, "event stream storage read failed");
                        (
                            "internal",
                            "storage unavailable; reconnect to resume".to_owned(),
                        )
                    }
                    other => (other.code(), other.to_string()),
                };
                let data = json!({"code": code, "detail": detail, "thread": info.id.to_string()});
                let event = Event::default().event("error").data(data.to_string());
                Some((Ok(event), None))
            }
        }
    })
}

/// An open event stream: holds its connection slot and keeps the gauge true.
struct Open {
    _permit: OwnedSemaphorePermit,
    /// Looked up once, not at every record.
    lag: metrics::Histogram,
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("threads_sse_connections").decrement(1.0);
    }
}
