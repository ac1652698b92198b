use proptest::prelude::*;
use serde_json::json;

use std::collections::BTreeMap;

use threads_core::{Keypair, LogId};

use super::*;
use crate::acl::{AclDoc, Role};
use crate::docs::{self, DocStore};
use crate::kv::{self, KvStore};

async fn dispatcher(snapshot_every: u64) -> Dispatcher {
    let journal = Journal::open(None).await.unwrap();
    let stores: Vec<(String, Box<dyn View>)> = vec![
        (kv::STORE.into(), Box::new(KvStore::default())),
        (docs::STORE.into(), Box::new(DocStore::default())),
    ];
    Dispatcher::open(journal, stores, Options { snapshot_every })
        .await
        .unwrap()
}

/// The key of test log `n` (a real Ed25519 key: ACLs name logs by their IDs).
fn log(n: u8) -> [u8; 32] {
    *Keypair::from_seed(&[n; 32]).public().as_bytes()
}

fn log_id(n: u8) -> String {
    LogId::from(Keypair::from_seed(&[n; 32]).public()).to_string()
}

fn event(clock: u64, n: u8, counter: u64, actions: Vec<Action>) -> Event {
    Event {
        pos: Position {
            clock,
            log: log(n),
            counter,
        },
        actions,
    }
}

async fn get(d: &Dispatcher, key: &str) -> Option<Value> {
    d.query(kv::STORE, |kv: &KvStore| kv.get(key).cloned())
        .await
        .unwrap()
}

use serde_json::Value;

#[tokio::test]
async fn a_late_event_that_sorts_earlier_is_reduced_in_its_place() {
    let d = dispatcher(2).await;
    let mut changes = d.subscribe();
    d.apply(vec![event(1, 1, 1, vec![kv::put("a", json!(1))])], None)
        .await
        .unwrap();
    d.apply(vec![event(3, 1, 2, vec![kv::put("a", json!(3))])], None)
        .await
        .unwrap();
    assert_eq!(changes.recv().await.unwrap().change["type"], "put");
    // Written at clock 2 by an offline writer: it sorts between the two, so the later
    // put still wins.
    let applied = d
        .apply(vec![event(2, 2, 1, vec![kv::put("a", json!(2))])], None)
        .await
        .unwrap();
    assert_eq!(
        applied,
        Applied {
            fresh: 1,
            rewound: true
        }
    );
    assert_eq!(get(&d, "a").await, Some(json!(3)));
    assert_eq!(d.applied().await.0, 3);
    // Held already: nothing happens.
    let again = d
        .apply(vec![event(2, 2, 1, vec![kv::put("a", json!(2))])], None)
        .await
        .unwrap();
    assert_eq!(again, Applied::default());
}

#[tokio::test]
async fn unknown_stores_and_malformed_actions_are_ignored_alike() {
    let d = dispatcher(0).await;
    let events = vec![event(
        1,
        1,
        1,
        vec![
            Action::new("elsewhere", "put", json!({})),
            Action::new(kv::STORE, "put", json!({"no key": 1})),
            kv::put("b", json!("kept")),
        ],
    )];
    d.apply(events, None).await.unwrap();
    assert_eq!(get(&d, "b").await, Some(json!("kept")));
    assert!(matches!(
        d.check(&[1; 32], &[Action::new("elsewhere", "put", json!({}))])
            .await,
        Err(Error::UnknownStore(_))
    ));
    assert!(matches!(
        d.check(
            &[1; 32],
            &[Action::new(kv::STORE, "put", json!({"key": "k"}))]
        )
        .await,
        Err(Error::Refused { .. })
    ));
}

#[tokio::test]
async fn compaction_frees_old_events_and_a_late_event_before_them_asks_for_a_rebuild() {
    let d = dispatcher(10).await;
    let events: Vec<Event> = (1..=35)
        .map(|i| event(i * 2, 1, i, vec![kv::put(&format!("k{i}"), json!(i))]))
        .collect();
    d.apply(events, None).await.unwrap();
    assert_eq!(d.compact(1).await.unwrap(), 30);
    let before = d.snapshot().await;
    // Sorts after the kept snapshot: reduced from it.
    d.apply(vec![event(65, 2, 1, vec![kv::put("late", json!(1))])], None)
        .await
        .unwrap();
    assert_eq!(get(&d, "late").await, Some(json!(1)));
    // Sorts before it: the freed events are needed.
    let err = d
        .apply(vec![event(3, 2, 2, vec![kv::put("early", json!(1))])], None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NeedsRebuild), "{err}");
    assert_eq!(get(&d, "early").await, None, "nothing of it was applied");
    assert_ne!(d.snapshot().await, before);
}

