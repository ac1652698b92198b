//! Records: the four DAG-CBOR nodes of one log entry, how they are built, verified and read.
//!
//! ```text
//! record node = bytes( AES(follow key, {sig, prev?, block, pubKey}) )   signed by the log key
//! event node  = {body: link, header: link}                              plaintext
//! header node = bytes( AES(read key, {key: content key}) )
//! body node   = bytes( AES(content key, application DAG-CBOR) )
//! ```
//!
//! Trust is carried by types: bytes from the wire are an [`UnverifiedRecord`]; [`UnverifiedRecord::verify`]
//! (follow key only, what a follower does) checks canonical form, every link and the signature
//! and yields a [`VerifiedRecord`]. Chain continuity against a log's head is [`Head::advance`].
//!
//! The signature rule is this project's, closing go-threads' gaps (see `docs/protocol.md`):
//! the log key signs `DOMAIN || event CID || (00 | 01 || prev CID) || author key`. Records signed
//! under go-threads' rule verify only when the caller passes [`SignaturePolicy::AllowLegacy`].

use std::collections::HashMap;
use std::fmt;

use cid::Cid;
use ed25519_dalek::Signature;
use multihash::Multihash;
use rand_chacha::ChaCha20Rng;
use rand_core::{CryptoRngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::batch::SignatureBatch;
use crate::cbor::{self, DecodeError, Reader, Writer};
use crate::crypto::{self, CryptoError, AES_OVERHEAD};
use crate::id::LogId;
use crate::keys::{ContentKey, Keypair, PublicKey, ReadKey, ServiceKey, ThreadKey};

/// Multicodec of DAG-CBOR, the codec of every node.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec of sha2-256, the hash of every node.
pub const SHA2_256: u64 = 0x12;

/// Largest accepted record node: the envelope is about 230 bytes with an Ed25519 author.
pub const MAX_RECORD_NODE: usize = 4 * 1024;
/// Largest accepted event node (two links: 89 bytes in practice).
pub const MAX_EVENT_NODE: usize = 512;
/// Largest accepted header node (one 32-byte key: 67 bytes in practice).
pub const MAX_HEADER_NODE: usize = 512;
/// Largest accepted body node. Servers may set a lower limit of their own.
pub const MAX_BODY_NODE: usize = 8 * 1024 * 1024;

/// Prefix of every signed message under the current rule. No CID (`01 ..`) or marshalled key
/// (`08 ..`) starts with `/`, so no current message is also a go-threads message.
pub const SIGNATURE_DOMAIN: &[u8] = b"/threads/record-signature/1\n";

/// One of the four nodes of a record, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Node {
    Record,
    Event,
    Header,
    Body,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Node::Record => "record",
            Node::Event => "event",
            Node::Header => "header",
            Node::Body => "body",
        })
    }
}

/// A link between nodes that verification checks, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// The envelope's `block` must be the event node's CID.
    Block,
    /// The event's `header` must be the header node's CID.
    Header,
    /// The event's `body` must be the body node's CID.
    Body,
}

/// Which signature rule a verified record satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureRule {
    /// This project's rule: event CID, prev CID and author key are all signed.
    Current,
    /// go-threads' rule: `event || prev`, or the author key alone for a first record.
    Legacy,
}

/// Whether records signed under go-threads' weaker rule are acceptable to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignaturePolicy {
    #[default]
    CurrentOnly,
    AllowLegacy,
}

/// Why a record was refused. Every variant is a distinct tampering or malformation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    #[error("{node} node is {len} bytes; the limit is {limit}")]
    TooLarge {
        node: Node,
        len: usize,
        limit: usize,
    },
    #[error("{node} node is not canonical DAG-CBOR: {error}")]
    Malformed { node: Node, error: DecodeError },
    #[error("{node} node cannot be opened: {error}")]
    Decrypt { node: Node, error: CryptoError },
    #[error("the {0:?} link does not match the node it should name")]
    BrokenLink(Link),
    #[error("signature is not {0} bytes long")]
    SignatureLength(usize),
    #[error("signature does not verify under the log's key")]
    BadSignature,
    #[error("signature verifies only under go-threads' legacy rule, which is not allowed here")]
    LegacySignature,
    #[error("writing needs the thread's read key")]
    NoReadKey,
}

