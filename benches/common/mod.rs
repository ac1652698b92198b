//! What the benchmarks share: a release `threads serve` of their own (or the one
//! `THREADS_BENCH_BIN` names).

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `threads serve` on a free port with no libp2p host, storing in `data_dir` (or the
/// Postgres `database_url`), with extra environment settings; returns it with its URL once it
/// is ready (`/readyz`). Its later output is drained so it never blocks on a full pipe.
#[allow(dead_code)]
pub async fn serve(
    data_dir: &Path,
    database_url: Option<&str>,
    env: &[(&str, &str)],
) -> (Child, String) {
    let (child, url, _) = launch(data_dir, database_url, env, "none").await;
    (child, url)
}

/// [`serve`] with a libp2p host on a free loopback TCP port; also returns its multiaddr.
#[allow(dead_code)]
pub async fn serve_p2p(
    data_dir: &Path,
    database_url: Option<&str>,
    env: &[(&str, &str)],
) -> (Child, String, String) {
    launch(data_dir, database_url, env, "/ip4/127.0.0.1/tcp/0").await
}

async fn launch(
    data_dir: &Path,
    database_url: Option<&str>,
    env: &[(&str, &str)],
    p2p_listen: &str,
) -> (Child, String, String) {
    // Another build of the server can be measured under the same benchmark (before/after).
    let bin = std::env::var_os("THREADS_BENCH_BIN").unwrap_or(env!("CARGO_BIN_EXE_threads").into());
    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--p2p-listen",
        p2p_listen,
        "--data-dir",
    ])
    .arg(data_dir)
    .env("RUST_LOG", "warn")
    // Every load generator connects from loopback: one address, thousands of connections.
    .env("THREADS_LIMITS__MAX_CONNECTIONS_PER_ADDRESS", "0")
    .envs(env.iter().copied())
    .stdout(Stdio::piped())
    .kill_on_drop(true);
    if let Some(url) = database_url {
        cmd.arg("--database-url").arg(url);
    }
    let mut child = cmd.spawn().expect("the server starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let url = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the server printed its address");
        if let Some(url) = line.strip_prefix("listening on ") {
            break url.to_owned();
        }
    };
    let mut p2p = String::new();
    if p2p_listen != "none" {
        let line = lines.next_line().await.unwrap().expect("a p2p address");
        p2p = line.strip_prefix("p2p ").expect("a p2p line").to_owned();
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http = reqwest::Client::new();
    while !http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    (child, url, p2p)
}

