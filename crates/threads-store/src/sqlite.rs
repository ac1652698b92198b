//! The embedded default: one SQLite file in WAL mode, a read pool, a writer connection, and a
//! thread of its own that commits records on a second writing connection (`ingest`). Pages of
//! records are read on connections of their own (`reads`).

mod ingest;
mod reads;
mod wal_writes;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::ConnectOptions;
use threads_core::{LogId, ThreadId};
use tokio::sync::broadcast;

use crate::model::{Ingest, Outcome, Quotas, StoredRecord};
use crate::{Change, Result, CHANGE_CHANNEL};

/// How long a connection waits for another's lock (the committing connection and sqlx's writer
/// take turns under the store's write lock, so only a checkpoint or another process waits).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Readers run concurrently with the single writer thanks to WAL.
const READ_CONNECTIONS: u32 = 4;
/// Rows a reader's SQLite thread may run ahead of the task reading them (sqlx's default: 50).
const READ_ROW_BUFFER: usize = 1024;
/// Address space a reader may map (SQLite's default maps nothing); memory is the OS page cache.
const READ_MMAP_BYTES: u64 = 1 << 30;
/// Pages (4 KiB) the write-ahead log grows to before the commit that filled it copies it into
/// the file: 256 MiB. SQLite's default (1,000) checkpoints every few groups, and a checkpoint
/// off the writer never lets a busy log start over. The commit that checkpoints holds every
/// push in flight while it syncs the file, so it comes rarely enough that fewer than one push
/// in a hundred waits for one: a one-record push adds about six pages to the log, and at 16,384
/// the 64 pushes in flight waited once every 2,700 pushes.
const CHECKPOINT_PAGES: u32 = 64 * 1024;
/// Page cache of the connection that commits records (SQLite's default is 2 MiB); it grows only
/// as used, and past this while a transaction's changed pages wait for its commit (none are
/// written to the log before it: `wal_writes`). Not larger: when an insert splits a page,
/// SQLite's b-tree parks a page in the cache under the number of the 1 GiB lock page, and the
/// commit then sweeps the cache's whole hash table for pages past the file's end; with 64 MiB
/// that sweep cost 30 µs of a one-record push.
const WRITER_CACHE_KIB: u32 = 8 * 1024;
/// The same for a peer's local store ([`SqliteStore::open_local`]), which commits pulled
/// batches of thousands of records: a cache that held a whole batch's pages (the records' and
/// the indexes' keyed by random CIDs) wrote each page once per commit, where 8 MiB spilled
/// pages to the log mid-transaction and wrote many twice (a quarter more bytes written; no
/// page is spilled now, and the larger cache keeps index pages from one batch to the next).
const LOCAL_WRITER_CACHE_KIB: u32 = 64 * 1024;
/// Indexes a peer's local store goes without. They find a record's event, header and body
/// blocks by CID, which only a follower serves (`Store::block` still answers without them, by
/// scanning the thread); each puts every inserted record on a random page, and together they
/// cost a pull a fifth of its CPU.
const NOT_LOCAL: &str = "DROP INDEX IF EXISTS records_event_cid_prefix; \
    DROP INDEX IF EXISTS records_header_cid_prefix; DROP INDEX IF EXISTS records_body_cid_prefix";

/// What a store file is opened for.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// A follower's: records pushed a few at a time, blocks served by any of their CIDs.
    Follower,
    /// A peer's local store: records pulled thousands at a time, no blocks served.
    Local,
}

