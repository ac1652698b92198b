//! Postgres: for operators, and for several server processes sharing one database.
//!
//! Changes are announced with `NOTIFY` inside the ingest transaction (so they are delivered at
//! commit, to every process) and received by one `LISTEN` task per process.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use threads_core::{LogId, ThreadId};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::model::{Ingest, Outcome, Quotas, StoredRecord};
use crate::sql::group::{Decided, Group, HeadRow, Stored};
use crate::sql::rows::{into_stored, RecordRow, RECORDS_BY_LOG, RECORDS_BY_THREAD};
use crate::sql::rule::cid_prefix;
use crate::{Change, Result, CHANGE_CHANNEL};

const CHANNEL: &str = "threads_changes";
/// Enough for concurrent ingest batches plus readers on a small machine.
const MAX_CONNECTIONS: u32 = 16;

pub struct PgStore {
    write: PgPool,
    read: PgPool,
    changes: broadcast::Sender<Change>,
    /// Rebroadcasts `NOTIFY`s; none on a standby, which cannot `LISTEN`.
    listener: Option<JoinHandle<()>>,
    /// Names this process in its notifications, so it tells its own changes from others'.
    origin: u64,
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
        let listener = tokio::spawn(listen(listener, changes.clone(), origin));
        Ok(Self {
            write: pool.clone(),
            read: pool,
            changes,
            listener: Some(listener),
            origin,
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
            changes: broadcast::channel(1).0,
            listener: None,
            origin: 0,
        })
    }

    /// A group commit: one transaction, a statement per step for the whole group.
    async fn ingest_group(
        &self,
        batch: &[Ingest],
        quotas: &Quotas,
        now_ms: i64,
    ) -> Result<Vec<Outcome>> {
        let mut group = Group::new(batch);
        let mut writer = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *writer).await?;
        let (counters, heads) = self
            .read_heads(&mut tx, &group.threads(), &group.pairs())
            .await?;
        group.set_heads(heads)?;
        let mut stored = HashMap::new();
        for (thread, cids) in group.suspects() {
            let prefixes: Vec<_> = cids.iter().map(|cid| cid_prefix(cid)).collect();
            // Naming the thread keeps the lookup on one node of a distributed Postgres.
            let rows: Vec<Stored> = sqlx::query_as(
                "SELECT log_id, cid, counter FROM records \
                 WHERE thread_id = $1 AND substr(cid, 5, 8) = ANY($2::bytea[])",
            )
            .bind(thread)
            .bind(prefixes)
            .fetch_all(&mut *tx)
            .await?;
            // The prefix narrows; the whole CID decides.
            let found = rows.into_iter().filter(|r| cids.contains(&r.1)).collect();
            stored.insert(thread, found);
        }
        let decided = group.decide(&counters, stored, quotas)?;
        for &i in &decided.forks {
            insert_fork(&mut tx, &batch[i], now_ms).await?;
        }
        self.write_group(&mut tx, batch, &decided, now_ms).await?;
        tx.commit().await?;
        // This process's subscribers hear of the records now, not after Postgres's
        // notification has come back to this process's listener (which skips its own).
        for change in decided.changes {
            // No receiver is fine: nobody is listening.
            let _ = self.changes.send(change);
        }
        Ok(decided.outcomes)
    }

    /// Locks the rows of the batch's threads until commit, in ID order (so that concurrent
    /// batches, in this process or another, never wait for each other in a cycle), and reads
    /// their counters (sequence numbers follow commit order) and the heads of the batch's logs
    /// in those threads: one statement, its text the same whatever the batch.
    async fn read_heads(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        ids: &[&[u8]],
        pairs: &[(&[u8], Vec<u8>)],
    ) -> Result<(HashMap<Vec<u8>, (i64, i64)>, Vec<HeadRow>)> {
        let (pair_threads, pair_logs): (Vec<&[u8]>, Vec<&[u8]>) =
            pairs.iter().map(|(t, l)| (*t, l.as_slice())).unzip();
        type Row = (
            Vec<u8>,
            i64,
            i64,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            Option<i64>,
            Option<i64>,
        );
        // One row per thread and log of the batch, or per thread alone when none of its logs
        // is registered.
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT t.id, t.seq, t.byte_count, l.log_id, l.head_cid, l.head_counter, \
             l.byte_count FROM threads t LEFT JOIN (unnest($2::bytea[], $3::bytea[]) \
             AS p (thread_id, log_id) JOIN logs l USING (thread_id, log_id)) \
             ON p.thread_id = t.id \
             WHERE t.id = ANY($1::bytea[]) ORDER BY t.id FOR NO KEY UPDATE OF t",
        )
        .bind(ids)
        .bind(pair_threads)
        .bind(pair_logs)
        .fetch_all(&mut **tx)
        .await?;
        let mut counters = HashMap::with_capacity(ids.len());
        let mut heads = Vec::with_capacity(pairs.len());
        for (thread, seq, bytes, log, head_cid, counter, log_bytes) in rows {
            if let Some(log) = log {
                heads.push(HeadRow {
                    thread: thread.clone(),
                    log,
                    head_cid,
                    counter: counter.unwrap_or_default(),
                    bytes: log_bytes.unwrap_or_default(),
                });
            }
            counters.insert(thread, (seq, bytes));
        }
        Ok((counters, heads))
    }

    /// Writes what a group stores in one statement: its records, the heads it moved and the
    /// threads it grew, and the notifications of its changes (one per grown thread). Each
    /// column is bound as one array, so the statement's text is the same whatever the group's
    /// size: it is parsed and planned once per connection, and a group costs one round trip
    /// where a statement per step cost four.
    async fn write_group(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        batch: &[Ingest],
        decided: &Decided<'_>,
        now_ms: i64,
    ) -> Result<()> {
        if decided.records.is_empty() && decided.moved.is_empty() && decided.grown.is_empty() {
            return Ok(());
        }
        let n = decided.records.len();
        let (mut threads, mut seqs, mut logs, mut counters) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut cids, mut prevs, mut events, mut headers, mut bodies) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut nodes: [Vec<&[u8]>; 4] = std::array::from_fn(|_| Vec::with_capacity(n));
        for &(i, seq, counter) in &decided.records {
            let r = &batch[i].record;
            let (header_cid, body_cid) = r.content_cids();
            threads.push(batch[i].thread.as_bytes());
            seqs.push(seq as i64);
            logs.push(batch[i].log.to_bytes());
            counters.push(counter as i64);
            cids.push(r.cid().to_bytes());
            prevs.push(r.prev().map(|p| p.to_bytes()));
            events.push(r.event_cid().to_bytes());
            headers.push(header_cid.to_bytes());
            bodies.push(body_cid.to_bytes());
            let b = r.blocks();
            for (column, node) in nodes
                .iter_mut()
                .zip([&b.record, &b.event, &b.header, &b.body])
            {
                column.push(&node[..]);
            }
        }
        let [record, event, header, body] = nodes;
        let moved = &decided.moved;
        let grown = &decided.grown;
        let notes: Vec<String> = decided
            .changes
            .iter()
            .map(|c| format!("{} {} {} {:x}", c.thread, c.seq, c.after, self.origin))
            .collect();
        sqlx::query(
            "WITH stored AS (INSERT INTO records (thread_id, seq, log_id, counter, cid, prev, \
             event_cid, header_cid, body_cid, record, event, header, body, arrived_at) \
             SELECT *, $14::int8 FROM unnest($1::bytea[], $2::int8[], $3::bytea[], $4::int8[], \
             $5::bytea[], $6::bytea[], $7::bytea[], $8::bytea[], $9::bytea[], $10::bytea[], \
             $11::bytea[], $12::bytea[], $13::bytea[])), \
             heads AS (UPDATE logs SET head_cid = v.cid, head_counter = v.counter, \
             byte_count = v.bytes \
             FROM unnest($15::bytea[], $16::bytea[], $17::bytea[], $18::int8[], $19::int8[]) \
             AS v (thread_id, log_id, cid, counter, bytes) \
             WHERE logs.thread_id = v.thread_id AND logs.log_id = v.log_id), \
             grown AS (UPDATE threads SET seq = v.seq, record_count = record_count + v.added, \
             byte_count = v.bytes \
             FROM unnest($20::bytea[], $21::int8[], $22::int8[], $23::int8[]) \
             AS v (id, seq, added, bytes) WHERE threads.id = v.id) \
             SELECT pg_notify($24, note) FROM unnest($25::text[]) AS note",
        )
        .bind(threads)
        .bind(seqs)
        .bind(logs)
        .bind(counters)
        .bind(cids)
        .bind(prevs)
        .bind(events)
        .bind(headers)
        .bind(bodies)
        .bind(record)
        .bind(event)
        .bind(header)
        .bind(body)
        .bind(now_ms)
        .bind(
            moved
                .iter()
                .map(|m| m.thread.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(moved.iter().map(|m| m.log.as_slice()).collect::<Vec<_>>())
        .bind(moved.iter().map(|m| m.cid.as_slice()).collect::<Vec<_>>())
        .bind(moved.iter().map(|m| m.counter).collect::<Vec<_>>())
        .bind(moved.iter().map(|m| m.bytes).collect::<Vec<_>>())
        .bind(grown.iter().map(|&(id, _, _, _)| id).collect::<Vec<_>>())
        .bind(
            grown
                .iter()
                .map(|&(_, _, last, _)| last as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            grown
                .iter()
                .map(|&(_, first, last, _)| (last - first) as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            grown
                .iter()
                .map(|&(_, _, _, bytes)| bytes as i64)
                .collect::<Vec<_>>(),
        )
        .bind(CHANNEL)
        .bind(notes)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A connection for writing, from the pool.
    async fn writer(&self) -> Result<sqlx::pool::PoolConnection<Postgres>> {
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

/// Keeps a fork as evidence (never served as the log).
async fn insert_fork(tx: &mut Transaction<'_, Postgres>, item: &Ingest, now_ms: i64) -> Result<()> {
    let r = &item.record;
    let b = r.blocks();
    sqlx::query(
        "INSERT INTO forks (thread_id, log_id, cid, prev, record, event, header, body, arrived_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
    )
    .bind(item.thread.as_bytes())
    .bind(item.log.to_bytes())
    .bind(r.cid().to_bytes())
    .bind(r.prev().map(|p| p.to_bytes()))
    .bind(&b.record)
    .bind(&b.event)
    .bind(&b.header)
    .bind(&b.body)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
