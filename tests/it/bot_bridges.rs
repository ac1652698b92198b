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

/// What Python's feedparser makes of a feed: version, bozo, entry titles and contents, and the
/// feed's link relations.
async fn feedparser(url: &str) -> Value {
    let script = format!(
        "import feedparser, json; d = feedparser.parse({url:?}); \
         print(json.dumps({{'version': d.version, 'bozo': int(bool(d.bozo)), \
           'error': repr(d.get('bozo_exception')), \
           'titles': [e.title for e in d.entries], \
           'contents': [e.content[0].value if 'content' in e else e.get('description') for e in d.entries], \
           'links': [l.rel for l in d.feed.get('links', [])]}}))"
    );
    let output = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits until the bot holds `seq` records of the thread (20 s at most).
async fn held(bot: &Bot, thread: &str, seq: u64) {
    for _ in 0..200 {
        let (_, status) = bot
            .get(&format!("/v1/threads/{thread}"), Auth::Token(ADMIN))
            .await;
        if status["held"].as_u64() >= Some(seq) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the bot did not hold {seq} records of {thread}");
}

#[tokio::test]
async fn a_published_thread_is_a_plaintext_feed_with_archives() {
    let server = Server::start(Backend::Sqlite).await;
    let bot = Bot::start(&[]).await;
    let (alice, thread, invite) = writer_granting(&server, &bot).await;
    let bob = crate::peers::Peer::new();
    bob.ok(&["join", &alice.text(&["share", &thread], "invite").await])
        .await;
    let logs: Vec<String> = [&alice, &bob]
        .iter()
        .map(|p| threads_core::LogId::from(log_key(p, &thread).public()).to_string())
        .collect();
    // Bob may read, not write.
    let acl = json!({"default": "no-access", "peers": {&logs[0]: ["write"], &logs[1]: ["read"]}});
    alice
        .ok(&["db", "acl-set", &thread, "thread", &acl.to_string()])
        .await;
    alice
        .ok(&["db", "create-collection", &thread, "posts"])
        .await;
    alice.ok(&["push", &thread]).await;
    assert_eq!(bot.grant(&invite).await.0, StatusCode::CREATED);
    bot.applied(&thread, 2).await;
    let atom = format!("{}/v1/threads/{thread}/feed.atom", bot.url);
    let rss = format!("{}/v1/threads/{thread}/feed.rss", bot.url);

    // Off by default, and only the operator turns it on.
    let (status, body) = bot
        .get(&format!("/v1/threads/{thread}/feed.atom"), Auth::None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_published")),
        "{body}"
    );
    let feed = format!("/v1/threads/{thread}/feed");
    let posts = json!({"collection": "posts"});
    let (status, body) = bot
        .call(Method::PUT, &feed, Auth::None, Some(posts.clone()))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = bot
        .admin(Method::PUT, &feed, Some(json!({"collection": "drafts"})))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "{body}"
    );
    let (status, body) = bot
        .admin(Method::PUT, &feed, Some(json!({"collections": "posts"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = bot.admin(Method::PUT, &feed, Some(posts)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Alice's posts are the blog; Bob's forged insert (he lacks the write role) is not.
    for n in 1..=3 {
        let post = json!({"title": format!("Post {n}"), "content": format!("Hello {n}")});
        alice
            .ok(&["db", "insert", &thread, "posts", &post.to_string()])
            .await;
    }
    alice.ok(&["db", "put", &thread, "color", r#""red""#]).await;
    let forged = json!({"threads-db": 1, "clock": 99, "time": 1, "actions": [{"store": "docs",
        "type": "insert", "payload": {"collection": "posts",
        "doc": {"_id": "forged", "title": "Forged", "content": "not Alice's"}}}]});
    bob.ok(&["pull", &thread]).await;
    bob.ok(&["write", &thread, &forged.to_string()]).await;
    bob.ok(&["push", &thread]).await;
    alice.ok(&["push", &thread]).await;
    held(&bot, &thread, 7).await;
    for (url, version) in [(&atom, "atom10"), (&rss, "rss20")] {
        let read = feedparser(url).await;
        assert_eq!(read["version"], version, "{read}");
        assert_eq!(read["bozo"], 0, "{read}");
        assert_eq!(
            read["titles"],
            json!(["Post 3", "Post 2", "Post 1"]),
            "{read}"
        );
    }
    assert_eq!(feedparser(&atom).await["contents"][0], "Hello 3");

    // The whole thread: an entry per event, newest first, with RFC 5005 archives.
    let (status, _) = bot.admin(Method::PUT, &feed, None).await;
    assert_eq!(status, StatusCode::OK);
    for n in 0..100 {
        alice
            .ok(&["write", &thread, &json!({"note": n}).to_string()])
            .await;
    }
    alice.ok(&["push", &thread]).await;
    held(&bot, &thread, 107).await;
    let current = feedparser(&atom).await;
    assert_eq!(current["bozo"], 0, "{current}");
    assert_eq!(current["titles"].as_array().unwrap().len(), 100);
    assert!(current["links"]
        .as_array()
        .unwrap()
        .contains(&json!("prev-archive")));
    assert!(current["contents"][0]
        .as_str()
        .unwrap()
        .contains("\"note\": 99"));
    let archive = feedparser(&format!("{atom}?page=1")).await;
    assert_eq!(
        archive["titles"].as_array().unwrap().len(),
        100,
        "{archive}"
    );
    let response = reqwest::get(format!("{atom}?page=1")).await.unwrap();
    assert!(response.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let etag = response.headers()["etag"].clone();
    let again = reqwest::Client::new()
        .get(format!("{atom}?page=1"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // Its status says it is published, until it is not.
    let (_, status_now) = bot
        .get(&format!("/v1/threads/{thread}"), Auth::Token(ADMIN))
        .await;
    assert_eq!(
        status_now["feed"]["collection"],
        Value::Null,
        "{status_now}"
    );
    let (_, about) = bot.get("/v1/bot", Auth::None).await;
    assert_eq!(about["bridges"]["feeds"], 1);
    let (status, _) = bot.admin(Method::DELETE, &feed, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = bot
        .get(&format!("/v1/threads/{thread}/feed.rss"), Auth::None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = bot.admin(Method::DELETE, &feed, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
