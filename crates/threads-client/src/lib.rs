//! The writer's and reader's side of Threads: keys in a local keystore, every record in a local
//! embedded store (so writing works offline), and followers to push to and pull from.
//!
//! | module | what |
//! |---|---|
//! | [`keystore`] | the identity and each thread's keys, in owner-only files |
//! | [`car`] | records as CAR files, for pages, pushes and exports |
//! | [`follower`] | an HTTP client of one follower server |
//! | [`invite`] | sharing a thread: links carrying keys, and invites sealed to an identity |
//! | this module | [`Client`]: create, join, share, write, read, push, pull, tail, export, import |
//!
//! The local store is a [`threads_store::SqliteStore`]: the same verified-ingest rules as a
//! follower's, so a record that breaks a chain is refused locally too.
//!
//! ```no_run
//! # async fn demo() -> threads_client::Result<()> {
//! let client = threads_client::Client::open(std::path::Path::new("/tmp/alice")).await?;
//! let thread = client.create_thread(true).await?;
//! client.write(&thread.thread, &serde_json::json!({"hello": "world"})).await?;
//! client.add_follower(&thread.thread, "http://127.0.0.1:8006", None).await?;
//! client.push(&thread.thread, |_, _| {}).await?;
//! # Ok(()) }
//! ```

pub mod car;
pub mod follower;
pub mod invite;
pub mod keystore;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand_core::OsRng;
use serde_json::Value;
use threads_core::auth::Action;
use threads_core::{
    cid_of, verify_batch, Cid, Keypair, LogId, PublicKey, ReadKey, RecordError, ServiceKey,
    SignaturePolicy, ThreadId, ThreadKey, Variant, VerifiedRecord,
};
use threads_store::{Ingest, Outcome, Quotas, Registration, SqliteStore, Store, StoreError};

pub use follower::FollowerClient;
pub use invite::{Invite, Role};
pub use keystore::{Follower, Keystore, ThreadEntry};

/// Records pushed per request, and pulled per page.
const PUSH_BATCH: usize = 500;
const PULL_PAGE: u32 = 1000;
/// Pulled records stored per local transaction: each commit rewrites the store's hot index
/// pages, so fewer, larger commits write far less.
const STORE_BATCH: usize = 10_000;
/// Network attempts before giving up, and the first pause between them (doubling).
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest a live tail waits for a libp2p follower's gossip before pulling anyway (private
/// threads are not gossiped, and a message can be missed).
const P2P_POLL: Duration = Duration::from_secs(5);
/// Longest pause between reconnections of a live tail.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("keystore: {0}")]
    Keystore(String),
    #[error("unknown thread {0}: create or join it first")]
    UnknownThread(String),
    #[error("this peer has no log in the thread: it joined as a reader or follower")]
    NotAWriter,
    #[error("this peer holds no read key for the thread: it can follow but not read")]
    NoReadKey,
    #[error("bad URL {0}")]
    BadUrl(String),
    #[error("cannot reach the follower: {0}")]
    Network(String),
    #[error("the follower refused ({status} {code}): {detail}")]
    Server {
        status: u16,
        code: String,
        detail: String,
    },
    #[error("unexpected answer: {0}")]
    Protocol(String),
    #[error(
        "record {cid} from {source_url} is not authentic ({error}); nothing of its page was stored"
    )]
    Rejected {
        /// The record's CID, as text.
        cid: String,
        source_url: String,
        error: RecordError,
    },
    #[error("the local store refused a record of log {log}: {outcome}")]
    LocalRefused { log: String, outcome: String },
    #[error("not a CAR of records: {0}")]
    BadCar(String),
    #[error("nothing to export: no record of it is held here")]
    NothingHeld,
    #[error("bad invite: {0}")]
    BadInvite(String),
    #[error("the event body: {0}")]
    Body(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            message: e.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An event read back: where it sits and its decrypted body.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub log: LogId,
    pub counter: u64,
    pub seq: u64,
    pub cid: String,
    pub body: Value,
}

/// A peer: its keystore, its local store and its identity.
pub struct Client {
    keys: Keystore,
    store: Arc<SqliteStore>,
    identity: Keypair,
}

