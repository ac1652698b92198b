//! Signed owner requests, registration tokens, private threads, and deleting data.

use rand_core::OsRng;
use reqwest::StatusCode;
use serde_json::{json, Value};
use threads_core::auth::{pull_token, Action, SignedRequest};
use threads_store::testing::TestLog;

use crate::harness::*;
use crate::push_pull::on_both_backends;

on_both_backends!(signed_requests_cannot_be_forged_or_replayed);
async fn signed_requests_cannot_be_forged_or_replayed(backend: Backend) {
    let server = Server::start(backend).await;
    let id = server.server_id().await;
    let log = TestLog::new();
    let send = |r: &SignedRequest| server.post("/v1/registrations", r.clone());
    let sign = |server: &str, at: i64, action| {
        SignedRequest::sign(server, &log.thread, &log.pair, action, at, &mut OsRng)
    };
    let code =
        |(status, body): (StatusCode, Value)| (status, body["code"].as_str().map(str::to_owned));

    let request = sign(&id, now_ms(), register_action(&log, true));
    assert_eq!(send(&request).await.0, StatusCode::CREATED);
    assert_eq!(
        code(send(&request).await),
        (StatusCode::CONFLICT, Some("replayed".into()))
    );

    let elsewhere = sign(
        "threads-another-server",
        now_ms(),
        register_action(&log, true),
    );
    assert_eq!(
        code(send(&elsewhere).await),
        (StatusCode::MISDIRECTED_REQUEST, Some("wrong_server".into()))
    );
    let stale = sign(&id, now_ms() - 10 * 60 * 1000, register_action(&log, true));
    assert_eq!(
        code(send(&stale).await),
        (StatusCode::UNAUTHORIZED, Some("expired".into()))
    );
    let mut forged = sign(&id, now_ms(), register_action(&log, true));
    forged.payload = forged
        .payload
        .replace("\"public\":true", "\"public\":false");
    assert_eq!(
        code(send(&forged).await),
        (StatusCode::UNAUTHORIZED, Some("bad_signature".into()))
    );
    let with_read_key = sign(
        &id,
        now_ms(),
        Action::Register {
            follow_key: log.keys.to_multibase().to_string(),
            addrs: vec![],
            public: true,
        },
    );
    assert_eq!(
        code(send(&with_read_key).await),
        (StatusCode::BAD_REQUEST, Some("read_key_refused".into()))
    );
    let bad_addrs = |addrs: Vec<String>| Action::Register {
        follow_key: log.keys.follow_only().to_multibase().to_string(),
        addrs,
        public: true,
    };
    let not_multiaddr = sign(&id, now_ms(), bad_addrs(vec!["http://example.com".into()]));
    assert_eq!(
        code(send(&not_multiaddr).await),
        (StatusCode::BAD_REQUEST, Some("bad_addrs".into()))
    );
    let too_many = sign(
        &id,
        now_ms(),
        bad_addrs(vec!["/ip4/1.2.3.4/tcp/1".into(); 33]),
    );
    assert_eq!(
        code(send(&too_many).await),
        (StatusCode::BAD_REQUEST, Some("bad_addrs".into()))
    );
    // A refused request spends no nonce: the same request, sent again, gets the same answer.
    assert_eq!(
        code(send(&too_many).await),
        (StatusCode::BAD_REQUEST, Some("bad_addrs".into()))
    );
    let mut other_key = log.sibling();
    other_key.keys = threads_core::ThreadKey::random(&mut OsRng);
    assert_eq!(
        code(server.register(&other_key, true).await),
        (StatusCode::CONFLICT, Some("follow_key_mismatch".into()))
    );
    let (status, body) = server
        .post("/v1/registrations", json!({"payload": 1}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
}

on_both_backends!(registration_tokens_gate_registration);
async fn registration_tokens_gate_registration(backend: Backend) {
    let server = Server::start_with(
        backend,
        &[
            ("THREADS_REGISTRATION", "token"),
            ("THREADS_ADMIN_TOKEN", "operator-secret"),
        ],
    )
    .await;
    let log = TestLog::new();
    let (status, body) = server.register(&log, true).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::UNAUTHORIZED,
            Some("registration_token_required")
        )
    );

    let issue = |auth: &'static str| {
        server
            .http
            .post(format!("{}/v1/admin/registration-tokens", server.url))
            .bearer_auth(auth)
            .json(&json!({"note": "for alice"}))
            .send()
    };
    assert_eq!(
        issue("wrong").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let issued: Value = issue("operator-secret")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = issued["token"].as_str().unwrap();

    let request = SignedRequest::sign(
        &server.server_id().await,
        &log.thread,
        &log.pair,
        register_action(&log, true),
        now_ms(),
        &mut OsRng,
    );
    let send = |bearer: &str| {
        server
            .http
            .post(format!("{}/v1/registrations", server.url))
            .bearer_auth(bearer)
            .json(&request)
            .send()
    };
    assert_eq!(
        send("not-a-token").await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(send(token).await.unwrap().status(), StatusCode::CREATED);
}

on_both_backends!(private_threads_need_the_pull_token);
async fn private_threads_need_the_pull_token(backend: Backend) {
    let server = Server::start(backend).await;
    let mut log = TestLog::new();
    server.register(&log, false).await;
    let r1 = log.next(32);
    server.push(&[(&log, &r1)]).await;

    let path = format!("/v1/threads/{}/records", log.thread);
    let (status, body) = server.get(&path).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("pull_token_required"))
    );
    let (status, body) = server.get(&format!("{path}?token=abc")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("bad_pull_token"))
    );

    let token = pull_token(log.keys.service(), &log.thread);
    assert_eq!(pull_all(&server, &log, Some(&token)).await.len(), 1);
    let response = server
        .http
        .get(format!("{}{path}", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let block = format!("/v1/blocks/{}", r1.cid());
    assert_eq!(server.get(&block).await.0, StatusCode::UNAUTHORIZED);
    let (_, list) = server.get("/v1/threads").await;
    assert_eq!(list["threads"], json!([]), "private threads are not listed");
}

on_both_backends!(owners_delete_their_data);
async fn owners_delete_their_data(backend: Backend) {
    let server = Server::start(backend).await;
    let mut a = TestLog::new();
    let mut b = a.sibling();
    server.register(&a, true).await;
    server.register(&b, true).await;
    let (a1, b1) = (a.next(32), b.next(32));
    server.push(&[(&a, &a1), (&b, &b1)]).await;

    let (status, _) = server.signed(&b, Action::Unregister).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pull_all(&server, &a, None).await.len(), 1);
    assert_eq!(
        server.get(&format!("/v1/blocks/{}", b1.cid())).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.signed(&b, Action::Unregister).await.0,
        StatusCode::NOT_FOUND
    );
    // Only a writer of the thread may delete it.
    let (status, body) = server.signed(&b, Action::DeleteThread).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_a_writer"))
    );

    assert_eq!(
        server.signed(&a, Action::DeleteThread).await.0,
        StatusCode::OK
    );
    assert_eq!(
        server.get(&format!("/v1/threads/{}", a.thread)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.get(&format!("/v1/blocks/{}", a1.cid())).await.0,
        StatusCode::NOT_FOUND
    );
}

