//! Every way a hostile peer can alter a record, and the precise error each one gets.

use rand_core::OsRng;

use super::*;
use crate::cbor::Writer;

mod vectors;

struct Log {
    keys: ThreadKey,
    pair: Keypair,
    id: LogId,
    author: PublicKey,
}

impl Log {
    fn new() -> Self {
        let pair = Keypair::generate(&mut OsRng);
        Self {
            keys: ThreadKey::random(&mut OsRng),
            id: LogId::from(pair.public()),
            pair,
            author: Keypair::generate(&mut OsRng).public(),
        }
    }

    fn write(&self, body: &[u8], prev: Option<Cid>) -> VerifiedRecord {
        VerifiedRecord::create(body, &self.keys, &self.pair, &self.author, prev, &mut OsRng)
            .unwrap()
    }

    fn verify(&self, blocks: UnverifiedRecord) -> Result<VerifiedRecord, RecordError> {
        blocks.verify(self.keys.service(), &self.id, SignaturePolicy::CurrentOnly)
    }

    fn verify_legacy(&self, blocks: UnverifiedRecord) -> Result<VerifiedRecord, RecordError> {
        blocks.verify(self.keys.service(), &self.id, SignaturePolicy::AllowLegacy)
    }
}

fn body(text: &str) -> Vec<u8> {
    serde_ipld_dagcbor::to_vec(&text).unwrap()
}

fn malformed(node: Node, error: DecodeError) -> RecordError {
    RecordError::Malformed { node, error }
}

#[test]
fn write_verify_read() {
    let log = Log::new();
    let first = log.write(&body("one"), None);
    let second = log.write(&body("two"), Some(first.cid()));

    let a = log.verify(first.blocks().clone()).unwrap();
    let b = log.verify(second.blocks().clone()).unwrap();
    assert_eq!(a, first);
    assert_eq!(b.rule(), SignatureRule::Current);
    assert_eq!(b.prev(), Some(a.cid()));
    assert_eq!(b.author().unwrap(), log.author);
    assert_eq!(b.read(log.keys.read().unwrap()).unwrap(), body("two"));

    let head = Head::advance(None, &a).unwrap();
    let head = Head::advance(Some(&head), &b).unwrap();
    assert_eq!(
        head,
        Head {
            cid: b.cid(),
            counter: 2
        }
    );
}

#[test]
fn chain_errors() {
    let log = Log::new();
    let first = log.write(&body("one"), None);
    let second = log.write(&body("two"), Some(first.cid()));
    let third = log.write(&body("three"), Some(second.cid()));
    let head1 = Head::advance(None, &first).unwrap();

    assert_eq!(
        Head::advance(None, &second),
        Err(ChainError::Gap { prev: first.cid() })
    );
    assert_eq!(
        Head::advance(Some(&head1), &third),
        Err(ChainError::WrongPrev { prev: second.cid() })
    );
    let other_first = log.write(&body("fork"), None);
    assert_eq!(
        Head::advance(Some(&head1), &other_first),
        Err(ChainError::MissingPrev { head: first.cid() })
    );
}

#[test]
fn a_flipped_bit_anywhere_is_refused_with_the_right_node() {
    let log = Log::new();
    let first = log.write(&body("one"), None);
    let record = log.write(&body("a body of some length"), Some(first.cid()));
    let blocks = record.blocks();

    type Field = fn(&mut UnverifiedRecord) -> &mut Vec<u8>;
    let fields: [(Node, Field); 4] = [
        (Node::Record, |r| &mut r.record),
        (Node::Event, |r| &mut r.event),
        (Node::Header, |r| &mut r.header),
        (Node::Body, |r| &mut r.body),
    ];
    for (node, field) in fields {
        let len = field(&mut blocks.clone()).len();
        for i in 0..len {
            let mut tampered = blocks.clone();
            field(&mut tampered)[i] ^= 1 << (i % 8);
            let err = log.verify(tampered).unwrap_err();
            let expected_node = match &err {
                RecordError::Malformed { node, .. } | RecordError::Decrypt { node, .. } => *node,
                RecordError::BrokenLink(Link::Block) => Node::Event,
                RecordError::BrokenLink(Link::Header) => Node::Header,
                RecordError::BrokenLink(Link::Body) => Node::Body,
                RecordError::TooLarge { node, .. } => *node,
                other => panic!("byte {i} of {node}: unexpected {other:?}"),
            };
            assert_eq!(expected_node, node, "byte {i} of {node}: {err:?}");
        }
    }
}