impl Client {
    /// Opens the peer kept in `home` (created on first use).
    pub async fn open(home: &Path) -> Result<Self> {
        let keys = Keystore::open(home)?;
        let identity = keys.identity()?;
        let store = Arc::new(SqliteStore::open_file(&home.join("local.db")).await?);
        Ok(Self {
            keys,
            store,
            identity,
        })
    }

    pub fn identity(&self) -> PublicKey {
        self.identity.public()
    }

    pub fn keystore(&self) -> &Keystore {
        &self.keys
    }

    pub fn thread(&self, thread: &ThreadId) -> Result<ThreadEntry> {
        self.keys.thread(thread)
    }

    /// A new thread with fresh keys and this peer's own log in it.
    pub async fn create_thread(&self, public: bool) -> Result<ThreadEntry> {
        let entry = ThreadEntry {
            thread: ThreadId::random(Variant::Raw, &mut OsRng),
            key: ThreadKey::random(&mut OsRng),
            earlier_read_keys: Vec::new(),
            log: Some(Keypair::generate(&mut OsRng)),
            snapshot_log: None,
            snapshots_from: None,
            public,
            followers: Vec::new(),
        };
        self.adopt(&entry).await?;
        Ok(entry)
    }

    /// Saves a thread's keys and registers this peer's log in the local store.
    async fn adopt(&self, entry: &ThreadEntry) -> Result<()> {
        self.keys.save(entry)?;
        if let Some(log) = entry.log_id() {
            self.register_locally(entry, &log).await?;
        }
        Ok(())
    }

    /// The logs of a thread the local store holds.
    async fn known_logs(&self, thread: &ThreadId) -> Result<HashSet<LogId>> {
        Ok(self
            .store
            .logs(thread)
            .await?
            .into_iter()
            .map(|l| l.log)
            .collect())
    }

    async fn register_locally(&self, entry: &ThreadEntry, log: &LogId) -> Result<()> {
        let registration = Registration {
            thread: entry.thread.clone(),
            log: log.clone(),
            follow_key: entry.key.service().clone(),
            addrs: Vec::new(),
            public: entry.public,
        };
        self.store.register(&registration, now_ms()).await?;
        Ok(())
    }

    /// Appends an event to this peer's own log, locally: no network needed.
    pub async fn write(&self, thread: &ThreadId, body: &Value) -> Result<(Cid, u64)> {
        let mut written = self.write_many(thread, std::slice::from_ref(body)).await?;
        Ok(written.remove(0))
    }

    /// Appends events in order, in one local transaction: all or none.
    pub async fn write_many(&self, thread: &ThreadId, bodies: &[Value]) -> Result<Vec<(Cid, u64)>> {
        let entry = self.keys.thread(thread)?;
        let pair = entry.log.as_ref().ok_or(Error::NotAWriter)?;
        self.append(&entry, pair, bodies).await
    }

    /// Appends an event to this peer's snapshot log (made on first use), which `push` sends
    /// to followers like its own log.
    pub async fn write_snapshot(&self, thread: &ThreadId, body: &Value) -> Result<(Cid, u64)> {
        let mut entry = self.keys.thread(thread)?;
        if entry.log.is_none() {
            return Err(Error::NotAWriter);
        }
        if entry.snapshot_log.is_none() {
            let pair = Keypair::generate(&mut OsRng);
            self.register_locally(&entry, &LogId::from(pair.public()))
                .await?;
            entry.snapshot_log = Some(pair);
            self.keys.save(&entry)?;
        }
        let pair = entry.snapshot_log.as_ref().expect("made above");
        let mut written = self
            .append(&entry, pair, std::slice::from_ref(body))
            .await?;
        Ok(written.remove(0))
    }

    /// The events of one log held locally, after counter `after`, decrypted.
    pub async fn read_log(
        &self,
        thread: &ThreadId,
        log: &LogId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let entry = self.keys.thread(thread)?;
        let stored = self.store.records_by_log(thread, log, after, limit).await?;
        Ok(stored
            .into_iter()
            .filter_map(|r| {
                let body = entry
                    .read_keys()
                    .find_map(|k| r.blocks.read_content(k).ok())?;
                Some(Event {
                    log: r.log,
                    counter: r.counter,
                    seq: r.seq,
                    cid: r.cid.to_string(),
                    body: decode_body(&body),
                })
            })
            .collect())
    }

