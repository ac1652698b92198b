//! Several server processes on one Postgres, and crashes in the middle of batches.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::json;
use threads_store::testing::TestLog;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::websocket::{connect, next, records};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_one_instance_see_pushes_to_another() {
    let a = Server::start(Backend::Postgres).await;
    let b = Server::launch(a.database_url.clone(), &a.data_dir, &[]).await;
    assert_eq!(
        a.server_id().await,
        b.server_id().await,
        "one database, one server ID"
    );

    let mut log = TestLog::new();
    a.register(&log, true).await;
    let mut ws = connect(&b, "").await;
    let sub = json!({"type": "subscribe", "thread": log.thread.to_string()});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    let r1 = log.next(100);
    assert_eq!(a.push(&[(&log, &r1)]).await.0, StatusCode::OK);
    assert_eq!(records(&mut ws, 1).await, [r1.cid().to_string()]);
}

/// A process keeps the follow keys of threads pushed to for a moment; when another process
/// gives a squatted thread back to its writers (under another key) meanwhile, the writers'
/// next push through the first process is verified with the stored key, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_kept_by_one_process_never_refuses_a_record() {
    let a = Server::start(Backend::Postgres).await;
    let b = Server::launch(a.database_url.clone(), &a.data_dir, &[]).await;
    let mut writer = TestLog::bound();
    let mut squatter = writer.squatting();
    assert_eq!(b.register(&squatter, false).await.0, StatusCode::CREATED);
    let s1 = squatter.next(32);
    let (_, answer) = b.push(&[(&squatter, &s1)]).await;
    assert_eq!(answer["results"][0]["outcome"], "accepted", "{answer}");

    assert_eq!(a.register(&writer, false).await.0, StatusCode::CREATED);
    let w1 = writer.next(32);
    let (status, answer) = b.push(&[(&writer, &w1)]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["results"][0]["outcome"], "accepted", "{answer}");
}

/// Writers on two instances push concurrently into one thread while a reader follows the cursor
/// through both instances: it must see every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_readers_miss_nothing_under_concurrent_writers() {
    let a = Arc::new(Server::start(Backend::Postgres).await);
    let b = Arc::new(Server::launch(a.database_url.clone(), &a.data_dir, &[]).await);
    let first = TestLog::new();
    const WRITERS: usize = 4;
    const BATCHES: usize = 15;
    const PER_BATCH: usize = 10;

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut log = first.sibling();
        let server = if w % 2 == 0 { a.clone() } else { b.clone() };
        server.register(&log, true).await;
        writers.push(tokio::spawn(async move {
            let mut cids = Vec::new();
            for _ in 0..BATCHES {
                let batch: Vec<_> = (0..PER_BATCH).map(|_| log.next(64)).collect();
                let pairs: Vec<_> = batch.iter().map(|r| (&log, r)).collect();
                assert_eq!(server.push(&pairs).await.0, StatusCode::OK);
                cids.extend(batch.iter().map(|r| r.cid().to_string()));
            }
            cids
        }));
    }

    let reader = {
        let (a, b, log) = (a.clone(), b.clone(), first.sibling());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut cursor = String::new();
            let mut idle_rounds = 0;
            for round in 0.. {
                let server = if round % 2 == 0 { &a } else { &b };
                let path = format!("/v1/threads/{}/records?limit=7&after={cursor}", log.thread);
                let (status, page) = server.get(&path).await;
                assert_eq!(status, StatusCode::OK);
                let got = page["records"].as_array().unwrap();
                seen.extend(got.iter().map(|r| r["cid"].as_str().unwrap().to_owned()));
                cursor = page["cursor"].as_str().unwrap().to_owned();
                idle_rounds = if got.is_empty() { idle_rounds + 1 } else { 0 };
                if seen.len() >= WRITERS * BATCHES * PER_BATCH || idle_rounds > 400 {
                    break;
                }
                if got.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            seen
        })
    };

    let mut written = HashSet::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    let seen = reader.await.unwrap();
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no record twice");
    assert_eq!(unique, written, "every record once");
}