#[test]
fn swapped_nodes_break_their_links() {
    let log = Log::new();
    let a = log.write(&body("a"), None);
    let b = log.write(&body("b"), Some(a.cid()));
    let mut blocks = b.blocks().clone();

    blocks.body = a.blocks().body.clone();
    assert_eq!(
        log.verify(blocks.clone()),
        Err(RecordError::BrokenLink(Link::Body))
    );

    blocks = b.blocks().clone();
    blocks.header = a.blocks().header.clone();
    assert_eq!(
        log.verify(blocks.clone()),
        Err(RecordError::BrokenLink(Link::Header))
    );

    blocks = b.blocks().clone();
    blocks.event = a.blocks().event.clone();
    assert_eq!(
        log.verify(blocks),
        Err(RecordError::BrokenLink(Link::Block))
    );
}

#[test]
fn a_follow_key_holder_cannot_rewrite_what_is_signed() {
    let log = Log::new();
    let a = log.write(&body("a"), None);
    let b = log.write(&body("b"), Some(a.cid()));
    let other = log.write(&body("other"), None);
    let service = log.keys.service();

    // A wrong prev, a missing prev, a different author.
    let wrong_prev = envelope_with(b.blocks(), service, |e| e.prev = Some(other.cid()));
    assert_eq!(log.verify(wrong_prev), Err(RecordError::BadSignature));
    let no_prev = envelope_with(b.blocks(), service, |e| e.prev = None);
    assert_eq!(log.verify(no_prev), Err(RecordError::BadSignature));
    let stranger = Keypair::generate(&mut OsRng).public().marshal().to_vec();
    let new_author = envelope_with(a.blocks(), service, |e| e.author = stranger);
    assert_eq!(log.verify(new_author), Err(RecordError::BadSignature));

    // Swapping the first event (go-threads' gap 1): event, header and body of another record,
    // with `block` pointing at them, under the original signature.
    let mut swapped = envelope_with(a.blocks(), service, |e| e.block = other.event_cid());
    swapped.event = other.blocks().event.clone();
    swapped.header = other.blocks().header.clone();
    swapped.body = other.blocks().body.clone();
    assert_eq!(log.verify(swapped), Err(RecordError::BadSignature));

    // A short signature.
    let short = envelope_with(a.blocks(), service, |e| e.sig.truncate(10));
    assert_eq!(log.verify(short), Err(RecordError::SignatureLength(10)));
}

#[test]
fn legacy_signatures_need_explicit_permission() {
    let log = Log::new();
    let a = log.write(&body("a"), None);
    let b = log.write(&body("b"), Some(a.cid()));
    let service = log.keys.service();

    for record in [&a, &b] {
        let legacy = envelope_with(record.blocks(), service, |e| legacy_sign(e, &log.pair));
        assert_eq!(
            log.verify(legacy.clone()),
            Err(RecordError::LegacySignature)
        );
        let ok = log.verify_legacy(legacy).unwrap();
        assert_eq!(ok.rule(), SignatureRule::Legacy);
    }

    // Under the legacy rule a first record's event could be swapped; the result says so.
    let other = log.write(&body("other"), None);
    let mut swapped = envelope_with(a.blocks(), service, |e| {
        e.block = other.event_cid();
        legacy_sign(e, &log.pair);
    });
    swapped.event = other.blocks().event.clone();
    swapped.header = other.blocks().header.clone();
    swapped.body = other.blocks().body.clone();
    assert_eq!(
        log.verify_legacy(swapped).unwrap().rule(),
        SignatureRule::Legacy
    );
}