    /// Appends events to one of this peer's logs, in one local transaction.
    async fn append(
        &self,
        entry: &ThreadEntry,
        pair: &Keypair,
        bodies: &[Value],
    ) -> Result<Vec<(Cid, u64)>> {
        let thread = &entry.thread;
        if entry.key.read().is_none() {
            return Err(Error::NoReadKey);
        }
        let log = LogId::from(pair.public());
        let mut prev = self
            .store
            .log(thread, &log)
            .await?
            .and_then(|l| l.head)
            .map(|h| h.cid);
        let mut batch = Vec::with_capacity(bodies.len());
        for body in bodies {
            let bytes = serde_ipld_dagcbor::to_vec(body).map_err(|e| Error::Body(e.to_string()))?;
            let record = VerifiedRecord::create(
                &bytes,
                &entry.key,
                pair,
                &self.identity.public(),
                prev,
                &mut OsRng,
            )
            .map_err(|e| Error::Body(e.to_string()))?;
            prev = Some(record.cid());
            batch.push(Ingest {
                thread: thread.clone(),
                log: log.clone(),
                record,
            });
        }
        let cids: Vec<Cid> = batch.iter().map(|i| i.record.cid()).collect();
        let outcomes = self
            .store
            .ingest(batch, &Quotas::default(), now_ms())
            .await?;
        cids.into_iter()
            .zip(outcomes)
            .map(|(cid, outcome)| match outcome {
                Outcome::Accepted { counter, .. } => Ok((cid, counter)),
                // Another process appended meanwhile; nothing of this batch counts.
                other => Err(Error::LocalRefused {
                    log: log.to_string(),
                    outcome: format!("{other:?}"),
                }),
            })
            .collect()
    }

    /// Events of a thread held locally, in arrival order after `after` (a local sequence
    /// number), decrypted. Every record was verified before the local store took it.
    ///
    /// Each event is opened with the current read key or an earlier one. The page stops
    /// before an event none of them opens; when that is the first, the error says so (the
    /// thread's read key was rotated without this peer, or the record is damaged).
    pub async fn read(&self, thread: &ThreadId, after: u64, limit: u32) -> Result<Vec<Event>> {
        let entry = self.keys.thread(thread)?;
        if entry.key.read().is_none() {
            return Err(Error::NoReadKey);
        }
        let stored = self.store.records_by_thread(thread, after, limit).await?;
        let mut events = Vec::with_capacity(stored.len());
        for r in stored {
            let mut opened = Err(RecordError::NoReadKey);
            for key in entry.read_keys() {
                opened = r.blocks.read_content(key);
                if opened.is_ok() {
                    break;
                }
            }
            match opened {
                Ok(body) => events.push(Event {
                    log: r.log,
                    counter: r.counter,
                    seq: r.seq,
                    cid: r.cid.to_string(),
                    body: decode_body(&body),
                }),
                Err(_) if !events.is_empty() => break,
                Err(error) => {
                    return Err(Error::Rejected {
                        cid: r.cid.to_string(),
                        source_url: "the local store".into(),
                        error,
                    })
                }
            }
        }
        Ok(events)
    }

    /// Takes a read key as the thread's current one, for events written from now on (a fresh
    /// one, or one a member handed over); the current one is kept to read earlier events.
    /// Returns whether it was new.
    pub fn adopt_read_key(&self, thread: &ThreadId, key: ReadKey) -> Result<bool> {
        let mut entry = self.keys.thread(thread)?;
        if entry.read_keys().any(|k| *k == key) {
            return Ok(false);
        }
        if let Some(current) = entry.key.read() {
            entry.earlier_read_keys.insert(0, current.clone());
        }
        entry.key = ThreadKey::new(entry.key.service().clone(), Some(key));
        self.keys.save(&entry)?;
        Ok(true)
    }

    /// Opens something sealed to this peer's identity (an invite, a handed-over key).
    pub fn open_sealed(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        threads_core::crypto::open_from(&self.identity, sealed)
            .map_err(|e| Error::BadInvite(format!("cannot open what was sealed: {e}")))
    }

    /// Registers this peer's log at a follower (the follow key only) and remembers it.
    pub async fn add_follower(
        &self,
        thread: &ThreadId,
        url: &str,
        token: Option<&str>,
    ) -> Result<()> {
        let mut entry = self.keys.thread(thread)?;
        let server = FollowerClient::new(url)?;
        for pair in entry.own_logs() {
            register(&server, &entry, pair, token).await?;
        }
        if !entry.followers.iter().any(|f| f.url == server.url()) {
            entry.followers.push(Follower {
                url: server.url().to_owned(),
                cursor: String::new(),
            });
            self.keys.save(&entry)?;
        }
        Ok(())
    }

