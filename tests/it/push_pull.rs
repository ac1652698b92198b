//! Writers push, readers pull: every outcome, every format, and that refusals store nothing.

use reqwest::StatusCode;
use serde_json::{json, Value};
use threads_store::testing::TestLog;

use crate::harness::*;

/// Runs an async scenario once per backend, as two separate tests.
macro_rules! on_both_backends {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$scenario(crate::harness::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario(crate::harness::Backend::Postgres).await
            }
        }
    };
}
pub(crate) use on_both_backends;

on_both_backends!(push_and_pull_in_every_format);
async fn push_and_pull_in_every_format(backend: Backend) {
    let server = Server::start(backend).await;
    let mut a = TestLog::new();
    let mut b = a.sibling();
    assert_eq!(server.register(&a, true).await.0, StatusCode::CREATED);
    assert_eq!(server.register(&b, true).await.0, StatusCode::CREATED);
    assert_eq!(server.register(&a, true).await.0, StatusCode::OK);

    // One batch across two logs.
    let (a1, a2, b1) = (a.next(1024), a.next(1024), b.next(1024));
    let (status, body) = server.push(&[(&a, &a1), (&a, &a2), (&b, &b1)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let outcomes: Vec<_> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes,
        [json!("accepted"), json!("accepted"), json!("accepted")]
    );
    assert_eq!(body["results"][2]["seq"], 3);
    assert_eq!(body["results"][1]["counter"], 2);
    assert_eq!(body["results"][0]["cid"], a1.cid().to_string());

    // Pushing again is idempotent.
    let (status, body) = server.push(&[(&a, &a2)]).await;
    assert_eq!(
        (status, &body["results"][0]["outcome"]),
        (StatusCode::OK, &json!("duplicate"))
    );

    // CAR push.
    let a3 = a.next(1024);
    let car = threads::server::v1::wire::write_car([threads::server::v1::wire::CarItem::new(
        &a.id,
        &a.thread,
        a3.blocks(),
    )])
    .await;
    let response = server
        .http
        .post(format!("{}/v1/records", server.url))
        .header("content-type", "application/vnd.ipld.car")
        .body(car)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Pull the thread in arrival order, following the cursor.
    let all = pull_all(&server, &a, None).await;
    let cids: Vec<_> = all
        .iter()
        .map(|r| r["cid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        cids,
        [a1.cid(), a2.cid(), b1.cid(), a3.cid()].map(|c| c.to_string())
    );
    assert_eq!(all[2]["log"], b.id.to_string());
    let (_, first_page) = server
        .get(&format!("/v1/threads/{}/records?limit=2", a.thread))
        .await;
    assert_eq!(first_page["more"], true);
    let cursor = first_page["cursor"].as_str().unwrap();
    let (_, rest) = server
        .get(&format!("/v1/threads/{}/records?after={cursor}", a.thread))
        .await;
    assert_eq!(rest["records"].as_array().unwrap().len(), 2);
    assert_eq!(rest["more"], false);

    // Pull one log by counter.
    let (status, page) = server
        .get(&format!(
            "/v1/threads/{}/logs/{}/records?after=1",
            a.thread, a.id
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let counters: Vec<_> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["counter"].clone())
        .collect();
    assert_eq!(counters, [json!(2), json!(3)]);
    assert_eq!(page["cursor"], "3");

    // The pulled bytes verify with the follow key and read with the read key.
    let record = &all[0];
    let bytes = |f: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(record[f].as_str().unwrap())
            .unwrap()
    };
    let blocks = threads_core::UnverifiedRecord {
        record: bytes("record"),
        event: bytes("event"),
        header: bytes("header"),
        body: bytes("body"),
    };
    let verified = blocks
        .verify(
            a.keys.service(),
            &a.id,
            threads_core::SignaturePolicy::CurrentOnly,
        )
        .unwrap();
    assert_eq!(
        verified.read(a.keys.read().unwrap()).unwrap(),
        a1.read(a.keys.read().unwrap()).unwrap()
    );

    // CAR and DAG-CBOR pulls.
    let car = server
        .http
        .get(format!("{}/v1/threads/{}/records", server.url, a.thread))
        .header("accept", "application/vnd.ipld.car")
        .send()
        .await
        .unwrap();
    assert_eq!(car.headers()["content-type"], "application/vnd.ipld.car");
    assert_eq!(car.headers()["x-threads-more"], "false");
    let pulled = threads::server::v1::wire::read_car(&car.bytes().await.unwrap())
        .await
        .unwrap();
    assert_eq!(pulled.len(), 4);
    assert_eq!(pulled[3].blocks, *a3.blocks());
    let cbor = server
        .http
        .get(format!(
            "{}/v1/threads/{}/records?format=dag-cbor",
            server.url, a.thread
        ))
        .send()
        .await
        .unwrap();
    let bytes = cbor.bytes().await.unwrap();
    let doc: ipld_core::ipld::Ipld = serde_ipld_dagcbor::from_slice(&bytes).unwrap();
    match doc.get("records").unwrap().unwrap() {
        ipld_core::ipld::Ipld::List(list) => assert_eq!(list.len(), 4),
        other => panic!("{other:?}"),
    }
    // Canonical DAG-CBOR: encoding what was read gives the same bytes.
    assert_eq!(serde_ipld_dagcbor::to_vec(&doc).unwrap(), bytes);

    // Raw blocks: immutable, cacheable, 304 on a matching ETag. A record is found in any
    // thread, its other nodes within their thread.
    let url = format!(
        "{}/v1/threads/{}/blocks/{}",
        server.url,
        a.thread,
        a1.event_cid()
    );
    let raw = server.http.get(&url).send().await.unwrap();
    assert_eq!(raw.status(), StatusCode::OK);
    assert_eq!(raw.headers()["content-type"], "application/vnd.ipld.raw");
    assert!(raw.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let etag = raw.headers()["etag"].clone();
    assert_eq!(raw.bytes().await.unwrap(), a1.blocks().event);
    let again = server
        .http
        .get(&url)
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    // The CAR form is other bytes: its own ETag, and caches told that the answer varies by
    // Accept.
    let car = server
        .http
        .get(&url)
        .header("accept", "application/vnd.ipld.car")
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(car.status(), StatusCode::OK);
    assert_ne!(car.headers()["etag"], etag);
    assert_eq!(car.headers()["vary"], "accept");
    // Bytes after a valid CID make another string, not the same block.
    let (status, err) = server
        .get(&format!("/v1/blocks/{}aaaa", a1.event_cid()))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_cid"))
    );
    let (status, err) = server
        .get(&format!("/v1/blocks/{}", threads_core::cid_of(b"nothing")))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    // By CID alone: the record, not its other nodes; under another thread, none.
    let raw = server
        .http
        .get(format!("{}/v1/blocks/{}", server.url, a1.cid()))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::OK);
    assert_eq!(raw.bytes().await.unwrap(), a1.blocks().record);
    let (status, err) = server.get(&format!("/v1/blocks/{}", a1.event_cid())).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    assert!(
        err["detail"]
            .as_str()
            .unwrap()
            .contains("within its thread"),
        "{err}"
    );
    for (cid, bytes) in [
        (a1.cid(), &a1.blocks().record),
        (a1.content_cids().0, &a1.blocks().header),
        (a1.content_cids().1, &a1.blocks().body),
    ] {
        let scoped = format!("{}/v1/threads/{}/blocks/{cid}", server.url, a.thread);
        let raw = server.http.get(scoped).send().await.unwrap();
        assert_eq!(raw.status(), StatusCode::OK);
        assert_eq!(raw.bytes().await.unwrap(), bytes);
    }
    let other = TestLog::new();
    server.register(&other, false).await;
    let token = threads_core::auth::pull_token(other.keys.service(), &other.thread);
    let (status, err) = server
        .get(&format!(
            "/v1/threads/{}/blocks/{}?token={token}",
            other.thread,
            a1.event_cid()
        ))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "{err}"
    );

    // Listings with heads and counters.
    let (_, thread) = server.get(&format!("/v1/threads/{}", a.thread)).await;
    assert_eq!(thread["records"], 4);
    assert_eq!(thread["logs"].as_array().unwrap().len(), 2);
    let (_, log) = server
        .get(&format!("/v1/threads/{}/logs/{}", a.thread, a.id))
        .await;
    assert_eq!(
        log["head"],
        json!({"cid": a3.cid().to_string(), "counter": 3})
    );
    let (_, list) = server.get("/v1/threads").await;
    assert_eq!(list["threads"][0]["id"], a.thread.to_string());
}

