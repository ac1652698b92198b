//! Tampered records with the refusal each one gets, for other implementations to check that they
//! refuse the same records for the same reason (the browser client's tests read this file).
//!
//! `tamper.json` (beside the golden vectors) is the checked-in truth: this test checks every
//! case in it still gets its recorded outcome here. `THREADS_UPDATE_GOLDEN=1` writes it anew.

use serde_json::{json, Value};

use super::*;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/tamper.json");

/// One case: the four nodes, the keys to check them with, and what must happen.
struct Case {
    name: &'static str,
    blocks: UnverifiedRecord,
    keys: ThreadKey,
    log: LogId,
    allow_legacy: bool,
    /// `Some(code)` for a refusal, `None` when the record verifies and opens.
    expect: Option<&'static str>,
}

fn outcome(blocks: UnverifiedRecord, keys: &ThreadKey, log: &LogId, allow_legacy: bool) -> Value {
    let policy = if allow_legacy {
        SignaturePolicy::AllowLegacy
    } else {
        SignaturePolicy::CurrentOnly
    };
    let refusal = |stage: &str, e: RecordError| {
        let (node, link) = match &e {
            RecordError::TooLarge { node, .. }
            | RecordError::Malformed { node, .. }
            | RecordError::Decrypt { node, .. } => (json!(node), Value::Null),
            RecordError::BrokenLink(link) => (Value::Null, json!(link)),
            _ => (Value::Null, Value::Null),
        };
        json!({"stage": stage, "code": e.code(), "node": node, "link": link})
    };
    match blocks.verify(keys.service(), log, policy) {
        Err(e) => refusal("verify", e),
        Ok(record) => match record.read(keys.read().expect("cases carry the read key")) {
            Err(e) => refusal("open", e),
            Ok(body) => json!({"rule": record.rule(), "body": hex::encode(body)}),
        },
    }
}

fn flip(mut bytes: Vec<u8>, at: usize) -> Vec<u8> {
    bytes[at] ^= 0x01;
    bytes
}

/// A correctly signed record over the given header and body nodes, whatever they hold.
fn signed_over(log: &Log, header: Vec<u8>, body: Vec<u8>, prev: Option<Cid>) -> UnverifiedRecord {
    let event = encode_event(&cid_of(&header), &cid_of(&body));
    let block = cid_of(&event);
    let author = log.author.marshal().to_vec();
    let envelope = Envelope {
        sig: log
            .pair
            .sign(&signed_message(&block, prev.as_ref(), &author))
            .to_vec(),
        prev,
        block,
        author,
    };
    let sealed = crypto::seal(
        log.keys.service().as_bytes(),
        &envelope.encode(),
        &mut OsRng,
    );
    UnverifiedRecord {
        record: encode_bytes_node(&sealed),
        event,
        header,
        body,
    }
}

fn sealed_header(log: &Log, plaintext: &[u8]) -> Vec<u8> {
    let read = log.keys.read().unwrap();
    encode_bytes_node(&crypto::seal(read.as_bytes(), plaintext, &mut OsRng))
}

