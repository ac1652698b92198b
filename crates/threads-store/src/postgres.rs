//! Postgres: for operators, and for several server processes sharing one database.
//!
//! Changes are announced with `NOTIFY` inside the ingest transaction (so they are delivered at
//! commit, to every process) and received by one `LISTEN` task per process.

mod ingest;

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use threads_core::{LogId, ThreadId};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::model::{Ingest, Outcome, Quotas, StoredRecord};
use crate::sql::rows::{into_stored, RecordRow, RECORDS_BY_LOG, RECORDS_BY_THREAD};
use crate::{Change, Result, CHANGE_CHANNEL};

const CHANNEL: &str = "threads_changes";
/// Enough for readers, and writes other than records, on a small machine. With the four
/// connections of the group commits ([`ingest`]) and the `LISTEN` connection, a process opens
/// at most 17.
const MAX_CONNECTIONS: u32 = 12;

pub struct PgStore {
    write: PgPool,
    read: PgPool,
    /// Group commits; none on a standby, which cannot write.
    committer: Option<ingest::Committer>,
    changes: broadcast::Sender<Change>,
    /// Rebroadcasts `NOTIFY`s; none on a standby, which cannot `LISTEN`.
    listener: Option<JoinHandle<()>>,
}

impl PgStore {
    /// How pools connect, to the primary and to a standby alike.
    fn pool_options() -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // sqlx checks a connection with a round trip on every acquire (and again on
            // release): twice the round trips of a one-record push. A connection that died
            // (Postgres restarted) fails its next query instead, and is then dropped.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
    }

    pub async fn connect(url: &str) -> Result<Self> {
        let pool = Self::pool_options().connect(url).await?;
        crate::migrations::migrator(crate::migrations::POSTGRES)
            .await?
            .run(&pool)
            .await?;
        let (changes, _) = broadcast::channel(CHANGE_CHANNEL);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        let origin = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        let committer = ingest::Committer::start(
            Self::pool_options()
                .max_connections(Self::WRITERS as u32)
                .min_connections(Self::WRITERS as u32),
            url,
            changes.clone(),
            origin,
        )
        .await?;
        let listener = tokio::spawn(listen(listener, changes.clone(), origin));
        Ok(Self {
            write: pool.clone(),
            read: pool,
            committer: Some(committer),
            changes,
            listener: Some(listener),
        })
    }

    /// A standby, read only: see [`crate::open_replica`]. One that does not answer at start
    /// is connected to when it does: until then the primary answers its reads.
    pub async fn connect_replica(url: &str) -> Result<Self> {
        // A standby that does not answer gives up soon: the primary answers instead.
        let options = || Self::pool_options().acquire_timeout(Duration::from_secs(2));
        let pool = match options().connect(url).await {
            Ok(pool) => pool,
            Err(error) => {
                tracing::warn!(%error, "the standby does not answer; the primary reads until it does");
                options().connect_lazy(url)?
            }
        };
        Ok(Self {
            write: pool.clone(),
            read: pool,
            committer: None,
            changes: broadcast::channel(1).0,
            listener: None,
        })
    }

    /// A group commit, on the committing thread ([`ingest`]).
    async fn ingest_group(
        &self,
        batch: &[Ingest],
        quotas: &Quotas,
        now_ms: i64,
    ) -> Result<Vec<Outcome>> {
        match &self.committer {
            Some(committer) => committer.ingest(batch.to_vec(), quotas, now_ms).await,
            None => Err(crate::StoreError::Other(sqlx::Error::Protocol(
                "a standby is read only".into(),
            ))),
        }
    }

    /// A connection for writing, from the pool.
    async fn writer(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        Ok(self.write.acquire().await?)
    }

    /// [`crate::Store::records_by_log`].
    async fn page_by_log(
        &self,
        thread: &ThreadId,
        log: &LogId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        let rows: Vec<RecordRow> = sqlx::query_as(&RECORDS_BY_LOG)
            .bind(thread.as_bytes())
            .bind(log.to_bytes())
            .bind(after as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        into_stored(thread, rows)
    }

    /// [`crate::Store::records_by_thread`].
    async fn page_by_thread(
        &self,
        thread: &ThreadId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        let rows: Vec<RecordRow> = sqlx::query_as(&RECORDS_BY_THREAD)
            .bind(thread.as_bytes())
            .bind(after as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        into_stored(thread, rows)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

/// Rebroadcasts other processes' notifications in-process (this process announces its own as
/// it commits them). A lost connection is re-established by `PgListener`; what was announced
/// meanwhile is not lost for readers, who always read by cursor. A notification is `thread
/// seq after origin`; one from a process of an earlier version (`thread seq`, during a
/// rolling upgrade) counts as another's, with nothing known before.
async fn listen(mut listener: PgListener, changes: broadcast::Sender<Change>, origin: u64) {
    loop {
        match listener.recv().await {
            Ok(note) => {
                let mut fields = note.payload().split(' ');
                let (Some(Ok(thread)), Some(Ok(seq))) = (
                    fields.next().map(str::parse),
                    fields.next().map(str::parse::<u64>),
                ) else {
                    continue;
                };
                let after = fields.next().and_then(|a| a.parse().ok()).unwrap_or(seq);
                let from = fields.next().and_then(|o| u64::from_str_radix(o, 16).ok());
                if from == Some(origin) {
                    continue;
                }
                let _ = changes.send(Change {
                    thread,
                    seq,
                    after,
                    here: false,
                });
            }
            Err(error) => {
                tracing::warn!(%error, "postgres change listener failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl PgStore {
    /// Leases the cursors of webhooks that have records to send. (The caller appends
    /// `RETURNING` and the webhook columns.)
    const CLAIM_WEBHOOKS: &'static str = "UPDATE webhooks SET leased_until = $2 \
        WHERE (thread_id, id) IN (SELECT w.thread_id, w.id FROM webhooks w \
        JOIN threads t ON t.id = w.thread_id \
        WHERE w.disabled_at IS NULL AND w.leased_until <= $1 AND w.cursor_seq < t.seq \
        LIMIT $3 FOR UPDATE OF w SKIP LOCKED)";
    /// Claims due deliveries; `SKIP LOCKED` lets processes sharing the database claim at once
    /// without waiting on, or taking, each other's rows. Sorting is off so that the due rows
    /// are read in order from `deliveries_due`, stopping at the limit: statistics taken while
    /// the queue was short would otherwise choose to sort a whole backlog (a large replay) at
    /// every claim. (The caller appends `RETURNING` and the delivery columns.)
    const CLAIM_SETUP: Option<&'static str> = Some("SET LOCAL enable_sort = off");
    /// Ingest transactions committing at once: Postgres overlaps their fsyncs.
    const WRITERS: usize = 4;
    /// The claimed keys are taken first, once (`MATERIALIZED`), then their rows updated by
    /// primary key.
    const CLAIM_DELIVERIES: &'static str =
        "WITH due (due_thread, due_id) AS MATERIALIZED (SELECT thread_id, id FROM deliveries \
        WHERE state = 'pending' AND next_at <= $1 AND leased_until <= $1 \
        ORDER BY next_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
        UPDATE deliveries SET leased_until = $2, attempts = attempts + 1 \
        FROM due WHERE thread_id = due_thread AND id = due_id";
    /// Forgets some expired nonces. Every signed request prunes a few, and requests running at
    /// once skip each other's rows: all deleting the same expired rows, they would wait on each
    /// other and deadlock.
    const PRUNE_NONCES: &'static str = "DELETE FROM request_nonces \
        WHERE nonce = ANY(ARRAY(SELECT nonce FROM request_nonces WHERE expires_at < $1 \
        LIMIT 100 FOR UPDATE SKIP LOCKED))";
}

crate::sql::records::impl_store!(PgStore, sqlx::Postgres);
crate::sql::webhooks::impl_webhook_store!(PgStore, sqlx::Postgres);
