//! The SQL both backends share, and the ingest rule.
//!
//! The statements are the same text on SQLite and Postgres (`$n` placeholders, `RETURNING`,
//! `ON CONFLICT`), so one macro expands the [`Store`](crate::Store) implementation for each
//! backend type. A backend struct provides `write` and `read` pools, a `changes` sender, and two
//! hooks: `notify_in_tx` (Postgres: `pg_notify`, delivered at commit) and `after_commit`
//! (SQLite: in-process broadcast).

use std::collections::HashMap;

use sqlx::FromRow;
use threads_core::{Cid, Head, LogId, ServiceKey, ThreadId, UnverifiedRecord};

use crate::model::*;
use crate::{Result, StoreError};

pub(crate) fn decode_err(what: &'static str) -> StoreError {
    StoreError::Other(sqlx::Error::Decode(
        format!("stored {what} does not parse").into(),
    ))
}

pub(crate) fn cid(bytes: &[u8]) -> Result<Cid> {
    Cid::try_from(bytes).map_err(|_| decode_err("CID"))
}

pub(crate) fn thread_id(bytes: &[u8]) -> Result<ThreadId> {
    ThreadId::from_bytes(bytes).map_err(|_| decode_err("thread ID"))
}

pub(crate) fn log_id(bytes: &[u8]) -> Result<LogId> {
    LogId::from_bytes(bytes).map_err(|_| decode_err("log ID"))
}

#[derive(FromRow)]
pub(crate) struct ThreadRow {
    id: Vec<u8>,
    public: bool,
    follow_key: Vec<u8>,
    seq: i64,
    record_count: i64,
    byte_count: i64,
    created_at: i64,
}

