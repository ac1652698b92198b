//! Thread addresses: a peer multiaddr followed by the `thread` protocol (code 406).
//!
//! `/ip4/127.0.0.1/tcp/4006/p2p/12D3KooW.../thread/bafk...`. The `multiaddr` crate knows every
//! standard protocol but not `thread`, so the thread part is handled here and the rest is
//! delegated. The whitepaper's older name for the same code, `ipel`, is accepted on input.

use std::fmt;
use std::str::FromStr;

pub use multiaddr::{Multiaddr, Protocol};
use thiserror::Error;

use crate::id::{IdError, ThreadId};

/// The multicodec of the `thread` multiaddr protocol.
pub const THREAD_PROTOCOL_CODE: u64 = 406;

/// Why a thread address was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddrError {
    #[error("address does not end in /thread/<thread id>")]
    NoThread,
    #[error("bad peer multiaddr: {0}")]
    Multiaddr(String),
    #[error("bad thread ID in address: {0}")]
    ThreadId(#[from] IdError),
    #[error("bad length prefix of the thread component")]
    Length,
}

/// A thread reachable through a peer: the peer's multiaddr, then the thread ID.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ThreadAddr {
    peer: Multiaddr,
    thread: ThreadId,
}

impl ThreadAddr {
    pub fn new(peer: Multiaddr, thread: ThreadId) -> Self {
        Self { peer, thread }
    }

    /// The part that reaches the peer (transport and `/p2p/<peer id>`).
    pub fn peer(&self) -> &Multiaddr {
        &self.peer
    }

    pub fn thread(&self) -> &ThreadId {
        &self.thread
    }

    /// The base58 peer ID of the `/p2p/` component, if the address has one.
    pub fn peer_id(&self) -> Option<String> {
        self.peer.iter().find_map(|p| match p {
            Protocol::P2p(id) => Some(id.to_base58()),
            _ => None,
        })
    }

    /// Binary form: the peer multiaddr's bytes, `uvarint(406)`, `uvarint(len)`, thread ID bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.peer.to_vec();
        let mut buf = unsigned_varint::encode::u64_buffer();
        out.extend_from_slice(unsigned_varint::encode::u64(THREAD_PROTOCOL_CODE, &mut buf));
        let id = self.thread.as_bytes();
        out.extend_from_slice(unsigned_varint::encode::u64(id.len() as u64, &mut buf));
        out.extend_from_slice(id);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AddrError> {
        let mut peer = Multiaddr::empty();
        let mut rest = bytes;
        loop {
            if let Ok((THREAD_PROTOCOL_CODE, tail)) = unsigned_varint::decode::u64(rest) {
                let (len, id) =
                    unsigned_varint::decode::u64(tail).map_err(|_| AddrError::Length)?;
                if id.len() as u64 != len {
                    return Err(AddrError::Length);
                }
                return Ok(Self::new(peer, ThreadId::from_bytes(id)?));
            }
            if rest.is_empty() {
                return Err(AddrError::NoThread);
            }
            let (protocol, tail) =
                Protocol::from_bytes(rest).map_err(|e| AddrError::Multiaddr(e.to_string()))?;
            peer.push(protocol);
            rest = tail;
        }
    }
}

impl FromStr for ThreadAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, AddrError> {
        let (peer, id) = ["/thread/", "/ipel/"]
            .iter()
            .find_map(|tag| s.rsplit_once(tag))
            .ok_or(AddrError::NoThread)?;
        if id.contains('/') {
            return Err(AddrError::NoThread);
        }
        let peer = if peer.is_empty() {
            Multiaddr::empty()
        } else {
            peer.parse()
                .map_err(|e: multiaddr::Error| AddrError::Multiaddr(e.to_string()))?
        };
        Ok(Self::new(peer, id.parse()?))
    }
}

impl fmt::Display for ThreadAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/thread/{}", self.peer, self.thread)
    }
}

impl fmt::Debug for ThreadAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ThreadAddr({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWFCXqmQTwvpfYFWK3DjXChEc4NoPt8pp5jjC8REZ3g6NZ";
    const THREAD: &str = "bafk7ayo2xuuafgx6ubbcn2lro3s7oixgujdda6shv4";

    #[test]
    fn parse_print_split() {
        let text = format!("/ip4/127.0.0.1/tcp/4006/p2p/{PEER}/thread/{THREAD}");
        let addr: ThreadAddr = text.parse().unwrap();
        assert_eq!(addr.to_string(), text);
        assert_eq!(addr.peer_id().as_deref(), Some(PEER));
        assert_eq!(addr.thread().to_string(), THREAD);
        assert_eq!(
            addr.peer().to_string(),
            format!("/ip4/127.0.0.1/tcp/4006/p2p/{PEER}")
        );

        let bytes = addr.to_bytes();
        // The thread component: varint 406 is `96 03`, then the length, then the ID.
        let tail = &bytes[bytes.len() - 26 - 3..];
        assert_eq!(&tail[..3], &[0x96, 0x03, 26]);
        assert_eq!(ThreadAddr::from_bytes(&bytes).unwrap(), addr);

        let old: ThreadAddr = format!("/p2p/{PEER}/ipel/{THREAD}").parse().unwrap();
        assert_eq!(old.to_string(), format!("/p2p/{PEER}/thread/{THREAD}"));
        let bare: ThreadAddr = format!("/thread/{THREAD}").parse().unwrap();
        assert_eq!(bare.peer_id(), None);
    }

    #[test]
    fn errors() {
        assert_eq!(
            "/ip4/1.2.3.4/tcp/1".parse::<ThreadAddr>(),
            Err(AddrError::NoThread)
        );
        assert!(matches!(
            format!("/ip9/x/thread/{THREAD}").parse::<ThreadAddr>(),
            Err(AddrError::Multiaddr(_))
        ));
        assert!(matches!(
            "/thread/bnotanid".parse::<ThreadAddr>(),
            Err(AddrError::ThreadId(_))
        ));
        assert_eq!(
            ThreadAddr::from_bytes(&[0x96, 0x03, 5, 1]),
            Err(AddrError::Length)
        );
        assert_eq!(ThreadAddr::from_bytes(&[]), Err(AddrError::NoThread));
    }
}
