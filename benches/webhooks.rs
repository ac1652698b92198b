//! Webhook benchmark: prints how many deliveries per second reach a local receiver across 50
//! endpoints, and the ingest rate while they flow.
//!
//! ```text
//! cargo bench --bench webhooks                # Postgres (THREADS_TEST_PG) if set, else SQLite
//! cargo bench --bench webhooks -- baseline    # the same ingest without webhooks
//! THREADS_WEBHOOKS__MAX_PER_SECOND=3000 cargo bench --bench webhooks   # deliveries capped
//! ```
//!
//! The server inherits the environment, so any `THREADS_WEBHOOKS__*` setting applies.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand_core::OsRng;
use serde_json::{json, Value};
use threads_core::auth::{Action, SignedRequest};
use threads_core::{Keypair, LogId, ThreadId, ThreadKey, Variant, VerifiedRecord};

/// As the target is stated: 50 endpoints. One thread per endpoint, 20 logs per thread
/// (1,000 logs), 1 KiB bodies.
const ENDPOINTS: usize = 50;
const LOGS_PER_THREAD: usize = 20;
const BODY: usize = 1024;
/// 100 records per log: 100,000 records, each delivered once; ingest lasts seconds, long
/// enough to be measured steadily.
const RECORDS_PER_LOG: usize = 100;
/// Pushed as in the follower benchmark: batches of 500 by 4 pushers.
const BATCH: usize = 500;
const PUSHERS: usize = 4;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::main]
async fn main() {
    // `baseline`: the same ingest with no webhook, for comparison.
    let baseline = std::env::args().any(|a| a == "baseline");
    let dir = tempfile::tempdir().unwrap();
    let database_url = match std::env::var_os(threads_store::testing::POSTGRES_ENV) {
        Some(_) => Some(threads_store::testing::fresh_postgres_database().await),
        None => None,
    };
    let backend = if database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };

    // The receiver: counts deliveries to its endpoints `/hook/{n}`.
    let (receiver, received) = common::receiver().await;

    // Kept until the end: dropping it stops the server.
    let (_server, url) = common::serve(
        dir.path(),
        database_url.as_deref(),
        &[("THREADS_WEBHOOKS__ALLOW_PRIVATE_ADDRESSES", "true")],
    )
    .await;
    let http = reqwest::Client::new();
    let server_id: Value = http
        .get(format!("{url}/v1/server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let server_id = server_id["server_id"].as_str().unwrap().to_owned();

    // Threads, logs and records, built and signed before any clock starts.
    let author = Keypair::generate(&mut OsRng).public();
    let body = serde_ipld_dagcbor::to_vec(&ipld_core::ipld::Ipld::Bytes(vec![7u8; BODY])).unwrap();
    let mut batches: Vec<Vec<Value>> = Vec::new();
    for n in 0..ENDPOINTS {
        let thread = ThreadId::random(Variant::Raw, &mut OsRng);
        let keys = ThreadKey::random(&mut OsRng);
        let mut items = Vec::new();
        let mut logs = Vec::new();
        for l in 0..LOGS_PER_THREAD {
            let pair = Keypair::generate(&mut OsRng);
            let sign = |action| {
                SignedRequest::sign(&server_id, &thread, &pair, action, now_ms(), &mut OsRng)
            };
            let r = http
                .post(format!("{url}/v1/registrations"))
                .json(&sign(Action::Register {
                    follow_key: keys.follow_only().to_multibase().to_string(),
                    addrs: vec![],
                    public: true,
                }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
            if l == 0 && !baseline {
                let r = http
                    .post(format!("{url}/v1/webhooks"))
                    .json(&sign(Action::Subscribe {
                        url: format!("{receiver}/hook/{n}"),
                        only_log: None,
                    }))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            }
            logs.push(pair);
        }
        let mut heads = vec![None; LOGS_PER_THREAD];
        for _ in 0..RECORDS_PER_LOG {
            for (l, pair) in logs.iter().enumerate() {
                let r = VerifiedRecord::create(&body, &keys, pair, &author, heads[l], &mut OsRng)
                    .unwrap();
                heads[l] = Some(r.cid());
                let b = r.blocks();
                items.push(json!({
                    "thread": thread.to_string(), "log": LogId::from(pair.public()).to_string(),
                    "record": B64.encode(&b.record), "event": B64.encode(&b.event),
                    "header": B64.encode(&b.header), "body": B64.encode(&b.body),
                }));
            }
        }
        for chunk in items.chunks(BATCH) {
            batches.push(chunk.to_vec());
        }
    }
    let total = ENDPOINTS * LOGS_PER_THREAD * RECORDS_PER_LOG;
    let per_thread = batches.len() / ENDPOINTS;
    let batches: Arc<Vec<String>> = Arc::new(
        batches
            .into_iter()
            .map(|b| json!({ "records": b }).to_string())
            .collect(),
    );

    let limit = std::env::var("THREADS_WEBHOOKS__MAX_PER_SECOND")
        .ok()
        .filter(|l| l != "0")
        .map_or("no delivery limit".to_owned(), |l| {
            format!("at most {l} deliveries/s")
        });
    println!(
        "webhook benchmark ({backend}): {ENDPOINTS} endpoints, {total} records of {BODY} B, one delivery each, {limit}"
    );
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..PUSHERS {
        let (http, url, batches, next) = (http.clone(), url.clone(), batches.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let t = next.fetch_add(1, Ordering::Relaxed);
                if t >= ENDPOINTS {
                    break;
                }
                for batch in &batches[t * per_thread..(t + 1) * per_thread] {
                    let r = http
                        .post(format!("{url}/v1/records"))
                        .header("content-type", "application/json")
                        .body(batch.clone())
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ingest = started.elapsed().as_secs_f64();
    let at_ingest_end = received.load(Ordering::Relaxed);
    if baseline {
        println!(
            "ingest without webhooks: {total} records in {ingest:.2} s = {:.0} records/s",
            total as f64 / ingest
        );
        return;
    }
    while received.load(Ordering::Relaxed) < total {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "deliveries stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let all = started.elapsed().as_secs_f64();
    println!(
        "ingest while delivering: {total} records in {ingest:.2} s = {:.0} records/s ({at_ingest_end} delivered by then)",
        total as f64 / ingest
    );
    println!(
        "deliveries: {total} in {all:.2} s from the first push = {:.0} deliveries/s",
        total as f64 / all
    );
}