fn build() -> Vec<Case> {
    let log = Log::new();
    let a = log.write(&body("first"), None);
    let b = log.write(&body("second"), Some(a.cid()));
    let service = log.keys.service().clone();
    let (header, body_cid) = a.content_cids();
    let other = Log::new();
    let mut cases: Vec<(&'static str, UnverifiedRecord, Option<&'static str>)> = Vec::new();
    let with = |edit: &dyn Fn(&mut UnverifiedRecord)| {
        let mut blocks = a.blocks().clone();
        edit(&mut blocks);
        blocks
    };

    cases.push(("a first record", a.blocks().clone(), None));
    cases.push(("a record with a prev", b.blocks().clone(), None));

    // The record node.
    let last = a.blocks().record.len() - 1;
    cases.push((
        "record ciphertext altered",
        with(&|r| r.record = flip(r.record.clone(), last)),
        Some("decrypt_failed"),
    ));
    cases.push((
        "record node cut short",
        with(&|r| {
            r.record.pop();
        }),
        Some("malformed"),
    ));
    cases.push((
        "record node with a byte after it",
        with(&|r| r.record.push(0)),
        Some("malformed"),
    ));
    cases.push((
        "record node length in a wider head",
        with(&|r| {
            let inner = decode_bytes_node(Node::Record, &r.record, MAX_RECORD_NODE)
                .unwrap()
                .to_vec();
            r.record = [&[0x59, 0, inner.len() as u8][..], &inner].concat();
        }),
        Some("not_canonical"),
    ));
    cases.push((
        "record node too large",
        with(&|r| r.record = encode_bytes_node(&[0; MAX_RECORD_NODE])),
        Some("too_large"),
    ));
    cases.push((
        "record node not a byte string",
        with(&|r| r.record = vec![0xa0]),
        Some("malformed"),
    ));

    // The event node.
    let digest_byte = a.blocks().event.len() - 1;
    cases.push((
        "event link digest altered",
        with(&|r| r.event = flip(r.event.clone(), digest_byte)),
        Some("bad_link"),
    ));
    let event_with = |entries: &[(&str, Option<&Cid>)]| {
        let mut w = Writer::with_capacity(128);
        w.map(entries.len() as u64);
        for (key, link) in entries {
            w.key(key);
            match link {
                Some(cid) => w.link(cid),
                None => w.bytes(b"not a link"),
            }
        }
        w.0
    };
    let h = Some(&header);
    let bo = Some(&body_cid);
    cases.push((
        "event keys out of order",
        with(&|r| r.event = event_with(&[("header", h), ("body", bo)])),
        Some("not_canonical"),
    ));
    cases.push((
        "event key repeated",
        with(&|r| r.event = event_with(&[("body", bo), ("body", bo), ("header", h)])),
        Some("not_canonical"),
    ));
    cases.push((
        "event with an unknown key",
        with(&|r| r.event = event_with(&[("body", bo), ("extra", bo), ("header", h)])),
        Some("malformed"),
    ));
    cases.push((
        "event without its header link",
        with(&|r| r.event = event_with(&[("body", bo)])),
        Some("malformed"),
    ));
    cases.push((
        "event link that is not a link",
        with(&|r| r.event = event_with(&[("body", None), ("header", h)])),
        Some("malformed"),
    ));
    cases.push((
        "event link under tag 43",
        with(&|r| {
            let mut e = r.event.clone();
            let at = e.windows(2).position(|w| w == [0xd8, 42]).unwrap();
            e[at + 1] = 43;
            r.event = e;
        }),
        Some("malformed"),
    ));
    cases.push((
        "event map of indefinite length",
        with(&|r| {
            let mut e = r.event.clone();
            e[0] = 0xbf;
            e.push(0xff);
            r.event = e;
        }),
        Some("not_canonical"),
    ));
    cases.push((
        "event node too large",
        with(&|r| r.event = vec![0xa0; MAX_EVENT_NODE + 1]),
        Some("too_large"),
    ));

    // Header and body nodes.
    let h_last = a.blocks().header.len() - 1;
    let b_last = a.blocks().body.len() - 1;
    cases.push((
        "header altered",
        with(&|r| r.header = flip(r.header.clone(), h_last)),
        Some("bad_link"),
    ));
    cases.push((
        "body altered",
        with(&|r| r.body = flip(r.body.clone(), b_last)),
        Some("bad_link"),
    ));
    cases.push((
        "header and body swapped",
        with(&|r| std::mem::swap(&mut r.header, &mut r.body)),
        Some("bad_link"),
    ));
    cases.push((
        "body of another record",
        with(&|r| r.body = b.blocks().body.clone()),
        Some("bad_link"),
    ));
    cases.push((
        "header node with a byte after it",
        with(&|r| r.header.push(0)),
        Some("malformed"),
    ));

    // The envelope, resealed by someone holding the follow key.
    let other_cid = cid_of(b"elsewhere");
    cases.push((
        "prev added to a first record",
        envelope_with(a.blocks(), &service, |e| e.prev = Some(other_cid)),
        Some("bad_signature"),
    ));
    cases.push((
        "prev removed",
        envelope_with(b.blocks(), &service, |e| e.prev = None),
        Some("bad_signature"),
    ));
    cases.push((
        "prev changed",
        envelope_with(b.blocks(), &service, |e| e.prev = Some(other_cid)),
        Some("bad_signature"),
    ));
    cases.push((
        "author changed",
        envelope_with(a.blocks(), &service, |e| {
            e.author = other.author.marshal().to_vec()
        }),
        Some("bad_signature"),
    ));
    cases.push((
        "signature altered",
        envelope_with(a.blocks(), &service, |e| e.sig[0] ^= 1),
        Some("bad_signature"),
    ));
    cases.push((
        "signature cut to 10 bytes",
        envelope_with(a.blocks(), &service, |e| e.sig.truncate(10)),
        Some("bad_signature"),
    ));
    let sig = [7u8; 64];
    let block = a.event_cid();
    let author = log.author.marshal();
    let put_sig = |w: &mut Writer| w.bytes(&sig);
    let put_block = |w: &mut Writer| w.link(&block);
    let put_author = |w: &mut Writer| w.bytes(&author);
    let raw = |entries: &[Entry]| {
        let plain = raw_envelope(entries);
        reseal(a.blocks(), &service, |p| *p = plain)
    };
    cases.push((
        "envelope keys out of order",
        raw(&[
            ("block", &put_block),
            ("sig", &put_sig),
            ("pubKey", &put_author),
        ]),
        Some("not_canonical"),
    ));
    cases.push((
        "envelope key repeated",
        raw(&[("sig", &put_sig), ("sig", &put_sig), ("block", &put_block)]),
        Some("not_canonical"),
    ));
    cases.push((
        "envelope without its author",
        raw(&[("sig", &put_sig), ("block", &put_block)]),
        Some("malformed"),
    ));
    cases.push((
        "envelope with an unknown key",
        raw(&[
            ("sig", &put_sig),
            ("time", &|w: &mut Writer| w.uint(1)),
            ("block", &put_block),
            ("pubKey", &put_author),
        ]),
        Some("malformed"),
    ));
    cases.push((
        "envelope block that is not a link",
        raw(&[
            ("sig", &put_sig),
            ("block", &|w: &mut Writer| w.bytes(b"x")),
            ("pubKey", &put_author),
        ]),
        Some("malformed"),
    ));
    cases.push((
        "envelope map length in a wider head",
        reseal(a.blocks(), &service, |p| {
            p.splice(0..1, [0xb8, p[0] & 0x1f]);
        }),
        Some("not_canonical"),
    ));
    cases.push((
        "envelope with a byte after it",
        reseal(a.blocks(), &service, |p| p.push(0)),
        Some("malformed"),
    ));

    // go-threads' signature rule: refused unless allowed.
    let legacy_a = envelope_with(a.blocks(), &service, |e| legacy_sign(e, &log.pair));
    let legacy_b = envelope_with(b.blocks(), &service, |e| legacy_sign(e, &log.pair));
    cases.push((
        "legacy signature, first record",
        legacy_a.clone(),
        Some("legacy_signature"),
    ));
    cases.push((
        "legacy signature, with a prev",
        legacy_b.clone(),
        Some("legacy_signature"),
    ));

    // Content only the read key opens: verifies, then refuses to open.
    let mut short_key = Writer::with_capacity(40);
    short_key.map(1);
    short_key.key("key");
    short_key.bytes(&[1; 31]);
    cases.push((
        "content key of 31 bytes",
        signed_over(
            &log,
            sealed_header(&log, &short_key.0),
            a.blocks().body.clone(),
            None,
        ),
        Some("malformed"),
    ));
    let mut wrong_name = Writer::with_capacity(40);
    wrong_name.map(1);
    wrong_name.key("kee");
    wrong_name.bytes(&[1; 32]);
    cases.push((
        "header with another key name",
        signed_over(
            &log,
            sealed_header(&log, &wrong_name.0),
            a.blocks().body.clone(),
            None,
        ),
        Some("malformed"),
    ));
    cases.push((
        "header under another read key",
        signed_over(
            &log,
            encode_bytes_node(&crypto::seal(&[9; 32], b"\xa1ckeyX\x20", &mut OsRng)),
            a.blocks().body.clone(),
            None,
        ),
        Some("decrypt_failed"),
    ));
    cases.push((
        "body shorter than a nonce and tag",
        signed_over(
            &log,
            a.blocks().header.clone(),
            encode_bytes_node(&[0; 20]),
            None,
        ),
        Some("decrypt_failed"),
    ));

    let mut out: Vec<Case> = cases
        .into_iter()
        .map(|(name, blocks, expect)| Case {
            name,
            blocks,
            keys: log.keys.clone(),
            log: log.id.clone(),
            allow_legacy: false,
            expect,
        })
        .collect();
    // The same legacy records where the legacy rule is allowed.
    for (name, blocks) in [
        ("legacy signature allowed, first record", legacy_a),
        ("legacy signature allowed, with a prev", legacy_b),
    ] {
        out.push(Case {
            name,
            blocks,
            keys: log.keys.clone(),
            log: log.id.clone(),
            allow_legacy: true,
            expect: None,
        });
    }
    // Wrong keys for a good record.
    out.push(Case {
        name: "another thread's follow key",
        blocks: a.blocks().clone(),
        keys: other.keys.clone(),
        log: log.id.clone(),
        allow_legacy: false,
        expect: Some("decrypt_failed"),
    });
    out.push(Case {
        name: "another log's ID",
        blocks: a.blocks().clone(),
        keys: log.keys.clone(),
        log: other.id.clone(),
        allow_legacy: false,
        expect: Some("bad_signature"),
    });
    out.push(Case {
        name: "another thread's read key",
        blocks: a.blocks().clone(),
        keys: ThreadKey::new(log.keys.service().clone(), other.keys.read().cloned()),
        log: log.id.clone(),
        allow_legacy: false,
        expect: Some("decrypt_failed"),
    });
    out
}