#[test]
fn wrong_keys() {
    let log = Log::new();
    let a = log.write(&body("a"), None);
    let stranger = Log::new();

    let wrong_follow = a.blocks().clone().verify(
        stranger.keys.service(),
        &log.id,
        SignaturePolicy::CurrentOnly,
    );
    assert!(matches!(
        wrong_follow,
        Err(RecordError::Decrypt {
            node: Node::Record,
            error: CryptoError::DecryptFailed
        })
    ));
    let wrong_log = a.blocks().clone().verify(
        log.keys.service(),
        &stranger.id,
        SignaturePolicy::CurrentOnly,
    );
    assert_eq!(wrong_log, Err(RecordError::BadSignature));
    assert!(matches!(
        a.read(stranger.keys.read().unwrap()),
        Err(RecordError::Decrypt {
            node: Node::Header,
            ..
        })
    ));
    assert_eq!(
        VerifiedRecord::create(
            b"x",
            &log.keys.follow_only(),
            &log.pair,
            &log.author,
            None,
            &mut OsRng
        ),
        Err(RecordError::NoReadKey)
    );
}

/// Builds an envelope map by hand, key by key, for encodings the writer never produces.
type Entry<'a> = (&'a str, &'a dyn Fn(&mut Writer));

fn raw_envelope(entries: &[Entry]) -> Vec<u8> {
    let mut w = Writer::with_capacity(256);
    w.map(entries.len() as u64);
    for (key, value) in entries {
        w.key(key);
        value(&mut w);
    }
    w.0
}

#[test]
fn map_encodings_must_be_canonical() {
    let log = Log::new();
    let a = log.write(&body("a"), None);
    let service = log.keys.service();
    let sig = [7u8; 64];
    let block = a.event_cid();
    let author = log.author.marshal();
    let put_sig = |w: &mut Writer| w.bytes(&sig);
    let put_block = |w: &mut Writer| w.link(&block);
    let put_author = |w: &mut Writer| w.bytes(&author);

    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (
            raw_envelope(&[
                ("block", &put_block),
                ("sig", &put_sig),
                ("pubKey", &put_author),
            ]),
            DecodeError::KeyOrder("sig".into()),
        ),
        (
            raw_envelope(&[("sig", &put_sig), ("sig", &put_sig), ("block", &put_block)]),
            DecodeError::DuplicateKey("sig".into()),
        ),
        (
            raw_envelope(&[("sig", &put_sig), ("block", &put_block)]),
            DecodeError::MissingKey("pubKey"),
        ),
        (
            raw_envelope(&[
                ("sig", &put_sig),
                ("time", &|w: &mut Writer| w.uint(1)),
                ("block", &put_block),
                ("pubKey", &put_author),
            ]),
            DecodeError::UnexpectedKey("time".into()),
        ),
        (
            raw_envelope(&[
                ("sig", &put_sig),
                ("block", &|w: &mut Writer| w.bytes(b"not a link")),
                ("pubKey", &put_author),
            ]),
            DecodeError::UnexpectedType {
                expected: "a link (tag 42)",
                found: 2,
            },
        ),
    ];
    for (plain, error) in cases {
        let tampered = reseal(a.blocks(), service, |p| *p = plain);
        assert_eq!(log.verify(tampered), Err(malformed(Node::Record, error)));
    }

    // A map length written with a one-byte argument (`b8 04` instead of `a4`).
    let long_head = reseal(a.blocks(), service, |p| {
        p.splice(0..1, [0xb8, p[0] & 0x1f]);
    });
    assert_eq!(
        log.verify(long_head),
        Err(malformed(Node::Record, DecodeError::NotCanonical))
    );
    // Trailing bytes after the envelope.
    let trailing = reseal(a.blocks(), service, |p| p.push(0));
    assert_eq!(
        log.verify(trailing),
        Err(malformed(Node::Record, DecodeError::TrailingBytes(1)))
    );
}

