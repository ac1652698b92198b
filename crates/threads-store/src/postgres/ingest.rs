//! Postgres's group commit, run on a thread of its own.
//!
//! A group is four round trips to Postgres (begin, read the heads, write, commit). On the
//! server's runtime, each answer waited for a worker thread behind the requests the workers
//! were serving: with 64 one-record pushes in flight, a group's statements ran for 1.7 ms in
//! Postgres, yet a group was committed only every 4.6 ms. Here a thread with its own runtime
//! and connections runs group commits and nothing else, so each answer is taken up when it
//! comes.

use std::collections::HashMap;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::CHANNEL;
use crate::model::{Ingest, Outcome, Quotas};
use crate::sql::group::{Decided, Group, HeadRow, Stored};
use crate::sql::rule::cid_prefix;
use crate::{Change, Result, StoreError};

/// Tries of one group commit, each after a log it read was unregistered before it wrote.
const ATTEMPTS: usize = 3;

/// The queue into the committing thread. The thread ends, once the groups it took are
/// answered, when this is dropped.
pub(super) struct Committer {
    jobs: mpsc::UnboundedSender<Job>,
}

struct Job {
    batch: Vec<Ingest>,
    quotas: Quotas,
    now_ms: i64,
    reply: oneshot::Sender<Result<Vec<Outcome>>>,
}

impl Committer {
    /// Starts the thread, which connects with `options` (as many connections as groups it
    /// may commit at once); answers once it has connected.
    pub async fn start(
        options: PgPoolOptions,
        url: &str,
        changes: broadcast::Sender<Change>,
        origin: u64,
    ) -> Result<Self> {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let (ready, connected) = oneshot::channel();
        let url = url.to_owned();
        std::thread::Builder::new()
            .name("pg-commit".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => return drop(ready.send(Err(StoreError::Other(sqlx::Error::Io(e))))),
                };
                runtime.block_on(async move {
                    let pool = match options.connect(&url).await {
                        Ok(pool) => pool,
                        Err(e) => return drop(ready.send(Err(e.into()))),
                    };
                    let _ = ready.send(Ok(()));
                    let writer = std::sync::Arc::new(Writer {
                        pool,
                        changes,
                        origin,
                    });
                    // Each group holds a sender; when all are dropped, every group is answered.
                    let (running, mut finished) = mpsc::channel::<()>(1);
                    while let Some(job) = queue.recv().await {
                        let (writer, running) = (writer.clone(), running.clone());
                        tokio::spawn(async move {
                            let outcomes = writer
                                .ingest_group(&job.batch, &job.quotas, job.now_ms)
                                .await;
                            let _ = job.reply.send(outcomes);
                            drop(running);
                        });
                    }
                    drop(running);
                    let _ = finished.recv().await;
                    writer.pool.close().await;
                });
            })
            .map_err(|e| StoreError::Other(sqlx::Error::Io(e)))?;
        connected
            .await
            .map_err(|_| StoreError::Other(sqlx::Error::WorkerCrashed))??;
        Ok(Self { jobs })
    }

    /// Commits a group; answers once it is durable.
    pub async fn ingest(
        &self,
        batch: Vec<Ingest>,
        quotas: &Quotas,
        now_ms: i64,
    ) -> Result<Vec<Outcome>> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            batch,
            quotas: *quotas,
            now_ms,
            reply,
        };
        let stopped = || StoreError::Other(sqlx::Error::WorkerCrashed);
        self.jobs.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// What a group commit needs, on the committing thread.
struct Writer {
    pool: PgPool,
    changes: broadcast::Sender<Change>,
    /// Names this process in its notifications.
    origin: u64,
}

impl Writer {
    /// A group commit, tried again in the rare case that one of its logs was unregistered
    /// while it waited for its threads' locks. Each try reads the heads afresh, so a second
    /// is rare; past [`ATTEMPTS`] the group fails rather than hold up every group after it.
    async fn ingest_group(
        &self,
        batch: &[Ingest],
        quotas: &Quotas,
        now_ms: i64,
    ) -> Result<Vec<Outcome>> {
        for _ in 0..ATTEMPTS {
            if let Some(outcomes) = self.try_group(batch, quotas, now_ms).await? {
                return Ok(outcomes);
            }
        }
        Err(StoreError::Other(sqlx::Error::Protocol(
            "the group's logs kept being unregistered while it committed".into(),
        )))
    }

    /// A group commit: one transaction, a statement per step for the whole group. `None`
    /// when it was rolled back because a log it read was gone by the time it wrote.
    async fn try_group(
        &self,
        batch: &[Ingest],
        quotas: &Quotas,
        now_ms: i64,
    ) -> Result<Option<Vec<Outcome>>> {
        let mut group = Group::new(batch);
        let mut tx = self.pool.begin().await?;
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
        if !self.write_group(&mut tx, batch, &decided, now_ms).await? {
            return Ok(None);
        }
        tx.commit().await?;
        // This process's subscribers hear of the records now, not after Postgres's
        // notification has come back to this process's listener (which skips its own).
        for change in decided.changes {
            // No receiver is fine: nobody is listening.
            let _ = self.changes.send(change);
        }
        Ok(Some(decided.outcomes))
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
    ///
    /// Answers whether every head it moved was still there. Records have no foreign key to
    /// their log (its check, a query per record, was a sixth of Postgres's work for one-record
    /// pushes): the heads were read under the threads' locks, but in that statement's
    /// snapshot, which predates an unregistering that held a lock first. This statement's
    /// snapshot is newer, so a log gone since moves no head here, and the group is rolled
    /// back.
    async fn write_group(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        batch: &[Ingest],
        decided: &Decided<'_>,
        now_ms: i64,
    ) -> Result<bool> {
        if decided.records.is_empty() && decided.moved.is_empty() && decided.grown.is_empty() {
            return Ok(true);
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
        let (moved_here, _): (i64, i64) = sqlx::query_as(
            "WITH stored AS (INSERT INTO records (thread_id, seq, log_id, counter, cid, prev, \
             event_cid, header_cid, body_cid, record, event, header, body, arrived_at) \
             SELECT *, $14::int8 FROM unnest($1::bytea[], $2::int8[], $3::bytea[], $4::int8[], \
             $5::bytea[], $6::bytea[], $7::bytea[], $8::bytea[], $9::bytea[], $10::bytea[], \
             $11::bytea[], $12::bytea[], $13::bytea[])), \
             heads AS (UPDATE logs SET head_cid = v.cid, head_counter = v.counter, \
             byte_count = v.bytes \
             FROM unnest($15::bytea[], $16::bytea[], $17::bytea[], $18::int8[], $19::int8[]) \
             AS v (thread_id, log_id, cid, counter, bytes) \
             WHERE logs.thread_id = v.thread_id AND logs.log_id = v.log_id RETURNING 1), \
             grown AS (UPDATE threads SET seq = v.seq, record_count = record_count + v.added, \
             byte_count = v.bytes \
             FROM unnest($20::bytea[], $21::int8[], $22::int8[], $23::int8[]) \
             AS v (id, seq, added, bytes) WHERE threads.id = v.id), \
             notified AS (SELECT pg_notify($24, note) FROM unnest($25::text[]) AS note) \
             SELECT (SELECT count(*) FROM heads), (SELECT count(*) FROM notified)",
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
        .fetch_one(&mut **tx)
        .await?;
        Ok(moved_here as usize == moved.len())
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
