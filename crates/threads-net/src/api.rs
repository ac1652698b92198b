//! The follower's HTTP API carried on libp2p streams (`/threads/api/1.0.0`): a request names a
//! method and a path as over HTTP, so a server answers both transports with one code path, and
//! a client speaks to a follower the same way whichever transport reaches it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The request-response protocol, CBOR on the wire.
pub const PROTOCOL: &str = "/threads/api/1.0.0";
/// Largest answer a peer reads by default, and so the most a server should send.
pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// One API request: what an HTTP request would carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// Path and query, e.g. `/v1/threads/bafk.../records?after=12`.
    pub path: String,
    /// A bearer token (pull or registration token), as `Authorization: Bearer` carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl ApiRequest {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: "GET".into(),
            path: path.into(),
            token: None,
            content_type: None,
            body: Vec::new(),
        }
    }

    pub fn post(path: impl Into<String>, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            method: "POST".into(),
            path: path.into(),
            token: None,
            content_type: Some(content_type.into()),
            body,
        }
    }

    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }
}

/// One API response: status, the headers that matter (content type, page cursors), body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiResponse {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl ApiResponse {
    /// An error with the API's JSON body `{"code", "detail"}`.
    pub fn error(status: u16, code: &str, detail: &str) -> Self {
        let body = format!(
            "{{\"code\":{},\"detail\":{}}}",
            json_string(code),
            json_string(detail)
        );
        Self {
            status,
            headers: BTreeMap::from([("content-type".into(), "application/json".into())]),
            body: body.into_bytes(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_the_api_json() {
        let e = ApiResponse::error(429, "rate_limited", "slow \"down\"\n");
        assert_eq!(
            std::str::from_utf8(&e.body).unwrap(),
            r#"{"code":"rate_limited","detail":"slow \"down\"\u000a"}"#
        );
        assert!(!e.is_success());
    }
}
