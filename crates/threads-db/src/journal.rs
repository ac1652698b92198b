//! The journal: the database's events in their order, the views' snapshots, and how far the
//! local record store has been read. One SQLite connection (a file, or memory), so one
//! transaction covers events, snapshots and progress together.
//!
//! A journal file keeps each snapshot's bytes in a file of its own beside it (its row holds
//! the name and a CRC-32), written once: stored in a row, 90 MiB of snapshot went through
//! SQLite's write-ahead log and was copied again into the file by the next checkpoint, and
//! the pages of snapshots since replaced stayed in the file as free space.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection, Transaction};
use threads_core::CborWriter;

use crate::action::{Action, Event, Position, KEY_LEN};
use crate::{cbor, Error, Result};

/// The page size of a new journal file, in bytes.
const JOURNAL_PAGE: u32 = 64 << 10;
/// Write-ahead log a commit lets grow before it copies the log into the file.
const CHECKPOINT_BYTES: i64 = 64 << 20;

/// Rows per INSERT: three parameters each, well under SQLite's 32,766.
const INSERT_CHUNK: usize = 1000;

/// The journal's schema.
const MIGRATIONS: threads_store::migrations::Files = threads_store::migration_files!(
    "../migrations": "0001_journal.sql",
    "0002_covered.sql",
    "0003_snapshot_files.sql"
);

pub struct Journal {
    conn: SqliteConnection,
    files: SnapshotFiles,
}

/// Where a journal file's snapshots are kept: the directory `<journal>.snapshots`, one file
/// per snapshot named by its position. `None` for a journal in memory, whose snapshots stay in
/// their rows (nothing of it touches the disk).
#[derive(Clone, Default)]
pub struct SnapshotFiles(Option<Arc<Path>>);

/// A snapshot as stored: the views' state just after the `events`-th event, at `pos`.
pub struct StoredSnapshot {
    pub pos: Position,
    pub events: u64,
    pub bytes: Vec<u8>,
}

impl Journal {
    /// Opens (creating) the journal file, or a journal in memory when `path` is `None`.
    pub async fn open(path: Option<&Path>) -> Result<Self> {
        let options = match path {
            Some(path) => SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // The journal can be rebuilt from the record store, which is what must
                // survive a power cut: NORMAL in WAL mode stays consistent, and is faster.
                .synchronous(SqliteSynchronous::Normal)
                // Pages of 64 KiB (a new file's; an existing file keeps its own): a snapshot
                // is one large row, and with 4 KiB pages storing 90 MiB took twice as long.
                .page_size(JOURNAL_PAGE),
            None => SqliteConnectOptions::from_str("sqlite::memory:")?,
        };
        let mut conn = SqliteConnection::connect_with(&options).await?;
        if path.is_some() {
            // A checkpoint every 64 MiB of log instead of every 4 MiB: a batch of 5,000
            // events is about 5 MiB, and each checkpoint copies and syncs the file. In pages
            // of the file's own size.
            let page: i64 = sqlx::query_scalar("PRAGMA page_size")
                .fetch_one(&mut conn)
                .await?;
            sqlx::query(&format!(
                "PRAGMA wal_autocheckpoint = {}",
                CHECKPOINT_BYTES / page.max(512)
            ))
            .execute(&mut conn)
            .await?;
        }
        // `run_direct`: `run` makes this future `Send` only for one lifetime, and the bot
        // opens journals from axum handlers.
        threads_store::migrations::migrator(MIGRATIONS)
            .await?
            .run_direct(&mut conn)
            .await?;
        let files = SnapshotFiles(path.map(|p| Arc::from(snapshot_dir(p))));
        let mut journal = Self { conn, files };
        journal.remove_unlisted().await?;
        Ok(journal)
    }