impl RecordError {
    /// A stable, machine-readable name for the error, used by every API.
    pub fn code(&self) -> &'static str {
        match self {
            RecordError::TooLarge { .. } => "too_large",
            RecordError::Malformed { error, .. } => match error {
                DecodeError::NotCanonical
                | DecodeError::KeyOrder(_)
                | DecodeError::DuplicateKey(_)
                | DecodeError::Indefinite => "not_canonical",
                _ => "malformed",
            },
            RecordError::Decrypt { .. } => "decrypt_failed",
            RecordError::BrokenLink(_) => "bad_link",
            RecordError::SignatureLength(_) | RecordError::BadSignature => "bad_signature",
            RecordError::LegacySignature => "legacy_signature",
            RecordError::NoReadKey => "no_read_key",
        }
    }
}

/// A log's head: its newest record and how many records the log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Head {
    pub cid: Cid,
    pub counter: u64,
}

/// Why a verified record does not continue a log's head.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainError {
    #[error("record continues {prev}, which this log does not have yet")]
    Gap { prev: Cid },
    #[error("record has no prev but the log already has records (head {head})")]
    MissingPrev { head: Cid },
    /// The caller knows its head; the error names only what the record claims.
    #[error("record continues {prev}, which is not the log's head")]
    WrongPrev { prev: Cid },
}

impl Head {
    /// The head after appending `record` to a log whose head is `current` (`None`: empty log).
    pub fn advance(current: Option<&Head>, record: &VerifiedRecord) -> Result<Head, ChainError> {
        let counter = match (current, record.prev) {
            (None, None) => 1,
            (None, Some(prev)) => return Err(ChainError::Gap { prev }),
            (Some(head), None) => return Err(ChainError::MissingPrev { head: head.cid }),
            (Some(head), Some(prev)) if prev == head.cid => head.counter + 1,
            (Some(_), Some(prev)) => return Err(ChainError::WrongPrev { prev }),
        };
        Ok(Head {
            cid: record.cid,
            counter,
        })
    }
}

/// Parses a CID's text exactly: bytes after a valid CID are refused, as go-cid and
/// js-multiformats refuse them (the `cid` crate reads a CID from the front and stops).
pub fn parse_cid(text: &str) -> Result<Cid, cid::Error> {
    let cid = Cid::try_from(text)?;
    if cid.version() == cid::Version::V1 {
        let (_, bytes) = multibase::decode(text).map_err(|_| cid::Error::ParsingError)?;
        if bytes.len() != cid.encoded_len() {
            return Err(cid::Error::ParsingError);
        }
    }
    Ok(cid)
}

/// The CIDv1 (dag-cbor, sha2-256) of a node's exact bytes.
pub fn cid_of(bytes: &[u8]) -> Cid {
    let digest = Sha256::digest(bytes);
    Cid::new_v1(
        DAG_CBOR,
        Multihash::wrap(SHA2_256, &digest).expect("32 bytes fit in a multihash"),
    )
}

/// The raw bytes of a record's four nodes, as they arrive from a peer. Nothing is checked yet.
#[derive(Clone, PartialEq, Eq)]
pub struct UnverifiedRecord {
    pub record: Vec<u8>,
    pub event: Vec<u8>,
    pub header: Vec<u8>,
    pub body: Vec<u8>,
}

impl fmt::Debug for UnverifiedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnverifiedRecord")
            .field("record", &self.record.len())
            .field("event", &self.event.len())
            .field("header", &self.header.len())
            .field("body", &self.body.len())
            .finish()
    }
}