    /// Asks a follower to delete this peer's logs, and forgets the follower.
    pub async fn remove_follower(&self, thread: &ThreadId, url: &str) -> Result<()> {
        let mut entry = self.keys.thread(thread)?;
        let server = FollowerClient::new(url)?;
        for pair in entry.own_logs() {
            match retry(|| server.signed(thread, pair, Action::Unregister, None)).await {
                // Already gone is what was asked for.
                Err(Error::Server { status: 404, .. }) | Ok(()) => {}
                Err(e) => return Err(e),
            }
        }
        entry.followers.retain(|f| f.url != server.url());
        self.keys.save(&entry)?;
        Ok(())
    }

    /// Pushes this peer's logs to every follower, from where each one's head is; resumes after
    /// an interruption because the follower's head says what it has. `progress(done, total)`.
    pub async fn push(&self, thread: &ThreadId, mut progress: impl FnMut(u64, u64)) -> Result<u64> {
        let entry = self.keys.thread(thread)?;
        if entry.log.is_none() {
            return Err(Error::NotAWriter);
        }
        let mut pushed = 0;
        for pair in entry.own_logs() {
            pushed += self.push_log(&entry, pair, &mut progress).await?;
        }
        Ok(pushed)
    }

    /// Pushes one of this peer's logs to every follower.
    async fn push_log(
        &self,
        entry: &ThreadEntry,
        pair: &Keypair,
        progress: &mut impl FnMut(u64, u64),
    ) -> Result<u64> {
        let thread = &entry.thread;
        let log = LogId::from(pair.public());
        let local_head = self
            .store
            .log(thread, &log)
            .await?
            .and_then(|l| l.head)
            .map_or(0, |h| h.counter);
        let mut pushed = 0;
        for follower in &entry.followers {
            let server = FollowerClient::new(&follower.url)?;
            let follow = entry.key.service();
            let mut after = match retry(|| server.head(thread, &log, follow)).await {
                Ok(head) => head.map_or(0, |h| h.counter),
                Err(Error::Server { status: 404, .. }) => {
                    register(&server, entry, pair, None).await?;
                    0
                }
                Err(e) => return Err(e),
            };
            progress(after, local_head);
            while after < local_head {
                let records = self
                    .store
                    .records_by_log(thread, &log, after, PUSH_BATCH as u32)
                    .await?;
                let Some(last) = records.last().map(|r| r.counter) else {
                    break;
                };
                let wire: Vec<_> = records
                    .iter()
                    .map(|r| follower::WireRecord::new(thread, &log, &r.blocks))
                    .collect();
                let results = retry(|| server.push(&wire)).await?;
                for result in &results {
                    match result.outcome.as_str() {
                        "accepted" => pushed += 1,
                        "duplicate" => {}
                        // The follower lacks earlier records: go back to where it is.
                        "gap" => {
                            let head = result.head.as_ref().map_or(0, |h| h.counter);
                            if head >= after {
                                return Err(Error::Protocol(format!(
                                    "{} reports a gap at its head {head}, past what was sent",
                                    server.url()
                                )));
                            }
                            after = head;
                            break;
                        }
                        other => {
                            return Err(Error::Server {
                                status: 409,
                                code: result.code.clone().unwrap_or_else(|| other.to_owned()),
                                detail: result.detail.clone().unwrap_or_default(),
                            })
                        }
                    }
                }
                if results.iter().all(|r| r.outcome != "gap") {
                    after = last;
                }
                progress(after, local_head);
            }
        }
        Ok(pushed)
    }

