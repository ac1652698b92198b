//! Test helpers: fresh Postgres databases and ready-made logs. Enabled by the `testing` feature.

use rand_core::{OsRng, RngCore};
use sqlx::{Connection, PgConnection};
use threads_core::{Cid, Keypair, LogId, PublicKey, ThreadId, ThreadKey, Variant, VerifiedRecord};

use crate::model::Registration;

/// The cluster started by `scripts/test` (or any Postgres the caller names).
pub const POSTGRES_ENV: &str = "THREADS_TEST_PG";

/// Creates an empty database in the test cluster and returns its URL.
pub async fn fresh_postgres_database() -> String {
    let admin = std::env::var(POSTGRES_ENV).unwrap_or_else(|_| {
        panic!("{POSTGRES_ENV} is not set: run the tests with scripts/test, which starts Postgres")
    });
    let name = format!("threads_test_{:016x}", OsRng.next_u64());
    let mut conn = PgConnection::connect(&admin)
        .await
        .expect("connect to the test cluster");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let (base, _) = admin.rsplit_once('/').expect("URL has a database part");
    format!("{base}/{name}")
}

/// A writer's log in a thread, able to build records in sequence.
pub struct TestLog {
    pub thread: ThreadId,
    pub keys: ThreadKey,
    pub pair: Keypair,
    pub id: LogId,
    pub author: PublicKey,
    pub head: Option<Cid>,
}

impl TestLog {
    /// A log in a new thread.
    pub fn new() -> Self {
        Self::in_thread(
            ThreadId::random(Variant::Raw, &mut OsRng),
            ThreadKey::random(&mut OsRng),
        )
    }

    /// A log in a new thread whose ID is bound to its follow key, as the client makes them.
    pub fn bound() -> Self {
        let keys = ThreadKey::random(&mut OsRng);
        Self::in_thread(ThreadId::bound_to(Variant::Raw, keys.service()), keys)
    }

    /// A log under the same thread ID with keys of its own: a squatter's.
    pub fn squatting(&self) -> Self {
        Self::in_thread(self.thread.clone(), ThreadKey::random(&mut OsRng))
    }

    /// Another log in the same thread, sharing its keys.
    pub fn sibling(&self) -> Self {
        Self::in_thread(self.thread.clone(), self.keys.clone())
    }

    fn in_thread(thread: ThreadId, keys: ThreadKey) -> Self {
        let pair = Keypair::generate(&mut OsRng);
        Self {
            thread,
            keys,
            id: LogId::from(pair.public()),
            author: Keypair::generate(&mut OsRng).public(),
            pair,
            head: None,
        }
    }

    pub fn registration(&self, public: bool) -> Registration {
        Registration {
            thread: self.thread.clone(),
            log: self.id.clone(),
            follow_key: self.keys.service().clone(),
            addrs: vec!["/ip4/127.0.0.1/tcp/4006".into()],
            public,
        }
    }

    /// The next record of this log, with a body of `len` bytes.
    pub fn next(&mut self, len: usize) -> VerifiedRecord {
        let record = self.after(self.head, len);
        self.head = Some(record.cid());
        record
    }

    /// The next record of this log signed as go-threads and js-threads sign (their weaker
    /// legacy rule), verified under that rule.
    pub fn next_legacy(&mut self, len: usize) -> VerifiedRecord {
        let record = self.after(self.head, len);
        let blocks = threads_core::resign_legacy(
            record.blocks(),
            self.keys.service(),
            &self.pair,
            &mut OsRng,
        )
        .expect("a record of this log opens");
        let record = blocks
            .verify(
                self.keys.service(),
                &self.id,
                threads_core::SignaturePolicy::AllowLegacy,
            )
            .expect("it verifies under the legacy rule");
        self.head = Some(record.cid());
        record
    }

    /// A record with an arbitrary predecessor, for forks and gaps; the head does not move.
    pub fn after(&self, prev: Option<Cid>, len: usize) -> VerifiedRecord {
        let mut body = vec![0u8; len];
        OsRng.fill_bytes(&mut body);
        let body = serde_ipld_bytes(&body);
        VerifiedRecord::create(
            &body,
            &self.keys,
            &self.pair,
            &self.author,
            prev,
            &mut OsRng,
        )
        .expect("a record builds")
    }
}

impl Default for TestLog {
    fn default() -> Self {
        Self::new()
    }
}

/// A DAG-CBOR byte string: the smallest valid application body of a given size.
fn serde_ipld_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = match bytes.len() {
        n @ 0..=23 => vec![0x40 | n as u8],
        n @ 24..=0xff => vec![0x58, n as u8],
        n @ 0x100..=0xffff => vec![0x59, (n >> 8) as u8, n as u8],
        n => [&[0x5a][..], &(n as u32).to_be_bytes()].concat(),
    };
    out.extend_from_slice(bytes);
    out
}
