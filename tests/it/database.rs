//! `threads db` as people use it: writers who are offline at times, a reader who joins late,
//! each applying the thread's events in whatever order they arrived, all ending with the
//! same database.

use serde_json::{json, Value};

use crate::harness::{Backend, Server};
use crate::peers::Peer;

/// A server and three people: the first made a thread, has the server follow its log, and
/// holds a writer invite for the others (who have not joined yet).
struct Shared {
    server: Server,
    peers: [Peer; 3],
    thread: String,
    invite: String,
}

impl Shared {
    async fn start() -> Self {
        let server = Server::start(Backend::Sqlite).await;
        let peers = [Peer::new(), Peer::new(), Peer::new()];
        let thread = peers[0].text(&["thread", "create"], "thread").await;
        peers[0]
            .ok(&["follower", "add", &thread, &server.url])
            .await;
        let invite = peers[0].text(&["share", &thread], "invite").await;
        Self {
            server,
            peers,
            thread,
            invite,
        }
    }
}

/// What a peer's database holds: every entry and every document of `people`, by age.
pub(crate) async fn views(peer: &Peer, thread: &str) -> (Value, Value) {
    let entries = peer.ok(&["db", "list", thread]).await["entries"].clone();
    let query = r#"{"sort": {"field": "age"}, "limit": 1000}"#;
    let docs = peer.ok(&["db", "find", thread, "people", query]).await["docs"].clone();
    (entries, docs)
}

#[tokio::test]
async fn replicas_agree_whatever_order_they_learn_events_in() {
    let Shared {
        server,
        peers: [alice, bob, carol],
        thread,
        invite,
    } = Shared::start().await;
    let url = server.url.clone();
    bob.ok(&["join", &invite]).await;

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
    bob.ok(&["pull", &thread]).await;

    // Both write while neither hears from the other: the same key, and documents.
    for (peer, name, age) in [(&alice, "Jane", 34), (&bob, "John", 51)] {
        peer.ok(&["db", "put", &thread, "color", &format!("\"{name}'s\"")])
            .await;
        peer.ok(&["db", "put", &thread, &format!("seen/{name}"), "true"])
            .await;
        let doc = json!({"name": name, "age": age}).to_string();
        peer.ok(&["db", "insert", &thread, "people", &doc]).await;
        // Fields of the root, which every replica shares (two writers creating the same nested
        // object concurrently make two objects, and one of them wins).
        peer.ok(&[
            "db",
            "crdt-set",
            &thread,
            "minutes",
            name,
            &format!("\"by {name}\""),
        ])
        .await;
    }
    alice.ok(&["db", "delete", &thread, "seen/Jane"]).await;
    bob.ok(&["follower", "add", &thread, &url]).await;
    alice.ok(&["push", &thread]).await;
    alice.ok(&["pull", &thread]).await;
    bob.ok(&["pull", &thread]).await;

    // A reader who joins afterwards gets everything in the follower's order.
    let reader = alice
        .text(&["share", &thread, "--role", "reader"], "invite")
        .await;
    carol.ok(&["join", &reader]).await;
    carol.ok(&["pull", &thread]).await;

    // Both edits of the shared document survive, on every replica.
    let minutes = json!({"Jane": "by Jane", "John": "by John"});
    for peer in [&alice, &bob, &carol] {
        assert_eq!(
            peer.ok(&["db", "crdt-get", &thread, "minutes"]).await["value"],
            minutes
        );
    }
    let expected = views(&alice, &thread).await;
    assert_eq!(views(&bob, &thread).await, expected);
    assert_eq!(views(&carol, &thread).await, expected);
    let (entries, docs) = expected;
    let color = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "color");
    assert!(color.unwrap()["value"].as_str().unwrap().ends_with("'s"));
    let names: Vec<&Value> = docs
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["name"])
        .collect();
    assert_eq!(names, ["Jane", "John"]);
    assert!(!entries.to_string().contains("seen/Jane"), "{entries}");

    // The reader learnt the collection, its schema and its index from the thread.
    let collections = carol.ok(&["db", "collections", &thread]).await;
    assert_eq!(
        collections["collections"][0]["indexes"],
        json!(["_id", "age"])
    );
    let found = carol
        .ok(&[
            "db",
            "find",
            &thread,
            "people",
            r#"{"where": {"field": "age", "gt": 40}}"#,
        ])
        .await;
    assert_eq!(found["docs"][0]["name"], "John");
}

