//! WebSocket push: subscribe to threads, optionally from a cursor; the server replays what was
//! missed from storage, then streams live records, with no gap and no duplicate at the seam.
//!
//! Client → server (text, JSON): `{"type": "subscribe", "thread": "...", "cursor": "...",
//! "token": "..."}` and `{"type": "unsubscribe", "thread": "..."}`. A first subscription can
//! also be given as query parameters: `/v1/ws?thread=...&cursor=...&token=...`.
//! Server → client: `subscribed`, `record` (the JSON record plus the `cursor` after it),
//! `unsubscribed` and `error` messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use threads_core::ThreadId;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::follower::live::Subscription;
use crate::follower::{encode_cursor, Error};
use crate::server::error::ApiError;
use crate::server::AppState;

/// Threads one connection may follow at once (each costs a task and a storage cursor).
const MAX_SUBSCRIPTIONS: usize = 256;
/// Largest message a client may send; subscriptions are small.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
/// Per-connection socket buffers. tungstenite's defaults (128 KiB each, the read buffer
/// allocated up front) would cost over 1 GiB for 10,000 idle connections.
const READ_BUFFER: usize = 4 * 1024;
/// Bytes that may wait in a connection's write buffer before sending fails: bounds the memory a
/// client that stops reading can hold (its feed then waits, and later resumes from storage).
const MAX_WRITE_BUFFER: usize = 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/ws", get(upgrade))
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Subscribe {
        thread: String,
        #[serde(default)]
        cursor: Option<String>,
        #[serde(default)]
        token: Option<String>,
    },
    Unsubscribe {
        thread: String,
    },
}

#[derive(Debug, Deserialize)]
struct FirstSubscription {
    thread: Option<String>,
    cursor: Option<String>,
    token: Option<String>,
}

async fn upgrade(
    State(state): State<AppState>,
    Query(first): Query<FirstSubscription>,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(permit) = state.ws_slots.clone().try_acquire_owned() else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "the server has reached its WebSocket connection limit",
        )
        .into_response();
    };
    let first = first.thread.map(|thread| ClientMessage::Subscribe {
        thread,
        cursor: first.cursor,
        token: first.token,
    });
    ws.max_message_size(MAX_CLIENT_MESSAGE)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .on_upgrade(move |socket| Connection::run(state, permit, socket, first))
}

/// The sending half of a connection's socket, shared by its loop (replies, pings) and its feeds
/// (records): each message goes out whole under the lock, straight from the task that made it.
type Sink = Arc<tokio::sync::Mutex<SplitSink<WebSocket, Message>>>;

struct Connection {
    state: AppState,
    sink: Sink,
    /// How long one send may take before the client is let go.
    limit: Duration,
    /// Cancelled when a send fails or times out: the connection then ends.
    closed: CancellationToken,
    feeds: HashMap<ThreadId, JoinHandle<()>>,
    _permit: OwnedSemaphorePermit,
}

/// Sends one message, unless that cannot finish within `limit`: a client that stopped reading
/// is let go rather than holding its slot forever. False when the message was not sent; the
/// connection is then closed.
async fn send_within(
    sink: &Sink,
    limit: Duration,
    closed: &CancellationToken,
    message: Message,
) -> bool {
    let send = async { sink.lock().await.send(message).await };
    let sent = matches!(tokio::time::timeout(limit, send).await, Ok(Ok(())));
    if !sent {
        closed.cancel();
    }
    sent
}

