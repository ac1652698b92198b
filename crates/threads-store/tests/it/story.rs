//! One scenario, generic over the storage trait, so SQLite and Postgres answer identically.

use std::sync::Arc;

use threads_core::{Head, Keypair};
use threads_store::testing::{fresh_postgres_database, TestLog};
use threads_store::*;

const NO_QUOTAS: Quotas = Quotas {
    max_records_per_log: None,
    max_bytes_per_thread: None,
};

fn ingest(log: &TestLog, record: &threads_core::VerifiedRecord) -> Ingest {
    Ingest {
        thread: log.thread.clone(),
        log: log.id.clone(),
        record: record.clone(),
    }
}

async fn story(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    let server = store.server_id().await.unwrap();
    assert!(server.starts_with("threads-"));
    assert_eq!(store.server_id().await.unwrap(), server);
    let mut changes = store.changes();

    // Registration: created, then updated; a second log must bring the same follow key.
    let mut a = TestLog::new();
    let mut b = a.sibling();
    assert_eq!(
        store.register(&a.registration(true), 1).await.unwrap(),
        Registered::Created
    );
    assert_eq!(
        store.register(&a.registration(true), 2).await.unwrap(),
        Registered::Updated
    );
    let mut wrong_key = b.registration(true);
    wrong_key.follow_key = threads_core::ServiceKey::from_bytes([9; 32]);
    assert!(matches!(
        store.register(&wrong_key, 3).await,
        Err(StoreError::Conflict("follow_key_mismatch"))
    ));

    // Accepted in order, with thread sequence and log counter.
    let (r1, r2, r3) = (a.next(100), a.next(100), a.next(100));
    let out = store
        .ingest(&[ingest(&a, &r1), ingest(&a, &r2)], &NO_QUOTAS, 10)
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            Outcome::Accepted { seq: 1, counter: 1 },
            Outcome::Accepted { seq: 2, counter: 2 }
        ]
    );
    let change = changes.recv().await.unwrap();
    assert_eq!((change.thread, change.seq), (a.thread.clone(), 2));

    // Duplicates are not errors; unregistered logs are refused.
    let b1 = b.next(10);
    let out = store
        .ingest(
            &[ingest(&a, &r2), ingest(&a, &r3), ingest(&b, &b1)],
            &NO_QUOTAS,
            11,
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            Outcome::Duplicate { counter: 2 },
            Outcome::Accepted { seq: 3, counter: 3 },
            Outcome::UnknownLog
        ]
    );

    // A gap says which head the server has; filling it is accepted.
    store.register(&b.registration(true), 12).await.unwrap();
    let b2 = b.next(10);
    let out = store
        .ingest(&[ingest(&b, &b2)], &NO_QUOTAS, 13)
        .await
        .unwrap();
    assert_eq!(out, [Outcome::Gap { head: None }]);
    let out = store
        .ingest(&[ingest(&b, &b1), ingest(&b, &b2)], &NO_QUOTAS, 14)
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            Outcome::Accepted { seq: 4, counter: 1 },
            Outcome::Accepted { seq: 5, counter: 2 }
        ]
    );

    // Forks: a second record after r1, and a second first record. Kept as evidence only.
    let head_a = Head {
        cid: r3.cid(),
        counter: 3,
    };
    let fork = a.after(Some(r1.cid()), 10);
    let genesis = a.after(None, 10);
    let out = store
        .ingest(&[ingest(&a, &fork), ingest(&a, &genesis)], &NO_QUOTAS, 15)
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            Outcome::Fork { head: head_a },
            Outcome::Fork { head: head_a }
        ]
    );
    let evidence = store.forks(&a.thread, &a.id).await.unwrap();
    assert_eq!(evidence.len(), 2);
    assert!(evidence
        .iter()
        .any(|e| e.cid == fork.cid() && e.prev == Some(r1.cid())));

    // A record after one the server lacks: a gap naming the head it has.
    let missing = a.after(Some(fork.cid()), 10);
    let out = store
        .ingest(&[ingest(&a, &missing)], &NO_QUOTAS, 16)
        .await
        .unwrap();
    assert_eq!(out, [Outcome::Gap { head: Some(head_a) }]);

    // Quotas.
    let r4 = a.next(10);
    let quotas = Quotas {
        max_records_per_log: Some(3),
        max_bytes_per_thread: None,
    };
    let out = store.ingest(&[ingest(&a, &r4)], &quotas, 17).await.unwrap();
    assert_eq!(out, [Outcome::QuotaExceeded(Quota::RecordsPerLog)]);
    let quotas = Quotas {
        max_records_per_log: None,
        max_bytes_per_thread: Some(100),
    };
    let out = store.ingest(&[ingest(&a, &r4)], &quotas, 17).await.unwrap();
    assert_eq!(out, [Outcome::QuotaExceeded(Quota::BytesPerThread)]);

    // Pulls by log counter and by thread cursor.
    let by_log = store.records_by_log(&a.thread, &a.id, 1, 10).await.unwrap();
    assert_eq!(
        by_log.iter().map(|r| r.cid).collect::<Vec<_>>(),
        [r2.cid(), r3.cid()]
    );
    assert_eq!(by_log[0].blocks, *r2.blocks());
    assert_eq!(
        (by_log[0].counter, by_log[0].seq, by_log[0].arrived_ms),
        (2, 2, 10)
    );
    let by_thread = store.records_by_thread(&a.thread, 0, 100).await.unwrap();
    assert_eq!(
        by_thread.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(by_thread[3].log, b.id);
    let page = store.records_by_thread(&a.thread, 2, 2).await.unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);

    // Blocks by CID: each of the four nodes.
    let (header, body) = r1.content_cids();
    let blocks = r1.blocks();
    for (cid, bytes) in [
        (r1.cid(), &blocks.record),
        (r1.event_cid(), &blocks.event),
        (header, &blocks.header),
        (body, &blocks.body),
    ] {
        assert_eq!(
            store.block_in(&a.thread, &cid).await.unwrap().as_ref(),
            Some(bytes)
        );
        // By CID alone, only a record is found.
        let anywhere = (cid == r1.cid()).then(|| (a.thread.clone(), bytes.clone()));
        assert_eq!(store.block(&cid).await.unwrap(), anywhere);
    }
    assert_eq!(store.block(&fork.cid()).await.unwrap(), None);
    assert_eq!(store.block_in(&a.thread, &fork.cid()).await.unwrap(), None);

    // Listings.
    let info = store.thread(&a.thread).await.unwrap().unwrap();
    assert_eq!((info.seq, info.records), (5, 5));
    let seqs = store
        .thread_seqs(&[a.thread.clone(), TestLog::new().thread])
        .await
        .unwrap();
    assert_eq!(seqs, [(a.thread.clone(), 5)]);
    let stored_bytes: u64 = by_thread.iter().map(|r| r.byte_len() as u64).sum();
    assert_eq!(info.bytes, stored_bytes);
    let logs = store.logs(&a.thread).await.unwrap();
    assert_eq!(logs.len(), 2);
    let log_a = store.log(&a.thread, &a.id).await.unwrap().unwrap();
    assert_eq!(log_a.head, Some(head_a));
    assert_eq!(log_a.addrs, ["/ip4/127.0.0.1/tcp/4006"]);
    let mut private = TestLog::new();
    store
        .register(&private.registration(false), 20)
        .await
        .unwrap();
    let listed = store.public_threads(None, 100).await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        [a.thread.clone()]
    );
    assert!(store
        .public_threads(Some(&a.thread), 100)
        .await
        .unwrap()
        .is_empty());
    let p1 = private.next(10);
    let out = store
        .ingest(&[ingest(&private, &p1)], &NO_QUOTAS, 21)
        .await
        .unwrap();
    assert_eq!(out, [Outcome::Accepted { seq: 1, counter: 1 }]);

    // Nonces and registration tokens.
    assert!(store.use_nonce(b"n1", 100, 50).await.unwrap());
    assert!(!store.use_nonce(b"n1", 100, 60).await.unwrap());
    assert!(store.use_nonce(b"n1", 300, 200).await.unwrap());
    assert!(!store.registration_token_exists(b"hash").await.unwrap());
    store
        .add_registration_token(b"hash", "for alice", 1)
        .await
        .unwrap();
    assert!(store.registration_token_exists(b"hash").await.unwrap());

    // Unregistering a log deletes its records and fixes the thread's totals.
    store.unregister_log(&a.thread, &b.id).await.unwrap();
    assert!(matches!(
        store.unregister_log(&a.thread, &b.id).await,
        Err(StoreError::NotFound)
    ));
    let info = store.thread(&a.thread).await.unwrap().unwrap();
    assert_eq!(info.records, 3);
    assert!(store
        .records_by_log(&a.thread, &b.id, 0, 10)
        .await
        .unwrap()
        .is_empty());
    let stranger = threads_core::LogId::from(Keypair::generate(&mut rand_core::OsRng).public());
    assert!(matches!(
        store.unregister_log(&a.thread, &stranger).await,
        Err(StoreError::NotFound)
    ));

    // Deleting a thread deletes everything in it.
    store.delete_thread(&a.thread).await.unwrap();
    assert!(store.thread(&a.thread).await.unwrap().is_none());
    assert!(store.block(&r1.cid()).await.unwrap().is_none());
    assert!(matches!(
        store.delete_thread(&a.thread).await,
        Err(StoreError::NotFound)
    ));
    // The last log of a thread going takes the thread with it.
    store
        .unregister_log(&private.thread, &private.id)
        .await
        .unwrap();
    assert!(store.thread(&private.thread).await.unwrap().is_none());
}

