//! `threads db` as people use it: writers who are offline at times, a reader who joins late,
//! each applying the thread's events in whatever order they arrived, all ending with the
//! same database.

use serde_json::{json, Value};

use crate::harness::{Backend, Server};
use crate::peers::Peer;

/// What a peer's database holds: every entry and every document of `people`, by age.
async fn views(peer: &Peer, thread: &str) -> (Value, Value) {
    let entries = peer.ok(&["db", "list", thread]).await["entries"].clone();
    let query = r#"{"sort": {"field": "age"}, "limit": 1000}"#;
    let docs = peer.ok(&["db", "find", thread, "people", query]).await["docs"].clone();
    (entries, docs)
}

#[tokio::test]
async fn replicas_agree_whatever_order_they_learn_events_in() {
    let server = Server::start(Backend::Sqlite).await;
    let url = server.url.clone();
    let (alice, bob, carol) = (Peer::new(), Peer::new(), Peer::new());
    let thread = alice.text(&["thread", "create"], "thread").await;
    alice.ok(&["follower", "add", &thread, &url]).await;
    let invite = alice.text(&["share", &thread], "invite").await;
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
            "required property",
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