/// The decrypted envelope of a record node. The signature covers the other fields.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Envelope {
    sig: Vec<u8>,
    prev: Option<Cid>,
    block: Cid,
    /// The marshalled public key of the record's author identity.
    author: Vec<u8>,
}

const ENVELOPE_KEYS: [&str; 4] = ["sig", "prev", "block", "pubKey"];
const EVENT_KEYS: [&str; 2] = ["body", "header"];
const HEADER_KEYS: [&str; 1] = ["key"];

impl Envelope {
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256);
        w.map(3 + u64::from(self.prev.is_some()));
        w.key("sig");
        w.bytes(&self.sig);
        if let Some(prev) = &self.prev {
            w.key("prev");
            w.link(prev);
        }
        w.key("block");
        w.link(&self.block);
        w.key("pubKey");
        w.bytes(&self.author);
        w.0
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let (mut sig, mut prev, mut block, mut author) = (None, None, None, None);
        cbor::read_map(&mut r, ENVELOPE_KEYS, |i, r| {
            match i {
                0 => sig = Some(r.bytes()?.to_vec()),
                1 => prev = Some(r.link()?),
                2 => block = Some(r.link()?),
                _ => author = Some(r.bytes()?.to_vec()),
            }
            Ok(())
        })?;
        r.finish()?;
        Ok(Self {
            sig: sig.ok_or(DecodeError::MissingKey("sig"))?,
            prev,
            block: block.ok_or(DecodeError::MissingKey("block"))?,
            author: author.ok_or(DecodeError::MissingKey("pubKey"))?,
        })
    }

    /// The message signed under the current rule.
    fn current_message(&self) -> Vec<u8> {
        signed_message(&self.block, self.prev.as_ref(), &self.author)
    }

    /// The message go-threads signs: `block || prev`, or the author key for a first record.
    fn legacy_message(&self) -> Vec<u8> {
        match &self.prev {
            Some(prev) => [self.block.to_bytes(), prev.to_bytes()].concat(),
            None => self.author.clone(),
        }
    }
}

/// The record signed again as go-threads and js-threads sign (`block || prev`, or the author
/// key alone for a log's first record), sealed anew: what those implementations write, for
/// checking that the legacy rule is accepted only where it is allowed. The record node (and
/// so the record's CID) changes; its event, header and body do not.
pub fn resign_legacy(
    blocks: &UnverifiedRecord,
    service: &ServiceKey,
    log: &Keypair,
    rng: &mut impl CryptoRngCore,
) -> Result<UnverifiedRecord, RecordError> {
    let opened = blocks.clone().open(service)?;
    let mut envelope = opened.envelope;
    envelope.sig = log.sign(&envelope.legacy_message()).to_vec();
    Ok(UnverifiedRecord {
        record: encode_bytes_node(&crypto::seal(service.as_bytes(), &envelope.encode(), rng)),
        ..blocks.clone()
    })
}

/// `DOMAIN || event CID || (00 | 01 || prev CID) || author key`: injective, since CIDs delimit
/// themselves and the author key comes last.
fn signed_message(block: &Cid, prev: Option<&Cid>, author: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_DOMAIN.len() + 2 * 36 + 1 + author.len());
    m.extend_from_slice(SIGNATURE_DOMAIN);
    block.write_bytes(&mut m).expect("Vec write");
    match prev {
        None => m.push(0),
        Some(prev) => {
            m.push(1);
            prev.write_bytes(&mut m).expect("Vec write");
        }
    }
    m.extend_from_slice(author);
    m
}

/// A byte-string node (record, header and body): returns the ciphertext inside.
fn decode_bytes_node(node: Node, bytes: &[u8], limit: usize) -> Result<&[u8], RecordError> {
    check_size(node, bytes, limit)?;
    let mut r = Reader::new(bytes);
    let inner = r
        .bytes()
        .map_err(|error| RecordError::Malformed { node, error })?;
    r.finish()
        .map_err(|error| RecordError::Malformed { node, error })?;
    Ok(inner)
}