    /// Pulls what every follower has of the thread that is new since the last pull: verifies
    /// each record with the follow key before anything is stored. Returns how many were new.
    ///
    /// The next page is fetched while the last one is verified and stored; pages are stored
    /// several at a time (one transaction, then the cursor is saved), so an interrupted pull
    /// resumes from the last stored page.
    pub async fn pull(&self, thread: &ThreadId, mut progress: impl FnMut(u64)) -> Result<u64> {
        let mut entry = self.keys.thread(thread)?;
        let mut fresh = 0;
        let mut known = self.known_logs(thread).await?;
        for i in 0..entry.followers.len() {
            let server = FollowerClient::new(&entry.followers[i].url)?;
            let service = entry.key.service().clone();
            let start = entry.followers[i].cursor.clone();
            let mut next = Some(fetch_page(&server, thread, &service, start));
            let mut pending: Vec<Ingest> = Vec::new();
            // At most one batch is being stored while the next pages are verified.
            let mut storing: Option<(tokio::task::JoinHandle<Result<u64>>, String)> = None;
            while let Some(fetching) = next.take() {
                let page = fetching
                    .await
                    .map_err(|e| Error::Protocol(format!("fetching stopped: {e}")))??;
                if page.more {
                    next = Some(fetch_page(&server, thread, &service, page.cursor.clone()));
                }
                let service = service.clone();
                let url = server.url().to_owned();
                let expected = thread.clone();
                let records = page.records;
                let verified = tokio::task::spawn_blocking(move || {
                    verify_page(&expected, &service, &url, &records)
                })
                .await
                .map_err(|e| Error::Protocol(format!("verification stopped: {e}")))??;
                for item in &verified {
                    if known.insert(item.log.clone()) {
                        self.register_locally(&entry, &item.log).await?;
                    }
                }
                pending.extend(verified);
                if pending.len() >= STORE_BATCH || next.is_none() {
                    if let Some((task, cursor)) = storing.take() {
                        fresh += self.stored(task, &mut entry, i, cursor).await?;
                        progress(fresh);
                    }
                    let store = self.store.clone();
                    let batch = std::mem::take(&mut pending);
                    storing = Some((tokio::spawn(store_pulled(store, batch)), page.cursor));
                }
            }
            if let Some((task, cursor)) = storing.take() {
                fresh += self.stored(task, &mut entry, i, cursor).await?;
                progress(fresh);
            }
            entry = self.keys.thread(thread)?;
        }
        Ok(fresh)
    }

    /// Waits for a batch to be stored, then saves the cursor after it: the cursor moves only
    /// once its records are stored.
    async fn stored(
        &self,
        task: tokio::task::JoinHandle<Result<u64>>,
        entry: &mut ThreadEntry,
        follower: usize,
        cursor: String,
    ) -> Result<u64> {
        let fresh = task
            .await
            .map_err(|e| Error::Protocol(format!("storing stopped: {e}")))??;
        entry.followers[follower].cursor = cursor;
        self.keys.save(entry)?;
        Ok(fresh)
    }

