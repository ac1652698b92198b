//! Starting servers and talking to them as a client would.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand_core::OsRng;
use reqwest::StatusCode;
use serde_json::{json, Value};
use threads_core::auth::{Action, SignedRequest};
use threads_core::VerifiedRecord;
use threads_store::testing::{fresh_postgres_database, TestLog};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running `threads serve` process. Killed when dropped.
pub struct Server {
    pub url: String,
    pub http: reqwest::Client,
    pub database_url: Option<String>,
    pub data_dir: PathBuf,
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// A server with a fresh database of the given backend.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(fresh_postgres_database().await),
        };
        let mut server = Self::launch(database_url, dir.path(), env).await;
        server._dir = Some(dir);
        server
    }

    /// A server on an existing database and data directory (a second instance, or a restart).
    pub async fn launch(
        database_url: Option<String>,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch_at("127.0.0.1:0", database_url, data_dir, env).await
    }

    /// Crashes the server (kill -9) and starts it again on the same address and data.
    pub async fn restart(mut self) -> Self {
        self.kill9().await;
        let _ = self.child.wait().await;
        let listen = self.url.trim_start_matches("http://").to_owned();
        let mut next =
            Self::launch_at(&listen, self.database_url.clone(), &self.data_dir, &[]).await;
        next._dir = self._dir.take();
        next
    }

    /// Stops the server as an orchestrator does (SIGTERM, then waiting for it to exit) and
    /// starts it again on the same address and data: one step of a rolling restart.
    pub async fn restart_gracefully(mut self) -> Self {
        let status = Command::new("kill")
            .arg(self.pid().to_string())
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(std::time::Duration::from_secs(15), self.child.wait())
            .await
            .expect("the server exits within 15 s of SIGTERM")
            .unwrap();
        assert!(exit.success(), "{exit:?}");
        let listen = self.url.trim_start_matches("http://").to_owned();
        let mut next =
            Self::launch_at(&listen, self.database_url.clone(), &self.data_dir, &[]).await;
        next._dir = self._dir.take();
        next
    }

    /// A server as an unprivileged user (nobody) whose whole file system is read-only but for
    /// `data_dir` (bubblewrap and setpriv), as a hardened unit or container runs it.
    pub async fn launch_confined(data_dir: &Path) -> Self {
        let dir = data_dir.to_str().unwrap();
        let mut cmd = Command::new("bwrap");
        cmd.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"])
            .args([
                "--bind",
                dir,
                dir,
                "--unshare-pid",
                "--die-with-parent",
                "--",
            ])
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .arg(env!("CARGO_BIN_EXE_threads"));
        Self::spawn(cmd, "127.0.0.1:0", None, data_dir, &[]).await
    }

    async fn launch_at(
        listen: &str,
        database_url: Option<String>,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let cmd = Command::new(env!("CARGO_BIN_EXE_threads"));
        Self::spawn(cmd, listen, database_url, data_dir, env).await
    }

    /// Runs `threads serve` through `cmd` (the binary, or a wrapper ending with it).
    async fn spawn(
        mut cmd: Command,
        listen: &str,
        database_url: Option<String>,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        cmd.args([
            "serve",
            "--listen",
            listen,
            "--log-format",
            "json",
            // Many servers run at once: each takes a free port for libp2p too.
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
            "--p2p-listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
            "--data-dir",
        ])
        .arg(data_dir)
        .env_remove("RUST_LOG")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true);
        if let Some(url) = &database_url {
            cmd.arg("--database-url").arg(url);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("threads binary starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("server printed its address");
            if let Some(url) = line.strip_prefix("listening on ") {
                break url.to_owned();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            url,
            http: reqwest::Client::new(),
            database_url,
            data_dir: data_dir.to_owned(),
            child,
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Waits for the process to exit on its own.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(std::time::Duration::from_secs(15), self.child.wait())
            .await
            .expect("the server exits within 15 s")
            .unwrap()
    }

    /// Ends the process abruptly, as a crash would.
    pub async fn kill9(&mut self) {
        self.child.kill().await.unwrap();
    }

    pub async fn server_id(&self) -> String {
        let info: Value = self.get("/v1/server").await.1;
        info["server_id"].as_str().unwrap().to_owned()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The Prometheus metrics page.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(format!("{}/metrics", self.url)).send().await;
        response.unwrap().text().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: impl serde::Serialize) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Sends a request signed by `log`'s key.
    pub async fn signed(&self, log: &TestLog, action: Action) -> (StatusCode, Value) {
        let request = SignedRequest::sign(
            &self.server_id().await,
            &log.thread,
            &log.pair,
            action,
            now_ms(),
            &mut OsRng,
        );
        self.post("/v1/registrations", request).await
    }

    pub async fn register(&self, log: &TestLog, public: bool) -> (StatusCode, Value) {
        self.signed(log, register_action(log, public)).await
    }

    pub async fn push(&self, records: &[(&TestLog, &VerifiedRecord)]) -> (StatusCode, Value) {
        let records: Vec<Value> = records.iter().map(|(log, r)| record_json(log, r)).collect();
        self.post("/v1/records", json!({"records": records})).await
    }
}

pub fn register_action(log: &TestLog, public: bool) -> Action {
    Action::Register {
        follow_key: log.keys.follow_only().to_multibase().to_string(),
        addrs: vec!["/ip4/127.0.0.1/tcp/4006".into()],
        public,
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn record_json(log: &TestLog, r: &VerifiedRecord) -> Value {
    let b = r.blocks();
    json!({
        "thread": log.thread.to_string(),
        "log": log.id.to_string(),
        "record": B64.encode(&b.record),
        "event": B64.encode(&b.event),
        "header": B64.encode(&b.header),
        "body": B64.encode(&b.body),
    })
}

/// Every record of a thread, following cursors to the end.
pub async fn pull_all(server: &Server, log: &TestLog, token: Option<&str>) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let mut path = format!(
            "/v1/threads/{}/records?limit=100&after={cursor}",
            log.thread
        );
        if let Some(t) = token {
            path.push_str(&format!("&token={t}"));
        }
        let (status, page) = server.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        out.extend(page["records"].as_array().unwrap().iter().cloned());
        cursor = page["cursor"].as_str().unwrap().to_owned();
        if !page["more"].as_bool().unwrap() {
            return out;
        }
    }
}
