//! Reading what the follower holds: pulls by thread cursor or log counter, blocks by CID, and
//! listings (public threads, a thread with its logs or only its heads digest, a log, forks).

use sha2::{Digest, Sha256};
use threads_core::{Cid, LogId, ThreadId};
use threads_store::{ForkEvidence, LogInfo, StoredRecord, ThreadInfo};

use super::access::{check_access, decode_cursor, encode_cursor, MAX_POSITION};
use super::{now_ms, Error, Follower, Result};

/// One page of records, the cursor after its last one, and whether more may follow.
#[derive(Debug)]
pub struct Page {
    pub records: Vec<StoredRecord>,
    pub cursor: String,
    pub more: bool,
}

/// A thread as a reader sees it: with its logs, unless the reader's digest says it has them.
#[derive(Debug)]
pub struct ThreadView {
    pub info: ThreadInfo,
    pub digest: String,
    /// `None` when the reader's digest matched.
    pub logs: Option<Vec<LogInfo>>,
}

/// A stored node and whether its thread is public (which decides how it may be cached).
#[derive(Debug)]
pub struct Block {
    pub bytes: Vec<u8>,
    pub public: bool,
}

impl Follower {
    /// A page size within `limits.max_page_records` (all of it when none is asked for).
    fn page_size(&self, limit: Option<u32>) -> u32 {
        let max = self.config().limits.max_page_records;
        limit.unwrap_or(max).clamp(1, max)
    }

    /// Records of a thread in arrival order after an opaque cursor. Following `cursor` until
    /// `more` is false never misses a record, whatever the concurrency of writers and servers.
    pub async fn pull_thread(
        &self,
        thread: &ThreadId,
        after: Option<&str>,
        limit: Option<u32>,
        token: Option<&str>,
    ) -> Result<Page> {
        let info = self.readable_thread(thread, token).await?;
        let after = decode_cursor(&info, after)?;
        let limit = self.page_size(limit);
        let records = self.records(thread, None, after, limit).await?;
        let last = records.last().map_or(after, |r| r.seq);
        Ok(Page {
            more: records.len() == limit as usize,
            cursor: encode_cursor(&info, last),
            records,
        })
    }

    /// [`Follower::pull_thread`], except that a page with nothing after the cursor waits up
    /// to `wait` for the thread's next record (long-poll), and is answered as soon as one is
    /// stored, or empty when the time is up or the process stops.
    pub async fn pull_thread_waiting(
        &self,
        thread: &ThreadId,
        after: Option<&str>,
        limit: Option<u32>,
        token: Option<&str>,
        wait: std::time::Duration,
    ) -> Result<Page> {
        let page = self.pull_thread(thread, after, limit, token).await?;
        if !page.records.is_empty() || wait.is_zero() {
            return Ok(page);
        }
        // Subscribed from the page's cursor, so a record stored between the pull above and
        // this point is not missed.
        let (_, mut subscription) = self.subscribe(thread, Some(&page.cursor), token).await?;
        tokio::select! {
            next = subscription.next() => { next?; }
            _ = tokio::time::sleep(wait) => return Ok(page),
            _ = self.shutdown().cancelled() => return Ok(page),
        }
        self.pull_thread(thread, Some(&page.cursor), limit, token)
            .await
    }

    /// Records of one log after a counter (the cursor is the counter itself).
    pub async fn pull_log(
        &self,
        thread: &ThreadId,
        log: &LogId,
        after: Option<&str>,
        limit: Option<u32>,
        token: Option<&str>,
    ) -> Result<Page> {
        self.readable_log(thread, log, token).await?;
        let after = match after.filter(|a| !a.is_empty()) {
            None => 0,
            Some(a) => a
                .parse()
                .ok()
                .filter(|counter| *counter <= MAX_POSITION)
                .ok_or(Error::BadCursor("a log cursor is a record counter"))?,
        };
        let limit = self.page_size(limit);
        let records = self.records(thread, Some(log), after, limit).await?;
        let last = records.last().map_or(after, |r| r.counter);
        Ok(Page {
            more: records.len() == limit as usize,
            cursor: last.to_string(),
            records,
        })
    }

