//! The libp2p host: the Swarm and the one task that drives it.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use libp2p::core::transport::ListenerId;
use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, connection_limits, identify, noise, ping, tcp, yamux, Multiaddr, PeerId,
    StreamProtocol, Swarm,
};
use tokio::sync::{mpsc, oneshot};

use crate::address_book::AddressBook;
use crate::api::{ApiRequest, ApiResponse, PROTOCOL};
use crate::{gossip, Config, Error, Keypair};

/// The protocol version identify announces.
pub const PROTOCOL_VERSION: &str = "/threads/1.0.0";
/// Commands waiting for the event loop; senders wait when it is behind.
const COMMAND_QUEUE: usize = 256;
/// What a frame may carry beyond the configured request or message size: room for the
/// envelope, so that a body over the limit is still read, refused clearly and counted against
/// its sender, while anything larger is cut off unread.
const FRAME_SLACK: usize = 64 << 10;
/// How long a blocked peer is refused.
const BLOCK_FOR: Duration = Duration::from_secs(600);
/// How often strikes are forgiven (one each time) and expired blocks and addresses dropped.
const TIDY_EVERY: Duration = Duration::from_secs(60);
/// A connection with no stream open for this long is closed.
const IDLE: Duration = Duration::from_secs(120);

#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    api: request_response::cbor::Behaviour<ApiRequest, ApiResponse>,
    gossip: gossipsub::Behaviour,
}

/// What the network brings to the host's owner, through a bounded queue: when the queue is
/// full, requests are answered `503 busy` and gossip is ignored (neither is lost silently).
pub enum Inbound {
    /// An API request; answer it with [`Reply::send`].
    Request {
        peer: PeerId,
        request: ApiRequest,
        reply: Reply,
    },
    /// A gossip message on a subscribed topic, not yet forwarded to anyone: judge it with
    /// [`Handle::report`].
    Gossip {
        /// The peer that passed it on (not necessarily its author).
        peer: PeerId,
        id: MessageId,
        topic: String,
        data: Vec<u8>,
    },
}

/// Where the answer to one inbound request goes.
pub struct Reply {
    channel: ResponseChannel<ApiResponse>,
    responses: mpsc::UnboundedSender<(ResponseChannel<ApiResponse>, ApiResponse)>,
}

impl Reply {
    pub fn send(self, response: ApiResponse) {
        let _ = self.responses.send((self.channel, response));
    }
}

/// How a gossip message fared with its receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: pass it on.
    Accept,
    /// Invalid: drop it and penalise the peer that sent it.
    Reject,
    /// Not for us (or not yet): drop it without penalty.
    Ignore,
}

/// What the host thinks of a peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// Its gossipsub score (negative once it sent invalid messages).
    pub score: f64,
    /// Invalid requests it made.
    pub strikes: u32,
    /// Disconnected and refused, after too many strikes or too low a score.
    pub blocked: bool,
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
    Request(
        PeerId,
        ApiRequest,
        oneshot::Sender<Result<ApiResponse, Error>>,
    ),
    KnownAddrs(PeerId, oneshot::Sender<Vec<Multiaddr>>),
    Subscribe(String),
    Unsubscribe(String),
    Publish(String, Vec<u8>, oneshot::Sender<Result<(), Error>>),
    Report(MessageId, PeerId, Verdict),
    Strike(PeerId),
    Standing(PeerId, oneshot::Sender<Standing>),
    Subscribers(String, oneshot::Sender<Vec<PeerId>>),
}

/// Sends commands to the host's event loop. Cloneable; the host stops when every handle is
/// dropped.
#[derive(Clone)]
pub struct Handle {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
}

