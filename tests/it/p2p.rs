//! The follower as a libp2p peer: it announces its addresses and keeps its peer ID; writers
//! push and readers pull over libp2p as over HTTP; it gossips what writers push to public
//! threads and takes in what it hears, penalising peers that send forgeries; it replicates
//! another follower.

use std::time::Duration;

use serde_json::{json, Value};
use threads_client::car::{read_car, write_car, CarItem, CAR};
use threads_core::auth::pull_token;
use threads_net::{host, ApiRequest, Config, Handle, Inbound, Keypair, Multiaddr, PeerId, Verdict};
use threads_store::testing::TestLog;
use tokio::sync::mpsc;

use crate::harness::{record_json, Backend, Server};
use crate::peers::{writer_and_reader, Peer};

async fn p2p_info(server: &Server) -> Value {
    let info: Value = reqwest::get(format!("{}/v1/server", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    info["p2p"].clone()
}

#[tokio::test]
async fn a_peer_connects_to_the_follower_and_identifies_it() {
    let server = Server::start(Backend::Sqlite).await;
    let p2p = p2p_info(&server).await;
    let peer_id = p2p["peer_id"].as_str().unwrap().to_owned();
    let addrs: Vec<Multiaddr> = p2p["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(addrs.len(), 2, "{p2p}");
    assert!(addrs
        .iter()
        .all(|a| a.to_string().ends_with(&format!("/p2p/{peer_id}"))));

    let config = Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..Config::default()
    };
    let (me, _) = host::start(Keypair::generate_ed25519(), config).unwrap();
    for addr in &addrs {
        let dialed = me.dial(addr.clone()).await.unwrap();
        assert_eq!(dialed.to_string(), peer_id);
    }
    let info = me.wait_identified(peer_id.parse().unwrap()).await.unwrap();
    assert_eq!(info.protocol_version, host::PROTOCOL_VERSION);
    assert!(info.agent_version.starts_with("threads/"), "{info:?}");

    // The peer key is kept in the data directory: the same peer ID after a restart.
    let server = server.restart().await;
    assert_eq!(p2p_info(&server).await["peer_id"], peer_id.as_str());
}

#[tokio::test]
async fn a_bad_p2p_address_fails_fast_naming_the_field() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_threads"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--p2p-listen",
            "tcp:4006",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("p2p.listen"), "{stderr}");
}

/// The server's libp2p address over TCP, and its peer ID.
pub(crate) async fn tcp_addr(server: &Server) -> (String, PeerId) {
    let p2p = p2p_info(server).await;
    let addr = p2p["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .find(|a| a.contains("/tcp/"))
        .unwrap();
    (addr, p2p["peer_id"].as_str().unwrap().parse().unwrap())
}

/// A bare libp2p peer on loopback, as a third-party subscriber or a misbehaving peer would be.
fn peer() -> (Handle, mpsc::Receiver<Inbound>) {
    let config = Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..Config::default()
    };
    host::start(Keypair::generate_ed25519(), config).unwrap()
}

/// Polls `check` until it holds (10 s at most).
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn a_writer_pushes_and_a_reader_pulls_over_libp2p() {
    let server = Server::start(Backend::Sqlite).await;
    let (addr, _) = tcp_addr(&server).await;
    let (alice, bob) = (Peer::new(), Peer::new());
    let thread = alice.text(&["thread", "create"], "thread").await;
    let t = thread.as_str();
    alice.ok(&["follower", "add", t, &addr]).await;
    let events: Vec<Value> = (0..3).map(|i| json!({"n": i})).collect();
    for e in &events {
        alice.ok(&["write", t, &e.to_string()]).await;
    }
    assert_eq!(alice.ok(&["push", t]).await["pushed"], 3);
    assert_eq!(alice.ok(&["push", t]).await["pushed"], 0);

    // The same storage answers HTTP: three records.
    let (_, info) = server.get(&format!("/v1/threads/{t}")).await;
    assert_eq!(info["records"], 3, "{info}");

    // A reader joins by a link naming the libp2p follower, and pulls over libp2p.
    let link = alice
        .text(&["share", t, "--role", "reader"], "invite")
        .await;
    bob.ok(&["join", &link]).await;
    bob.ok(&["pull", t]).await;
    assert_eq!(bob.bodies(t).await, events);

    // A follower address without a peer ID is explained.
    let bare = addr.rsplit_once("/p2p/").unwrap().0;
    let refused = alice.run(&["follower", "add", t, bare]).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.out["error"].as_str().unwrap().contains("/p2p/"),
        "{}",
        refused.out
    );
}

