//! Where records are read: the primary database, or a hot standby (`database_read_url`) with
//! the primary behind it.
//!
//! A standby replays the primary's commits in order, so what it holds of a thread is always a
//! prefix of what the primary holds: a page read from it never skips a record, and is only
//! ever short. A full page is answered from the standby; a short one is checked against the
//! thread's (or log's) head on the primary, one key lookup, and read again from the primary
//! when the standby has not replayed that far yet. So a reader following a cursor never misses
//! a record and never goes back, whichever database answers and however far the standby lags,
//! and a paused standby costs the primary the reads near the head, not a stall. A standby that
//! fails a read is left alone for [`REST`]: the primary answers meanwhile.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use threads_core::{Cid, LogId, ThreadId};
use threads_store::{Result, Store, StoredRecord, ThreadInfo};

/// How long a standby that failed is not asked again.
const REST: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Reads {
    primary: Arc<dyn Store>,
    standby: Option<Arc<dyn Store>>,
    /// Until when (ms since the epoch) the standby is not asked, after a failure.
    resting_until: Arc<AtomicI64>,
}

impl Reads {
    pub fn new(primary: Arc<dyn Store>, standby: Option<Arc<dyn Store>>) -> Self {
        Self {
            primary,
            standby,
            resting_until: Arc::default(),
        }
    }

    /// The standby, unless there is none or it is resting after a failure.
    fn standby(&self) -> Option<&Arc<dyn Store>> {
        let resting = super::now_ms() < self.resting_until.load(Ordering::Relaxed);
        self.standby.as_ref().filter(|_| !resting)
    }

    /// A standby's answer, or `None` (logged, and the standby rested) when it failed: the
    /// primary answers instead.
    fn usable<T>(&self, answer: Result<T>) -> Option<T> {
        match answer {
            Ok(value) => Some(value),
            Err(error) => {
                metrics::counter!("threads_standby_errors_total").increment(1);
                tracing::warn!(%error, "the standby failed a read; the primary answers for a while");
                let until = super::now_ms() + REST.as_millis() as i64;
                self.resting_until.store(until, Ordering::Relaxed);
                None
            }
        }
    }

    /// Records of a thread after a sequence number.
    pub async fn records_by_thread(
        &self,
        thread: &ThreadId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        if let Some(standby) = self.standby() {
            if let Some(page) = self.usable(standby.records_by_thread(thread, after, limit).await) {
                let reached = page.last().map_or(after, |r| r.seq);
                if page.len() == limit as usize
                    || self.primary.thread(thread).await?.map_or(0, |t| t.seq) <= reached
                {
                    return Ok(page);
                }
            }
        }
        self.primary.records_by_thread(thread, after, limit).await
    }

    /// Records of one log after a counter.
    pub async fn records_by_log(
        &self,
        thread: &ThreadId,
        log: &LogId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        if let Some(standby) = self.standby() {
            if let Some(page) = self.usable(standby.records_by_log(thread, log, after, limit).await)
            {
                let reached = page.last().map_or(after, |r| r.counter);
                if page.len() == limit as usize {
                    return Ok(page);
                }
                let head = self.primary.log(thread, log).await?;
                if head.and_then(|l| l.head).map_or(0, |h| h.counter) <= reached {
                    return Ok(page);
                }
            }
        }
        self.primary.records_by_log(thread, log, after, limit).await
    }

    /// A stored node by CID, and its thread: from the standby, or the primary when the
    /// standby does not have it (yet).
    pub async fn block(&self, cid: &Cid) -> Result<Option<(ThreadId, Vec<u8>)>> {
        if let Some(standby) = self.standby() {
            if let Some(Some(found)) = self.usable(standby.block(cid).await) {
                return Ok(Some(found));
            }
        }
        self.primary.block(cid).await
    }

    /// A stored node of one thread by CID, from the standby or else the primary.
    pub async fn block_in(&self, thread: &ThreadId, cid: &Cid) -> Result<Option<Vec<u8>>> {
        if let Some(standby) = self.standby() {
            if let Some(Some(found)) = self.usable(standby.block_in(thread, cid).await) {
                return Ok(Some(found));
            }
        }
        self.primary.block_in(thread, cid).await
    }

    /// Public threads in ID order: a listing, which may lag the primary by the standby's
    /// delay.
    pub async fn public_threads(
        &self,
        after: Option<&ThreadId>,
        limit: u32,
    ) -> Result<Vec<ThreadInfo>> {
        if let Some(standby) = self.standby() {
            if let Some(threads) = self.usable(standby.public_threads(after, limit).await) {
                return Ok(threads);
            }
        }
        self.primary.public_threads(after, limit).await
    }
}