async fn stored_snapshots(d: &Dispatcher) -> Vec<(Vec<u8>, i64, Vec<u8>)> {
    let mut state = d.state.write().await;
    let mut tx = state.journal.begin().await.unwrap();
    sqlx::query_as("SELECT pos, events, bytes FROM snapshots ORDER BY pos")
        .fetch_all(&mut *tx)
        .await
        .unwrap()
}

fn acl_doc() -> impl Strategy<Value = AclDoc> {
    let role = prop::sample::select(vec![Role::NoAccess, Role::Read, Role::Write, Role::Delete]);
    let roles = prop::sample::select(vec![
        vec![Role::Write],
        vec![Role::Write, Role::Delete],
        vec![Role::Read],
        vec![Role::Delete],
    ]);
    (role, prop::collection::btree_map(1..4u8, roles, 0..3)).prop_map(|(default, peers)| AclDoc {
        default,
        peers: peers.into_iter().map(|(n, r)| (log_id(n), r)).collect(),
    })
}

/// The paper's Table 1: Jane reads; John creates, edits, deletes; Mary edits and reads.
#[tokio::test]
async fn table_one_is_enforced_at_each_point_of_the_order() {
    let (john, mary, jane) = (1, 2, 3);
    let d = dispatcher(0).await;
    let mut clock = 0;
    let mut counters = BTreeMap::new();
    let mut next = |n: u8| {
        clock += 1;
        let counter = counters.entry(n).or_insert(0u64);
        *counter += 1;
        (clock, n, *counter)
    };
    let thread_acl = AclDoc {
        default: Role::NoAccess,
        peers: BTreeMap::from([
            (log_id(john), vec![Role::Write, Role::Delete]),
            (log_id(mary), vec![Role::Read]),
            (log_id(jane), vec![Role::Read]),
        ]),
    };
    // Mary may edit the document "plan" but create nothing.
    let plan_acl = AclDoc {
        default: Role::Read,
        peers: BTreeMap::from([
            (log_id(john), vec![Role::Write]),
            (log_id(mary), vec![Role::Write]),
        ]),
    };
    let script: Vec<(u8, Action)> = vec![
        (
            mary,
            kv::put("early", json!("before any ACL, the thread is open")),
        ),
        (john, acl::set(acl::THREAD, &thread_acl)),
        (john, kv::put("plan", json!("v1"))),
        (jane, kv::put("plan", json!("jane edits"))),
        (mary, kv::put("plan", json!("mary edits"))),
        (john, acl::set("kv:plan", &plan_acl)),
        (mary, kv::put("plan", json!("v2 by mary"))),
        (mary, kv::put("new", json!("mary creates"))),
        (
            jane,
            acl::set(
                acl::THREAD,
                &AclDoc {
                    default: Role::Write,
                    peers: BTreeMap::new(),
                },
            ),
        ),
        (john, kv::put("doomed", json!(1))),
    ];
    let mut positions = Vec::new();
    for (who, action) in script {
        let (clock, n, counter) = next(who);
        let e = event(clock, n, counter, vec![action]);
        positions.push(e.pos);
        d.apply(vec![e], None).await.unwrap();
    }
    let doomed = positions[9];
    let early = positions[0];
    let (clock, n, counter) = next(mary);
    d.apply(
        vec![event(clock, n, counter, vec![acl::delete_event(early)])],
        None,
    )
    .await
    .unwrap();
    let (clock, n, counter) = next(john);
    d.apply(
        vec![event(clock, n, counter, vec![acl::delete_event(doomed)])],
        None,
    )
    .await
    .unwrap();

    assert_eq!(
        get(&d, "early").await,
        Some(json!("before any ACL, the thread is open"))
    );
    assert_eq!(get(&d, "plan").await, Some(json!("v2 by mary")));
    assert_eq!(get(&d, "new").await, None, "Mary may not create");
    assert_eq!(get(&d, "doomed").await, None, "John deleted it");
    let acl = d.acls(|a| a.get(acl::THREAD).cloned()).await;
    assert_eq!(acl, Some(thread_acl), "Jane may not change the ACL");

    // The same, refused up front when dispatched locally.
    assert!(matches!(
        d.check(&log(jane), &[kv::put("plan", json!(0))]).await,
        Err(Error::Refused { reason, .. }) if reason.contains("write role over kv:plan")
    ));
    assert!(d
        .check(&log(mary), &[kv::put("plan", json!(0))])
        .await
        .is_ok());
    assert!(d
        .check(&log(mary), &[acl::delete_event(early)])
        .await
        .is_err());
}

