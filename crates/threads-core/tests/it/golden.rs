//! Exact-byte vectors for every ID, key string and node kind, from fixed inputs.
//!
//! `vectors.json` beside this file is the checked-in truth. The test rebuilds every vector from
//! a seeded RNG and compares; it also verifies and reads the stored records from their bytes
//! alone. After a deliberate format change, regenerate with `THREADS_UPDATE_GOLDEN=1`.

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::{json, Value};
use threads_core::crypto::{open, open_from, seal, seal_to};
use threads_core::{
    Cid, Head, Keypair, LogId, SignaturePolicy, ThreadAddr, ThreadId, ThreadKey, UnverifiedRecord,
    Variant, VerifiedRecord,
};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/vectors.json");

fn record_json(record: &VerifiedRecord) -> Value {
    let b = record.blocks();
    json!({
        "cid": record.cid().to_string(),
        "prev": record.prev().map(|c| c.to_string()),
        "event_cid": record.event_cid().to_string(),
        "record": hex::encode(&b.record),
        "event": hex::encode(&b.event),
        "header": hex::encode(&b.header),
        "body": hex::encode(&b.body),
    })
}

fn build() -> Value {
    let mut rng = ChaCha20Rng::from_seed([42; 32]);
    let raw = ThreadId::random(Variant::Raw, &mut rng);
    let acl = ThreadId::random(Variant::AccessControlled, &mut rng);
    let keys = ThreadKey::random(&mut rng);
    let log = Keypair::generate(&mut rng);
    let author = Keypair::generate(&mut rng);
    let log_id = LogId::from(log.public());
    let addr = ThreadAddr::new(
        format!("/ip4/127.0.0.1/tcp/4006/p2p/{log_id}")
            .parse()
            .unwrap(),
        raw.clone(),
    );

    let body1 = serde_ipld_dagcbor::to_vec(&json!({"op": "put", "key": "a", "value": 1})).unwrap();
    let body2 = serde_ipld_dagcbor::to_vec(&json!({"op": "del", "key": "a"})).unwrap();
    let first =
        VerifiedRecord::create(&body1, &keys, &log, &author.public(), None, &mut rng).unwrap();
    let second = VerifiedRecord::create(
        &body2,
        &keys,
        &log,
        &author.public(),
        Some(first.cid()),
        &mut rng,
    )
    .unwrap();

    let aes_key = [7u8; 32];
    let aes = seal(&aes_key, b"layer", &mut rng);
    let boxed = seal_to(&author.public(), b"key set", &mut rng).unwrap();

    json!({
        "thread_id_raw": {"text": raw.to_string(), "hex": hex::encode(raw.as_bytes())},
        "thread_id_acl": {"text": acl.to_string(), "hex": hex::encode(acl.as_bytes())},
        "thread_key": {"text": *keys.to_multibase(), "follow_only": *keys.follow_only().to_multibase()},
        "log": {
            "id": log_id.to_string(),
            "id_hex": hex::encode(log_id.to_bytes()),
            "public_marshalled": hex::encode(log.public().marshal()),
            "private_marshalled": hex::encode(&*log.marshal()),
        },
        "author_identity": author.public().to_string(),
        "author_private": hex::encode(&*author.marshal()),
        "thread_addr": {"text": addr.to_string(), "hex": hex::encode(addr.to_bytes())},
        "body1": hex::encode(&body1),
        "body2": hex::encode(&body2),
        "record1": record_json(&first),
        "record2": record_json(&second),
        "aes": {"key": hex::encode(aes_key), "sealed": hex::encode(&aes)},
        "box": {"sealed": hex::encode(&boxed)},
    })
}

fn stored() -> Value {
    serde_json::from_str(&std::fs::read_to_string(PATH).expect("vectors.json exists")).unwrap()
}

#[test]
fn vectors_match_the_checked_in_bytes() {
    let built = build();
    if std::env::var_os("THREADS_UPDATE_GOLDEN").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
    }
    let stored = stored();
    for (name, value) in built.as_object().unwrap() {
        assert_eq!(&stored[name], value, "vector {name} changed");
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn blocks(v: &Value) -> UnverifiedRecord {
    UnverifiedRecord {
        record: bytes(&v["record"]),
        event: bytes(&v["event"]),
        header: bytes(&v["header"]),
        body: bytes(&v["body"]),
    }
}

/// The stored bytes verify and read on their own, and every string parses back to its bytes.
#[test]
fn stored_vectors_verify_and_parse() {
    let v = stored();
    let keys: ThreadKey = v["thread_key"]["text"].as_str().unwrap().parse().unwrap();
    let log: LogId = v["log"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(hex::encode(log.to_bytes()), v["log"]["id_hex"]);
    let pair = Keypair::unmarshal(&bytes(&v["log"]["private_marshalled"])).unwrap();
    assert_eq!(LogId::from(pair.public()), log);

    let follow = keys.follow_only();
    let first = blocks(&v["record1"])
        .verify(follow.service(), &log, SignaturePolicy::CurrentOnly)
        .unwrap();
    let second = blocks(&v["record2"])
        .verify(follow.service(), &log, SignaturePolicy::CurrentOnly)
        .unwrap();
    assert_eq!(first.cid().to_string(), v["record1"]["cid"]);
    assert_eq!(second.prev(), Some(first.cid()));
    assert_eq!(first.event_cid().to_string(), v["record1"]["event_cid"]);
    let head = Head::advance(Some(&Head::advance(None, &first).unwrap()), &second).unwrap();
    assert_eq!(head.counter, 2);

    let read = keys.read().unwrap();
    assert_eq!(first.read(read).unwrap(), bytes(&v["body1"]));
    assert_eq!(second.read(read).unwrap(), bytes(&v["body2"]));
    assert_eq!(second.author().unwrap().to_string(), v["author_identity"]);

    for id in ["thread_id_raw", "thread_id_acl"] {
        let parsed: ThreadId = v[id]["text"].as_str().unwrap().parse().unwrap();
        assert_eq!(hex::encode(parsed.as_bytes()), v[id]["hex"]);
    }
    let addr: ThreadAddr = v["thread_addr"]["text"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        ThreadAddr::from_bytes(&bytes(&v["thread_addr"]["hex"])).unwrap(),
        addr
    );

    let aes_key: [u8; 32] = bytes(&v["aes"]["key"]).try_into().unwrap();
    assert_eq!(
        open(&aes_key, &bytes(&v["aes"]["sealed"])).unwrap(),
        b"layer"
    );
    let cid: Cid = v["record2"]["cid"].as_str().unwrap().parse().unwrap();
    assert_eq!(cid, second.cid());
    let author = Keypair::unmarshal(&bytes(&v["author_private"])).unwrap();
    assert_eq!(
        open_from(&author, &bytes(&v["box"]["sealed"])).unwrap(),
        b"key set"
    );
}
