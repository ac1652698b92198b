//! The browser client (`web/`) as the Rust core sees it: records, a registration, a pull token
//! and a link made by the JavaScript client under Node.js are checked here with the core's own
//! verification. (The other direction, the core's vectors in JavaScript, is `web/test/`.)

use std::process::Command;

use serde_json::Value;
use threads_client::{Invite, Role};
use threads_core::auth::{check_pull_token, Action, SignedRequest};
use threads_core::{
    Head, Keypair, LogId, SignaturePolicy, SignatureRule, ThreadId, ThreadKey, UnverifiedRecord,
};

fn made_in_javascript() -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/web/test/make-records.js");
    let out = Command::new("node")
        .arg(script)
        .output()
        .expect("Node.js runs (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn hexed(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap()).unwrap()
}

#[test]
fn what_the_javascript_client_makes_verifies_here() {
    let made = made_in_javascript();
    let thread: ThreadId = made["thread"].as_str().unwrap().parse().unwrap();
    let key: ThreadKey = made["thread_key"].as_str().unwrap().parse().unwrap();
    let log: LogId = made["log"].as_str().unwrap().parse().unwrap();

    let mut head: Option<Head> = None;
    for r in made["records"].as_array().unwrap() {
        let blocks = UnverifiedRecord {
            record: hexed(r, "record"),
            event: hexed(r, "event"),
            header: hexed(r, "header"),
            body: hexed(r, "body"),
        };
        let verified = blocks
            .verify(key.service(), &log, SignaturePolicy::CurrentOnly)
            .unwrap();
        assert_eq!(verified.rule(), SignatureRule::Current);
        assert_eq!(verified.cid().to_string(), r["cid"].as_str().unwrap());
        assert_eq!(verified.author_bytes(), hexed(&made, "author"));
        head = Some(Head::advance(head.as_ref(), &verified).unwrap());
        let plain = verified.read(key.read().unwrap()).unwrap();
        assert_eq!(plain, hexed(r, "plain"));
        // The body is canonical DAG-CBOR: decoding and encoding again gives the same bytes.
        let ipld: ipld_core::ipld::Ipld = serde_ipld_dagcbor::from_slice(&plain).unwrap();
        assert_eq!(serde_ipld_dagcbor::to_vec(&ipld).unwrap(), plain);
    }
    assert_eq!(head.unwrap().counter, 3);

    let request: SignedRequest = serde_json::from_value(made["registration"].clone()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let payload = request.verify("threads-test-server", now).unwrap();
    assert_eq!(payload.thread, thread);
    assert_eq!(payload.log, log);
    let Action::Register {
        follow_key, public, ..
    } = payload.action
    else {
        panic!("a registration")
    };
    assert_eq!(follow_key, *key.follow_only().to_multibase());
    assert!(!public);
    assert!(request.verify("another-server", now).is_err());

    assert!(check_pull_token(
        key.service(),
        &thread,
        made["pull_token"].as_str().unwrap()
    ));

    let link = Invite::decode(
        made["link"].as_str().unwrap(),
        &Keypair::generate(&mut rand_core::OsRng),
    )
    .unwrap();
    assert_eq!(link.thread, thread);
    assert_eq!(link.role, Role::Writer);
    assert_eq!(*link.key.to_multibase(), *key.to_multibase());
    assert_eq!(link.earlier_read_keys.len(), 1);
    assert_eq!(link.snapshots_from, Some(log));
    assert_eq!(link.followers, ["http://127.0.0.1:8006"]);
}
