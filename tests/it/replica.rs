//! Reads from a hot standby: a real Postgres streaming replica of the test cluster, started
//! on loopback, paused and resumed while a writer keeps pushing.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use threads_store::testing::TestLog;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::websocket::{connect, next, records};

/// A hot standby of the test cluster (`scripts/postgres standby`), stopped when dropped.
struct Standby {
    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    url: String,
    dir: PathBuf,
}

impl Standby {
    async fn start() -> Self {
        let primary = std::env::var(threads_store::testing::POSTGRES_ENV).unwrap();
        let dir = tempfile::tempdir().unwrap().keep();
        let out = tokio::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres"))
            .args(["standby", &primary])
            .arg(&dir)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let url = text
            .trim()
            .strip_prefix("export THREADS_TEST_STANDBY=")
            .unwrap_or_else(|| panic!("no standby: {}", String::from_utf8_lossy(&out.stderr)))
            .to_owned();
        Self { url, dir }
    }

    /// The same database on the standby.
    fn url_of(&self, primary_db: &str) -> String {
        let name = primary_db.rsplit_once('/').unwrap().1;
        format!("{}/{name}", self.url.rsplit_once('/').unwrap().0)
    }

    /// One value from the standby, by `psql`.
    async fn query(&self, db: &str, sql: &str) -> String {
        let psql = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .map(|v| v.unwrap().path().join("bin/psql"))
            .find(|p| p.exists())
            .expect("psql is installed with Postgres");
        let out = tokio::process::Command::new(psql)
            .args([&self.url_of(db), "-Atc", sql])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

fn cids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["cid"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_miss_nothing_however_far_the_standby_lags() {
    let db = threads_store::testing::fresh_postgres_database().await;
    let standby = Standby::start().await;
    let dir = tempfile::tempdir().unwrap();
    let read_url = standby.url_of(&db);
    let server = Server::launch(
        Some(db.clone()),
        dir.path(),
        &[("THREADS_DATABASE_READ_URL", &read_url)],
    )
    .await;
    let mut log = TestLog::new();
    assert!(server.register(&log, true).await.0.is_success());
    let first: Vec<_> = (0..100).map(|_| log.next(100)).collect();
    let pairs: Vec<_> = first.iter().map(|r| (&log, r)).collect();
    assert!(server.push(&pairs).await.0.is_success());
    let all_first = cids(&pull_all(&server, &log, None).await);
    assert_eq!(all_first.len(), 100);
    let count = "SELECT count(*) FROM records";
    for _ in 0..200 {
        if standby.query(&db, count).await == "100" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        standby.query(&db, count).await,
        "100",
        "the standby caught up"
    );

    // Replay paused: the writer keeps pushing; readers still get every record, in order.
    standby.query(&db, "SELECT pg_wal_replay_pause()").await;
    let (_, page) = server
        .get(&format!("/v1/threads/{}/records?limit=100", log.thread))
        .await;
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    let more: Vec<_> = (0..50).map(|_| log.next(100)).collect();
    for record in &more {
        assert!(server.push(&[(&log, record)]).await.0.is_success());
    }
    let (status, page) = server
        .get(&format!(
            "/v1/threads/{}/records?after={cursor}&limit=100",
            log.thread
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    let expected: Vec<String> = more.iter().map(|r| r.cid().to_string()).collect();
    assert_eq!(cids(page["records"].as_array().unwrap()), expected);
    let all = cids(&pull_all(&server, &log, None).await);
    assert_eq!(all.len(), 150);
    assert_eq!(all[..100], all_first[..]);
    let newest = more.last().unwrap().cid();
    assert_eq!(server.get(&format!("/v1/blocks/{newest}")).await.0, 200);
    let mut ws = connect(&server, "").await;
    // A WebSocket catch-up from the start reads the same way.
    let sub = json!({"type": "subscribe", "thread": log.thread.to_string(), "cursor": ""});
    ws.send(Message::Text(sub.to_string().into()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    assert_eq!(records(&mut ws, 150).await, all);
    assert_eq!(
        standby.query(&db, count).await,
        "100",
        "the standby was behind all along"
    );

    // Replay resumed: the standby catches up and answers the same.
    standby.query(&db, "SELECT pg_wal_replay_resume()").await;
    for _ in 0..200 {
        if standby.query(&db, count).await == "150" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cids(&pull_all(&server, &log, None).await), all);

    // A standby that does not answer keeps no process from starting: the primary reads.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nowhere.local_addr().unwrap().port();
    drop(nowhere);
    let dead = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let dir = tempfile::tempdir().unwrap();
    let alone = Server::launch(
        Some(db),
        dir.path(),
        &[("THREADS_DATABASE_READ_URL", &dead)],
    )
    .await;
    assert_eq!(cids(&pull_all(&alone, &log, None).await), all);
}
