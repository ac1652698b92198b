//! The capacity simulation: one server on Postgres grown by real signed registrations to
//! 100,000 threads of 10 logs (1,000,000 logs), measuring at each step what a registration, a
//! live push and a reader's pull cost, and what the server and the database hold.
//!
//! ```text
//! cargo bench --bench capacity                  # steps of 1,000, 10,000 and 100,000 threads
//! cargo bench --bench capacity -- 1000,20000    # other steps (threads, 10 logs each)
//! ```
//!
//! Needs `THREADS_TEST_PG`. Every request goes through the server as a client makes it:
//! registrations signed by each log's key, one-record pushes to logs picked at random among
//! all registered (the next record of each), pulls of random threads from the start. The
//! benchmark, the server and Postgres share the machine; CPU is each one's user and system
//! time over the phase.

mod common;

use std::time::Instant;

use futures_util::StreamExt;
use rand_core::{OsRng, RngCore};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use threads_core::auth::{Action, SignedRequest};
use threads_core::Cid;

const LOGS_PER_THREAD: usize = 10;
/// Requests in flight at once, as from many clients.
const IN_FLIGHT: usize = 64;
/// Pushes and pulls timed at each step.
const PUSHES: usize = 10_000;
const PULLS: usize = 10_000;
/// Bodies of a chat message or a small document patch.
const BODY: usize = 256;

/// What a phase cost: its rate, latency spread and CPU per request.
struct Cost {
    rate: f64,
    p50: f64,
    p99: f64,
    server_us: f64,
    database_us: f64,
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0}/s; p50 {:.2} ms, p99 {:.2} ms; CPU per request: server {:.0} µs, Postgres {:.0} µs",
            self.rate, self.p50, self.p99, self.server_us, self.database_us
        )
    }
}

/// Runs `requests` with `IN_FLIGHT` at once; each answers how long it took, in milliseconds.
async fn measure<F>(pid: &str, requests: impl Iterator<Item = F>) -> Cost
where
    F: std::future::Future<Output = f64>,
{
    let (server, database) = (common::cpu_secs(pid), common::postgres_cpu_secs());
    let started = Instant::now();
    let mut ms: Vec<f64> = futures_util::stream::iter(requests)
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let n = ms.len() as f64;
    ms.sort_by(f64::total_cmp);
    Cost {
        rate: n / secs,
        p50: common::percentile(&ms, 0.5),
        p99: common::percentile(&ms, 0.99),
        server_us: (common::cpu_secs(pid) - server) / n * 1e6,
        database_us: (common::postgres_cpu_secs() - database) / n * 1e6,
    }
}

async fn timed(request: reqwest::RequestBuilder) -> f64 {
    let at = Instant::now();
    let r = request.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    at.elapsed().as_secs_f64() * 1e3
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `n` distinct indexes below `len`, at random.
fn pick(len: usize, n: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..len).collect();
    let n = n.min(len);
    for i in 0..n {
        let j = i + (OsRng.next_u64() as usize) % (len - i);
        all.swap(i, j);
    }
    all.truncate(n);
    all
}

fn rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024.0
}

/// Bytes of a table with its indexes and TOAST.
async fn table_bytes(db: &mut PgConnection, table: &str) -> f64 {
    sqlx::query_scalar::<_, i64>(&format!("SELECT pg_total_relation_size('{table}')"))
        .fetch_one(db)
        .await
        .unwrap() as f64
}

#[tokio::main]
async fn main() {
    let steps: Vec<usize> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(|s| {
            s.split(',')
                .map(|n| n.parse().expect("steps: thread counts"))
                .collect()
        })
        .unwrap_or(vec![1_000, 10_000, 100_000]);
    if std::env::var_os(threads_store::testing::POSTGRES_ENV).is_none() {
        println!("capacity benchmark: needs THREADS_TEST_PG (eval \"$(scripts/postgres start DIR)\" sets it)");
        return;
    }
    println!(
        "capacity benchmark: {LOGS_PER_THREAD} logs per thread, {IN_FLIGHT} requests in flight, \
         {PUSHES} one-record pushes ({BODY} B bodies) and {PULLS} pulls at each step"
    );
    let url = threads_store::testing::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, server_url) = common::serve(dir.path(), Some(&url), &[]).await;
    let pid = server.id().unwrap().to_string();
    let http = reqwest::Client::new();
    let server_id = common::get_json(&http, &format!("{server_url}/v1/server")).await["server_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut db = PgConnection::connect(&url).await.unwrap();
    println!("idle: server RSS {:.1} MiB", rss_mib(&pid));

    let mut logs: Vec<common::Log> = Vec::new();
    let mut heads: Vec<Option<Cid>> = Vec::new();
    let mut thread_ids = Vec::new();
    for &threads in &steps {
        let new = threads.saturating_sub(thread_ids.len());
        let from = logs.len();
        logs.extend(common::logs(new, LOGS_PER_THREAD));
        heads.resize(logs.len(), None);
        // The first `new` logs made are one in each new thread.
        thread_ids.extend(logs[from..from + new].iter().map(|l| l.thread.clone()));
        println!("\n### {threads} threads, {} logs", logs.len());

        let registration = measure(
            &pid,
            logs[from..].iter().map(|log| {
                let action = Action::Register {
                    follow_key: log.keys.follow_only().to_multibase().to_string(),
                    addrs: vec![],
                    public: true,
                };
                let signed = SignedRequest::sign(
                    &server_id,
                    &log.thread,
                    &log.pair,
                    action,
                    now_ms(),
                    &mut OsRng,
                );
                timed(
                    http.post(format!("{server_url}/v1/registrations"))
                        .json(&signed),
                )
            }),
        )
        .await;
        println!("{} registrations: {registration}", logs.len() - from);

        // The next record of logs picked at random, built and signed before the clock starts.
        let picked = pick(logs.len(), PUSHES);
        let bodies: Vec<String> = picked
            .iter()
            .map(|&i| {
                let record = common::records(&logs[i], 1, BODY, heads[i]).remove(0);
                heads[i] = Some(record.cid());
                json!({"records": [common::record_json(&logs[i], &record)]}).to_string()
            })
            .collect();
        let pushes = measure(
            &pid,
            bodies.into_iter().map(|body| {
                timed(
                    http.post(format!("{server_url}/v1/records"))
                        .header("content-type", "application/json")
                        .body(body),
                )
            }),
        )
        .await;
        println!("one-record pushes to random logs: {pushes}");

        let pulls = measure(
            &pid,
            pick(thread_ids.len(), PULLS).into_iter().map(|t| {
                let thread = &thread_ids[t];
                timed(http.get(format!(
                    "{server_url}/v1/threads/{thread}/records?limit=100"
                )))
            }),
        )
        .await;
        println!("pulls of random threads: {pulls}");

        let records: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let database: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let per = |bytes: f64, n: usize| bytes / n as f64;
        let (t, l, n) = (
            table_bytes(&mut db, "threads").await,
            table_bytes(&mut db, "logs").await,
            table_bytes(&mut db, "request_nonces").await,
        );
        println!(
            "server RSS {:.1} MiB; database {:.0} MiB: threads {:.0} B/thread, logs {:.0} B/log, \
             request nonces {:.0} MiB, {records} records {:.0} MiB",
            rss_mib(&pid),
            database as f64 / 1048576.0,
            per(t, thread_ids.len()),
            per(l, logs.len()),
            n / 1048576.0,
            table_bytes(&mut db, "records").await / 1048576.0,
        );
    }

    drop((db, server));
    common::drop_postgres_database(&url).await;
}
