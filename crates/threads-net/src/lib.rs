//! Threads on libp2p. One event loop owns the [`libp2p::Swarm`]; a cloneable [`Handle`] sends
//! it commands with oneshot replies, so callers never touch the Swarm.
//!
//! | module | what |
//! |---|---|
//! | [`host`] | the host: TCP and QUIC, Noise, Yamux, identify, ping, connection limits, the event loop |
//! | [`api`] | the follower's HTTP API carried on libp2p streams |
//! | [`gossip`] | gossipsub: a topic per thread, content-named messages, peer scores |
//! | [`address_book`] | peer addresses with a time to live |
//! | this module | the persistent peer key, configuration and errors |
//!
//! ```no_run
//! # async fn demo() -> Result<(), threads_net::Error> {
//! let key = threads_net::load_or_create_key(std::path::Path::new("/tmp/peer.key"))?;
//! let (handle, _inbound) = threads_net::host::start(key, threads_net::Config::default())?;
//! for addr in handle.wait_listening().await? {
//!     println!("{addr}");
//! }
//! # Ok(()) }
//! ```

pub mod address_book;
pub mod api;
pub mod gossip;
pub mod host;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

pub use api::{ApiRequest, ApiResponse};
pub use host::{Handle, Inbound, Reply, Standing, Verdict};
pub use libp2p::gossipsub::MessageId;
pub use libp2p::identity::Keypair;
pub use libp2p::multiaddr::Protocol;
pub use libp2p::{Multiaddr, PeerId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the peer key file {path}: {message}")]
    Key { path: String, message: String },
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: String, message: String },
    #[error("cannot reach {addr}: {message}")]
    Dial { addr: String, message: String },
    #[error("a request to {peer} failed: {message}")]
    Request { peer: String, message: String },
    #[error("cannot publish: {0}")]
    Publish(String),
    #[error("the transport: {0}")]
    Transport(String),
    #[error("the network host has stopped")]
    Stopped,
}

/// Where the host listens, and the bounds on what peers may ask of it.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<Multiaddr>,
    /// Established connections in all, and per peer.
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    /// Largest API request and response read from a stream; larger ones are unreadable and
    /// count against the sender.
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    /// Largest gossip message; larger ones are invalid and cost their sender score.
    pub max_message_bytes: usize,
    /// API requests each peer may make per second, and in a burst (0: no limit).
    pub requests_per_second: u32,
    pub request_burst: u32,
    /// Requests and gossip waiting for the owner; beyond it requests are answered `503 busy`.
    pub inbound_queue: usize,
    /// How long an API request may wait for its answer.
    pub request_timeout: Duration,
    /// How long a learnt address lives unless renewed.
    pub address_ttl: Duration,
    /// Invalid requests after which a peer is blocked (for ten minutes); one is forgiven a
    /// minute.
    pub max_strikes: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/4006".parse().expect("a valid address"),
                "/ip4/0.0.0.0/udp/4006/quic-v1"
                    .parse()
                    .expect("a valid address"),
            ],
            max_connections: 1024,
            max_connections_per_peer: 4,
            max_request_bytes: 17 << 20,
            max_response_bytes: api::MAX_RESPONSE_BYTES,
            max_message_bytes: 1 << 20,
            requests_per_second: 200,
            request_burst: 400,
            inbound_queue: 256,
            request_timeout: Duration::from_secs(60),
            address_ttl: Duration::from_secs(3600),
            max_strikes: 10,
        }
    }
}

/// The host's peer key, kept in `path` (owner-only) so its peer ID and addresses survive
/// restarts; made on first use.
pub fn load_or_create_key(path: &Path) -> Result<Keypair, Error> {
    let failed = |message: String| Error::Key {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| failed(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| failed(e.to_string()))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| failed(e.to_string()))?;
            file.write_all(&bytes).map_err(|e| failed(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_key_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peer.key");
        let first = load_or_create_key(&path).unwrap();
        let again = load_or_create_key(&path).unwrap();
        assert_eq!(first.public().to_peer_id(), again.public().to_peer_id());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(load_or_create_key(&path), Err(Error::Key { .. })));
    }
}
