//! Actions, the envelope that carries a dispatch's actions in a record's encrypted body, and
//! the position that puts every event of a thread in one order.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// What an application asks of one store: `{"store": "kv", "type": "put", "payload": {...}}`.
/// Each store's module has the functions that build its actions (the action creators).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub store: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub payload: Value,
}

impl Action {
    pub fn new(store: &str, kind: &str, payload: Value) -> Self {
        Self {
            store: store.to_owned(),
            kind: kind.to_owned(),
            payload,
        }
    }

    /// The same action addressed to a store registered under another name.
    pub fn to(mut self, store: &str) -> Self {
        self.store = store.to_owned();
        self
    }
}

/// Marks a record body as a database event; the value is the envelope's version.
const TAG: &str = "threads-db";
const VERSION: u32 = 1;

/// The body of a database event: the actions of one dispatch, in order, with the writer's
/// logical clock. It travels encrypted like any event body, so followers learn nothing of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(rename = "threads-db")]
    pub version: u32,
    /// One more than the highest clock the writer had applied: an event sorts after every
    /// event its writer had seen.
    pub clock: u64,
    /// The writer's wall clock in milliseconds: shown, never used to order.
    pub time: i64,
    pub actions: Vec<Action>,
}

impl Envelope {
    pub fn new(clock: u64, time: i64, actions: Vec<Action>) -> Self {
        Self {
            version: VERSION,
            clock,
            time,
            actions,
        }
    }

    /// The envelope in an event body, or `None` when the body is not a database event (a
    /// thread may carry other events too).
    pub fn from_body(body: Value) -> Option<Self> {
        body.get(TAG)?;
        let envelope: Self = serde_json::from_value(body).ok()?;
        (envelope.version == VERSION).then_some(envelope)
    }

    /// [`Envelope::from_body`] for a body still in its DAG-CBOR bytes: decoded straight into
    /// the envelope, without a JSON tree of the whole body first.
    pub fn from_cbor(body: &[u8]) -> Option<Self> {
        let envelope: Self = serde_ipld_dagcbor::from_slice(body).ok()?;
        (envelope.version == VERSION).then_some(envelope)
    }

    pub fn to_body(&self) -> Value {
        serde_json::to_value(self).expect("an envelope is plain JSON")
    }
}

/// Where an event sits in the thread's one order: by logical clock, ties broken by log key,
/// then by the record's counter in its log. Every replica computes it from the records alone.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub clock: u64,
    /// The log's Ed25519 public key bytes (what `LogId`s are ordered by).
    pub log: [u8; 32],
    pub counter: u64,
}

/// Bytes of a position key.
pub const KEY_LEN: usize = 48;

impl Position {
    /// Big-endian fields, so keys compare as bytes exactly as positions compare.
    pub fn key(&self) -> [u8; KEY_LEN] {
        let mut key = [0u8; KEY_LEN];
        key[..8].copy_from_slice(&self.clock.to_be_bytes());
        key[8..40].copy_from_slice(&self.log);
        key[40..].copy_from_slice(&self.counter.to_be_bytes());
        key
    }

    pub fn from_key(key: &[u8]) -> Result<Self, Error> {
        let key: &[u8; KEY_LEN] = key
            .try_into()
            .map_err(|_| Error::Corrupt(format!("a position key of {} bytes", key.len())))?;
        let mut log = [0u8; 32];
        log.copy_from_slice(&key[8..40]);
        Ok(Self {
            clock: u64::from_be_bytes(key[..8].try_into().expect("8 bytes")),
            log,
            counter: u64::from_be_bytes(key[40..].try_into().expect("8 bytes")),
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log: String = self.log[..4].iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "{}@{log}…/{}", self.clock, self.counter)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({self})")
    }
}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One event as the dispatcher applies it: its place in the order and its actions.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub pos: Position,
    pub actions: Vec<Action>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_order_like_positions() {
        let a = Position {
            clock: 1,
            log: [9; 32],
            counter: 7,
        };
        let b = Position {
            clock: 2,
            log: [0; 32],
            counter: 1,
        };
        let c = Position {
            clock: 2,
            log: [0; 32],
            counter: 256,
        };
        assert!(a < b && b < c);
        assert!(a.key() < b.key() && b.key() < c.key());
        assert_eq!(Position::from_key(&c.key()).unwrap(), c);
        assert!(Position::from_key(&[0; 3]).is_err());
    }

    #[test]
    fn only_tagged_bodies_are_events() {
        let envelope = Envelope::new(3, 1000, vec![Action::new("kv", "put", json!({"key": "a"}))]);
        let body = envelope.to_body();
        assert_eq!(
            body,
            json!({"threads-db": 1, "clock": 3, "time": 1000,
                   "actions": [{"store": "kv", "type": "put", "payload": {"key": "a"}}]})
        );
        assert_eq!(Envelope::from_body(body.clone()), Some(envelope.clone()));
        let cbor = |v: &Value| serde_ipld_dagcbor::to_vec(v).unwrap();
        assert_eq!(Envelope::from_cbor(&cbor(&body)), Some(envelope));
        assert_eq!(Envelope::from_cbor(&cbor(&json!({"hello": "world"}))), None);
        assert_eq!(
            Envelope::from_cbor(&cbor(
                &json!({"threads-db": 2, "clock": 1, "time": 0, "actions": []})
            )),
            None
        );
        assert_eq!(Envelope::from_cbor(b"\xff"), None);
        assert_eq!(Envelope::from_body(json!({"hello": "world"})), None);
        assert_eq!(
            Envelope::from_body(json!({"threads-db": 2, "clock": 1, "time": 0, "actions": []})),
            None
        );
    }
}