    pub async fn begin(&mut self) -> Result<Transaction<'_, Sqlite>> {
        Ok(self.conn.begin().await?)
    }

    /// Where this journal keeps its snapshots.
    pub fn files(&self) -> SnapshotFiles {
        self.files.clone()
    }

    /// Removes a journal file and everything beside it: its write-ahead log, shared memory
    /// and snapshots.
    pub fn remove(path: &Path) -> std::io::Result<()> {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            ignore_missing(std::fs::remove_file(&file))?;
        }
        ignore_missing(std::fs::remove_dir_all(snapshot_dir(path)))
    }

    /// Removes snapshot files no row names: written by a transaction that did not commit, or
    /// left half-written by a crash.
    async fn remove_unlisted(&mut self) -> Result<()> {
        let Some(dir) = self.files.0.clone() else {
            return Ok(());
        };
        let listed: HashSet<String> =
            sqlx::query_scalar("SELECT file FROM snapshots WHERE file IS NOT NULL")
                .fetch_all(&mut self.conn)
                .await?
                .into_iter()
                .collect();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            if !entry
                .file_name()
                .to_str()
                .is_some_and(|n| listed.contains(n))
            {
                ignore_missing(std::fs::remove_file(entry.path()))?;
            }
        }
        Ok(())
    }
}

fn snapshot_dir(journal: &Path) -> PathBuf {
    let mut dir = journal.as_os_str().to_owned();
    dir.push(".snapshots");
    PathBuf::from(dir)
}

fn ignore_missing(result: std::io::Result<()>) -> std::io::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

impl SnapshotFiles {
    /// Writes a snapshot's bytes to its file (through a temporary name, so a file under the
    /// final name is whole) and returns the file's name and CRC-32. No `fsync`: the journal
    /// is not synced on each commit either, and a file that does not match its checksum
    /// after a crash is passed over as if it were never taken. (A CRC, not a cryptographic
    /// hash: it guards against damage, and hashing 90 MiB with SHA-256 took longer than
    /// writing it.)
    async fn write(dir: Arc<Path>, pos: Position, bytes: Vec<u8>) -> Result<(String, u32)> {
        let name = format!("{}.cbor", hex::encode(pos.key()));
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            // Plaintext: for the owner alone.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            let partial = dir.join(format!("{name}.partial"));
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)?
                .write_all(&bytes)?;
            std::fs::rename(&partial, dir.join(&name))?;
            Ok::<_, std::io::Error>((name, crc32fast::hash(&bytes)))
        });
        Ok(written
            .await
            .map_err(|e| Error::Corrupt(format!("writing a snapshot: {e}")))??)
    }

    /// A snapshot file's bytes, or `None` when it is missing or does not match its checksum.
    async fn read(&self, name: String, crc32: u32) -> Result<Option<Vec<u8>>> {
        let Some(dir) = self.0.clone() else {
            return Ok(None);
        };
        let read = tokio::task::spawn_blocking(move || match std::fs::read(dir.join(name)) {
            Ok(bytes) => Ok((crc32fast::hash(&bytes) == crc32).then_some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        });
        Ok(read
            .await
            .map_err(|e| Error::Corrupt(format!("reading a snapshot: {e}")))??)
    }

    /// Removes the files of snapshot rows just deleted (`names` as `DELETE … RETURNING file`
    /// gave them). Should the transaction roll back, its rows name missing files, which
    /// reads pass over.
    fn remove(&self, names: Vec<Option<String>>) -> Result<()> {
        if let Some(dir) = &self.0 {
            for name in names.into_iter().flatten() {
                ignore_missing(std::fs::remove_file(dir.join(name)))?;
            }
        }
        Ok(())
    }
}