fn encode_bytes_node(ciphertext: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(cbor::bytes_head_len(ciphertext.len()) + ciphertext.len());
    w.bytes(ciphertext);
    w.0
}

fn check_size(node: Node, bytes: &[u8], limit: usize) -> Result<(), RecordError> {
    if bytes.len() > limit {
        return Err(RecordError::TooLarge {
            node,
            len: bytes.len(),
            limit,
        });
    }
    Ok(())
}

/// The event node: links to the header and the body.
fn decode_event(bytes: &[u8]) -> Result<(Cid, Cid), RecordError> {
    check_size(Node::Event, bytes, MAX_EVENT_NODE)?;
    let malformed = |error| RecordError::Malformed {
        node: Node::Event,
        error,
    };
    let mut r = Reader::new(bytes);
    let (mut body, mut header) = (None, None);
    cbor::read_map(&mut r, EVENT_KEYS, |i, r| {
        let link = r.link()?;
        if i == 0 {
            body = Some(link);
        } else {
            header = Some(link);
        }
        Ok(())
    })
    .map_err(malformed)?;
    r.finish().map_err(malformed)?;
    Ok((
        header.ok_or(malformed(DecodeError::MissingKey("header")))?,
        body.ok_or(malformed(DecodeError::MissingKey("body")))?,
    ))
}

fn encode_event(header: &Cid, body: &Cid) -> Vec<u8> {
    let mut w = Writer::with_capacity(96);
    w.map(2);
    w.key("body");
    w.link(body);
    w.key("header");
    w.link(header);
    w.0
}

/// Plaintext of the header node: `{key: content key}`.
fn decode_header_plaintext(bytes: &[u8]) -> Result<ContentKey, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut key = None;
    cbor::read_map(&mut r, HEADER_KEYS, |_, r| {
        key = Some(r.bytes()?);
        Ok(())
    })?;
    r.finish()?;
    let key = key.ok_or(DecodeError::MissingKey("key"))?;
    ContentKey::from_slice(key).map_err(|_| DecodeError::UnexpectedType {
        expected: "a 32-byte content key",
        found: 2,
    })
}

fn encode_header_plaintext(key: &ContentKey) -> zeroize::Zeroizing<Vec<u8>> {
    let mut w = Writer::with_capacity(40);
    w.map(1);
    w.key("key");
    w.bytes(key.as_bytes());
    zeroize::Zeroizing::new(w.0)
}

impl UnverifiedRecord {
    /// Bytes of the four nodes together: what size limits, quotas and batches count.
    pub fn byte_len(&self) -> usize {
        self.record.len() + self.event.len() + self.header.len() + self.body.len()
    }

    /// Opens the header with the read key, revealing the event's content key. Checks nothing
    /// else: see [`UnverifiedRecord::read_content`].
    pub fn content_key(&self, read: &ReadKey) -> Result<ContentKey, RecordError> {
        let sealed = decode_bytes_node(Node::Header, &self.header, MAX_HEADER_NODE)?;
        let plain = crypto::open(read.as_bytes(), sealed)
            .map(zeroize::Zeroizing::new)
            .map_err(|error| RecordError::Decrypt {
                node: Node::Header,
                error,
            })?;
        decode_header_plaintext(&plain).map_err(|error| RecordError::Malformed {
            node: Node::Header,
            error,
        })
    }

    /// Opens the body with the read key, *without* checking the signature or the links: for
    /// records verified when they were stored (a reader's own local store), so that reading
    /// does not pay for verification twice. AES-GCM still refuses altered header or body bytes.
    pub fn read_content(&self, read: &ReadKey) -> Result<Vec<u8>, RecordError> {
        let key = self.content_key(read)?;
        let sealed = decode_bytes_node(Node::Body, &self.body, MAX_BODY_NODE)?;
        crypto::open(key.as_bytes(), sealed).map_err(|error| RecordError::Decrypt {
            node: Node::Body,
            error,
        })
    }
}

