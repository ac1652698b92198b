//! The database's figures: reducing events into a key/value view, rebuilding a large view from
//! a snapshot, and indexed queries over many documents.
//!
//! `cargo bench -p threads-db --bench db [reduce|rebuild|sync|query|snapshot]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use threads_client::Client;
use threads_db::journal::Journal;
use threads_db::{
    docs, kv, Action, Config, Database, Dispatcher, DocStore, Envelope, Event, KvStore, Options,
    Position, View,
};

/// Events per `apply` call: what one sync reads from the local store per transaction.
const BATCH: usize = 5_000;
/// Distinct keys the events write: enough that the view does not stay in one cache line,
/// few enough that most puts overwrite (as long-lived data does).
const KEYS: u64 = 100_000;

fn kv_event(i: u64) -> Event {
    // Three writers taking turns, as concurrent writers' clocks interleave.
    Event {
        pos: Position {
            clock: i / 3 + 1,
            log: [(i % 3) as u8 + 1; 32],
            counter: i / 3 + 1,
        },
        actions: vec![kv::put(
            &format!("key/{}", i % KEYS),
            json!({"n": i, "tag": "abcdefgh"}),
        )],
    }
}

/// The events, made before any clock starts, in the batches `apply` takes.
fn batches(events: u64) -> Vec<Vec<Event>> {
    (0..events)
        .step_by(BATCH)
        .map(|start| {
            (start..(start + BATCH as u64).min(events))
                .map(kv_event)
                .collect()
        })
        .collect()
}

async fn dispatcher(path: Option<&std::path::Path>, snapshot_every: u64) -> Dispatcher {
    let journal = Journal::open(path).await.unwrap();
    let stores: Vec<(String, Box<dyn View>)> =
        vec![(kv::STORE.into(), Box::new(KvStore::default()))];
    Dispatcher::open(journal, stores, Options { snapshot_every })
        .await
        .unwrap()
}

/// Journals and reduces 1,000,000 events in order, in batches, into a journal file.
async fn reduce() {
    const EVENTS: u64 = 1_000_000;
    for (label, every) in [
        ("snapshots every 10,000 events", 10_000),
        ("snapshots every 100,000 events (the default)", 100_000),
        ("no snapshots", 0),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dispatcher(Some(&dir.path().join("journal.sqlite")), every).await;
        let batches = batches(EVENTS);
        let start = Instant::now();
        for batch in batches {
            d.apply(batch, None).await.unwrap();
        }
        let took = start.elapsed();
        println!(
            "reduce into a key/value view, journal file, {label}: {EVENTS} events in {:.2} s = {:.0} events/s",
            took.as_secs_f64(),
            EVENTS as f64 / took.as_secs_f64()
        );
    }
}

/// A journal of 1,000,000 events with a snapshot at the millionth, plus 10,000 newer events:
/// the time to open it, which restores the snapshot and reduces the newer events.
async fn rebuild() {
    const EVENTS: u64 = 1_000_000;
    const NEWER: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sqlite");
    {
        let d = dispatcher(Some(&path), EVENTS).await;
        for batch in batches(EVENTS + NEWER) {
            d.apply(batch, None).await.unwrap();
        }
    }
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let d = dispatcher(Some(&path), EVENTS).await;
        let took = start.elapsed();
        assert_eq!(d.applied().await.0, EVENTS + NEWER);
        best = best.min(took);
    }
    let (_, bytes) = dispatcher(Some(&path), EVENTS).await.snapshot().await;
    println!(
        "rebuild a key/value view of {EVENTS} events ({KEYS} keys, snapshot {:.1} MiB) from its snapshot plus {NEWER} newer events: {:.0} ms (best of 5)",
        bytes.len() as f64 / (1 << 20) as f64,
        best.as_secs_f64() * 1e3
    );
}

/// Reduces one action into a document store.
fn apply(store: &mut DocStore, action: Action) {
    let at = threads_db::Context {
        pos: Position {
            clock: 1,
            log: [1; 32],
            counter: 1,
        },
        index: 0,
    };
    store.reduce(&at, &action).unwrap();
}

