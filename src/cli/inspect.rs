//! `threads inspect <string>`: says what a protocol string is, as JSON.

use std::process::ExitCode;

use serde_json::{json, Value};
use threads_core::keys::KeyError;
use threads_core::{Keypair, LogId, PublicKey, ThreadAddr, ThreadId, ThreadKey};

/// Print what a thread ID, thread key, log/peer ID, identity, CID or multiaddr is, as JSON.
///
/// Exits with status 2 and a one-line error when the string is none of these.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The string to inspect.
    value: String,
    /// Print secret key material instead of "<redacted>".
    #[arg(long)]
    show_secrets: bool,
}

pub fn run(args: Args) -> ExitCode {
    match inspect(args.value.trim(), args.show_secrets) {
        Some(value) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&value).expect("JSON values print")
            );
            ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "threads inspect: {:?} is not a thread ID, thread key, log ID, identity, private key, CID or multiaddr",
                args.value
            );
            ExitCode::from(2)
        }
    }
}

const REDACTED: &str = "<redacted>";

/// Tries each kind in an order where no earlier kind can swallow a later one's strings.
fn inspect(s: &str, show_secrets: bool) -> Option<Value> {
    let secret = |bytes: &[u8]| {
        if show_secrets {
            Value::from(hex::encode(bytes))
        } else {
            Value::from(REDACTED)
        }
    };

    if s.starts_with('/') {
        if let Ok(addr) = s.parse::<ThreadAddr>() {
            return Some(json!({
                "kind": "thread_addr",
                "text": addr.to_string(),
                "peer": addr.peer().to_string(),
                "peer_id": addr.peer_id(),
                "thread_id": addr.thread().to_string(),
                "bytes": hex::encode(addr.to_bytes()),
            }));
        }
        let addr: threads_core::addr::Multiaddr = s.parse().ok()?;
        return Some(json!({
            "kind": "multiaddr",
            "text": addr.to_string(),
            "protocols": addr.iter().map(|p| p.tag()).collect::<Vec<_>>(),
            "bytes": hex::encode(addr.to_vec()),
        }));
    }
    if let Ok(log) = s.parse::<LogId>() {
        return Some(json!({
            "kind": "log_id",
            "text": log.to_string(),
            "key_type": "ed25519",
            "public_key": hex::encode(log.public_key().as_bytes()),
            "identity": log.public_key().to_string(),
        }));
    }
    if let Ok(id) = s.parse::<ThreadId>() {
        return Some(json!({
            "kind": "thread_id",
            "text": id.to_string(),
            "version": 1,
            "variant": id.variant(),
            "random_bytes": id.random_part().len(),
            "bytes": hex::encode(id.as_bytes()),
        }));
    }
    if let Ok(key) = s.parse::<PublicKey>() {
        return Some(json!({
            "kind": "identity",
            "text": key.to_string(),
            "key_type": "ed25519",
            "public_key": hex::encode(key.as_bytes()),
            "log_id": LogId::from(key).to_string(),
        }));
    }
    match s.parse::<Keypair>() {
        Ok(pair) => {
            return Some(json!({
                "kind": "private_key",
                "key_type": "ed25519",
                "identity": pair.public().to_string(),
                "log_id": LogId::from(pair.public()).to_string(),
                "private_key": secret(&pair.marshal()),
            }))
        }
        Err(KeyError::Mismatch) => return None,
        Err(_) => {}
    }
    if let Ok(key) = s.parse::<ThreadKey>() {
        return Some(json!({
            "kind": "thread_key",
            "has_read_key": key.read().is_some(),
            "service_key": secret(key.service().as_bytes()),
            "read_key": key.read().map(|k| secret(k.as_bytes())),
        }));
    }
    if let Ok(cid) = threads_core::parse_cid(s) {
        let hash = cid.hash();
        return Some(json!({
            "kind": "cid",
            "text": cid.to_string(),
            "version": cid.version() as u64,
            "codec": codec_name(cid.codec()),
            "hash": codec_name(hash.code()),
            "digest": hex::encode(hash.digest()),
        }));
    }
    None
}

fn codec_name(code: u64) -> Value {
    match code {
        0x55 => "raw".into(),
        0x70 => "dag-pb".into(),
        0x71 => "dag-cbor".into(),
        0x0129 => "dag-json".into(),
        0x12 => "sha2-256".into(),
        0x00 => "identity".into(),
        0x72 => "libp2p-key".into(),
        other => format!("{other:#x}").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let kind = |s: &str| inspect(s, false).map(|v| v["kind"].as_str().unwrap().to_owned());
        let thread = "bafk7ayo2xuuafgx6ubbcn2lro3s7oixgujdda6shv4";
        let log = "12D3KooWFCXqmQTwvpfYFWK3DjXChEc4NoPt8pp5jjC8REZ3g6NZ";
        assert_eq!(kind(thread).as_deref(), Some("thread_id"));
        assert_eq!(kind(log).as_deref(), Some("log_id"));
        assert_eq!(
            kind("bp2vvqody5zm6yqycsnazb4kpqvycbdosos352zvpsorxce5koh7q").as_deref(),
            Some("thread_key")
        );
        assert_eq!(
            kind(&format!(
                "/ip4/127.0.0.1/tcp/4006/p2p/{log}/thread/{thread}"
            ))
            .as_deref(),
            Some("thread_addr")
        );
        assert_eq!(
            kind("/ip4/127.0.0.1/tcp/4006").as_deref(),
            Some("multiaddr")
        );
        let pair = Keypair::from_seed(&[1; 32]);
        assert_eq!(
            kind(&pair.public().to_string()).as_deref(),
            Some("identity")
        );
        assert_eq!(kind(&pair.to_multibase()).as_deref(), Some("private_key"));
        let cid = threads_core::cid_of(b"\xa0").to_string();
        assert_eq!(kind(&cid).as_deref(), Some("cid"));
        assert_eq!(kind("hello"), None);
        assert_eq!(kind("/nope/1"), None);
    }

    #[test]
    fn secrets_only_on_request() {
        let key = "bp2vvqody5zm6yqycsnazb4kpqvycbdosos352zvpsorxce5koh7q";
        assert_eq!(inspect(key, false).unwrap()["service_key"], REDACTED);
        assert_eq!(
            inspect(key, true).unwrap()["service_key"],
            "7eab583878ee59ec4302934190f14f8570208dd274b7dd66af93a37113aa71ff"
        );
        let pair = Keypair::from_seed(&[1; 32]);
        assert_eq!(
            inspect(&pair.to_multibase(), false).unwrap()["private_key"],
            REDACTED
        );
    }
}
