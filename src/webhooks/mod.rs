//! Webhooks, one mechanism for both servers: subscriptions ([`Hooks`]), the worker that
//! delivers them ([`deliveries`]), the API that manages them ([`routes`]) and their secrets at
//! rest ([`secrets`]).
//!
//! The follower delivers the encrypted records it stores; the bot delivers the events it
//! decrypted from the records it holds. What a record's delivery says is the server's
//! [`Payloads`]; who may subscribe is the server's own rule. Everything else (cursors,
//! leases, retries, signatures, the private-network guard, replay) is the same code.

pub mod deliveries;
pub mod routes;
pub mod secrets;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use threads_core::{LogId, ThreadId};
use threads_store::{Attempt, Delivery, Store, StoreError, StoredRecord, Webhook};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config;
use deliveries::{check_url, new_secret};
use secrets::Secrets;

/// What a server delivers for a stored record.
pub trait Payloads: Send + Sync + 'static {
    /// The JSON body of a record's delivery, `Ok(None)` when the record has nothing to
    /// deliver, or why it cannot be made now (the attempt fails, and is retried).
    fn record<'a>(
        &'a self,
        record: &'a StoredRecord,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, String>>;
}

/// Why a webhook operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{0}")]
    BadUrl(String),
    #[error("this thread has no log {0}")]
    UnknownLog(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = HookError> = std::result::Result<T, E>;

/// A server's webhooks over its store. Cheap to clone.
#[derive(Clone)]
pub struct Hooks(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    config: config::Webhooks,
    secrets: Secrets,
    payloads: Arc<dyn Payloads>,
    /// Wakes this process's worker when a webhook is made or enabled here.
    changed: Notify,
}

impl Hooks {
    pub fn new(
        store: Arc<dyn Store>,
        config: config::Webhooks,
        secrets: Secrets,
        payloads: Arc<dyn Payloads>,
    ) -> Self {
        Self(Arc::new(Inner {
            store,
            config,
            secrets,
            payloads,
            changed: Notify::new(),
        }))
    }

    pub fn config(&self) -> &config::Webhooks {
        &self.0.config
    }

    /// Starts this process's delivery worker; it stops with `shutdown`.
    pub fn spawn(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(deliveries::run(self.clone(), shutdown))
    }

    /// Whether a subscription could be made: the URL may receive deliveries, and the log (if
    /// one is named) is the thread's. Checked before anything is spent on the request.
    pub async fn check(&self, thread: &ThreadId, log: Option<&LogId>, url: &str) -> Result<()> {
        check_url(url, self.0.config.allow_private_addresses).map_err(HookError::BadUrl)?;
        if let Some(log) = log {
            if self.0.store.log(thread, log).await?.is_none() {
                return Err(HookError::UnknownLog(log.to_string()));
            }
        }
        Ok(())
    }

    /// Subscribes a webhook to a thread (or one log of it); the answer holds its secret. It
    /// receives the records that arrive after it.
    pub async fn create(
        &self,
        thread: ThreadId,
        log: Option<LogId>,
        url: String,
    ) -> Result<Webhook> {
        self.check(&thread, log.as_ref(), &url).await?;
        let mut id = [0u8; 12];
        OsRng.fill_bytes(&mut id);
        let secret = new_secret();
        let hook = Webhook {
            id: format!("wh_{}", hex::encode(id)),
            thread,
            log,
            url,
            secret: self.0.secrets.seal(&secret),
            created_ms: now_ms(),
            failures: 0,
            disabled_ms: None,
            disabled_reason: None,
            // The store starts it at the thread's newest record: later ones are delivered.
            cursor: 0,
        };
        let store = &self.0.store;
        store.create_webhook(&hook).await.map_err(|e| match e {
            StoreError::NotFound => HookError::NotFound("thread"),
            other => other.into(),
        })?;
        self.0.changed.notify_one();
        tracing::info!(webhook = %hook.id, thread = %hook.thread, "webhook created");
        // As stored: its cursor starts at the thread's newest record.
        let mut stored = store
            .webhook(&hook.id)
            .await?
            .ok_or(HookError::NotFound("webhook"))?;
        stored.secret = secret;
        Ok(stored)
    }

    /// The subscription, with its secret opened, if `token` is that secret or the caller is
    /// the operator. Unknown and unauthorized look alike, so IDs cannot be probed.
    pub async fn get(&self, id: &str, token: Option<&str>, operator: bool) -> Result<Webhook> {
        let Some(mut hook) = self.0.store.webhook(id).await? else {
            return Err(HookError::NotFound("webhook"));
        };
        // A secret this server cannot open matches no token.
        hook.secret = self.0.secrets.open(&hook.secret).unwrap_or_default();
        let presented = token.unwrap_or_default();
        let by_secret =
            !hook.secret.is_empty() && Sha256::digest(presented) == Sha256::digest(&hook.secret);
        if operator || by_secret {
            Ok(hook)
        } else {
            Err(HookError::NotFound("webhook"))
        }
    }

    /// How many subscriptions there are, over every thread.
    pub async fn count(&self) -> Result<u64> {
        Ok(self.0.store.webhook_count().await?)
    }

    /// A thread's subscriptions, without their secrets: what bridges it has.
    pub async fn of_thread(&self, thread: &ThreadId) -> Result<Vec<Webhook>> {
        let mut hooks = self.0.store.webhooks_of(thread).await?;
        for hook in &mut hooks {
            hook.secret.clear();
        }
        Ok(hooks)
    }

    pub async fn delete(&self, hook: &Webhook) -> Result<()> {
        Ok(self.0.store.delete_webhook(&hook.thread, &hook.id).await?)
    }

    /// Deliveries after the delivery ID `after`, oldest first, with their attempts.
    pub async fn deliveries(
        &self,
        hook: &Webhook,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(Delivery, Vec<Attempt>)>> {
        let store = &self.0.store;
        Ok(store
            .deliveries(&hook.thread, &hook.id, after, limit)
            .await?)
    }

    /// Queues again the subscription's records after the thread position `after`, up to where
    /// its own cursor has reached (the later ones are on their way). Returns how many.
    pub async fn replay(&self, hook: &Webhook, after: u64) -> Result<u64> {
        let store = &self.0.store;
        Ok(store
            .queue_deliveries(&hook.thread, &hook.id, after, false, now_ms())
            .await?)
    }

    /// Queues a `webhook.test` event, delivered (and signed) like any other.
    pub async fn test(&self, hook: &Webhook) -> Result<()> {
        let store = &self.0.store;
        store
            .queue_deliveries(&hook.thread, &hook.id, 0, true, now_ms())
            .await?;
        Ok(())
    }

    /// A new secret; the old one stops working at once.
    pub async fn rotate_secret(&self, hook: &Webhook) -> Result<String> {
        let secret = new_secret();
        let sealed = self.0.secrets.seal(&secret);
        let store = &self.0.store;
        store
            .set_webhook_secret(&hook.thread, &hook.id, &sealed)
            .await?;
        Ok(secret)
    }

    /// Re-enables a disabled subscription (its failures count from zero again).
    pub async fn enable(&self, hook: &Webhook) -> Result<()> {
        let store = &self.0.store;
        store
            .enable_webhook(&hook.thread, &hook.id, now_ms())
            .await?;
        self.0.changed.notify_one();
        Ok(())
    }
}

fn now_ms() -> i64 {
    crate::follower::now_ms()
}
