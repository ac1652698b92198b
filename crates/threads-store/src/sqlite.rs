//! The embedded default: one SQLite file in WAL mode, one writer connection and a read pool.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, QueryBuilder, Sqlite, Transaction};
use tokio::sync::broadcast;

use crate::model::Ingest;
use crate::sql::records::{push_update_heads, push_update_threads, Grown, HeadRow, MovedHead};
use crate::{Change, Result, CHANGE_CHANNEL};

/// Readers run concurrently with the single writer thanks to WAL.
const READ_CONNECTIONS: u32 = 4;
/// Rows a reader's SQLite thread may run ahead of the task reading them (sqlx's default: 50).
const READ_ROW_BUFFER: usize = 1024;
/// Address space a reader may map (SQLite's default maps nothing); memory is the OS page cache.
const READ_MMAP_BYTES: u64 = 1 << 30;
/// Pages (4 KiB) the write-ahead log grows to before the commit that filled it copies it into
/// the file. SQLite's default (1,000) checkpoints every few groups; a checkpoint off the writer
/// never lets a busy log start over.
const CHECKPOINT_PAGES: u32 = 16 * 1024;
/// Page cache of the writer connection (SQLite's default is 2 MiB); it grows only as used.
const WRITER_CACHE_KIB: u32 = 64 * 1024;

pub struct SqliteStore {
    /// The one writer, held rather than pooled: a pool would ask its thread whether it is
    /// alive each time it is handed back, a round trip per transaction.
    write: tokio::sync::Mutex<SqliteConnection>,
    read: SqlitePool,
    changes: broadcast::Sender<Change>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, and its parent directory.
    pub async fn open_file(path: &Path) -> Result<Self> {
        private_file(path).map_err(sqlx::Error::Io)?;
        Self::with_options(SqliteConnectOptions::new().filename(path)).await
    }

