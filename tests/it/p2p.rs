//! The follower as a libp2p peer: it announces its addresses, keeps its peer ID across
//! restarts, and a libp2p peer can connect and identify it over TCP and QUIC.

use serde_json::Value;
use threads_net::{host, Config, Keypair, Multiaddr};

use crate::harness::{Backend, Server};

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
    let me = host::start(Keypair::generate_ed25519(), config).unwrap();
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
