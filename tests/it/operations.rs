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
    let metrics = server
        .http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully() {
    let server = Server::start(Backend::Sqlite).await;
    let pid = server.pid();
    let status = tokio::process::Command::new("kill")
        .arg(pid.to_string())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = server.wait().await;
    assert!(exit.success(), "{exit:?}");
}