#[tokio::test]
async fn a_tail_over_libp2p_hears_news_by_gossip() {
    let server = Server::start(Backend::Sqlite).await;
    let (addr, _) = tcp_addr(&server).await;
    let (alice, carol, t) = writer_and_reader(&addr).await;
    let mut tail = carol.tail(&t);
    assert_eq!(tail.next().await, json!({"n": 1}));
    // Time for the tail to subscribe; then news arrives well before its 5 s fallback pull.
    tokio::time::sleep(Duration::from_secs(1)).await;
    alice.ok(&["write", &t, r#"{"n": 2}"#]).await;
    let pushed = std::time::Instant::now();
    alice.ok(&["push", &t]).await;
    assert_eq!(tail.next().await, json!({"n": 2}));
    assert!(
        pushed.elapsed() < Duration::from_secs(3),
        "{:?}",
        pushed.elapsed()
    );
}

#[tokio::test]
async fn requests_over_libp2p_get_the_same_answers_as_http() {
    let server = Server::start(Backend::Sqlite).await;
    let (addr, server_peer) = tcp_addr(&server).await;
    let mut log = TestLog::new();
    assert!(server.register(&log, true).await.0.is_success());
    let (me, _) = peer();
    me.dial(addr.parse().unwrap()).await.unwrap();

    let good = log.next(64);
    let body = json!({"records": [record_json(&log, &good)]}).to_string();
    let push = ApiRequest::post("/v1/records", "application/json", body.into_bytes());
    let answer = me.request(server_peer, push).await.unwrap();
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );

    // A forged record: refused with the code HTTP gives, and counted against the peer.
    let mut forged = record_json(&log, &log.after(Some(good.cid()), 64));
    forged["body"] = json!("AAAA");
    let push = ApiRequest::post(
        "/v1/records",
        "application/json",
        json!({"records": [forged.clone()]})
            .to_string()
            .into_bytes(),
    );
    let over_p2p = me.request(server_peer, push).await.unwrap();
    let (status, over_http) = server
        .post("/v1/records", json!({"records": [forged]}))
        .await;
    let over_p2p: Value = serde_json::from_slice(&over_p2p.body).unwrap();
    assert_eq!(status, 422);
    assert_eq!(over_p2p["code"], over_http["code"], "{over_p2p}");

    // Logs and heads, and a page by counter as CAR.
    let thread = &log.thread;
    let info = me
        .request(
            server_peer,
            ApiRequest::get(format!("/v1/threads/{thread}")),
        )
        .await
        .unwrap();
    let info: Value = serde_json::from_slice(&info.body).unwrap();
    assert_eq!(info["logs"][0]["head"]["counter"], 1, "{info}");
    let page = me
        .request(
            server_peer,
            ApiRequest::get(format!(
                "/v1/threads/{thread}/logs/{}/records?after=0&format=car",
                log.id
            )),
        )
        .await
        .unwrap();
    assert_eq!(page.header("content-type"), Some(CAR));
    assert_eq!(page.header("x-threads-cursor"), Some("1"));
    let records = read_car(&page.body).await.unwrap();
    assert_eq!(threads_core::cid_of(&records[0].blocks.record), good.cid());

    // Routes that mean nothing off HTTP are not there.
    let ws = me
        .request(
            server_peer,
            ApiRequest::get(format!("/v1/ws?thread={thread}")),
        )
        .await
        .unwrap();
    assert_eq!(ws.status, 404);
}

#[tokio::test]
async fn a_subscriber_hears_records_live_and_forgers_are_cut_off() {
    let server = Server::start_with(
        Backend::Sqlite,
        &[("THREADS_P2P__MAX_MESSAGE_BYTES", "4096")],
    )
    .await;
    let (addr, server_peer) = tcp_addr(&server).await;
    let mut log = TestLog::new();
    assert!(server.register(&log, true).await.0.is_success());
    let private = TestLog::new();
    assert!(server.register(&private, false).await.0.is_success());
    let topic = log.thread.to_string();
    let (me, mut heard) = peer();
    me.dial(addr.parse().unwrap()).await.unwrap();
    me.subscribe(&topic).await.unwrap();
    eventually("the server subscribes to the thread's topic", || async {
        me.subscribers(&topic).await.unwrap().contains(&server_peer)
    })
    .await;
    // A private thread is never gossiped: its records are for holders of its pull token.
    let private_topic = private.thread.to_string();
    assert!(!me
        .subscribers(&private_topic)
        .await
        .unwrap()
        .contains(&server_peer));

    // Pushed over HTTP, heard over gossip.
    let record = log.next(64);
    assert!(server.push(&[(&log, &record)]).await.0.is_success());
    let (from, id, data) = loop {
        match tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .unwrap()
        {
            Some(Inbound::Gossip { peer, id, data, .. }) => break (peer, id, data),
            _ => continue,
        }
    };
    assert_eq!(from, server_peer);
    let records = read_car(&data).await.unwrap();
    assert_eq!(
        threads_core::cid_of(&records[0].blocks.record),
        record.cid()
    );
    me.report(id, from, Verdict::Accept).await.unwrap();

    // Gossip the server can verify is taken in like a push.
    let next = log.next(64);
    let car = write_car([CarItem::new(&log.id, &log.thread, next.blocks())]).await;
    me.publish(&topic, car).await.unwrap();
    let token = pull_token(log.keys.service(), &log.thread);
    eventually("the gossiped record is stored", || async {
        let (_, info) = server
            .get(&format!("/v1/threads/{}?token={token}", log.thread))
            .await;
        info["records"] == 2
    })
    .await;

    // One message too large and two forged records: the server stops listening to this peer.
    me.publish(&topic, vec![0; 8192]).await.unwrap();
    for _ in 0..2 {
        let mut forged = log.after(log.head, 64).blocks().clone();
        forged.body = vec![0xa0];
        let car = write_car([CarItem::new(&log.id, &log.thread, &forged)]).await;
        me.publish(&topic, car).await.unwrap();
    }
    eventually("the server disconnects the forger", || async {
        !me.peers().await.unwrap().contains(&server_peer)
    })
    .await;
    // Coming back does not help: the server refuses the connection.
    let _ = me.dial(addr.parse().unwrap()).await;
    let asked = me.request(server_peer, ApiRequest::get("/v1/server")).await;
    assert!(asked.is_err(), "{asked:?}");
    let (_, info) = server
        .get(&format!("/v1/threads/{}?token={token}", log.thread))
        .await;
    assert_eq!(info["records"], 2);
}

/// A gossip message goes straight to the follower's core: its CAR is decoded once on the way
/// in (not once by gossip and again by an HTTP push built from it), as the server's metrics
/// count.
#[tokio::test]
async fn a_gossiped_car_of_100_records_is_decoded_once() {
    let server = Server::start(Backend::Sqlite).await;
    let (addr, server_peer) = tcp_addr(&server).await;
    let mut log = TestLog::new();
    assert!(server.register(&log, true).await.0.is_success());
    let topic = log.thread.to_string();
    let (me, _heard) = peer();
    me.dial(addr.parse().unwrap()).await.unwrap();
    me.subscribe(&topic).await.unwrap();
    eventually("the server subscribes to the thread's topic", || async {
        me.subscribers(&topic).await.unwrap().contains(&server_peer)
    })
    .await;
    let records: Vec<_> = (0..100).map(|_| log.next(64)).collect();
    let car = write_car(
        records
            .iter()
            .map(|r| CarItem::new(&log.id, &log.thread, r.blocks())),
    )
    .await;
    me.publish(&topic, car).await.unwrap();
    eventually("the gossiped records are stored", || async {
        let (_, info) = server.get(&format!("/v1/threads/{}", log.thread)).await;
        info["records"] == 100
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let decoded: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("threads_cars_decoded_total"))
        .collect();
    assert_eq!(
        decoded,
        ["threads_cars_decoded_total{origin=\"gossip\"} 1"],
        "{metrics}"
    );
}

/// A public thread's later records reach the replica by gossip alone (its heads comparisons are
/// an hour apart); a private thread is never gossiped, so they come with the next comparison.
#[tokio::test]
async fn a_second_follower_replicates_the_first_while_the_writer_is_offline() {
    replicates(true).await;
    replicates(false).await;
}

async fn replicates(public: bool) {
    let a = Server::start(Backend::Sqlite).await;
    let (addr, _) = tcp_addr(&a).await;
    let mut log = TestLog::new();
    assert!(a.register(&log, public).await.0.is_success());
    let first: Vec<_> = (0..50).map(|_| log.next(100)).collect();
    let pairs: Vec<_> = first.iter().map(|r| (&log, r)).collect();
    assert!(a.push(&pairs).await.0.is_success());

    // B is given the thread's address at A and its follow key, nothing more.
    let from = format!("{addr}/thread/{}", log.thread);
    let follow_key = log.keys.follow_only().to_multibase().to_string();
    let replicate = format!("[{{from = \"{from}\", follow_key = \"{follow_key}\"}}]");
    let b = Server::start_with(
        Backend::Sqlite,
        &[
            ("THREADS_P2P__REPLICATE", &replicate),
            (
                "THREADS_P2P__SYNC_INTERVAL_SECS",
                if public { "3600" } else { "1" },
            ),
        ],
    )
    .await;
    let token = pull_token(log.keys.service(), &log.thread);
    let path = format!("/v1/threads/{}?token={token}", log.thread);
    let records = |(_, info): (_, Value)| info["records"].as_u64().unwrap_or(0);
    eventually("B holds A's first 50 records", || async {
        records(b.get(&path).await) == 50
    })
    .await;

    // The writer keeps writing to A only; B keeps up.
    let more: Vec<_> = (0..10).map(|_| log.next(100)).collect();
    let pairs: Vec<_> = more.iter().map(|r| (&log, r)).collect();
    assert!(a.push(&pairs).await.0.is_success());
    eventually("B holds all 60", || async {
        records(b.get(&path).await) == 60
    })
    .await;
    let cids = |records: Vec<Value>| -> Vec<String> {
        records
            .iter()
            .map(|r| r["cid"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        cids(crate::harness::pull_all(&a, &log, Some(&token)).await),
        cids(crate::harness::pull_all(&b, &log, Some(&token)).await)
    );
    // The thread at B is as public or private as at A.
    let status = b.get(&format!("/v1/threads/{}", log.thread)).await.0;
    assert_eq!(status, if public { 200 } else { 401 });
    // The operator's alert sees when B last compared with A: no later than now.
    let metrics = b.metrics().await;
    let series = format!(
        "threads_replication_last_success_timestamp_seconds{{thread=\"{}\"}} ",
        log.thread
    );
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&series))
        .unwrap_or_else(|| panic!("no {series} in {metrics}"));
    let synced: f64 = line[series.len()..].parse().unwrap();
    let now = crate::harness::now_ms() as f64 / 1000.0;
    assert!(synced > now - 60.0 && synced <= now, "{line}");
}

#[tokio::test]
async fn a_writers_addresses_expire_unless_renewed() {
    let server =
        Server::start_with(Backend::Sqlite, &[("THREADS_P2P__ADDRESS_TTL_SECS", "1")]).await;
    let log = TestLog::new();
    assert!(server.register(&log, true).await.0.is_success());
    let path = format!("/v1/threads/{}/logs/{}", log.thread, log.id);
    let addrs = |(_, info): (_, Value)| info["addrs"].as_array().unwrap().len();
    assert_eq!(addrs(server.get(&path).await), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(addrs(server.get(&path).await), 0);
    // Registering again renews them.
    assert!(server.register(&log, true).await.0.is_success());
    assert_eq!(addrs(server.get(&path).await), 1);
}

/// Two processes on one Postgres are one follower on libp2p too: a peer connected to the one
/// where nothing was registered or pushed hears the records of a thread registered through the
/// other, and pushed there.
#[tokio::test]
async fn every_process_on_one_database_gossips_every_public_thread() {
    let a = Server::start(Backend::Postgres).await;
    // Its own data directory: each process has its own libp2p identity.
    let b_dir = tempfile::tempdir().unwrap();
    let b = Server::launch(a.database_url.clone(), b_dir.path(), &[]).await;
    let (addr, b_peer) = tcp_addr(&b).await;
    let (_, a_peer) = tcp_addr(&a).await;
    assert_ne!(a_peer, b_peer);

    // Registered through A after B started: B learns of it from the database.
    let mut log = TestLog::new();
    assert!(a.register(&log, true).await.0.is_success());
    let topic = log.thread.to_string();
    let (me, mut heard) = peer();
    me.dial(addr.parse().unwrap()).await.unwrap();
    me.subscribe(&topic).await.unwrap();
    let first = log.next(64);
    assert!(a.push(&[(&log, &first)]).await.0.is_success());
    eventually("B subscribes to the thread's topic", || async {
        me.subscribers(&topic).await.unwrap().contains(&b_peer)
    })
    .await;

    // Once B is on the topic, what A stores reaches the peer through B.
    let second = log.next(64);
    assert!(a.push(&[(&log, &second)]).await.0.is_success());
    let heard_cids = loop {
        match tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("gossip from B within 10 s")
        {
            Some(Inbound::Gossip { peer, data, .. }) => {
                assert_eq!(peer, b_peer);
                let records = read_car(&data).await.unwrap();
                let cids: Vec<_> = records
                    .iter()
                    .map(|r| threads_core::cid_of(&r.blocks.record))
                    .collect();
                if cids.contains(&second.cid()) {
                    break cids;
                }
            }
            _ => continue,
        }
    };
    assert_eq!(heard_cids, vec![second.cid()]);
}

/// Processes sharing a database that are all told to replicate a thread take turns by lease:
/// one replicates it, each record is taken in once, and when that one stops another takes
/// over.
#[tokio::test]
async fn replicas_on_one_database_replicate_a_thread_once() {
    let a = Server::start(Backend::Sqlite).await;
    let (addr, _) = tcp_addr(&a).await;
    let mut log = TestLog::new();
    assert!(a.register(&log, false).await.0.is_success());
    let push = |n: usize, log: &mut TestLog| -> Vec<_> { (0..n).map(|_| log.next(100)).collect() };
    let first = push(50, &mut log);
    let pairs: Vec<_> = first.iter().map(|r| (&log, r)).collect();
    assert!(a.push(&pairs).await.0.is_success());

    let from = format!("{addr}/thread/{}", log.thread);
    let follow_key = log.keys.follow_only().to_multibase().to_string();
    let replicate = format!("[{{from = \"{from}\", follow_key = \"{follow_key}\"}}]");
    let env = [
        ("THREADS_P2P__REPLICATE", replicate.as_str()),
        ("THREADS_P2P__SYNC_INTERVAL_SECS", "1"),
    ];
    let b1 = Server::start_with(Backend::Postgres, &env).await;
    let dir = tempfile::tempdir().unwrap();
    let b2 = Server::launch(b1.database_url.clone(), dir.path(), &env).await;
    let token = pull_token(log.keys.service(), &log.thread);
    let path = format!("/v1/threads/{}?token={token}", log.thread);
    async fn held(server: &Server, path: &str) -> u64 {
        server.get(path).await.1["records"].as_u64().unwrap_or(0)
    }
    eventually("the database holds A's 50 records", || async {
        held(&b1, &path).await == 50
    })
    .await;
    let more = push(10, &mut log);
    let pairs: Vec<_> = more.iter().map(|r| (&log, r)).collect();
    assert!(a.push(&pairs).await.0.is_success());
    eventually("and the next 10", || async { held(&b2, &path).await == 60 }).await;

    let ingested = |metrics: String| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("threads_records_ingested_total "))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    let (n1, n2) = (ingested(b1.metrics().await), ingested(b2.metrics().await));
    assert_eq!(n1 + n2, 60, "each record taken in once: {n1} + {n2}");
    // Each says whether it holds the thread's replication; one does.
    let series = format!("threads_replication_held{{thread=\"{}\"}} ", log.thread);
    let holds = |metrics: String| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .map(|v| v.trim() == "1")
    };
    let (h1, h2) = (holds(b1.metrics().await), holds(b2.metrics().await));
    assert_eq!(
        [h1, h2].iter().filter(|h| **h == Some(true)).count(),
        1,
        "{h1:?} {h2:?}"
    );
    assert!(h1.is_some() && h2.is_some(), "both try: {h1:?} {h2:?}");

    // The one replicating stops; the other takes over once its lease runs out.
    let (mut holder, survivor) = if h1 == Some(true) { (b1, b2) } else { (b2, b1) };
    holder.kill9().await;
    let last = push(10, &mut log);
    let pairs: Vec<_> = last.iter().map(|r| (&log, r)).collect();
    assert!(a.push(&pairs).await.0.is_success());
    for _ in 0..300 {
        if held(&survivor, &path).await == 70 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the survivor did not take over the replication");
}
