//! Where peers can be reached. Every address has a time to live: it expires unless renewed
//! (learnt again from the peer or a writer), and one that keeps failing is dropped sooner.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

/// Failed dials after which an address is dropped, whatever its time to live.
pub const MAX_FAILURES: u32 = 3;
/// Addresses kept per peer; the ones expiring first make room.
const MAX_PER_PEER: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Entry {
    expires: Instant,
    failures: u32,
}

#[derive(Debug, Default)]
pub struct AddressBook {
    peers: HashMap<PeerId, HashMap<Multiaddr, Entry>>,
}

impl AddressBook {
    /// Adds an address, or renews it (a renewal also forgives earlier failures).
    pub fn add(&mut self, peer: PeerId, addr: Multiaddr, ttl: Duration, now: Instant) {
        let addr = without_p2p(addr);
        let addrs = self.peers.entry(peer).or_default();
        addrs.insert(
            addr,
            Entry {
                expires: now + ttl,
                failures: 0,
            },
        );
        while addrs.len() > MAX_PER_PEER {
            let soonest = addrs
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(a, _)| a.clone())
                .expect("not empty");
            addrs.remove(&soonest);
        }
    }

    /// A peer's live addresses, those that failed least first.
    pub fn addrs(&self, peer: &PeerId, now: Instant) -> Vec<Multiaddr> {
        let mut live: Vec<(&Multiaddr, &Entry)> = self
            .peers
            .get(peer)
            .into_iter()
            .flatten()
            .filter(|(_, e)| e.expires > now)
            .collect();
        live.sort_by_key(|(_, e)| e.failures);
        live.into_iter().map(|(a, _)| a.clone()).collect()
    }

    /// A dial to `addr` failed; after [`MAX_FAILURES`] the address is dropped.
    pub fn failed(&mut self, peer: &PeerId, addr: &Multiaddr) {
        let addr = without_p2p(addr.clone());
        if let Some(addrs) = self.peers.get_mut(peer) {
            if let Some(entry) = addrs.get_mut(&addr) {
                entry.failures += 1;
                if entry.failures >= MAX_FAILURES {
                    addrs.remove(&addr);
                }
            }
            if addrs.is_empty() {
                self.peers.remove(peer);
            }
        }
    }

    /// A connection through `addr` succeeded: its failures are forgiven.
    pub fn succeeded(&mut self, peer: &PeerId, addr: &Multiaddr) {
        let addr = without_p2p(addr.clone());
        if let Some(entry) = self.peers.get_mut(peer).and_then(|a| a.get_mut(&addr)) {
            entry.failures = 0;
        }
    }

    /// Forgets expired addresses.
    pub fn prune(&mut self, now: Instant) {
        self.peers.retain(|_, addrs| {
            addrs.retain(|_, e| e.expires > now);
            !addrs.is_empty()
        });
    }

    pub fn len(&self) -> usize {
        self.peers.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// The transport part of an address (the peer is the book's key).
fn without_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(
        addr.iter().last(),
        Some(libp2p::multiaddr::Protocol::P2p(_))
    ) {
        addr.pop();
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn addresses_expire_unless_renewed() {
        let (mut book, peer, t0) = (AddressBook::default(), PeerId::random(), Instant::now());
        let ttl = Duration::from_secs(60);
        book.add(peer, addr(1), ttl, t0);
        book.add(peer, addr(2), ttl, t0);
        let later = t0 + Duration::from_secs(40);
        book.add(peer, addr(2), ttl, later);
        let after_ttl = t0 + Duration::from_secs(61);
        assert_eq!(book.addrs(&peer, after_ttl), vec![addr(2)]);
        book.prune(after_ttl);
        assert_eq!(book.len(), 1);
        book.prune(later + Duration::from_secs(61));
        assert!(book.is_empty());
    }

    #[test]
    fn unreachable_addresses_are_dropped_and_p2p_suffixes_ignored() {
        let (mut book, peer, now) = (AddressBook::default(), PeerId::random(), Instant::now());
        let ttl = Duration::from_secs(3600);
        book.add(peer, addr(1).with_p2p(peer).unwrap(), ttl, now);
        book.add(peer, addr(2), ttl, now);
        book.failed(&peer, &addr(1));
        assert_eq!(book.addrs(&peer, now), vec![addr(2), addr(1)]);
        book.succeeded(&peer, &addr(1));
        for _ in 0..MAX_FAILURES {
            book.failed(&peer, &addr(2));
        }
        assert_eq!(book.addrs(&peer, now), vec![addr(1)]);
        for port in 10..40 {
            book.add(
                peer,
                addr(port),
                ttl + Duration::from_secs(port.into()),
                now,
            );
        }
        assert_eq!(book.addrs(&peer, now).len(), MAX_PER_PEER);
    }
}