    /// Opens a `sqlite:` URL.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_options(SqliteConnectOptions::from_str(url)?).await
    }

    async fn with_options(options: SqliteConnectOptions) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // An acknowledged record survives a crash of the machine, not only of the process.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // The writer updates several indexes keyed by random CIDs: a page cache that holds them
        // avoids re-reading index pages on every insert.
        let mut write = options
            .clone()
            .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
            .pragma("wal_autocheckpoint", CHECKPOINT_PAGES.to_string())
            // Statement journals (a multi-row insert keeps one) in memory, not in temporary
            // files written on every statement.
            .pragma("temp_store", "memory")
            // Deleted rows are zeroed where that costs no extra I/O: a deleted thread leaves
            // little of its records in free space.
            .pragma("secure_delete", "fast")
            .connect()
            .await?;
        crate::migrations::migrator(crate::migrations::SQLITE)
            .await?
            .run(&mut write)
            .await?;
        // An embedded connection cannot drop away: no round trip to its thread to check it on
        // every acquire.
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .test_before_acquire(false)
            // A page of records crosses from SQLite's thread in few hand-offs, not 50 rows at a time.
            // Readers map the file instead of copying each page through `pread`.
            .connect_with(
                options
                    .read_only(true)
                    .row_buffer_size(READ_ROW_BUFFER)
                    .pragma("mmap_size", READ_MMAP_BYTES.to_string()),
            )
            .await?;
        let (changes, _) = broadcast::channel(CHANGE_CHANNEL);
        Ok(Self {
            write: tokio::sync::Mutex::new(write),
            read,
            changes,
        })
    }

    /// Copies the write-ahead log into the file and empties it, so pages written before (by
    /// rows since deleted, say) no longer sit in the log.
    pub async fn checkpoint(&self) -> Result<()> {
        let mut write = self.writer().await?;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *write)
            .await?;
        Ok(())
    }

    /// The writer connection, once the transaction before has ended.
    async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, SqliteConnection>> {
        Ok(self.write.lock().await)
    }

    /// Reads the counters of the batch's threads and the heads of its logs, in one statement.
    /// (The transaction holds the database's write lock from its start: [`Self::BEGIN_INGEST`].)
    async fn read_heads(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        ids: &[&[u8]],
        pairs: &[(&[u8], Vec<u8>)],
    ) -> Result<(HashMap<Vec<u8>, (i64, i64)>, Vec<HeadRow>)> {
        let mut counters = HashMap::with_capacity(ids.len());
        let mut heads = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(500) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "SELECT t.id, t.seq, t.byte_count, l.log_id, l.head_cid, l.head_counter, \
                 l.byte_count FROM (",
            );
            q.push_values(chunk, |mut row, (thread, log)| {
                row.push_bind(*thread).push_bind(log.as_slice());
            });
            q.push(
                ") AS v JOIN threads t ON t.id = v.column1 \
                 LEFT JOIN logs l ON l.thread_id = v.column1 AND l.log_id = v.column2",
            );
            type Row = (
                Vec<u8>,
                i64,
                i64,
                Option<Vec<u8>>,
                Option<Vec<u8>>,
                Option<i64>,
                Option<i64>,
            );
            let rows: Vec<Row> = q.build_query_as().fetch_all(&mut **tx).await?;
            for (thread, seq, thread_bytes, log, head_cid, counter, bytes) in rows {
                if let Some(log) = log {
                    heads.push(HeadRow {
                        thread: thread.clone(),
                        log,
                        head_cid,
                        counter: counter.unwrap_or_default(),
                        bytes: bytes.unwrap_or_default(),
                    });
                }
                counters.insert(thread, (seq, thread_bytes));
            }
        }
        Ok((counters, heads))
    }

    /// Writes what a group stores (its records, the heads it moved, the threads it grew) by
    /// one call of several statements: every call crosses to the connection's own thread and
    /// back, which costs more than the statements of a small group.
    async fn write_group(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        batch: &[Ingest],
        records: &[(usize, u64, u64)],
        moved: &[MovedHead<'_>],
        grown: &[Grown<'_>],
        now_ms: i64,
    ) -> Result<()> {
        let mut q = QueryBuilder::<Sqlite>::new("");
        // Bounded so a statement stays under SQLite's bind-parameter limit (32,766).
        for chunk in records.chunks(1000) {
            q.push(
                "INSERT INTO records (thread_id, seq, log_id, counter, cid, prev, event_cid, \
                 header_cid, body_cid, record, event, header, body, arrived_at) ",
            );
            q.push_values(chunk, |mut row, &(i, seq, counter)| {
                let r = &batch[i].record;
                let (header_cid, body_cid) = r.content_cids();
                let b = r.blocks();
                row.push_bind(batch[i].thread.as_bytes())
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
            q.push(";\n");
        }
        for chunk in moved.chunks(500) {
            push_update_heads(&mut q, chunk);
            q.push(";\n");
        }
        for chunk in grown.chunks(500) {
            push_update_threads(&mut q, chunk);
            q.push(";\n");
        }
        if !q.sql().is_empty() {
            q.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// One process owns the file, so changes are announced in-process after commit.
    async fn notify_in_tx(
        &self,
        _tx: &mut Transaction<'_, Sqlite>,
        _changes: &[Change],
    ) -> Result<()> {
        Ok(())
    }

    fn after_commit(&self, changes: Vec<Change>) {
        for change in changes {
            // No receiver is fine: nobody is listening.
            let _ = self.changes.send(change);
        }
    }
}

impl SqliteStore {
    /// Leases the cursors of webhooks that have records to send. (The caller appends
    /// `RETURNING` and the webhook columns.)
    const CLAIM_WEBHOOKS: &'static str = "UPDATE webhooks SET leased_until = $2 \
        WHERE id IN (SELECT w.id FROM webhooks w JOIN threads t ON t.id = w.thread_id \
        WHERE w.disabled_at IS NULL AND w.leased_until <= $1 AND w.cursor_seq < t.seq \
        LIMIT $3)";
    /// Claims due deliveries (one writer connection: no two claims run at once).
    /// (The caller appends `RETURNING` and the delivery columns.)
    const CLAIM_SETUP: Option<&'static str> = None;
    /// One connection writes.
    const WRITERS: usize = 1;
    /// A group commit takes the write lock first, so what it reads stays true until it commits.
    const BEGIN_INGEST: &'static str = "BEGIN IMMEDIATE";
    const CLAIM_DELIVERIES: &'static str =
        "UPDATE deliveries SET leased_until = $2, attempts = attempts + 1 \
        WHERE id IN (SELECT id FROM deliveries \
        WHERE state = 'pending' AND next_at <= $1 AND leased_until <= $1 \
        ORDER BY next_at LIMIT $3)";
    /// Forgets some expired nonces (every signed request prunes a few).
    const PRUNE_NONCES: &'static str = "DELETE FROM request_nonces \
        WHERE nonce IN (SELECT nonce FROM request_nonces WHERE expires_at < $1 LIMIT 100)";
}

crate::sql::records::impl_store!(SqliteStore, sqlx::Sqlite);
crate::sql::webhooks::impl_webhook_store!(SqliteStore, sqlx::Sqlite);

/// Makes the database file owner-only (and its directory, when it is new): it holds follow
/// keys, from which pull tokens follow, and webhook secrets. SQLite gives the `-wal` and
/// `-shm` files it makes the database file's mode; ones left from before are tightened too.
fn private_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?;
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::set_permissions(&name, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}