/// Builds the host, starts listening, and spawns its event loop on the current runtime. What
/// peers send arrives on the returned receiver; a host that serves nothing may drop it (its
/// peers' requests are then answered `503`).
pub fn start(key: Keypair, config: Config) -> Result<(Handle, mpsc::Receiver<Inbound>), Error> {
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
        .with_behaviour(
            |key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let codec = request_response::cbor::codec::Codec::default()
                    .set_request_size_maximum(config.max_request_bytes + FRAME_SLACK as u64)
                    .set_response_size_maximum(config.max_response_bytes);
                let api = request_response::Behaviour::with_codec(
                    codec,
                    [(StreamProtocol::new(PROTOCOL), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(config.request_timeout)
                        .with_max_concurrent_streams(config.inbound_queue),
                );
                Ok(Behaviour {
                    blocked: Default::default(),
                    limits: connection_limits::Behaviour::new(limits),
                    identify: identify::Behaviour::new(
                        identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                            .with_agent_version(format!("threads/{}", env!("CARGO_PKG_VERSION"))),
                    ),
                    ping: ping::Behaviour::default(),
                    api,
                    gossip: gossip::behaviour(key, config.max_message_bytes + FRAME_SLACK)?,
                })
            },
        )
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
    let (inbound, received) = mpsc::channel(config.inbound_queue);
    tokio::spawn(EventLoop::new(swarm, starting, inbound, &config).run(queue));
    Ok((Handle { peer_id, commands }, received))
}

impl Handle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// False once the event loop has ended (its runtime shut down).
    pub fn is_running(&self) -> bool {
        !self.commands.is_closed()
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

    /// Sends an API request to `peer` (connecting through the address book if need be) and
    /// waits for its answer.
    pub async fn request(&self, peer: PeerId, request: ApiRequest) -> Result<ApiResponse, Error> {
        self.ask(|reply| Command::Request(peer, request, reply))
            .await?
    }

    /// The live addresses the address book has for `peer`.
    pub async fn known_addrs(&self, peer: PeerId) -> Result<Vec<Multiaddr>, Error> {
        self.ask(|reply| Command::KnownAddrs(peer, reply)).await
    }

    /// Receives the gossip of `topic` from now on (idempotent).
    pub async fn subscribe(&self, topic: &str) -> Result<(), Error> {
        self.send(Command::Subscribe(topic.to_owned())).await
    }

    pub async fn unsubscribe(&self, topic: &str) -> Result<(), Error> {
        self.send(Command::Unsubscribe(topic.to_owned())).await
    }

    /// Publishes `data` on `topic`. Nobody listening is not an error, and neither is data
    /// published before (messages are named by their content).
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), Error> {
        self.ask(|reply| Command::Publish(topic.to_owned(), data, reply))
            .await?
    }

    /// Judges a gossip message received as [`Inbound::Gossip`].
    pub async fn report(&self, id: MessageId, peer: PeerId, verdict: Verdict) -> Result<(), Error> {
        self.send(Command::Report(id, peer, verdict)).await
    }

    /// Counts an invalid request against `peer`; too many and it is blocked.
    pub async fn strike(&self, peer: PeerId) -> Result<(), Error> {
        self.send(Command::Strike(peer)).await
    }

    pub async fn standing(&self, peer: PeerId) -> Result<Standing, Error> {
        self.ask(|reply| Command::Standing(peer, reply)).await
    }

    /// Peers known to be subscribed to `topic`.
    pub async fn subscribers(&self, topic: &str) -> Result<Vec<PeerId>, Error> {
        self.ask(|reply| Command::Subscribers(topic.to_owned(), reply))
            .await
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        self.commands
            .send(command)
            .await
            .map_err(|_| Error::Stopped)
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
    /// Requests sent, waiting for their answers.
    outbound: HashMap<OutboundRequestId, oneshot::Sender<Result<ApiResponse, Error>>>,
    inbound: mpsc::Sender<Inbound>,
    responses: mpsc::UnboundedSender<(ResponseChannel<ApiResponse>, ApiResponse)>,
    answered: mpsc::UnboundedReceiver<(ResponseChannel<ApiResponse>, ApiResponse)>,
    limiter: DefaultKeyedRateLimiter<PeerId>,
    book: AddressBook,
    address_ttl: Duration,
    strikes: HashMap<PeerId, u32>,
    max_strikes: u32,
    /// Blocked peers, and when they may come back.
    blocked_until: HashMap<PeerId, Instant>,
    max_request_bytes: u64,
    max_message_bytes: usize,
    topics: HashSet<String>,
}

impl EventLoop {
    fn new(
        swarm: Swarm<Behaviour>,
        starting: HashMap<ListenerId, Multiaddr>,
        inbound: mpsc::Sender<Inbound>,
        config: &Config,
    ) -> Self {
        let (responses, answered) = mpsc::unbounded_channel();
        let rate = NonZeroU32::new(config.requests_per_second).unwrap_or(NonZeroU32::MAX);
        let burst = NonZeroU32::new(config.request_burst).unwrap_or(rate);
        Self {
            outbound: HashMap::new(),
            inbound,
            responses,
            answered,
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            book: AddressBook::default(),
            address_ttl: config.address_ttl,
            strikes: HashMap::new(),
            max_strikes: config.max_strikes,
            blocked_until: HashMap::new(),
            max_request_bytes: config.max_request_bytes,
            max_message_bytes: config.max_message_bytes,
            topics: HashSet::new(),
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
        let mut tidy = tokio::time::interval(TIDY_EVERY);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    // Every handle is gone.
                    None => return,
                },
                Some((channel, response)) = self.answered.recv() => {
                    // The peer may be gone; then there is nobody to answer.
                    let _ = self.swarm.behaviour_mut().api.send_response(channel, response);
                }
                event = self.swarm.select_next_some() => self.event(event),
                _ = tidy.tick() => self.tidy(),
            }
        }
    }

    /// Forgives a strike of every peer, lets blocked peers back once their time is up, and
    /// forgets expired addresses and idle rate buckets.
    fn tidy(&mut self) {
        let now = Instant::now();
        self.strikes.retain(|_, strikes| {
            *strikes -= 1;
            *strikes > 0
        });
        let blocked = &mut self.swarm.behaviour_mut().blocked;
        self.blocked_until.retain(|peer, until| {
            let keep = *until > now;
            if !keep {
                blocked.unblock_peer(*peer);
            }
            keep
        });
        self.book.prune(now);
        self.limiter.retain_recent();
    }

    /// Disconnects a peer and refuses it for [`BLOCK_FOR`].
    fn block(&mut self, peer: PeerId, why: &str) {
        tracing::warn!(%peer, why, "peer blocked");
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        self.blocked_until.insert(peer, Instant::now() + BLOCK_FOR);
    }

    fn strike(&mut self, peer: PeerId) {
        let strikes = self.strikes.entry(peer).or_default();
        *strikes += 1;
        if *strikes >= self.max_strikes {
            self.block(peer, "repeated invalid requests");
        }
    }

    fn report(&mut self, id: MessageId, peer: PeerId, verdict: Verdict) {
        let acceptance = match verdict {
            Verdict::Accept => MessageAcceptance::Accept,
            Verdict::Reject => MessageAcceptance::Reject,
            Verdict::Ignore => MessageAcceptance::Ignore,
        };
        let gossip = &mut self.swarm.behaviour_mut().gossip;
        gossip.report_message_validation_result(&id, &peer, acceptance);
        if verdict == Verdict::Reject
            && gossip.peer_score(&peer).unwrap_or(0.0) < gossip::GRAYLIST_THRESHOLD
        {
            self.block(peer, "repeated invalid gossip");
        }
    }

    fn standing(&mut self, peer: PeerId) -> Standing {
        let b = self.swarm.behaviour();
        Standing {
            score: b.gossip.peer_score(&peer).unwrap_or(0.0),
            strikes: self.strikes.get(&peer).copied().unwrap_or(0),
            blocked: b.blocked.blocked_peers().contains(&peer),
        }
    }

    /// An API request from a peer: answered at once when over its rate or when the owner's
    /// queue is full, else queued for the owner.
    fn api_request(
        &mut self,
        peer: PeerId,
        request: ApiRequest,
        channel: ResponseChannel<ApiResponse>,
    ) {
        let refusal = if self.limiter.check_key(&peer).is_err() {
            Some(ApiResponse::error(
                429,
                "rate_limited",
                "too many requests from this peer",
            ))
        } else if request.body.len() as u64 > self.max_request_bytes {
            self.strike(peer);
            Some(ApiResponse::error(
                413,
                "too_large",
                &format!("the request body is over {} bytes", self.max_request_bytes),
            ))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            let _ = self
                .swarm
                .behaviour_mut()
                .api
                .send_response(channel, refusal);
            return;
        }
        let reply = Reply {
            channel,
            responses: self.responses.clone(),
        };
        let (refused, busy) = match self.inbound.try_send(Inbound::Request {
            peer,
            request,
            reply,
        }) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(inbound)) => (inbound, true),
            Err(mpsc::error::TrySendError::Closed(inbound)) => (inbound, false),
        };
        if let Inbound::Request { reply, .. } = refused {
            reply.send(if busy {
                ApiResponse::error(503, "busy", "the server is busy; retry later")
            } else {
                ApiResponse::error(503, "not_served", "this peer answers no API requests")
            });
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
                self.book
                    .add(peer, addr.clone(), self.address_ttl, Instant::now());
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
            Command::Request(peer, request, reply) => {
                let addrs = self.book.addrs(&peer, Instant::now());
                if !self.swarm.is_connected(&peer) && addrs.is_empty() {
                    let _ = reply.send(Err(Error::Dial {
                        addr: peer.to_string(),
                        message: "no known address for this peer".into(),
                    }));
                    return;
                }
                let api = &mut self.swarm.behaviour_mut().api;
                let id = api.send_request_with_addresses(&peer, request, addrs);
                self.outbound.insert(id, reply);
            }
            Command::KnownAddrs(peer, reply) => {
                let _ = reply.send(self.book.addrs(&peer, Instant::now()));
            }
            Command::Subscribe(topic) => {
                if self.topics.insert(topic.clone()) {
                    let gossip = &mut self.swarm.behaviour_mut().gossip;
                    let topic = IdentTopic::new(topic);
                    if let Err(e) = gossip::subscribe(gossip, topic) {
                        tracing::warn!(error = %e, "cannot subscribe");
                    }
                }
            }
            Command::Unsubscribe(topic) => {
                if self.topics.remove(&topic) {
                    self.swarm
                        .behaviour_mut()
                        .gossip
                        .unsubscribe(&IdentTopic::new(topic));
                }
            }
            Command::Publish(topic, data, reply) => {
                let gossip = &mut self.swarm.behaviour_mut().gossip;
                let _ = reply.send(match gossip.publish(IdentTopic::new(topic), data) {
                    Ok(_) | Err(gossipsub::PublishError::Duplicate) => Ok(()),
                    Err(e) => Err(Error::Publish(e.to_string())),
                });
            }
            Command::Report(id, peer, verdict) => self.report(id, peer, verdict),
            Command::Strike(peer) => self.strike(peer),
            Command::Standing(peer, reply) => {
                let _ = reply.send(self.standing(peer));
            }
            Command::Subscribers(topic, reply) => {
                let hash = IdentTopic::new(topic).hash();
                let peers = self.swarm.behaviour().gossip.all_peers();
                let _ = reply.send(
                    peers
                        .filter(|(_, topics)| topics.contains(&&hash))
                        .map(|(peer, _)| *peer)
                        .collect(),
                );
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
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if endpoint.is_dialer() {
                    self.book.succeeded(&peer_id, endpoint.get_remote_address());
                }
                for reply in self.dialing.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if let DialError::Transport(failures) = &error {
                    for (addr, _) in failures {
                        self.book.failed(&peer, addr);
                    }
                }
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
                for addr in &info.listen_addrs {
                    self.book
                        .add(peer_id, addr.clone(), self.address_ttl, Instant::now());
                }
                for reply in self.awaiting_identify.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(info.clone());
                }
                self.identified.insert(peer_id, info);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Api(event)) => self.api_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                if message.data.len() > self.max_message_bytes {
                    self.report(message_id, propagation_source, Verdict::Reject);
                    return;
                }
                let gossip = Inbound::Gossip {
                    peer: propagation_source,
                    id: message_id.clone(),
                    topic: message.topic.into_string(),
                    data: message.data,
                };
                if self.inbound.try_send(gossip).is_err() {
                    let gossip = &mut self.swarm.behaviour_mut().gossip;
                    gossip.report_message_validation_result(
                        &message_id,
                        &propagation_source,
                        MessageAcceptance::Ignore,
                    );
                }
            }
            _ => {}
        }
    }
}

impl EventLoop {
    fn api_event(&mut self, event: request_response::Event<ApiRequest, ApiResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.api_request(peer, request, channel),
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.outbound.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.outbound.remove(&request_id) {
                    let _ = reply.send(Err(Error::Request {
                        peer: peer.to_string(),
                        message: describe(&error),
                    }));
                }
            }
            // An unreadable request: too large, or not our encoding.
            Event::InboundFailure {
                peer,
                error: request_response::InboundFailure::Io(error),
                ..
            } => {
                tracing::debug!(%peer, %error, "unreadable request");
                self.strike(peer);
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
}
