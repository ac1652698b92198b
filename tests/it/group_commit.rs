//! Group commit: many one-record pushes at once, each answered with its own outcomes once
//! durable; a full queue refuses with 503 and `Retry-After`; a crash loses no acknowledged
//! record.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use threads_core::VerifiedRecord;
use threads_store::testing::TestLog;

use crate::harness::*;

/// `writers` logs of one thread, registered, with `each` records apiece in chain order.
async fn writers(
    server: &Server,
    writers: usize,
    each: usize,
) -> Vec<(TestLog, Vec<VerifiedRecord>)> {
    let thread = TestLog::new();
    let mut out = Vec::new();
    for _ in 0..writers {
        let mut log = thread.sibling();
        server.register(&log, true).await;
        let records = (0..each).map(|_| log.next(200)).collect();
        out.push((log, records));
    }
    out
}

/// Pushes one record; answers the status, the body and the `Retry-After` header.
async fn push_one(
    http: &reqwest::Client,
    url: &str,
    log: &TestLog,
    record: &VerifiedRecord,
) -> (StatusCode, Value, Option<String>) {
    let response = http
        .post(format!("{url}/v1/records"))
        .json(&json!({"records": [record_json(log, record)]}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.json().await.unwrap_or(Value::Null), retry)
}

/// The CIDs a thread holds, in arrival order.
async fn stored(server: &Server, log: &TestLog) -> Vec<String> {
    pull_all(server, log, None)
        .await
        .iter()
        .map(|r| r["cid"].as_str().unwrap().to_owned())
        .collect()
}

/// Sixteen writers push one record at a time while a seventeenth pushes records that do not
/// chain (gaps) and forged ones, then records again (duplicates): every push gets its own
/// verdicts, nothing is lost or stored twice, each log's records keep their order, and commits
/// were shared.
async fn pushes_in_flight_share_commits(backend: Backend) {
    let server = Server::start(backend).await;
    let writers = writers(&server, 16, 12).await;
    // For each log, a record of it naming another log's record as its predecessor: a gap
    // however far its log has come.
    let strays: Vec<VerifiedRecord> = writers
        .iter()
        .enumerate()
        .map(|(i, (log, _))| {
            let other = &writers[(i + 1) % writers.len()].1[0];
            log.after(Some(other.cid()), 200)
        })
        .collect();
    // And for each log, a record signed by another log's key (pushed as this log's): checked
    // in the same batches as the writers' records, it fails alone.
    let forged: Vec<VerifiedRecord> = writers
        .iter()
        .map(|(log, _)| log.sibling().next(200))
        .collect();
    let writers = Arc::new(writers);
    let mut tasks = Vec::new();
    for w in 0..writers.len() {
        let (writers, http, url) = (writers.clone(), server.http.clone(), server.url.clone());
        tasks.push(tokio::spawn(async move {
            let (log, records) = &writers[w];
            for record in records {
                let (status, body, _) = push_one(&http, &url, log, record).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(body["results"][0]["outcome"], "accepted", "{body}");
            }
        }));
    }
    // Strays and forgeries pushed while the writers push; then each log's first record again.
    let meddler = {
        let (writers, http, url) = (writers.clone(), server.http.clone(), server.url.clone());
        tokio::spawn(async move {
            for _ in 0..3 {
                for (((log, _), stray), forged) in writers.iter().zip(&strays).zip(&forged) {
                    let (status, body, _) = push_one(&http, &url, log, stray).await;
                    assert_eq!(status, StatusCode::CONFLICT, "{body}");
                    assert_eq!(body["results"][0]["outcome"], "gap", "{body}");
                    let (status, body, _) = push_one(&http, &url, log, forged).await;
                    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
                    assert_eq!(body["code"], "bad_signature", "{body}");
                }
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    meddler.await.unwrap();
    for (log, records) in writers.iter() {
        let (status, body, _) = push_one(&server.http, &server.url, log, &records[0]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["results"][0]["outcome"], "duplicate", "{body}");
    }

    let cids = stored(&server, &writers[0].0).await;
    let unique: HashSet<&String> = cids.iter().collect();
    assert_eq!(unique.len(), cids.len(), "no record twice");
    assert_eq!(cids.len(), 16 * 12, "every record once");
    for (_, records) in writers.iter() {
        let order: Vec<usize> = records
            .iter()
            .map(|r| cids.iter().position(|c| *c == r.cid().to_string()).unwrap())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "a log's records in its order"
        );
    }

    // Commits were shared: some group held more than one push.
    let metrics = server.metrics().await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    let (groups, pushes) = (
        value("threads_commit_group_pushes_count"),
        value("threads_commit_group_pushes_sum"),
    );
    assert!(pushes > groups, "{pushes} pushes in {groups} commits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_in_flight_share_commits_sqlite() {
    pushes_in_flight_share_commits(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_in_flight_share_commits_postgres() {
    pushes_in_flight_share_commits(Backend::Postgres).await
}

/// With room for one queued record, concurrent pushes find the queue full: they are answered
/// 503 `busy` with `Retry-After`, store nothing, and succeed when sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_commit_queue_answers_busy_with_retry_after() {
    let server = Server::start_with(
        Backend::Sqlite,
        &[("THREADS_LIMITS__MAX_QUEUED_RECORDS", "1")],
    )
    .await;
    let writers = Arc::new(writers(&server, 32, 5).await);
    let busy = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers.len() {
        let (writers, http, url) = (writers.clone(), server.http.clone(), server.url.clone());
        let busy = busy.clone();
        tasks.push(tokio::spawn(async move {
            let (log, records) = &writers[w];
            for record in records {
                loop {
                    let (status, body, retry) = push_one(&http, &url, log, record).await;
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        assert_eq!(body["code"], "busy", "{body}");
                        assert_eq!(retry.as_deref(), Some("1"));
                        busy.fetch_add(1, Ordering::Relaxed);
                        // Sooner than the advice, to keep the test short.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    assert_eq!(status, StatusCode::OK, "{body}");
                    assert_eq!(body["results"][0]["outcome"], "accepted", "{body}");
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        busy.load(Ordering::Relaxed) > 0,
        "some push found the queue full"
    );
    // Refused pushes stored nothing: each record is there once, accepted when sent again.
    let cids = stored(&server, &writers[0].0).await;
    assert_eq!(cids.len(), 32 * 5);
    assert_eq!(cids.iter().collect::<HashSet<_>>().len(), cids.len());
}

/// Killed with SIGKILL while writers push one record at a time: every acknowledged record is
/// there after a restart, and each log holds an unbroken start of its chain.
async fn crash_during_group_commits(backend: Backend) {
    let mut server = Server::start(backend).await;
    let writers = Arc::new(writers(&server, 32, 40).await);
    let acked: Arc<Vec<AtomicUsize>> =
        Arc::new((0..writers.len()).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::new();
    for w in 0..writers.len() {
        let (writers, http, url) = (writers.clone(), server.http.clone(), server.url.clone());
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let (log, records) = &writers[w];
            for record in records {
                let sent = http
                    .post(format!("{url}/v1/records"))
                    .json(&json!({"records": [record_json(log, record)]}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == StatusCode::OK => {
                        acked[w].fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        }));
    }
    let total = || {
        acked
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .sum::<usize>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while total() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "too few pushes acknowledged in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill9().await;
    for t in tasks {
        t.await.unwrap();
    }
    assert!(total() < 32 * 40, "the crash came after every push");

    let restarted = Server::launch(server.database_url.clone(), &server.data_dir, &[]).await;
    let cids: HashSet<String> = stored(&restarted, &writers[0].0)
        .await
        .into_iter()
        .collect();
    for (w, (_, records)) in writers.iter().enumerate() {
        let held = records
            .iter()
            .take_while(|r| cids.contains(&r.cid().to_string()))
            .count();
        assert!(
            held >= acked[w].load(Ordering::SeqCst),
            "writer {w}: {held} stored, {} acknowledged",
            acked[w].load(Ordering::SeqCst)
        );
        assert!(
            records[held..]
                .iter()
                .all(|r| !cids.contains(&r.cid().to_string())),
            "writer {w}: a hole in its chain"
        );
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_group_commits_sqlite() {
    crash_during_group_commits(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_group_commits_postgres() {
    crash_during_group_commits(Backend::Postgres).await
}

/// Big batches at once on Postgres (several committers; groups cut at their record bound,
/// committed side by side): every push is answered, none waits for a later one to arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_batches_at_once_are_all_committed() {
    let server = Server::start(Backend::Postgres).await;
    let mut logs = Vec::new();
    for _ in 0..12 {
        let mut log = TestLog::new();
        server.register(&log, true).await;
        let batch: Vec<_> = (0..1000).map(|_| log.next(10)).collect();
        logs.push((log, batch));
    }
    let pushes = logs.iter().map(|(log, batch)| {
        let pairs: Vec<_> = batch.iter().map(|r| (log, r)).collect();
        let server = &server;
        async move { server.push(&pairs).await.0 }
    });
    let statuses = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(pushes),
    )
    .await
    .expect("every push is answered");
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    for (log, batch) in &logs {
        assert_eq!(stored(&server, log).await.len(), batch.len());
    }
}
