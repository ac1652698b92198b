//! Pages of records read straight through SQLite, on the blocking pool.
//!
//! sqlx's SQLite driver copies every column of every row (`sqlite3_value_dup`) on its
//! connection's thread and hands the rows over one by one; for a page of 1 KiB records the
//! copies, and freeing them on another thread, cost a follower serving a pull half its CPU.
//! Here one blocking task reads the whole page and copies each blob once, into the record.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};
use threads_core::{LogId, ThreadId};
use tokio::sync::Semaphore;

use crate::model::StoredRecord;
use crate::sql::rows::{into_stored, RecordRow, RECORDS_BY_LOG, RECORDS_BY_THREAD};
use crate::{Result, StoreError};

/// Read-only connections to the store's file, at most `limit` in use at once.
#[derive(Clone)]
pub(super) struct Readers(Arc<Inner>);

struct Inner {
    path: PathBuf,
    busy_timeout: Duration,
    mmap_bytes: u64,
    idle: Mutex<Vec<Connection>>,
    slots: Semaphore,
}

impl Readers {
    pub fn new(path: &Path, busy_timeout: Duration, mmap_bytes: u64, limit: usize) -> Self {
        Self(Arc::new(Inner {
            path: path.to_owned(),
            busy_timeout,
            mmap_bytes,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(limit),
        }))
    }

    /// Records of one thread with `seq > after`, in sequence order.
    pub async fn by_thread(
        &self,
        thread: &ThreadId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        let sql: &str = &RECORDS_BY_THREAD;
        let key = (thread.as_bytes().to_vec(), after as i64, i64::from(limit));
        let rows = self
            .read(move |conn| rows(conn, sql, params![key.0, key.1, key.2]))
            .await?;
        into_stored(thread, rows)
    }

    /// Records of one log with `counter > after`, in log order.
    pub async fn by_log(
        &self,
        thread: &ThreadId,
        log: &LogId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        let sql: &str = &RECORDS_BY_LOG;
        let key = (
            thread.as_bytes().to_vec(),
            log.to_bytes(),
            after as i64,
            i64::from(limit),
        );
        let rows = self
            .read(move |conn| rows(conn, sql, params![key.0, key.1, key.2, key.3]))
            .await?;
        into_stored(thread, rows)
    }

    /// Runs `read` on an idle connection (opened if there is none) on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let _slot = self.0.slots.acquire().await.expect("never closed");
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let idle = inner.idle.lock().unwrap().pop();
            let conn = match idle {
                Some(conn) => conn,
                None => inner.open()?,
            };
            let out = read(&conn)?;
            inner.idle.lock().unwrap().push(conn);
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Other(sqlx::Error::Io(std::io::Error::other(e))))?
    }
}

impl Inner {
    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        // Map the file instead of copying each page through `pread`.
        conn.pragma_update(None, "mmap_size", self.mmap_bytes)?;
        conn.set_prepared_statement_cache_capacity(8);
        Ok(conn)
    }
}

/// Every row of a record query, each column read in the order of
/// [`crate::sql::rows::RECORD_COLUMNS`].
fn rows(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<RecordRow>> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement.query_map(params, |r| {
        Ok(RecordRow {
            seq: r.get(0)?,
            log_id: r.get(1)?,
            counter: r.get(2)?,
            cid: r.get(3)?,
            event_cid: r.get(4)?,
            header_cid: r.get(5)?,
            body_cid: r.get(6)?,
            record: r.get(7)?,
            event: r.get(8)?,
            header: r.get(9)?,
            body: r.get(10)?,
            arrived_at: r.get(11)?,
        })
    })?;
    rows.collect()
}