/// A server killed with SIGKILL in the middle of batches: every acknowledged record survives,
/// and no batch is half stored.
async fn crash_mid_batch(backend: Backend) {
    let mut server = Server::start(backend).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    const PER_BATCH: usize = 50;
    let batches: Vec<Vec<_>> = (0..60)
        .map(|_| (0..PER_BATCH).map(|_| log.next(256)).collect())
        .collect();

    let url = server.url.clone();
    // Counts acknowledged batches as they come, so the crash lands after the first one
    // whatever the machine's speed.
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pusher = {
        let batches = batches.clone();
        let acked = acked.clone();
        let log_json: Vec<Vec<_>> = batches
            .iter()
            .map(|b| b.iter().map(|r| record_json(&log, r)).collect())
            .collect();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            for batch in log_json {
                let sent = http
                    .post(format!("{url}/v1/records"))
                    .json(&json!({"records": batch}))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == StatusCode::OK => {
                        acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    _ => break,
                }
            }
            acked.load(std::sync::atomic::Ordering::SeqCst)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while acked.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no batch acknowledged in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9().await;
    let acknowledged = pusher.await.unwrap();
    assert!(
        acknowledged < batches.len(),
        "the crash came after every batch"
    );

    let restarted = Server::launch(server.database_url.clone(), &server.data_dir, &[]).await;
    let stored: HashSet<String> = pull_all(&restarted, &log, None)
        .await
        .iter()
        .map(|r| r["cid"].as_str().unwrap().to_owned())
        .collect();
    for (i, batch) in batches.iter().enumerate() {
        let present = batch
            .iter()
            .filter(|r| stored.contains(&r.cid().to_string()))
            .count();
        if i < acknowledged {
            assert_eq!(present, PER_BATCH, "acknowledged batch {i} lost records");
        } else {
            assert!(
                present == 0 || present == PER_BATCH,
                "batch {i} half stored: {present}"
            );
        }
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_batch_sqlite() {
    crash_mid_batch(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_batch_postgres() {
    crash_mid_batch(Backend::Postgres).await
}

/// A rolling restart: two processes on one Postgres are stopped (SIGTERM) and started again one
/// after the other while a writer pushes without pause, turning to the other process whenever
/// one does not answer. Every push that was answered is stored, in its chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_answered_push() {
    let a = Server::start(Backend::Postgres).await;
    let b = Server::launch(a.database_url.clone(), &a.data_dir, &[]).await;
    let mut log = TestLog::new();
    a.register(&log, true).await;
    let urls = [a.url.clone(), b.url.clone()];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (stop, count) = (stop.clone(), count.clone());
        async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let (mut answered, mut unanswered, mut turn) = (Vec::new(), 0usize, 0usize);
            let mut pending = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A push whose answer was lost is sent again: stored once, then a duplicate.
                let record = pending.take().unwrap_or_else(|| log.next(100));
                turn += 1;
                let url = &urls[turn % 2];
                let body = json!({"records": [record_json(&log, &record)]});
                match http
                    .post(format!("{url}/v1/records"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == StatusCode::OK => {
                        answered.push(record.cid());
                        count.store(answered.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(r) => panic!("{} {}", r.status(), r.text().await.unwrap()),
                    Err(_) => {
                        unanswered += 1;
                        pending = Some(record);
                    }
                }
            }
            (log, answered, unanswered)
        }
    });
    // Each step waits for 20 more answered pushes, however fast the machine is.
    let more = |n: usize| {
        let count = count.clone();
        async move {
            let target = count.load(std::sync::atomic::Ordering::Relaxed) + n;
            tokio::time::timeout(Duration::from_secs(60), async {
                while count.load(std::sync::atomic::Ordering::Relaxed) < target {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .expect("the writer makes progress");
        }
    };
    more(20).await;
    let a = a.restart_gracefully().await;
    more(20).await;
    let b = b.restart_gracefully().await;
    more(20).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (log, answered, unanswered) = writer.await.unwrap();
    assert!(answered.len() >= 60, "{} pushes answered", answered.len());

    for server in [&a, &b] {
        let stored = pull_all(server, &log, None).await;
        let cids: HashSet<String> = stored
            .iter()
            .map(|r| r["cid"].as_str().unwrap().to_owned())
            .collect();
        for cid in &answered {
            assert!(cids.contains(&cid.to_string()), "answered push {cid} lost");
        }
        let counters: Vec<u64> = stored
            .iter()
            .map(|r| r["counter"].as_u64().unwrap())
            .collect();
        assert_eq!(counters, (1..=stored.len() as u64).collect::<Vec<_>>());
    }
    eprintln!("{} pushes answered, {unanswered} retried", answered.len());
}

/// Roles split one follower across processes: one serves the API, another only delivers
/// webhooks. Both answer probes; the worker says where the API is; only it delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_split_the_api_from_webhook_delivery() {
    let private = ("THREADS_WEBHOOKS__ALLOW_PRIVATE_ADDRESSES", "true");
    let api = Server::start_with(Backend::Postgres, &[("THREADS_ROLES", "[api]"), private]).await;
    let dir = tempfile::tempdir().unwrap();
    let worker = Server::launch(
        api.database_url.clone(),
        dir.path(),
        &[("THREADS_ROLES", "[webhooks]"), private],
    )
    .await;
    for path in ["/healthz", "/readyz"] {
        assert_eq!(worker.get(path).await.0, StatusCode::OK, "{path}");
    }
    let (status, refused) = worker.get("/v1/server").await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_served_here")),
        "{refused}"
    );
    let (_, info) = api.get("/v1/server").await;
    assert!(
        info["p2p"].is_null(),
        "no libp2p host without the p2p role: {info}"
    );

    let receiver = crate::webhooks::Receiver::start(vec![]).await;
    let mut log = TestLog::new();
    api.register(&log, true).await;
    let request = threads_core::auth::SignedRequest::sign(
        &api.server_id().await,
        &log.thread,
        &log.pair,
        threads_core::auth::Action::Subscribe {
            url: receiver.url.clone(),
            only_log: None,
        },
        now_ms(),
        &mut rand_core::OsRng,
    );
    let (status, hook) = api.post("/v1/webhooks", &request).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    for _ in 0..3 {
        let record = log.next(64);
        assert!(api.push(&[(&log, &record)]).await.0.is_success());
    }
    receiver
        .until("three deliveries", |got| got.len() >= 3)
        .await;
    let delivered = |metrics: String| {
        metrics
            .lines()
            .any(|l| l.starts_with("threads_webhook_deliveries_total{outcome=\"delivered\"}"))
    };
    assert!(delivered(worker.metrics().await), "the worker delivered");
    assert!(
        !delivered(api.metrics().await),
        "the API process delivered nothing"
    );
}