/// User and system CPU time of a process so far (all its threads), from `/proc/<pid>/stat`;
/// `pid` may be `self`.
#[allow(dead_code)]
pub fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Bytes a process has handed to `write` and `pwrite` so far (`wchar` of `/proc/<pid>/io`):
/// what its storage writes, before the page cache.
#[allow(dead_code)]
pub fn written_bytes(pid: &str) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|line| line.strip_prefix("wchar: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A counter's or a histogram's `_sum`/`_count` value from the server's `/metrics` (0 if absent).
#[allow(dead_code)]
pub async fn metric(http: &reqwest::Client, url: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// User and system CPU time so far of every process named `postgres` on this machine (the
/// cluster's backends live as long as the server's pooled connections).
#[allow(dead_code)]
pub fn postgres_cpu_secs() -> f64 {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| std::panic::catch_unwind(|| cpu_secs(&pid)).unwrap_or(0.0))
        .sum()
}

/// Drops a database made by `threads_store::testing::fresh_postgres_database` (large ones
/// would otherwise keep their disk after the benchmark).
#[allow(dead_code)]
pub async fn drop_postgres_database(url: &str) {
    use sqlx::Connection;
    let admin = std::env::var(threads_store::testing::POSTGRES_ENV).unwrap();
    let mut admin = sqlx::PgConnection::connect(&admin).await.unwrap();
    let name = url.rsplit_once('/').unwrap().1;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

#[allow(dead_code)]
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// A log of a thread, with the keys to write it.
#[allow(dead_code)]
pub struct Log {
    pub thread: threads_core::ThreadId,
    pub keys: threads_core::ThreadKey,
    pub pair: threads_core::Keypair,
    pub id: threads_core::LogId,
}

/// `threads` new public threads of `per_thread` logs each; log `i` is in thread `i % threads`.
#[allow(dead_code)]
pub fn logs(threads: usize, per_thread: usize) -> Vec<Log> {
    use rand_core::OsRng;
    let made: Vec<_> = (0..threads)
        .map(|_| {
            (
                threads_core::ThreadId::random(threads_core::Variant::Raw, &mut OsRng),
                threads_core::ThreadKey::random(&mut OsRng),
            )
        })
        .collect();
    (0..threads * per_thread)
        .map(|i| {
            let (thread, keys) = made[i % threads].clone();
            let pair = threads_core::Keypair::generate(&mut OsRng);
            Log {
                thread,
                keys,
                id: threads_core::LogId::from(pair.public()),
                pair,
            }
        })
        .collect()
}

/// `n` more records of a log with `body_bytes`-byte bodies, in chain order after `prev`.
#[allow(dead_code)]
pub fn records(
    log: &Log,
    n: usize,
    body_bytes: usize,
    prev: Option<threads_core::Cid>,
) -> Vec<threads_core::VerifiedRecord> {
    use rand_core::OsRng;
    let author = threads_core::Keypair::generate(&mut OsRng).public();
    let body =
        serde_ipld_dagcbor::to_vec(&ipld_core::ipld::Ipld::Bytes(vec![7u8; body_bytes])).unwrap();
    let mut prev = prev;
    (0..n)
        .map(|_| {
            let r = threads_core::VerifiedRecord::create(
                &body, &log.keys, &log.pair, &author, prev, &mut OsRng,
            )
            .unwrap();
            prev = Some(r.cid());
            r
        })
        .collect()
}

/// A record as `POST /v1/records` takes it in JSON.
#[allow(dead_code)]
pub fn record_json(log: &Log, r: &threads_core::VerifiedRecord) -> serde_json::Value {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;
    let b = r.blocks();
    serde_json::json!({
        "thread": log.thread.to_string(), "log": log.id.to_string(),
        "record": B64.encode(&b.record), "event": B64.encode(&b.event),
        "header": B64.encode(&b.header), "body": B64.encode(&b.body),
    })
}

/// JSON batches of at most `batch` records for each of `threads` threads: a thread's logs
/// (log `i` is in thread `i % threads`, as [`logs`] makes them) taken in turn, one record of
/// each per round, so every log's records stay in chain order.
#[allow(dead_code)]
pub fn thread_batches(
    logs: &[Log],
    threads: usize,
    per_log: &[Vec<threads_core::VerifiedRecord>],
    batch: usize,
) -> Vec<Vec<String>> {
    let rounds = per_log.iter().map(Vec::len).max().unwrap_or(0);
    (0..threads)
        .map(|t| {
            let items: Vec<serde_json::Value> = (0..rounds)
                .flat_map(|round| {
                    (t..logs.len())
                        .step_by(threads)
                        .filter_map(move |i| Some(record_json(&logs[i], per_log[i].get(round)?)))
                })
                .collect();
            items
                .chunks(batch)
                .map(|chunk| serde_json::json!({ "records": chunk }).to_string())
                .collect()
        })
        .collect()
}

/// Pushes each thread's batches in order, `pushers` at once, each taking the next thread not
/// yet pushed (a log's records must arrive in chain order); panics on any refused push.
#[allow(dead_code)]
pub async fn push_threads(
    http: &reqwest::Client,
    url: &str,
    batches: Vec<Vec<String>>,
    pushers: usize,
) {
    let threads = std::sync::Arc::new(std::sync::Mutex::new(batches));
    let tasks: Vec<_> = (0..pushers)
        .map(|_| {
            let (http, url, threads) = (http.clone(), url.to_owned(), threads.clone());
            tokio::spawn(async move {
                loop {
                    // (Not a `while let`: its guard would be held over the pushes.)
                    let Some(thread) = threads.lock().unwrap().pop() else {
                        break;
                    };
                    for batch in thread {
                        let r = http
                            .post(format!("{url}/v1/records"))
                            .header("content-type", "application/json")
                            .body(batch)
                            .send()
                            .await
                            .unwrap();
                        assert!(r.status().is_success(), "push: {}", r.text().await.unwrap());
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Registers a log as public with the server at `url` (a signed request).
#[allow(dead_code)]
pub async fn register(http: &reqwest::Client, url: &str, log: &Log) {
    use threads_core::auth::{Action, SignedRequest};
    let info = get_json(http, &format!("{url}/v1/server")).await;
    let action = Action::Register {
        follow_key: log.keys.follow_only().to_multibase().to_string(),
        addrs: vec![],
        public: true,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let request = SignedRequest::sign(
        info["server_id"].as_str().unwrap(),
        &log.thread,
        &log.pair,
        action,
        now,
        &mut rand_core::OsRng,
    );
    let response = http
        .post(format!("{url}/v1/registrations"))
        .json(&request)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(status.is_success(), "registration: {status}");
}

/// The value at fraction `p` of sorted samples (nearest rank).
#[allow(dead_code)]
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Connects `n` WebSocket subscribers to `ws_url`, at most `wave` connecting at once, and
/// returns once each has its subscription's answer. Each then reports every record message it
/// receives: its own count of messages so far, and when.
#[allow(dead_code)]
pub async fn subscribers(
    ws_url: &str,
    n: usize,
    wave: usize,
) -> tokio::sync::mpsc::UnboundedReceiver<(usize, std::time::Instant)> {
    use futures_util::StreamExt;
    let (heard, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(wave));
    let mut ready = Vec::new();
    for _ in 0..n {
        let (url, heard, gate) = (ws_url.to_owned(), heard.clone(), gate.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        ready.push(ready_rx);
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let _ = ws.next().await; // subscribed
            drop(permit);
            let _ = ready_tx.send(());
            let mut count = 0;
            while let Some(Ok(m)) = ws.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(_) = m {
                    let _ = heard.send((count, std::time::Instant::now()));
                    count += 1;
                }
            }
        });
    }
    for r in ready {
        r.await.unwrap();
    }
    arrivals
}

/// A webhook receiver on loopback that answers 200 at `/hook/{n}` and counts what it got:
/// its base URL and the count.
#[allow(dead_code)]
pub async fn receiver() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let received = std::sync::Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/hook/{n}",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}