#[test]
fn event_and_bytes_nodes_must_be_canonical() {
    let log = Log::new();
    let a = log.write(&body("a"), None);
    let (header, body_cid) = a.content_cids();

    // Event keys reordered: header before body.
    let mut w = Writer::with_capacity(96);
    w.map(2);
    w.key("header");
    w.link(&header);
    w.key("body");
    w.link(&body_cid);
    let mut blocks = a.blocks().clone();
    blocks.event = w.0;
    assert_eq!(
        log.verify(blocks),
        Err(malformed(Node::Event, DecodeError::KeyOrder("body".into())))
    );

    // A body node whose byte-string length uses a wider head than needed.
    let mut blocks = a.blocks().clone();
    let inner = &a.blocks().body[2..];
    let mut wide = vec![0x59, 0, inner.len() as u8];
    wide.extend_from_slice(inner);
    blocks.body = wide;
    assert_eq!(
        log.verify(blocks),
        Err(malformed(Node::Body, DecodeError::NotCanonical))
    );

    // Truncated and empty nodes.
    let mut blocks = a.blocks().clone();
    blocks.header.pop();
    assert_eq!(
        log.verify(blocks),
        Err(malformed(Node::Header, DecodeError::Truncated))
    );
    let mut blocks = a.blocks().clone();
    blocks.event.clear();
    assert_eq!(
        log.verify(blocks),
        Err(malformed(Node::Event, DecodeError::Truncated))
    );

    // Oversized input.
    let mut blocks = a.blocks().clone();
    blocks.body = encode_bytes_node(&vec![0; MAX_BODY_NODE]);
    assert!(matches!(
        log.verify(blocks),
        Err(RecordError::TooLarge {
            node: Node::Body,
            limit: MAX_BODY_NODE,
            ..
        })
    ));

    // A link whose CID has a non-minimal varint.
    let mut blocks = a.blocks().clone();
    let mut w = Writer::with_capacity(96);
    w.map(2);
    w.key("body");
    let mut cid = vec![0u8, 0x81, 0x00];
    cid.extend_from_slice(&body_cid.to_bytes()[1..]);
    w.0.extend_from_slice(&[0xd8, 42]);
    w.bytes(&cid);
    w.key("header");
    w.link(&header);
    blocks.event = w.0;
    assert_eq!(
        log.verify(blocks),
        Err(malformed(Node::Event, DecodeError::BadLink("not a CID")))
    );
}

#[test]
fn encodings_match_serde_ipld_dagcbor() {
    let log = Log::new();
    let a = log.write(&body("a"), None);
    let b = log.write(&body("b"), Some(a.cid()));
    let reencode = |bytes: &[u8]| {
        let value: ipld_core::ipld::Ipld = serde_ipld_dagcbor::from_slice(bytes).unwrap();
        serde_ipld_dagcbor::to_vec(&value).unwrap()
    };
    for record in [&a, &b] {
        let blocks = record.blocks();
        for node in [&blocks.record, &blocks.event, &blocks.header, &blocks.body] {
            assert_eq!(&reencode(node), node);
        }
        let sealed = decode_bytes_node(Node::Record, &blocks.record, MAX_RECORD_NODE).unwrap();
        let plain = crypto::open(log.keys.service().as_bytes(), sealed).unwrap();
        assert_eq!(reencode(&plain), plain);
    }
    assert_eq!(
        encode_event(&a.content_cids().0, &a.content_cids().1),
        a.blocks().event
    );
}

#[test]
fn batch_verification_gives_each_record_its_verdict() {
    let logs: Vec<Log> = (0..3).map(|_| Log::new()).collect();
    let records: Vec<VerifiedRecord> = logs.iter().map(|l| l.write(&body("x"), None)).collect();
    let items = || {
        records
            .iter()
            .zip(&logs)
            .map(|(r, l)| (r.blocks().clone(), l.keys.service(), &l.id))
    };
    let all = verify_batch(items(), SignaturePolicy::CurrentOnly);
    assert!(all
        .iter()
        .all(|r| r.as_ref().unwrap().rule() == SignatureRule::Current));

    // One bad signature, one broken link, one good.
    let mut batch: Vec<_> = items().collect();
    batch[0].0 = envelope_with(&batch[0].0, logs[0].keys.service(), |e| e.sig[0] ^= 1);
    batch[1].0.body = records[2].blocks().body.clone();
    let verdicts = verify_batch(batch, SignaturePolicy::CurrentOnly);
    assert_eq!(verdicts[0], Err(RecordError::BadSignature));
    assert_eq!(verdicts[1], Err(RecordError::BrokenLink(Link::Body)));
    assert_eq!(verdicts[2].as_ref().unwrap(), &records[2]);

    assert!(verify_batch(Vec::new(), SignaturePolicy::CurrentOnly).is_empty());
}

