//! Durable storage for the follower: registered threads and logs, verified records, fork
//! evidence, request nonces and registration tokens.
//!
//! One trait, [`Store`], with two implementations sharing their SQL: [`SqliteStore`] (the
//! zero-setup default, an embedded file) and [`PgStore`] (Postgres, for operators and for
//! several server processes sharing one database).
//!
//! | module | what it holds |
//! |---|---|
//! | [`model`] | the values stored and returned: registrations, heads, outcomes, stored records |
//! | `sql` | the SQL both backends share: rows, the ingest rule (one transaction per batch, duplicate/gap/fork decisions), the two traits' implementations |
//! | [`migrations`] | the schema's migrations, compiled in |
//! | [`sqlite`], [`postgres`] | connection set-up and the backend-specific parts |
//!
//! Only [`threads_core::VerifiedRecord`]s can be ingested: verification happens before storage.
//!
//! **Arrival order.** Each thread hands out sequence numbers while its row is locked inside the
//! ingest transaction, so within a thread, sequence order is commit order. A reader that pulls
//! `seq > cursor` can therefore never skip a record that commits late, even with several server
//! processes writing to one Postgres.

pub mod migrations;
pub mod model;
pub mod postgres;
pub mod sqlite;

mod sql;
#[cfg(feature = "testing")]
pub mod testing;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use threads_core::{Cid, LogId, ThreadId};
use tokio::sync::broadcast;

