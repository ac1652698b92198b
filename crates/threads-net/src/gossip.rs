//! Gossipsub as threads use it: one topic per thread, named by the thread ID; messages named by
//! their content (the same record heard from two followers is one message); every message
//! checked by the receiver before it is passed on; peers that send invalid ones lose score.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libp2p::gossipsub::{
    self, IdentTopic, MessageAuthenticity, MessageId, PeerScoreParams, PeerScoreThresholds,
    TopicScoreParams, ValidationMode,
};
use sha2::{Digest, Sha256};

use crate::Keypair;

/// Below this score a peer's messages are ignored, and the host blocks it.
pub const GRAYLIST_THRESHOLD: f64 = -80.0;

/// `max_frame` bounds what is read at all; messages within it but over the configured size
/// are refused by the host, which penalises their sender.
pub(crate) fn behaviour(
    key: &Keypair,
    max_frame: usize,
) -> Result<gossipsub::Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(max_frame)
        .message_id_fn(|message| MessageId::new(&Sha256::digest(&message.data)))
        .build()?;
    let mut behaviour =
        gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)?;
    let params = PeerScoreParams {
        // Peers on this machine (tools, tests, sidecars) share an address by nature.
        ip_colocation_factor_whitelist: HashSet::from([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        ..Default::default()
    };
    let thresholds = PeerScoreThresholds {
        graylist_threshold: GRAYLIST_THRESHOLD,
        ..Default::default()
    };
    behaviour.with_peer_score(params, thresholds)?;
    Ok(behaviour)
}

/// Subscribes to a thread's topic, scoring it. An invalid message costs its sender 10 (squared
/// as they add up: three in a row and the peer is past the graylist); time in the mesh and
/// first deliveries earn a little, at most 1 and 5; a quiet thread costs nobody (threads are
/// often quiet, so missing deliveries are not held against mesh peers).
pub(crate) fn subscribe(
    gossip: &mut gossipsub::Behaviour,
    topic: IdentTopic,
) -> Result<(), String> {
    let params = TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        // Forgiven slowly: about 1% a second.
        invalid_message_deliveries_decay: 0.99,
        ..Default::default()
    };
    gossip.set_topic_params(topic.clone(), params)?;
    gossip.subscribe(&topic).map_err(|e| e.to_string())?;
    Ok(())
}