    /// Follows a thread live from a follower (the first one, unless `url` names another):
    /// catches up by pulling, then takes each record the follower pushes over WebSocket,
    /// verified and stored before `on_event` sees it (decrypted, when this peer can read).
    /// A lost connection is re-made with growing pauses, resuming from the saved cursor, so
    /// nothing is missed. Runs until an error the follower will not get over, or until dropped.
    ///
    /// Events held locally after the local sequence number `after` are shown first.
    pub async fn tail(
        &self,
        thread: &ThreadId,
        url: Option<&str>,
        mut after: u64,
        mut on_event: impl FnMut(Event),
    ) -> Result<()> {
        let mut entry = self.keys.thread(thread)?;
        let url = match url {
            Some(url) => FollowerClient::new(url)?.url().to_owned(),
            None => entry
                .followers
                .first()
                .map(|f| f.url.clone())
                .ok_or_else(|| Error::BadUrl("the thread has no follower: add one".into()))?,
        };
        if !entry.followers.iter().any(|f| f.url == url) {
            entry.followers.push(Follower {
                url: url.clone(),
                cursor: String::new(),
            });
            self.keys.save(&entry)?;
        }
        let mut known = self.known_logs(thread).await?;
        let mut pause = FIRST_BACKOFF;
        loop {
            self.pull(thread, |_| {}).await.or_else(|e| match e {
                Error::Network(_) => Ok(0),
                other => Err(other),
            })?;
            // What the catch-up brought (and anything held before), in local order.
            if entry.key.read().is_some() {
                loop {
                    let page = self.read(thread, after, 1000).await?;
                    let Some(last) = page.last() else { break };
                    after = last.seq;
                    page.into_iter().for_each(&mut on_event);
                }
            }
            entry = self.keys.thread(thread)?;
            let at = entry
                .followers
                .iter()
                .position(|f| f.url == url)
                .ok_or_else(|| {
                    Error::BadUrl(format!("{url} was removed from the thread's followers"))
                })?;
            let mut emit = |event: Event| {
                after = after.max(event.seq);
                on_event(event)
            };
            match self
                .follow_live(&mut entry, at, &mut known, &mut emit, &mut pause)
                .await
            {
                Err(Error::Network(_)) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
    }

    /// One WebSocket session of [`Client::tail`]; returns when the connection ends.
    async fn follow_live(
        &self,
        entry: &mut ThreadEntry,
        at: usize,
        known: &mut HashSet<LogId>,
        on_event: &mut impl FnMut(Event),
        pause: &mut Duration,
    ) -> Result<()> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;

        let thread = entry.thread.clone();
        let follower = &entry.followers[at];
        let server = FollowerClient::new(&follower.url)?;
        if server.is_p2p() {
            // Gossip says when there is news; the tail's next catch-up pull brings it.
            return server.wait_for_news(&thread, P2P_POLL).await;
        }
        let ws = format!(
            "{}/v1/ws?thread={thread}&cursor={}&token={}",
            follower.url.replacen("http", "ws", 1),
            follower.cursor,
            threads_core::auth::pull_token(entry.key.service(), &thread)
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(&ws)
            .await
            .map_err(|e| Error::Network(format!("{ws}: {e}")))?;
        while let Some(message) = socket.next().await {
            let text = match message.map_err(|e| Error::Network(e.to_string()))? {
                Message::Text(text) => text,
                Message::Close(_) => break,
                _ => continue,
            };
            let message: follower::PushedMessage = serde_json::from_str(&text)
                .map_err(|e| Error::Protocol(format!("a pushed message: {e}")))?;
            match message {
                follower::PushedMessage::Subscribed {} => *pause = FIRST_BACKOFF,
                follower::PushedMessage::Error { code, detail } => {
                    return Err(Error::Server {
                        status: 0,
                        code,
                        detail,
                    })
                }
                follower::PushedMessage::Record { record, cursor } => {
                    let url = entry.followers[at].url.clone();
                    let mut verified = verify_page(&thread, entry.key.service(), &url, &[*record])?;
                    let item = verified.remove(0);
                    if known.insert(item.log.clone()) {
                        self.register_locally(entry, &item.log).await?;
                    }
                    let record = item.record.clone();
                    let log = item.log.clone();
                    let outcome = self
                        .store
                        .ingest(vec![item], &Quotas::default(), now_ms())
                        .await?
                        .remove(0);
                    entry.followers[at].cursor = cursor;
                    self.keys.save(entry)?;
                    let Outcome::Accepted { seq, counter } = outcome else {
                        continue;
                    };
                    // Verified and stored; `null` when no read key held here opens it (none
                    // at all, or a rotated one not handed over yet).
                    let body = entry
                        .read_keys()
                        .find_map(|key| record.read(key).ok())
                        .map_or(Value::Null, |b| decode_body(&b));
                    on_event(Event {
                        log,
                        counter,
                        seq,
                        cid: record.cid().to_string(),
                        body,
                    });
                }
                follower::PushedMessage::Other => {}
            }
        }
        Err(Error::Network("the follower closed the connection".into()))
    }

    /// The thread's records held locally (or only one log's), as a CAR, in arrival order.
    pub async fn export(&self, thread: &ThreadId, log: Option<&LogId>) -> Result<Vec<u8>> {
        self.keys.thread(thread)?;
        let mut records = Vec::new();
        loop {
            let after = records
                .last()
                .map_or(0, |r: &threads_store::StoredRecord| match log {
                    Some(_) => r.counter,
                    None => r.seq,
                });
            let page = match log {
                Some(log) => self.store.records_by_log(thread, log, after, 1000).await?,
                None => self.store.records_by_thread(thread, after, 1000).await?,
            };
            if page.is_empty() {
                break;
            }
            records.extend(page);
        }
        if records.is_empty() {
            return Err(Error::NothingHeld);
        }
        Ok(car::write_car(records.iter().map(car::CarItem::stored)).await)
    }

    /// Imports records from a CAR into the local store, each verified with its thread's follow
    /// key first (the thread must be known here). Returns how many were new.
    pub async fn import(&self, bytes: &[u8], mut progress: impl FnMut(u64, u64)) -> Result<u64> {
        let records = car::read_car(bytes).await.map_err(|e| Error::BadCar(e.0))?;
        let total = records.len() as u64;
        let mut fresh = 0;
        let mut done = 0;
        for chunk in records.chunks(STORE_BATCH) {
            let mut by_thread: Vec<(ThreadEntry, Vec<&car::CarRecord>)> = Vec::new();
            for record in chunk {
                match by_thread
                    .iter_mut()
                    .find(|(e, _)| e.thread == record.thread)
                {
                    Some((_, list)) => list.push(record),
                    None => by_thread.push((self.keys.thread(&record.thread)?, vec![record])),
                }
            }
            for (entry, list) in by_thread {
                let mut known = self.known_logs(&entry.thread).await?;
                let service = entry.key.service();
                let checked = verify_batch(
                    list.iter().map(|r| (r.blocks.clone(), service, &r.log)),
                    SignaturePolicy::CurrentOnly,
                );
                let mut batch = Vec::with_capacity(list.len());
                for (result, r) in checked.into_iter().zip(&list) {
                    let record = result.map_err(|error| Error::Rejected {
                        cid: cid_of(&r.blocks.record).to_string(),
                        source_url: "the CAR file".into(),
                        error,
                    })?;
                    if known.insert(r.log.clone()) {
                        self.register_locally(&entry, &r.log).await?;
                    }
                    batch.push(Ingest {
                        thread: entry.thread.clone(),
                        log: r.log.clone(),
                        record,
                    });
                }
                fresh += store_pulled(self.store.clone(), batch).await?;
            }
            done += chunk.len() as u64;
            progress(done, total);
        }
        Ok(fresh)
    }

    /// Joins a thread from a link or an invite sealed to this peer's identity. A writer gets
    /// its own log.
    pub async fn join(&self, text: &str) -> Result<ThreadEntry> {
        let invite = Invite::decode(text, &self.identity)?;
        let mut entry = match self.keys.thread(&invite.thread) {
            Ok(existing) => existing,
            Err(Error::UnknownThread(_)) => ThreadEntry {
                thread: invite.thread.clone(),
                key: invite.key.clone(),
                earlier_read_keys: Vec::new(),
                log: None,
                snapshot_log: None,
                snapshots_from: None,
                public: invite.public,
                followers: Vec::new(),
            },
            Err(e) => return Err(e),
        };
        if invite.key.read().is_some() && invite.key.read() != entry.key.read() {
            if let Some(current) = entry.key.read() {
                entry.earlier_read_keys.insert(0, current.clone());
            }
            entry.key = invite.key.clone();
        }
        if invite.snapshots_from.is_some() {
            entry.snapshots_from = invite.snapshots_from.clone();
        }
        for key in &invite.earlier_read_keys {
            if !entry.read_keys().any(|k| k == key) {
                entry.earlier_read_keys.push(key.clone());
            }
        }
        if invite.role == Role::Writer && entry.log.is_none() {
            entry.log = Some(Keypair::generate(&mut OsRng));
        }
        for url in &invite.followers {
            if !entry.followers.iter().any(|f| &f.url == url) {
                entry.followers.push(Follower {
                    url: url.clone(),
                    cursor: String::new(),
                });
            }
        }
        self.adopt(&entry).await?;
        Ok(entry)
    }

    /// A link (or, with `to`, an invite sealed to that identity) that lets its holder join
    /// the thread in `role`. Carries keys: share it privately.
    pub fn share(&self, thread: &ThreadId, role: Role, to: Option<&PublicKey>) -> Result<String> {
        let entry = self.keys.thread(thread)?;
        if role != Role::Follower && entry.key.read().is_none() {
            return Err(Error::NoReadKey);
        }
        let invite = Invite {
            thread: entry.thread.clone(),
            key: match role {
                Role::Follower => entry.key.follow_only(),
                _ => entry.key.clone(),
            },
            earlier_read_keys: match role {
                Role::Follower => Vec::new(),
                _ => entry.earlier_read_keys.clone(),
            },
            role,
            snapshots_from: entry
                .snapshot_log
                .as_ref()
                .map(|pair| LogId::from(pair.public()))
                .or_else(|| entry.snapshots_from.clone()),
            public: entry.public,
            followers: entry.followers.iter().map(|f| f.url.clone()).collect(),
        };
        invite.encode(to)
    }
}

/// Stores verified records in one transaction; returns how many were new.
async fn store_pulled(store: Arc<SqliteStore>, batch: Vec<Ingest>) -> Result<u64> {
    if batch.is_empty() {
        return Ok(0);
    }
    let logs: Vec<LogId> = batch.iter().map(|i| i.log.clone()).collect();
    let outcomes = store.ingest(batch, &Quotas::default(), now_ms()).await?;
    let mut fresh = 0;
    for (outcome, log) in outcomes.into_iter().zip(logs) {
        match outcome {
            Outcome::Accepted { .. } => fresh += 1,
            Outcome::Duplicate { .. } => {}
            other => {
                return Err(Error::LocalRefused {
                    log: log.to_string(),
                    outcome: format!("{other:?}"),
                })
            }
        }
    }
    Ok(fresh)
}

/// Starts fetching a page (with retries) in the background.
fn fetch_page(
    server: &FollowerClient,
    thread: &ThreadId,
    service: &ServiceKey,
    cursor: String,
) -> tokio::task::JoinHandle<Result<follower::Page>> {
    let (server, thread, service) = (server.clone(), thread.clone(), service.clone());
    tokio::spawn(async move { retry(|| server.page(&thread, &service, &cursor, PULL_PAGE)).await })
}

/// Checks a page: every record of `thread`, each verified with the follow key. One record that
/// fails refuses the whole page.
fn verify_page(
    thread: &ThreadId,
    service: &ServiceKey,
    url: &str,
    records: &[follower::WireRecord],
) -> Result<Vec<Ingest>> {
    let mut batch = Vec::with_capacity(records.len());
    // Parsing a log ID decompresses a curve point: once per distinct log in the page.
    let mut logs: HashMap<&str, LogId> = HashMap::new();
    let expected = thread.to_string();
    for wire in records {
        if wire.thread != expected {
            return Err(Error::Protocol(format!(
                "{url} answered with a record of another thread"
            )));
        }
        let log = match logs.get(wire.log.as_str()) {
            Some(log) => log.clone(),
            None => {
                let log: LogId = wire
                    .log
                    .parse()
                    .map_err(|_| Error::Protocol(format!("{url} sent a bad log ID")))?;
                logs.insert(&wire.log, log.clone());
                log
            }
        };
        batch.push((log, wire.blocks()?));
    }
    let cids: Vec<Cid> = batch.iter().map(|(_, b)| cid_of(&b.record)).collect();
    let checked = verify_batch(
        batch.iter().map(|(log, b)| (b.clone(), service, log)),
        SignaturePolicy::CurrentOnly,
    );
    checked
        .into_iter()
        .zip(batch)
        .zip(cids)
        .map(|((result, (log, _)), cid)| {
            let record = result.map_err(|error| Error::Rejected {
                cid: cid.to_string(),
                source_url: url.to_owned(),
                error,
            })?;
            Ok(Ingest {
                thread: thread.clone(),
                log,
                record,
            })
        })
        .collect()
}

async fn register(
    server: &FollowerClient,
    entry: &ThreadEntry,
    pair: &Keypair,
    token: Option<&str>,
) -> Result<()> {
    let action = Action::Register {
        follow_key: entry.key.follow_only().to_multibase().to_string(),
        addrs: Vec::new(),
        public: entry.public,
    };
    retry(|| server.signed(&entry.thread, pair, action.clone(), token)).await
}

/// Retries what failed to reach the server, with doubling pauses; refusals are final.
async fn retry<T, F, Fut>(mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut pause = FIRST_BACKOFF;
    for attempt in 1.. {
        match call().await {
            Err(Error::Network(_)) if attempt < ATTEMPTS => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(Error::Server { status, .. }) if status >= 500 && attempt < ATTEMPTS => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

/// A body written as JSON comes back as JSON; other DAG-CBOR is shown as its IPLD debug text.
fn decode_body(bytes: &[u8]) -> Value {
    serde_ipld_dagcbor::from_slice::<Value>(bytes).unwrap_or_else(|_| {
        match serde_ipld_dagcbor::from_slice::<ipld_core::ipld::Ipld>(bytes) {
            Ok(ipld) => Value::String(format!("{ipld:?}")),
            Err(_) => Value::Null,
        }
    })
}
