//! Bots as operators and writers use them: a real follower, writers on the `threads` command
//! line, and a `threads bot serve` process they grant threads to.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::{json, Value};
use threads::bot::access::sign_header;
use threads_core::{Keypair, ThreadKey};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::database::views;
use crate::harness::{Backend, Server};
use crate::peers::Peer;

pub(crate) const ADMIN: &str = "admin-token-for-tests";

/// A running `threads bot serve`. Killed when dropped.
pub(crate) struct Bot {
    pub(crate) url: String,
    pub(crate) id: String,
    http: reqwest::Client,
    dir: PathBuf,
    main_key: PathBuf,
    child: Child,
    _home: Option<tempfile::TempDir>,
}

impl Bot {
    /// A bot with a fresh data directory and main key.
    pub(crate) async fn start(extra: &[&str]) -> Self {
        let home = tempfile::tempdir().unwrap();
        let main_key = home.path().join("main.key");
        let key = run(&["bot", "new-main-key"], None).await;
        std::fs::write(&main_key, key.trim()).unwrap();
        let dir = home.path().join("data");
        let mut bot = Self::launch(&dir, &main_key, extra).await.unwrap();
        bot._home = Some(home);
        bot
    }

    /// A bot on an existing data directory; `Err` holds what it said when it refused to start.
    async fn launch(dir: &Path, main_key: &Path, extra: &[&str]) -> Result<Self, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_threads"));
        cmd.args([
            "bot",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(["--admin-token", ADMIN])
        .args(extra)
        .env("RUST_LOG", "warn")
        // Tests deliver webhooks to receivers on loopback, and retry quickly.
        .env("THREADS_BOT_WEBHOOKS__ALLOW_PRIVATE_ADDRESSES", "true")
        .env("THREADS_BOT_WEBHOOKS__RETRY_BASE_MS", "50")
        .env("THREADS_BOT_WEBHOOKS__RETRY_MAX_MS", "200")
        // Short leases: a crashed bot's deliveries are taken up again sooner.
        .env("THREADS_BOT_WEBHOOKS__TIMEOUT_SECS", "2")
        .env_remove("THREADS_BOT_MAIN_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        if !extra.contains(&"--keys-in-clear") && !extra.contains(&"--main-key-file") {
            cmd.arg("--main-key-file").arg(main_key);
        }
        let mut child = cmd.spawn().expect("threads bot starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut url = None;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(u) = line.strip_prefix("listening on ") {
                url = Some(u.to_owned());
            } else if let Some(id) = line.strip_prefix("identity ") {
                let url = url.take().expect("the address comes first");
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Ok(Self {
                    url,
                    id: id.to_owned(),
                    http: reqwest::Client::new(),
                    dir: dir.to_owned(),
                    main_key: main_key.to_owned(),
                    child,
                    _home: None,
                });
            }
        }
        let out = child.wait_with_output().await.unwrap();
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Crashes the bot (kill -9) and starts it again on the same data.
    pub(crate) async fn restart(mut self) -> Self {
        self.child.kill().await.unwrap();
        let mut next = Self::launch(&self.dir, &self.main_key, &[]).await.unwrap();
        next._home = self._home.take();
        next
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: Auth<'_>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        request = match auth {
            Auth::None => request,
            Auth::Token(token) => request.bearer_auth(token),
            Auth::Signed { thread, log } => request.header(
                "threads-request",
                sign_header(
                    &self.id,
                    &thread.parse().unwrap(),
                    log,
                    method.as_str(),
                    path,
                    &bytes,
                ),
            ),
        };
        if !bytes.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(bytes);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn get(&self, path: &str, auth: Auth<'_>) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, auth, None).await
    }

    pub(crate) async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, path, Auth::Token(ADMIN), body).await
    }

    pub(crate) async fn grant(&self, invite: &str) -> (StatusCode, Value) {
        self.admin(
            reqwest::Method::POST,
            "/v1/grants",
            Some(json!({"invite": invite})),
        )
        .await
    }

    /// Waits until the bot has applied `events` events of the thread (20 s at most).
    pub(crate) async fn applied(&self, thread: &str, events: u64) -> Value {
        let path = format!("/v1/threads/{thread}");
        for _ in 0..200 {
            let (status, body) = self.get(&path, Auth::Token(ADMIN)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if body["applied"].as_u64() >= Some(events) {
                return body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the bot did not apply {events} events of {thread}");
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Auth<'a> {
    None,
    Token(&'a str),
    Signed { thread: &'a str, log: &'a Keypair },
}

/// Runs the `threads` binary to completion; its stdout.
async fn run(args: &[&str], home: Option<&Path>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_threads"));
    cmd.args(args);
    if let Some(home) = home {
        cmd.env("THREADS_HOME", home);
    }
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A peer's key file of a thread (the CLI keeps it in clear).
fn key_file(peer: &Peer, thread: &str) -> Value {
    let text = std::fs::read_to_string(peer.home().join("threads").join(format!("{thread}.json")));
    serde_json::from_str(&text.unwrap()).unwrap()
}

pub(crate) fn log_key(peer: &Peer, thread: &str) -> Keypair {
    key_file(peer, thread)["log"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn read_key_bytes(peer: &Peer, thread: &str) -> Vec<u8> {
    let key: ThreadKey = key_file(peer, thread)["key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    key.read().unwrap().as_bytes().to_vec()
}

/// Whether any file under `dir` holds `needle`.
fn dir_holds(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|item| {
        let path = item.unwrap().path();
        if path.is_dir() {
            return dir_holds(&path, needle);
        }
        let bytes = std::fs::read(&path).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

/// A follower and a writer whose thread it keeps, with a reader invite sealed to `bot`.
pub(crate) async fn writer_granting(server: &Server, bot: &Bot) -> (Peer, String, String) {
    let alice = Peer::new();
    let thread = alice.text(&["thread", "create"], "thread").await;
    alice.ok(&["follower", "add", &thread, &server.url]).await;
    let invite = alice
        .text(
            &["share", &thread, "--role", "reader", "--to", &bot.id],
            "invite",
        )
        .await;
    (alice, thread, invite)
}

pub(crate) async fn bot_views(bot: &Bot, thread: &str) -> (Value, Value) {
    let auth = Auth::Token(ADMIN);
    let (status, entries) = bot
        .get(&format!("/v1/threads/{thread}/kv?limit=1000"), auth)
        .await;
    assert_eq!(status, StatusCode::OK, "{entries}");
    let query = json!({"sort": {"field": "age"}, "limit": 1000});
    let path = format!("/v1/threads/{thread}/collections/people/find");
    let (status, docs) = bot
        .call(reqwest::Method::POST, &path, auth, Some(query))
        .await;
    assert_eq!(status, StatusCode::OK, "{docs}");
    (entries["entries"].clone(), docs["docs"].clone())
}

#[tokio::test]
async fn a_bot_answers_as_the_writers_own_database() {
    let server = Server::start(Backend::Postgres).await;
    let bot = Bot::start(&[]).await;
    let (alice, thread, invite) = writer_granting(&server, &bot).await;
    let schema = r#"{"type": "object", "required": ["name", "age"]}"#;
    alice
        .ok(&[
            "db",
            "create-collection",
            &thread,
            "people",
            "--schema",
            schema,
            "--index",
            "age",
        ])
        .await;
    alice.ok(&["db", "put", &thread, "color", r#""red""#]).await;
    alice.ok(&["push", &thread]).await;
    let (status, granted) = bot.grant(&invite).await;
    assert_eq!(status, StatusCode::CREATED, "{granted}");
    assert_eq!(granted["thread"], thread.as_str());
    bot.applied(&thread, 2).await;

    // A second writer joins; both write while apart, and push late, in either order.
    let bob = Peer::new();
    let writer_invite = alice.text(&["share", &thread], "invite").await;
    bob.ok(&["join", &writer_invite]).await;
    bob.ok(&["pull", &thread]).await;
    for (peer, name, age) in [(&alice, "Jane", 34), (&bob, "John", 51)] {
        peer.ok(&["db", "put", &thread, "color", &format!("\"{name}'s\"")])
            .await;
        let doc = json!({"name": name, "age": age}).to_string();
        peer.ok(&["db", "insert", &thread, "people", &doc]).await;
    }
    bob.ok(&["push", &thread]).await;
    alice.ok(&["push", &thread]).await;
    alice.ok(&["pull", &thread]).await;
    bob.ok(&["pull", &thread]).await;
    let status = bot.applied(&thread, 6).await;
    assert_eq!(status["unreadable_after"], Value::Null);
    assert_eq!(status["error"], Value::Null);

    let mine = views(&alice, &thread).await;
    assert_eq!(mine, views(&bob, &thread).await);
    assert_eq!(bot_views(&bot, &thread).await, mine);
    assert_eq!(mine.1.as_array().unwrap().len(), 2);

    // The same answers for one key, one query by index, and the collection list.
    let (_, color) = bot
        .get(
            &format!("/v1/threads/{thread}/kv/color"),
            Auth::Token(ADMIN),
        )
        .await;
    assert_eq!(
        color["value"],
        alice.ok(&["db", "get", &thread, "color"]).await["value"]
    );
    let query = r#"{"where": {"field": "age", "gte": 40}}"#;
    let path = format!(
        "/v1/threads/{thread}/collections/people/find?query={}",
        url::form_urlencoded::byte_serialize(query.as_bytes()).collect::<String>()
    );
    let (status, found) = bot.get(&path, Auth::Token(ADMIN)).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(
        found["docs"],
        alice.ok(&["db", "find", &thread, "people", query]).await["docs"]
    );

    // A crash loses nothing: after kill -9 the views answer the same, and follow on.
    let bot = bot.restart().await;
    assert_eq!(bot_views(&bot, &thread).await, mine);
    alice.ok(&["db", "put", &thread, "after-crash", "1"]).await;
    alice.ok(&["push", &thread]).await;
    bot.applied(&thread, 7).await;
    alice.ok(&["pull", &thread]).await;
    assert_eq!(bot_views(&bot, &thread).await, views(&alice, &thread).await);

    // The follower never held a read key.
    assert!(!dir_holds(
        &server.data_dir,
        &read_key_bytes(&alice, &thread)
    ));
}

#[tokio::test]
async fn the_thread_acls_decide_who_reads_through_the_bot() {
    let server = Server::start(Backend::Sqlite).await;
    let bot = Bot::start(&[]).await;
    let (alice, thread, invite) = writer_granting(&server, &bot).await;
    let (bob, carol) = (Peer::new(), Peer::new());
    let writer_invite = alice.text(&["share", &thread], "invite").await;
    for peer in [&bob, &carol] {
        peer.ok(&["join", &writer_invite]).await;
    }
    let logs: Vec<String> = [&alice, &bob, &carol]
        .iter()
        .map(|p| threads_core::LogId::from(log_key(p, &thread).public()).to_string())
        .collect();
    // Carol may only follow; Bob reads; what is set on `kv:secret` only Alice reads.
    let acl = json!({"default": "no-access", "peers": {
        &logs[0]: ["write", "delete"], &logs[1]: ["read"], &logs[2]: ["follow"]}});
    alice
        .ok(&["db", "acl-set", &thread, "thread", &acl.to_string()])
        .await;
    alice.ok(&["db", "put", &thread, "open", "1"]).await;
    alice.ok(&["db", "put", &thread, "secret", "2"]).await;
    let secret_acl = json!({"default": "no-access", "peers": {&logs[0]: ["write"]}});
    alice
        .ok(&[
            "db",
            "acl-set",
            &thread,
            "kv:secret",
            &secret_acl.to_string(),
        ])
        .await;
    alice.ok(&["push", &thread]).await;
    assert_eq!(bot.grant(&invite).await.0, StatusCode::CREATED);
    bot.applied(&thread, 4).await;

    let (alice_key, bob_key, carol_key) = (
        log_key(&alice, &thread),
        log_key(&bob, &thread),
        log_key(&carol, &thread),
    );
    let list = format!("/v1/threads/{thread}/kv");
    let signed = |log| Auth::Signed {
        thread: &thread,
        log,
    };
    let (status, all) = bot.get(&list, signed(&alice_key)).await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["entries"].as_array().unwrap().len(), 2);
    // Bob reads the thread, but not the entry whose own ACL leaves him out.
    let (status, some) = bot.get(&list, signed(&bob_key)).await;
    assert_eq!(status, StatusCode::OK, "{some}");
    assert_eq!(some["entries"], json!([{"key": "open", "value": 1}]));
    let (status, refused) = bot
        .get(&format!("/v1/threads/{thread}/kv/secret"), signed(&bob_key))
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("no_read_role"))
    );
    // The same from the command line, as the members themselves ask.
    let asked = bob.ok(&["bot", "query", &bot.url, &thread, &list]).await;
    assert_eq!(asked["entries"], json!([{"key": "open", "value": 1}]));
    let find = format!("/v1/threads/{thread}/collections");
    assert_eq!(
        bob.ok(&["bot", "query", &bot.url, &thread, &find]).await["collections"],
        json!([])
    );
    let refused = carol.run(&["bot", "query", &bot.url, &thread, &list]).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("no_read_role"),
        "{}",
        refused.stderr
    );
    let (status, refused) = bot.get(&list, signed(&carol_key)).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("no_read_role"))
    );
    let stranger = Keypair::generate(&mut rand_core::OsRng);
    let (status, refused) = bot.get(&list, signed(&stranger)).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_a_member"))
    );

    // A request sent twice, one for another path, one for another bot, none at all.
    let header = sign_header(
        &bot.id,
        &thread.parse().unwrap(),
        &alice_key,
        "GET",
        &list,
        b"",
    );
    let send = |path: String, header: String| {
        let request = bot
            .http
            .get(format!("{}{path}", bot.url))
            .header("threads-request", header);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap()["code"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        }
    };
    assert_eq!(send(list.clone(), header.clone()).await.0, StatusCode::OK);
    assert_eq!(
        send(list.clone(), header.clone()).await,
        (StatusCode::UNAUTHORIZED, "replayed".into())
    );
    let other = format!("{list}?prefix=s");
    let fresh = sign_header(
        &bot.id,
        &thread.parse().unwrap(),
        &alice_key,
        "GET",
        &list,
        b"",
    );
    assert_eq!(
        send(other, fresh).await,
        (StatusCode::FORBIDDEN, "request_mismatch".into())
    );
    let elsewhere = sign_header(
        "another-bot",
        &thread.parse().unwrap(),
        &alice_key,
        "GET",
        &list,
        b"",
    );
    assert_eq!(
        send(list.clone(), elsewhere).await,
        (StatusCode::UNAUTHORIZED, "wrong_server".into())
    );
    assert_eq!(
        send(list.clone(), "not base64!".into()).await.1,
        "bad_query"
    );
    let (status, refused) = bot.get(&list, Auth::None).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("auth_required"))
    );
    let (status, refused) = bot.get(&list, Auth::Token("rt_guess")).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("bad_token"))
    );

    // A read token the operator issues reads the whole thread, until it is revoked.
    let (status, issued) = bot
        .admin(
            reqwest::Method::POST,
            &format!("/v1/threads/{thread}/tokens"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let token = issued["token"].as_str().unwrap();
    let (status, all) = bot.get(&list, Auth::Token(token)).await;
    assert_eq!(
        (status, all["entries"].as_array().unwrap().len()),
        (StatusCode::OK, 2)
    );
    let (status, _) = bot.get(&list, Auth::Token(token)).await;
    assert_eq!(status, StatusCode::OK);
    let revoke = format!(
        "/v1/threads/{thread}/tokens/{}",
        issued["id"].as_str().unwrap()
    );
    assert_eq!(
        bot.admin(reqwest::Method::DELETE, &revoke, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        bot.get(&list, Auth::Token(token)).await.0,
        StatusCode::FORBIDDEN
    );
    // Without the admin token no token is issued, no grant listed or deleted.
    let tokens = format!("/v1/threads/{thread}/tokens");
    let (status, refused) = bot
        .call(reqwest::Method::POST, &tokens, Auth::Token(token), None)
        .await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("admin_token_required"))
    );
    assert_eq!(
        bot.get("/v1/grants", Auth::None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, public) = bot.get("/v1/bot", Auth::None).await;
    assert_eq!(public["identity"], bot.id.as_str());
    let (_, described) = bot.get("/openapi.json", Auth::None).await;
    assert!(described["paths"]["/v1/threads/{thread}/kv"]["get"].is_object());
    assert!(public.get("threads").is_none(), "{public}");
}

#[tokio::test]
async fn bad_grants_are_refused_and_leave_nothing() {
    let server = Server::start(Backend::Sqlite).await;
    let bot = Bot::start(&[]).await;
    let (alice, thread, invite) = writer_granting(&server, &bot).await;
    let other_bot = Peer::new();
    let other_id = other_bot.text(&["id"], "identity").await;
    let sealed_elsewhere = alice
        .text(
            &["share", &thread, "--role", "reader", "--to", &other_id],
            "invite",
        )
        .await;
    let follow_only = alice
        .text(
            &["share", &thread, "--role", "follower", "--to", &bot.id],
            "invite",
        )
        .await;
    let mut damaged = invite.clone();
    damaged.truncate(invite.len() - 10);
    // A thread no follower keeps.
    let nobody_keeps = {
        let t = alice.text(&["thread", "create"], "thread").await;
        alice
            .text(
                &["share", &t, "--role", "reader", "--to", &bot.id],
                "invite",
            )
            .await
    };
    let cases = [
        (damaged.as_str(), StatusCode::BAD_REQUEST, "bad_invite"),
        ("threads:invite:AAAA", StatusCode::BAD_REQUEST, "bad_invite"),
        (
            sealed_elsewhere.as_str(),
            StatusCode::BAD_REQUEST,
            "bad_invite",
        ),
        (
            follow_only.as_str(),
            StatusCode::BAD_REQUEST,
            "not_readable",
        ),
        (
            nobody_keeps.as_str(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_follower",
        ),
    ];
    for (invite, status, code) in cases {
        let (got, body) = bot.grant(invite).await;
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
    }
    // A follower that does not answer, and one that does not keep the thread.
    let grant_from = |follower: String| {
        bot.admin(
            reqwest::Method::POST,
            "/v1/grants",
            Some(json!({"invite": invite, "follower": follower})),
        )
    };
    let (status, body) = grant_from("http://127.0.0.1:9".into()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("follower_unreachable")),
        "{body}"
    );
    let (status, body) = grant_from("not a url".into()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_follower_url")),
        "{body}"
    );
    let (status, body) = grant_from(format!("{}/nowhere", server.url)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("follower_refused")),
        "{body}"
    );
    let (status, body) = bot
        .admin(
            reqwest::Method::POST,
            "/v1/grants",
            Some(json!({"invitation": invite})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("bad_request")),
        "{body}"
    );
    // Without the admin token this bot takes no grant at all.
    let (status, body) = bot
        .call(
            reqwest::Method::POST,
            "/v1/grants",
            Auth::None,
            Some(json!({"invite": invite})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("admin_token_required"))
    );

    // Nothing was kept: no grant, no key file.
    let (_, grants) = bot.get("/v1/grants", Auth::Token(ADMIN)).await;
    assert_eq!(grants["grants"], json!([]));
    let key_files = std::fs::read_dir(bot.dir.join("threads")).unwrap().count();
    assert_eq!(key_files, 0);
    assert_eq!(bot.grant(&invite).await.0, StatusCode::CREATED);
    let (status, again) = bot.grant(&invite).await;
    assert_eq!(status, StatusCode::OK, "{again}");
}

#[tokio::test]
async fn a_revoked_bot_reads_nothing_written_after_and_a_deleted_grant_leaves_nothing() {
    let server = Server::start(Backend::Sqlite).await;
    let bot = Bot::start(&[]).await;
    let (alice, thread, invite) = writer_granting(&server, &bot).await;
    alice
        .ok(&[
            "db",
            "put",
            &thread,
            "before",
            r#""marker-before-rotation""#,
        ])
        .await;
    alice.ok(&["push", &thread]).await;
    assert_eq!(bot.grant(&invite).await.0, StatusCode::CREATED);
    bot.applied(&thread, 1).await;
    let read_key = read_key_bytes(&alice, &thread);

    // The writer rotates the read key to a member other than the bot, and writes on.
    let bob = Peer::new();
    let bob_id = bob.text(&["id"], "identity").await;
    alice
        .ok(&["db", "rotate-read-key", &thread, "--to", &bob_id])
        .await;
    alice
        .ok(&["db", "put", &thread, "after", r#""marker-after-rotation""#])
        .await;
    alice.ok(&["push", &thread]).await;
    let status = loop {
        let (_, status) = bot
            .get(&format!("/v1/threads/{thread}"), Auth::Token(ADMIN))
            .await;
        if status["unreadable_after"].is_u64() {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // The rotation event itself opens with the old key; what follows does not.
    assert_eq!(status["applied"], 2, "{status}");
    assert_eq!(status["unreadable_after"], 2, "{status}");
    let (_, entries) = bot
        .get(&format!("/v1/threads/{thread}/kv"), Auth::Token(ADMIN))
        .await;
    assert_eq!(
        entries["entries"],
        json!([{"key": "before", "value": "marker-before-rotation"}])
    );
    assert!(!dir_holds(&bot.dir, b"marker-after-rotation"));

    // Keys are sealed at rest; the views hold plaintext until the grant is deleted.
    assert!(!dir_holds(&bot.dir, &read_key));
    assert!(!dir_holds(&bot.dir, hex::encode(&read_key).as_bytes()));
    assert!(dir_holds(&bot.dir, b"marker-before-rotation"));
    let path = format!("/v1/grants/{thread}");
    assert_eq!(
        bot.admin(reqwest::Method::DELETE, &path, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        bot.admin(reqwest::Method::DELETE, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert!(!dir_holds(&bot.dir, b"marker-before-rotation"));
    assert!(!dir_holds(&bot.dir, &read_key));
    let (status, gone) = bot
        .get(&format!("/v1/threads/{thread}/kv"), Auth::Token(ADMIN))
        .await;
    assert_eq!(
        (status, gone["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    // The follower never held a read key.
    assert!(!dir_holds(&server.data_dir, &read_key));
}

#[tokio::test]
async fn keys_at_rest_open_only_with_the_main_key() {
    let server = Server::start(Backend::Sqlite).await;
    let bot = Bot::start(&[]).await;
    let (alice, thread, invite) = writer_granting(&server, &bot).await;
    alice.ok(&["db", "put", &thread, "k", "1"]).await;
    alice.ok(&["push", &thread]).await;
    assert_eq!(bot.grant(&invite).await.0, StatusCode::CREATED);
    bot.applied(&thread, 1).await;
    let (dir, old_key) = (bot.dir.clone(), bot.main_key.clone());
    let mut bot = bot;
    bot.child.kill().await.unwrap();
    let _ = bot.child.wait().await;

    // No main key: refused, unless told keys may be kept in clear (and then they do not open).
    let refused = Bot::launch(&dir, &old_key, &["--main-key-file", "/dev/null/none"])
        .await
        .err()
        .unwrap();
    assert!(refused.contains("/dev/null/none"), "{refused}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_threads"));
    let out = cmd
        .args(["bot", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env_remove("THREADS_BOT_MAIN_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no main key"));
    let refused = Bot::launch(&dir, &old_key, &["--keys-in-clear"])
        .await
        .err()
        .unwrap();
    assert!(refused.contains("supply the main key"), "{refused}");
    let other = dir.with_file_name("other.key");
    std::fs::write(&other, run(&["bot", "new-main-key"], None).await.trim()).unwrap();
    let refused = Bot::launch(&dir, &other, &[]).await.err().unwrap();
    assert!(
        refused.contains("sealed under another main key"),
        "{refused}"
    );

    // Rotation: every file sealed again under the new key, which alone opens them after.
    let rotated = run(
        &[
            "bot",
            "rotate-main-key",
            "--data-dir",
            dir.to_str().unwrap(),
            "--main-key-file",
            old_key.to_str().unwrap(),
            "--new-main-key-file",
            other.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(rotated.trim(), "2", "the identity and the thread's keys");
    let refused = Bot::launch(&dir, &old_key, &[]).await.err().unwrap();
    assert!(
        refused.contains("sealed under another main key"),
        "{refused}"
    );
    let bot = Bot::launch(&dir, &other, &[]).await.unwrap();
    let (status, value) = bot
        .get(&format!("/v1/threads/{thread}/kv/k"), Auth::Token(ADMIN))
        .await;
    assert_eq!((status, value["value"].clone()), (StatusCode::OK, json!(1)));
}

#[tokio::test]
async fn views_kept_in_memory_touch_no_disk_and_come_back_at_start() {
    let server = Server::start(Backend::Sqlite).await;
    let bot = Bot::start(&["--views-in-memory"]).await;
    let (alice, thread, invite) = writer_granting(&server, &bot).await;
    alice
        .ok(&["db", "put", &thread, "k", r#""plaintext-marker""#])
        .await;
    alice.ok(&["push", &thread]).await;
    assert_eq!(bot.grant(&invite).await.0, StatusCode::CREATED);
    bot.applied(&thread, 1).await;
    let (_, public) = bot.get("/v1/bot", Auth::None).await;
    assert_eq!(public["views"], "memory");
    assert!(!dir_holds(&bot.dir, b"plaintext-marker"));
    let (dir, key) = (bot.dir.clone(), bot.main_key.clone());
    let home = {
        let mut bot = bot;
        bot.child.kill().await.unwrap();
        let _ = bot.child.wait().await;
        bot._home.take()
    };
    let bot = Bot::launch(&dir, &key, &["--views-in-memory"])
        .await
        .unwrap();
    let (status, value) = bot
        .get(&format!("/v1/threads/{thread}/kv/k"), Auth::Token(ADMIN))
        .await;
    assert_eq!(
        (status, value["value"].clone()),
        (StatusCode::OK, json!("plaintext-marker"))
    );
    drop(home);
}

/// Reads Server-Sent Events from a response until `n` have come (20 s at most): their IDs
/// and data.
async fn sse_events(response: &mut reqwest::Response, n: usize) -> Vec<(u64, Value)> {
    let mut text = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("events within 20 s")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let (mut id, mut data) = (None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).ok();
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_event_stream_resumes_with_no_gap_and_no_duplicate() {
    let server = Server::start(Backend::Sqlite).await;
    let bot = Bot::start(&[]).await;
    let (alice, thread, invite) = writer_granting(&server, &bot).await;
    for i in 0..3 {
        alice
            .ok(&["db", "put", &thread, &format!("k{i}"), &i.to_string()])
            .await;
    }
    alice.ok(&["push", &thread]).await;
    assert_eq!(bot.grant(&invite).await.0, StatusCode::CREATED);
    let url = format!("{}/v1/threads/{thread}/events", bot.url);
    let mut stream = bot.http.get(&url).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let first = sse_events(&mut stream, 3).await;
    let ids: Vec<u64> = first.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2, 3]);
    assert_eq!(
        first[0].1["body"]["actions"][0]["payload"]["key"], "k0",
        "{}",
        first[0].1
    );
    // Live: an event pushed while the stream is open arrives on it.
    alice.ok(&["db", "put", &thread, "live", "1"]).await;
    alice.ok(&["push", &thread]).await;
    assert_eq!(sse_events(&mut stream, 1).await[0].0, 4);
    drop(stream);

    // Disconnected, two more are written; the reconnection resumes after the last ID seen.
    for key in ["while-away-1", "while-away-2"] {
        alice.ok(&["db", "put", &thread, key, "1"]).await;
    }
    alice.ok(&["push", &thread]).await;
    bot.applied(&thread, 6).await;
    let mut stream = bot
        .http
        .get(&url)
        .bearer_auth(ADMIN)
        .header("last-event-id", "4")
        .send()
        .await
        .unwrap();
    let resumed = sse_events(&mut stream, 2).await;
    assert_eq!(
        resumed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [5, 6]
    );
    assert_eq!(
        resumed[1].1["body"]["actions"][0]["payload"]["key"],
        "while-away-2"
    );
    let mut from_query = bot
        .http
        .get(format!("{url}?after=5"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(sse_events(&mut from_query, 1).await[0].0, 6);
    // Bad resumption points, and no reader, are refused.
    let bad = bot
        .http
        .get(&url)
        .bearer_auth(ADMIN)
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        bot.get(&format!("/v1/threads/{thread}/events"), Auth::None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

/// A bot given a follower's libp2p address follows the thread over libp2p: the catch-up by
/// the API over streams, then what the follower gossips.
#[tokio::test]
async fn a_bot_follows_a_thread_over_libp2p() {
    let server = Server::start(Backend::Sqlite).await;
    let bot = Bot::start(&[]).await;
    let (alice, thread, invite) = writer_granting(&server, &bot).await;
    alice.ok(&["db", "put", &thread, "first", "1"]).await;
    alice.ok(&["push", &thread]).await;
    let (addr, _) = crate::p2p::tcp_addr(&server).await;
    let (status, granted) = bot
        .admin(
            reqwest::Method::POST,
            "/v1/grants",
            Some(json!({"invite": invite, "follower": addr})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{granted}");
    assert_eq!(granted["follower"], addr.as_str());
    bot.applied(&thread, 1).await;

    // Live: a later event reaches the bot without any new grant.
    alice.ok(&["db", "put", &thread, "second", "2"]).await;
    alice.ok(&["push", &thread]).await;
    let status = bot.applied(&thread, 2).await;
    assert_eq!(status["error"], Value::Null, "{status}");
    let (_, second) = bot
        .get(
            &format!("/v1/threads/{thread}/kv/second"),
            Auth::Token(ADMIN),
        )
        .await;
    assert_eq!(second["value"], 2);
}
