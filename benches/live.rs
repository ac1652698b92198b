//! Live writes: records pushed one per request, as an app writes each message when it happens,
//! against the same records pushed in batches; and one record fanned out to WebSocket
//! subscribers. Prints push rates, acknowledgement latencies, the server's CPU per push and
//! fan-out latencies. The server is its own release process; writers (each on a bare hyper
//! connection) and subscribers are Rust clients in this one.
//!
//! ```text
//! cargo bench --bench live                      # both backends (Postgres needs THREADS_TEST_PG)
//! cargo bench --bench live -- sqlite            # one backend
//! cargo bench --bench live -- postgres fan-out  # one part (or: batched, concurrent, sequential)
//! ```
//!
//! With `THREADS_BENCH_ACKS=<file>`, the 64-in-flight part writes each push's send time and
//! time to its ack (milliseconds from the part's start) to the file, one push a line.

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

const BODY: usize = 1024;
/// Batched: 4 pushers, each pushing one thread of 25 logs in batches of 500 (50,000 records).
const BATCH: usize = 500;
const BATCH_THREADS: usize = 4;
const BATCH_LOGS_PER_THREAD: usize = 25;
const BATCH_RECORDS_PER_LOG: usize = 500;
/// Concurrent: 64 writers (8 threads of 8 logs), each pushing its records one at a time.
const WRITERS: usize = 64;
const WRITER_THREADS: usize = 8;
const RECORDS_PER_WRITER: usize = 150;
/// Sequential: one writer, one record at a time.
const SEQUENTIAL: usize = 2000;
/// Fan-out: subscribers on one thread, records pushed one at a time.
const SUBSCRIBERS: usize = 500;
const FAN_OUT_SAMPLES: usize = 1000;
const CONNECT_WAVE: usize = 100;

