//! Live records over plain HTTP, for clients with no WebSocket: Server-Sent Events and
//! long-polling thread pulls.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use threads_store::testing::TestLog;

use crate::harness::*;
use crate::push_pull::on_both_backends;

/// An open `text/event-stream` response, read event by event.
struct Events {
    response: reqwest::Response,
    buffer: String,
}

/// One server-sent event: its name, `id` and data parsed as JSON.
#[derive(Debug)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

impl Events {
    async fn open(server: &Server, path: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = server.http.get(format!("{}{path}", server.url));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        request.send().await.unwrap()
    }

    async fn connect(server: &Server, path: &str, last_event_id: Option<&str>) -> Self {
        let response = Self::open(server, path, last_event_id).await;
        assert_eq!(response.status(), StatusCode::OK);
        let kind = response.headers()["content-type"].to_str().unwrap();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event that carries data (comments and keep-alives skipped); panics after 10 s.
    async fn next(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = ("message".to_owned(), None, String::new());
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event = value.to_owned(),
                        "id" => id = Some(value.to_owned()),
                        "data" => data.push_str(value),
                        _ => {}
                    }
                }
                if !data.is_empty() {
                    let data = serde_json::from_str(&data).unwrap();
                    return Sse { event, id, data };
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("an event within 10 s")
                .expect("stream readable")
                .expect("stream still open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `n` record events: their CIDs, and the last one's `id`.
    async fn records(&mut self, n: usize) -> (Vec<String>, String) {
        let (mut cids, mut last) = (Vec::new(), String::new());
        while cids.len() < n {
            let e = self.next().await;
            assert_eq!(e.event, "record", "{e:?}");
            assert_eq!(e.data["type"], "record");
            assert_eq!(e.data["cursor"].as_str(), e.id.as_deref());
            cids.push(e.data["cid"].as_str().unwrap().to_owned());
            last = e.id.unwrap();
        }
        (cids, last)
    }
}

on_both_backends!(event_streams_replay_go_live_and_resume_across_a_restart);
async fn event_streams_replay_go_live_and_resume_across_a_restart(backend: Backend) {
    let server = Server::start(backend).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let (r1, r2) = (log.next(100), log.next(100));
    server.push(&[(&log, &r1), (&log, &r2)]).await;
    let path = format!("/v1/threads/{}/events", log.thread);

    let mut events = Events::connect(&server, &path, None).await;
    let hello = events.next().await;
    assert_eq!(hello.event, "subscribed");
    assert_eq!(hello.data["thread"], log.thread.to_string());
    let (replayed, _) = events.records(2).await;
    assert_eq!(replayed, [r1.cid().to_string(), r2.cid().to_string()]);
    let r3 = log.next(100);
    server.push(&[(&log, &r3)]).await;
    let (live, last) = events.records(1).await;
    assert_eq!(live, [r3.cid().to_string()]);
    drop(events);

    // The server restarts while the reader is away; it resumes from the last id it saw.
    let server = server.restart().await;
    let r4 = log.next(100);
    server.push(&[(&log, &r4)]).await;
    let mut events = Events::connect(&server, &path, Some(&last)).await;
    assert_eq!(events.next().await.id.as_deref(), Some(last.as_str()));
    assert_eq!(events.records(1).await.0, [r4.cid().to_string()]);

    // `?after=` starts a first connection after a cursor.
    let mut events = Events::connect(&server, &format!("{path}?after={last}"), None).await;
    events.next().await;
    assert_eq!(events.records(1).await.0, [r4.cid().to_string()]);
}

on_both_backends!(private_event_streams_need_the_token);
async fn private_event_streams_need_the_token(backend: Backend) {
    let server = Server::start(backend).await;
    let mut log = TestLog::new();
    server.register(&log, false).await;
    let r1 = log.next(10);
    server.push(&[(&log, &r1)]).await;
    let path = format!("/v1/threads/{}/events", log.thread);

    let refused = Events::open(&server, &path, None).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "pull_token_required");
    let (status, body) = server.get("/v1/threads/nope/events").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_thread_id"))
    );

    let token = threads_core::auth::pull_token(log.keys.service(), &log.thread);
    let mut events = Events::connect(&server, &format!("{path}?token={token}"), None).await;
    assert_eq!(events.next().await.event, "subscribed");
    assert_eq!(events.records(1).await.0, [r1.cid().to_string()]);
}

on_both_backends!(a_pull_at_the_head_waits_for_the_next_record);
async fn a_pull_at_the_head_waits_for_the_next_record(backend: Backend) {
    let server = Server::start(backend).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let r1 = log.next(100);
    server.push(&[(&log, &r1)]).await;
    let path = format!("/v1/threads/{}/records", log.thread);
    let (_, page) = server.get(&path).await;
    let cursor = page["cursor"].as_str().unwrap().to_owned();

    // Records already there come back at once, wait or not.
    let (_, page) = server.get(&format!("{path}?wait=30")).await;
    assert_eq!(page["records"][0]["cid"], r1.cid().to_string());

    // At the head, the pull is answered when the next record arrives.
    let r2 = log.next(100);
    let at_head = format!("{path}?after={cursor}&wait=30");
    let waiting = server.get(&at_head);
    let pushing = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.push(&[(&log, &r2)]).await
    };
    let ((status, page), _) = tokio::join!(waiting, pushing);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["records"][0]["cid"], r2.cid().to_string());

    // Nothing arrives: an empty page with the same cursor once the wait is over.
    let cursor = page["cursor"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let (status, page) = server.get(&format!("{path}?after={cursor}&wait=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(page["records"].as_array().unwrap().len(), 0);
    assert_eq!(page["cursor"], cursor.as_str());

    let (status, body) = server.get(&format!("{path}?wait=61")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_wait"))
    );
    let log_path = format!("/v1/threads/{}/logs/{}/records?wait=1", log.thread, log.id);
    let (status, body) = server.get(&log_path).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_wait"))
    );
}