on_both_backends!(positions_past_what_storage_counts_are_refused_not_wrapped);
/// Counters and sequence numbers are signed 64-bit in storage: a cursor at or past 2^63 is
/// refused, never read as a negative number (which would start the page from the beginning).
async fn positions_past_what_storage_counts_are_refused_not_wrapped(backend: Backend) {
    use base64::Engine;
    let server = Server::start(backend).await;
    let mut a = TestLog::new();
    server.register(&a, true).await;
    let records: Vec<_> = (0..2).map(|_| a.next(8)).collect();
    let pairs: Vec<_> = records.iter().map(|r| (&a, r)).collect();
    assert_eq!(server.push(&pairs).await.0, StatusCode::OK);
    let (_, thread) = server.get(&format!("/v1/threads/{}", a.thread)).await;
    let created = thread["created_ms"].as_i64().unwrap();
    for after in [u64::MAX, 1 << 63] {
        let (status, err) = server
            .get(&format!(
                "/v1/threads/{}/logs/{}/records?after={after}",
                a.thread, a.id
            ))
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_cursor")),
            "{after}"
        );
        let mut cursor = created.to_be_bytes().to_vec();
        cursor.extend(after.to_be_bytes());
        let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(cursor);
        let (status, err) = server
            .get(&format!("/v1/threads/{}/records?after={cursor}", a.thread))
            .await;
        assert_eq!(
            (status, err["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_cursor")),
            "{after}"
        );
    }
    // The largest position storage counts is a cursor like any other: nothing after it.
    let (status, page) = server
        .get(&format!(
            "/v1/threads/{}/logs/{}/records?after={}",
            a.thread,
            a.id,
            i64::MAX
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["records"], json!([]));
}

