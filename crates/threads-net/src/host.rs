//! The libp2p host: the Swarm and the one task that drives it.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::core::transport::ListenerId;
use libp2p::futures::StreamExt;
use libp2p::swarm::{DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{connection_limits, identify, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use crate::{Config, Error, Keypair};

/// The protocol version identify announces.
pub const PROTOCOL_VERSION: &str = "/threads/1.0.0";
/// Commands waiting for the event loop; senders wait when it is behind.
const COMMAND_QUEUE: usize = 256;
/// A connection with no stream open for this long is closed.
const IDLE: Duration = Duration::from_secs(120);

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// What a remote peer said of itself (identify).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo {
    pub protocol_version: String,
    pub agent_version: String,
    pub listen_addrs: Vec<Multiaddr>,
    pub protocols: Vec<String>,
}

enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    WaitListening(oneshot::Sender<Result<(), Error>>),
    WaitIdentified(PeerId, oneshot::Sender<PeerInfo>),
    Dial(Multiaddr, oneshot::Sender<Result<PeerId, Error>>),
    Peers(oneshot::Sender<Vec<PeerId>>),
    Identified(PeerId, oneshot::Sender<Option<PeerInfo>>),
}

/// Sends commands to the host's event loop. Cloneable; the host stops when every handle is
/// dropped.
#[derive(Clone)]
pub struct Handle {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
}

/// Builds the host, starts listening, and spawns its event loop on the current runtime.
pub fn start(key: Keypair, config: Config) -> Result<Handle, Error> {
    let peer_id = key.public().to_peer_id();
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(config.max_connections / 4 + 1));
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_quic()
        .with_behaviour(|key| Behaviour {
            limits: connection_limits::Behaviour::new(limits),
            identify: identify::Behaviour::new(
                identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                    .with_agent_version(format!("threads/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::default(),
        })
        .map_err(|e| Error::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE))
        .build();
    let mut starting = HashMap::new();
    for addr in &config.listen {
        let id = swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
            addr: addr.to_string(),
            message: describe(&e),
        })?;
        starting.insert(id, addr.clone());
    }
    let (commands, queue) = mpsc::channel(COMMAND_QUEUE);
    tokio::spawn(EventLoop::new(swarm, starting).run(queue));
    Ok(Handle { peer_id, commands })
}

impl Handle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)
    }

    /// The addresses the host listens on, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        let addrs = self.ask(Command::ListenAddrs).await?;
        Ok(addrs
            .into_iter()
            .map(|a| a.with_p2p(self.peer_id).unwrap_or_else(|a| a))
            .collect())
    }

    /// Waits until every configured listener has an address, then returns the addresses.
    pub async fn wait_listening(&self) -> Result<Vec<Multiaddr>, Error> {
        self.ask(Command::WaitListening).await??;
        self.listen_addrs().await
    }

    /// Waits until `peer` (connected) has said what it is.
    pub async fn wait_identified(&self, peer: PeerId) -> Result<PeerInfo, Error> {
        self.ask(|reply| Command::WaitIdentified(peer, reply)).await
    }

    /// Connects to a peer at `addr` (which names it with `/p2p/...`); returns its peer ID once
    /// the connection is established.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, Error> {
        self.ask(|reply| Command::Dial(addr, reply)).await?
    }

    /// Peers with an established connection.
    pub async fn peers(&self) -> Result<Vec<PeerId>, Error> {
        self.ask(Command::Peers).await
    }

    /// What `peer` said of itself, once identify has run.
    pub async fn identified(&self, peer: PeerId) -> Result<Option<PeerInfo>, Error> {
        self.ask(|reply| Command::Identified(peer, reply)).await
    }
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    dialing: HashMap<PeerId, Vec<oneshot::Sender<Result<PeerId, Error>>>>,
    identified: HashMap<PeerId, PeerInfo>,
    awaiting_identify: HashMap<PeerId, Vec<oneshot::Sender<PeerInfo>>>,
    /// Configured listeners without an address yet, and who waits for them.
    starting: HashMap<ListenerId, Multiaddr>,
    listen_failed: Option<Error>,
    awaiting_listen: Vec<oneshot::Sender<Result<(), Error>>>,
}

impl EventLoop {
    fn new(swarm: Swarm<Behaviour>, starting: HashMap<ListenerId, Multiaddr>) -> Self {
        Self {
            swarm,
            dialing: HashMap::new(),
            identified: HashMap::new(),
            awaiting_identify: HashMap::new(),
            starting,
            listen_failed: None,
            awaiting_listen: Vec::new(),
        }
    }

