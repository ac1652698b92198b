//! Load generator for the follower server: prints ingest, catch-up, push-latency and memory
//! figures. The server runs as its own process (release build), the load generator in this one,
//! and Postgres in a third, all on this machine.
//!
//! ```text
//! scripts/bench                                   # both backends (starts Postgres itself)
//! cargo bench --bench follower -- sqlite          # one backend; Postgres needs THREADS_TEST_PG
//! cargo bench --bench follower -- postgres ingest # the ingest figure only (or: catch-up, feeds)
//! ```

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use threads_core::{ThreadId, VerifiedRecord};
use tokio::process::Child;

/// As the targets are stated: 1,000 logs, 1 KiB bodies.
const LOGS: usize = 1000;
const BODY: usize = 1024;
/// 100 records per log: 100,000 records, enough for several seconds of ingest.
const RECORDS_PER_LOG: usize = 100;
/// 10 threads of 100 logs: batches span many logs, as a busy follower sees them.
const THREADS: usize = 10;
/// Records per pushed batch, and concurrent pushers (two cores: a few in flight hide latency).
const BATCH: usize = 500;
const PUSHERS: usize = 4;
/// Catch-up page size: the server's default maximum.
const PAGE: usize = 1000;
/// Feed test: readers fetching at once (a few keep both cores busy), and fetches in all.
const FEED_READERS: usize = 8;
const FEED_FETCHES: usize = 4000;
/// Push-latency test: subscribers on one thread, and records pushed one at a time.
const SUBSCRIBERS: usize = 1000;
const LATENCY_SAMPLES: usize = 200;
/// Idle-connection memory test.
const IDLE_CONNECTIONS: usize = 10_000;
/// Connections opened at once (stays under the listen backlog).
const CONNECT_WAVE: usize = 200;

struct Server {
    url: String,
    child: Child,
}

impl Server {
    async fn start(database_url: Option<&str>, data_dir: &std::path::Path) -> (Self, Duration) {
        let started = Instant::now();
        let (child, url) = common::serve(
            data_dir,
            database_url,
            &[("THREADS_WEBSOCKET__MAX_CONNECTIONS", "20000")],
        )
        .await;
        (Self { url, child }, started.elapsed())
    }

    /// Resident memory of the server process, in MiB.
    fn rss_mib(&self) -> f64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb / 1024.0
    }
}