fn case_json(case: &Case) -> Value {
    let b = &case.blocks;
    json!({
        "name": case.name,
        "record": hex::encode(&b.record),
        "event": hex::encode(&b.event),
        "header": hex::encode(&b.header),
        "body": hex::encode(&b.body),
        "thread_key": *case.keys.to_multibase(),
        "log": case.log.to_string(),
        "allow_legacy": case.allow_legacy,
        "outcome": outcome(b.clone(), &case.keys, &case.log, case.allow_legacy),
    })
}

#[test]
fn tamper_vectors_get_their_recorded_refusals() {
    if std::env::var_os("THREADS_UPDATE_GOLDEN").is_some() {
        let cases = build();
        for case in &cases {
            let got = outcome(
                case.blocks.clone(),
                &case.keys,
                &case.log,
                case.allow_legacy,
            );
            assert_eq!(got["code"].as_str(), case.expect, "{}: {got}", case.name);
        }
        let json = Value::Array(cases.iter().map(case_json).collect());
        std::fs::write(PATH, serde_json::to_string_pretty(&json).unwrap() + "\n").unwrap();
    }
    let stored: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert!(stored.len() >= 40, "{} cases", stored.len());
    for case in stored {
        let hexed = |k: &str| hex::decode(case[k].as_str().unwrap()).unwrap();
        let blocks = UnverifiedRecord {
            record: hexed("record"),
            event: hexed("event"),
            header: hexed("header"),
            body: hexed("body"),
        };
        let keys: ThreadKey = case["thread_key"].as_str().unwrap().parse().unwrap();
        let log: LogId = case["log"].as_str().unwrap().parse().unwrap();
        let got = outcome(blocks, &keys, &log, case["allow_legacy"].as_bool().unwrap());
        assert_eq!(got, case["outcome"], "{}", case["name"]);
    }
}