/// 100,000 documents with two indexed fields; each query's time over 2,000 runs.
fn query() {
    const DOCS: usize = 100_000;
    let cities = [
        "Oslo", "Bergen", "Lima", "Quito", "Hanoi", "Dakar", "Perth", "Turin",
    ];
    let mut store = DocStore::default();
    apply(
        &mut store,
        docs::create_collection("people", None, &["age", "city"]),
    );
    for i in 0..DOCS {
        let doc = json!({"_id": format!("p{i:06}"), "age": (i * 7919) % 100,
                         "city": cities[i % cities.len()], "name": format!("person {i}")});
        apply(&mut store, docs::insert("people", doc));
    }
    let queries = [
        (
            "equality on an index, sorted by another, first 20",
            json!({"where": {"field": "city", "eq": "Lima"}, "sort": {"field": "age"}, "limit": 20}),
        ),
        (
            "range on the sort index, descending, first 50",
            json!({"where": {"and": [{"field": "age", "gte": 30}, {"field": "age", "lt": 40}]},
                "sort": {"field": "age", "desc": true}, "limit": 50}),
        ),
        (
            "no usable index (a field not indexed), first 20, for contrast",
            json!({"where": {"field": "name", "eq": "person 500"}, "limit": 20}),
        ),
        (
            "equality AND range, or-ed condition, skip 100, limit 20",
            json!({"where": {"and": [{"field": "age", "eq": 42},
                                  {"or": [{"field": "city", "eq": "Oslo"}, {"field": "city", "eq": "Perth"}]}]},
                "skip": 100, "limit": 20}),
        ),
    ];
    for (label, q) in queries {
        let mut times: Vec<Duration> = (0..2_000)
            .map(|_| {
                let start = Instant::now();
                let page = store.find("people", &q).unwrap();
                let took = start.elapsed();
                std::hint::black_box(page);
                took
            })
            .collect();
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "indexed query over {DOCS} documents, {label}: median {:.3} ms, p99 {:.3} ms",
            ms(times[times.len() / 2]),
            ms(times[times.len() * 99 / 100])
        );
    }
}

/// A snapshot of a document view of 100,000 documents of about 1 KiB (the bot's benchmark
/// makes one at its 100,000th event): taking it, and restoring it.
fn snapshot(runtime: &tokio::runtime::Runtime) {
    const DOCS: usize = 100_000;
    let mut store = DocStore::default();
    apply(&mut store, docs::create_collection("items", None, &["n"]));
    for i in 0..DOCS {
        let doc = json!({"_id": format!("w{}-{i}", i % 10), "n": i, "writer": i % 10,
                         "data": "x".repeat(900)});
        apply(&mut store, docs::insert("items", doc));
    }
    let mut taken = Vec::new();
    let mut bytes = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        bytes = store.snapshot();
        taken.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mut restored = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        store.restore(&bytes).unwrap();
        restored.push(start.elapsed().as_secs_f64() * 1e3);
    }
    // Stored for a journal file (in a file of its own), as a dispatcher stores it, in a
    // transaction of its own.
    let dir = tempfile::tempdir().unwrap();
    let saved = runtime.block_on(async {
        let mut journal = Journal::open(Some(&dir.path().join("journal.sqlite")))
            .await
            .unwrap();
        let files = journal.files();
        let mut saved = Vec::new();
        for counter in 1..=3 {
            let snapshot = threads_db::journal::StoredSnapshot {
                pos: Position {
                    clock: counter,
                    log: [1; 32],
                    counter,
                },
                events: DOCS as u64,
                bytes: bytes.clone(),
            };
            let start = Instant::now();
            let mut tx = journal.begin().await.unwrap();
            threads_db::journal::save_snapshot(&mut tx, &files, snapshot)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            saved.push(start.elapsed().as_secs_f64() * 1e3);
        }
        saved
    });
    let best = |t: &[f64]| t.iter().copied().fold(f64::MAX, f64::min);
    println!(
        "snapshot of a document view of {DOCS} documents ({:.1} MiB): taken in {:.0} ms, restored in {:.0} ms, stored in a journal file in {:.0} ms (best of 3)",
        bytes.len() as f64 / (1 << 20) as f64,
        best(&taken),
        best(&restored),
        best(&saved)
    );
}

/// A peer whose local store holds 100,000 database events of its own (signed and encrypted
/// records): the time for a database to catch up on them, reading, decrypting, journaling
/// and reducing each.
async fn sync() {
    const EVENTS: u64 = 100_000;
    let home = tempfile::tempdir().unwrap();
    let client = Arc::new(Client::open(home.path()).await.unwrap());
    let thread = client.create_thread(true).await.unwrap().thread;
    for batch in batches(EVENTS) {
        let bodies: Vec<_> = batch
            .into_iter()
            .map(|e| Envelope::new(e.pos.counter, 0, e.actions).to_body())
            .collect();
        client.write_many(&thread, &bodies).await.unwrap();
    }
    for (label, path) in [
        ("in memory", None),
        ("in a file", Some(home.path().join("db.sqlite"))),
    ] {
        let stores: Vec<(String, Box<dyn View>)> =
            vec![(kv::STORE.into(), Box::new(KvStore::default()))];
        let config = Config {
            path,
            options: Options::default(),
        };
        let start = Instant::now();
        let db = Database::open(client.clone(), thread.clone(), stores, config)
            .await
            .unwrap();
        let took = start.elapsed();
        assert_eq!(db.dispatcher().applied().await.0, EVENTS);
        println!(
            "catch a database up on {EVENTS} events of the local store (journal {label}): {:.2} s = {:.0} events/s",
            took.as_secs_f64(),
            EVENTS as f64 / took.as_secs_f64()
        );
    }
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if wants("reduce") {
        runtime.block_on(reduce());
    }
    if wants("rebuild") {
        runtime.block_on(rebuild());
    }
    if wants("sync") {
        runtime.block_on(sync());
    }
    if wants("query") {
        query();
    }
    if wants("snapshot") {
        snapshot(&runtime);
    }
}
