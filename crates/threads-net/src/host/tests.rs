use super::*;

fn loopback(max_connections: u32) -> Config {
    Config {
        listen: vec![
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        ],
        max_connections,
        max_connections_per_peer: 2,
        ..Config::default()
    }
}

fn host(config: Config) -> (Handle, mpsc::Receiver<Inbound>) {
    start(Keypair::generate_ed25519(), config).unwrap()
}

fn with(addrs: &[Multiaddr], transport: &str) -> Multiaddr {
    addrs
        .iter()
        .find(|a| a.to_string().contains(transport))
        .unwrap_or_else(|| panic!("no {transport} address in {addrs:?}"))
        .clone()
}

#[tokio::test]
async fn hosts_connect_over_tcp_and_quic_and_identify_each_other() {
    let (a, _) = host(loopback(8));
    let (b, _) = host(loopback(8));
    let (c, _) = host(loopback(8));
    let addrs = a.wait_listening().await.unwrap();
    assert!(addrs
        .iter()
        .all(|x| x.to_string().ends_with(&format!("/p2p/{}", a.peer_id()))));

    assert_eq!(b.dial(with(&addrs, "/tcp/")).await.unwrap(), a.peer_id());
    assert_eq!(c.dial(with(&addrs, "/quic-v1")).await.unwrap(), a.peer_id());
    let info = b.wait_identified(a.peer_id()).await.unwrap();
    assert_eq!(b.identified(a.peer_id()).await.unwrap(), Some(info.clone()));
    assert_eq!(info.protocol_version, PROTOCOL_VERSION);
    assert!(info.agent_version.starts_with("threads/"));
    assert!(
        info.protocols.iter().any(|p| p.contains("/ipfs/ping/")),
        "{info:?}"
    );
    // What a peer says of its addresses goes into the address book.
    assert!(!b.known_addrs(a.peer_id()).await.unwrap().is_empty());
    let mut peers = a.peers().await.unwrap();
    peers.sort();
    let mut expected = vec![b.peer_id(), c.peer_id()];
    expected.sort();
    assert_eq!(peers, expected);
}

#[tokio::test]
async fn the_connection_limit_refuses_one_peer_too_many_and_bad_addresses_are_explained() {
    let (a, _) = host(loopback(1));
    let addrs = a.wait_listening().await.unwrap();
    let (b, _) = host(loopback(8));
    let (c, _) = host(loopback(8));
    b.dial(with(&addrs, "/tcp/")).await.unwrap();
    // A denies the second peer's connection before counting it as established.
    let _ = c.dial(with(&addrs, "/tcp/")).await;
    assert_eq!(a.peers().await.unwrap(), vec![b.peer_id()]);

    let no_peer: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
    assert!(matches!(b.dial(no_peer).await, Err(Error::Dial { .. })));
    let nobody = "/ip4/127.0.0.1/tcp/1"
        .parse::<Multiaddr>()
        .unwrap()
        .with_p2p(c.peer_id())
        .unwrap();
    assert!(matches!(b.dial(nobody).await, Err(Error::Dial { .. })));
}

#[tokio::test]
async fn learnt_addresses_expire() {
    let (a, _) = host(Config {
        address_ttl: Duration::from_millis(500),
        ..loopback(8)
    });
    let (b, _) = host(loopback(8));
    let b_addrs = b.wait_listening().await.unwrap();
    a.dial(with(&b_addrs, "/tcp/")).await.unwrap();
    a.wait_identified(b.peer_id()).await.unwrap();
    assert!(!a.known_addrs(b.peer_id()).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        a.known_addrs(b.peer_id()).await.unwrap(),
        Vec::<Multiaddr>::new()
    );
}

/// Answers every request with its own path, as a server would answer with a page.
fn echo(mut inbound: mpsc::Receiver<Inbound>) {
    tokio::spawn(async move {
        while let Some(item) = inbound.recv().await {
            if let Inbound::Request { request, reply, .. } = item {
                reply.send(ApiResponse {
                    status: 200,
                    headers: Default::default(),
                    body: request.path.into_bytes(),
                });
            }
        }
    });
}

