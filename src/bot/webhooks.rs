//! Decrypted webhooks: the bot delivers each event of a granted thread in plaintext, with the
//! view changes it makes, by the same machinery as the follower's webhooks
//! ([`crate::webhooks`]): cursors in the thread, leases, retries with backoff, a stable
//! `webhook-id`, Standard Webhooks signatures, the private-network guard, replay.
//!
//! A delivery never runs ahead of the views: an event is sent once it is reduced, so a
//! receiver that asks the bot about what it was told finds it there. Events the bot cannot
//! read (sealed with a read key it was not handed) and snapshots deliver nothing.
//!
//! A webhook receives the whole thread, whatever the ACLs of single documents say, so only
//! the operator (admin token) or a holder of a read token for the thread may subscribe one.

use std::sync::Weak;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use threads_db::Envelope;
use threads_db::{docs, kv};
use threads_store::{StoredRecord, Webhook};

use super::access::{is_admin, Reader};
use super::{Bot, Error, Inner};
use crate::server::error::ApiResult;
use crate::webhooks::deliveries::rfc3339;
use crate::webhooks::routes::{webhook_json, HookHost};
use crate::webhooks::secrets::Secrets;
use crate::webhooks::{Hooks, Payloads};

/// Longest a delivery waits for the views to reach its event before the attempt fails (and
/// is retried).
const VIEWS_WAIT: Duration = Duration::from_secs(5);

/// Seals webhook secrets at rest with a key derived from the bot's identity, which the main
/// key seals: a copy of `local.db` alone cannot sign deliveries, and rotating the main key
/// changes nothing here.
pub fn secrets(identity: &threads_core::Keypair) -> Secrets {
    let mut key = Sha256::new();
    key.update(b"threads bot webhook secrets v1\0");
    key.update(identity.marshal().as_slice());
    Secrets::from_key(key.finalize().into())
}

/// The bot's deliveries: a granted thread's events, decrypted.
pub struct Decrypted(pub Weak<Inner>);

impl Payloads for Decrypted {
    fn record<'a>(
        &'a self,
        record: &'a StoredRecord,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, String>> {
        async move {
            let bot = Bot(self.0.upgrade().ok_or("the bot is stopping")?);
            let Ok(grant) = bot.grant_of(&record.thread) else {
                return Ok(None);
            };
            let unreadable = || {
                grant
                    .db
                    .unreadable_after()
                    .is_some_and(|after| record.seq > after)
            };
            let mut reduced = grant.reduced.subscribe();
            let reached = tokio::time::timeout(
                VIEWS_WAIT,
                reduced.wait_for(|&seq| seq >= record.seq || unreadable()),
            )
            .await
            .is_ok_and(|waited| waited.is_ok());
            if unreadable() {
                return Ok(None);
            }
            if !reached {
                return Err("the bot's views have not reached this event yet".into());
            }
            let opened = bot
                .client
                .open_records(&record.thread, std::slice::from_ref(record))
                .map_err(|e| format!("opening the event: {e}"))?;
            let Some(Some(event)) = opened.into_iter().next() else {
                return Ok(None);
            };
            let (body, changes) = match Envelope::from_body(event.body.clone()) {
                Some(envelope) => {
                    let log = *record.log.public_key().as_bytes();
                    let mut changes = Vec::new();
                    for action in &envelope.actions {
                        if let Some(change) = view_change(action) {
                            if grant.db.dispatcher().admits(&log, action).await {
                                changes.push(change);
                            }
                        }
                    }
                    (event.body, changes)
                }
                None if threads_db::is_snapshot(&event.body) => return Ok(None),
                None => (event.body, Vec::new()),
            };
            let payload = json!({
                "type": "event.created",
                "timestamp": rfc3339(record.arrived_ms),
                "data": {
                    "thread": record.thread.to_string(),
                    "log": record.log.to_string(),
                    "seq": record.seq,
                    "counter": record.counter,
                    "cid": record.cid.to_string(),
                    "body": body,
                    "changes": changes,
                },
            });
            Ok(Some(serde_json::to_vec(&payload).expect("JSON serializes")))
        }
        .boxed()
    }
}

/// What an action does to the key/value or document views, as a webhook receiver reads it.
fn view_change(action: &threads_db::Action) -> Option<Value> {
    let p = &action.payload;
    let change = match (action.store.as_str(), action.kind.as_str()) {
        (kv::STORE, "put") => json!({"type": "key.put", "key": p["key"], "value": p["value"]}),
        (kv::STORE, "delete") => json!({"type": "key.deleted", "key": p["key"]}),
        (docs::STORE, "insert" | "save") => json!({
            "type": if action.kind == "insert" { "document.inserted" } else { "document.saved" },
            "collection": p["collection"],
            "id": p["doc"]["_id"],
            "doc": p["doc"],
        }),
        (docs::STORE, "delete") => json!({
            "type": "document.removed",
            "collection": p["collection"],
            "id": p["_id"],
        }),
        _ => return None,
    };
    Some(change)
}

impl HookHost for Bot {
    fn hooks(&self) -> &Hooks {
        &self.hooks
    }

    fn is_operator(&self, token: Option<&str>) -> bool {
        super::access::is_admin_token(self, token)
    }

    /// A local sequence number, as the bot's event streams give them.
    fn replay_after<'a>(
        &'a self,
        _hook: &'a Webhook,
        after: &'a str,
    ) -> BoxFuture<'a, ApiResult<u64>> {
        let parsed = match after.trim() {
            "" => Ok(0),
            text => text.parse().map_err(|_| {
                crate::server::error::ApiError::bad_request(
                    "bad_cursor",
                    format!("{after:?} is not an event ID of this bot (a local sequence number)"),
                )
            }),
        };
        std::future::ready(parsed).boxed()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Subscribe {
    thread: String,
    url: String,
}

/// `POST /v1/webhooks {thread, url}`: the answer holds the secret; the webhook receives the
/// events that reach the bot after it.
pub(super) async fn subscribe(
    State(bot): State<Bot>,
    asked: super::api::Asked,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), Error> {
    let request: Subscribe = serde_json::from_slice(&body)
        .map_err(|e| Error::BadQuery(format!("expected {{thread, url}}: {e}")))?;
    let thread = super::api::parse_thread(&request.thread)?;
    let grant = bot.grant_of(&thread)?;
    let reader = if is_admin(&bot, &asked.headers) {
        Reader::Trusted
    } else {
        super::access::reader(
            &bot,
            &grant,
            &asked.method,
            &asked.uri,
            &asked.headers,
            &body,
        )
        .await?
    };
    if !matches!(reader, Reader::Trusted) {
        return Err(Error::TrustedOnly);
    }
    let hook = bot.hooks.create(thread, None, request.url).await?;
    let mut out = webhook_json(&hook);
    out["secret"] = json!(hook.secret);
    Ok((StatusCode::CREATED, Json(out)))
}