    /// Answers those waiting for the listeners, once all have an address or one failed.
    fn settle_listening(&mut self) {
        if !self.starting.is_empty() && self.listen_failed.is_none() {
            return;
        }
        for reply in self.awaiting_listen.drain(..) {
            let _ = reply.send(match &self.listen_failed {
                None => Ok(()),
                Some(Error::Listen { addr, message }) => Err(Error::Listen {
                    addr: addr.clone(),
                    message: message.clone(),
                }),
                Some(other) => Err(Error::Transport(other.to_string())),
            });
        }
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    // Every handle is gone.
                    None => return,
                },
                event = self.swarm.select_next_some() => self.event(event),
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial(addr, reply) => {
                let Some(peer) = addr.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
                    _ => None,
                }) else {
                    let _ = reply.send(Err(Error::Dial {
                        addr: addr.to_string(),
                        message: "the address must end in /p2p/<peer id>".into(),
                    }));
                    return;
                };
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(peer));
                    return;
                }
                match self.swarm.dial(addr.clone()) {
                    Ok(()) => self.dialing.entry(peer).or_default().push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(dial_error(&addr.to_string(), &e)));
                    }
                }
            }
            Command::WaitListening(reply) => {
                self.awaiting_listen.push(reply);
                self.settle_listening();
            }
            Command::WaitIdentified(peer, reply) => match self.identified.get(&peer) {
                Some(info) => {
                    let _ = reply.send(info.clone());
                }
                None => self.awaiting_identify.entry(peer).or_default().push(reply),
            },
            Command::Peers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Identified(peer, reply) => {
                let _ = reply.send(self.identified.get(&peer).cloned());
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                tracing::info!(%address, "listening (libp2p)");
                self.starting.remove(&listener_id);
                self.settle_listening();
            }
            SwarmEvent::ListenerError { listener_id, error }
            | SwarmEvent::ListenerClosed {
                listener_id,
                reason: Err(error),
                ..
            } => {
                if let Some(addr) = self.starting.remove(&listener_id) {
                    self.listen_failed = Some(Error::Listen {
                        addr: addr.to_string(),
                        message: describe(&error),
                    });
                    self.settle_listening();
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                for reply in self.dialing.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                for reply in self.dialing.remove(&peer).unwrap_or_default() {
                    let _ = reply.send(Err(dial_error(&peer.to_string(), &error)));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.identified.remove(&peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let info = PeerInfo {
                    protocol_version: info.protocol_version,
                    agent_version: info.agent_version,
                    listen_addrs: info.listen_addrs,
                    protocols: info.protocols.iter().map(ToString::to_string).collect(),
                };
                for reply in self.awaiting_identify.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(info.clone());
                }
                self.identified.insert(peer_id, info);
            }
            _ => {}
        }
    }
}

fn dial_error(addr: &str, error: &DialError) -> Error {
    Error::Dial {
        addr: addr.to_owned(),
        message: describe(error),
    }
}

/// An error and its causes, one after another (some transport errors print nothing
/// themselves and keep the reason in their source).
fn describe(error: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.contains(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    if parts.is_empty() {
        format!("{error:?}")
    } else {
        parts.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(max_connections: u32) -> Config {
        Config {
            listen: vec![
                "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
                "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
            ],
            max_connections,
            max_connections_per_peer: 2,
        }
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
        let a = start(Keypair::generate_ed25519(), loopback(8)).unwrap();
        let b = start(Keypair::generate_ed25519(), loopback(8)).unwrap();
        let c = start(Keypair::generate_ed25519(), loopback(8)).unwrap();
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
        let mut peers = a.peers().await.unwrap();
        peers.sort();
        let mut expected = vec![b.peer_id(), c.peer_id()];
        expected.sort();
        assert_eq!(peers, expected);
    }

    #[tokio::test]
    async fn the_connection_limit_refuses_one_peer_too_many_and_bad_addresses_are_explained() {
        let a = start(Keypair::generate_ed25519(), loopback(1)).unwrap();
        let addrs = a.wait_listening().await.unwrap();
        let b = start(Keypair::generate_ed25519(), loopback(8)).unwrap();
        let c = start(Keypair::generate_ed25519(), loopback(8)).unwrap();
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
}