struct Run {
    url: String,
    pid: String,
    http: reqwest::Client,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Run {
    async fn start(database_url: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (child, url) = common::serve(dir.path(), database_url, &[]).await;
        Self {
            url,
            pid: child.id().unwrap().to_string(),
            http: reqwest::Client::new(),
            _child: child,
            _dir: dir,
        }
    }

    fn cpu(&self) -> f64 {
        common::cpu_secs(&self.pid)
    }

    /// Group commits so far.
    async fn commit_groups(&self) -> f64 {
        common::metric(&self.http, &self.url, "threads_commit_group_pushes_count").await
    }

    /// A writer's own keep-alive connection.
    async fn writer(&self) -> Writer {
        Writer::connect(&self.url).await
    }
}

/// One writer's HTTP/1.1 keep-alive connection, spoken with hyper's client connection alone:
/// the writers share the machine's two cores with the server, so each request should cost
/// the client as little as it can (no pool, no URL parsing, no redirect policy: about half
/// of `reqwest`'s CPU per push).
struct Writer {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    host: String,
}

impl Writer {
    async fn connect(url: &str) -> Self {
        let host = url.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (send, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        Self { send, host }
    }

    /// Pushes one JSON batch; returns how long until it was acknowledged.
    async fn push(&mut self, body: String) -> Duration {
        use http_body_util::BodyExt;
        let at = Instant::now();
        let request = hyper::Request::post("/v1/records")
            .header(hyper::header::HOST, &self.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        self.send.ready().await.unwrap();
        let response = self.send.send_request(request).await.unwrap();
        let status = response.status();
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert!(status.is_success(), "push: {status} {text:?}");
        at.elapsed()
    }
}

/// One-record push bodies of each log, in chain order.
fn single_pushes(logs: &[common::Log], per_log: usize) -> Vec<Vec<String>> {
    logs.iter()
        .map(|log| {
            common::records(log, per_log, BODY, None)
                .iter()
                .map(|r| json!({"records": [common::record_json(log, r)]}).to_string())
                .collect()
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// p50 and p99 of latencies in milliseconds, and the largest.
fn spread(mut samples: Vec<f64>) -> String {
    samples.sort_by(f64::total_cmp);
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        common::percentile(&samples, 0.5),
        common::percentile(&samples, 0.99),
        samples.last().unwrap()
    )
}

/// Records per second of batched pushes.
async fn batched(run: &Run) -> f64 {
    let logs = common::logs(BATCH_THREADS, BATCH_LOGS_PER_THREAD);
    for log in &logs {
        common::register(&run.http, &run.url, log).await;
    }
    let per_log: Vec<_> = logs
        .iter()
        .map(|l| common::records(l, BATCH_RECORDS_PER_LOG, BODY, None))
        .collect();
    let per_thread = common::thread_batches(&logs, BATCH_THREADS, &per_log, BATCH);
    let total = logs.len() * BATCH_RECORDS_PER_LOG;
    let mut writers = Vec::new();
    for _ in 0..per_thread.len() {
        writers.push(run.writer().await);
    }
    let (cpu, started) = (run.cpu(), Instant::now());
    let pushers = per_thread
        .into_iter()
        .zip(writers)
        .map(|(batches, mut writer)| async move {
            for batch in batches {
                writer.push(batch).await;
            }
        });
    futures_util::future::join_all(pushers).await;
    let secs = started.elapsed().as_secs_f64();
    let rate = total as f64 / secs;
    println!(
        "batched: {total} records in batches of {BATCH}, {BATCH_THREADS} pushers: {rate:.0} records/s; \
         server CPU {:.1} µs per record",
        (run.cpu() - cpu) / total as f64 * 1e6
    );
    rate
}

/// Records per second of one-record pushes from concurrent writers.
async fn concurrent(run: &Run) -> f64 {
    let logs = common::logs(WRITER_THREADS, WRITERS / WRITER_THREADS);
    for log in &logs {
        common::register(&run.http, &run.url, log).await;
    }
    let bodies = single_pushes(&logs, RECORDS_PER_WRITER);
    let total = WRITERS * RECORDS_PER_WRITER;
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(run.writer().await);
    }
    let groups = run.commit_groups().await;
    let (cpu, client, started) = (run.cpu(), common::cpu_secs("self"), Instant::now());
    let tasks = bodies
        .into_iter()
        .zip(writers)
        .map(|(pushes, mut writer)| async move {
            let mut acks = Vec::with_capacity(pushes.len());
            for push in pushes {
                let sent = started.elapsed();
                acks.push((ms(sent), ms(writer.push(push).await)));
            }
            acks
        });
    let timed: Vec<(f64, f64)> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect();
    if let Some(path) = std::env::var_os("THREADS_BENCH_ACKS") {
        let lines: String = timed
            .iter()
            .map(|(sent, ack)| format!("{sent:.3} {ack:.3}\n"))
            .collect();
        std::fs::write(path, lines).expect("the acks file is written");
    }
    let acks: Vec<f64> = timed.into_iter().map(|(_, ack)| ack).collect();
    let secs = started.elapsed().as_secs_f64();
    let rate = total as f64 / secs;
    let (cpu, client) = (run.cpu() - cpu, common::cpu_secs("self") - client);
    let groups = run.commit_groups().await - groups;
    println!(
        "one record per push, {WRITERS} in flight: {total} records: {rate:.0} records/s; ack {}; \
         CPU per push: server {:.0} µs, client {:.0} µs; {:.1} pushes per commit",
        spread(acks),
        cpu / total as f64 * 1e6,
        client / total as f64 * 1e6,
        total as f64 / groups
    );
    rate
}

async fn sequential(run: &Run) {
    let logs = common::logs(1, 1);
    common::register(&run.http, &run.url, &logs[0]).await;
    let pushes = single_pushes(&logs, SEQUENTIAL).remove(0);
    let mut writer = run.writer().await;
    let (cpu, client, started) = (run.cpu(), common::cpu_secs("self"), Instant::now());
    let mut acks = Vec::with_capacity(pushes.len());
    for push in pushes {
        acks.push(ms(writer.push(push).await));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "one record per push, 1 in flight: {SEQUENTIAL} records: {:.0} records/s; ack {}; \
         CPU per push: server {:.0} µs, client {:.0} µs",
        SEQUENTIAL as f64 / secs,
        spread(acks),
        (run.cpu() - cpu) / SEQUENTIAL as f64 * 1e6,
        (common::cpu_secs("self") - client) / SEQUENTIAL as f64 * 1e6
    );
}

/// Records pushed one at a time to a thread with subscribers: from the push to each receipt,
/// and to the last subscriber's.
async fn fan_out(run: &Run) {
    let logs = common::logs(1, 1);
    let log = &logs[0];
    common::register(&run.http, &run.url, log).await;
    let ws_url = format!(
        "{}/v1/ws?thread={}",
        run.url.replace("http://", "ws://"),
        log.thread
    );
    let mut arrivals = common::subscribers(&ws_url, SUBSCRIBERS, CONNECT_WAVE).await;
    let pushes = single_pushes(&logs, FAN_OUT_SAMPLES).remove(0);
    let (mut each, mut last) = (Vec::new(), Vec::new());
    let mut writer = run.writer().await;
    let cpu = run.cpu();
    for push in pushes {
        let at = Instant::now();
        writer.push(push).await;
        let mut latest = at;
        for _ in 0..SUBSCRIBERS {
            let when = tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
                .await
                .expect("every subscriber receives the record")
                .unwrap()
                .1;
            each.push(ms(when - at));
            latest = latest.max(when);
        }
        last.push(ms(latest - at));
    }
    println!(
        "one record to {SUBSCRIBERS} WebSocket subscribers ({FAN_OUT_SAMPLES} records): to the last \
         receipt {}; to each receipt {}; server CPU {:.1} µs per delivery",
        spread(last),
        spread(each),
        (run.cpu() - cpu) / (SUBSCRIBERS * FAN_OUT_SAMPLES) as f64 * 1e6
    );
}

async fn backend(name: &str, database_url: Option<String>, part: impl Fn(&str) -> bool) {
    println!("\n## backend: {name}");
    let run = Run::start(database_url.as_deref()).await;
    let batched_rate = if part("batched") {
        Some(batched(&run).await)
    } else {
        None
    };
    if part("concurrent") {
        let rate = concurrent(&run).await;
        if let Some(b) = batched_rate {
            println!(
                "one-record pushes ({WRITERS} in flight) against batched: {:.2}",
                rate / b
            );
        }
    }
    if part("sequential") {
        sequential(&run).await;
    }
    if part("fan-out") {
        fan_out(&run).await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let backends = ["sqlite", "postgres"];
    let parts = ["batched", "concurrent", "sequential", "fan-out"];
    let pick = |name: &str| {
        !args.iter().any(|a| backends.contains(&a.as_str())) || args.iter().any(|a| a == name)
    };
    let part = |name: &str| {
        !args.iter().any(|a| parts.contains(&a.as_str())) || args.iter().any(|a| a == name)
    };
    println!("live-write benchmark: {BODY} B bodies, JSON pushes over HTTP/1.1 keep-alive");
    if pick("sqlite") {
        backend("sqlite (embedded default, synchronous=FULL)", None, part).await;
    }
    if pick("postgres") {
        if std::env::var_os(threads_store::testing::POSTGRES_ENV).is_some() {
            let url = threads_store::testing::fresh_postgres_database().await;
            backend("postgres", Some(url), part).await;
        } else {
            println!("\n(postgres skipped: set THREADS_TEST_PG, or run scripts/bench)");
        }
    }
}
