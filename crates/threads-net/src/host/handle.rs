//! The host's public face: the cloneable [`Handle`] that sends the event loop commands
//! with oneshot replies, and what the network brings to the host's owner.

use libp2p::gossipsub::MessageId;
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use crate::api::{ApiRequest, ApiResponse};
use crate::Error;

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
    pub(super) channel: ResponseChannel<ApiResponse>,
    pub(super) responses: mpsc::UnboundedSender<(ResponseChannel<ApiResponse>, ApiResponse)>,
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

pub(super) enum Command {
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
    pub(super) peer_id: PeerId,
    pub(super) commands: mpsc::Sender<Command>,
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
