//! Following threads live: fan-out of new records to subscribers in this process.
//!
//! The store announces changes (in-process for SQLite, `LISTEN/NOTIFY` across processes for
//! Postgres). For each thread someone watches, one tail reads the new records from storage once
//! and broadcasts them. Subscribers never trust the broadcast for completeness: they follow
//! sequence numbers ([`Subscription`]) and go back to storage whenever something is missing, so a
//! slow or lagging subscriber costs storage reads, never ingestion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use threads_core::auth::check_pull_token;
use threads_core::ThreadId;
use threads_store::{Store, StoredRecord, ThreadInfo};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

/// Records buffered per watched thread before slow receivers lag (and re-read storage).
const TAIL_CAPACITY: usize = 1024;
/// Page size of tail reads and subscriber catch-up.
const PAGE: u32 = 500;
/// A safety net for lost notifications: every tail re-checks storage this often.
const RESCAN: Duration = Duration::from_secs(1);

impl super::Follower {
    /// Follows a readable thread from a cursor (empty: from its start). Returns the thread
    /// and the sequence number the subscription starts after.
    pub async fn subscribe(
        &self,
        thread: &ThreadId,
        cursor: Option<&str>,
        token: Option<&str>,
    ) -> super::Result<(ThreadInfo, Subscription)> {
        let info = self.readable_thread(thread, token).await?;
        let after = super::decode_cursor(&info, cursor)?;
        let mut subscription = Subscription::new(&self.0.hub, &info, after).await;
        // Without the pull token, what is read depends on the thread staying public.
        subscription.anonymous =
            !token.is_some_and(|t| check_pull_token(&info.follow_key, &info.id, t));
        Ok((info, subscription))
    }
}

#[derive(Clone)]
pub struct Hub(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    /// Where catch-ups read records (the store, or a standby before it).
    reads: super::replica::Reads,
    tails: Mutex<HashMap<ThreadId, Tail>>,
}

/// A record as subscriptions yield it. One record broadcast live is one `LiveRecord` for every
/// subscriber of its thread in this process, so its wire form is made once for all of them.
pub struct LiveRecord {
    pub record: StoredRecord,
    wire: OnceLock<String>,
}

impl LiveRecord {
    fn new(record: StoredRecord) -> Arc<Self> {
        Arc::new(Self {
            record,
            wire: OnceLock::new(),
        })
    }

    /// The record as transports send it, encoded by the first subscriber that asks (the
    /// encoding must depend on nothing but the record and its thread).
    pub fn wire(&self, encode: impl FnOnce(&StoredRecord) -> String) -> &str {
        self.wire.get_or_init(|| encode(&self.record))
    }
}

/// A new record as the tail broadcasts it, with whether its thread was public once it had been
/// read (so that subscribers without the pull token need not ask storage).
#[derive(Clone)]
struct Live {
    record: Arc<LiveRecord>,
    public: bool,
}

struct Tail {
    sender: broadcast::Sender<Live>,
    /// Newest sequence number broadcast (or known when the tail started).
    last: u64,
    /// The thread's `created_ms` when the tail started: a thread deleted and registered again
    /// under the same ID counts from 1 again, so its tail must not go on from `last`.
    created_ms: i64,
}

impl Hub {
    pub fn start(
        store: Arc<dyn Store>,
        reads: super::replica::Reads,
        shutdown: CancellationToken,
    ) -> Self {
        let hub = Hub(Arc::new(Inner {
            store,
            reads,
            tails: Mutex::new(HashMap::new()),
        }));
        tokio::spawn(hub.clone().run(shutdown));
        hub
    }

    /// Live records of `thread` from now on. Pair with [`Subscription`] for a gap-free stream.
    async fn subscribe(&self, thread: &ThreadId) -> broadcast::Receiver<Live> {
        if let Some(tail) = self.0.tails.lock().unwrap().get(thread) {
            return tail.sender.subscribe();
        }
        // Start a new tail at the thread's current end; followers replay the rest.
        let (last, created_ms) = match self.0.store.thread(thread).await {
            Ok(Some(info)) => (info.seq, info.created_ms),
            _ => (0, i64::MIN),
        };
        let mut tails = self.0.tails.lock().unwrap();
        let tail = tails.entry(thread.clone()).or_insert_with(|| Tail {
            sender: broadcast::channel(TAIL_CAPACITY).0,
            last,
            created_ms,
        });
        tail.sender.subscribe()
    }