/// A log's records in order, the first `len` of them linked from a first record.
fn chain(log: &Log, first: UnverifiedRecord, len: usize) -> Vec<UnverifiedRecord> {
    let mut records = vec![first];
    while records.len() < len {
        let prev = cid_of(&records[records.len() - 1].record);
        let text = records.len().to_string();
        records.push(log.write(&body(&text), Some(prev)).blocks().clone());
    }
    records
}

fn verdicts(log: &Log, records: &[UnverifiedRecord], check: Check) -> Vec<Verdict> {
    let items = records
        .iter()
        .map(|r| (r.clone(), log.keys.service(), &log.id))
        .collect();
    check(items, SignaturePolicy::CurrentOnly)
}

type Verdict = Result<VerifiedRecord, RecordError>;
type Check =
    for<'a> fn(Vec<(UnverifiedRecord, &'a ServiceKey, &'a LogId)>, SignaturePolicy) -> Vec<Verdict>;

#[test]
fn chained_verification_checks_a_run_by_its_last_signature() {
    let log = Log::new();
    let first = log.write(&body("0"), None).blocks().clone();
    let records = chain(&log, first.clone(), 5);
    let each = verdicts(&log, &records, |i, p| verify_batch(i, p));
    let chained = verdicts(&log, &records, |i, p| verify_chained(i, p));
    assert!(each.iter().all(Result::is_ok));
    assert_eq!(chained, each);

    // A signature changed in the run: that record no longer hashes to the link the next one
    // signs, so its own signature is checked, and refused; the others still hold.
    for bad in [2, 4] {
        let mut tampered = records.clone();
        tampered[bad] = envelope_with(&tampered[bad], log.keys.service(), |e| e.sig[0] ^= 1);
        let chained = verdicts(&log, &tampered, |i, p| verify_chained(i, p));
        for (i, verdict) in chained.iter().enumerate() {
            match i == bad {
                true => assert_eq!(verdict, &Err(RecordError::BadSignature)),
                false => assert!(verdict.is_ok(), "record {i}"),
            }
        }
    }

    // A record the log key signed over badly, then named as `prev` in a record it signed
    // well: that signature covers the first whole, so a reader of the run takes both (a
    // follower, checking each, refuses the first).
    let badly = envelope_with(&first, log.keys.service(), |e| e.sig[0] ^= 1);
    let run = chain(&log, badly, 2);
    let each = verdicts(&log, &run, |i, p| verify_batch(i, p));
    assert_eq!(each[0], Err(RecordError::BadSignature));
    let chained = verdicts(&log, &run, |i, p| verify_chained(i, p));
    assert!(chained.iter().all(Result::is_ok));

    // Named as `prev` by a record of another log: that key cannot vouch for this log.
    let other = Log {
        keys: log.keys.clone(),
        ..Log::new()
    };
    let badly = envelope_with(&first, log.keys.service(), |e| e.sig[0] ^= 1);
    let foreign = other.write(&body("x"), Some(cid_of(&badly.record)));
    let items = vec![
        (badly, log.keys.service(), &log.id),
        (foreign.blocks().clone(), other.keys.service(), &other.id),
    ];
    let chained = verify_chained(items, SignaturePolicy::CurrentOnly);
    assert_eq!(chained[0], Err(RecordError::BadSignature));
    assert!(chained[1].is_ok());
}