impl ThreadRow {
    pub(crate) fn into_info(self) -> Result<ThreadInfo> {
        Ok(ThreadInfo {
            id: thread_id(&self.id)?,
            public: self.public,
            follow_key: ServiceKey::from_slice(&self.follow_key)
                .map_err(|_| decode_err("follow key"))?,
            seq: self.seq as u64,
            records: self.record_count as u64,
            bytes: self.byte_count as u64,
            created_ms: self.created_at,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct LogRow {
    thread_id: Vec<u8>,
    log_id: Vec<u8>,
    addrs: String,
    head_cid: Option<Vec<u8>>,
    head_counter: i64,
    byte_count: i64,
    registered_at: i64,
    addrs_at: i64,
}

impl LogRow {
    pub(crate) fn into_info(self) -> Result<LogInfo> {
        let head = match self.head_cid {
            Some(bytes) => Some(Head {
                cid: cid(&bytes)?,
                counter: self.head_counter as u64,
            }),
            None => None,
        };
        Ok(LogInfo {
            thread: thread_id(&self.thread_id)?,
            log: log_id(&self.log_id)?,
            head,
            bytes: self.byte_count as u64,
            addrs: serde_json::from_str(&self.addrs).map_err(|_| decode_err("addresses"))?,
            registered_ms: self.registered_at,
            addrs_ms: self.addrs_at,
        })
    }
}

#[derive(FromRow)]
pub(crate) struct RecordRow {
    seq: i64,
    log_id: Vec<u8>,
    counter: i64,
    cid: Vec<u8>,
    event_cid: Vec<u8>,
    header_cid: Vec<u8>,
    body_cid: Vec<u8>,
    record: Vec<u8>,
    event: Vec<u8>,
    header: Vec<u8>,
    body: Vec<u8>,
    arrived_at: i64,
}

/// Turns rows of one thread into stored records. Log IDs repeat across a page and parsing one
/// decompresses a curve point, so each distinct ID is parsed once per result set.
pub(crate) fn into_stored(thread: &ThreadId, rows: Vec<RecordRow>) -> Result<Vec<StoredRecord>> {
    let mut logs: HashMap<Vec<u8>, LogId> = HashMap::new();
    rows.into_iter()
        .map(|row| {
            let thread = thread.clone();
            let log = match logs.get(&row.log_id) {
                Some(l) => l.clone(),
                None => {
                    let l = log_id(&row.log_id)?;
                    logs.insert(row.log_id, l.clone());
                    l
                }
            };
            Ok(StoredRecord {
                thread,
                log,
                seq: row.seq as u64,
                counter: row.counter as u64,
                cid: cid(&row.cid)?,
                node_cids: NodeCids {
                    event: cid(&row.event_cid)?,
                    header: cid(&row.header_cid)?,
                    body: cid(&row.body_cid)?,
                },
                arrived_ms: row.arrived_at,
                blocks: UnverifiedRecord {
                    record: row.record,
                    event: row.event,
                    header: row.header,
                    body: row.body,
                },
            })
        })
        .collect()
}

#[derive(FromRow)]
pub(crate) struct ForkRow {
    cid: Vec<u8>,
    prev: Option<Vec<u8>>,
    record: Vec<u8>,
    event: Vec<u8>,
    header: Vec<u8>,
    body: Vec<u8>,
    arrived_at: i64,
}

impl ForkRow {
    pub(crate) fn into_evidence(self) -> Result<ForkEvidence> {
        Ok(ForkEvidence {
            cid: cid(&self.cid)?,
            prev: self.prev.as_deref().map(cid).transpose()?,
            arrived_ms: self.arrived_at,
            blocks: UnverifiedRecord {
                record: self.record,
                event: self.event,
                header: self.header,
                body: self.body,
            },
        })
    }
}

pub(crate) const WEBHOOK_COLUMNS: &str =
    "id, thread_id, log_id, url, secret, created_at, failures, disabled_at, disabled_reason, cursor_seq";

#[derive(FromRow)]
pub(crate) struct WebhookRow {
    id: String,
    thread_id: Vec<u8>,
    log_id: Option<Vec<u8>>,
    url: String,
    secret: String,
    created_at: i64,
    failures: i64,
    disabled_at: Option<i64>,
    disabled_reason: Option<String>,
    cursor_seq: i64,
}

impl WebhookRow {
    pub(crate) fn into_webhook(self) -> Result<Webhook> {
        Ok(Webhook {
            id: self.id,
            thread: thread_id(&self.thread_id)?,
            log: self.log_id.as_deref().map(log_id).transpose()?,
            url: self.url,
            secret: self.secret,
            created_ms: self.created_at,
            failures: self.failures as u64,
            disabled_ms: self.disabled_at,
            disabled_reason: self.disabled_reason,
            cursor: self.cursor_seq as u64,
        })
    }
}

pub(crate) const DELIVERY_COLUMNS: &str =
    "id, webhook_id, event, thread_id, log_id, seq, counter, cid, created_at, state, attempts, \
     next_at, last_status, last_error, delivered_at, message_id, duration_ms";

#[derive(FromRow)]
pub(crate) struct DeliveryRow {
    pub(crate) id: i64,
    webhook_id: String,
    event: String,
    thread_id: Vec<u8>,
    log_id: Option<Vec<u8>>,
    seq: i64,
    counter: i64,
    cid: Option<Vec<u8>>,
    created_at: i64,
    state: String,
    attempts: i32,
    next_at: i64,
    last_status: Option<i32>,
    last_error: Option<String>,
    delivered_at: Option<i64>,
    message_id: Option<String>,
    duration_ms: Option<i64>,
}

impl DeliveryRow {
    /// The successful attempt, kept in the delivery's own row (rows older than that keep it
    /// with the failed ones, and have no duration here).
    pub(crate) fn success(&self) -> Option<crate::model::Attempt> {
        Some(crate::model::Attempt {
            at_ms: self.delivered_at?,
            status: self.last_status.map(|s| s as u16),
            error: None,
            duration_ms: self.duration_ms?,
        })
    }

    pub(crate) fn into_delivery(self) -> Result<Delivery> {
        Ok(Delivery {
            id: self.id,
            webhook: self.webhook_id,
            event: self.event,
            thread: thread_id(&self.thread_id)?,
            log: self.log_id.as_deref().map(log_id).transpose()?,
            seq: self.seq as u64,
            counter: self.counter as u64,
            cid: self.cid.as_deref().map(cid).transpose()?,
            created_ms: self.created_at,
            state: self.state,
            attempts: self.attempts as u32,
            next_ms: self.next_at,
            last_status: self.last_status.map(|s| s as u16),
            last_error: self.last_error,
            delivered_ms: self.delivered_at,
            message_id: self
                .message_id
                .unwrap_or_else(|| format!("msg_{}", self.id)),
        })
    }
}

/// A log's state while a batch is decided.
pub(crate) struct LogState {
    pub head: Option<Head>,
    pub bytes: i64,
    pub changed: bool,
}

/// What the ingest rule decided for one record, before any row is written.
pub(crate) enum Decision {
    Store { seq: u64, counter: u64 },
    Fork { head: Head },
    Final(Outcome),
}

/// Decides one record against the log's state. `stored_in_log(prev)` answers whether `prev` is
/// a record of this log already in the database (a fork) or not (a gap).
pub(crate) fn decide(
    item: &Ingest,
    state: Option<&mut LogState>,
    known: &HashMap<Vec<u8>, u64>,
    prev_stored: bool,
    thread_seq: &mut u64,
    thread_bytes: &mut u64,
    quotas: &Quotas,
) -> Decision {
    let Some(state) = state else {
        return Decision::Final(Outcome::UnknownLog);
    };
    if let Some(&counter) = known.get(&item.record.cid().to_bytes()) {
        return Decision::Final(Outcome::Duplicate { counter });
    }
    match Head::advance(state.head.as_ref(), &item.record) {
        Ok(head) => {
            let len = record_len(item) as u64;
            if quotas
                .max_records_per_log
                .is_some_and(|max| head.counter > max)
            {
                return Decision::Final(Outcome::QuotaExceeded(Quota::RecordsPerLog));
            }
            if quotas
                .max_bytes_per_thread
                .is_some_and(|max| *thread_bytes + len > max)
            {
                return Decision::Final(Outcome::QuotaExceeded(Quota::BytesPerThread));
            }
            *thread_seq += 1;
            *thread_bytes += len;
            state.head = Some(head);
            state.bytes += len as i64;
            state.changed = true;
            Decision::Store {
                seq: *thread_seq,
                counter: head.counter,
            }
        }
        Err(threads_core::ChainError::MissingPrev { .. }) => Decision::Fork {
            head: state.head.expect("MissingPrev means the log has a head"),
        },
        Err(threads_core::ChainError::WrongPrev { .. }) if prev_stored => Decision::Fork {
            head: state.head.expect("WrongPrev means the log has a head"),
        },
        Err(_) => Decision::Final(Outcome::Gap { head: state.head }),
    }
}

/// The indexed part of a CID: 8 bytes of its digest (bytes 5-12, 1-based, as SQL's `substr`).
pub(crate) fn cid_prefix(cid: &[u8]) -> Vec<u8> {
    cid.iter().skip(4).take(8).copied().collect()
}

/// CIDs worth looking up before a thread's part of a batch is decided: each record that does
/// not extend its log's head (as the batch would move it), and its predecessor. A record that
/// extends the head cannot be stored already: its counter is past every stored one.
pub(crate) fn suspects(
    thread: &[u8],
    indexes: &[usize],
    batch: &[Ingest],
    logs: &HashMap<Vec<u8>, LogState>,
) -> Vec<Vec<u8>> {
    let mut heads: HashMap<Vec<u8>, Option<Head>> =
        logs.iter().map(|(log, s)| (log.clone(), s.head)).collect();
    let mut out = Vec::new();
    for &i in indexes {
        let item = &batch[i];
        debug_assert_eq!(item.thread.as_bytes(), thread);
        let Some(head) = heads.get_mut(&item.log.to_bytes()) else {
            continue;
        };
        match Head::advance(head.as_ref(), &item.record) {
            Ok(next) => *head = Some(next),
            Err(_) => {
                out.push(item.record.cid().to_bytes());
                out.extend(item.record.prev().map(|p| p.to_bytes()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

pub(crate) fn record_len(item: &Ingest) -> usize {
    let b = item.record.blocks();
    b.record.len() + b.event.len() + b.header.len() + b.body.len()
}

/// The columns every record query selects.
pub(crate) const RECORD_COLUMNS: &str = "seq, log_id, counter, cid, event_cid, header_cid, \
     body_cid, record, event, header, body, arrived_at";

/// Implements [`Store`](crate::Store) for a backend struct with `write`/`read` pools of `$db`.
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::Store for $store {
            async fn register(
                &self,
                reg: &$crate::model::Registration,
                now_ms: i64,
            ) -> $crate::Result<$crate::model::Registered> {
                use $crate::model::Registered;
                let mut tx = self.write.begin().await?;
                let thread = reg.thread.as_bytes();
                let key: Option<(Vec<u8>,)> =
                    sqlx::query_as("SELECT follow_key FROM threads WHERE id = $1")
                        .bind(thread)
                        .fetch_optional(&mut *tx)
                        .await?;
                match key {
                    None => {
                        sqlx::query(
                            "INSERT INTO threads (id, public, follow_key, created_at) VALUES ($1, $2, $3, $4)",
                        )
                        .bind(thread)
                        .bind(reg.public)
                        .bind(&reg.follow_key.as_bytes()[..])
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Some((key,)) if key[..] != reg.follow_key.as_bytes()[..] => {
                        return Err($crate::StoreError::Conflict("follow_key_mismatch"));
                    }
                    Some(_) => {
                        sqlx::query("UPDATE threads SET public = $2 WHERE id = $1")
                            .bind(thread)
                            .bind(reg.public)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                let addrs = serde_json::to_string(&reg.addrs).expect("strings serialize");
                let updated = sqlx::query("UPDATE logs SET addrs = $3, addrs_at = $4 WHERE thread_id = $1 AND log_id = $2")
                    .bind(thread)
                    .bind(reg.log.to_bytes())
                    .bind(&addrs)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated == 0 {
                    sqlx::query(
                        "INSERT INTO logs (thread_id, log_id, addrs, registered_at, addrs_at) VALUES ($1, $2, $3, $4, $4)",
                    )
                    .bind(thread)
                    .bind(reg.log.to_bytes())
                    .bind(&addrs)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(if updated == 0 { Registered::Created } else { Registered::Updated })
            }

            async fn unregister_log(
                &self,
                thread: &threads_core::ThreadId,
                log: &threads_core::LogId,
            ) -> $crate::Result<()> {
                let mut tx = self.write.begin().await?;
                let (t, l) = (thread.as_bytes(), log.to_bytes());
                let lock = sqlx::query("UPDATE threads SET seq = seq WHERE id = $1")
                    .bind(t)
                    .execute(&mut *tx)
                    .await?;
                if lock.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                let removed: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT head_counter, byte_count FROM logs WHERE thread_id = $1 AND log_id = $2",
                )
                .bind(t)
                .bind(&l)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((count, bytes)) = removed else {
                    return Err($crate::StoreError::NotFound);
                };
                // Its webhook deliveries go too (their attempts by cascade): they point at
                // records that no longer exist.
                for table in ["records", "forks", "deliveries", "logs"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE thread_id = $1 AND log_id = $2"))
                        .bind(t)
                        .bind(&l)
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query(
                    "UPDATE threads SET record_count = record_count - $2, byte_count = byte_count - $3 WHERE id = $1",
                )
                .bind(t)
                .bind(count)
                .bind(bytes)
                .execute(&mut *tx)
                .await?;
                // A thread with no logs left holds nothing: remove it too.
                sqlx::query(
                    "DELETE FROM threads WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM logs WHERE thread_id = $1)",
                )
                .bind(t)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn delete_thread(&self, thread: &threads_core::ThreadId) -> $crate::Result<()> {
                let mut tx = self.write.begin().await?;
                let t = thread.as_bytes();
                for table in ["records", "forks", "logs"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE thread_id = $1"))
                        .bind(t)
                        .execute(&mut *tx)
                        .await?;
                }
                let gone = sqlx::query("DELETE FROM threads WHERE id = $1")
                    .bind(t)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if gone == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                tx.commit().await?;
                Ok(())
            }

            async fn thread(
                &self,
                thread: &threads_core::ThreadId,
            ) -> $crate::Result<Option<$crate::model::ThreadInfo>> {
                let row: Option<$crate::ingest::ThreadRow> = sqlx::query_as(
                    "SELECT id, public, follow_key, seq, record_count, byte_count, created_at FROM threads WHERE id = $1",
                )
                .bind(thread.as_bytes())
                .fetch_optional(&self.read)
                .await?;
                row.map(|r| r.into_info()).transpose()
            }

            async fn public_threads(
                &self,
                after: Option<&threads_core::ThreadId>,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::model::ThreadInfo>> {
                let rows: Vec<$crate::ingest::ThreadRow> = sqlx::query_as(
                    "SELECT id, public, follow_key, seq, record_count, byte_count, created_at FROM threads \
                     WHERE public AND id > $1 ORDER BY id LIMIT $2",
                )
                .bind(after.map(|a| a.as_bytes().to_vec()).unwrap_or_default())
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?;
                rows.into_iter().map(|r| r.into_info()).collect()
            }

            async fn thread_seqs(
                &self,
                threads: &[threads_core::ThreadId],
            ) -> $crate::Result<Vec<(threads_core::ThreadId, u64)>> {
                let mut out = Vec::with_capacity(threads.len());
                for chunk in threads.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new("SELECT id, seq FROM threads WHERE id IN (");
                    let mut sep = q.separated(", ");
                    for thread in chunk {
                        sep.push_bind(thread.as_bytes());
                    }
                    sep.push_unseparated(")");
                    let rows: Vec<(Vec<u8>, i64)> = q.build_query_as().fetch_all(&self.read).await?;
                    for (id, seq) in rows {
                        out.push(($crate::ingest::thread_id(&id)?, seq as u64));
                    }
                }
                Ok(out)
            }

            async fn logs(
                &self,
                thread: &threads_core::ThreadId,
            ) -> $crate::Result<Vec<$crate::model::LogInfo>> {
                let rows: Vec<$crate::ingest::LogRow> = sqlx::query_as(
                    "SELECT thread_id, log_id, addrs, head_cid, head_counter, byte_count, registered_at, addrs_at \
                     FROM logs WHERE thread_id = $1 ORDER BY log_id",
                )
                .bind(thread.as_bytes())
                .fetch_all(&self.read)
                .await?;
                rows.into_iter().map(|r| r.into_info()).collect()
            }

            async fn log(
                &self,
                thread: &threads_core::ThreadId,
                log: &threads_core::LogId,
            ) -> $crate::Result<Option<$crate::model::LogInfo>> {
                let row: Option<$crate::ingest::LogRow> = sqlx::query_as(
                    "SELECT thread_id, log_id, addrs, head_cid, head_counter, byte_count, registered_at, addrs_at \
                     FROM logs WHERE thread_id = $1 AND log_id = $2",
                )
                .bind(thread.as_bytes())
                .bind(log.to_bytes())
                .fetch_optional(&self.read)
                .await?;
                row.map(|r| r.into_info()).transpose()
            }

            async fn ingest(
                &self,
                batch: Vec<$crate::model::Ingest>,
                quotas: &$crate::model::Quotas,
                now_ms: i64,
            ) -> $crate::Result<Vec<$crate::model::Outcome>> {
                use std::collections::{BTreeMap, HashMap};
                use $crate::ingest::{decide, Decision, LogState};
                use $crate::model::Outcome;

                let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
                // Threads in ID order, so concurrent batches lock rows in one order.
                let mut by_thread: BTreeMap<Vec<u8>, Vec<usize>> = BTreeMap::new();
                for (i, item) in batch.iter().enumerate() {
                    by_thread.entry(item.thread.as_bytes().to_vec()).or_default().push(i);
                }
                let mut changes = Vec::new();
                let mut tx = self.write.begin().await?;
                for (thread, indexes) in by_thread {
                    // Locks the thread row until commit: sequence numbers follow commit order.
                    let counters: Option<(i64, i64)> = sqlx::query_as(
                        "UPDATE threads SET seq = seq WHERE id = $1 RETURNING seq, byte_count",
                    )
                    .bind(&thread)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some((seq, bytes)) = counters else {
                        for i in indexes {
                            outcomes[i] = Some(Outcome::UnknownLog);
                        }
                        continue;
                    };
                    let (first_seq, mut thread_seq, mut thread_bytes) = (seq as u64, seq as u64, bytes as u64);

                    // Heads of the logs this batch touches (not every log of the thread).
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT log_id, head_cid, head_counter, byte_count FROM logs WHERE thread_id = ",
                    );
                    q.push_bind(&thread).push(" AND log_id IN (");
                    let mut sep = q.separated(", ");
                    let distinct: std::collections::BTreeSet<Vec<u8>> =
                        indexes.iter().map(|&i| batch[i].log.to_bytes()).collect();
                    for log in &distinct {
                        sep.push_bind(log.as_slice());
                    }
                    sep.push_unseparated(")");
                    let rows: Vec<(Vec<u8>, Option<Vec<u8>>, i64, i64)> =
                        q.build_query_as().fetch_all(&mut *tx).await?;
                    let mut logs: HashMap<Vec<u8>, LogState> = HashMap::new();
                    for (log, head_cid, counter, bytes) in rows {
                        let head = match head_cid {
                            Some(c) => Some(threads_core::Head { cid: $crate::ingest::cid(&c)?, counter: counter as u64 }),
                            None => None,
                        };
                        logs.insert(log, LogState { head, bytes, changed: false });
                    }

                    // Only a record that does not extend its log's head can already be stored
                    // (a duplicate) or name a stored predecessor (a fork): look those up, by
                    // CID, in one query. The common batch (every record chains) reads nothing.
                    let suspects = $crate::ingest::suspects(&thread, &indexes, &batch, &logs);
                    let mut known: HashMap<Vec<u8>, u64> = HashMap::new();
                    let mut stored_in_log: std::collections::HashSet<(Vec<u8>, Vec<u8>)> = Default::default();
                    for chunk in suspects.chunks(500) {
                        let mut q = sqlx::QueryBuilder::<$db>::new("SELECT thread_id, log_id, cid, counter FROM records WHERE substr(cid, 5, 8) IN (");
                        let mut sep = q.separated(", ");
                        for cid in chunk {
                            sep.push_bind($crate::ingest::cid_prefix(cid));
                        }
                        sep.push_unseparated(")");
                        let rows: Vec<(Vec<u8>, Vec<u8>, Vec<u8>, i64)> = q.build_query_as().fetch_all(&mut *tx).await?;
                        // The prefix narrows; the whole CID decides.
                        for (_, log, cid, counter) in rows.into_iter().filter(|r| r.0 == thread && chunk.contains(&r.2)) {
                            stored_in_log.insert((log, cid.clone()));
                            known.insert(cid, counter as u64);
                        }
                    }
                    let mut records = Vec::new();
                    let mut forks = Vec::new();
                    for &i in &indexes {
                        let item = &batch[i];
                        let log_key = item.log.to_bytes();
                        let state = logs.get_mut(&log_key);
                        // A prev that is not the head but is stored in this log makes a fork.
                        let prev_stored = item
                            .record
                            .prev()
                            .is_some_and(|prev| stored_in_log.contains(&(log_key.clone(), prev.to_bytes())));
                        let decision = decide(item, state, &known, prev_stored, &mut thread_seq, &mut thread_bytes, quotas);
                        outcomes[i] = Some(match decision {
                            Decision::Store { seq, counter } => {
                                known.insert(item.record.cid().to_bytes(), counter);
                                records.push((i, seq, counter));
                                Outcome::Accepted { seq, counter }
                            }
                            Decision::Fork { head } => {
                                forks.push(i);
                                Outcome::Fork { head }
                            }
                            Decision::Final(outcome) => outcome,
                        });
                    }
                    // Bounded so a statement stays under both backends' bind-parameter limits.
                    for chunk in records.chunks(1000) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO records (thread_id, seq, log_id, counter, cid, prev, event_cid, header_cid, \
                             body_cid, record, event, header, body, arrived_at) ",
                        );
                        q.push_values(chunk, |mut row, &(i, seq, counter)| {
                            let r = &batch[i].record;
                            let (header_cid, body_cid) = r.content_cids();
                            let b = r.blocks();
                            row.push_bind(&thread)
                                .push_bind(seq as i64)
                                .push_bind(batch[i].log.to_bytes())
                                .push_bind(counter as i64)
                                .push_bind(r.cid().to_bytes())
                                .push_bind(r.prev().map(|p| p.to_bytes()))
                                .push_bind(r.event_cid().to_bytes())
                                .push_bind(header_cid.to_bytes())
                                .push_bind(body_cid.to_bytes())
                                .push_bind(&b.record)
                                .push_bind(&b.event)
                                .push_bind(&b.header)
                                .push_bind(&b.body)
                                .push_bind(now_ms);
                        });
                        q.build().execute(&mut *tx).await?;
                    }
                    for &i in &forks {
                        let r = &batch[i].record;
                        let b = r.blocks();
                        sqlx::query(
                            "INSERT INTO forks (thread_id, log_id, cid, prev, record, event, header, body, arrived_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                        )
                        .bind(&thread)
                        .bind(batch[i].log.to_bytes())
                        .bind(r.cid().to_bytes())
                        .bind(r.prev().map(|p| p.to_bytes()))
                        .bind(&b.record)
                        .bind(&b.event)
                        .bind(&b.header)
                        .bind(&b.body)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                    }
                    // All moved heads in one statement (UPDATE ... FROM VALUES works on both).
                    let moved: Vec<_> = logs.iter().filter(|(_, s)| s.changed).collect();
                    for chunk in moved.chunks(500) {
                        let mut q = sqlx::QueryBuilder::<$db>::new("UPDATE logs SET head_cid = v.column2, head_counter = v.column3, byte_count = v.column4 FROM (");
                        q.push_values(chunk, |mut row, (log, state)| {
                            let head = state.head.expect("a changed log has a head");
                            row.push_bind(log.as_slice())
                                .push_bind(head.cid.to_bytes())
                                .push_bind(head.counter as i64)
                                .push_bind(state.bytes);
                        });
                        q.push(") AS v WHERE logs.thread_id = ").push_bind(&thread).push(" AND logs.log_id = v.column1");
                        q.build().execute(&mut *tx).await?;
                    }
                    if thread_seq > first_seq {
                        sqlx::query(
                            "UPDATE threads SET seq = $2, record_count = record_count + $3, byte_count = $4 WHERE id = $1",
                        )
                        .bind(&thread)
                        .bind(thread_seq as i64)
                        .bind((thread_seq - first_seq) as i64)
                        .bind(thread_bytes as i64)
                        .execute(&mut *tx)
                        .await?;
                        let change = $crate::Change {
                            thread: $crate::ingest::thread_id(&thread)?,
                            seq: thread_seq,
                        };
                        Self::notify_in_tx(&mut tx, &change).await?;
                        changes.push(change);
                    }
                }
                tx.commit().await?;
                self.after_commit(changes);
                Ok(outcomes.into_iter().map(|o| o.expect("every record decided")).collect())
            }

            async fn records_by_log(
                &self,
                thread: &threads_core::ThreadId,
                log: &threads_core::LogId,
                after: u64,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::model::StoredRecord>> {
                let sql = format!(
                    "SELECT {} FROM records WHERE thread_id = $1 AND log_id = $2 AND counter > $3 ORDER BY counter LIMIT $4",
                    $crate::ingest::RECORD_COLUMNS
                );
                let rows: Vec<$crate::ingest::RecordRow> = sqlx::query_as(&sql)
                    .bind(thread.as_bytes())
                    .bind(log.to_bytes())
                    .bind(after as i64)
                    .bind(i64::from(limit))
                    .fetch_all(&self.read)
                    .await?;
                $crate::ingest::into_stored(thread, rows)
            }

            async fn records_by_thread(
                &self,
                thread: &threads_core::ThreadId,
                after: u64,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::model::StoredRecord>> {
                let sql = format!(
                    "SELECT {} FROM records WHERE thread_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                    $crate::ingest::RECORD_COLUMNS
                );
                let rows: Vec<$crate::ingest::RecordRow> = sqlx::query_as(&sql)
                    .bind(thread.as_bytes())
                    .bind(after as i64)
                    .bind(i64::from(limit))
                    .fetch_all(&self.read)
                    .await?;
                $crate::ingest::into_stored(thread, rows)
            }

            async fn block(
                &self,
                cid: &threads_core::Cid,
            ) -> $crate::Result<Option<(threads_core::ThreadId, Vec<u8>)>> {
                let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
                    "SELECT thread_id, CASE WHEN cid = $1 THEN record WHEN event_cid = $1 THEN event \
                     WHEN header_cid = $1 THEN header ELSE body END FROM records \
                     WHERE (substr(cid, 5, 8) = $2 OR substr(event_cid, 5, 8) = $2 \
                     OR substr(header_cid, 5, 8) = $2 OR substr(body_cid, 5, 8) = $2) \
                     AND (cid = $1 OR event_cid = $1 OR header_cid = $1 OR body_cid = $1) LIMIT 1",
                )
                .bind(cid.to_bytes())
                .bind($crate::ingest::cid_prefix(&cid.to_bytes()))
                .fetch_optional(&self.read)
                .await?;
                row.map(|(thread, bytes)| Ok(($crate::ingest::thread_id(&thread)?, bytes)))
                    .transpose()
            }

            async fn forks(
                &self,
                thread: &threads_core::ThreadId,
                log: &threads_core::LogId,
            ) -> $crate::Result<Vec<$crate::model::ForkEvidence>> {
                let rows: Vec<$crate::ingest::ForkRow> = sqlx::query_as(
                    "SELECT cid, prev, record, event, header, body, arrived_at FROM forks \
                     WHERE thread_id = $1 AND log_id = $2 ORDER BY arrived_at, cid",
                )
                .bind(thread.as_bytes())
                .bind(log.to_bytes())
                .fetch_all(&self.read)
                .await?;
                rows.into_iter().map(|r| r.into_evidence()).collect()
            }

            async fn use_nonce(&self, nonce: &[u8], expires_ms: i64, now_ms: i64) -> $crate::Result<bool> {
                let mut tx = self.write.begin().await?;
                sqlx::query("DELETE FROM request_nonces WHERE expires_at < $1")
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                let fresh = sqlx::query(
                    "INSERT INTO request_nonces (nonce, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(nonce)
                .bind(expires_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                tx.commit().await?;
                Ok(fresh)
            }

            async fn add_registration_token(&self, token_hash: &[u8], note: &str, now_ms: i64) -> $crate::Result<()> {
                sqlx::query(
                    "INSERT INTO registration_tokens (token_hash, note, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(token_hash)
                .bind(note)
                .bind(now_ms)
                .execute(&self.write)
                .await?;
                Ok(())
            }

            async fn registration_token_exists(&self, token_hash: &[u8]) -> $crate::Result<bool> {
                let row: Option<(String,)> =
                    sqlx::query_as("SELECT note FROM registration_tokens WHERE token_hash = $1")
                        .bind(token_hash)
                        .fetch_optional(&self.read)
                        .await?;
                Ok(row.is_some())
            }

            async fn server_id(&self) -> $crate::Result<String> {
                use rand_core::RngCore;
                let mut random = [0u8; 16];
                rand_core::OsRng.fill_bytes(&mut random);
                let fresh: String = random.iter().map(|b| format!("{b:02x}")).collect();
                sqlx::query("INSERT INTO settings (name, value) VALUES ('server_id', $1) ON CONFLICT DO NOTHING")
                    .bind(format!("threads-{fresh}"))
                    .execute(&self.write)
                    .await?;
                let (id,): (String,) = sqlx::query_as("SELECT value FROM settings WHERE name = 'server_id'")
                    .fetch_one(&self.write)
                    .await?;
                Ok(id)
            }

            async fn create_webhook(&self, hook: &$crate::model::Webhook) -> $crate::Result<()> {
                let created = sqlx::query(
                    "INSERT INTO webhooks (id, thread_id, log_id, url, secret, created_at, cursor_seq) \
                     SELECT $1, id, $3, $4, $5, $6, seq FROM threads WHERE id = $2",
                )
                .bind(&hook.id)
                .bind(hook.thread.as_bytes())
                .bind(hook.log.as_ref().map(|l| l.to_bytes()))
                .bind(&hook.url)
                .bind(&hook.secret)
                .bind(hook.created_ms)
                .execute(&self.write)
                .await?
                .rows_affected();
                if created == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                Ok(())
            }

            async fn webhook(&self, id: &str) -> $crate::Result<Option<$crate::model::Webhook>> {
                let row: Option<$crate::ingest::WebhookRow> = sqlx::query_as(&format!(
                    "SELECT {} FROM webhooks WHERE id = $1",
                    $crate::ingest::WEBHOOK_COLUMNS
                ))
                .bind(id)
                .fetch_optional(&self.read)
                .await?;
                row.map(|r| r.into_webhook()).transpose()
            }

            async fn delete_webhook(&self, id: &str) -> $crate::Result<()> {
                // Its deliveries and their attempts go by cascade (both backends enforce
                // foreign keys).
                let gone = sqlx::query("DELETE FROM webhooks WHERE id = $1")
                    .bind(id)
                    .execute(&self.write)
                    .await?
                    .rows_affected();
                if gone == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                Ok(())
            }

            async fn set_webhook_secret(&self, id: &str, secret: &str) -> $crate::Result<()> {
                let updated = sqlx::query("UPDATE webhooks SET secret = $2 WHERE id = $1")
                    .bind(id)
                    .bind(secret)
                    .execute(&self.write)
                    .await?
                    .rows_affected();
                if updated == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                Ok(())
            }

            async fn enable_webhook(&self, id: &str, now_ms: i64) -> $crate::Result<()> {
                let mut tx = self.write.begin().await?;
                let updated = sqlx::query(
                    "UPDATE webhooks SET disabled_at = NULL, disabled_reason = NULL, failures = 0 WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    return Err($crate::StoreError::NotFound);
                }
                sqlx::query("UPDATE deliveries SET state = 'pending', next_at = $2 WHERE webhook_id = $1 AND state = 'paused'")
                    .bind(id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn deliveries(
                &self,
                webhook: &str,
                after: i64,
                limit: u32,
            ) -> $crate::Result<Vec<($crate::model::Delivery, Vec<$crate::model::Attempt>)>> {
                let rows: Vec<$crate::ingest::DeliveryRow> = sqlx::query_as(&format!(
                    "SELECT {} FROM deliveries WHERE webhook_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                    $crate::ingest::DELIVERY_COLUMNS
                ))
                .bind(webhook)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?;
                let Some(last) = rows.last().map(|r| r.id) else {
                    return Ok(Vec::new());
                };
                // The page's failed attempts in one query, by delivery.
                let failures: Vec<(i64, i64, Option<i32>, Option<String>, i64)> = sqlx::query_as(
                    "SELECT a.delivery_id, a.at, a.status, a.error, a.duration_ms FROM delivery_attempts a \
                     JOIN deliveries d ON d.id = a.delivery_id \
                     WHERE d.webhook_id = $1 AND a.delivery_id > $2 AND a.delivery_id <= $3 \
                     ORDER BY a.delivery_id, a.at",
                )
                .bind(webhook)
                .bind(after)
                .bind(last)
                .fetch_all(&self.read)
                .await?;
                let mut failures_by: std::collections::HashMap<i64, Vec<$crate::model::Attempt>> = Default::default();
                for (id, at_ms, status, error, duration_ms) in failures {
                    failures_by.entry(id).or_default().push($crate::model::Attempt {
                        at_ms,
                        status: status.map(|s| s as u16),
                        error,
                        duration_ms,
                    });
                }
                rows.into_iter()
                    .map(|row| {
                        let success = row.success();
                        let delivery = row.into_delivery()?;
                        let mut attempts = failures_by.remove(&delivery.id).unwrap_or_default();
                        attempts.extend(success);
                        Ok((delivery, attempts))
                    })
                    .collect()
            }

            async fn queue_deliveries(
                &self,
                webhook: &str,
                after: u64,
                test: bool,
                now_ms: i64,
            ) -> $crate::Result<u64> {
                let Some(hook) = self.webhook(webhook).await? else {
                    return Err($crate::StoreError::NotFound);
                };
                // A disabled webhook's deliveries wait for it to be enabled again.
                let state = if hook.disabled_ms.is_some() { "paused" } else { "pending" };
                let queued = if test {
                    sqlx::query(&format!(
                        "INSERT INTO deliveries (webhook_id, event, thread_id, created_at, next_at, state) \
                         VALUES ($1, 'webhook.test', $2, $3, $3, '{state}')"
                    ))
                    .bind(webhook)
                    .bind(hook.thread.as_bytes())
                    .bind(now_ms)
                    .execute(&self.write)
                    .await?
                } else {
                    let filter = if hook.log.is_some() { "AND log_id = $5" } else { "" };
                    // Only what the cursor has passed: the records after it are on their way.
                    let cursor = hook.cursor;
                    let sql = format!(
                        "INSERT INTO deliveries (webhook_id, event, thread_id, log_id, seq, counter, cid, created_at, next_at, state) \
                         SELECT $1, 'record.created', thread_id, log_id, seq, counter, cid, $3, $3, '{state}' FROM records \
                         WHERE thread_id = $2 AND seq > $4 AND seq <= {cursor} {filter} ORDER BY seq"
                    );
                    let mut query = sqlx::query(&sql)
                        .bind(webhook)
                        .bind(hook.thread.as_bytes())
                        .bind(now_ms)
                        .bind(after as i64);
                    if let Some(log) = &hook.log {
                        query = query.bind(log.to_bytes());
                    }
                    query.execute(&self.write).await?
                };
                Ok(queued.rows_affected())
            }

            async fn claim_deliveries(
                &self,
                now_ms: i64,
                lease_ms: i64,
                limit: u32,
            ) -> $crate::Result<Vec<($crate::model::Delivery, $crate::model::Webhook)>> {
                let sql = format!("{} RETURNING {}", <$store>::CLAIM_DELIVERIES, $crate::ingest::DELIVERY_COLUMNS);
                let mut tx = self.write.begin().await?;
                if let Some(setup) = <$store>::CLAIM_SETUP {
                    sqlx::query(setup).execute(&mut *tx).await?;
                }
                let rows: Vec<$crate::ingest::DeliveryRow> = sqlx::query_as(&sql)
                    .bind(now_ms)
                    .bind(now_ms + lease_ms)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                let mut hooks: std::collections::HashMap<String, $crate::model::Webhook> = Default::default();
                let mut paused = Vec::new();
                for row in rows {
                    let delivery = row.into_delivery()?;
                    let hook = match hooks.get(&delivery.webhook) {
                        Some(h) => h.clone(),
                        None => {
                            let row: $crate::ingest::WebhookRow = sqlx::query_as(&format!(
                                "SELECT {} FROM webhooks WHERE id = $1",
                                $crate::ingest::WEBHOOK_COLUMNS
                            ))
                            .bind(&delivery.webhook)
                            .fetch_one(&mut *tx)
                            .await?;
                            let h = row.into_webhook()?;
                            hooks.insert(h.id.clone(), h.clone());
                            h
                        }
                    };
                    // Disabled meanwhile (its deliveries were paused while this one was in
                    // flight, and it came back as a retry): paused too, not sent.
                    if hook.disabled_ms.is_some() {
                        paused.push(delivery.id);
                    } else {
                        out.push((delivery, hook));
                    }
                }
                for id in paused {
                    sqlx::query(
                        "UPDATE deliveries SET state = 'paused', leased_until = 0, attempts = attempts - 1 WHERE id = $1",
                    )
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn claim_webhooks(
                &self,
                now_ms: i64,
                lease_ms: i64,
                limit: u32,
            ) -> $crate::Result<Vec<$crate::model::WebhookLease>> {
                let leased_until = now_ms + lease_ms;
                let mut tx = self.write.begin().await?;
                let rows: Vec<$crate::ingest::WebhookRow> = sqlx::query_as(&format!(
                    "{} RETURNING {}",
                    <$store>::CLAIM_WEBHOOKS,
                    $crate::ingest::WEBHOOK_COLUMNS
                ))
                .bind(now_ms)
                .bind(leased_until)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in rows {
                    let webhook = row.into_webhook()?;
                    let (seq,): (i64,) = sqlx::query_as("SELECT seq FROM threads WHERE id = $1")
                        .bind(webhook.thread.as_bytes())
                        .fetch_one(&mut *tx)
                        .await?;
                    out.push($crate::model::WebhookLease { webhook, seq: seq as u64, leased_until });
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn finish_deliveries(
                &self,
                results: &[(i64, $crate::model::Attempt, $crate::model::AttemptResult)],
                cursors: &[$crate::model::CursorOutcome],
            ) -> $crate::Result<()> {
                use $crate::model::{Attempt, AttemptResult};
                fn row_state(attempt: &Attempt, result: &AttemptResult) -> (&'static str, i64) {
                    match result {
                        AttemptResult::Delivered => ("delivered", attempt.at_ms),
                        AttemptResult::Failed { retry_ms: Some(at), .. } => ("pending", *at),
                        AttemptResult::Failed { retry_ms: None, .. } => ("failed", attempt.at_ms),
                    }
                }
                let delivered = |result: &AttemptResult| *result == AttemptResult::Delivered;
                let mut tx = self.write.begin().await?;
                // Each webhook's outcomes in order, for its count of failures in a row.
                let mut by_hook: std::collections::HashMap<String, Vec<(&Attempt, &AttemptResult)>> = Default::default();
                // Failed attempts are kept apart; a successful one lives in its delivery's row.
                let mut failed: Vec<(i64, &Attempt)> = Vec::new();
                for chunk in results.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "UPDATE deliveries SET state = v.column2, next_at = v.column3, leased_until = 0, \
                         last_status = v.column4, last_error = v.column5, \
                         delivered_at = CASE WHEN v.column2 = 'delivered' THEN v.column6 ELSE deliveries.delivered_at END, \
                         duration_ms = CASE WHEN v.column2 = 'delivered' THEN v.column7 ELSE deliveries.duration_ms END \
                         FROM (",
                    );
                    q.push_values(chunk, |mut row, (id, attempt, result)| {
                        let (state, next) = row_state(attempt, result);
                        row.push_bind(*id)
                            .push_bind(state)
                            .push_bind(next)
                            .push_bind(attempt.status.map(i32::from))
                            .push_bind(attempt.error.as_deref())
                            .push_bind(attempt.at_ms)
                            .push_bind(attempt.duration_ms);
                    });
                    q.push(") AS v WHERE deliveries.id = v.column1 RETURNING deliveries.id, deliveries.webhook_id");
                    let found: Vec<(i64, String)> = q.build_query_as().fetch_all(&mut *tx).await?;
                    // Those deleted while they were being sent (their webhook or log went)
                    // are not found: nothing to record of them.
                    let found: std::collections::HashMap<i64, String> = found.into_iter().collect();
                    for (id, attempt, result) in chunk {
                        let Some(hook) = found.get(id) else { continue };
                        by_hook.entry(hook.clone()).or_default().push((attempt, result));
                        if !delivered(result) {
                            failed.push((*id, attempt));
                        }
                    }
                }
                for outcome in cursors {
                    // Not moved when the webhook is gone, or when its lease ran out and another
                    // worker took the cursor: that one sends these records again.
                    let moved = sqlx::query(
                        "UPDATE webhooks SET cursor_seq = $2, leased_until = 0 WHERE id = $1 AND leased_until = $3",
                    )
                    .bind(&outcome.webhook)
                    .bind(outcome.cursor as i64)
                    .bind(outcome.leased_until)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if moved == 0 {
                        continue;
                    }
                    for chunk in outcome.sent.chunks(500) {
                        let mut q = sqlx::QueryBuilder::<$db>::new(
                            "INSERT INTO deliveries (webhook_id, event, thread_id, log_id, seq, counter, cid, created_at, \
                             state, attempts, next_at, last_status, last_error, delivered_at, duration_ms, message_id) ",
                        );
                        q.push_values(chunk, |mut row, (d, attempt, result)| {
                            let (state, next) = row_state(attempt, result);
                            let done = delivered(result);
                            row.push_bind(&outcome.webhook)
                                .push_bind(&d.event)
                                .push_bind(d.thread.as_bytes())
                                .push_bind(d.log.as_ref().map(|l| l.to_bytes()))
                                .push_bind(d.seq as i64)
                                .push_bind(d.counter as i64)
                                .push_bind(d.cid.as_ref().map(|c| c.to_bytes()))
                                .push_bind(d.created_ms)
                                .push_bind(state)
                                .push_bind(1i32)
                                .push_bind(next)
                                .push_bind(attempt.status.map(i32::from))
                                .push_bind(attempt.error.as_deref())
                                .push_bind(done.then_some(attempt.at_ms))
                                .push_bind(done.then_some(attempt.duration_ms))
                                .push_bind(&d.message_id);
                        });
                        q.push(" RETURNING id, message_id");
                        let ids: Vec<(i64, String)> = q.build_query_as().fetch_all(&mut *tx).await?;
                        let ids: std::collections::HashMap<String, i64> =
                            ids.into_iter().map(|(id, message)| (message, id)).collect();
                        for (d, attempt, result) in chunk {
                            if !delivered(result) {
                                failed.push((ids[&d.message_id], attempt));
                            }
                        }
                    }
                    let outcomes = by_hook.entry(outcome.webhook.clone()).or_default();
                    outcomes.extend(outcome.sent.iter().map(|(_, a, r)| (a, r)));
                }
                for chunk in failed.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO delivery_attempts (delivery_id, at, status, error, duration_ms) ",
                    );
                    q.push_values(chunk, |mut row, (id, attempt)| {
                        row.push_bind(*id)
                            .push_bind(attempt.at_ms)
                            .push_bind(attempt.status.map(i32::from))
                            .push_bind(attempt.error.as_deref())
                            .push_bind(attempt.duration_ms);
                    });
                    q.build().execute(&mut *tx).await?;
                }
                for (hook, outcomes) in by_hook {
                    let last_success = outcomes.iter().rposition(|(_, r)| delivered(r));
                    let failed_after = &outcomes[last_success.map_or(0, |p| p + 1)..];
                    let Some(&(attempt, result)) = failed_after.last() else {
                        // Only when there is something to reset: a webhook's row is not
                        // written by every batch of successful deliveries.
                        sqlx::query("UPDATE webhooks SET failures = 0 WHERE id = $1 AND failures > 0")
                            .bind(&hook)
                            .execute(&mut *tx)
                            .await?;
                        continue;
                    };
                    // Failures in a row: those after the batch's last success, or all of
                    // them added to the count so far.
                    sqlx::query(if last_success.is_some() {
                        "UPDATE webhooks SET failures = $2 WHERE id = $1"
                    } else {
                        "UPDATE webhooks SET failures = failures + $2 WHERE id = $1"
                    })
                    .bind(&hook)
                    .bind(failed_after.len() as i64)
                    .execute(&mut *tx)
                    .await?;
                    let AttemptResult::Failed { disable_after, .. } = result else {
                        unreachable!("a failure")
                    };
                    let reason = format!(
                        "disabled after {disable_after} failed attempts in a row; the last: {}",
                        attempt
                            .error
                            .clone()
                            .or(attempt.status.map(|s| format!("HTTP {s}")))
                            .unwrap_or_default()
                    );
                    let disabled = sqlx::query(
                        "UPDATE webhooks SET disabled_at = $2, disabled_reason = $3 \
                         WHERE id = $1 AND failures >= $4 AND disabled_at IS NULL",
                    )
                    .bind(&hook)
                    .bind(attempt.at_ms)
                    .bind(reason)
                    .bind(*disable_after as i64)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if disabled > 0 {
                        // Its waiting deliveries wait for it to be enabled again.
                        sqlx::query("UPDATE deliveries SET state = 'paused' WHERE webhook_id = $1 AND state = 'pending'")
                            .bind(&hook)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
                Ok(())
            }

            async fn records_at(
                &self,
                thread: &threads_core::ThreadId,
                seqs: &[u64],
            ) -> $crate::Result<Vec<$crate::model::StoredRecord>> {
                let mut out = Vec::with_capacity(seqs.len());
                for chunk in seqs.chunks(500) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {} FROM records WHERE thread_id = ",
                        $crate::ingest::RECORD_COLUMNS
                    ));
                    q.push_bind(thread.as_bytes()).push(" AND seq IN (");
                    let mut sep = q.separated(", ");
                    for seq in chunk {
                        sep.push_bind(*seq as i64);
                    }
                    sep.push_unseparated(")");
                    let rows: Vec<$crate::ingest::RecordRow> = q.build_query_as().fetch_all(&self.read).await?;
                    out.extend($crate::ingest::into_stored(thread, rows)?);
                }
                Ok(out)
            }

            fn changes(&self) -> tokio::sync::broadcast::Receiver<$crate::Change> {
                self.changes.subscribe()
            }

            async fn ping(&self) -> $crate::Result<()> {
                sqlx::query("SELECT 1").execute(&self.read).await?;
                Ok(())
            }
        }
    };
}

pub(crate) use impl_store;
