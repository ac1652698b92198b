//! Writers and readers as people use them: `threads` peer commands in their own processes,
//! each with its own home, sharing a thread through a real follower server.

use std::path::Path;

use serde_json::{json, Value};
use threads_core::ThreadKey;
use tokio::io::AsyncBufReadExt;

use crate::harness::{Backend, Server};

/// One person's `threads` command line, with its own keystore and local store.
pub(crate) struct Peer {
    home: tempfile::TempDir,
}

pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) out: Value,
    pub(crate) stderr: String,
}

impl Peer {
    pub(crate) fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn home(&self) -> &std::path::Path {
        self.home.path()
    }

    pub(crate) async fn run(&self, args: &[&str]) -> Run {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_threads"))
            .args(args)
            .arg("--json")
            .env("THREADS_HOME", self.home.path())
            .output()
            .await
            .expect("threads runs");
        Run {
            code: output.status.code().unwrap_or(-1),
            out: serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed, and returns its JSON.
    pub(crate) async fn ok(&self, args: &[&str]) -> Value {
        let run = self.run(args).await;
        assert_eq!(run.code, 0, "threads {args:?}: {} {}", run.out, run.stderr);
        run.out
    }

    /// Runs a command that must succeed, and returns one string field of its JSON.
    pub(crate) async fn text(&self, args: &[&str], field: &str) -> String {
        let out = self.ok(args).await;
        out[field]
            .as_str()
            .unwrap_or_else(|| panic!("threads {args:?}: no {field} in {out}"))
            .to_owned()
    }

    pub(crate) async fn bodies(&self, thread: &str) -> Vec<Value> {
        let out = self.ok(&["read", thread]).await;
        out["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["body"].clone())
            .collect()
    }
}

/// A running `threads tail`, read one event at a time.
pub(crate) struct Tail {
    _process: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Tail {
    /// The body of the next event it prints (20 s at most).
    pub(crate) async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("an event within 20 s")
            .unwrap()
            .expect("tail is running");
        serde_json::from_str::<Value>(&line).unwrap()["body"].clone()
    }
}

impl Peer {
    /// Starts `threads tail` on a thread, as this peer.
    pub(crate) fn tail(&self, thread: &str) -> Tail {
        let mut process = tokio::process::Command::new(env!("CARGO_BIN_EXE_threads"))
            .args(["tail", thread, "--json"])
            .env("THREADS_HOME", self.home.path())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        Tail {
            _process: process,
            lines: tokio::io::BufReader::new(stdout).lines(),
        }
    }
}

/// Alice makes a thread kept by `follower`, writes `{"n": 1}` and pushes it; Carol joins by a
/// reader link. Returns both and the thread.
pub(crate) async fn writer_and_reader(follower: &str) -> (Peer, Peer, String) {
    let (alice, carol) = (Peer::new(), Peer::new());
    let t = alice.text(&["thread", "create"], "thread").await;
    alice.ok(&["follower", "add", &t, follower]).await;
    alice.ok(&["write", &t, r#"{"n": 1}"#]).await;
    alice.ok(&["push", &t]).await;
    let link = alice
        .text(&["share", &t, "--role", "reader"], "invite")
        .await;
    carol.ok(&["join", &link]).await;
    (alice, carol, t)
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            bytes.extend(all_bytes(&path));
        } else {
            bytes.extend(std::fs::read(&path).unwrap());
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Two writers and a reader: each writer pushes from its own log, the reader ends with exactly
/// every event of both, decrypted; the follower's files hold no plaintext and no read key.
async fn two_writers_and_a_reader(backend: Backend) {
    let server = Server::start(backend).await;
    let (alice, bob, carol) = (Peer::new(), Peer::new(), Peer::new());

    let thread = alice.text(&["thread", "create"], "thread").await;
    let t = thread.as_str();
    alice.ok(&["follower", "add", t, &server.url]).await;
    // Written offline, pushed later.
    let alice_events: Vec<Value> = (0..3)
        .map(|i| json!({"from": "alice", "n": i, "secret": format!("plaintext-alice-{i}")}))
        .collect();
    for e in &alice_events {
        alice.ok(&["write", t, &e.to_string()]).await;
    }
    assert_eq!(alice.ok(&["push", t]).await["pushed"], 3);

    // Bob joins with an invite sealed to his identity: only he can open it.
    let bob_id = bob.text(&["id"], "identity").await;
    let invite = alice.text(&["share", t, "--to", &bob_id], "invite").await;
    let refused = carol.run(&["join", &invite]).await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.out["error"]
        .as_str()
        .unwrap()
        .contains("another identity"));
    bob.ok(&["join", &invite]).await;
    let bob_events: Vec<Value> = (0..2)
        .map(|i| json!({"from": "bob", "n": i, "secret": format!("plaintext-bob-{i}")}))
        .collect();
    let lines: String = bob_events.iter().map(|e| format!("{e}\n")).collect();
    bob.ok(&["write", t, &lines]).await;
    assert_eq!(bob.ok(&["push", t]).await["pushed"], 2);
    // Pushing again sends nothing: the follower's head says what it has.
    assert_eq!(bob.ok(&["push", t]).await["pushed"], 0);

    // Carol reads: a reader link, then a pull from the follower the link names.
    let link = alice
        .text(&["share", t, "--role", "reader"], "invite")
        .await;
    carol.ok(&["join", &link]).await;
    assert_eq!(carol.ok(&["pull", t]).await["pulled"], 5);
    let mut got = carol.bodies(t).await;
    let mut want: Vec<Value> = alice_events.iter().chain(&bob_events).cloned().collect();
    let key = |v: &Value| v.to_string();
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got, want);
    // A second pull resumes from the saved cursor.
    assert_eq!(carol.ok(&["pull", t]).await["pulled"], 0);
    // Carol can read but has no log to write to.
    let write = carol.run(&["write", t, "{}"]).await;
    assert_eq!(write.code, 2, "{}", write.stderr);

    // Bob removes the follower: it deletes his log and its records; Alice's stay.
    let bob_log = bob.ok(&["thread", "list"]).await["threads"][0]["log"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = server.get(&format!("/v1/threads/{t}/logs/{bob_log}")).await;
    assert_eq!(status, reqwest::StatusCode::OK);
    bob.ok(&["follower", "remove", t, &server.url]).await;
    let (status, _) = server.get(&format!("/v1/threads/{t}/logs/{bob_log}")).await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    let (_, info) = server.get(&format!("/v1/threads/{t}")).await;
    assert_eq!(info["records"], 3, "{info}");
    assert_eq!(
        bob.ok(&["thread", "list"]).await["threads"][0]["followers"],
        json!([])
    );

    // What the follower stores is opaque: no body text, no read key in any form.
    if backend == Backend::Sqlite {
        let stored = all_bytes(&server.data_dir);
        assert!(!stored.is_empty());
        for e in alice_events.iter().chain(&bob_events) {
            let secret = e["secret"].as_str().unwrap();
            assert!(
                !contains(&stored, secret.as_bytes()),
                "{secret} is stored in clear"
            );
        }
        let keyfile: Value = serde_json::from_slice(
            &std::fs::read(alice.home.path().join(format!("threads/{t}.json"))).unwrap(),
        )
        .unwrap();
        let keys: ThreadKey = keyfile["key"].as_str().unwrap().parse().unwrap();
        let read = keys.read().unwrap().as_bytes();
        assert!(!contains(&stored, read), "the read key is stored");
        assert!(!contains(
            &stored,
            keyfile["key"].as_str().unwrap().as_bytes()
        ));
    }
}

#[tokio::test]
async fn two_writers_and_a_reader_sqlite() {
    two_writers_and_a_reader(Backend::Sqlite).await;
}

#[tokio::test]
async fn two_writers_and_a_reader_postgres() {
    two_writers_and_a_reader(Backend::Postgres).await;
}

/// A follower whose stored bytes were changed is caught: the reader refuses the page, says
/// which record is not authentic, exits 3, and stores none of it.
#[tokio::test]
async fn a_tampering_follower_is_caught() {
    let server = Server::start(Backend::Sqlite).await;
    let (alice, carol) = (Peer::new(), Peer::new());
    let t = alice.text(&["thread", "create"], "thread").await;
    alice.ok(&["follower", "add", &t, &server.url]).await;
    alice.ok(&["write", &t, r#"{"n": 1} {"n": 2}"#]).await;
    alice.ok(&["push", &t]).await;

    // The follower's operator flips a byte of the second record's sealed envelope.
    let db = format!("sqlite://{}", server.data_dir.join("threads.db").display());
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    let (record,): (Vec<u8>,) = sqlx::query_as("SELECT record FROM records WHERE counter = 2")
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut forged = record.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    sqlx::query("UPDATE records SET record = $1 WHERE counter = 2")
        .bind(&forged)
        .execute(&pool)
        .await
        .unwrap();

    let link = alice
        .text(&["share", &t, "--role", "reader"], "invite")
        .await;
    carol.ok(&["join", &link]).await;
    let pull = carol.run(&["pull", &t]).await;
    assert_eq!(pull.code, 3, "{} {}", pull.out, pull.stderr);
    assert!(
        pull.out["error"]
            .as_str()
            .unwrap()
            .contains("not authentic"),
        "{}",
        pull.out
    );
    assert_eq!(carol.bodies(&t).await, Vec::<Value>::new());

    // Repaired, the same pull goes through: nothing was half-stored.
    sqlx::query("UPDATE records SET record = $1 WHERE counter = 2")
        .bind(&record)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(carol.ok(&["pull", &t]).await["pulled"], 2);
    assert_eq!(
        carol.bodies(&t).await,
        vec![json!({"n": 1}), json!({"n": 2})]
    );
}

/// A peer given only the follow key keeps and verifies the thread but cannot read it.
#[tokio::test]
async fn a_follow_only_peer_verifies_but_cannot_read() {
    let server = Server::start(Backend::Sqlite).await;
    let (alice, relay) = (Peer::new(), Peer::new());
    let t = alice
        .text(&["thread", "create", "--private"], "thread")
        .await;
    alice.ok(&["follower", "add", &t, &server.url]).await;
    alice.ok(&["write", &t, r#"{"private": true}"#]).await;
    alice.ok(&["push", &t]).await;

    let link = alice
        .text(&["share", &t, "--role", "follower"], "invite")
        .await;
    relay.ok(&["join", &link]).await;
    // Verified with the follow key (and the pull token it derives for the private thread).
    assert_eq!(relay.ok(&["pull", &t]).await["pulled"], 1);
    let read = relay.run(&["read", &t]).await;
    assert_eq!(read.code, 2);
    assert!(read.out["error"].as_str().unwrap().contains("no read key"));
    let listed = relay.ok(&["thread", "list"]).await;
    assert_eq!(listed["threads"][0]["can_read"], false);
}

/// Mistakes get one clear line and an exit code that says what kind of mistake.
#[tokio::test]
async fn mistakes_are_explained() {
    let peer = Peer::new();
    let unknown = "bafkzwfih25ooxcxwrar2ymyflonhub4jp4r3dbhr6iwjxjvkvk4vjqy";
    let run = peer.run(&["write", unknown, "{}"]).await;
    assert_eq!(run.code, 2);
    assert!(run.out["error"]
        .as_str()
        .unwrap()
        .contains("unknown thread"));
    let run = peer.run(&["join", "threads:link:garbage"]).await;
    assert_eq!(run.code, 2);
    let t = peer.text(&["thread", "create"], "thread").await;
    let run = peer.run(&["write", &t, "not json"]).await;
    assert_eq!(run.code, 2);
    // Nothing listens there: the follower cannot be reached.
    let run = peer
        .run(&["follower", "add", &t, "http://127.0.0.1:9"])
        .await;
    assert_eq!(run.code, 4, "{}", run.out);
}

/// A thread exported as a CAR file is imported elsewhere, verified first; a damaged file or one
/// of an unknown thread is refused with nothing stored.
#[tokio::test]
async fn a_thread_travels_as_a_car_file() {
    let (alice, carol, stranger) = (Peer::new(), Peer::new(), Peer::new());
    let t = alice.text(&["thread", "create"], "thread").await;
    alice
        .ok(&["write", &t, r#"{"n": 1} {"n": 2} {"n": 3}"#])
        .await;
    let car = alice.home.path().join("export.car");
    let car_path = car.to_str().unwrap();
    alice.ok(&["export", &t, "--out", car_path]).await;

    let refused = stranger.run(&["import", car_path]).await;
    assert_eq!(refused.code, 2, "{}", refused.out);
    assert!(refused.out["error"]
        .as_str()
        .unwrap()
        .contains("unknown thread"));

    let link = alice
        .text(&["share", &t, "--role", "reader"], "invite")
        .await;
    carol.ok(&["join", &link]).await;
    // A flipped byte inside a sealed node: the file still parses, the record does not verify.
    let mut damaged = std::fs::read(&car).unwrap();
    let at = damaged.len() - 10;
    damaged[at] ^= 0x40;
    let damaged_path = carol.home.path().join("damaged.car");
    std::fs::write(&damaged_path, &damaged).unwrap();
    let run = carol.run(&["import", damaged_path.to_str().unwrap()]).await;
    assert_ne!(run.code, 0, "{}", run.out);
    assert_eq!(carol.bodies(&t).await, Vec::<Value>::new());

    assert_eq!(carol.ok(&["import", car_path]).await["imported"], 3);
    assert_eq!(carol.ok(&["import", car_path]).await["imported"], 0);
    assert_eq!(
        carol.bodies(&t).await,
        vec![json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]
    );
}

/// `threads tail` prints what was there, then each record as it is pushed; when the follower
/// crashes and comes back, it reconnects and resumes with nothing missed or repeated.
#[tokio::test]
async fn tail_follows_live_and_survives_a_follower_restart() {
    let server = Server::start(Backend::Sqlite).await;
    let (alice, carol, t) = writer_and_reader(&server.url).await;
    let mut tail = carol.tail(&t);
    assert_eq!(tail.next().await, json!({"n": 1}));
    alice.ok(&["write", &t, r#"{"n": 2}"#]).await;
    alice.ok(&["push", &t]).await;
    assert_eq!(tail.next().await, json!({"n": 2}));

    let server = server.restart().await;
    alice.ok(&["write", &t, r#"{"n": 3} {"n": 4}"#]).await;
    alice.ok(&["push", &t]).await;
    assert_eq!(tail.next().await, json!({"n": 3}));
    assert_eq!(tail.next().await, json!({"n": 4}));
    drop(server);
}

/// Records written as js-threads and go-threads sign them (their weaker legacy rule) pass at a
/// follower that allows them, which says which rule each passed; a reader refuses them until
/// it is told, once per thread, to allow them; and a log ID in js-threads' CID form is the same
/// log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_records_are_read_only_by_explicit_choice() {
    use threads_store::testing::TestLog;
    let server = Server::start_with(
        Backend::Sqlite,
        &[("THREADS_ALLOW_LEGACY_SIGNATURES", "true")],
    )
    .await;
    let mut writer = TestLog::new();
    server.register(&writer, true).await;
    let (current, legacy) = (writer.next(16), writer.next_legacy(16));
    let (status, pushed) = server
        .push(&[(&writer, &current), (&writer, &legacy)])
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{pushed}");
    assert_eq!(pushed["results"][0]["signature"], "current");
    assert_eq!(pushed["results"][1]["signature"], "legacy");

    let link = threads_client::Invite {
        thread: writer.thread.clone(),
        key: writer.keys.clone(),
        earlier_read_keys: Vec::new(),
        role: threads_client::Role::Reader,
        snapshots_from: None,
        public: true,
        followers: vec![server.url.clone()],
    }
    .encode(None)
    .unwrap();
    let reader = Peer::new();
    reader.ok(&["join", &link]).await;
    let t = writer.thread.to_string();
    let refused = reader.run(&["pull", &t]).await;
    assert_eq!(refused.code, 3, "{} {}", refused.out, refused.stderr);
    let pulled = reader.ok(&["pull", &t, "--allow-legacy-signatures"]).await;
    assert_eq!(pulled, json!({"pulled": 2, "legacy_signatures": 1}));
    // Remembered for the thread.
    let more = writer.next_legacy(16);
    assert_eq!(
        server.push(&[(&writer, &more)]).await.0,
        reqwest::StatusCode::OK
    );
    let pulled = reader.ok(&["pull", &t]).await;
    assert_eq!(pulled, json!({"pulled": 1, "legacy_signatures": 1}));

    // `LogID.toString()` in js-threads: a CIDv1 of the libp2p-key codec.
    let cid_form =
        threads_core::Cid::try_from(&[&[1u8, 0x72][..], &writer.id.to_bytes()].concat()[..])
            .unwrap()
            .to_string();
    assert!(cid_form.starts_with("bafzaa"), "{cid_form}");
    let (status, log) = server
        .get(&format!("/v1/threads/{t}/logs/{cid_form}"))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{log}");
    assert_eq!(log["log"], writer.id.to_string());
}