/// Adds the events not held yet (`events` sorted by position) and returns them, with the bytes
/// their actions took. Events past the journal's last need no lookup: that is the usual case,
/// an append.
pub async fn insert(tx: &mut SqliteConnection, events: Vec<Event>) -> Result<(Vec<Event>, usize)> {
    let last: Option<Vec<u8>> = sqlx::query_scalar("SELECT max(pos) FROM events")
        .fetch_one(&mut *tx)
        .await?;
    let split = last.map_or(0, |last| {
        events.partition_point(|e| e.pos.key().as_slice() <= last.as_slice())
    });
    let mut held = HashSet::new();
    for chunk in events[..split].chunks(INSERT_CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT pos FROM events WHERE pos IN (");
        let mut list = query.separated(", ");
        for event in chunk {
            list.push_bind(event.pos.key().to_vec());
        }
        query.push(")");
        for key in query
            .build_query_scalar::<Vec<u8>>()
            .fetch_all(&mut *tx)
            .await?
        {
            held.insert(key);
        }
    }
    let fresh: Vec<Event> = events
        .into_iter()
        .filter(|e| !held.contains(e.pos.key().as_slice()))
        .collect();
    let mut bytes = 0;
    for chunk in fresh.chunks(INSERT_CHUNK) {
        let mut query = QueryBuilder::<Sqlite>::new("INSERT INTO events (pos, actions) ");
        // The chunk's actions one after another in one buffer, each event's where it ends.
        let mut actions = CborWriter::default();
        let mut ends = Vec::with_capacity(chunk.len());
        for event in chunk {
            cbor::actions(&mut actions, &event.actions);
            ends.push(actions.len());
        }
        let actions = actions.into_bytes();
        bytes += actions.len();
        let keys: Vec<[u8; KEY_LEN]> = chunk.iter().map(|e| e.pos.key()).collect();
        let starts = std::iter::once(0).chain(ends.iter().copied());
        query.push_values(
            keys.iter().zip(starts.zip(&ends)),
            |mut row, (key, (start, &end))| {
                row.push_bind(&key[..]).push_bind(&actions[start..end]);
            },
        );
        query.build().execute(&mut *tx).await?;
    }
    Ok((fresh, bytes))
}

/// Up to `limit` events after `after` (from the first when `None`), in order.
pub async fn events_after(
    tx: &mut SqliteConnection,
    after: Option<Position>,
    limit: u32,
) -> Result<Vec<Event>> {
    let after = after.map_or_else(Vec::new, |p| p.key().to_vec());
    let rows = sqlx::query("SELECT pos, actions FROM events WHERE pos > ? ORDER BY pos LIMIT ?")
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Event {
                pos: Position::from_key(row.try_get(0)?)?,
                actions: decode_actions(row.try_get(1)?)?,
            })
        })
        .collect()
}

/// The latest snapshot taken before `before` (of all, when `None`) that can be read: one
/// whose file is missing or damaged is passed over for the one before it.
pub async fn snapshot_before(
    tx: &mut SqliteConnection,
    files: &SnapshotFiles,
    before: Option<Position>,
) -> Result<Option<StoredSnapshot>> {
    let before = before.map_or_else(|| vec![0xff; KEY_LEN + 1], |p| p.key().to_vec());
    let rows = sqlx::query(
        "SELECT pos, events, file, crc32 FROM snapshots WHERE pos < ? ORDER BY pos DESC",
    )
    .bind(before)
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        let pos: Vec<u8> = row.try_get(0)?;
        let bytes = match (row.try_get(2)?, row.try_get(3)?) {
            (Some(name), Some(crc32)) => files.read(name, crc32).await?,
            _ => Some(
                sqlx::query_scalar("SELECT bytes FROM snapshots WHERE pos = ?")
                    .bind(&pos)
                    .fetch_one(&mut *tx)
                    .await?,
            ),
        };
        if let Some(bytes) = bytes {
            return Ok(Some(StoredSnapshot {
                pos: Position::from_key(&pos)?,
                events: row.try_get::<i64, _>(1)? as u64,
                bytes,
            }));
        }
    }
    Ok(None)
}

