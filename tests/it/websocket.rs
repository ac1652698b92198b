//! WebSocket push: replay from a cursor, then live, with no gap and no duplicate at the seam.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{json, Value};
use threads_core::VerifiedRecord;
use threads_store::testing::TestLog;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;
use crate::push_pull::on_both_backends;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(server: &Server, query: &str) -> Socket {
    let url = format!("{}/v1/ws{query}", server.url.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket connects")
        .0
}

/// The next JSON message, skipping pings; panics after 10 s of silence.
pub async fn next(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// The next `n` records' CIDs, in order.
pub async fn records(socket: &mut Socket, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = next(socket).await;
        assert_eq!(m["type"], "record", "{m}");
        out.push(m["cid"].as_str().unwrap().to_owned());
    }
    out
}

on_both_backends!(replay_then_live_then_resume);
async fn replay_then_live_then_resume(backend: Backend) {
    let server = Server::start(backend).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let (r1, r2) = (log.next(100), log.next(100));
    server.push(&[(&log, &r1), (&log, &r2)]).await;
    let (_, page) = server
        .get(&format!("/v1/threads/{}/records?limit=1", log.thread))
        .await;
    let after_r1 = page["cursor"].as_str().unwrap().to_owned();

    // Subscribe from after r1: r2 is replayed from storage.
    let mut ws = connect(&server, "").await;
    let subscribe =
        json!({"type": "subscribe", "thread": log.thread.to_string(), "cursor": after_r1});
    ws.send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    assert_eq!(records(&mut ws, 1).await, [r2.cid().to_string()]);

    // Live records follow.
    let (r3, r4) = (log.next(100), log.next(100));
    server.push(&[(&log, &r3)]).await;
    server.push(&[(&log, &r4)]).await;
    let live = records(&mut ws, 2).await;
    assert_eq!(live, [r3.cid().to_string(), r4.cid().to_string()]);

    // Disconnect, miss a record, resume from the last cursor given.
    let (_, thread) = server.get(&format!("/v1/threads/{}", log.thread)).await;
    let cursor = thread["cursor"].as_str().unwrap().to_owned();
    drop(ws);
    let r5 = log.next(100);
    server.push(&[(&log, &r5)]).await;
    let mut ws = connect(&server, &format!("?thread={}&cursor={cursor}", log.thread)).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    assert_eq!(records(&mut ws, 1).await, [r5.cid().to_string()]);

    // Many records pushed while subscribed arrive exactly once, in order.
    let batch: Vec<_> = (0..200).map(|_| log.next(64)).collect();
    let expected: Vec<String> = batch.iter().map(|r| r.cid().to_string()).collect();
    let pushes = async {
        for chunk in batch.chunks(20) {
            let pairs: Vec<_> = chunk.iter().map(|r| (&log, r)).collect();
            assert_eq!(server.push(&pairs).await.0, StatusCode::OK);
        }
    };
    let (_, got) = tokio::join!(pushes, records(&mut ws, 200));
    assert_eq!(got, expected);

    // Errors are messages, and the connection stays usable.
    ws.send(Message::Text(
        json!({"type": "subscribe", "thread": "nope"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let err = next(&mut ws).await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("bad_thread_id"))
    );
    ws.send(Message::Text("{".into())).await.unwrap();
    assert_eq!(next(&mut ws).await["code"], "bad_message");
}

on_both_backends!(private_subscriptions_need_the_token);
async fn private_subscriptions_need_the_token(backend: Backend) {
    let server = Server::start(backend).await;
    let mut log = TestLog::new();
    server.register(&log, false).await;
    let r1 = log.next(10);
    server.push(&[(&log, &r1)]).await;
    let mut ws = connect(&server, &format!("?thread={}", log.thread)).await;
    assert_eq!(next(&mut ws).await["code"], "pull_token_required");
    let token = threads_core::auth::pull_token(log.keys.service(), &log.thread);
    let mut ws = connect(&server, &format!("?thread={}&token={token}", log.thread)).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");
    assert_eq!(records(&mut ws, 1).await, [r1.cid().to_string()]);
}

/// A subscriber that stops reading does not slow writers; when it reads again it gets every
/// record, in order, fed from storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_never_stalls_ingestion() {
    let server = Server::start(Backend::Sqlite).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let mut ws = connect(&server, &format!("?thread={}", log.thread)).await;
    assert_eq!(next(&mut ws).await["type"], "subscribed");

    // 1,500 records of 1 KiB (about 3 MiB of JSON) while the subscriber reads nothing.
    let batch: Vec<_> = (0..1500).map(|_| log.next(1024)).collect();
    let started = std::time::Instant::now();
    for chunk in batch.chunks(500) {
        let pairs: Vec<_> = chunk.iter().map(|r| (&log, r)).collect();
        assert_eq!(server.push(&pairs).await.0, StatusCode::OK);
    }
    let pushing = started.elapsed();
    assert!(
        pushing < Duration::from_secs(60),
        "ingestion stalled: {pushing:?}"
    );

    let expected: Vec<String> = batch.iter().map(|r| r.cid().to_string()).collect();
    assert_eq!(records(&mut ws, 1500).await, expected);
}

/// A public thread with `n` records stored, on `server`.
async fn public_thread_with(
    server: &Server,
    n: usize,
    len: usize,
) -> (TestLog, Vec<VerifiedRecord>) {
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let batch: Vec<_> = (0..n).map(|_| log.next(len)).collect();
    let pairs: Vec<_> = batch.iter().map(|r| (&log, r)).collect();
    assert_eq!(server.push(&pairs).await.0, StatusCode::OK);
    (log, batch)
}

/// However many messages a client pipelines without reading, while a backlog streams to it,
/// each gets its answer and the connection keeps going: the answers and the backlog's records
/// share the socket without waiting on each other.
#[tokio::test]
async fn pipelined_messages_never_stop_a_connection() {
    let server = Server::start(Backend::Sqlite).await;
    let (log, _) = public_thread_with(&server, 100, 64).await;

    let mut ws = connect(&server, &format!("?thread={}", log.thread)).await;
    let unknown = TestLog::new().thread.to_string();
    for _ in 0..500 {
        let sub = json!({"type": "subscribe", "thread": unknown});
        ws.send(Message::Text(sub.to_string().into()))
            .await
            .unwrap();
    }
    let bye = json!({"type": "unsubscribe", "thread": log.thread.to_string()});
    ws.send(Message::Text(bye.to_string().into()))
        .await
        .unwrap();
    let (mut refused, mut records) = (0, 0);
    loop {
        let m = next(&mut ws).await;
        match m["type"].as_str().unwrap() {
            "error" => {
                assert_eq!(m["code"], "not_found", "{m}");
                refused += 1;
            }
            "record" => records += 1,
            "subscribed" => {}
            "unsubscribed" => break,
            other => panic!("{other}: {m}"),
        }
    }
    assert_eq!(refused, 500);
    assert!(records <= 100);
}

/// A subscriber without the pull token follows a public thread only while it stays public: a
/// record stored after the thread turned private never reaches it. One with the token reads on.
#[tokio::test]
async fn a_thread_turned_private_stops_reaching_subscribers_without_its_token() {
    let server = Server::start(Backend::Sqlite).await;
    let mut log = TestLog::new();
    server.register(&log, true).await;
    let first = log.next(16);
    assert_eq!(server.push(&[(&log, &first)]).await.0, StatusCode::OK);
    let token = threads_core::auth::pull_token(log.keys.service(), &log.thread);
    let mut anonymous = connect(&server, &format!("?thread={}", log.thread)).await;
    let mut holder = connect(&server, &format!("?thread={}&token={token}", log.thread)).await;
    for ws in [&mut anonymous, &mut holder] {
        assert_eq!(next(ws).await["type"], "subscribed");
        assert_eq!(records(ws, 1).await, [first.cid().to_string()]);
    }

    assert_eq!(server.register(&log, false).await.0, StatusCode::OK);
    let second = log.next(16);
    assert_eq!(server.push(&[(&log, &second)]).await.0, StatusCode::OK);
    let refused = next(&mut anonymous).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "pull_token_required", "{refused}");
    assert_eq!(records(&mut holder, 1).await, [second.cid().to_string()]);
}

on_both_backends!(a_deleted_thread_ends_its_subscriptions_and_a_new_one_streams_live);
/// Deleting a thread ends every subscription to it, with the token or without; registered
/// again under the same ID it counts from 1 again, and a new subscriber gets its new records.
async fn a_deleted_thread_ends_its_subscriptions_and_a_new_one_streams_live(backend: Backend) {
    let server = Server::start(backend).await;
    let mut log = TestLog::new();
    server.register(&log, false).await;
    let old: Vec<_> = (0..3).map(|_| log.next(16)).collect();
    let batch: Vec<_> = old.iter().map(|r| (&log, r)).collect();
    assert_eq!(server.push(&batch).await.0, StatusCode::OK);
    let token = threads_core::auth::pull_token(log.keys.service(), &log.thread);
    let query = format!("?thread={}&token={token}", log.thread);
    let mut before = connect(&server, &query).await;
    assert_eq!(next(&mut before).await["type"], "subscribed");
    assert_eq!(records(&mut before, 3).await.len(), 3);

    let deleted = server
        .signed(&log, threads_core::auth::Action::DeleteThread)
        .await;
    assert_eq!(deleted.0, StatusCode::OK);
    let ended = next(&mut before).await;
    assert_eq!(ended["code"], "not_found", "{ended}");

    log.head = None;
    server.register(&log, false).await;
    let mut after = connect(&server, &query).await;
    assert_eq!(next(&mut after).await["type"], "subscribed");
    for _ in 0..2 {
        let record = log.next(16);
        assert_eq!(server.push(&[(&log, &record)]).await.0, StatusCode::OK);
        assert_eq!(records(&mut after, 1).await, [record.cid().to_string()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_follows_at_most_256_threads() {
    let server = Server::start(Backend::Sqlite).await;
    let mut ws = connect(&server, "").await;
    for i in 0..257 {
        let log = TestLog::new();
        server.register(&log, true).await;
        let sub = json!({"type": "subscribe", "thread": log.thread.to_string()});
        ws.send(Message::Text(sub.to_string().into()))
            .await
            .unwrap();
        let reply = next(&mut ws).await;
        if i < 256 {
            assert_eq!(reply["type"], "subscribed", "{reply}");
        } else {
            assert_eq!(reply["code"], "too_many_subscriptions", "{reply}");
        }
    }
}

/// The message handler under arbitrary traffic: sequences of well-formed, malformed and
/// hostile client messages (subscriptions to known, unknown and malformed threads, bad
/// cursors and tokens, unsubscriptions, garbage text, binary frames), pipelined without
/// reading. Every message gets exactly one answer, in order, and the connection stays usable.
/// The seed of a failing run is in the panic message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_handler_answers_arbitrary_traffic() {
    let server = Server::start(Backend::Sqlite).await;
    let (log, _) = public_thread_with(&server, 20, 32).await;
    let known = log.thread.to_string();
    let unknown = TestLog::new().thread.to_string();

    for run in 0..12 {
        let seed = rand_core::RngCore::next_u64(&mut rand_core::OsRng) | 1;
        let mut state = seed;
        let mut next_u32 = move || {
            // xorshift64: reproducible from the seed.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u32
        };
        let mut ws = connect(&server, "").await;
        let n = 50 + next_u32() % 150;
        for _ in 0..n {
            let message = match next_u32() % 9 {
                0 => json!({"type": "subscribe", "thread": known}).to_string(),
                1 => json!({"type": "subscribe", "thread": unknown}).to_string(),
                2 => json!({"type": "subscribe", "thread": "not a thread"}).to_string(),
                3 => json!({"type": "subscribe", "thread": known, "cursor": "%%%"}).to_string(),
                4 => json!({"type": "subscribe", "thread": known, "token": "x"}).to_string(),
                5 => json!({"type": "unsubscribe", "thread": known}).to_string(),
                6 => json!({"type": "unsubscribe", "thread": "?"}).to_string(),
                7 => {
                    let len = (next_u32() % 64) as usize;
                    (0..len)
                        .map(|_| (b' ' + (next_u32() % 95) as u8) as char)
                        .collect()
                }
                _ => {
                    let frame = vec![next_u32() as u8; (next_u32() % 32) as usize];
                    ws.send(Message::Binary(frame.into())).await.unwrap();
                    continue;
                }
            };
            ws.send(Message::Text(message.into())).await.unwrap();
        }
        let mut answers = 0;
        while answers < n {
            let m = next(&mut ws).await;
            match m["type"].as_str() {
                Some("record") => {}
                Some("subscribed" | "unsubscribed" | "error") => answers += 1,
                _ => panic!("run {run} (seed {seed}): {m}"),
            }
        }
        // Still usable: one more question, one more answer.
        let bye = json!({"type": "unsubscribe", "thread": known});
        ws.send(Message::Text(bye.to_string().into()))
            .await
            .unwrap();
        loop {
            let m = next(&mut ws).await;
            if m["type"] == "unsubscribed" {
                break;
            }
            assert_eq!(m["type"], "record", "run {run} (seed {seed}): {m}");
        }
    }
}
