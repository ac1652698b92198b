//! Group commit: pushes verified while a commit is in flight wait in one queue, and the next
//! transaction stores all of them. Sixty-four one-record pushes then cost one transaction and
//! one fsync, not sixty-four.
//!
//! Each push still gets only its own outcomes, and only once they are durable. A group that
//! fails as a whole (the database refused the transaction) is committed again push by push,
//! so one push's failure is never another's. There are as many committers as the store has
//! writers (one for SQLite; a few for Postgres, which overlaps the commits of big groups).
//! Ordering is the store's: within a thread, sequence numbers follow commit order, across
//! processes too. The queue is bounded in records: a push that would overfill it is refused
//! with [`Error::Busy`] before it waits.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::FutureExt;
use threads_store::{Ingest, Outcome, Quotas, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use super::{now_ms, Error, Result};

/// Most records one group commits: big enough to gather every push in flight, small enough
/// that one transaction stays short.
const MAX_GROUP_RECORDS: usize = 5000;
/// Groups at least this large may commit while another does (with several writers).
const OVERLAP_RECORDS: usize = 256;
/// Most bytes one group commits (a push may be several MiB).
const MAX_GROUP_BYTES: usize = 32 << 20;
/// How long a client should wait before retrying a push refused for a full queue.
pub const BUSY_RETRY_SECS: u64 = 1;

/// The queue into the committer tasks. Cheap to clone.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Job>,
    /// Records queued and not yet answered.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

struct Job {
    batch: Vec<Ingest>,
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<Outcome>, StoreError>>,
}

impl Committer {
    /// Starts as many committer tasks as the store has writers; they end when every
    /// `Committer` is dropped.
    pub fn start(store: Arc<dyn Store>, quotas: Quotas, max_queued: usize) -> Self {
        let (queue, jobs) = mpsc::unbounded_channel();
        let jobs = Arc::new(tokio::sync::Mutex::new(Queue { jobs, next: None }));
        let queued = Arc::new(AtomicUsize::new(0));
        for _ in 0..store.writers().max(1) {
            tokio::spawn(run(store.clone(), quotas, jobs.clone(), queued.clone()));
        }
        Self {
            queue,
            queued,
            max_queued,
        }
    }

    /// Records queued and not yet answered: other pushes are under way.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Stores a verified batch with whatever else is queued; answers its outcomes, in order,
    /// once they are durable.
    pub async fn commit(&self, batch: Vec<Ingest>) -> Result<Vec<Outcome>> {
        let n = batch.len();
        // A batch larger than the whole queue still goes through when the queue is empty; a
        // limit of 0 is none.
        let max = self.max_queued;
        let admitted = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (max == 0 || queued == 0 || queued + n <= max).then_some(queued + n)
            });
        if admitted.is_err() {
            metrics::counter!("threads_pushes_busy_total").increment(1);
            return Err(Error::Busy);
        }
        let bytes = batch.iter().map(|i| i.record.blocks().byte_len()).sum();
        let (reply, answer) = oneshot::channel();
        let sent = self.queue.send(Job {
            batch,
            bytes,
            reply,
        });
        if sent.is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return Err(Error::Internal("the committer has stopped".into()));
        }
        match answer.await {
            Ok(outcomes) => Ok(outcomes?),
            Err(_) => Err(Error::Internal("the committer dropped a push".into())),
        }
    }
}

/// What the committers take jobs from, one at a time.
struct Queue {
    jobs: mpsc::UnboundedReceiver<Job>,
    /// A job that did not fit the last group: it starts the next one, whichever committer
    /// takes it (kept here, not by the committer that cut it, so it never waits behind a
    /// committer waiting for new jobs).
    next: Option<Job>,
}

/// One committer: takes the next job and everything queued behind it (while no other
/// committer is taking), and commits them together.
async fn run(
    store: Arc<dyn Store>,
    quotas: Quotas,
    queue: Arc<tokio::sync::Mutex<Queue>>,
    queued: Arc<AtomicUsize>,
) {
    loop {
        let mut taking = queue.lock().await;
        let (group, records) = {
            let queue = &mut *taking;
            let first = match queue.next.take() {
                Some(job) => job,
                None => match queue.jobs.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            // Everything that queued up meanwhile, within the group's bounds.
            let (mut records, mut bytes) = (first.batch.len(), first.bytes);
            let mut group = vec![first];
            while let Ok(job) = queue.jobs.try_recv() {
                if records + job.batch.len() > MAX_GROUP_RECORDS
                    || bytes + job.bytes > MAX_GROUP_BYTES
                {
                    queue.next = Some(job);
                    break;
                }
                records += job.batch.len();
                bytes += job.bytes;
                group.push(job);
            }
            (group, records)
        };
        // Small groups are committed one at a time (the next one gathers everything that
        // arrives meanwhile; several at once would only queue on the same threads' rows);
        // big ones may overlap, as Postgres overlaps their fsyncs.
        if records >= OVERLAP_RECORDS {
            drop(taking);
        }
        metrics::histogram!("threads_commit_group_pushes").record(group.len() as f64);
        // A bug that panics fails this group's pushes (their answers are dropped: an internal
        // error), not every push after them.
        let committed = AssertUnwindSafe(commit_group(store.as_ref(), &quotas, group));
        if committed.catch_unwind().await.is_err() {
            tracing::error!("a group commit panicked; its pushes were answered with an error");
        }
        queued.fetch_sub(records, Ordering::AcqRel);
    }
}

/// Commits a group in one transaction and answers each push; if that fails, commits each push
/// alone, so that a push is answered with its own failure only.
async fn commit_group(store: &dyn Store, quotas: &Quotas, group: Vec<Job>) {
    let mut batches = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    let mut all = Vec::new();
    for job in group {
        batches.push(all.len()..all.len() + job.batch.len());
        replies.push(job.reply);
        all.extend(job.batch);
    }
    if replies.len() > 1 {
        if let Ok(mut outcomes) = store.ingest(&all, quotas, now_ms()).await {
            for (range, reply) in batches.iter().zip(replies).rev() {
                let _ = reply.send(Ok(outcomes.split_off(range.start)));
            }
            return;
        }
    }
    for (range, reply) in batches.into_iter().zip(replies) {
        let _ = reply.send(store.ingest(&all[range], quotas, now_ms()).await);
    }
}