/// Where the latest snapshot before `before` stands (readable or not), without reading it.
pub async fn snapshot_pos_before(
    tx: &mut SqliteConnection,
    before: Position,
) -> Result<Option<Position>> {
    let pos: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT pos FROM snapshots WHERE pos < ? ORDER BY pos DESC LIMIT 1")
            .bind(&before.key()[..])
            .fetch_optional(&mut *tx)
            .await?;
    pos.map(|p| Position::from_key(&p)).transpose()
}

/// Deletes the snapshot rows `condition` selects (with its one parameter), and their files.
async fn delete_snapshots(
    tx: &mut SqliteConnection,
    files: &SnapshotFiles,
    condition: &str,
    parameter: Vec<u8>,
) -> Result<()> {
    let names: Vec<Option<String>> = sqlx::query_scalar(&format!(
        "DELETE FROM snapshots WHERE {condition} RETURNING file"
    ))
    .bind(parameter)
    .fetch_all(&mut *tx)
    .await?;
    files.remove(names)
}

/// Forgets the snapshots at or after `from`: an event sorting before them arrived.
pub async fn drop_snapshots_from(
    tx: &mut SqliteConnection,
    files: &SnapshotFiles,
    from: Position,
) -> Result<()> {
    delete_snapshots(tx, files, "pos >= ?", from.key().to_vec()).await
}

/// Snapshots kept: a late event rewinds to the newest one before it, or to the start.
pub const KEEP_SNAPSHOTS: u32 = 4;

/// Saves a snapshot (in its file, for a journal file) and forgets all but the newest
/// [`KEEP_SNAPSHOTS`] (events stay).
pub async fn save_snapshot(
    tx: &mut SqliteConnection,
    files: &SnapshotFiles,
    snapshot: StoredSnapshot,
) -> Result<()> {
    let key = snapshot.pos.key();
    let insert = "INSERT OR REPLACE INTO snapshots (pos, events, bytes, file, crc32) \
                  VALUES (?, ?, ?, ?, ?)";
    let query = sqlx::query(insert)
        .bind(&key[..])
        .bind(snapshot.events as i64);
    match &files.0 {
        Some(dir) => {
            let (name, crc32) =
                SnapshotFiles::write(dir.clone(), snapshot.pos, snapshot.bytes).await?;
            let empty: &[u8] = &[];
            query
                .bind(empty)
                .bind(name)
                .bind(crc32)
                .execute(&mut *tx)
                .await?;
        }
        None => {
            query
                .bind(snapshot.bytes)
                .bind(None::<String>)
                .bind(None::<u32>)
                .execute(&mut *tx)
                .await?;
        }
    }
    let oldest_kept: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT pos FROM snapshots ORDER BY pos DESC LIMIT 1 OFFSET ?")
            .bind(KEEP_SNAPSHOTS - 1)
            .fetch_optional(&mut *tx)
            .await?;
    match oldest_kept {
        Some(oldest) => delete_snapshots(tx, files, "pos < ?", oldest).await,
        None => Ok(()),
    }
}

/// Keeps the newest `keep` snapshots and the events after the oldest of them; frees the rest.
/// Returns the oldest snapshot kept (which now stands for what was freed) and how many events
/// were removed; the caller records what it covers with [`set_covered`].
pub async fn compact(
    tx: &mut SqliteConnection,
    files: &SnapshotFiles,
    keep: u32,
) -> Result<Option<(StoredSnapshot, u64)>> {
    let oldest: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT pos FROM (SELECT pos FROM snapshots ORDER BY pos DESC LIMIT ?) ORDER BY pos LIMIT 1",
    )
    .bind(keep.max(1))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(oldest) = oldest else {
        return Ok(None);
    };
    let pos = Position::from_key(&oldest)?;
    let snapshot = snapshot_before(tx, files, Some(after(pos)))
        .await?
        .filter(|s| s.pos == pos)
        .ok_or_else(|| Error::Corrupt("the snapshot being kept cannot be read".into()))?;
    delete_snapshots(tx, files, "pos < ?", oldest.clone()).await?;
    let removed = sqlx::query("DELETE FROM events WHERE pos <= ?")
        .bind(&oldest)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(Some((snapshot, removed)))
}

