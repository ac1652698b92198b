//! Webhook subscriptions to the follower: made by a writer's signed request or by the
//! operator. Managing and delivering them is [`crate::webhooks`]' work; what the follower
//! delivers for a record is [`Encrypted`]: where the record is, and its encrypted nodes.

use std::future::ready;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::json;
use threads_core::auth::{Action, SignedRequest};
use threads_core::LogId;
use threads_store::{StoredRecord, Webhook};

use super::{now_ms, Error, Follower, Result};
use crate::webhooks::deliveries::rfc3339;
use crate::webhooks::{HookError, Hooks, Payloads};

/// Who asks for a subscription.
pub enum Subscriber {
    /// A writer of the thread, by a signed `subscribe` request.
    Writer(SignedRequest),
    /// The operator (holding the admin token): to any thread, optionally one log of it.
    Operator {
        thread: threads_core::ThreadId,
        log: Option<String>,
        url: String,
    },
}

impl Follower {
    pub fn hooks(&self) -> &Hooks {
        &self.0.hooks
    }

    /// Subscribes a webhook to a thread (or one log of it); the answer holds its secret. It
    /// receives the records that arrive after it.
    pub async fn create_webhook(&self, subscriber: Subscriber) -> Result<Webhook> {
        let now = now_ms();
        let (thread, log, url, signed) = match subscriber {
            Subscriber::Operator { thread, log, url } => (thread, log, url, None),
            Subscriber::Writer(request) => {
                let payload = request.verify(self.server_id(), now)?;
                let Action::Subscribe { url, only_log } = payload.action.clone() else {
                    return Err(Error::BadAction("this endpoint takes subscribe requests"));
                };
                if self
                    .0
                    .store
                    .log(&payload.thread, &payload.log)
                    .await?
                    .is_none()
                {
                    return Err(Error::NotAWriter("subscribe to it"));
                }
                (payload.thread.clone(), only_log, url, Some(payload))
            }
        };
        let log: Option<LogId> = log
            .map(|l| {
                l.parse()
                    .map_err(|e| Error::BadLogId(format!("bad log ID: {e}")))
            })
            .transpose()?;
        let hooks = self.hooks();
        hooks.check(&thread, log.as_ref(), &url).await?;
        // Last, once everything else is known to be right: a refused request can be sent again.
        if let Some(payload) = &signed {
            self.spend_nonce(payload, now).await?;
        }
        Ok(hooks.create(thread, log, url).await?)
    }
}

impl From<HookError> for Error {
    fn from(error: HookError) -> Self {
        match error {
            HookError::BadUrl(e) => Error::BadWebhookUrl(e),
            HookError::UnknownLog(log) => Error::UnknownLog(log),
            HookError::NotFound(what) => Error::NotFound(what),
            HookError::Store(e) => e.into(),
        }
    }
}

/// The follower's deliveries: `{type, timestamp, data}` for a stored record, saying where it
/// is, how to pull it, and (up to `inline_max` bytes) its four encrypted nodes.
pub struct Encrypted {
    pub inline_max: usize,
}

impl Payloads for Encrypted {
    fn record<'a>(
        &'a self,
        record: &'a StoredRecord,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, String>> {
        ready(Ok(Some(record_payload(record, self.inline_max)))).boxed()
    }
}

fn record_payload(record: &StoredRecord, inline_max: usize) -> Vec<u8> {
    let mut data = json!({
        "thread": record.thread.to_string(),
        "log": record.log.to_string(),
        "seq": record.seq,
        "counter": record.counter,
        "cid": record.cid.to_string(),
        "arrived_ms": record.arrived_ms,
        "href": format!(
            "/v1/threads/{}/logs/{}/records?after={}&limit=1",
            record.thread,
            record.log,
            record.counter - 1
        ),
    });
    if record.byte_len() <= inline_max {
        let b = &record.blocks;
        data["record"] = json!({
            "record": B64.encode(&b.record),
            "event": B64.encode(&b.event),
            "header": B64.encode(&b.header),
            "body": B64.encode(&b.body),
        });
    }
    let body =
        json!({"type": "record.created", "timestamp": rfc3339(record.arrived_ms), "data": data});
    serde_json::to_vec(&body).expect("JSON serializes")
}