/// Pulls a whole thread by cursor; returns how many records came. Cursor, count and `more`
/// come from the page headers, so `parse` decides only whether the reader decodes the pages.
async fn catch_up(
    http: &reqwest::Client,
    url: &str,
    thread: &ThreadId,
    format: &str,
    parse: bool,
) -> usize {
    let (mut cursor, mut pulled) = (String::new(), 0);
    loop {
        let r = http
            .get(format!(
                "{url}/v1/threads/{thread}/records?limit={PAGE}&format={format}&after={cursor}"
            ))
            .send()
            .await
            .unwrap();
        cursor = r.headers()["x-threads-cursor"].to_str().unwrap().to_owned();
        let count: usize = r.headers()["x-threads-count"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let more = r.headers()["x-threads-more"] == "true";
        let bytes = r.bytes().await.unwrap();
        pulled += if !parse || count == 0 {
            std::hint::black_box(bytes.len());
            count
        } else if format == "car" {
            threads::server::v1::wire::read_car(&bytes)
                .await
                .unwrap()
                .len()
        } else {
            let page: Value = serde_json::from_slice(&bytes).unwrap();
            page["records"].as_array().unwrap().len()
        };
        if !more {
            return pulled;
        }
    }
}

async fn run(backend: &str, database_url: Option<String>, part: impl Fn(&str) -> bool) {
    println!("\n## backend: {backend}");
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();

    // Start-up and idle memory, on an empty database.
    let (server, ready_in) = Server::start(database_url.as_deref(), dir.path()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "start to ready: {:.0} ms; idle memory: {:.1} MiB",
        ready_in.as_secs_f64() * 1e3,
        server.rss_mib()
    );
    // Records are built and signed before any clock starts.
    let logs = common::logs(THREADS, LOGS / THREADS);
    let mut per_log: Vec<Vec<VerifiedRecord>> = logs
        .iter()
        .map(|log| common::records(log, RECORDS_PER_LOG, BODY, None))
        .collect();
    for log in &logs {
        common::register(&http, &server.url, log).await;
    }
    let batches = common::thread_batches(&logs, THREADS, &per_log, BATCH);
    let total = LOGS * RECORDS_PER_LOG;

    // Ingest: concurrent pushers, each taking the next thread not yet pushed.
    let started = Instant::now();
    common::push_threads(&http, &server.url, batches, PUSHERS).await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ingest: {total} records in {secs:.2} s = {:.0} records/s (verified, durable)",
        total as f64 / secs
    );

    if !part("reads") {
        return;
    }
    // Catch-up: one reader pulls whole threads, page after page; with parsing (as a reader
    // that uses the records) and without (as one that stores the pages as they come).
    // Every thread in turn: 100,000 records per figure.
    for (format, parse) in [
        ("car", true),
        ("json", true),
        ("car", false),
        ("json", false),
    ] {
        let started = Instant::now();
        let mut pulled = 0;
        for thread in logs.iter().take(THREADS).map(|l| &l.thread) {
            pulled += catch_up(&http, &server.url, thread, format, parse).await;
        }
        let secs = started.elapsed().as_secs_f64();
        let how = if parse { "parsed" } else { "bytes only" };
        println!(
            "catch-up pull ({format} pages of {PAGE}, {how}): {pulled} records in {secs:.2} s = {:.0} records/s",
            pulled as f64 / secs
        );
    }

    if !part("feeds") {
        return;
    }
    // Feeds: the current Atom and RSS feeds of a thread (100 entries), fetched whole (no
    // conditional GET) by concurrent readers.
    for format in ["atom", "rss"] {
        let url = format!("{}/v1/threads/{}/feed.{format}", server.url, logs[0].thread);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..FEED_READERS {
            let (http, url) = (http.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..FEED_FETCHES / FEED_READERS {
                    let r = http.get(&url).send().await.unwrap();
                    assert!(r.status().is_success());
                    std::hint::black_box(r.bytes().await.unwrap().len());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{format} feed of 100 entries: {FEED_FETCHES} fetches in {secs:.2} s = {:.0} feeds/s ({FEED_READERS} readers)",
            FEED_FETCHES as f64 / secs
        );
    }

    if !part("connections") {
        return;
    }
    // Push latency: 1,000 subscribers on one thread; one record at a time.
    let log_index = 0;
    let log = &logs[log_index];
    let info = common::get_json(&http, &format!("{}/v1/threads/{}", server.url, log.thread)).await;
    let cursor = info["cursor"].as_str().unwrap().to_owned();
    let ws_url = format!(
        "{}/v1/ws?thread={}&cursor={cursor}",
        server.url.replace("http://", "ws://"),
        log.thread
    );
    let mut rx = common::subscribers(&ws_url, SUBSCRIBERS, CONNECT_WAVE).await;
    let prev = per_log[log_index].last().map(|r| r.cid());
    let extra = common::records(log, LATENCY_SAMPLES, BODY, prev);
    per_log[log_index].extend(extra.iter().cloned());
    let mut latencies = Vec::with_capacity(SUBSCRIBERS * LATENCY_SAMPLES);
    let mut sent_at = BTreeMap::new();
    for (i, record) in extra.iter().enumerate() {
        let batch = json!({"records": [common::record_json(log, record)]}).to_string();
        let at = Instant::now();
        sent_at.insert(i, at);
        let r = http
            .post(format!("{}/v1/records", server.url))
            .header("content-type", "application/json")
            .body(batch)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let mut got = 0;
        while got < SUBSCRIBERS {
            let (n, when) = rx.recv().await.unwrap();
            latencies.push(when.duration_since(sent_at[&n]).as_secs_f64() * 1e3);
            got += 1;
        }
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "push to {SUBSCRIBERS} WebSocket subscribers ({LATENCY_SAMPLES} records, push request to receipt): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        common::percentile(&latencies, 0.5),
        common::percentile(&latencies, 0.99),
        latencies.last().unwrap()
    );
    drop(server);

    // Idle connections: a fresh server, 10,000 WebSockets doing nothing.
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = Server::start(database_url.as_deref(), dir.path()).await;
    let before = server.rss_mib();
    let ws_url = format!("{}/v1/ws", server.url.replace("http://", "ws://"));
    let mut sockets = Vec::with_capacity(IDLE_CONNECTIONS);
    for wave in 0..IDLE_CONNECTIONS / CONNECT_WAVE {
        let mut joins = Vec::new();
        for _ in 0..CONNECT_WAVE {
            let url = ws_url.clone();
            joins.push(tokio::spawn(async move {
                tokio_tungstenite::connect_async(url)
                    .await
                    .map(|(ws, _)| ws)
            }));
        }
        for j in joins {
            sockets.push(
                j.await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("wave {wave}: {e}")),
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss_mib();
    println!(
        "{IDLE_CONNECTIONS} idle WebSocket connections: server memory {after:.1} MiB ({:.1} MiB over the {before:.1} MiB before)",
        after - before
    );
    for mut s in sockets {
        let _ = s.close(None).await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let backends = ["sqlite", "postgres"];
    let pick = |name: &str| {
        !args.iter().any(|a| backends.contains(&a.as_str())) || args.contains(&name.to_owned())
    };
    // `ingest` stops each run after the ingest figure, `catch-up` after the catch-up figures,
    // `feeds` after the feed figures (for quick comparisons).
    let stop = |a: &str| args.iter().any(|x| x == a);
    let part = |name: &str| match name {
        "reads" => !stop("ingest"),
        "feeds" => !stop("ingest") && !stop("catch-up"),
        _ => !stop("ingest") && !stop("catch-up") && !stop("feeds"),
    };
    println!("follower benchmark: {LOGS} logs in {THREADS} threads, {BODY} B bodies, batches of {BATCH}, {PUSHERS} pushers");
    if pick("sqlite") {
        run("sqlite (embedded default)", None, part).await;
    }
    if pick("postgres") {
        if std::env::var_os(threads_store::testing::POSTGRES_ENV).is_some() {
            let url = threads_store::testing::fresh_postgres_database().await;
            run("postgres", Some(url), part).await;
        } else {
            println!("\n(postgres skipped: set THREADS_TEST_PG, or run scripts/bench)");
        }
    }
}