    async fn run(self, shutdown: CancellationToken) {
        let mut changes = self.0.store.changes();
        let mut rescan = tokio::time::interval(RESCAN);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                change = changes.recv() => match change {
                    Ok(change) => self.advance(&change.thread).await,
                    Err(RecvError::Lagged(_)) => self.advance_all().await,
                    Err(RecvError::Closed) => return,
                },
                _ = rescan.tick() => self.advance_all().await,
            }
        }
    }

    /// Drops unwatched tails, then reads storage only for threads that moved past their tail,
    /// or are gone: one query for all watched threads, however many there are.
    async fn advance_all(&self) {
        let watched: Vec<ThreadId> = {
            let mut tails = self.0.tails.lock().unwrap();
            tails.retain(|_, tail| tail.sender.receiver_count() > 0);
            tails.keys().cloned().collect()
        };
        if watched.is_empty() {
            return;
        }
        let seqs = match self.0.store.thread_seqs(&watched).await {
            Ok(seqs) => seqs,
            Err(error) => {
                tracing::warn!(%error, "checking watched threads failed");
                return;
            }
        };
        let behind: Vec<ThreadId> = {
            let seqs: HashMap<ThreadId, u64> = seqs.into_iter().collect();
            let tails = self.0.tails.lock().unwrap();
            watched
                .into_iter()
                .filter(|thread| {
                    let seq = seqs.get(thread);
                    seq.is_none_or(|seq| tails.get(thread).is_some_and(|t| *seq != t.last))
                })
                .collect()
        };
        for thread in behind {
            self.advance(&thread).await;
        }
    }

    /// Reads what is new in `thread` since the tail's last record and broadcasts it. A thread
    /// deleted, or registered again, since the tail started ends the tail: its subscribers
    /// go back to storage, which tells them.
    async fn advance(&self, thread: &ThreadId) {
        loop {
            let Some((last, created_ms)) = self
                .0
                .tails
                .lock()
                .unwrap()
                .get(thread)
                .map(|t| (t.last, t.created_ms))
            else {
                return;
            };
            let page = match self.0.reads.records_by_thread(thread, last, PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "reading new records for subscribers failed");
                    return;
                }
            };
            let full = page.len() == PAGE as usize;
            // Read after the records: if the thread turned private (or was replaced) before
            // one of them was stored, this says so.
            let info = match self.0.store.thread(thread).await {
                Ok(info) => info.filter(|t| t.created_ms == created_ms),
                Err(error) => {
                    tracing::warn!(%error, "reading a watched thread failed");
                    return;
                }
            };
            let mut tails = self.0.tails.lock().unwrap();
            let Some(tail) = tails.get_mut(thread).filter(|t| t.created_ms == created_ms) else {
                return;
            };
            let Some(ThreadInfo { public, .. }) = info else {
                tails.remove(thread);
                return;
            };
            for record in page {
                if record.seq > tail.last {
                    tail.last = record.seq;
                    // No receiver is fine; they replay from storage.
                    let record = LiveRecord::new(record);
                    let _ = tail.sender.send(Live { record, public });
                }
            }
            if !full {
                return;
            }
        }
    }
}

/// Follows one thread from a cursor: replays from storage, then goes live, switching back to
/// storage whenever the live stream skips or lags. Yields every record exactly once, in order.
pub struct Subscription {
    hub: Hub,
    thread: ThreadId,
    live: broadcast::Receiver<Live>,
    /// Sequence number of the last record yielded.
    pub cursor: u64,
    /// Records read from storage, not yet yielded.
    backlog: std::collections::VecDeque<Arc<LiveRecord>>,
    replaying: bool,
    /// Subscribed without the pull token, to a public thread: each record is yielded only if
    /// the thread was still public after it was read (a thread that turns private, or is
    /// deleted, stops reaching those who may no longer read it).
    anonymous: bool,
    /// The thread's `created_ms` at subscribing: the subscription ends when the thread is
    /// deleted or registered again under the same ID (a token for the old one opens nothing).
    created_ms: i64,
}

impl Subscription {
    async fn new(hub: &Hub, info: &ThreadInfo, cursor: u64) -> Self {
        // Subscribe before the first storage read, so nothing falls between the two.
        let live = hub.subscribe(&info.id).await;
        Self {
            hub: hub.clone(),
            thread: info.id.clone(),
            live,
            cursor,
            backlog: Default::default(),
            replaying: true,
            anonymous: false,
            created_ms: info.created_ms,
        }
    }

    /// The next record after the cursor. Errors when the subscriber may read the thread no
    /// more, or when storage fails.
    pub async fn next(&mut self) -> super::Result<Arc<LiveRecord>> {
        loop {
            if let Some(record) = self.backlog.pop_front() {
                self.cursor = record.record.seq;
                return Ok(record);
            }
            if self.replaying {
                let store = &self.hub.0.store;
                let page = self
                    .hub
                    .0
                    .reads
                    .records_by_thread(&self.thread, self.cursor, PAGE)
                    .await?;
                // Read after the page: a record stored after the thread turned private, or
                // was replaced, is never shown.
                let info = store.thread(&self.thread).await?;
                match info.filter(|t| t.created_ms == self.created_ms) {
                    None => return Err(super::Error::NotFound("thread")),
                    Some(info) if self.anonymous => still_public(info.public)?,
                    Some(_) => {}
                }
                self.replaying = page.len() == PAGE as usize;
                self.backlog.extend(page.into_iter().map(LiveRecord::new));
                continue;
            }
            match self.live.recv().await {
                Ok(live) if live.record.record.seq <= self.cursor => continue,
                Ok(live) if live.record.record.seq == self.cursor + 1 => {
                    if self.anonymous {
                        still_public(live.public)?;
                    }
                    self.cursor = live.record.record.seq;
                    return Ok(live.record);
                }
                // Something was skipped, or this subscriber fell behind: back to storage.
                Ok(_) | Err(RecvError::Lagged(_)) => self.replaying = true,
                Err(RecvError::Closed) => {
                    // The tail was dropped; a fresh subscription and a storage read resume.
                    self.live = self.hub.subscribe(&self.thread).await;
                    self.replaying = true;
                }
            }
        }
    }
}

/// A subscriber without the pull token reads on only while the thread is public.
fn still_public(public: bool) -> super::Result<()> {
    match public {
        true => Ok(()),
        false => Err(super::Error::PullTokenRequired),
    }
}
