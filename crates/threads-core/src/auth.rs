//! Requests signed by a log key, and pull tokens for private threads.
//!
//! A signed request carries its payload as exact JSON text plus an Ed25519 signature by the log
//! key over `"/threads/request/1\n" || payload`. Signing the text itself means nobody has to
//! agree on a canonical JSON form. The payload names the server it is meant for, a time and a
//! nonce, so a request cannot be replayed at another server or twice at the same one.
//!
//! A pull token is `HMAC-SHA256(follow key, "/threads/pull-token/1\n" || thread ID)`: whoever has
//! the follow key can derive it; the server never has to hand out the key itself.

use hmac::{Hmac, Mac};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;

use crate::id::{LogId, ThreadId};
use crate::keys::{Keypair, ServiceKey};

const REQUEST_DOMAIN: &[u8] = b"/threads/request/1\n";
const PULL_TOKEN_DOMAIN: &[u8] = b"/threads/pull-token/1\n";

/// How far a request's time may be from the server's clock.
pub const REQUEST_WINDOW_MS: i64 = 5 * 60 * 1000;

/// What a signed request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Follow this log: store and serve its records.
    Register {
        /// The thread key with the follow half only, multibase.
        follow_key: String,
        #[serde(default)]
        addrs: Vec<String>,
        #[serde(default)]
        public: bool,
    },
    /// Stop following this log and delete its records.
    Unregister,
    /// Delete the whole thread. Any registered log of the thread may ask.
    DeleteThread,
    /// Post the thread's new records (or only those of `only_log`, a log ID) to `url`, as
    /// webhook deliveries. Any registered log of the thread may ask. (Not `log`: the payload
    /// already names the signing log under that key.)
    Subscribe {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        only_log: Option<String>,
    },
    /// Read a view of the thread from a bot (which holds the read key): one HTTP request,
    /// named by its method, its path with the query string, and the SHA-256 (hex) of its
    /// body when it has one. Followers refuse it.
    Read {
        method: String,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_sha256: Option<String>,
    },
}

/// The signed part of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPayload {
    /// The server ID the request is meant for (`GET /v1/server`).
    pub server: String,
    pub thread: ThreadId,
    /// The log whose key signs the request.
    pub log: LogId,
    pub timestamp_ms: i64,
    /// Random, hex; refused if seen before.
    pub nonce: String,
    #[serde(flatten)]
    pub action: Action,
}

/// A request as sent: the payload text and the signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRequest {
    pub payload: String,
    /// Base64 (standard alphabet) Ed25519 signature.
    pub signature: String,
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("payload is not a valid request: {0}")]
    Payload(String),
    #[error("signature is not 64 bytes of base64")]
    SignatureEncoding,
    #[error("signature does not verify under the log's key")]
    BadSignature,
    #[error("request is meant for server {0}")]
    WrongServer(String),
    #[error("request time is more than 5 minutes from the server's clock")]
    Expired,
    #[error("the nonce must be {min} to {max} printable ASCII characters (32 hex digits are made here)", min = NONCE_CHARS.start(), max = NONCE_CHARS.end())]
    BadNonce,
}

/// How long a request's nonce may be: long enough to be unguessable, short enough that
/// storing one per request costs little.
pub const NONCE_CHARS: std::ops::RangeInclusive<usize> = 16..=64;

impl RequestError {
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::Payload(_) | RequestError::SignatureEncoding => "bad_request",
            RequestError::BadSignature => "bad_signature",
            RequestError::WrongServer(_) => "wrong_server",
            RequestError::Expired => "expired",
            RequestError::BadNonce => "bad_nonce",
        }
    }
}

fn request_message(payload: &str) -> Vec<u8> {
    [REQUEST_DOMAIN, payload.as_bytes()].concat()
}

impl SignedRequest {
    /// Signs `action` for `server` with the log key, stamped with `now_ms` and a fresh nonce.
    pub fn sign(
        server: &str,
        thread: &ThreadId,
        log: &Keypair,
        action: Action,
        now_ms: i64,
        rng: &mut impl CryptoRngCore,
    ) -> Self {
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let payload = RequestPayload {
            server: server.to_owned(),
            thread: thread.clone(),
            log: LogId::from(log.public()),
            timestamp_ms: now_ms,
            nonce: hex_encode(&nonce),
            action,
        };
        let payload = serde_json::to_string(&payload).expect("payload serializes");
        let signature = log.sign(&request_message(&payload));
        Self {
            payload,
            signature: base64_encode(&signature),
        }
    }

    /// Checks signature, audience and time. The caller must still check the nonce is fresh.
    pub fn verify(&self, server: &str, now_ms: i64) -> Result<RequestPayload, RequestError> {
        let payload: RequestPayload = serde_json::from_str(&self.payload)
            .map_err(|e| RequestError::Payload(e.to_string()))?;
        let nonce = payload.nonce.as_bytes();
        if !NONCE_CHARS.contains(&nonce.len()) || !nonce.iter().all(u8::is_ascii_graphic) {
            return Err(RequestError::BadNonce);
        }
        let signature: [u8; 64] = base64_decode(&self.signature)
            .and_then(|b| b.try_into().ok())
            .ok_or(RequestError::SignatureEncoding)?;
        if !payload
            .log
            .public_key()
            .verify(&request_message(&self.payload), &signature)
        {
            return Err(RequestError::BadSignature);
        }
        if payload.server != server {
            return Err(RequestError::WrongServer(payload.server));
        }
        if (payload.timestamp_ms - now_ms).abs() > REQUEST_WINDOW_MS {
            return Err(RequestError::Expired);
        }
        Ok(payload)
    }
}