fn text(value: Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

fn error(code: &str, detail: impl Into<String>) -> Message {
    text(json!({"type": "error", "code": code, "detail": detail.into()}))
}

impl Connection {
    async fn run(
        state: AppState,
        permit: OwnedSemaphorePermit,
        socket: WebSocket,
        first: Option<ClientMessage>,
    ) {
        metrics::gauge!("threads_ws_connections").increment(1.0);
        let (sink, mut stream) = socket.split();
        let ws = &state.config().websocket;
        let idle = Duration::from_secs(ws.idle_timeout_secs);
        let mut ping = tokio::time::interval(Duration::from_secs(ws.ping_interval_secs));
        let shutdown = state.follower.shutdown().clone();
        let mut this = Self {
            sink: Arc::new(tokio::sync::Mutex::new(sink)),
            limit: idle,
            closed: CancellationToken::new(),
            feeds: HashMap::new(),
            _permit: permit,
            state,
        };
        if let Some(first) = first {
            this.handle(first).await;
        }
        let mut heard = Instant::now();
        let close = loop {
            tokio::select! {
                message = stream.next() => {
                    heard = Instant::now();
                    match message {
                        Some(Ok(Message::Text(t))) => match serde_json::from_str::<ClientMessage>(&t) {
                            Ok(m) => this.handle(m).await,
                            Err(e) => this.send(error("bad_message", e.to_string())).await,
                        },
                        Some(Ok(Message::Binary(_))) => {
                            this.send(error("bad_message", "send JSON text messages")).await;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break None,
                    }
                }
                _ = ping.tick() => {
                    if heard.elapsed() > idle {
                        break Some((4000, "idle timeout: no pong received"));
                    }
                    this.send(Message::Ping(Default::default())).await;
                }
                _ = this.closed.cancelled() => break None,
                _ = shutdown.cancelled() => break Some((1001, "server shutting down")),
            }
        };
        for (_, feed) in this.feeds.drain() {
            feed.abort();
        }
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            this.send(Message::Close(Some(frame))).await;
        }
        metrics::gauge!("threads_ws_connections").decrement(1.0);
    }

    async fn send(&self, message: Message) {
        send_within(&self.sink, self.limit, &self.closed, message).await;
    }

    async fn handle(&mut self, message: ClientMessage) {
        match message {
            ClientMessage::Subscribe {
                thread,
                cursor,
                token,
            } => {
                if let Err(e) = self
                    .subscribe(&thread, cursor.as_deref(), token.as_deref())
                    .await
                {
                    let msg = json!({"type": "error", "code": e.code, "detail": e.detail, "thread": thread});
                    self.send(text(msg)).await;
                }
            }
            ClientMessage::Unsubscribe { thread } => {
                if let Some(feed) = thread
                    .parse()
                    .ok()
                    .and_then(|t: ThreadId| self.feeds.remove(&t))
                {
                    feed.abort();
                }
                self.send(text(json!({"type": "unsubscribed", "thread": thread})))
                    .await;
            }
        }
    }

    async fn subscribe(
        &mut self,
        thread: &str,
        cursor: Option<&str>,
        token: Option<&str>,
    ) -> Result<(), ApiError> {
        let thread = super::parse_thread(thread)?;
        if self.feeds.len() >= MAX_SUBSCRIPTIONS && !self.feeds.contains_key(&thread) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_subscriptions",
                format!("a connection follows at most {MAX_SUBSCRIPTIONS} threads"),
            ));
        }
        let (info, subscription) = self
            .state
            .follower
            .subscribe(&thread, cursor, token)
            .await?;
        // The thread's old feed stops before the new one's first message.
        if let Some(old) = self.feeds.remove(&thread) {
            old.abort();
        }
        let after = encode_cursor(&info, subscription.cursor);
        // Sent before the feed starts, so that it comes before the feed's first record.
        self.send(text(
            json!({"type": "subscribed", "thread": thread, "cursor": after}),
        ))
        .await;
        let out = (self.sink.clone(), self.limit, self.closed.clone());
        self.feeds
            .insert(thread, tokio::spawn(feed(subscription, info, out)));
        Ok(())
    }
}

/// Sends one thread's records to the connection. While the client's socket is full this
/// waits, and the follower catches up from storage afterwards: a slow client never slows
/// ingestion.
async fn feed(
    mut subscription: Subscription,
    info: threads_store::ThreadInfo,
    (sink, limit, closed): (Sink, Duration, CancellationToken),
) {
    let send = |message| send_within(&sink, limit, &closed, message);
    // Looked up once, not at every record of every subscriber.
    let lag = metrics::histogram!("threads_push_lag_seconds");
    loop {
        let record = match subscription.next().await {
            Ok(record) => record,
            Err(Error::Store(e)) => {
                tracing::warn!(error = %e, "subscription storage read failed");
                send(error(
                    "internal",
                    "storage unavailable; resubscribe with your cursor",
                ))
                .await;
                return;
            }
            // The thread turned private, or was deleted: this subscriber may read no more.
            Err(e) => {
                let thread = info.id.to_string();
                let msg = json!({"type": "error", "code": e.code(), "detail": e.to_string(), "thread": thread});
                send(text(msg)).await;
                return;
            }
        };
        let lag_ms = crate::follower::now_ms() - record.record.arrived_ms;
        lag.record(lag_ms.max(0) as f64 / 1000.0);
        // A copy for each subscriber, taken as text with no second UTF-8 check.
        let wire = super::wire::live_message(&info, &record).to_owned();
        let message = Message::Text(Utf8Bytes::from(wire));
        if !send(message).await {
            return;
        }
    }
}