#[tokio::test]
async fn a_store_added_after_compaction_gets_an_empty_journal_to_refill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let open = |with_docs: bool| {
        let path = path.clone();
        async move {
            let mut stores: Vec<(String, Box<dyn View>)> =
                vec![(kv::STORE.into(), Box::new(KvStore::default()))];
            if with_docs {
                stores.push((
                    crate::docs::STORE.into(),
                    Box::new(crate::DocStore::default()),
                ));
            }
            let journal = Journal::open(Some(&path)).await.unwrap();
            Dispatcher::open(journal, stores, Options { snapshot_every: 5 })
                .await
                .unwrap()
        }
    };
    let d = open(false).await;
    let events = (1..=12)
        .map(|i| event(i, 1, i, vec![kv::put("k", json!(i))]))
        .collect();
    d.apply(events, Some(12)).await.unwrap();
    d.compact(1).await.unwrap();
    drop(d);
    assert_eq!(
        open(false).await.applied().await.0,
        12,
        "reopened from its snapshot"
    );
    let d = open(true).await;
    assert_eq!(d.applied().await, (0, None));
    assert_eq!(
        d.seen_seq().await.unwrap(),
        0,
        "to be read again from the start"
    );
}

#[tokio::test]
async fn starting_from_a_snapshot_skips_what_it_stands_for() {
    let a = dispatcher(0).await;
    let events: Vec<Event> = (1..=10)
        .map(|i| {
            event(
                i * 2,
                (i % 2) as u8 + 1,
                i.div_ceil(2),
                vec![kv::put(&format!("k{i}"), json!(i))],
            )
        })
        .collect();
    a.apply(events[..8].to_vec(), None).await.unwrap();
    let (at, bytes) = a.snapshot().await;
    a.apply(events[8..].to_vec(), None).await.unwrap();

    let b = dispatcher(0).await;
    assert!(matches!(
        b.start_from(b"damaged").await,
        Err(Error::Corrupt(_))
    ));
    assert_eq!(
        b.journaled().await.unwrap(),
        0,
        "a refused snapshot leaves nothing"
    );
    assert_eq!(b.start_from(&bytes).await.unwrap(), at.unwrap());
    let mut all = events.clone();
    all.reverse();
    assert!(
        !b.apply(all, None).await.unwrap().rewound,
        "covered events are skipped"
    );
    assert_eq!(b.snapshot().await, a.snapshot().await);
    assert_eq!(b.journaled().await.unwrap(), 2);
    assert!(
        b.start_from(&bytes).await.is_err(),
        "only an empty database starts over"
    );
    // An event the snapshot did not stand for, sorting before it: only a rebuild helps.
    let late = event(3, 3, 1, vec![kv::put("late", json!(1))]);
    assert!(matches!(
        b.apply(vec![late], None).await,
        Err(Error::NeedsRebuild)
    ));
}

/// The snapshot written by hand is the DAG-CBOR of its [`SnapshotBody`].
#[tokio::test]
async fn a_snapshot_is_the_dag_cbor_of_its_body() {
    let d = dispatcher(0).await;
    let events = vec![
        event(
            1,
            1,
            1,
            vec![kv::put("k", json!({"b": 1, "aa": [true, null]}))],
        ),
        event(2, 2, 1, vec![docs::create_collection("c", None, &["n"])]),
        event(
            3,
            2,
            2,
            vec![docs::insert("c", json!({"_id": "x", "n": -1.5}))],
        ),
    ];
    d.apply(events, None).await.unwrap();
    let (_, bytes) = d.snapshot().await;
    let state = d.state.read().await;
    let views = &state.views;
    let body = SnapshotBody {
        pos: views.last.unwrap().key().to_vec(),
        events: views.applied,
        views: views
            .stores
            .iter()
            .map(|(name, view)| (name.clone(), serde_bytes::ByteBuf::from(view.snapshot())))
            .chain([(
                acl::STORE.to_owned(),
                serde_bytes::ByteBuf::from(views.acls.snapshot()),
            )])
            .collect(),
        heads: views
            .heads
            .iter()
            .map(|(log, counter)| (serde_bytes::ByteBuf::from(log.to_vec()), *counter))
            .collect(),
    };
    assert_eq!(bytes, serde_ipld_dagcbor::to_vec(&body).unwrap());
}