#[tokio::test]
async fn story_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    story(open(None, dir.path()).await.unwrap()).await;
}

/// A peer's local store goes without the indexes of node CIDs, and answers the same.
#[tokio::test]
async fn story_on_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_local(&dir.path().join("local.db"))
        .await
        .unwrap();
    story(Arc::new(store)).await;
}

#[tokio::test]
async fn story_on_postgres() {
    let url = fresh_postgres_database().await;
    story(
        open(Some(&url), std::path::Path::new("/nonexistent"))
            .await
            .unwrap(),
    )
    .await;
}

/// Signed requests arriving together while nonces expire: each prunes some, every fresh nonce
/// is accepted, and expiry decides freshness whether or not a row was pruned yet. (The
/// deadlock of every request deleting the same expired rows showed only at scale, in
/// `benches/capacity.rs`.)
async fn concurrent_nonces(store: Arc<dyn Store>) {
    for i in 0..4000i64 {
        assert!(store.use_nonce(&i.to_be_bytes(), i, 0).await.unwrap());
    }
    let uses = (0..64i64).map(|task| {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 0..40i64 {
                // Time moves on as the requests come in: each finds a few more expired.
                let now = n * 100 + task;
                let nonce = format!("fresh-{task}-{n}");
                assert!(store
                    .use_nonce(nonce.as_bytes(), 10_000, now)
                    .await
                    .unwrap());
            }
        })
    });
    for used in uses.collect::<Vec<_>>() {
        used.await.unwrap();
    }
    // An expired nonce is fresh again; an unexpired one is not.
    assert!(store
        .use_nonce(&1i64.to_be_bytes(), 20_000, 9_000)
        .await
        .unwrap());
    assert!(!store.use_nonce(b"fresh-0-0", 20_000, 9_000).await.unwrap());
}

