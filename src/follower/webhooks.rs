//! Webhook subscriptions: created by a writer's signed request or by the operator, then
//! managed with the subscription's secret or the admin token. Deliveries themselves are sent
//! by [`super::deliveries`].

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use threads_core::auth::{Action, SignedRequest};
use threads_core::{LogId, ThreadId};
use threads_store::{Attempt, Delivery, StoreError, Webhook};

use super::deliveries::{check_url, new_secret};
use super::{decode_cursor, now_ms, Error, Follower, Result};

/// Who asks for a subscription.
pub enum Subscriber {
    /// A writer of the thread, by a signed `subscribe` request.
    Writer(SignedRequest),
    /// The operator (holding the admin token): to any thread, optionally one log of it.
    Operator {
        thread: ThreadId,
        log: Option<String>,
        url: String,
    },
}

impl Follower {
    /// Subscribes a webhook to a thread (or one log of it); the answer holds its secret. It
    /// receives the records that arrive after it.
    pub async fn create_webhook(&self, subscriber: Subscriber) -> Result<Webhook> {
        let now = now_ms();
        let store = &self.0.store;
        let (thread, log, url, signed) = match subscriber {
            Subscriber::Operator { thread, log, url } => (thread, log, url, None),
            Subscriber::Writer(request) => {
                let payload = request.verify(self.server_id(), now)?;
                let Action::Subscribe { url, only_log } = payload.action.clone() else {
                    return Err(Error::BadAction("this endpoint takes subscribe requests"));
                };
                if store.log(&payload.thread, &payload.log).await?.is_none() {
                    return Err(Error::NotAWriter("subscribe to it"));
                }
                (payload.thread.clone(), only_log, url, Some(payload))
            }
        };
        check_url(&url, self.config().webhooks.allow_private_addresses)
            .map_err(Error::BadWebhookUrl)?;
        let log: Option<LogId> = log
            .map(|l| {
                l.parse()
                    .map_err(|e| Error::BadLogId(format!("bad log ID: {e}")))
            })
            .transpose()?;
        if let Some(log) = &log {
            if store.log(&thread, log).await?.is_none() {
                return Err(Error::UnknownLog(log.to_string()));
            }
        }
        // Last, once everything else is known to be right: a refused request can be sent again.
        if let Some(payload) = &signed {
            self.spend_nonce(payload, now).await?;
        }
        let mut id = [0u8; 12];
        OsRng.fill_bytes(&mut id);
        let secret = new_secret();
        let hook = Webhook {
            id: format!("wh_{}", hex::encode(id)),
            thread,
            log,
            url,
            secret: self.0.secrets.seal(&secret),
            created_ms: now,
            failures: 0,
            disabled_ms: None,
            disabled_reason: None,
            // The store starts it at the thread's newest record: later ones are delivered.
            cursor: 0,
        };
        store.create_webhook(&hook).await.map_err(|e| match e {
            StoreError::NotFound => Error::NotFound("thread"),
            other => other.into(),
        })?;
        self.0.webhooks_changed.notify_one();
        tracing::info!(webhook = %hook.id, thread = %hook.thread, "webhook created");
        // As stored: its cursor starts at the thread's newest record.
        let mut stored = store
            .webhook(&hook.id)
            .await?
            .ok_or(Error::NotFound("webhook"))?;
        stored.secret = secret;
        Ok(stored)
    }

    /// The subscription, if `token` is its secret or the admin token. Unknown and
    /// unauthorized look alike, so IDs cannot be probed.
    pub async fn webhook(&self, id: &str, token: Option<&str>) -> Result<Webhook> {
        let Some(mut hook) = self.0.store.webhook(id).await? else {
            return Err(Error::NotFound("webhook"));
        };
        // A secret this server cannot open matches no token.
        hook.secret = self.0.secrets.open(&hook.secret).unwrap_or_default();
        let presented = token.unwrap_or_default();
        let by_secret =
            !hook.secret.is_empty() && Sha256::digest(presented) == Sha256::digest(&hook.secret);
        if self.is_admin(token) || by_secret {
            Ok(hook)
        } else {
            Err(Error::NotFound("webhook"))
        }
    }

    pub async fn delete_webhook(&self, id: &str, token: Option<&str>) -> Result<()> {
        self.webhook(id, token).await?;
        Ok(self.0.store.delete_webhook(id).await?)
    }

    /// Deliveries after the delivery ID `after`, oldest first, with their attempts.
    pub async fn deliveries(
        &self,
        id: &str,
        token: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(Delivery, Vec<Attempt>)>> {
        self.webhook(id, token).await?;
        Ok(self.0.store.deliveries(id, after, limit).await?)
    }

    /// Queues again the subscription's records after a thread cursor (empty: from the start),
    /// up to where its own cursor has reached (the later ones are on their way). Returns how
    /// many were queued.
    pub async fn replay_webhook(&self, id: &str, token: Option<&str>, after: &str) -> Result<u64> {
        let hook = self.webhook(id, token).await?;
        let info = self.known_thread(&hook.thread).await?;
        let after = decode_cursor(&info, Some(after))?;
        Ok(self
            .0
            .store
            .queue_deliveries(id, after, false, now_ms())
            .await?)
    }

    /// Queues a `webhook.test` event, delivered (and signed) like any other.
    pub async fn test_webhook(&self, id: &str, token: Option<&str>) -> Result<()> {
        self.webhook(id, token).await?;
        self.0.store.queue_deliveries(id, 0, true, now_ms()).await?;
        Ok(())
    }

    /// A new secret; the old one stops working at once.
    pub async fn rotate_webhook_secret(&self, id: &str, token: Option<&str>) -> Result<String> {
        self.webhook(id, token).await?;
        let secret = new_secret();
        let sealed = self.0.secrets.seal(&secret);
        self.0.store.set_webhook_secret(id, &sealed).await?;
        Ok(secret)
    }

    /// Re-enables a disabled subscription (its failures count from zero again).
    pub async fn enable_webhook(&self, id: &str, token: Option<&str>) -> Result<Webhook> {
        self.webhook(id, token).await?;
        self.0.store.enable_webhook(id, now_ms()).await?;
        self.0.webhooks_changed.notify_one();
        self.webhook(id, token).await
    }
}
