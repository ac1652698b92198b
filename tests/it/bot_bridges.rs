//! A bot's bridges to the web: decrypted webhooks checked by the Standard Webhooks reference
//! library, surviving kill -9 of the bot with no delivery lost.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::bot::{bot_views, log_key, writer_granting, Auth, Bot, ADMIN};
use crate::database::views;
use crate::harness::{Backend, Server};
use crate::webhooks::{body, verified_by_reference_library, Receiver};

/// Deliveries by `webhook-id`, each with its body; panics if one ID came with two bodies.
fn by_message(got: &[crate::webhooks::Received]) -> BTreeMap<String, Value> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for r in got {
        let id = r.headers["webhook-id"].clone();
        let body = body(r);
        if let Some(earlier) = out.insert(id.clone(), body.clone()) {
            assert_eq!(earlier, body, "{id} was sent with two bodies");
        }
    }
    out
}

#[tokio::test]
async fn decrypted_webhooks_deliver_each_event_in_plaintext_and_survive_a_crash() {
    let server = Server::start(Backend::Sqlite).await;
    let bot = Bot::start(&[]).await;
    let (alice, thread, invite) = writer_granting(&server, &bot).await;
    alice
        .ok(&[
            "db",
            "create-collection",
            &thread,
            "people",
            "--index",
            "age",
        ])
        .await;
    alice.ok(&["push", &thread]).await;
    let (status, granted) = bot.grant(&invite).await;
    assert_eq!(status, StatusCode::CREATED, "{granted}");
    bot.applied(&thread, 1).await;

    // The first attempt fails: the delivery is retried, with the same webhook-id.
    let receiver = Receiver::start(vec![(500, None)]).await;
    let subscribe = json!({"thread": thread, "url": receiver.url});
    let post = |auth, body: Value| bot.call(Method::POST, "/v1/webhooks", auth, Some(body));

    // Refusals first: none of them leaves a webhook behind.
    let (status, refused) = post(Auth::None, subscribe.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused}");
    let log = log_key(&alice, &thread);
    let member = Auth::Signed {
        thread: &thread,
        log: &log,
    };
    let (status, refused) = post(member, subscribe.clone()).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("token_required")),
        "a member may read, but a webhook would hand the whole thread to a URL: {refused}"
    );
    let ftp = json!({"thread": thread, "url": "ftp://127.0.0.1/hook"});
    let (status, refused) = post(Auth::Token(ADMIN), ftp).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_webhook_url")),
        "{refused}"
    );
    let stranger = json!({"thread": "bafkzzzz", "url": receiver.url});
    let (status, refused) = post(Auth::Token(ADMIN), stranger).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let (_, status_before) = bot
        .get(&format!("/v1/threads/{thread}"), Auth::Token(ADMIN))
        .await;
    assert_eq!(status_before["webhooks"], json!([]));

    // A read token for the thread may subscribe (a Web 2.0 consumer's bridge).
    let (status, token) = bot
        .admin(Method::POST, &format!("/v1/threads/{thread}/tokens"), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{token}");
    let (status, hook) = post(Auth::Token(token["token"].as_str().unwrap()), subscribe).await;
    assert_eq!(status, StatusCode::CREATED, "{hook}");
    let secret = hook["secret"].as_str().unwrap().to_owned();
    let id = hook["id"].as_str().unwrap().to_owned();

    // Events after the subscription are delivered decrypted, with the view changes they make.
    let doc = json!({"_id": "jane", "name": "Jane", "age": 34}).to_string();
    alice.ok(&["db", "put", &thread, "color", r#""red""#]).await;
    alice.ok(&["db", "insert", &thread, "people", &doc]).await;
    alice.ok(&["db", "delete", &thread, "color"]).await;
    alice.ok(&["push", &thread]).await;
    // Three events, one of them twice (the failed attempt and its retry).
    let got = receiver
        .until("three events", |got| {
            by_message(got).len() >= 3 && got.len() >= 4
        })
        .await;
    let messages = by_message(&got);
    assert_eq!(messages.len(), 3);
    let changes: Vec<Value> = messages
        .values()
        .map(|b| {
            assert_eq!(b["type"], "event.created", "{b}");
            assert_eq!(b["data"]["thread"], thread.as_str());
            b["data"]["changes"][0].clone()
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            json!({"type": "key.put", "key": "color", "value": "red"}),
            json!({"type": "document.inserted", "collection": "people", "id": "jane",
                   "doc": {"_id": "jane", "name": "Jane", "age": 34}}),
            json!({"type": "key.deleted", "key": "color"}),
        ]
    );
    for r in &got[..2] {
        assert!(verified_by_reference_library(&secret, r).await);
    }
    assert!(
        !verified_by_reference_library("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &got[0]).await
    );

    // The grant's status names its bridges; the subscription is managed with its secret.
    let (_, status_now) = bot
        .get(&format!("/v1/threads/{thread}"), Auth::Token(ADMIN))
        .await;
    assert_eq!(status_now["webhooks"][0]["id"], id.as_str());
    assert_eq!(status_now["webhooks"][0]["url"], receiver.url.as_str());
    let (status, listed) = bot
        .get(
            &format!("/v1/webhooks/{id}/deliveries"),
            Auth::Token(&secret),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert!(
        listed["deliveries"].as_array().unwrap().len() >= 3,
        "{listed}"
    );
    let (status, _) = bot.get(&format!("/v1/webhooks/{id}"), Auth::None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // kill -9 while events arrive: after the restart every event is delivered, at least once,
    // each under one webhook-id, and the views are whole.
    for n in 0..20 {
        alice
            .ok(&["db", "put", &thread, &format!("k{n}"), &n.to_string()])
            .await;
    }
    alice.ok(&["push", &thread]).await;
    receiver
        .until("the first of the batch", |got| by_message(got).len() > 3)
        .await;
    let bot = bot.restart().await;
    let got = receiver
        .until("every event", |got| by_message(got).len() >= 23)
        .await;
    let seqs: BTreeSet<u64> = by_message(&got)
        .values()
        .map(|b| b["data"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 23, "one webhook-id per event");
    bot.applied(&thread, 24).await;
    assert_eq!(bot_views(&bot, &thread).await, views(&alice, &thread).await);

    // A replay sends what was delivered again, under the same IDs.
    let (status, replayed) = bot
        .call(
            Method::POST,
            &format!("/v1/webhooks/{id}/replay"),
            Auth::Token(&secret),
            Some(json!({"after": (seqs.iter().max().unwrap() - 2).to_string()})),
        )
        .await;
    assert_eq!(
        (status, replayed["queued"].as_u64()),
        (StatusCode::ACCEPTED, Some(2)),
        "{replayed}"
    );
    let before = receiver.got().len();
    let got = receiver
        .until("the replay", |got| got.len() >= before + 2)
        .await;
    assert_eq!(by_message(&got).len(), 23);
    let (status, refused) = bot
        .call(
            Method::POST,
            &format!("/v1/webhooks/{id}/replay"),
            Auth::Token(&secret),
            Some(json!({"after": "not-a-position"})),
        )
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_cursor")),
        "{refused}"
    );
}