#[tokio::test]
async fn refused_actions_are_explained_and_write_nothing() {
    let (alice, carol) = (Peer::new(), Peer::new());
    let thread = alice.text(&["thread", "create"], "thread").await;
    alice
        .ok(&[
            "db",
            "create-collection",
            &thread,
            "people",
            "--schema",
            r#"{"required": ["name"]}"#,
        ])
        .await;
    let before = alice.ok(&["read", &thread]).await["events"]
        .as_array()
        .unwrap()
        .len();
    for (args, said) in [
        (
            vec!["db", "insert", &thread, "people", r#"{"age": 3}"#],
            "missing properties 'name'",
        ),
        (
            vec!["db", "insert", &thread, "nobody", "{}"],
            "no collection",
        ),
        (vec!["db", "put", &thread, "k", "not json"], "not JSON"),
        (
            vec!["db", "find", &thread, "people", r#"{"limit": 0}"#],
            "limit",
        ),
        (vec!["db", "get", &thread, "missing"], "no key"),
        (vec!["db", "create-collection", &thread, "people"], "exists"),
    ] {
        let run = alice.run(&args).await;
        assert_eq!(run.code, 2, "{args:?}: {}", run.out);
        assert!(
            run.out["error"].as_str().unwrap().contains(said),
            "{args:?}: {}",
            run.out
        );
    }
    let after = alice.ok(&["read", &thread]).await["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(after, before, "nothing refused was written");

    let reader = alice
        .text(&["share", &thread, "--role", "reader"], "invite")
        .await;
    carol.ok(&["join", &reader]).await;
    let run = carol.run(&["db", "put", &thread, "k", "1"]).await;
    assert_eq!(run.code, 2, "{}", run.out);
    assert!(
        run.out["error"].as_str().unwrap().contains("no log"),
        "{}",
        run.out
    );
}

/// The paper's Table 1 over a real follower: John administers; Mary may edit the plan but
/// create nothing; Jane only reads. A forged write from Jane's log (made without the
/// database's own check) is ignored by every replica, and John's deletion of Mary's edit
/// takes it out of every view.
#[tokio::test]
async fn acls_are_enforced_by_every_replica() {
    let Shared {
        server,
        peers: [john, mary, jane],
        thread,
        invite,
    } = Shared::start().await;
    let url = server.url.clone();
    let mut logs = Vec::new();
    for peer in [&john, &mary, &jane] {
        if !std::ptr::eq(peer, &john) {
            peer.ok(&["join", &invite]).await;
        }
        let list = peer.ok(&["thread", "list"]).await;
        logs.push(list["threads"][0]["log"].as_str().unwrap().to_owned());
    }
    let (john_log, mary_log, jane_log) = (&logs[0], &logs[1], &logs[2]);

    let thread_acl = json!({"default": "no-access", "peers": {
        john_log: ["write", "delete"], mary_log: ["read"], jane_log: ["read"]}});
    let plan_acl = json!({"default": "read", "peers": {john_log: ["write"], mary_log: ["write"]}});
    john.ok(&["db", "acl-set", &thread, "thread", &thread_acl.to_string()])
        .await;
    john.ok(&["db", "put", &thread, "plan", r#""v1""#]).await;
    john.ok(&["db", "acl-set", &thread, "kv:plan", &plan_acl.to_string()])
        .await;
    john.ok(&["push", &thread]).await;
    for peer in [&mary, &jane] {
        peer.ok(&["follower", "add", &thread, &url]).await;
        peer.ok(&["pull", &thread]).await;
    }

    let edit = mary
        .ok(&["db", "put", &thread, "plan", r#""v2 by Mary""#])
        .await;
    for (peer, key) in [(&mary, "other"), (&jane, "plan")] {
        let run = peer.run(&["db", "put", &thread, key, "1"]).await;
        assert_eq!(run.code, 2, "{}", run.out);
        assert!(
            run.out["error"]
                .as_str()
                .unwrap()
                .contains("lacks the write role"),
            "{}",
            run.out
        );
    }
    // Jane's log writes a database event directly, as a modified client could.
    let forged = json!({"threads-db": 1, "clock": 99, "time": 0,
                        "actions": [{"store": "kv", "type": "put",
                                     "payload": {"key": "plan", "value": "forged"}}]});
    jane.ok(&["write", &thread, &forged.to_string()]).await;
    for peer in [&mary, &jane] {
        peer.ok(&["push", &thread]).await;
    }
    for peer in [&john, &mary, &jane] {
        peer.ok(&["pull", &thread]).await;
        assert_eq!(
            peer.ok(&["db", "get", &thread, "plan"]).await["value"],
            "v2 by Mary"
        );
    }
    let acls = john.ok(&["db", "acl", &thread]).await;
    assert_eq!(acls["acls"]["thread"], thread_acl);
    assert_eq!(mary.ok(&["db", "acl", &thread]).await, acls);

    // John deletes Mary's edit; Mary may not delete anything.
    let event = edit["event"].as_str().unwrap();
    let run = mary.run(&["db", "delete-event", &thread, event]).await;
    assert_eq!(run.code, 2, "{}", run.out);
    john.ok(&["db", "delete-event", &thread, event]).await;
    john.ok(&["push", &thread]).await;
    for peer in [&john, &mary, &jane] {
        peer.ok(&["pull", &thread]).await;
        assert_eq!(
            peer.ok(&["db", "get", &thread, "plan"]).await["value"],
            "v1"
        );
    }
}

/// Revoking a reader for the future: Alice hands a fresh read key to Bob only; what is
/// written after is readable by Bob (who writes with the new key too) and not by Carol, who
/// keeps what she could read before.
#[tokio::test]
async fn a_rotated_read_key_reaches_members_only() {
    let Shared {
        server,
        peers: [alice, bob, carol],
        thread,
        invite,
    } = Shared::start().await;
    let url = server.url.clone();
    alice
        .ok(&["db", "put", &thread, "before", r#""everyone""#])
        .await;
    alice.ok(&["push", &thread]).await;
    for peer in [&bob, &carol] {
        peer.ok(&["join", &invite]).await;
        peer.ok(&["follower", "add", &thread, &url]).await;
        peer.ok(&["pull", &thread]).await;
    }
    let bob_id = bob.text(&["id"], "identity").await;

    let rotated = alice
        .ok(&["db", "rotate-read-key", &thread, "--to", &bob_id])
        .await;
    assert_eq!(rotated["handed_to"], json!([bob_id]));
    alice
        .ok(&["db", "put", &thread, "after", r#""members only""#])
        .await;
    alice.ok(&["push", &thread]).await;

    bob.ok(&["pull", &thread]).await;
    assert_eq!(
        bob.ok(&["db", "get", &thread, "after"]).await["value"],
        "members only"
    );
    bob.ok(&["db", "put", &thread, "reply", r#""from Bob""#])
        .await;
    bob.ok(&["push", &thread]).await;
    alice.ok(&["pull", &thread]).await;
    assert_eq!(
        alice.ok(&["db", "get", &thread, "reply"]).await["value"],
        "from Bob"
    );

    carol.ok(&["pull", &thread]).await;
    let before = carol.run(&["db", "get", &thread, "before"]).await;
    assert_eq!(before.code, 0, "{}", before.out);
    assert_eq!(before.out["value"], "everyone");
    assert!(before.stderr.contains("not handed"), "{}", before.stderr);
    for key in ["after", "reply"] {
        let run = carol.run(&["db", "get", &thread, key]).await;
        assert_eq!(run.code, 2, "{}", run.out);
    }

    // Someone invited after the rotation reads everything: invites carry earlier keys too.
    let dave = Peer::new();
    let link = bob
        .text(&["share", &thread, "--role", "reader"], "invite")
        .await;
    dave.ok(&["join", &link]).await;
    dave.ok(&["pull", &thread]).await;
    for (key, value) in [
        ("before", "everyone"),
        ("after", "members only"),
        ("reply", "from Bob"),
    ] {
        let run = dave.run(&["db", "get", &thread, key]).await;
        assert_eq!(run.out["value"], value, "{key}: {}", run.stderr);
    }
}

/// Alice publishes a snapshot of her database; Bob, whom she invites afterwards, starts from
/// it (reducing only what came after) and ends with the same views as Alice.
#[tokio::test]
async fn an_invited_peer_starts_from_the_published_snapshot() {
    let Shared {
        server,
        peers: [alice, bob, _],
        thread,
        invite: _,
    } = Shared::start().await;
    for i in 0..20 {
        alice
            .ok(&["db", "put", &thread, &format!("k{i}"), &i.to_string()])
            .await;
    }
    let published = alice.ok(&["db", "publish-snapshot", &thread]).await;
    assert!(published["bytes"].as_u64().unwrap() > 0, "{published}");
    alice
        .ok(&["db", "put", &thread, "k3", r#""changed after""#])
        .await;
    alice.ok(&["db", "delete", &thread, "k4"]).await;
    assert!(
        alice.ok(&["push", &thread]).await["pushed"]
            .as_u64()
            .unwrap()
            >= 23
    );

    let invite = alice.text(&["share", &thread], "invite").await;
    bob.ok(&["join", &invite]).await;
    bob.ok(&["follower", "add", &thread, &server.url]).await;
    bob.ok(&["pull", &thread]).await;
    let status = bob.ok(&["db", "status", &thread]).await;
    assert_eq!(status["applied"], 22, "{status}");
    assert_eq!(
        status["journaled"], 2,
        "only what came after the snapshot: {status}"
    );
    let ours = bob.ok(&["db", "list", &thread]).await;
    assert_eq!(ours, alice.ok(&["db", "list", &thread]).await);
    assert_eq!(
        bob.ok(&["db", "get", &thread, "k3"]).await["value"],
        "changed after"
    );

    // Bob writes on top; Alice gets it as usual.
    bob.ok(&["db", "put", &thread, "from-bob", "1"]).await;
    bob.ok(&["push", &thread]).await;
    alice.ok(&["pull", &thread]).await;
    assert_eq!(
        alice.ok(&["db", "get", &thread, "from-bob"]).await["value"],
        1
    );
}
