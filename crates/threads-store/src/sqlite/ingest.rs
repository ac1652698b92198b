//! SQLite's group commit, run whole on a thread of its own.
//!
//! sqlx runs each statement on its connection's thread and wakes the caller with the result:
//! a group commit of four statements cost four such round trips, and on a small machine those
//! wake-ups (not SQLite) were most of a one-record push's CPU. Here the thread that takes a
//! group reads the heads, decides ([`Group`]), writes, commits and announces, and is woken once
//! per group. Its connection is a second one to the same file; the store's write lock (the
//! sqlx writer's mutex) is held for each group, so the two connections never write at once and
//! never wait on SQLite's busy handler.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sqlx::sqlite::SqliteConnection;
use tokio::sync::{broadcast, oneshot};

use crate::model::{Ingest, Outcome, Quotas};
use crate::sql::group::{Group, HeadRow, Stored};
use crate::sql::rule::cid_prefix;
use crate::{Change, Result, StoreError};

/// The queue into the committing thread. The thread ends when this is dropped.
pub(super) struct Committer {
    jobs: mpsc::Sender<Job>,
}

struct Job {
    batch: Vec<Ingest>,
    quotas: Quotas,
    now_ms: i64,
    /// The outcomes, and the batch handed back.
    reply: oneshot::Sender<(Result<Vec<Outcome>>, Vec<Ingest>)>,
}

impl Committer {
    /// Opens the connection (with the pragmas given, as `name = value`) and starts the thread.
    pub fn start(
        path: &Path,
        busy_timeout: Duration,
        pragmas: &[(&str, String)],
        write_lock: Arc<tokio::sync::Mutex<SqliteConnection>>,
        changes: broadcast::Sender<Change>,
    ) -> Result<Self> {
        let mut conn = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            super::wal_writes::register()?,
        )?;
        conn.busy_timeout(busy_timeout)?;
        for (name, value) in pragmas {
            conn.pragma_update(None, name, value)?;
        }
        super::wal_writes::prepare(&conn)?;
        conn.set_prepared_statement_cache_capacity(16);
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-commit".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    // A bug that panics fails this group (rolled back as the transaction
                    // unwinds), not the thread and every group after it.
                    let committed = catch_unwind(AssertUnwindSafe(|| {
                        let _writing = write_lock.blocking_lock();
                        commit(&mut conn, &job.batch, &job.quotas, job.now_ms)
                    }))
                    .unwrap_or_else(|_| {
                        tracing::error!("a group commit panicked; its pushes get an error");
                        Err(StoreError::Other(sqlx::Error::Protocol(
                            "the group commit failed".into(),
                        )))
                    });
                    // Announced here, not by the caller: a caller that stopped waiting still
                    // has its records stored, and subscribers must hear of them.
                    let outcomes = committed.map(|(outcomes, announced)| {
                        for change in announced {
                            // No receiver is fine: nobody is listening.
                            let _ = changes.send(change);
                        }
                        outcomes
                    });
                    let _ = job.reply.send((outcomes, job.batch));
                }
            })
            .map_err(|e| StoreError::Other(sqlx::Error::Io(e)))?;
        Ok(Self { jobs })
    }

    /// Commits a batch; answers once it is durable, handing the batch back.
    pub async fn ingest(
        &self,
        batch: Vec<Ingest>,
        quotas: &Quotas,
        now_ms: i64,
    ) -> Result<(Vec<Outcome>, Vec<Ingest>)> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            batch,
            quotas: *quotas,
            now_ms,
            reply,
        };
        let stopped = || StoreError::Other(sqlx::Error::WorkerCrashed);
        self.jobs.send(job).map_err(|_| stopped())?;
        let (outcomes, batch) = answer.await.map_err(|_| stopped())?;
        Ok((outcomes?, batch))
    }
}