on_both_backends!(every_refusal_is_clear_and_stores_nothing);
async fn every_refusal_is_clear_and_stores_nothing(backend: Backend) {
    let server = Server::start_with(backend, &[("THREADS_LIMITS__MAX_BATCH_RECORDS", "3")]).await;
    let mut a = TestLog::new();
    server.register(&a, true).await;
    let (a1, a2, a3) = (a.next(64), a.next(64), a.next(64));
    assert_eq!(server.push(&[(&a, &a1)]).await.0, StatusCode::OK);
    let before = pull_all(&server, &a, None).await;

    let expect = |(status, body): (StatusCode, Value), want: StatusCode, code: &str| {
        assert_eq!(status, want, "{body}");
        assert_eq!(body["code"], code, "{body}");
        body
    };

    // A gap says which head the server holds.
    let body = expect(server.push(&[(&a, &a3)]).await, StatusCode::CONFLICT, "gap");
    assert_eq!(body["results"][0]["head"]["counter"], 1);
    // A fork: a second record after a1.
    let fork = a.after(Some(a1.cid()), 64);
    assert_eq!(server.push(&[(&a, &a2)]).await.0, StatusCode::OK);
    expect(
        server.push(&[(&a, &fork)]).await,
        StatusCode::CONFLICT,
        "fork",
    );
    let (_, evidence) = server
        .get(&format!("/v1/threads/{}/logs/{}/forks", a.thread, a.id))
        .await;
    assert_eq!(evidence["forks"][0]["cid"], fork.cid().to_string());
    let before = {
        let mut b = before;
        b.extend(pull_all(&server, &a, None).await.into_iter().skip(1));
        b
    };

    // Tampered records: each with its code.
    let mut swapped = record_json(&a, &a3);
    swapped["body"] = record_json(&a, &a1)["body"].clone();
    let post = |v: Value| server.post("/v1/records", json!({"records": [v]}));
    expect(
        post(swapped).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad_link",
    );
    let stranger = TestLog::new();
    let mut wrong_log = record_json(&a, &a3);
    wrong_log["log"] = json!(stranger.id.to_string());
    expect(post(wrong_log).await, StatusCode::NOT_FOUND, "unknown_log");
    let mut bad_event = record_json(&a, &a3);
    bad_event["event"] = json!("oWNib2R5AA==");
    expect(
        post(bad_event).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "malformed",
    );
    let mut unknown_thread = record_json(&stranger, &a3);
    unknown_thread["log"] = json!(a.id.to_string());
    expect(
        post(unknown_thread).await,
        StatusCode::NOT_FOUND,
        "unknown_log",
    );
    // A signature by another key, over the right bytes.
    let mut impostor = a.sibling();
    impostor.pair = threads_core::Keypair::generate(&mut rand_core::OsRng);
    impostor.head = a.head;
    let forged = impostor.next(64);
    expect(
        server.push(&[(&a, &forged)]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad_signature",
    );

    // Malformed requests.
    expect(
        server.post("/v1/records", json!({"records": []})).await,
        StatusCode::BAD_REQUEST,
        "empty_batch",
    );
    expect(
        server.post("/v1/records", json!({"nope": 1})).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let mut not_base64 = record_json(&a, &a3);
    not_base64["record"] = json!("%%%");
    expect(
        post(not_base64).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let four = [(&a, &a3), (&a, &a3), (&a, &a3), (&a, &a3)];
    expect(
        server.push(&four).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "batch_too_large",
    );
    let response = server
        .http
        .post(format!("{}/v1/records", server.url))
        .header("content-type", "application/vnd.ipld.car")
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let (status, err) = server
        .get("/v1/threads/bafkqaaaaaaaaaaaaaaaaaaaaaaaaa/records?after=zzz")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    let (status, err) = server
        .get(&format!("/v1/threads/{}/records?after=!!", a.thread))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_cursor"))
    );
    let (status, err) = server
        .get(&format!("/v1/threads/{}/records?format=xml", a.thread))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_format"))
    );
    // A body over the limit is refused from its Content-Length, before it is read.
    let head = format!(
        "POST /v1/records HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        17 * 1024 * 1024
    );
    let mut tcp = tokio::net::TcpStream::connect(server.url.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, head.as_bytes())
        .await
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&reply).contains('}') {
        let n = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf)
            .await
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains(r#""code":"too_large""#), "{reply}");

    // Rejections from the framework's own layers have JSON codes too.
    let (status, err) = server
        .get(&format!("/v1/threads/{}/records?limit=abc", a.thread))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    assert!(err["detail"].as_str().unwrap().contains("limit"), "{err}");
    let (status, err) = server.get("/v1/ws").await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let response = server
        .http
        .delete(format!("{}/v1/records", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(response.headers().contains_key("allow"));
    let err: Value = response.json().await.unwrap();
    assert_eq!(err["code"], "method_not_allowed");

    // None of it changed what is stored.
    assert_eq!(pull_all(&server, &a, None).await, before);
}

/// A follower takes bodies up to its configured `limits.max_body_bytes` (16 MiB by default,
/// not the framework's 2 MiB), and a writer batches pushes by bytes as well as by count: 500
/// records of 3.5 KiB, and one record of 3 MiB, reach the follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_and_large_records_are_pushed() {
    let server = Server::start(Backend::Sqlite).await;
    let home = tempfile::tempdir().unwrap();
    let client = threads_client::Client::open(home.path()).await.unwrap();
    let thread = client.create_thread(true).await.unwrap().thread;
    let text = "x".repeat(3584);
    let bodies: Vec<Value> = (0..500).map(|i| json!({"i": i, "text": text})).collect();
    client.write_many(&thread, &bodies).await.unwrap();
    client
        .write(&thread, &json!({"text": "y".repeat(3 << 20)}))
        .await
        .unwrap();
    client
        .add_follower(&thread, &server.url, None)
        .await
        .unwrap();
    let pushed = client.push(&thread, |_, _| {}).await.unwrap();
    assert_eq!(pushed, 501);
    let (_, info) = server.get(&format!("/v1/threads/{thread}")).await;
    assert_eq!(info["records"], 501);
}