/// A record whose envelope is open and whose links hold; the signature is not yet checked.
struct Opened {
    blocks: UnverifiedRecord,
    cid: Cid,
    envelope: Envelope,
    /// The event's header and body links, checked against the nodes' bytes.
    content: (Cid, Cid),
}

impl UnverifiedRecord {
    /// Verifies everything a follower can with the follow key: canonical nodes, the `block`,
    /// `header` and `body` links, and the log key's signature. Chain continuity is separate
    /// ([`Head::advance`]), since it depends on what the caller has stored.
    pub fn verify(
        self,
        service: &ServiceKey,
        log: &LogId,
        policy: SignaturePolicy,
    ) -> Result<VerifiedRecord, RecordError> {
        self.open(service)?.check_signature(log, policy)
    }

    fn open(self, service: &ServiceKey) -> Result<Opened, RecordError> {
        let sealed = decode_bytes_node(Node::Record, &self.record, MAX_RECORD_NODE)?;
        let (header_link, body_link) = decode_event(&self.event)?;
        decode_bytes_node(Node::Header, &self.header, MAX_HEADER_NODE)?;
        decode_bytes_node(Node::Body, &self.body, MAX_BODY_NODE)?;

        let plaintext =
            crypto::open(service.as_bytes(), sealed).map_err(|error| RecordError::Decrypt {
                node: Node::Record,
                error,
            })?;
        let envelope = Envelope::decode(&plaintext).map_err(|error| RecordError::Malformed {
            node: Node::Record,
            error,
        })?;
        if envelope.block != cid_of(&self.event) {
            return Err(RecordError::BrokenLink(Link::Block));
        }
        if header_link != cid_of(&self.header) {
            return Err(RecordError::BrokenLink(Link::Header));
        }
        if body_link != cid_of(&self.body) {
            return Err(RecordError::BrokenLink(Link::Body));
        }
        Ok(Opened {
            cid: cid_of(&self.record),
            blocks: self,
            envelope,
            content: (header_link, body_link),
        })
    }
}

impl Opened {
    fn signature(&self) -> Result<Signature, RecordError> {
        let bytes: [u8; 64] = self.envelope.sig[..]
            .try_into()
            .map_err(|_| RecordError::SignatureLength(self.envelope.sig.len()))?;
        Ok(Signature::from_bytes(&bytes))
    }

    fn check_signature(
        self,
        log: &LogId,
        policy: SignaturePolicy,
    ) -> Result<VerifiedRecord, RecordError> {
        let sig = self.signature()?.to_bytes();
        let key = log.public_key();
        if key.verify(&self.envelope.current_message(), &sig) {
            return Ok(self.verified(SignatureRule::Current));
        }
        if key.verify(&self.envelope.legacy_message(), &sig) {
            return match policy {
                SignaturePolicy::AllowLegacy => Ok(self.verified(SignatureRule::Legacy)),
                SignaturePolicy::CurrentOnly => Err(RecordError::LegacySignature),
            };
        }
        Err(RecordError::BadSignature)
    }

    fn verified(self, rule: SignatureRule) -> VerifiedRecord {
        VerifiedRecord {
            cid: self.cid,
            prev: self.envelope.prev,
            block: self.envelope.block,
            author: self.envelope.author,
            rule,
            content: self.content,
            blocks: self.blocks,
        }
    }
}

/// Verifies many records at once, as a follower does with a pushed batch.
///
/// Signatures under the current rule are checked with one Ed25519 batch verification
/// ([`crate::batch`]), in which the signatures of one log key share one term: 5,000 signatures
/// of ten keys cost about 13 µs each, against 21 µs with two terms a signature. The batch
/// equation is the cofactored one of ZIP 215. If the batch fails, each record is checked alone
/// so that every record gets its own verdict. A lone record is checked alone from the start: a
/// batch of one costs more than a single check. Results are in input order.
pub fn verify_batch<'a>(
    items: impl IntoIterator<Item = (UnverifiedRecord, &'a ServiceKey, &'a LogId)>,
    policy: SignaturePolicy,
) -> Vec<Result<VerifiedRecord, RecordError>> {
    verify_many(items, policy, false)
}