/// One group in one transaction, taking the database's write lock first (`IMMEDIATE`), so what
/// it reads stays true until it commits. Statements run a row at a time: in-process, a prepared
/// statement's step costs microseconds, and the group's rows are few.
fn commit(
    conn: &mut Connection,
    batch: &[Ingest],
    quotas: &Quotas,
    now_ms: i64,
) -> Result<(Vec<Outcome>, Vec<Change>)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut group = Group::new(batch);
    let mut counters = HashMap::new();
    let mut heads = Vec::new();
    {
        let mut read = tx.prepare_cached(
            "SELECT t.seq, t.byte_count, l.log_id IS NOT NULL, l.head_cid, l.head_counter, \
             l.byte_count FROM threads t LEFT JOIN logs l ON l.thread_id = t.id AND l.log_id = ?2 \
             WHERE t.id = ?1",
        )?;
        for (thread, log) in group.pairs() {
            let row = read
                .query_row(params![thread, log], |r| {
                    Ok((
                        (r.get::<_, i64>(0)?, r.get::<_, i64>(1)?),
                        r.get::<_, bool>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                    ))
                })
                .optional()?;
            let Some((counter, registered, head_cid, head_counter, bytes)) = row else {
                continue;
            };
            counters.insert(thread.to_vec(), counter);
            if registered {
                heads.push(HeadRow {
                    thread: thread.to_vec(),
                    log,
                    head_cid,
                    counter: head_counter.unwrap_or_default(),
                    bytes: bytes.unwrap_or_default(),
                });
            }
        }
    }
    group.set_heads(heads)?;
    let mut stored = HashMap::new();
    {
        let mut find = tx.prepare_cached(
            "SELECT log_id, cid, counter FROM records \
             WHERE thread_id = ?1 AND substr(cid, 5, 8) = ?2",
        )?;
        for (thread, cids) in group.suspects() {
            let mut found = Vec::new();
            for cid in &cids {
                let rows = find.query_map(params![thread, cid_prefix(cid)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
                for row in rows {
                    let row: Stored = row?;
                    // The prefix narrows; the whole CID decides.
                    if row.1 == *cid {
                        found.push(row);
                    }
                }
            }
            stored.insert(thread, found);
        }
    }
    let decided = group.decide(&counters, stored, quotas)?;
    {
        let mut fork = tx.prepare_cached(
            "INSERT INTO forks (thread_id, log_id, cid, prev, record, event, header, body, \
             arrived_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
        )?;
        for &i in &decided.forks {
            let (item, b) = (&batch[i], batch[i].record.blocks());
            fork.execute(params![
                item.thread.as_bytes(),
                item.log.to_bytes(),
                item.record.cid().to_bytes(),
                item.record.prev().map(|p| p.to_bytes()),
                b.record,
                b.event,
                b.header,
                b.body,
                now_ms,
            ])?;
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO records (thread_id, seq, log_id, counter, cid, prev, event_cid, \
             header_cid, body_cid, record, event, header, body, arrived_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        for &(i, seq, counter) in &decided.records {
            let (item, r) = (&batch[i], &batch[i].record);
            let (header_cid, body_cid) = r.content_cids();
            let b = r.blocks();
            insert.execute(params![
                item.thread.as_bytes(),
                seq as i64,
                item.log.to_bytes(),
                counter as i64,
                r.cid().to_bytes(),
                r.prev().map(|p| p.to_bytes()),
                r.event_cid().to_bytes(),
                header_cid.to_bytes(),
                body_cid.to_bytes(),
                b.record,
                b.event,
                b.header,
                b.body,
                now_ms,
            ])?;
        }
        let mut head = tx.prepare_cached(
            "UPDATE logs SET head_cid = ?3, head_counter = ?4, byte_count = ?5 \
             WHERE thread_id = ?1 AND log_id = ?2",
        )?;
        for m in &decided.moved {
            head.execute(params![m.thread, m.log, m.cid, m.counter, m.bytes])?;
        }
        let mut thread = tx.prepare_cached(
            "UPDATE threads SET seq = ?2, record_count = record_count + ?3, byte_count = ?4 \
             WHERE id = ?1",
        )?;
        for &(id, first, last, bytes) in &decided.grown {
            thread.execute(params![
                id,
                last as i64,
                (last - first) as i64,
                bytes as i64
            ])?;
        }
    }
    tx.commit()?;
    Ok((decided.outcomes, decided.changes))
}
