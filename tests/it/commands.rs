//! The operator's commands, end to end: `threads healthcheck`, `migrate` and `check-config`
//! run as processes against real servers and databases of both backends.

use std::process::Output;

use tokio::process::Command;

use crate::harness::{Backend, Server};
use threads_store::testing::{fresh_postgres_database, TestLog};

async fn threads(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_threads"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("THREADS_DATABASE_URL")
        .output()
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn healthcheck_says_whether_a_server_is_ready() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let server = Server::start(backend).await;
        let ok = threads(&["healthcheck", &server.url], &[]).await;
        assert!(ok.status.success(), "{}", text(&ok.stderr));
    }
    // Nothing listens on port 1 of loopback.
    let down = threads(
        &["healthcheck", "http://127.0.0.1:1", "--timeout", "2"],
        &[],
    )
    .await;
    assert_eq!(down.status.code(), Some(1));
    assert!(text(&down.stderr).contains("127.0.0.1:1/readyz"));
}

#[tokio::test]
async fn migrate_prepares_a_database_a_server_then_uses() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new").join("data");
    let data = data.to_str().unwrap();
    let sqlite = threads(&["migrate", "--data-dir", data], &[]).await;
    assert!(sqlite.status.success(), "{}", text(&sqlite.stderr));
    assert_eq!(text(&sqlite.stdout).trim(), "migrations applied");
    assert!(dir.path().join("new/data/threads.db").exists());

    let url = fresh_postgres_database().await;
    for _ in 0..2 {
        // Twice: applying migrations is idempotent.
        let pg = threads(
            &["migrate", "--database-url", &url, "--data-dir", data],
            &[],
        )
        .await;
        assert!(pg.status.success(), "{}", text(&pg.stderr));
    }
    let server = Server::launch(Some(url), dir.path(), &[]).await;
    let (status, _) = server.get("/readyz").await;
    assert!(status.is_success());

    let unreachable = threads(
        &[
            "migrate",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none",
        ],
        &[],
    )
    .await;
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(text(&unreachable.stderr).contains("migrating the database"));
}

#[tokio::test]
async fn check_config_prints_the_settings_without_secrets() {
    let shown = threads(
        &[
            "check-config",
            "--database-url",
            "postgres://user:database-password@db.example/threads",
        ],
        &[
            ("THREADS_ADMIN_TOKEN", "the-admin-token"),
            ("THREADS_LIMITS__MAX_BATCH_RECORDS", "77"),
        ],
    )
    .await;
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let out = text(&shown.stdout);
    assert!(out.contains("max_batch_records: 77"), "{out}");
    assert!(
        out.contains("postgres://user:<redacted>@db.example/threads"),
        "{out}"
    );
    assert!(!out.contains("database-password") && !out.contains("the-admin-token"));

    let bad = threads(
        &["check-config"],
        &[("THREADS_LIMITS__MAX_BATCH_RECORDS", "many")],
    )
    .await;
    assert_eq!(bad.status.code(), Some(1));
    let said = text(&bad.stderr).to_lowercase();
    assert!(said.contains("max_batch_records"), "{said}");
}

/// As a hardened unit or a container runs it: not root, and nothing writable but the data
/// directory. It serves, stores, and writes nowhere else.
#[tokio::test]
async fn the_server_runs_unprivileged_on_a_read_only_root() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let server = Server::launch_confined(dir.path()).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let record = log.next(10);
    server.push(&[(&log, &record)]).await;
    let (status, page) = server
        .get(&format!("/v1/threads/{}/records", log.thread))
        .await;
    assert!(status.is_success(), "{page}");
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    let ok = threads(&["healthcheck", &server.url], &[]).await;
    assert!(ok.status.success());
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((meta.uid(), meta.mode() & 0o077), (65534, 0));
    }
}
