//! The writer's and reader's side of Threads: keys in a local keystore, every record in a local
//! embedded store (so writing works offline), and followers to push to and pull from.
//!
//! | module | what |
//! |---|---|
//! | [`keystore`] | the identity and each thread's keys, in owner-only files |
//! | [`at_rest`] | keystore files sealed under an operator's main key |
//! | [`car`] | records as CAR files, for pages, pushes and exports |
//! | [`follower`] | an HTTP client of one follower server |
//! | [`invite`] | sharing a thread: links carrying keys, and invites sealed to an identity |
//! | this module | [`Client`]: a peer's identity, keys and local store; creating threads |
//! | `local`, `sync`, `live`, `sharing` | [`Client`]'s writing and reading, pushing and pulling, following live, exporting, importing, joining and sharing |
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

pub mod at_rest;
pub mod car;
pub mod follower;
pub mod invite;
pub mod keystore;
mod live;
mod local;
mod sharing;
mod sync;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand_core::OsRng;
use serde_json::Value;
use threads_core::{Keypair, LogId, PublicKey, ReadKey, RecordError, ThreadId, ThreadKey, Variant};
use threads_store::{Registration, SqliteStore, Store, StoreError};

pub use at_rest::{MainKey, MainKeys};
pub use follower::FollowerClient;
pub use invite::{Invite, Role};
pub use keystore::{Follower, Keystore, ThreadEntry};
pub use sync::Pulled;

/// Records pushed per request, and pulled per page.
const PUSH_BATCH: usize = 500;
/// Node bytes pushed per request at most: as JSON (base64) about 5.4 MiB, well under a
/// follower's default `limits.max_body_bytes` (16 MiB).
const PUSH_BYTES: usize = 4 << 20;
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

/// An event read back: where it sits and its decrypted body, as JSON (or, from the readers
/// that say so, the body's DAG-CBOR bytes, for a caller that decodes them into types of its own).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event<Body = Value> {
    pub log: LogId,
    pub counter: u64,
    pub seq: u64,
    pub cid: String,
    pub body: Body,
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
        Self::open_with(home, Keystore::open(home)?).await
    }

    /// Opens the peer kept in `home` with its keys in `keys` (e.g. a sealed keystore).
    pub async fn open_with(home: &Path, keys: Keystore) -> Result<Self> {
        let identity = keys.identity()?;
        let store = Arc::new(SqliteStore::open_local(&home.join("local.db")).await?);
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

    /// The local store: every record held, as verified, still encrypted.
    pub fn store(&self) -> &Arc<SqliteStore> {
        &self.store
    }

    pub fn thread(&self, thread: &ThreadId) -> Result<ThreadEntry> {
        self.keys.thread(thread)
    }

    /// A new thread with fresh keys and this peer's own log in it.
    pub async fn create_thread(&self, public: bool) -> Result<ThreadEntry> {
        let key = ThreadKey::random(&mut OsRng);
        let entry = ThreadEntry {
            // Bound to the follow key, so no follower can be made to hold it under another.
            thread: ThreadId::bound_to(Variant::Raw, key.service()),
            key,
            earlier_read_keys: Vec::new(),
            log: Some(Keypair::generate(&mut OsRng)),
            snapshot_log: None,
            snapshots_from: None,
            public,
            followers: Vec::new(),
            allow_legacy_signatures: false,
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
    pub async fn log_ids(&self, thread: &ThreadId) -> Result<HashSet<LogId>> {
        self.known_logs(thread).await
    }

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

    /// Takes a read key as the thread's current one, for events written from now on (a fresh
    /// one, or one a member handed over); the current one is kept to read earlier events.
    /// Returns whether it was new.
    pub fn adopt_read_key(&self, thread: &ThreadId, key: ReadKey) -> Result<bool> {
        self.keys.update(thread, |entry| {
            if entry.read_keys().any(|k| *k == key) {
                return false;
            }
            if let Some(current) = entry.key.read() {
                entry.earlier_read_keys.insert(0, current.clone());
            }
            entry.key = ThreadKey::new(entry.key.service().clone(), Some(key));
            true
        })
    }

    /// Forgets a thread: its records leave the local store (and its write-ahead log), then
    /// its keys the keystore.
    pub async fn forget(&self, thread: &ThreadId) -> Result<()> {
        match self.store.delete_thread(thread).await {
            // Nothing of it was stored (a reader that pulled nothing yet).
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        self.store.checkpoint().await?;
        self.keys.remove(thread)
    }

    /// Opens something sealed to this peer's identity (an invite, a handed-over key).
    pub fn open_sealed(&self, sealed: &[u8]) -> Result<Vec<u8>> {
        threads_core::crypto::open_from(&self.identity, sealed)
            .map_err(|e| Error::BadInvite(format!("cannot open what was sealed: {e}")))
    }
}
