//! What the benchmarks share: a release `threads serve` of their own.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts `threads serve` on a free port with no libp2p host, storing in `data_dir` (or the
/// Postgres `database_url`), with extra environment settings; returns it with its URL once it
/// has printed its address. Its later output is drained so it never blocks on a full pipe.
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_threads"));
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

#[allow(dead_code)]
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}
