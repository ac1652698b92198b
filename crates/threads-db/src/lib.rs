//! The reader's database over a thread (section 4 of the Threads paper): applications
//! dispatch actions; the dispatcher journals them as events and runs the stores' reducers in
//! one transaction; the stores' views answer queries and broadcast changes.
//!
//! | module | what |
//! |---|---|
//! | [`action`] | actions, the envelope carrying them in an event body, the order of events |
//! | [`view`] | the [`View`] trait a store implements: reduce, snapshot, restore |
//! | [`dispatcher`] | journal + reducers in one transaction; rewinds for late events |
//! | [`journal`] | events, snapshots and progress in one SQLite file (or in memory) |
//! | [`database`] | a [`Dispatcher`] over one thread of a [`threads_client::Client`] |
//! | [`kv`] | the key/value store |
//! | [`docs`] | the document store: collections, schemas, indexes, queries |
//! | [`crdt`] | JSON CRDT documents (Automerge) for concurrent editing |
//! | [`acl`] | thread and document ACLs, enforced by every replica as it reduces |
//!
//! Every replica applies the events of all logs in one order: by the logical clock the
//! writer put inside the encrypted body, then by log key, then by counter. Replicas that hold
//! the same records hold the same views, whatever order the records arrived in.
//!
//! ```no_run
//! # async fn demo() -> threads_db::Result<()> {
//! use std::sync::Arc;
//! use threads_db::{kv, Database, KvStore};
//!
//! let client = Arc::new(threads_client::Client::open(std::path::Path::new("/tmp/alice")).await?);
//! let thread = client.create_thread(true).await?.thread;
//! let db = Database::open(client, thread, vec![(kv::STORE.into(), Box::new(KvStore::default()))],
//!     Default::default()).await?;
//! db.dispatch(vec![kv::put("greeting", "hello".into())]).await?;
//! let value = db.query(kv::STORE, |kv: &KvStore| kv.get("greeting").cloned()).await?;
//! assert_eq!(value, Some("hello".into()));
//! # Ok(()) }
//! ```

pub mod acl;
pub mod action;
mod cbor;
pub mod crdt;
pub mod database;
pub mod dispatcher;
pub mod docs;
pub mod journal;
pub mod kv;
pub mod view;

pub use action::{Action, Envelope, Event, Position};
pub use crdt::CrdtStore;
pub use database::{is_snapshot, Config, Database};
pub use dispatcher::{Applied, Dispatcher, Options};
pub use docs::DocStore;
pub use kv::KvStore;
pub use view::{Change, Context, View};

/// The stores of a thread's database as `threads db` and bots open it: key/value entries,
/// document collections and CRDT documents.
pub fn standard_stores() -> Vec<(String, Box<dyn View>)> {
    vec![
        (kv::STORE.into(), Box::new(KvStore::default())),
        (docs::STORE.into(), Box::new(DocStore::default())),
        (crdt::STORE.into(), Box::new(CrdtStore::default())),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no store named {0} is registered")]
    UnknownStore(String),
    #[error("store {store:?} refused the action: {reason}")]
    Refused { store: String, reason: String },
    #[error("the journal is damaged: {0}")]
    Corrupt(String),
    #[error("an event sorts before what compaction freed: the journal must be rebuilt")]
    NeedsRebuild,
    #[error("the journal: {0}")]
    Journal(#[from] sqlx::Error),
    #[error("the journal's schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the journal's snapshot files: {0}")]
    SnapshotFile(#[from] std::io::Error),
    #[error(transparent)]
    Client(#[from] threads_client::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
