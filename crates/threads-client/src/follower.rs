//! An HTTP client of one follower server: register a log, read a log's head there, push
//! records, pull a thread's pages. Every refusal comes back as [`Error::Server`] with the
//! server's stable code.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand_core::OsRng;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use threads_core::auth::{pull_token, Action, SignedRequest};
use threads_core::{Head, Keypair, LogId, ServiceKey, ThreadId, UnverifiedRecord};

use crate::{now_ms, Error, Result};

/// A follower server at a base URL.
#[derive(Debug, Clone)]
pub struct FollowerClient {
    url: String,
    http: reqwest::Client,
}

/// A record as the follower's JSON carries it.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireRecord {
    pub thread: String,
    pub log: String,
    pub record: String,
    pub event: String,
    pub header: String,
    pub body: String,
}

impl WireRecord {
    pub fn new(thread: &ThreadId, log: &LogId, b: &UnverifiedRecord) -> Self {
        Self {
            thread: thread.to_string(),
            log: log.to_string(),
            record: B64.encode(&b.record),
            event: B64.encode(&b.event),
            header: B64.encode(&b.header),
            body: B64.encode(&b.body),
        }
    }

    /// The record's nodes; nothing is verified yet.
    pub fn blocks(&self) -> Result<UnverifiedRecord> {
        let bytes = |what: &str, text: &str| {
            B64.decode(text)
                .map_err(|_| Error::Protocol(format!("a pulled record has a bad {what}")))
        };
        Ok(UnverifiedRecord {
            record: bytes("record", &self.record)?,
            event: bytes("event", &self.event)?,
            header: bytes("header", &self.header)?,
            body: bytes("body", &self.body)?,
        })
    }
}

/// A message a follower pushes over WebSocket.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PushedMessage {
    Subscribed {},
    Record {
        #[serde(flatten)]
        record: Box<WireRecord>,
        /// The thread cursor just after this record.
        cursor: String,
    },
    Error {
        code: String,
        #[serde(default)]
        detail: String,
    },
    #[serde(other)]
    Other,
}

/// One page of a thread, in arrival order.
#[derive(Debug, Deserialize)]
pub struct Page {
    pub records: Vec<WireRecord>,
    pub cursor: String,
    pub more: bool,
}

/// What the follower said of one pushed record.
#[derive(Debug, Clone, Deserialize)]
pub struct PushResult {
    pub outcome: String,
    #[serde(default)]
    pub head: Option<HeadJson>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HeadJson {
    pub counter: u64,
}

impl FollowerClient {
    pub fn new(url: &str) -> Result<Self> {
        let url = url.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&url).map_err(|e| Error::BadUrl(format!("{url}: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| Error::Network(e.to_string()))?;
        Ok(Self { url, http })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a request and returns its JSON body, or the server's refusal.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<(StatusCode, Value)> {
        let response = request
            .send()
            .await
            .map_err(|e| Error::Network(format!("{}: {e}", self.url)))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    fn refusal(status: StatusCode, body: &Value) -> Error {
        Error::Server {
            status: status.as_u16(),
            code: body["code"].as_str().unwrap_or("unknown").to_owned(),
            detail: body["detail"].as_str().unwrap_or("").to_owned(),
        }
    }

    /// The server's identity, which signed requests must name.
    pub async fn server_id(&self) -> Result<String> {
        let (status, body) = self
            .call(self.http.get(format!("{}/v1/server", self.url)))
            .await?;
        match body["server_id"].as_str() {
            Some(id) if status.is_success() => Ok(id.to_owned()),
            _ => Err(Self::refusal(status, &body)),
        }
    }

    /// Sends a request signed by the log key.
    pub async fn signed(
        &self,
        thread: &ThreadId,
        log: &Keypair,
        action: Action,
        token: Option<&str>,
    ) -> Result<()> {
        let server = self.server_id().await?;
        let request = SignedRequest::sign(&server, thread, log, action, now_ms(), &mut OsRng);
        let mut call = self
            .http
            .post(format!("{}/v1/registrations", self.url))
            .json(&request);
        if let Some(token) = token {
            call = call.bearer_auth(token);
        }
        let (status, body) = self.call(call).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Self::refusal(status, &body))
        }
    }

    /// The head of a log at this server: `None` if it holds no record of it yet.
    pub async fn head(
        &self,
        thread: &ThreadId,
        log: &LogId,
        follow: &ServiceKey,
    ) -> Result<Option<Head>> {
        let (status, body) = self
            .call(
                self.http
                    .get(format!("{}/v1/threads/{thread}/logs/{log}", self.url))
                    .bearer_auth(pull_token(follow, thread)),
            )
            .await?;
        if !status.is_success() {
            return Err(Self::refusal(status, &body));
        }
        let head = &body["head"];
        if head.is_null() {
            return Ok(None);
        }
        let cid = head["cid"]
            .as_str()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Error::Protocol("the server's head has no CID".into()))?;
        let counter = head["counter"]
            .as_u64()
            .ok_or_else(|| Error::Protocol("the server's head has no counter".into()))?;
        Ok(Some(Head { cid, counter }))
    }

    /// Pushes a batch; one result per record, in order. A batch the server refuses as a whole
    /// (too large, malformed) is an error.
    pub async fn push(&self, records: &[WireRecord]) -> Result<Vec<PushResult>> {
        let (status, body) = self
            .call(
                self.http
                    .post(format!("{}/v1/records", self.url))
                    .json(&serde_json::json!({ "records": records })),
            )
            .await?;
        match body.get("results") {
            Some(results) => serde_json::from_value(results.clone())
                .map_err(|e| Error::Protocol(format!("push results: {e}"))),
            None => Err(Self::refusal(status, &body)),
        }
    }

    /// One page of a thread after `cursor` (empty: from the start).
    pub async fn page(
        &self,
        thread: &ThreadId,
        follow: &ServiceKey,
        cursor: &str,
        limit: u32,
    ) -> Result<Page> {
        let response = self
            .http
            .get(format!("{}/v1/threads/{thread}/records", self.url))
            .query(&[
                ("after", cursor),
                ("limit", &limit.to_string()),
                ("format", "json"),
            ])
            // Private threads need it; public ones ignore it. Derived from the follow key,
            // so it reveals no key.
            .bearer_auth(pull_token(follow, thread))
            .send()
            .await
            .map_err(|e| Error::Network(format!("{}: {e}", self.url)))?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            return Err(Self::refusal(status, &body));
        }
        response
            .json()
            .await
            .map_err(|e| Error::Protocol(format!("a page from {}: {e}", self.url)))
    }
}
