//! Backups an operator takes while the server runs (docs/operations.md), restored into a fresh
//! server: every record comes back, each verifying and continuing its log's chain.

use std::collections::HashSet;

use reqwest::StatusCode;
use sqlx::{Connection, SqliteConnection};
use threads_client::follower::WireRecord;
use threads_core::{Head, SignaturePolicy, VerifiedRecord};
use tokio::process::Command;

use crate::harness::{pull_all, Backend, Server};
use threads_store::testing::{fresh_postgres_database, TestLog};

const PER_LOG: usize = 60;

/// Two logs of one thread, written in turns while the backup may be taken.
async fn fill(server: &Server) -> (TestLog, TestLog, Vec<VerifiedRecord>) {
    let mut a = TestLog::new();
    let mut b = a.sibling();
    server.register(&a, true).await;
    server.register(&b, true).await;
    let mut written = Vec::new();
    for _ in 0..PER_LOG {
        let (ra, rb) = (a.next(200), b.next(200));
        let (status, answer) = server.push(&[(&a, &ra), (&b, &rb)]).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        written.extend([ra, rb]);
    }
    (a, b, written)
}

/// Pulls the whole thread and checks every record with the core, log by log.
async fn check_restored(server: &Server, logs: [&TestLog; 2], written: &[VerifiedRecord]) {
    let records = pull_all(server, logs[0], None).await;
    assert_eq!(records.len(), written.len());
    for log in logs {
        let mut head: Option<Head> = None;
        for r in records.iter().filter(|r| r["log"] == log.id.to_string()) {
            let wire: WireRecord = serde_json::from_value(r.clone()).unwrap();
            let verified = wire
                .blocks()
                .unwrap()
                .verify(log.keys.service(), &log.id, SignaturePolicy::CurrentOnly)
                .unwrap();
            head = Some(Head::advance(head.as_ref(), &verified).unwrap());
            assert_eq!(r["counter"], head.unwrap().counter);
        }
        assert_eq!(head.unwrap().counter, PER_LOG as u64);
    }
    let restored: HashSet<String> = records
        .iter()
        .map(|r| r["cid"].as_str().unwrap().to_owned())
        .collect();
    let expected: HashSet<String> = written.iter().map(|r| r.cid().to_string()).collect();
    assert_eq!(restored, expected);
}

/// Runs one of Postgres' tools; it must succeed.
async fn run(command: &mut Command) {
    let out = command.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_online_sqlite_backup_restores_into_a_fresh_server() {
    let server = Server::start(Backend::Sqlite).await;
    let (a, b, written) = fill(&server).await;
    // Taken while the server runs: SQLite writes a consistent copy of the live database.
    let backup = tempfile::tempdir().unwrap();
    let file = backup.path().join("threads.db");
    let mut conn = SqliteConnection::connect(&format!(
        "sqlite://{}",
        server.data_dir.join("threads.db").display()
    ))
    .await
    .unwrap();
    sqlx::query(&format!("VACUUM INTO '{}'", file.display()))
        .execute(&mut conn)
        .await
        .unwrap();
    drop(server);
    let restored = Server::launch(None, backup.path(), &[]).await;
    check_restored(&restored, [&a, &b], &written).await;
}

#[tokio::test]
async fn a_pg_dump_taken_while_serving_restores_into_a_fresh_database() {
    let server = Server::start(Backend::Postgres).await;
    let (a, b, written) = fill(&server).await;
    let dump = tempfile::tempdir().unwrap();
    let file = dump.path().join("threads.dump");
    let source = server.database_url.clone().unwrap();
    run(Command::new("pg_dump")
        .args(["--format=custom", "--file"])
        .arg(&file)
        .arg(&source))
    .await;
    drop(server);
    let target = fresh_postgres_database().await;
    run(Command::new("pg_restore")
        .args(["--no-owner", "--exit-on-error", "--dbname", &target])
        .arg(&file))
    .await;
    let data = tempfile::tempdir().unwrap();
    let restored = Server::launch(Some(target), data.path(), &[]).await;
    check_restored(&restored, [&a, &b], &written).await;
}
