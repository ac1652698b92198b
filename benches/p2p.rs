//! libp2p benchmark: prints how fast a follower replicates another over loopback, and how long
//! a record pushed to a follower takes to reach 50 gossip subscribers.
//!
//! ```text
//! cargo bench --bench p2p                 # both (a replica on Postgres too with THREADS_TEST_PG)
//! cargo bench --bench p2p -- replication  # or: gossip
//! ```

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use threads_client::car::{read_car, write_car, CarItem, CAR};
use threads_core::auth::pull_token;
use threads_core::{Cid, ThreadId, VerifiedRecord};
use threads_net::{host, Config, Inbound, Verdict};
use tokio::sync::mpsc;

/// Replication: 100,000 records of 1 KiB in 10 logs of one thread.
const RECORDS: usize = 100_000;
const LOGS: usize = 10;
const BODY: usize = 1024;
/// Gossip: subscribers, and records pushed one at a time.
const SUBSCRIBERS: usize = 50;
const SAMPLES: usize = 200;

async fn push_car(http: &reqwest::Client, url: &str, items: Vec<CarItem<'_>>) {
    let response = http
        .post(format!("{url}/v1/records"))
        .header("content-type", CAR)
        .body(write_car(items).await)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "push: {}",
        response.status()
    );
}

async fn records_at(http: &reqwest::Client, url: &str, thread: &ThreadId, token: &str) -> u64 {
    let info = common::get_json(http, &format!("{url}/v1/threads/{thread}?token={token}")).await;
    info["records"].as_u64().unwrap_or(0)
}

/// `database_url`: where the replica stores (SQLite when `None`); the source is SQLite.
async fn replication(database_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (_a, a_url, a_p2p) = common::serve_p2p(&dir.path().join("a"), None, &[]).await;
    let logs = common::logs(1, LOGS);
    let per_log: Vec<Vec<VerifiedRecord>> = logs
        .iter()
        .map(|l| common::records(l, RECORDS / LOGS, BODY, None))
        .collect();
    for log in &logs {
        common::register(&http, &a_url, log).await;
    }
    for (log, records) in logs.iter().zip(&per_log) {
        for chunk in records.chunks(1000) {
            let items = chunk
                .iter()
                .map(|r| CarItem::new(&log.id, &log.thread, r.blocks()));
            push_car(&http, &a_url, items.collect()).await;
        }
    }
    let thread = &logs[0].thread;
    let token = pull_token(logs[0].keys.service(), thread);
    assert_eq!(
        records_at(&http, &a_url, thread, &token).await,
        RECORDS as u64
    );

    let replicate = format!(
        "[{{from = \"{a_p2p}/thread/{thread}\", follow_key = \"{}\"}}]",
        logs[0].keys.follow_only().to_multibase().as_str()
    );
    let source_cpu = common::cpu_secs(&_a.id().unwrap().to_string());
    let started = Instant::now();
    let (_b, b_url, _) = common::serve_p2p(
        &dir.path().join("b"),
        database_url.as_deref(),
        &[("THREADS_P2P__REPLICATE", &replicate)],
    )
    .await;
    let up = started.elapsed();
    while records_at(&http, &b_url, thread, &token).await < RECORDS as u64 {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let secs = (started.elapsed() - up).as_secs_f64();
    let cpu = |child: &tokio::process::Child| common::cpu_secs(&child.id().unwrap().to_string());
    let (source, replica) = (cpu(&_a) - source_cpu, cpu(&_b));
    println!(
        "replicate {RECORDS} records ({LOGS} logs, {BODY} B bodies) from a follower, replica on {}: \
         {secs:.2} s = {:.0} records/s (after a {:.0} ms start); CPU: source {source:.2} s, \
         replica {replica:.2} s",
        if database_url.is_some() { "Postgres" } else { "SQLite" },
        RECORDS as f64 / secs,
        up.as_secs_f64() * 1e3
    );
}

async fn gossip() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let (_server, url, p2p) = common::serve_p2p(dir.path(), None, &[]).await;
    let log = &common::logs(1, 1)[0];
    common::register(&http, &url, log).await;
    let samples = common::records(log, SAMPLES + 1, BODY, None);
    let topic = log.thread.to_string();

    // Every subscriber reports what it hears, with when, to one collector.
    let (heard, mut arrivals) = mpsc::unbounded_channel::<(Instant, Cid)>();
    let mut subscribers = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let config = Config {
            listen: vec![],
            ..Config::default()
        };
        let (peer, mut inbound) =
            host::start(threads_net::Keypair::generate_ed25519(), config).unwrap();
        peer.dial(p2p.parse().unwrap()).await.unwrap();
        peer.subscribe(&topic).await.unwrap();
        let (heard, handle) = (heard.clone(), peer.clone());
        tokio::spawn(async move {
            while let Some(item) = inbound.recv().await {
                if let Inbound::Gossip { peer, id, data, .. } = item {
                    let at = Instant::now();
                    let records = read_car(&data).await.unwrap();
                    let _ = heard.send((at, threads_core::cid_of(&records[0].blocks.record)));
                    let _ = handle.report(id, peer, Verdict::Accept).await;
                }
            }
        });
        subscribers.push(peer);
    }
    drop(heard);

    // A first record, until every subscriber hears it: the mesh is up.
    let mut heard_first = 0;
    push_car(
        &http,
        &url,
        vec![CarItem::new(&log.id, &log.thread, samples[0].blocks())],
    )
    .await;
    while heard_first < SUBSCRIBERS {
        tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
            .await
            .expect("every subscriber hears the first record");
        heard_first += 1;
    }

    let mut sent: HashMap<Cid, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    for record in &samples[1..] {
        sent.insert(record.cid(), Instant::now());
        push_car(
            &http,
            &url,
            vec![CarItem::new(&log.id, &log.thread, record.blocks())],
        )
        .await;
        let mut got = 0;
        while got < SUBSCRIBERS {
            match tokio::time::timeout(Duration::from_secs(2), arrivals.recv()).await {
                Ok(Some((at, cid))) => {
                    latencies.push((at - sent[&cid]).as_secs_f64() * 1e3);
                    got += 1;
                }
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let expected = SUBSCRIBERS * SAMPLES;
    latencies.sort_by(f64::total_cmp);
    println!(
        "gossip to {SUBSCRIBERS} subscribers, {SAMPLES} records pushed one at a time over HTTP: \
         {} of {expected} deliveries; push to delivery p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        common::percentile(&latencies, 0.5),
        common::percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let pick = |part: &str| args.is_empty() || args.iter().any(|a| a == part);
    println!("p2p benchmark (loopback)");
    if pick("replication") {
        replication(None).await;
        if std::env::var_os("THREADS_TEST_PG").is_some() {
            replication(Some(
                threads_store::testing::fresh_postgres_database().await,
            ))
            .await;
        } else {
            println!("(replica on Postgres skipped: set THREADS_TEST_PG, or run scripts/bench)");
        }
    }
    if pick("gossip") {
        gossip().await;
    }
}
