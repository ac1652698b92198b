//! The Threads protocol without I/O: identities, keys, the three encryption layers, the four
//! DAG-CBOR nodes of a record, signing, verification and the log-chain rule.
//!
//! Byte formats follow go-threads so its records verify here; the signature rule is stronger
//! (see `docs/protocol.md`). Nothing here touches the network, the disk or an async runtime, so
//! the crate also builds for the browser.
//!
//! | module | what it holds |
//! |---|---|
//! | [`id`] | [`ThreadId`] (version, variant, random part) and [`LogId`] (a libp2p peer ID) |
//! | [`keys`] | follow/read/content keys, [`ThreadKey`], Ed25519 [`Keypair`] and [`PublicKey`] |
//! | [`crypto`] | AES-256-GCM sealing and NaCl-box sealing to an identity |
//! | [`addr`] | [`ThreadAddr`]: a peer multiaddr plus `/thread/<id>` |
//! | [`auth`] | requests signed by a log key; pull tokens for private threads |
//! | [`record`] | building, verifying ([`UnverifiedRecord`] → [`VerifiedRecord`]) and reading records; [`Head`] |
//!
//! # Example
//!
//! A writer builds a record; a follower holding only the follow key verifies it and advances the
//! log's head; a reader opens it with the read key.
//!
//! ```
//! use rand_core::OsRng;
//! use threads_core::{Head, Keypair, LogId, SignaturePolicy, ThreadKey, VerifiedRecord};
//!
//! let keys = ThreadKey::random(&mut OsRng);
//! let log = Keypair::generate(&mut OsRng);
//! let author = Keypair::generate(&mut OsRng).public();
//! let body = serde_ipld_dagcbor::to_vec(&"hello").unwrap();
//!
//! let record = VerifiedRecord::create(&body, &keys, &log, &author, None, &mut OsRng).unwrap();
//!
//! // The follower: follow key only.
//! let follow = keys.follow_only();
//! let log_id = LogId::from(log.public());
//! let checked = record.into_blocks().verify(follow.service(), &log_id, SignaturePolicy::CurrentOnly).unwrap();
//! let head = Head::advance(None, &checked).unwrap();
//! assert_eq!(head.counter, 1);
//!
//! // The reader: read key.
//! assert_eq!(checked.read(keys.read().unwrap()).unwrap(), body);
//! ```

pub mod addr;
pub mod auth;
mod batch;
mod cbor;
pub mod crypto;
pub mod id;
pub mod keys;
pub mod record;

pub use addr::{AddrError, ThreadAddr};
pub use cbor::{DecodeError, Writer as CborWriter};
pub use cid::Cid;
pub use id::{IdError, LogId, ThreadId, Variant};
pub use keys::{ContentKey, KeyError, Keypair, PublicKey, ReadKey, ServiceKey, ThreadKey};
pub use record::{
    cid_of, parse_cid, resign_legacy, verify_batch, verify_chained, ChainError, Head, Link, Node,
    RecordError, SignaturePolicy, SignatureRule, UnverifiedRecord, VerifiedRecord,
};