pub use model::*;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A rule of the data was broken; the string names it (stable, for API error codes).
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error(transparent)]
    Other(#[from] sqlx::Error),
    /// From the connection that commits records to the embedded SQLite file.
    #[error(transparent)]
    Embedded(#[from] rusqlite::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A thread's records changed: readers of `thread` past their cursor have more to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub thread: ThreadId,
    /// The thread's newest sequence number after the change.
    pub seq: u64,
    /// Its newest before: the change stored the records after this one, up to `seq`.
    pub after: u64,
    /// Whether this process stored them (not another process sharing the database).
    pub here: bool,
}

/// Everything the follower keeps. Webhooks and their deliveries are [`WebhookStore`]'s.
#[async_trait]
pub trait Store: WebhookStore + Send + Sync + 'static {
    /// Registers a log; creates its thread on first use. Re-registering updates the addresses.
    async fn register(&self, reg: &Registration, now_ms: i64) -> Result<Registered>;
    /// Removes a log and every record of it.
    async fn unregister_log(&self, thread: &ThreadId, log: &LogId) -> Result<()>;
    /// Removes a thread with all its logs and records.
    async fn delete_thread(&self, thread: &ThreadId) -> Result<()>;

    async fn thread(&self, thread: &ThreadId) -> Result<Option<ThreadInfo>>;
    /// Public threads after `after` in ID order, at most `limit`.
    async fn public_threads(&self, after: Option<&ThreadId>, limit: u32)
        -> Result<Vec<ThreadInfo>>;
    /// The newest sequence number of each given thread that exists, in one query per 500.
    async fn thread_seqs(&self, threads: &[ThreadId]) -> Result<Vec<(ThreadId, u64)>>;
    async fn logs(&self, thread: &ThreadId) -> Result<Vec<LogInfo>>;
    async fn log(&self, thread: &ThreadId, log: &LogId) -> Result<Option<LogInfo>>;

    /// Stores a batch in one transaction and says what became of each record, in order.
    async fn ingest(&self, batch: &[Ingest], quotas: &Quotas, now_ms: i64) -> Result<Vec<Outcome>>;

    /// Records of one log with `counter > after`, in log order.
    async fn records_by_log(
        &self,
        thread: &ThreadId,
        log: &LogId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>>;
    /// Records of one thread with `seq > after`, in arrival order.
    async fn records_by_thread(
        &self,
        thread: &ThreadId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>>;
    /// A stored record's bytes by its CID, in any thread, and its thread. (Its event, header
    /// and body are indexed within their thread only: [`Store::block_in`] finds them.)
    async fn block(&self, cid: &Cid) -> Result<Option<(ThreadId, Vec<u8>)>>;
    /// Any stored node (record, event, header or body) of one thread by its CID: confined to
    /// the thread, so one node of a database distributed by thread answers.
    async fn block_in(&self, thread: &ThreadId, cid: &Cid) -> Result<Option<Vec<u8>>>;
    /// Second records claiming a taken predecessor, kept as evidence.
    async fn forks(&self, thread: &ThreadId, log: &LogId) -> Result<Vec<ForkEvidence>>;

    /// Remembers a request nonce until `expires_ms`; false if it was already used.
    async fn use_nonce(&self, nonce: &[u8], expires_ms: i64, now_ms: i64) -> Result<bool>;
    async fn add_registration_token(
        &self,
        token_hash: &[u8],
        note: &str,
        now_ms: i64,
    ) -> Result<()>;
    async fn registration_token_exists(&self, token_hash: &[u8]) -> Result<bool>;

    /// This server's identity as the audience of signed requests: made once, shared by every
    /// process using the database.
    async fn server_id(&self) -> Result<String>;

    /// The records of a thread at these sequence numbers (those that still exist).
    async fn records_at(&self, thread: &ThreadId, seqs: &[u64]) -> Result<Vec<StoredRecord>>;

    /// How many write transactions are worth running at once (SQLite: one writer).
    fn writers(&self) -> usize;
    /// Record changes from every process sharing this database.
    fn changes(&self) -> broadcast::Receiver<Change>;
    /// Cheap round trip to the database, for readiness checks.
    async fn ping(&self) -> Result<()>;
    /// Takes or renews the lease `name` for `holder` until `now_ms + lease_ms`: true when
    /// `holder` has it now (it was free, had run out, or was already its own).
    async fn lease(&self, name: &str, holder: &str, now_ms: i64, lease_ms: i64) -> Result<bool>;
}

/// Webhook subscriptions, their cursors in their threads, and their deliveries.
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Subscribes a webhook. Its thread must exist; its cursor starts at the thread's newest
    /// record, so that it receives the records that arrive after it.
    async fn create_webhook(&self, hook: &Webhook) -> Result<()>;
    /// A webhook by its ID alone: what the API is given. (Every other call names its thread
    /// too, so that it stays within the thread's rows.)
    async fn webhook(&self, id: &str) -> Result<Option<Webhook>>;
    /// How many webhooks there are, enabled or not.
    async fn webhook_count(&self) -> Result<u64>;
    /// A thread's webhooks, oldest first.
    async fn webhooks_of(&self, thread: &ThreadId) -> Result<Vec<Webhook>>;
    /// Threads with an enabled webhook: those whose new records there is work for.
    async fn webhook_threads(&self) -> Result<Vec<ThreadId>>;
    async fn delete_webhook(&self, thread: &ThreadId, id: &str) -> Result<()>;
    /// What an operator watches: work waiting for webhooks, and webhooks disabled.
    async fn webhook_gauges(&self) -> Result<WebhookGauges>;
    /// Replaces a webhook's secret.
    async fn set_webhook_secret(&self, thread: &ThreadId, id: &str, secret: &str) -> Result<()>;
    /// Re-enables a disabled webhook (failures start again from zero); its paused deliveries
    /// are due again.
    async fn enable_webhook(&self, thread: &ThreadId, id: &str, now_ms: i64) -> Result<()>;
    /// Deliveries of a webhook with `id > after`, oldest first, with their attempts.
    async fn deliveries(
        &self,
        thread: &ThreadId,
        webhook: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(Delivery, Vec<Attempt>)>>;
    /// Queues deliveries of the thread's records with `seq > after` (a replay), or of one test
    /// event when `test`; returns how many were queued.
    async fn queue_deliveries(
        &self,
        thread: &ThreadId,
        webhook: &str,
        after: u64,
        test: bool,
        now_ms: i64,
    ) -> Result<u64>;
    /// Takes up to `limit` due deliveries, oldest due first, for `lease_ms`: no other worker,
    /// in this process or another, takes them meanwhile. Those of a webhook disabled meanwhile
    /// are paused instead.
    async fn claim_deliveries(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<(Delivery, Webhook)>>;
    /// Takes the cursors of up to `limit` enabled webhooks whose thread has records past them,
    /// for `lease_ms`: no other worker, in this process or another, takes them meanwhile.
    async fn claim_webhooks(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<WebhookLease>>;
    /// Records attempts' outcomes, in one transaction: those of claimed deliveries
    /// (`results`, by thread and delivery ID) and those sent from leased cursors, which become delivery
    /// rows as their cursors move (unless the lease was lost meanwhile). Delivered, to retry,
    /// or failed for good; counts each webhook's failures in a row and disables it past the
    /// limit, pausing its waiting deliveries.
    async fn finish_deliveries(
        &self,
        results: &[(ThreadId, i64, Attempt, AttemptResult)],
        cursors: &[CursorOutcome],
    ) -> Result<()>;
}

/// Opens the store a configuration names: a `postgres://` URL selects Postgres; no URL means
/// an embedded SQLite file `threads.db` in `data_dir`. Migrations run before it returns.
pub async fn open(database_url: Option<&str>, data_dir: &Path) -> Result<Arc<dyn Store>> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Arc::new(PgStore::connect(url).await?))
        }
        Some(url) => Ok(Arc::new(SqliteStore::connect(url).await?)),
        None => {
            let path = data_dir.join("threads.db");
            Ok(Arc::new(SqliteStore::open_file(&path).await?))
        }
    }
}

/// Opens a hot standby of a Postgres store, for reads only: no migrations (the primary runs
/// them) and no change notifications (a standby cannot `LISTEN`; changes come from the
/// primary).
pub async fn open_replica(url: &str) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(PgStore::connect_replica(url).await?))
}

/// Capacity of the change channel: a receiver that falls further behind re-reads from storage.
pub(crate) const CHANGE_CHANNEL: usize = 4096;
