//! The follower with a libp2p peer that is not ours: js-libp2p (TCP, Noise, Yamux, identify,
//! gossipsub v1.1), run by Node.js from `interop/js`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;
use threads_client::car::{read_car, write_car, CarItem};
use threads_store::testing::TestLog;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::ChildStdout;

use crate::harness::{Backend, Server};

async fn next(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the js peer answers in time")
        .unwrap()
        .expect("the js peer is running");
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
}

#[tokio::test]
async fn a_js_libp2p_peer_identifies_the_follower_and_gossips_with_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop/js");
    assert!(
        dir.join("node_modules").exists(),
        "run `npm ci` in {} (scripts/test does)",
        dir.display()
    );
    let server = Server::start(Backend::Sqlite).await;
    let (_, info) = server.get("/v1/server").await;
    let addr = info["p2p"]["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|a| a.contains("/tcp/"))
        .unwrap()
        .to_owned();
    let mut log = TestLog::new();
    assert!(server.register(&log, true).await.0.is_success());

    let mut js = tokio::process::Command::new("node")
        .arg(dir.join("peer.mjs"))
        .args([&addr, &log.thread.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(js.stdout.take().unwrap()).lines();
    let mut stdin = js.stdin.take().unwrap();

    let identify = next(&mut lines).await;
    assert_eq!(identify["type"], "identify", "{identify}");
    assert_eq!(identify["protocol"], "/threads/1.0.0");
    assert!(identify["agent"].as_str().unwrap().starts_with("threads/"));
    let protocols = identify["protocols"].to_string();
    assert!(protocols.contains("/meshsub/1.1.0"), "{protocols}");
    assert_eq!(next(&mut lines).await["type"], "ready");

    // Pushed over HTTP, heard by the js peer.
    let first = log.next(64);
    assert!(server.push(&[(&log, &first)]).await.0.is_success());
    let heard = next(&mut lines).await;
    assert_eq!(heard["type"], "message", "{heard}");
    let car = B64.decode(heard["data"].as_str().unwrap()).unwrap();
    let records = read_car(&car).await.unwrap();
    assert_eq!(threads_core::cid_of(&records[0].blocks.record), first.cid());

    // Published by the js peer (signed by its own key), taken in by the follower.
    let second = log.next(64);
    let car = write_car([CarItem::new(&log.id, &log.thread, second.blocks())]).await;
    stdin
        .write_all(format!("{}\n", B64.encode(car)).as_bytes())
        .await
        .unwrap();
    assert_eq!(next(&mut lines).await["type"], "published");
    for _ in 0..200 {
        let (_, thread) = server.get(&format!("/v1/threads/{}", log.thread)).await;
        if thread["records"] == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the follower never stored the record the js peer published");
}