    /// Records of a thread after a sequence number, or of one of its logs after a counter,
    /// for a caller that checked access already.
    pub async fn records(
        &self,
        thread: &ThreadId,
        log: Option<&LogId>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>> {
        let reads = &self.0.reads;
        Ok(match log {
            None => reads.records_by_thread(thread, after, limit).await?,
            Some(log) => reads.records_by_log(thread, log, after, limit).await?,
        })
    }

    /// Public threads after `after` in ID order (private ones are not announced), and the
    /// thread to continue after when there may be more.
    pub async fn threads(
        &self,
        after: Option<&ThreadId>,
        limit: Option<u32>,
    ) -> Result<(Vec<ThreadInfo>, Option<ThreadId>)> {
        let limit = limit
            .unwrap_or(100)
            .clamp(1, self.config().limits.max_page_records);
        let threads = self.0.reads.public_threads(after, limit).await?;
        let next = match threads.last() {
            Some(last) if threads.len() == limit as usize => Some(last.id.clone()),
            _ => None,
        };
        Ok((threads, next))
    }

    /// A readable thread with its logs; when `digest` is the thread's heads digest already,
    /// the logs are left out.
    pub async fn thread(
        &self,
        thread: &ThreadId,
        token: Option<&str>,
        digest: Option<&str>,
    ) -> Result<ThreadView> {
        let info = self.readable_thread(thread, token).await?;
        let logs = self.heads(thread).await?;
        let ours = heads_digest(&logs);
        Ok(ThreadView {
            logs: (digest != Some(ours.as_str())).then_some(logs),
            digest: ours,
            info,
        })
    }

    /// The logs this follower holds of a thread, with their heads, whoever asks (replication
    /// compares its own).
    pub async fn heads(&self, thread: &ThreadId) -> Result<Vec<LogInfo>> {
        Ok(self.0.store.logs(thread).await?)
    }

    /// A readable log.
    pub async fn log(
        &self,
        thread: &ThreadId,
        log: &LogId,
        token: Option<&str>,
    ) -> Result<LogInfo> {
        Ok(self.readable_log(thread, log, token).await?.1)
    }

    /// Evidence of a readable log's forks: second records claiming a taken predecessor.
    pub async fn forks(
        &self,
        thread: &ThreadId,
        log: &LogId,
        token: Option<&str>,
    ) -> Result<Vec<ForkEvidence>> {
        self.readable_log(thread, log, token).await?;
        Ok(self.0.store.forks(thread, log).await?)
    }

    /// A stored node of one thread by its CID, if the thread is readable: the lookup a
    /// database distributed by thread answers from one node.
    pub async fn thread_block(
        &self,
        thread: &ThreadId,
        cid: &Cid,
        token: Option<&str>,
    ) -> Result<Block> {
        let info = self.readable_thread(thread, token).await?;
        let bytes = self.0.reads.block_in(thread, cid).await?;
        Ok(Block {
            bytes: bytes.ok_or(Error::NotFound("block"))?,
            public: info.public,
        })
    }

    /// A stored record by its CID, in any thread, if its thread is readable. (A record's other
    /// nodes are indexed within their thread: [`Self::thread_block`] finds them.)
    pub async fn block(&self, cid: &Cid, token: Option<&str>) -> Result<Block> {
        let found = self.0.reads.block(cid).await?;
        let (thread, bytes) = found.ok_or(Error::NoRecordCid)?;
        let info = self
            .0
            .store
            .thread(&thread)
            .await?
            .ok_or(Error::NoRecordCid)?;
        check_access(&info, token)?;
        Ok(Block {
            bytes,
            public: info.public,
        })
    }

    /// A writer's addresses while they live: they expire `p2p.address_ttl_secs` after the
    /// writer last registered.
    pub fn live_addrs<'a>(&self, log: &'a LogInfo) -> &'a [String] {
        let ttl_ms = self.config().p2p.address_ttl_secs.saturating_mul(1000);
        let age_ms = now_ms().saturating_sub(log.addrs_ms).max(0) as u64;
        if age_ms <= ttl_ms {
            &log.addrs
        } else {
            &[]
        }
    }
}

/// A digest of a thread's heads (every log's ID, head counter and CID, in log order): two
/// followers with the same digest hold the same records, so a replica compares digests
/// before asking for anything more.
pub fn heads_digest(logs: &[LogInfo]) -> String {
    let mut heads: Vec<(Vec<u8>, u64, Vec<u8>)> = logs
        .iter()
        .filter_map(|l| {
            l.head
                .map(|h| (l.log.to_bytes(), h.counter, h.cid.to_bytes()))
        })
        .collect();
    heads.sort();
    let mut hash = Sha256::new();
    for (log, counter, cid) in heads {
        hash.update(&log);
        hash.update(counter.to_be_bytes());
        hash.update(&cid);
    }
    hex::encode(hash.finalize())
}
