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

mod handle;
#[cfg(test)]
mod tests;

use handle::Command;
pub use handle::{Handle, Inbound, PeerInfo, Reply, Standing, Verdict};

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
                // No peer on the topic is nobody to tell, not a failure.
                let _ = reply.send(match gossip.publish(IdentTopic::new(topic), data) {
                    Ok(_)
                    | Err(gossipsub::PublishError::Duplicate)
                    | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(()),
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