/// [`verify_batch`] for a reader of a log's records in order (a page pulled from a follower):
/// a record that a later record of the same log in the input names as its `prev` is covered
/// by that record's signature, which signs its CID, the hash of its whole record node (which
/// in turn holds its own `prev`, event link and author). So of each run of linked records
/// only the last signature is checked, and with it every record of the run is the log key's:
/// a record changed anywhere in the run no longer hashes to the link the next one signs.
/// Everything else (nodes, links, the follow key) is still checked record by record, and if
/// the batch fails each record is checked alone as [`verify_batch`] does. A covered record's
/// rule is the current one, which its coverer's holds under.
///
/// Followers check every signature ([`verify_batch`]): what they store must verify for
/// readers that check each one (go-threads, js-threads, the browser client).
pub fn verify_chained<'a>(
    items: impl IntoIterator<Item = (UnverifiedRecord, &'a ServiceKey, &'a LogId)>,
    policy: SignaturePolicy,
) -> Vec<Result<VerifiedRecord, RecordError>> {
    verify_many(items, policy, true)
}

fn verify_many<'a>(
    items: impl IntoIterator<Item = (UnverifiedRecord, &'a ServiceKey, &'a LogId)>,
    policy: SignaturePolicy,
    chained: bool,
) -> Vec<Result<VerifiedRecord, RecordError>> {
    let opened: Vec<OpenedItem> = items
        .into_iter()
        .map(|(record, service, log)| {
            let opened = record.open(service)?;
            let sig = opened.signature()?.to_bytes();
            Ok((opened, log, sig))
        })
        .collect();
    let covered = if chained {
        covered_by_successors(&opened)
    } else {
        Vec::new()
    };

    let all_current = opened.iter().flatten().nth(1).is_some() && {
        let mut batch = SignatureBatch::with_capacity(opened.len());
        for (i, item) in opened.iter().enumerate() {
            let Ok((opened, log, sig)) = item else {
                continue;
            };
            if !covered.get(i).copied().unwrap_or(false) {
                batch.queue(log.public_key(), sig, &opened.envelope.current_message());
            }
        }
        // The batch's coefficients come from a generator seeded once from the system.
        batch.verify(&mut ChaCha20Rng::from_entropy())
    };

    opened
        .into_iter()
        .map(|item| {
            let (opened, log, _) = item?;
            if all_current {
                Ok(opened.verified(SignatureRule::Current))
            } else {
                opened.check_signature(log, policy)
            }
        })
        .collect()
}

/// A record opened for a batch, with its log and signature (or why it did not open).
type OpenedItem<'a> = Result<(Opened, &'a LogId, [u8; 64]), RecordError>;

/// Per opened record, whether a record of the same log in the input names it as `prev`.
fn covered_by_successors(opened: &[OpenedItem<'_>]) -> Vec<bool> {
    let index: HashMap<(Cid, &[u8; 32]), usize> = opened
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let (opened, log, _) = item.as_ref().ok()?;
            Some(((opened.cid, log.public_key().as_bytes()), i))
        })
        .collect();
    let mut covered = vec![false; opened.len()];
    for (opened, log, _) in opened.iter().flatten() {
        let named =
            (opened.envelope.prev).and_then(|prev| index.get(&(prev, log.public_key().as_bytes())));
        if let Some(&i) = named {
            covered[i] = true;
        }
    }
    covered
}

/// A record whose four nodes, links and signature have been checked (or that was built here).
///
/// Its bytes are exactly the bytes that were verified; its CIDs are the hashes of those bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedRecord {
    cid: Cid,
    prev: Option<Cid>,
    block: Cid,
    author: Vec<u8>,
    rule: SignatureRule,
    /// Header and body CIDs, known from verification (or creation): no need to hash again.
    content: (Cid, Cid),
    blocks: UnverifiedRecord,
}