/// The position just after `pos`, for "at or before" bounds.
fn after(pos: Position) -> Position {
    Position {
        counter: pos.counter.saturating_add(1),
        ..pos
    }
}

/// Records that the journal no longer holds the events through `through` (freed, or never
/// journaled because the views started from a snapshot) and what they were: `heads`.
pub async fn set_covered(tx: &mut SqliteConnection, through: Position, heads: &[u8]) -> Result<()> {
    sqlx::query("UPDATE progress SET compacted_through = ?, covered_heads = ? WHERE id = 0")
        .bind(&through.key()[..])
        .bind(heads)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// What [`set_covered`] recorded.
pub async fn covered(tx: &mut SqliteConnection) -> Result<Option<(Position, Vec<u8>)>> {
    let row: (Option<Vec<u8>>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT compacted_through, covered_heads FROM progress WHERE id = 0")
            .fetch_one(&mut *tx)
            .await?;
    match row {
        (Some(through), heads) => Ok(Some((
            Position::from_key(&through)?,
            heads.unwrap_or_default(),
        ))),
        (None, _) => Ok(None),
    }
}

/// Whether events were freed or never journaled: then only a snapshot can stand for them.
pub async fn compacted(tx: &mut SqliteConnection) -> Result<bool> {
    Ok(covered(tx).await?.is_some())
}

/// How many events the journal holds.
pub async fn len(tx: &mut SqliteConnection) -> Result<u64> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut *tx)
        .await?;
    Ok(n as u64)
}

/// Removes every event and snapshot: the journal is about to be refilled from the records.
pub async fn clear(tx: &mut SqliteConnection, files: &SnapshotFiles) -> Result<()> {
    sqlx::query("DELETE FROM events").execute(&mut *tx).await?;
    delete_snapshots(tx, files, "pos >= ?", Vec::new()).await?;
    sqlx::query(
        "UPDATE progress SET seen_seq = 0, compacted_through = NULL, covered_heads = NULL \
         WHERE id = 0",
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn seen_seq(tx: &mut SqliteConnection) -> Result<u64> {
    let seq: i64 = sqlx::query_scalar("SELECT seen_seq FROM progress WHERE id = 0")
        .fetch_one(&mut *tx)
        .await?;
    Ok(seq as u64)
}

pub async fn set_seen_seq(tx: &mut SqliteConnection, seq: u64) -> Result<()> {
    sqlx::query("UPDATE progress SET seen_seq = ? WHERE id = 0")
        .bind(seq as i64)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn decode_actions(bytes: &[u8]) -> Result<Vec<Action>> {
    serde_ipld_dagcbor::from_slice(bytes)
        .map_err(|e| Error::Corrupt(format!("a journaled event: {e}")))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn every_migration_file_is_compiled_in() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let matched = threads_store::migrations::match_directory(super::MIGRATIONS, &dir).await;
        assert!(matched.unwrap());
    }

    /// A new file has 64 KiB pages, and checkpoints every 64 MiB whatever its page size.
    #[tokio::test]
    async fn a_journal_file_checkpoints_every_64_mib() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = super::Journal::open(Some(&dir.path().join("j.sqlite")))
            .await
            .unwrap();
        let pragma = |name: &'static str| sqlx::query_scalar::<_, i64>(name);
        let page = pragma("PRAGMA page_size")
            .fetch_one(&mut journal.conn)
            .await
            .unwrap();
        let pages = pragma("PRAGMA wal_autocheckpoint")
            .fetch_one(&mut journal.conn)
            .await
            .unwrap();
        assert_eq!((page, pages * page), (64 << 10, 64 << 20));
    }
}