#[test]
fn batch_verification_keeps_signatures_of_one_log_apart() {
    // A batch folds the signatures of one key together: two records of one log that swap
    // their signatures, or one signed by another log's key, must still each be refused.
    let (a, b) = (Log::new(), Log::new());
    let mut records = vec![a.write(&body("1"), None)];
    for n in 2..=4 {
        let prev = records.last().unwrap().cid();
        records.push(a.write(&body(&n.to_string()), Some(prev)));
    }
    let sig_of = |record: &VerifiedRecord| {
        let sealed =
            decode_bytes_node(Node::Record, &record.blocks().record, MAX_RECORD_NODE).unwrap();
        let plain = crypto::open(a.keys.service().as_bytes(), sealed).unwrap();
        Envelope::decode(&plain).unwrap().sig
    };
    let service = a.keys.service();
    let mut blocks: Vec<UnverifiedRecord> = records.iter().map(|r| r.blocks().clone()).collect();
    let (first, second) = (sig_of(&records[0]), sig_of(&records[1]));
    blocks[0] = envelope_with(&blocks[0], service, |e| e.sig = second);
    blocks[1] = envelope_with(&blocks[1], service, |e| e.sig = first);
    blocks[2] = envelope_with(&blocks[2], service, |e| {
        e.sig = b.pair.sign(&e.current_message()).to_vec()
    });
    let verdicts = verify_batch(
        blocks.into_iter().map(|r| (r, service, &a.id)),
        SignaturePolicy::CurrentOnly,
    );
    for verdict in &verdicts[..3] {
        assert_eq!(verdict, &Err(RecordError::BadSignature));
    }
    assert_eq!(verdicts[3].as_ref().unwrap(), &records[3]);
}

#[test]
fn error_codes_are_stable() {
    assert_eq!(
        malformed(Node::Event, DecodeError::KeyOrder("a".into())).code(),
        "not_canonical"
    );
    assert_eq!(
        malformed(Node::Event, DecodeError::Truncated).code(),
        "malformed"
    );
    assert_eq!(RecordError::BrokenLink(Link::Body).code(), "bad_link");
    assert_eq!(RecordError::BadSignature.code(), "bad_signature");
    assert_eq!(RecordError::LegacySignature.code(), "legacy_signature");
}

/// Re-seals a record's envelope after `edit`, as a peer holding the follow key could.
fn reseal(
    blocks: &UnverifiedRecord,
    service: &ServiceKey,
    edit: impl FnOnce(&mut Vec<u8>),
) -> UnverifiedRecord {
    let sealed = decode_bytes_node(Node::Record, &blocks.record, MAX_RECORD_NODE).unwrap();
    let mut plain = crypto::open(service.as_bytes(), sealed).unwrap();
    edit(&mut plain);
    UnverifiedRecord {
        record: encode_bytes_node(&crypto::seal(service.as_bytes(), &plain, &mut OsRng)),
        ..blocks.clone()
    }
}

fn envelope_with(
    blocks: &UnverifiedRecord,
    service: &ServiceKey,
    edit: impl FnOnce(&mut Envelope),
) -> UnverifiedRecord {
    reseal(blocks, service, |plain| {
        let mut env = Envelope::decode(plain).unwrap();
        edit(&mut env);
        *plain = env.encode();
    })
}

fn legacy_sign(env: &mut Envelope, log: &Keypair) {
    env.sig = log.sign(&env.legacy_message()).to_vec();
}

/// Bytes after a valid CID are refused, as go-cid and js-multiformats refuse them.
#[test]
fn cid_text_with_trailing_bytes_is_refused() {
    let cid = cid_of(b"a node");
    let text = cid.to_string();
    assert_eq!(parse_cid(&text).unwrap(), cid);
    assert!(parse_cid(&format!("{text}aaaa")).is_err());
    assert!(parse_cid(&format!("{text}a")).is_err());
    // Another base of the same CID is the same CID.
    let base58 = cid.to_string_of_base(multibase::Base::Base58Btc).unwrap();
    assert_eq!(parse_cid(&base58).unwrap(), cid);
    assert!(parse_cid(&format!("{base58}z")).is_err());
    // A CIDv0 is exactly 46 characters.
    let v0 = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n";
    assert!(parse_cid(v0).is_ok());
    assert!(parse_cid(&format!("{v0}a")).is_err());
}