/// An event per (clock, log, counter); each log's clocks increase with its counter.
/// Actions: puts and deletes, ACLs set on the thread, its admin ACL and one key, and
/// deletions of other events (resolved once every event's position is known).
fn history() -> impl Strategy<Value = Vec<Event>> {
    let id = prop::sample::select(vec![acl::THREAD, acl::ADMIN, "kv:k0", "docs:c/d0"]);
    let action = prop_oneof![
        6 => (0..4u8, 0..3u8, any::<i16>()).prop_map(|(key, kind, value)| {
            let key = format!("k{key}");
            if kind == 0 {
                kv::delete(&key)
            } else {
                kv::put(&key, json!(value))
            }
        }),
        3 => (0..6u8, 0..3u8, any::<i8>()).prop_map(|(kind, doc, n)| {
            let id = format!("d{doc}");
            match kind {
                0 => docs::create_collection(
                    "c",
                    (n % 2 == 0).then(|| json!({"properties": {"n": {"maximum": 100}}})),
                    &["n"],
                ),
                1 => docs::create_index("c", "m"),
                2 => docs::delete("c", &id),
                3 => docs::save("c", json!({"_id": id, "n": n, "m": -i16::from(n)})),
                _ => docs::insert("c", json!({"_id": id, "n": n})),
            }
        }),
        1 => (id, acl_doc()).prop_map(|(id, doc)| acl::set(id, &doc)),
        1 => any::<prop::sample::Index>()
            .prop_map(|i| Action::new(acl::STORE, "pick", json!(i.index(1 << 20)))),
    ];
    let log = prop::collection::vec((1..4u64, prop::collection::vec(action, 1..3)), 0..12);
    prop::collection::vec(log, 1..4).prop_map(|logs| {
        let mut events = Vec::new();
        for (l, steps) in logs.into_iter().enumerate() {
            let mut clock = 0;
            for (counter, (step, actions)) in steps.into_iter().enumerate() {
                clock += step;
                events.push(event(clock, l as u8 + 1, counter as u64 + 1, actions));
            }
        }
        let positions: Vec<Position> = events.iter().map(|e| e.pos).collect();
        for e in &mut events {
            for a in &mut e.actions {
                if a.kind == "pick" {
                    let i = a.payload.as_u64().unwrap() as usize % positions.len();
                    *a = acl::delete_event(positions[i]);
                }
            }
        }
        events
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Replicas fed the same events in any order, in any batches, hold byte-identical
    /// views; so does one that opens over the journal from its latest snapshot.
    #[test]
    fn replicas_converge_whatever_the_arrival_order(
        (events, shuffled) in history().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let reference = dispatcher(3).await;
            reference.apply(events.clone(), None).await.unwrap();
            let expected = reference.snapshot().await;

            let n = shuffled.len();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(n + 1)).collect();
            cuts.push(n);
            cuts.sort();
            let replica = dispatcher(3).await;
            let mut start = 0;
            for cut in cuts {
                replica.apply(shuffled[start..cut].to_vec(), None).await.unwrap();
                start = cut;
            }
            prop_assert_eq!(replica.snapshot().await, expected.clone());
            // Snapshots taken at the same event hold the same bytes. (Which ones are kept
            // depends on what was pruned when, and on which were dropped by a deletion's
            // rewind: those between a deleted event and its deletion.)
            let ours = stored_snapshots(&replica).await;
            let theirs = stored_snapshots(&reference).await;
            for snapshot in &ours {
                if let Some(same) = theirs.iter().find(|t| t.0 == snapshot.0) {
                    prop_assert_eq!(same, snapshot);
                }
            }

            let mut state = replica.state.write().await;
            state.reload().await.unwrap();
            drop(state);
            prop_assert_eq!(replica.snapshot().await, expected);
            Ok(())
        })?;
    }
}