impl fmt::Debug for VerifiedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedRecord")
            .field("cid", &self.cid.to_string())
            .field("prev", &self.prev.map(|p| p.to_string()))
            .field("rule", &self.rule)
            .finish()
    }
}

impl VerifiedRecord {
    /// The record node's CID: the record's identity, and the next record's `prev`.
    pub fn cid(&self) -> Cid {
        self.cid
    }

    pub fn prev(&self) -> Option<Cid> {
        self.prev
    }

    /// The event node's CID.
    pub fn event_cid(&self) -> Cid {
        self.block
    }

    /// CIDs of the header and body nodes, in that order (from the verified event node).
    pub fn content_cids(&self) -> (Cid, Cid) {
        self.content
    }

    /// The marshalled public key of the author identity, as signed.
    pub fn author_bytes(&self) -> &[u8] {
        &self.author
    }

    /// The author identity, when it is an Ed25519 key.
    pub fn author(&self) -> Result<PublicKey, crate::keys::KeyError> {
        PublicKey::unmarshal(&self.author)
    }

    pub fn rule(&self) -> SignatureRule {
        self.rule
    }

    /// The raw node bytes, for storage and for the wire.
    pub fn blocks(&self) -> &UnverifiedRecord {
        &self.blocks
    }

    pub fn into_blocks(self) -> UnverifiedRecord {
        self.blocks
    }

    /// Opens the header with the read key, revealing the event's content key.
    pub fn content_key(&self, read: &ReadKey) -> Result<ContentKey, RecordError> {
        self.blocks.content_key(read)
    }

    /// Opens the body with the read key: the application's DAG-CBOR bytes.
    pub fn read(&self, read: &ReadKey) -> Result<Vec<u8>, RecordError> {
        self.blocks.read_content(read)
    }

    /// Builds and signs a new record.
    ///
    /// `body` is the application's DAG-CBOR; `prev` is the log's current head (`None` for the
    /// first record); `author` is the identity writing through this log.
    pub fn create(
        body: &[u8],
        keys: &ThreadKey,
        log: &Keypair,
        author: &PublicKey,
        prev: Option<Cid>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, RecordError> {
        let read = keys.read().ok_or(RecordError::NoReadKey)?;
        let content = ContentKey::random(rng);
        let body = encode_bytes_node(&crypto::seal(content.as_bytes(), body, rng));
        let header_plain = encode_header_plaintext(&content);
        let header = encode_bytes_node(&crypto::seal(read.as_bytes(), &header_plain, rng));
        let content = (cid_of(&header), cid_of(&body));
        let event = encode_event(&content.0, &content.1);
        let block = cid_of(&event);
        let author = author.marshal().to_vec();
        let sig = log
            .sign(&signed_message(&block, prev.as_ref(), &author))
            .to_vec();
        let envelope = Envelope {
            sig,
            prev,
            block,
            author,
        };
        let record = encode_bytes_node(&crypto::seal(
            keys.service().as_bytes(),
            &envelope.encode(),
            rng,
        ));
        if record.len() > MAX_RECORD_NODE || body.len() > MAX_BODY_NODE {
            let (node, len, limit) = if body.len() > MAX_BODY_NODE {
                (Node::Body, body.len(), MAX_BODY_NODE)
            } else {
                (Node::Record, record.len(), MAX_RECORD_NODE)
            };
            return Err(RecordError::TooLarge { node, len, limit });
        }
        Ok(Self {
            cid: cid_of(&record),
            prev: envelope.prev,
            block,
            author: envelope.author,
            rule: SignatureRule::Current,
            content,
            blocks: UnverifiedRecord {
                record,
                event,
                header,
                body,
            },
        })
    }
}

/// Size of a record's body node for a body of `len` plaintext bytes.
pub fn body_node_len(len: usize) -> usize {
    let sealed = len + AES_OVERHEAD;
    cbor::bytes_head_len(sealed) + sealed
}

#[cfg(test)]
mod tests;