/// The bearer token that lets a reader pull a private thread: derived from the follow key.
pub fn pull_token(follow: &ServiceKey, thread: &ThreadId) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(follow.as_bytes()).expect("any key length");
    mac.update(PULL_TOKEN_DOMAIN);
    mac.update(thread.as_bytes());
    base64url_encode(&mac.finalize().into_bytes())
}

/// Compares a presented pull token with the expected one in constant time.
pub fn check_pull_token(follow: &ServiceKey, thread: &ThreadId, presented: &str) -> bool {
    let Some(presented) = base64url_decode(presented) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(follow.as_bytes()).expect("any key length");
    mac.update(PULL_TOKEN_DOMAIN);
    mac.update(thread.as_bytes());
    mac.verify_slice(&presented).is_ok()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn base64_encode(bytes: &[u8]) -> String {
    multibase::Base::Base64Pad.encode(bytes)
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    multibase::Base::Base64Pad.decode(text).ok()
}

fn base64url_encode(bytes: &[u8]) -> String {
    multibase::Base::Base64Url.encode(bytes)
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    multibase::Base::Base64Url.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Variant;
    use rand_core::OsRng;

    fn request(now: i64) -> (SignedRequest, ThreadId, Keypair) {
        let thread = ThreadId::random(Variant::Raw, &mut OsRng);
        let log = Keypair::generate(&mut OsRng);
        let action = Action::Register {
            follow_key: "b...".into(),
            addrs: vec![],
            public: true,
        };
        let req = SignedRequest::sign("server-1", &thread, &log, action, now, &mut OsRng);
        (req, thread, log)
    }

    #[test]
    fn sign_and_verify() {
        let (req, thread, log) = request(1_000_000);
        let payload = req.verify("server-1", 1_000_500).unwrap();
        assert_eq!(payload.thread, thread);
        assert_eq!(payload.log, LogId::from(log.public()));
        assert!(matches!(
            payload.action,
            Action::Register { public: true, .. }
        ));
        assert!(req.payload.contains(r#""action":"register""#));
    }

    #[test]
    fn refusals() {
        let (req, _, _) = request(1_000_000);
        assert_eq!(
            req.verify("server-2", 1_000_000),
            Err(RequestError::WrongServer("server-1".into()))
        );
        assert_eq!(
            req.verify("server-1", 1_000_000 + REQUEST_WINDOW_MS + 1),
            Err(RequestError::Expired)
        );
        let mut tampered = req.clone();
        tampered.payload = tampered.payload.replace("true", "false");
        assert_eq!(
            tampered.verify("server-1", 1_000_000),
            Err(RequestError::BadSignature)
        );
        let mut bad = req.clone();
        bad.signature = "!!".into();
        assert_eq!(
            bad.verify("server-1", 1_000_000),
            Err(RequestError::SignatureEncoding)
        );
        let mut junk = req;
        junk.payload = "{}".into();
        assert!(matches!(
            junk.verify("server-1", 0),
            Err(RequestError::Payload(_))
        ));
    }

    /// A nonce is stored until its request expires: an empty one, or one of megabytes, is
    /// refused before anything is checked or kept.
    #[test]
    fn nonces_are_bounded() {
        let (req, _, log) = request(1_000_000);
        let with_nonce = |nonce: &str| {
            let mut payload: serde_json::Value = serde_json::from_str(&req.payload).unwrap();
            payload["nonce"] = nonce.into();
            let payload = payload.to_string();
            SignedRequest {
                signature: base64_encode(&log.sign(&request_message(&payload))),
                payload,
            }
        };
        for nonce in [
            String::new(),
            "x".repeat(15),
            "x".repeat(65),
            "x".repeat(1_500_000),
            "a b c d e f g h i j".into(),
        ] {
            assert_eq!(
                with_nonce(&nonce).verify("server-1", 1_000_000),
                Err(RequestError::BadNonce),
                "{} characters",
                nonce.len()
            );
        }
        for nonce in ["x".repeat(16), "f".repeat(64)] {
            assert!(with_nonce(&nonce).verify("server-1", 1_000_000).is_ok());
        }
    }

    #[test]
    fn pull_tokens() {
        let thread = ThreadId::random(Variant::Raw, &mut OsRng);
        let key = ServiceKey::random(&mut OsRng);
        let token = pull_token(&key, &thread);
        assert!(check_pull_token(&key, &thread, &token));
        assert!(!check_pull_token(
            &ServiceKey::random(&mut OsRng),
            &thread,
            &token
        ));
        assert!(!check_pull_token(&key, &thread, "nope"));
        assert_eq!(token.len(), 43);
    }
}