on_both_backends!(a_follow_key_holder_cannot_destroy_or_republish_what_writers_stored);
/// Anyone with the follow key can register a log of their own (a `--role follower` link is
/// meant for servers): that log may not delete the thread nor change its visibility while
/// other logs hold records. A thread's sole writer still can, and each writer can always
/// unregister its own log.
async fn a_follow_key_holder_cannot_destroy_or_republish_what_writers_stored(backend: Backend) {
    let server = Server::start(backend).await;
    let mut writer = TestLog::new();
    server.register(&writer, false).await;
    let w1 = writer.next(32);
    assert_eq!(server.push(&[(&writer, &w1)]).await.0, StatusCode::OK);
    let token = pull_token(writer.keys.service(), &writer.thread);

    let holder = writer.sibling();
    assert_eq!(server.register(&holder, false).await.0, StatusCode::CREATED);
    let refused = |(status, body): (StatusCode, Value)| {
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::CONFLICT, Some("other_writers")),
            "{body}"
        );
    };
    refused(server.signed(&holder, Action::DeleteThread).await);
    refused(server.register(&holder, true).await);
    // Nothing changed: still private, the writer's record still there.
    let (status, _) = server.get(&format!("/v1/threads/{}", writer.thread)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, page) = server
        .get(&format!(
            "/v1/threads/{}/records?token={token}",
            writer.thread
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    // The refused requests were not spent: corrected, they could be sent again.
    assert_eq!(
        server.signed(&holder, Action::Unregister).await.0,
        StatusCode::OK
    );

    // The sole writer decides: public, then deleted.
    assert_eq!(server.register(&writer, true).await.0, StatusCode::OK);
    assert_eq!(
        server
            .get(&format!("/v1/threads/{}", writer.thread))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        server.signed(&writer, Action::DeleteThread).await.0,
        StatusCode::OK
    );
    assert_eq!(
        server
            .get(&format!("/v1/threads/{}", writer.thread))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

on_both_backends!(a_squatter_cannot_lock_writers_out);
/// Anyone may register a thread ID a follower does not have yet, under a follow key of their
/// own. When the ID is bound to the real follow key (as the client makes them), the real
/// writers' registration replaces what the squatter stored, and the squatter is then refused;
/// the squatter's subscription ends without ever seeing the writers' records.
async fn a_squatter_cannot_lock_writers_out(backend: Backend) {
    let server = Server::start(backend).await;
    let mut writer = TestLog::bound();
    let mut squatter = writer.squatting();
    assert_eq!(
        server.register(&squatter, false).await.0,
        StatusCode::CREATED
    );
    let s1 = squatter.next(32);
    let (_, answer) = server.push(&[(&squatter, &s1)]).await;
    assert_eq!(answer["results"][0]["outcome"], "accepted", "{answer}");
    let squatter_token = pull_token(squatter.keys.service(), &squatter.thread);
    let mut ws = crate::websocket::connect(
        &server,
        &format!("?thread={}&token={squatter_token}", squatter.thread),
    )
    .await;
    assert_eq!(crate::websocket::next(&mut ws).await["type"], "subscribed");
    assert_eq!(crate::websocket::next(&mut ws).await["type"], "record");

    let (status, body) = server.register(&writer, false).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let w1 = writer.next(32);
    assert_eq!(server.push(&[(&writer, &w1)]).await.0, StatusCode::OK);
    let token = pull_token(writer.keys.service(), &writer.thread);
    let records = pull_all(&server, &writer, Some(&token)).await;
    let cids: Vec<&str> = records.iter().map(|r| r["cid"].as_str().unwrap()).collect();
    assert_eq!(
        cids,
        [w1.cid().to_string()],
        "only the writers' record is left"
    );

    // The squatter's token opens nothing now, its live subscription ended, and it cannot
    // take the ID back.
    let path = format!(
        "/v1/threads/{}/records?token={squatter_token}",
        writer.thread
    );
    let (status, body) = server.get(&path).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("bad_pull_token"))
    );
    let ended = crate::websocket::next(&mut ws).await;
    assert_eq!(
        (ended["type"].as_str(), ended["code"].as_str()),
        (Some("error"), Some("not_found")),
        "{ended}"
    );
    let (status, body) = server.register(&squatter.sibling(), true).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("follow_key_mismatch"))
    );
    let s2 = squatter.next(32);
    let (_, answer) = server.push(&[(&squatter, &s2)]).await;
    assert_ne!(answer["results"][0]["outcome"], "accepted", "{answer}");

    // An ID bound to no key (go-threads and js-threads make random ones) stays first come,
    // first served: the follower cannot tell whose it is.
    let first = TestLog::new();
    server.register(&first, false).await;
    let (status, body) = server.register(&first.squatting(), false).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("follow_key_mismatch"))
    );
}
