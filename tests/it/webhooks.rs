//! Webhooks against a real receiving HTTP server: Standard Webhooks signatures checked by the
//! reference Python library, retries and Retry-After, disabling, replay, test events, secret
//! rotation, the private-network guard, deliveries surviving a crash, and two servers on one
//! Postgres never sending a delivery twice at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use rand_core::OsRng;
use serde_json::{json, Value};
use threads_core::auth::{Action, SignedRequest};
use threads_store::testing::TestLog;

use crate::harness::{now_ms, Backend, Server};

/// One request the receiver got.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Vec<u8>,
}

/// A scripted answer: a status and an optional `Retry-After`.
pub(crate) type Answer = (u16, Option<&'static str>);

/// A webhook receiver on 127.0.0.1: answers with the scripted statuses first (status,
/// Retry-After), then 200, and keeps every request.
#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) url: String,
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<Vec<Answer>>>,
}

impl Receiver {
    pub(crate) async fn start(script: Vec<Answer>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let receiver = Receiver {
            url,
            got: Default::default(),
            script: Arc::new(Mutex::new(script.into_iter().rev().collect())),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    state.got.lock().unwrap().push(Received {
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                            .collect(),
                        body: body.to_vec(),
                    });
                    match state.script.lock().unwrap().pop() {
                        Some((status, retry_after)) => {
                            let mut r = StatusCode::from_u16(status).unwrap().into_response();
                            if let Some(secs) = retry_after {
                                r.headers_mut().insert("retry-after", secs.parse().unwrap());
                            }
                            r
                        }
                        None => StatusCode::OK.into_response(),
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        receiver
    }

    pub(crate) fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `check` holds for what was received (up to 30 s).
    pub(crate) async fn until(
        &self,
        what: &str,
        check: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        for _ in 0..3000 {
            let got = self.got();
            if check(&got) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("waited 30 s for {what}; received {}", self.got().len());
    }
}

pub(crate) fn body(r: &Received) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// Verifies a delivery with the Standard Webhooks reference library (Python).
pub(crate) async fn verified_by_reference_library(secret: &str, r: &Received) -> bool {
    let headers = json!({
        "webhook-id": r.headers["webhook-id"],
        "webhook-timestamp": r.headers["webhook-timestamp"],
        "webhook-signature": r.headers["webhook-signature"],
    });
    let script = "import sys, json\n\
        from standardwebhooks.webhooks import Webhook\n\
        secret, headers, body = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]\n\
        Webhook(secret).verify(body, headers)\n\
        print('verified')";
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, secret, &headers.to_string()])
        .arg(String::from_utf8(r.body.clone()).unwrap())
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success() || !out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim() == "verified"
}

const FAST_RETRIES: [(&str, &str); 3] = [
    ("THREADS_WEBHOOKS__ALLOW_PRIVATE_ADDRESSES", "true"),
    ("THREADS_WEBHOOKS__RETRY_BASE_MS", "50"),
    ("THREADS_WEBHOOKS__RETRY_MAX_MS", "200"),
];

/// A `subscribe` request signed by the log's key.
async fn subscribe_request(server: &Server, log: &TestLog, url: &str) -> SignedRequest {
    SignedRequest::sign(
        &server.server_id().await,
        &log.thread,
        &log.pair,
        Action::Subscribe {
            url: url.to_owned(),
            only_log: None,
        },
        now_ms(),
        &mut OsRng,
    )
}

/// A writer subscribes with a request signed by its log key.
async fn subscribe(server: &Server, log: &TestLog, url: &str) -> Value {
    let request = subscribe_request(server, log, url).await;
    let (status, created) = server.post("/v1/webhooks", &request).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

/// A call that manages a webhook (`action`: `""`, `"/deliveries"`, `"/test"`, ...) with its
/// secret.
async fn manage(
    server: &Server,
    method: reqwest::Method,
    id: &str,
    action: &str,
    secret: &str,
) -> (StatusCode, Value) {
    let r = server
        .http
        .request(method, format!("{}/v1/webhooks/{id}{action}", server.url))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

crate::push_pull::on_both_backends!(deliveries_are_signed_retried_and_listed);
async fn deliveries_are_signed_retried_and_listed(backend: Backend) {
    let server = Server::start_with(backend, &FAST_RETRIES).await;
    // The first attempt fails with 500, the second with 503 and Retry-After, then 200.
    let receiver = Receiver::start(vec![(500, None), (503, Some("1"))]).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let hook = subscribe(&server, &log, &receiver.url).await;
    let (id, secret) = (
        hook["id"].as_str().unwrap(),
        hook["secret"].as_str().unwrap(),
    );
    assert!(secret.starts_with("whsec_"));

    let records: Vec<_> = (0..3).map(|_| log.next(100)).collect();
    let batch: Vec<_> = records.iter().map(|r| (&log, r)).collect();
    assert_eq!(server.push(&batch).await.0, StatusCode::OK);

    // Two failures, then every record delivered.
    let got = receiver
        .until("3 records delivered after 2 failures", |g| g.len() >= 5)
        .await;
    let mut by_id: HashMap<String, Value> = HashMap::new();
    for r in &got {
        assert!(verified_by_reference_library(secret, r).await, "{r:?}");
        by_id.insert(r.headers["webhook-id"].clone(), body(r));
    }
    assert_eq!(
        by_id.len(),
        3,
        "one webhook-id per delivery, stable across retries"
    );
    for record in &records {
        let payload = by_id
            .values()
            .find(|b| b["data"]["cid"] == record.cid().to_string())
            .expect("each record delivered");
        assert_eq!(payload["type"], "record.created");
        assert_eq!(payload["data"]["log"], log.id.to_string());
        let inline = &payload["data"]["record"]["body"];
        let b64 = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            &record.blocks().body,
        );
        assert_eq!(inline.as_str().unwrap(), b64);
    }
    let (status, list) = manage(&server, reqwest::Method::GET, id, "/deliveries", secret).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let deliveries = list["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 3);
    // Deliveries go out concurrently, so the two failures may fall on one or two of them:
    // five attempts in all, each delivery ending with a 200.
    let mut statuses: Vec<i64> = deliveries
        .iter()
        .flat_map(|d| d["attempts"].as_array().unwrap().clone())
        .map(|a| a["status"].as_i64().unwrap())
        .collect();
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 200, 500, 503]);
    for d in deliveries {
        assert_eq!(
            d["attempts"].as_array().unwrap().last().unwrap()["status"],
            200
        );
    }
    assert!(deliveries.iter().all(|d| d["state"] == "delivered"));

    // Wrong or missing credentials look like an unknown webhook.
    let (status, _) = manage(&server, reqwest::Method::GET, id, "", "whsec_wrong").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A test event, signed with the rotated secret; the old secret no longer manages it.
    let (status, rotated) =
        manage(&server, reqwest::Method::POST, id, "/rotate-secret", secret).await;
    assert_eq!(status, StatusCode::OK);
    let new_secret = rotated["secret"].as_str().unwrap();
    let (status, _) = manage(&server, reqwest::Method::POST, id, "/test", secret).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = manage(&server, reqwest::Method::POST, id, "/test", new_secret).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let got = receiver
        .until("the test event", |g| {
            g.iter().any(|r| body(r)["type"] == "webhook.test")
        })
        .await;
    let test = got
        .iter()
        .find(|r| body(r)["type"] == "webhook.test")
        .unwrap();
    assert!(verified_by_reference_library(new_secret, test).await);
    assert!(!verified_by_reference_library(secret, test).await);

    // Replay from the start: every record again, as the same message (its first delivery's
    // `webhook-id`, by which receivers de-duplicate), under new delivery rows.
    let (status, replayed) =
        manage(&server, reqwest::Method::POST, id, "/replay", new_secret).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{replayed}");
    assert_eq!(replayed["queued"], 3);
    let got = receiver
        .until("the replay", |g| {
            g.iter()
                .filter(|r| {
                    body(r)["type"] == "record.created" && r.headers.contains_key("webhook-id")
                })
                .count()
                >= 8
        })
        .await;
    let mut sent: std::collections::HashMap<String, Vec<String>> = Default::default();
    for r in got.iter().filter(|r| body(r)["type"] == "record.created") {
        let cid = body(r)["data"]["cid"].as_str().unwrap().to_owned();
        sent.entry(cid)
            .or_default()
            .push(r.headers["webhook-id"].clone());
    }
    assert_eq!(sent.len(), 3);
    for ids in sent.values() {
        assert!(
            ids.len() >= 2 && ids.iter().all(|i| *i == ids[0]),
            "{ids:?}"
        );
    }

    // Deleted: gone for its secret too.
    let (status, _) = manage(&server, reqwest::Method::DELETE, id, "", new_secret).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = manage(&server, reqwest::Method::GET, id, "", new_secret).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A writer who deletes its log takes that log's deliveries with it: none is left to fail
/// (and count toward disabling the webhook) for a record that no longer exists.
#[tokio::test]
async fn unregistering_a_log_drops_its_deliveries() {
    let env = [
        FAST_RETRIES[0],
        ("THREADS_WEBHOOKS__RETRY_BASE_MS", "60000"),
        ("THREADS_WEBHOOKS__RETRY_MAX_MS", "60000"),
    ];
    let server = Server::start_with(Backend::Sqlite, &env).await;
    let receiver = Receiver::start(vec![(503, None); 3]).await;
    let mut writer = TestLog::new();
    let mut other = writer.sibling();
    server.register(&writer, true).await;
    server.register(&other, true).await;
    let hook = subscribe(&server, &other, &receiver.url).await;
    let (id, secret) = (
        hook["id"].as_str().unwrap(),
        hook["secret"].as_str().unwrap(),
    );
    let records: Vec<_> = (0..3).map(|_| writer.next(10)).collect();
    let batch: Vec<_> = records.iter().map(|r| (&writer, r)).collect();
    server.push(&batch).await;
    receiver.until("the first attempts", |g| g.len() >= 3).await;
    let kept = other.next(10);
    server.push(&[(&other, &kept)]).await;
    // Until the kept record's attempt is recorded too: a delivery row is written once sent.
    for _ in 0..200 {
        let (_, list) = manage(&server, reqwest::Method::GET, id, "/deliveries", secret).await;
        if list["deliveries"].as_array().map_or(0, Vec::len) >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    let (status, _) = server.signed(&writer, Action::Unregister).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = manage(&server, reqwest::Method::GET, id, "/deliveries", secret).await;
    let cids: Vec<_> = list["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["cid"].clone())
        .collect();
    assert_eq!(cids, vec![json!(kept.cid().to_string())]);
    let (_, shown) = manage(&server, reqwest::Method::GET, id, "", secret).await;
    assert!(shown["disabled_ms"].is_null());
}

crate::push_pull::on_both_backends!(failing_endpoints_are_disabled_and_can_come_back);
async fn failing_endpoints_are_disabled_and_can_come_back(backend: Backend) {
    let mut env = FAST_RETRIES.to_vec();
    env.push(("THREADS_WEBHOOKS__DISABLE_AFTER_FAILURES", "4"));
    env.push(("THREADS_WEBHOOKS__MAX_ATTEMPTS", "3"));
    let server = Server::start_with(backend, &env).await;
    let receiver = Receiver::start(vec![(500, None); 4]).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let hook = subscribe(&server, &log, &receiver.url).await;
    let (id, secret) = (
        hook["id"].as_str().unwrap(),
        hook["secret"].as_str().unwrap(),
    );
    let records: Vec<_> = (0..2).map(|_| log.next(10)).collect();
    let batch: Vec<_> = records.iter().map(|r| (&log, r)).collect();
    server.push(&batch).await;

    // Four failures in a row: disabled, and it says why.
    let mut shown = Value::Null;
    for _ in 0..3000 {
        shown = manage(&server, reqwest::Method::GET, id, "", secret)
            .await
            .1;
        if !shown["disabled_ms"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reason = shown["disabled_reason"].as_str().expect("disabled");
    assert!(reason.contains("4 failed attempts in a row"), "{reason}");
    let attempts_when_disabled = receiver.got().len();
    assert_eq!(attempts_when_disabled, 4);
    // Records arriving now wait, and nothing more is sent; the retries are paused.
    let more = log.next(10);
    server.push(&[(&log, &more)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.got().len(), attempts_when_disabled);
    let (_, listed) = manage(&server, reqwest::Method::GET, id, "/deliveries", secret).await;
    let states: Vec<_> = listed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["paused", "paused"], "{listed}");

    // Re-enabled (the receiver now answers 200): the paused retries go out, and so does what
    // arrived while it was disabled.
    let (status, _) = manage(&server, reqwest::Method::POST, id, "/enable", secret).await;
    assert_eq!(status, StatusCode::OK);
    let got = receiver
        .until("all three records after re-enabling", |g| {
            let cids: std::collections::HashSet<_> = g[4..]
                .iter()
                .map(|r| body(r)["data"]["cid"].as_str().unwrap().to_owned())
                .collect();
            cids.len() == 3
        })
        .await;
    assert!(got.len() > 4);
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let server = Server::start(Backend::Sqlite).await;
    let log = TestLog::new();
    server.register(&log, true).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://[::1]/hook",
        "http://169.254.169.254/latest",
        "http://10.0.0.1/hook",
        "http://[::127.0.0.1]/hook",
        "http://[64:ff9b::7f00:1]/hook",
        "http://[2002:7f00:1::]/hook",
        "http://224.0.0.1/hook",
        "http://[ff02::1]/hook",
        "http://198.18.0.1/hook",
        "http://[fec0::1]/hook",
        "ftp://example.com/",
        "not a url",
    ] {
        let request = subscribe_request(&server, &log, url).await;
        let (status, body) = server.post("/v1/webhooks", &request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert_eq!(body["code"], "bad_webhook_url");
    }
    // A log filter must name a log of the thread.
    let stranger = TestLog::new();
    let request = SignedRequest::sign(
        &server.server_id().await,
        &log.thread,
        &log.pair,
        Action::Subscribe {
            url: "https://example.com/hook".into(),
            only_log: Some(stranger.id.to_string()),
        },
        now_ms(),
        &mut OsRng,
    );
    let (status, body) = server.post("/v1/webhooks", &request).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "unknown_log");
    // A name is checked when it resolves, at each delivery: `localhost` is loopback.
    let mut log = log;
    let hook = subscribe(&server, &log, "http://localhost:9/hook").await;
    let (id, secret) = (
        hook["id"].as_str().unwrap(),
        hook["secret"].as_str().unwrap(),
    );
    let record = log.next(10);
    server.push(&[(&log, &record)]).await;
    let mut error = Value::Null;
    for _ in 0..3000 {
        let list = manage(&server, reqwest::Method::GET, id, "/deliveries", secret)
            .await
            .1;
        error = list["deliveries"][0]["attempts"][0]["error"].clone();
        if !error.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        error.as_str().unwrap().contains("no public address"),
        "{error}"
    );
}

/// Deliveries queued before a crash are sent after the restart: none is lost.
#[tokio::test]
async fn no_delivery_is_lost_in_a_crash() {
    let mut env = FAST_RETRIES.to_vec();
    // Long retries: the failed ones wait past the crash.
    env[1] = ("THREADS_WEBHOOKS__RETRY_BASE_MS", "1000");
    env[2] = ("THREADS_WEBHOOKS__RETRY_MAX_MS", "1000");
    // Deliveries claimed by the crashed process come back when their lease (timeout + 5 s)
    // runs out.
    env.push(("THREADS_WEBHOOKS__TIMEOUT_SECS", "1"));
    let server = Server::start_with(Backend::Postgres, &env).await;
    let receiver = Receiver::start(vec![(503, None); 20]).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    subscribe(&server, &log, &receiver.url).await;
    let records: Vec<_> = (0..20).map(|_| log.next(10)).collect();
    let batch: Vec<_> = records.iter().map(|r| (&log, r)).collect();
    assert_eq!(server.push(&batch).await.0, StatusCode::OK);
    receiver
        .until("the first attempts", |g| g.len() >= 20)
        .await;

    let mut server = server;
    server.kill9().await;
    let restarted = Server::launch(server.database_url.clone(), &server.data_dir, &env).await;
    let got = receiver
        .until("every record delivered after the restart", |g| {
            g[20..]
                .iter()
                .map(|r| body(r)["data"]["cid"].as_str().unwrap().to_owned())
                .collect::<std::collections::HashSet<_>>()
                .len()
                == 20
        })
        .await;
    assert!(got.len() >= 40);
    drop(restarted);
}

/// Two servers on one Postgres share the queue: every delivery is sent, and none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_deliveries_without_sending_twice() {
    let a = Server::start_with(Backend::Postgres, &FAST_RETRIES).await;
    let b = Server::launch(a.database_url.clone(), &a.data_dir, &FAST_RETRIES).await;
    let receiver = Receiver::start(vec![]).await;
    let mut log = TestLog::new();
    a.register(&log, true).await;
    subscribe(&a, &log, &receiver.url).await;
    const N: usize = 300;
    let records: Vec<_> = (0..N).map(|_| log.next(10)).collect();
    for (i, chunk) in records.chunks(50).enumerate() {
        let batch: Vec<_> = chunk.iter().map(|r| (&log, r)).collect();
        let server = if i % 2 == 0 { &a } else { &b };
        assert_eq!(server.push(&batch).await.0, StatusCode::OK);
    }
    let got = receiver.until("every delivery", |g| g.len() >= N).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = receiver.got().len().max(got.len());
    let ids: std::collections::HashSet<String> = receiver
        .got()
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert_eq!(ids.len(), N);
    assert_eq!(got, N, "a delivery was sent twice");
}

/// A subscription narrowed to one log gets that log's records only, live and on replay.
#[tokio::test]
async fn a_log_filter_narrows_deliveries() {
    let server = Server::start_with(Backend::Sqlite, &FAST_RETRIES).await;
    let receiver = Receiver::start(vec![]).await;
    let mut watched = TestLog::new();
    let mut other = watched.sibling();
    server.register(&watched, true).await;
    server.register(&other, true).await;
    let request = SignedRequest::sign(
        &server.server_id().await,
        &other.thread,
        &other.pair,
        Action::Subscribe {
            url: receiver.url.clone(),
            only_log: Some(watched.id.to_string()),
        },
        now_ms(),
        &mut OsRng,
    );
    let (status, hook) = server.post("/v1/webhooks", &request).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    assert_eq!(hook["log"], watched.id.to_string());
    let (a, b) = (watched.next(10), other.next(10));
    server.push(&[(&watched, &a), (&other, &b)]).await;
    receiver
        .until("the watched log's record", |g| !g.is_empty())
        .await;
    let (id, secret) = (
        hook["id"].as_str().unwrap(),
        hook["secret"].as_str().unwrap(),
    );
    // The cursor moves once the delivery's outcome is written, a moment after it arrives.
    for _ in 0..200 {
        let (_, shown) = manage(&server, reqwest::Method::GET, id, "", secret).await;
        if shown["cursor_seq"].as_u64() >= Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, replayed) = manage(&server, reqwest::Method::POST, id, "/replay", secret).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(replayed["queued"], 1);
    let got = receiver.until("the replay", |g| g.len() >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cids: Vec<_> = receiver
        .got()
        .iter()
        .map(|r| body(r)["data"]["cid"].clone())
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(cids, vec![json!(a.cid().to_string()); 2]);
}

/// The answer to a subscription says where it starts: after the thread's newest record (the
/// records that arrive later are delivered).
#[tokio::test]
async fn a_new_webhook_says_it_starts_at_the_threads_end() {
    let server = Server::start_with(Backend::Sqlite, &FAST_RETRIES).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let records: Vec<_> = (0..2).map(|_| log.next(10)).collect();
    let batch: Vec<_> = records.iter().map(|r| (&log, r)).collect();
    assert_eq!(server.push(&batch).await.0, StatusCode::OK);
    let hook = subscribe(&server, &log, "http://127.0.0.1:9/hook").await;
    assert_eq!(hook["cursor_seq"], 2, "{hook}");
    let id = hook["id"].as_str().unwrap();
    let (_, shown) = manage(
        &server,
        reqwest::Method::GET,
        id,
        "",
        hook["secret"].as_str().unwrap(),
    )
    .await;
    assert_eq!(shown["cursor_seq"], 2, "{shown}");

    // The scheme's name is case-insensitive; a replay's body is read only once the caller is
    // known, and JSON is JSON whatever its content type (an empty or `null` body is none).
    let secret = hook["secret"].as_str().unwrap();
    let url = format!("{}/v1/webhooks/{id}", server.url);
    let lower = server
        .http
        .get(&url)
        .header("authorization", format!("bearer {secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), StatusCode::OK);
    let replay = |auth: Option<&str>, body: &'static str| {
        let mut request = server.http.post(format!("{url}/replay")).body(body);
        if let Some(secret) = auth {
            request = request.bearer_auth(secret);
        }
        request.send()
    };
    let stranger = replay(None, "null").await.unwrap();
    assert_eq!(stranger.status(), StatusCode::NOT_FOUND);
    for body in ["", "null", r#"{"after": ""}"#] {
        let answer = replay(Some(secret), body).await.unwrap();
        assert_eq!(answer.status(), StatusCode::ACCEPTED, "{body:?}");
    }
    let answer = replay(Some(secret), "[1]").await.unwrap();
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
}

/// With `webhooks.secret_key`, secrets are sealed in the database: a copy of its files does not
/// hold them, deliveries are still signed with them, and a server without the key cannot use
/// them.
#[tokio::test]
async fn secrets_are_sealed_at_rest_under_the_operators_key() {
    let key = "42".repeat(32);
    let mut env = FAST_RETRIES.to_vec();
    env.push(("THREADS_WEBHOOKS__SECRET_KEY", &key));
    let server = Server::start_with(Backend::Sqlite, &env).await;
    let receiver = Receiver::start(vec![]).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let hook = subscribe(&server, &log, &receiver.url).await;
    let (id, secret) = (
        hook["id"].as_str().unwrap().to_owned(),
        hook["secret"].as_str().unwrap().to_owned(),
    );
    let record = log.next(10);
    assert_eq!(server.push(&[(&log, &record)]).await.0, StatusCode::OK);
    let got = receiver.until("the delivery", |g| !g.is_empty()).await;
    assert!(verified_by_reference_library(&secret, &got[0]).await);
    let (status, _) = manage(&server, reqwest::Method::GET, &id, "", &secret).await;
    assert_eq!(status, StatusCode::OK);

    let (status, rotated) = manage(
        &server,
        reqwest::Method::POST,
        &id,
        "/rotate-secret",
        &secret,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let rotated = rotated["secret"].as_str().unwrap().to_owned();
    for file in ["threads.db", "threads.db-wal"] {
        let bytes = std::fs::read(server.data_dir.join(file)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for s in [&secret, &rotated] {
            let key_part = s.trim_start_matches("whsec_");
            assert!(!text.contains(key_part), "{file} holds a secret");
        }
    }

    // Without the key (a restart with no settings), the sealed secret opens nothing.
    let plain = server.restart().await;
    let (status, _) = manage(&plain, reqwest::Method::GET, &id, "", &rotated).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

crate::push_pull::on_both_backends!(the_webhook_queue_is_on_the_metrics);
/// What the operator's alerts watch: records waiting for enabled webhooks (here, behind a
/// receiver that takes the connection and never answers) and webhooks disabled for failing.
async fn the_webhook_queue_is_on_the_metrics(backend: Backend) {
    let env = [
        ("THREADS_WEBHOOKS__ALLOW_PRIVATE_ADDRESSES", "true"),
        ("THREADS_WEBHOOKS__TIMEOUT_SECS", "60"),
        ("THREADS_WEBHOOKS__DISABLE_AFTER_FAILURES", "1"),
        ("THREADS_WEBHOOKS__RETRY_BASE_MS", "60000"),
    ];
    let server = Server::start_with(backend, &env).await;
    let gauge = |metrics: &str, name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("{name} is not in {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let until = |name: &'static str, want: f64| {
        let server = &server;
        async move {
            for _ in 0..300 {
                if gauge(&server.metrics().await, name) == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{name} never reached {want}: {}", server.metrics().await);
        }
    };
    let metrics = server.metrics().await;
    assert_eq!(gauge(&metrics, "threads_database_up"), 1.0);
    assert_eq!(gauge(&metrics, "threads_webhook_backlog_records"), 0.0);
    assert_eq!(gauge(&metrics, "threads_webhooks_disabled"), 0.0);

    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/hook", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut slow = TestLog::new();
    server.register(&slow, true).await;
    subscribe(&server, &slow, &silent_url).await;
    let records: Vec<_> = (0..3).map(|_| slow.next(10)).collect();
    let batch: Vec<_> = records.iter().map(|r| (&slow, r)).collect();
    assert_eq!(server.push(&batch).await.0, StatusCode::OK);
    until("threads_webhook_backlog_records", 3.0).await;

    let failing = Receiver::start(vec![(500, None)]).await;
    let mut other = TestLog::new();
    server.register(&other, true).await;
    subscribe(&server, &other, &failing.url).await;
    let record = other.next(10);
    server.push(&[(&other, &record)]).await;
    until("threads_webhooks_disabled", 1.0).await;
    // The disabled webhook's retry is paused: not the workers' backlog.
    assert_eq!(
        gauge(&server.metrics().await, "threads_webhook_backlog_records"),
        3.0
    );
}