pub struct SqliteStore {
    /// The writer, held rather than pooled: a pool would ask its thread whether it is alive
    /// each time it is handed back, a round trip per transaction. Its mutex is the store's
    /// write lock, which the committing thread takes too.
    write: Arc<tokio::sync::Mutex<SqliteConnection>>,
    /// Group commits, on a thread and connection of their own.
    committer: ingest::Committer,
    read: SqlitePool,
    /// Pages of records, read without sqlx.
    pages: reads::Readers,
    changes: broadcast::Sender<Change>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`, and its parent directory.
    pub async fn open_file(path: &Path) -> Result<Self> {
        Self::open_path(path, Role::Follower).await
    }

    /// Opens a peer's local store at `path`, as [`SqliteStore::open_file`] does, tuned for
    /// records that arrive in large pulled batches rather than one push at a time.
    pub async fn open_local(path: &Path) -> Result<Self> {
        Self::open_path(path, Role::Local).await
    }

    async fn open_path(path: &Path, role: Role) -> Result<Self> {
        private_file(path).map_err(sqlx::Error::Io)?;
        Self::with_options(SqliteConnectOptions::new().filename(path), role).await
    }

    /// Opens a `sqlite:` URL.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_options(SqliteConnectOptions::from_str(url)?, Role::Follower).await
    }

    async fn with_options(options: SqliteConnectOptions, role: Role) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT);
        // Both writing connections: sqlx's (registrations, webhooks, the rest) and the one
        // that commits records.
        let writing = [
            // An acknowledged record survives a crash of the machine, not only of the process.
            ("synchronous", "FULL".to_string()),
            ("foreign_keys", "ON".to_string()),
            ("wal_autocheckpoint", CHECKPOINT_PAGES.to_string()),
            // Statement journals in memory, not in temporary files written on every statement.
            ("temp_store", "memory".to_string()),
            // Deleted rows are zeroed where that costs no extra I/O: a deleted thread leaves
            // little of its records in free space.
            ("secure_delete", "fast".to_string()),
        ];
        let mut write = writing
            .iter()
            .fold(options.clone(), |o, (name, value)| {
                o.pragma(*name, value.clone())
            })
            .connect()
            .await?;
        crate::migrations::migrator(crate::migrations::SQLITE)
            .await?
            .run(&mut write)
            .await?;
        if role == Role::Local {
            sqlx::raw_sql(NOT_LOCAL).execute(&mut write).await?;
        }
        // An embedded connection cannot drop away: no round trip to its thread to check it on
        // every acquire.
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .test_before_acquire(false)
            // A result crosses from SQLite's thread in few hand-offs, not 50 rows at a time (pages
            // of records are read without sqlx: `reads`).
            // Readers map the file instead of copying each page through `pread`.
            .connect_with(
                options
                    .clone()
                    .read_only(true)
                    .row_buffer_size(READ_ROW_BUFFER)
                    .pragma("mmap_size", READ_MMAP_BYTES.to_string()),
            )
            .await?;
        let (changes, _) = broadcast::channel(CHANGE_CHANNEL);
        let write = Arc::new(tokio::sync::Mutex::new(write));
        // Records update several indexes keyed by random CIDs: a page cache that holds them
        // avoids re-reading index pages on every insert.
        let mut committing = writing.to_vec();
        let cache_kib = match role {
            Role::Follower => WRITER_CACHE_KIB,
            Role::Local => LOCAL_WRITER_CACHE_KIB,
        };
        committing.push(("cache_size", format!("-{cache_kib}")));
        let committer = ingest::Committer::start(
            options.get_filename(),
            BUSY_TIMEOUT,
            &committing,
            write.clone(),
            changes.clone(),
        )?;
        let pages = reads::Readers::new(
            options.get_filename(),
            BUSY_TIMEOUT,
            READ_MMAP_BYTES,
            READ_CONNECTIONS as usize,
        );
        Ok(Self {
            write,
            committer,
            read,
            pages,
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

    /// A group commit, on the committing thread ([`ingest`]), of a copy of the batch.
    async fn ingest_group(
        &self,
        batch: &[Ingest],
        quotas: &Quotas,
        now_ms: i64,
    ) -> Result<Vec<Outcome>> {
        Ok(self.ingest_owned(batch.to_vec(), quotas, now_ms).await?.0)
    }

    /// [`crate::Store::ingest`] of a batch the caller gives up, handed back with the
    /// outcomes: a pulled batch of thousands of records is not copied for the committing
    /// thread.
    pub async fn ingest_owned(
        &self,
        batch: Vec<Ingest>,
        quotas: &Quotas,
        now_ms: i64,
    ) -> Result<(Vec<Outcome>, Vec<Ingest>)> {
        self.committer.ingest(batch, quotas, now_ms).await
    }

    /// [`crate::Store::records_by_log`].
    async fn page_by_log(
        &self,
        thread: &ThreadId,
        log: &LogId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        self.pages.by_log(thread, log, after, limit).await
    }

    /// [`crate::Store::records_by_thread`].
    async fn page_by_thread(
        &self,
        thread: &ThreadId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        self.pages.by_thread(thread, after, limit).await
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