#[tokio::test]
async fn requests_are_answered_and_bounded() {
    let (a, inbound) = host(Config {
        requests_per_second: 1,
        request_burst: 5,
        max_request_bytes: 4096,
        max_strikes: 2,
        ..loopback(8)
    });
    echo(inbound);
    let addrs = a.wait_listening().await.unwrap();
    let (b, _) = host(loopback(8));
    let peer = b.dial(with(&addrs, "/tcp/")).await.unwrap();
    let answer = b
        .request(peer, ApiRequest::get("/v1/server"))
        .await
        .unwrap();
    assert!(a.known_addrs(b.peer_id()).await.unwrap().len() <= 16);
    assert_eq!((answer.status, answer.body), (200, b"/v1/server".to_vec()));

    // Over its rate, a peer is told to wait; nothing else changes.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(b.request(peer, ApiRequest::get("/x")).await.unwrap().status);
    }
    assert_eq!(statuses, [200, 200, 200]);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(b.request(peer, ApiRequest::get("/x")).await.unwrap().status);
    }
    assert_eq!(statuses, [200, 429]);

    // A request over the size limit is unreadable; enough of them and the peer is blocked.
    let big = ApiRequest::post("/v1/records", "application/json", vec![b'x'; 8192]);
    let refill = Duration::from_millis(1100);
    tokio::time::sleep(refill).await;
    let answer = b.request(peer, big.clone()).await.unwrap();
    assert_eq!(answer.status, 413);
    assert_eq!(a.standing(b.peer_id()).await.unwrap().strikes, 1);
    tokio::time::sleep(refill).await;
    let _ = b.request(peer, big).await;
    let mut standing = a.standing(b.peer_id()).await.unwrap();
    for _ in 0..100 {
        if standing.blocked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        standing = a.standing(b.peer_id()).await.unwrap();
    }
    assert!(standing.blocked && standing.strikes == 2, "{standing:?}");
    assert!(b.request(peer, ApiRequest::get("/x")).await.is_err());

    // A peer that serves nothing says so.
    let (c, inbound) = host(loopback(8));
    drop(inbound);
    let c_addrs = c.wait_listening().await.unwrap();
    let peer = b.dial(with(&c_addrs, "/quic-v1")).await.unwrap();
    let answer = b.request(peer, ApiRequest::get("/x")).await.unwrap();
    assert_eq!(answer.status, 503);
    assert!(String::from_utf8(answer.body)
        .unwrap()
        .contains("not_served"));
}

async fn next_gossip(inbound: &mut mpsc::Receiver<Inbound>) -> (PeerId, MessageId, Vec<u8>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), inbound.recv()).await {
            Ok(Some(Inbound::Gossip { peer, id, data, .. })) => return (peer, id, data),
            Ok(Some(_)) => continue,
            other => panic!("no gossip: {}", other.is_ok()),
        }
    }
}

async fn wait_subscribed(host: &Handle, topic: &str, peer: PeerId) {
    for _ in 0..100 {
        if host.subscribers(topic).await.unwrap().contains(&peer) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{peer} never subscribed to {topic}");
}

#[tokio::test]
async fn gossip_reaches_subscribers_and_invalid_messages_cost_their_sender() {
    let (a, _) = host(Config {
        max_message_bytes: 64 << 10,
        ..loopback(8)
    });
    let (b, mut b_inbound) = host(Config {
        max_message_bytes: 4096,
        ..loopback(8)
    });
    let b_addrs = b.wait_listening().await.unwrap();
    a.dial(with(&b_addrs, "/tcp/")).await.unwrap();
    for h in [&a, &b] {
        h.subscribe("thread-1").await.unwrap();
    }
    wait_subscribed(&a, "thread-1", b.peer_id()).await;
    wait_subscribed(&b, "thread-1", a.peer_id()).await;

    a.publish("thread-1", b"a record".to_vec()).await.unwrap();
    let (from, id, data) = next_gossip(&mut b_inbound).await;
    assert_eq!((from, data.as_slice()), (a.peer_id(), &b"a record"[..]));
    b.report(id, from, Verdict::Accept).await.unwrap();
    let trusted = b.standing(a.peer_id()).await.unwrap().score;
    // Publishing the same bytes again is not an error, and is not a second message.
    a.publish("thread-1", b"a record".to_vec()).await.unwrap();

    a.publish("thread-1", b"forged".to_vec()).await.unwrap();
    let (from, id, _) = next_gossip(&mut b_inbound).await;
    b.report(id, from, Verdict::Reject).await.unwrap();
    let after_forged = b.standing(a.peer_id()).await.unwrap().score;
    assert!(after_forged < trusted - 5.0, "{after_forged} vs {trusted}");

    // Too large for B: invalid before B's owner sees it, and costs A more.
    a.publish("thread-1", vec![7; 8192]).await.unwrap();
    let mut score = after_forged;
    for _ in 0..100 {
        score = b.standing(a.peer_id()).await.unwrap().score;
        if score < after_forged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(score < after_forged, "{score} vs {after_forged}");
    assert!(b_inbound.try_recv().is_err());
    // A third invalid message and A is past the graylist: B blocks it.
    a.publish("thread-1", b"forged again".to_vec())
        .await
        .unwrap();
    let (from, id, _) = next_gossip(&mut b_inbound).await;
    b.report(id, from, Verdict::Reject).await.unwrap();
    assert!(b.standing(a.peer_id()).await.unwrap().blocked);
}