#[tokio::test]
async fn concurrent_nonces_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_nonces(open(None, dir.path()).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_nonces_on_postgres() {
    let url = fresh_postgres_database().await;
    concurrent_nonces(
        open(Some(&url), std::path::Path::new("/nonexistent"))
            .await
            .unwrap(),
    )
    .await;
}

/// A log unregistered by another transaction while a group commit waits for its thread's
/// lock: the group, whose read of the heads predates the unregistering, stores nothing of it
/// (records have no foreign key to their log to refuse them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_unregistered_while_its_push_waits_on_postgres() {
    use sqlx::{Connection, PgConnection};
    let url = fresh_postgres_database().await;
    let store = open(Some(&url), std::path::Path::new("/nonexistent"))
        .await
        .unwrap();
    let mut a = TestLog::new();
    let mut b = a.sibling();
    store.register(&a.registration(true), 1).await.unwrap();
    store.register(&b.registration(true), 1).await.unwrap();

    // Unregistering as the store does it: the thread's row locked, then the log deleted.
    let mut other = PgConnection::connect(&url).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("UPDATE threads SET seq = seq WHERE id = $1")
        .bind(a.thread.as_bytes())
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM logs WHERE thread_id = $1 AND log_id = $2")
        .bind(a.thread.as_bytes())
        .bind(a.id.to_bytes())
        .execute(&mut *tx)
        .await
        .unwrap();
    let (a1, b1) = (a.next(10), b.next(10));
    let push = {
        let (store, batch) = (store.clone(), [ingest(&a, &a1), ingest(&b, &b1)]);
        tokio::spawn(async move { store.ingest(&batch, &NO_QUOTAS, 5).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!push.is_finished(), "the push waits for the thread's lock");
    tx.commit().await.unwrap();

    let out = push.await.unwrap().unwrap();
    assert_eq!(
        out,
        [
            Outcome::UnknownLog,
            Outcome::Accepted { seq: 1, counter: 1 }
        ]
    );
    let (orphans,): (i64,) = sqlx::query_as("SELECT count(*) FROM records WHERE log_id = $1")
        .bind(a.id.to_bytes())
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(orphans, 0);
}
