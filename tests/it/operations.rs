//! What operators rely on: the API description, metrics, quotas, rate limits, connection caps.

use reqwest::StatusCode;
use serde_json::Value;
use threads_store::testing::TestLog;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_and_metrics_are_served() {
    let server = Server::start(Backend::Sqlite).await;
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/v1/records"]["post"].is_object());

    let mut log = TestLog::new();
    server.register(&log, true).await;
    let r1 = log.next(10);
    server.push(&[(&log, &r1)]).await;
    server
        .push(&[(&log, &log.after(Some(threads_core::cid_of(b"x")), 10))])
        .await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("threads_records_ingested_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("threads_records_rejected_total{reason=\"gap\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("threads_ingested_bytes_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_answer_413() {
    let server = Server::start_with(
        Backend::Sqlite,
        &[("THREADS_QUOTAS__MAX_RECORDS_PER_LOG", "2")],
    )
    .await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let (r1, r2, r3) = (log.next(10), log.next(10), log.next(10));
    assert_eq!(
        server.push(&[(&log, &r1), (&log, &r2)]).await.0,
        StatusCode::OK
    );
    let (status, body) = server.push(&[(&log, &r3)]).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("quota_exceeded"))
    );
    assert_eq!(body["results"][0]["quota"], "records_per_log");
    assert_eq!(pull_all(&server, &log, None).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    let server = Server::start_with(
        Backend::Sqlite,
        &[
            ("THREADS_RATE_LIMIT__PER_SECOND", "1"),
            ("THREADS_RATE_LIMIT__BURST", "3"),
        ],
    )
    .await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let r = server
            .http
            .get(format!("{}/v1/server", server.url))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["code"], "rate_limited");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Operations endpoints are never rate limited.
    assert_eq!(
        server
            .http
            .get(format!("{}/healthz", server.url))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_are_capped() {
    let server = Server::start_with(
        Backend::Sqlite,
        &[("THREADS_WEBSOCKET__MAX_CONNECTIONS", "1")],
    )
    .await;
    let _first = crate::websocket::connect(&server, "").await;
    let url = format!("{}/v1/ws", server.url.replace("http://", "ws://"));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_fails_fast_naming_the_field() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_threads"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "mysql://nope",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("database_url"), "{stderr}");
}

/// `workers` sizes the server's runtime. Tokio names its blocking threads as it names its
/// workers, but an idle server has none: they start on demand (pages read, big pushes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_setting_sizes_the_runtime() {
    for workers in ["1", "3"] {
        let server = Server::start_with(Backend::Sqlite, &[("THREADS_WORKERS", workers)]).await;
        let tasks = std::fs::read_dir(format!("/proc/{}/task", server.pid())).unwrap();
        let running = tasks
            .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
            .filter(|name| name.trim() == "tokio-rt-worker")
            .count();
        assert_eq!(running.to_string(), workers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(Backend::Sqlite).await;
    // Every WebSocket client is sent its 1001 before the process ends.
    let mut sockets = Vec::new();
    for _ in 0..24 {
        sockets.push(crate::websocket::connect(&server, "").await);
    }
    let pid = server.pid();
    let status = tokio::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = server.wait().await;
    assert!(exit.success(), "{exit:?}");
    for (i, mut socket) in sockets.into_iter().enumerate() {
        let close = loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => continue,
                other => panic!("client {i}: {other:?} before a close frame"),
            }
        };
        assert_eq!(close.map(|f| u16::from(f.code)), Some(1001), "client {i}");
    }
}

/// The data files hold follow keys (pull tokens follow from them) and webhook secrets: the
/// server's and the command line's are owner-only, and a directory the server makes is too.
#[tokio::test]
async fn data_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    let server = Server::launch(None, &dir, &[]).await;
    let log = TestLog::new();
    assert!(server.register(&log, true).await.0.is_success());
    assert_eq!(mode(&dir), 0o700);
    for file in ["threads.db", "threads.db-wal", "threads.db-shm"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }

    // A file left world-readable by an older version is tightened when it is opened again.
    drop(server);
    std::fs::set_permissions(
        dir.join("threads.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let server = Server::launch(None, &dir, &[]).await;
    assert_eq!(server.get("/readyz").await.0, StatusCode::OK);
    assert_eq!(mode(&dir.join("threads.db")), 0o600);

    let peer = crate::peers::Peer::new();
    peer.ok(&["thread", "create"]).await;
    assert_eq!(mode(&peer.home().join("local.db")), 0o600);
}

/// A client that drips a request's headers is cut off after `limits.header_read_timeout_secs`,
/// and one address holds at most `limits.max_connections_per_address` connections (the next
/// is answered 429 and closed, and a freed slot is usable again).
#[tokio::test]
async fn slow_headers_and_too_many_connections_are_cut_off() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let server = Server::start_with(
        Backend::Sqlite,
        &[("THREADS_LIMITS__HEADER_READ_TIMEOUT_SECS", "1")],
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still open after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        if slow.write_all(b"x-drip: 1\r\n").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(10), slow.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => panic!("answered: {}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(900));

    let server = Server::start_with(
        Backend::Sqlite,
        &[("THREADS_LIMITS__MAX_CONNECTIONS_PER_ADDRESS", "3")],
    )
    .await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    async fn healthz(stream: &mut TcpStream) -> String {
        let _ = stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        assert!(healthz(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut fourth = TcpStream::connect(&addr).await.unwrap();
    let refused = healthz(&mut fourth).await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.contains("too_many_connections"), "{refused}");
    drop(held.pop());
    let started = Instant::now();
    loop {
        let mut again = TcpStream::connect(&addr).await.unwrap();
        if healthz(&mut again).await.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
