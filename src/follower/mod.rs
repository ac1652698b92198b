//! The follower's core: everything the follower does, as plain async functions over typed
//! inputs and outputs. Its transports (the HTTP API and WebSocket in [`crate::server::v1`],
//! the libp2p API, gossip and replication in [`crate::server::p2p`]) decode what arrives, call
//! these, and encode the answer; none of them calls another.
//!
//! | operation | function | module |
//! |---|---|---|
//! | register a log, unregister it, delete a thread (a writer's signed request) | [`Follower::owner_request`] | [`owners`] |
//! | take in a log found at another follower (replication) | [`Follower::adopt_log`] | [`owners`] |
//! | push a batch of records, from a writer, a gossip peer or a replica (stored by group commit) | [`Follower::push`] | [`push`], [`commit`] |
//! | pull a thread by cursor, a log by counter | [`Follower::pull_thread`], [`Follower::pull_log`] | [`reads`] |
//! | follow a thread live from a cursor | [`Follower::subscribe`] | [`live`] |
//! | a block by CID | [`Follower::block`] | [`reads`] |
//! | listings: public threads, a thread and its logs (or just its heads digest), a log, its forks | [`Follower::threads`], [`Follower::thread`], [`Follower::log`], [`Follower::forks`] | [`reads`] |
//! | subscribe a webhook (a writer's signed request, or the operator) | [`Follower::create_webhook`] | [`webhooks`] |
//! | manage and deliver webhooks (one worker per process) | [`Follower::hooks`] | [`crate::webhooks`] |
//! | issue registration tokens; readiness | [`Follower::issue_registration_token`], [`Follower::ready`] | [`owners`], here |
//!
//! Refusals are [`Error`]s, one variant per reason with a stable code; a pushed record's fate
//! is a [`push::Verdict`]. Who reads a thread is decided here ([`access`]): public threads by
//! anyone, private ones with their pull token.

pub mod access;
pub mod commit;
pub mod error;
pub mod gauges;
pub mod keys;
pub mod live;
pub mod owners;
pub mod push;
pub mod reads;
pub mod replica;
pub mod signatures;
pub mod webhooks;

use std::sync::Arc;

use anyhow::Context;
use futures_util::future::BoxFuture;
use threads_core::{LogId, SignaturePolicy, ThreadId, UnverifiedRecord};
use threads_store::{Quotas, Store};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
pub use access::{decode_cursor, encode_cursor};
pub use error::{Error, Result};
pub use push::{Judged, Origin, PushItem, Pushed, Verdict};

/// Milliseconds since the Unix epoch: the follower's clock for arrival times and request
/// windows.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Whether records signed under go-threads' rule are taken (`allow_legacy_signatures`).
fn signature_policy(config: &Config) -> SignaturePolicy {
    if config.allow_legacy_signatures {
        SignaturePolicy::AllowLegacy
    } else {
        SignaturePolicy::CurrentOnly
    }
}

/// Records stored from writers' pushes to public threads, in order: thread, log and nodes.
pub type News = Vec<(ThreadId, LogId, UnverifiedRecord)>;

/// What the follower tells the network it is part of (the libp2p host): records worth
/// gossiping, and which threads' topics to be on. Set by the transport that has a network.
pub trait Announce: Send + Sync + 'static {
    /// Records a writer pushed to public threads, once stored. Must not block: a full queue
    /// skips them (readers that miss a record pull it).
    fn records(&self, news: News);
    /// Be on a public thread's topic, or leave a private or deleted thread's (idempotent).
    fn topic<'a>(&'a self, thread: &'a ThreadId, public: bool) -> BoxFuture<'a, ()>;
}

/// The follower. Cheap to clone.
#[derive(Clone)]
pub struct Follower(Arc<Inner>);

struct Inner {
    config: Config,
    store: Arc<dyn Store>,
    /// Where records, blocks and listings are read: the store, or a hot standby before it.
    reads: replica::Reads,
    /// The audience signed requests must name; shared by every process on one database.
    server_id: String,
    hub: live::Hub,
    /// Where verified pushes wait for the next group commit.
    committer: commit::Committer,
    /// Follow keys of the threads pushed to lately.
    keys: keys::Keys,
    /// Where pushed records' signatures are checked (small pushes' together).
    signatures: signatures::Signatures,
    shutdown: CancellationToken,
    announce: Option<Arc<dyn Announce>>,
    /// Webhook subscriptions and their deliveries.
    hooks: crate::webhooks::Hooks,
    /// Names this process among those sharing the database, as the holder of leases.
    instance: String,
}

impl Follower {
    /// Opens the store (running migrations) and starts live fan-out; `announce` is told what to
    /// gossip, when there is a network to gossip on.
    pub async fn open(
        config: Config,
        announce: Option<Arc<dyn Announce>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let store = threads_store::open(config.database_url(), &config.data_dir)
            .await
            .context("opening the database")?;
        let server_id = store.server_id().await.context("reading the server ID")?;
        let standby = match config.database_read_url() {
            Some(url) => Some(
                threads_store::open_replica(url)
                    .await
                    .context("opening the standby (database_read_url)")?,
            ),
            None => None,
        };
        let reads = replica::Reads::new(store.clone(), standby);
        let limit = |n: u64| (n > 0).then_some(n);
        let quotas = Quotas {
            max_records_per_log: limit(config.quotas.max_records_per_log),
            max_bytes_per_thread: limit(config.quotas.max_bytes_per_thread),
        };
        let secrets = crate::webhooks::secrets::Secrets::from_hex(&config.webhooks.secret_key)
            .map_err(|e| anyhow::anyhow!("webhooks.secret_key: {e}"))?;
        let payloads = webhooks::Encrypted {
            inline_max: config.webhooks.inline_max_bytes,
        };
        let hooks = crate::webhooks::Hooks::new(
            store.clone(),
            config.webhooks.clone(),
            secrets,
            Arc::new(payloads),
        );
        let hub = live::Hub::start(store.clone(), reads.clone(), shutdown.clone());
        let committer =
            commit::Committer::start(store.clone(), quotas, config.limits.max_queued_records);
        Ok(Self(Arc::new(Inner {
            committer,
            reads,
            hooks,
            instance: hex::encode(
                rand_core::RngCore::next_u64(&mut rand_core::OsRng).to_be_bytes(),
            ),
            keys: keys::Keys::default(),
            signatures: signatures::Signatures::new(signature_policy(&config)),
            config,
            store,
            server_id,
            hub,
            shutdown,
            announce,
        })))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The ID signed requests must name.
    pub fn server_id(&self) -> &str {
        &self.0.server_id
    }

    /// Cancelled when the process stops.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    /// Ready when the database answers.
    pub async fn ready(&self) -> Result<()> {
        Ok(self.0.store.ping().await?)
    }

    /// Takes or renews a lease on work that one process of those sharing the database does
    /// at a time: true while this process holds it.
    pub async fn lease(&self, name: &str, lease_ms: i64) -> Result<bool> {
        Ok(self
            .0
            .store
            .lease(name, &self.0.instance, now_ms(), lease_ms)
            .await?)
    }

    /// Records stored in any thread, by this process or another sharing the database.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<threads_store::Change> {
        self.0.store.changes()
    }

    /// Tells the network whether to be on a thread's topic.
    async fn topic(&self, thread: &ThreadId, public: bool) {
        if let Some(announce) = &self.0.announce {
            announce.topic(thread, public).await;
        }
    }
}