/// A journal file keeps its snapshots in files beside it: the newest four, each read back
/// when the journal is opened again; a damaged one is passed over for the one before, a file
/// no row names is removed, and removing the journal removes them all.
#[tokio::test]
async fn a_journal_file_keeps_its_snapshots_in_files_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    let snapshots = dir.path().join("journal.sqlite.snapshots");
    let open = || async {
        let journal = Journal::open(Some(&path)).await.unwrap();
        let stores: Vec<(String, Box<dyn View>)> =
            vec![(kv::STORE.into(), Box::new(KvStore::default()))];
        Dispatcher::open(journal, stores, Options { snapshot_every: 2 })
            .await
            .unwrap()
    };
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let d = open().await;
    let events = (1..=12)
        .map(|i| event(i, 1, i, vec![kv::put(&format!("k{i}"), json!(i))]))
        .collect();
    d.apply(events, None).await.unwrap();
    let kept = files();
    assert_eq!(kept.len(), journal::KEEP_SNAPSHOTS as usize, "{kept:?}");
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&snapshots), 0o700);
    assert_eq!(mode(&snapshots.join(&kept[0])), 0o600);
    let newest = event(12, 1, 12, vec![]).pos;
    assert_eq!(kept[3], format!("{}.cbor", hex::encode(newest.key())));
    drop(d);

    // The newest is damaged, and a file no row names lies beside them.
    std::fs::write(snapshots.join(&kept[3]), b"damaged").unwrap();
    std::fs::write(snapshots.join("stray.cbor.partial"), b"half").unwrap();
    let d = open().await;
    assert_eq!(
        d.applied().await.0,
        12,
        "from the snapshot before, then the journal"
    );
    assert_eq!(get(&d, "k12").await, Some(json!(12)));
    assert!(!files().contains(&"stray.cbor.partial".to_owned()));

    // A late event rewinds to a snapshot before it and drops the ones after.
    d.apply(
        vec![event(5, 2, 1, vec![kv::put("k5", json!("late"))])],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        get(&d, "k5").await,
        Some(json!(5)),
        "sorts before (5, log 1)"
    );
    assert!(files().len() <= journal::KEEP_SNAPSHOTS as usize);
    drop(d);

    Journal::remove(&path).unwrap();
    assert!(!path.exists() && !snapshots.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Writers who wrote apart, caught up in batches that each hold one writer's events: every
/// second batch sorts among the one before it. From the first late batch on, the views are
/// kept as they stood just before each batch's first event, the next late batch rewinds
/// there, and the views end as those of a replica fed everything at once.
#[tokio::test]
async fn late_batches_rewind_to_the_views_just_before_the_batch_before() {
    let d = dispatcher(0).await;
    let put = |clock: u64| vec![kv::put(&format!("k{}", clock % 7), json!(clock))];
    let mut all: Vec<Event> = Vec::new();
    for round in 0..5u64 {
        for writer in [1, 2] {
            // Both writers at the same clocks, each with its own counters.
            let events: Vec<Event> = (1..=9)
                .map(|i| event(10 * round + i, writer, 9 * round + i, put(10 * round + i)))
                .collect();
            all.extend(events.clone());
            let first = events.iter().map(|e| e.pos).min().unwrap();
            let applied = d.apply(events, None).await.unwrap();
            assert_eq!(applied.rewound, writer == 2);
            let checkpoint = d
                .state
                .read()
                .await
                .views
                .checkpoint
                .as_ref()
                .map(|c| c.pos);
            let before_first = all.iter().map(|e| e.pos).filter(|p| *p < first).max();
            if round == 0 && writer == 1 {
                assert_eq!(checkpoint, None, "nothing arrived late before");
            } else {
                assert_eq!(checkpoint, before_first, "round {round}, writer {writer}");
            }
        }
    }
    let reference = dispatcher(0).await;
    reference.apply(all, None).await.unwrap();
    assert_eq!(d.snapshot().await, reference.snapshot().await);
}

/// A snapshot taken between a deleted event and its deletion holds the deleted event's
/// effects: a later deletion must not rewind to it (carrying the first deletion over, the
/// deleted event would never be taken out again).
#[tokio::test]
async fn a_later_deletion_does_not_rewind_to_a_snapshot_holding_an_earlier_deleted_event() {
    let first = event(1, 1, 1, vec![kv::put("a", json!(1))]);
    let second = event(2, 1, 2, vec![kv::put("b", json!(2))]);
    let third = event(3, 1, 3, vec![acl::delete_event(first.pos)]);
    let fourth = event(4, 1, 4, vec![kv::put("c", json!(4))]);
    let fifth = event(5, 1, 5, vec![acl::delete_event(fourth.pos)]);
    let d = dispatcher(1).await;
    d.apply(vec![first, second], None).await.unwrap();
    d.apply(vec![third, fourth, fifth], None).await.unwrap();
    assert_eq!(get(&d, "a").await, None, "deleted by the third event");
    assert_eq!(get(&d, "b").await, Some(json!(2)));
    assert_eq!(get(&d, "c").await, None, "deleted by the fifth event");
}
