//! A client of one follower server, over HTTP or libp2p: register a log, read a log's head
//! there, push records, pull a thread's pages. A follower is named by a base URL
//! (`https://...`) or a multiaddr ending in its peer ID (`/ip4/.../p2p/12D3KooW...`); both
//! carry the same API requests. Every refusal comes back as [`Error::Server`] with the server's
//! stable code.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand_core::OsRng;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use threads_core::auth::{pull_token, Action, SignedRequest};
use threads_core::{Cid, Head, Keypair, LogId, ServiceKey, ThreadId, UnverifiedRecord};
use threads_net::{ApiRequest, ApiResponse};
use tokio::sync::{mpsc, Notify};

use crate::{now_ms, Error, Result};

/// A follower server at a base URL or a multiaddr.
#[derive(Debug, Clone)]
pub struct FollowerClient {
    url: String,
    transport: Transport,
}

#[derive(Debug, Clone)]
enum Transport {
    Http(reqwest::Client),
    P2p(threads_net::Multiaddr),
}

/// This process's libp2p host, made on first use (it listens nowhere: it only asks, and hears
/// the gossip of the threads it tails). A host whose runtime has ended is replaced.
async fn p2p_host() -> Result<threads_net::Handle> {
    static HOST: std::sync::Mutex<Option<threads_net::Handle>> = std::sync::Mutex::new(None);
    let mut host = HOST.lock().unwrap();
    if let Some(handle) = host.as_ref().filter(|h| h.is_running()) {
        return Ok(handle.clone());
    }
    let config = threads_net::Config {
        listen: Vec::new(),
        ..threads_net::Config::default()
    };
    let (handle, inbound) =
        threads_net::host::start(threads_net::Keypair::generate_ed25519(), config)
            .map_err(|e| Error::Network(e.to_string()))?;
    tokio::spawn(hear(handle.clone(), inbound));
    *host = Some(handle.clone());
    Ok(handle)
}

/// Topics this process listens to, each with what wakes its tail.
fn heard() -> &'static std::sync::Mutex<HashMap<String, Arc<Notify>>> {
    static HEARD: std::sync::OnceLock<std::sync::Mutex<HashMap<String, Arc<Notify>>>> =
        std::sync::OnceLock::new();
    HEARD.get_or_init(Default::default)
}

/// A client answers no requests, and passes no gossip on: each message only wakes the tail of
/// its thread, which then pulls (and verifies) what is new.
async fn hear(host: threads_net::Handle, mut inbound: mpsc::Receiver<threads_net::Inbound>) {
    while let Some(item) = inbound.recv().await {
        match item {
            threads_net::Inbound::Request { reply, .. } => reply.send(ApiResponse::error(
                503,
                "not_served",
                "a client answers no requests",
            )),
            threads_net::Inbound::Gossip {
                peer, id, topic, ..
            } => {
                if let Some(wake) = heard().lock().unwrap().get(&topic) {
                    wake.notify_one();
                }
                let _ = host.report(id, peer, threads_net::Verdict::Ignore).await;
            }
        }
    }
}

const JSON: &str = "application/json";

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

    /// The record as a page carries it, IDs parsed and its CID worked out.
    pub fn pulled(&self) -> Result<PulledRecord> {
        let bad = |what: &str| Error::Protocol(format!("a pushed record has a bad {what}"));
        let thread: ThreadId = self.thread.parse().map_err(|_| bad("thread ID"))?;
        let log: LogId = self.log.parse().map_err(|_| bad("log ID"))?;
        let blocks = self.blocks()?;
        Ok(PulledRecord {
            thread: thread.as_bytes().to_vec(),
            log: log.to_bytes(),
            cid: threads_core::cid_of(&blocks.record),
            record: blocks.record,
            event: blocks.event,
            header: blocks.header,
            body: blocks.body,
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

/// One page of a thread, in arrival order, as a pull asks for it: DAG-CBOR, whose node bytes
/// need no base64 and whose text no JSON parse.
#[derive(Debug, Deserialize)]
pub struct Page {
    pub records: Vec<PulledRecord>,
    pub cursor: String,
    pub more: bool,
}

/// A record in a DAG-CBOR page: IDs and nodes as bytes, nothing verified yet. (The page also
/// carries each record's sequence number, counter and arrival time, which a pull does not use.)
#[derive(Debug, Deserialize)]
pub struct PulledRecord {
    #[serde(with = "serde_bytes")]
    pub thread: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub log: Vec<u8>,
    /// The record's CID as the follower stored it: what a refusal names.
    pub cid: Cid,
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub event: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub header: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// Writes a page as [`Page`] reads it: DAG-CBOR, each record's IDs and nodes as bytes. Written
/// straight into one buffer (keys in canonical order by hand): `serde_ipld_dagcbor` copies every
/// map entry to sort it, which for a page of nodes is most of the cost.
pub fn page_cbor(records: &[threads_store::StoredRecord], cursor: &str, more: bool) -> Vec<u8> {
    let size: usize = records.iter().map(|r| r.byte_len() + 200).sum();
    let mut w = threads_core::CborWriter::with_capacity(size + cursor.len() + 32);
    // Length first, then bytewise: "more", "cursor", "records".
    w.map(3);
    w.key("more");
    w.bool(more);
    w.key("cursor");
    w.text(cursor);
    w.key("records");
    w.list(records.len() as u64);
    for r in records {
        let b = &r.blocks;
        w.map(10);
        w.key("cid");
        w.link(&r.cid);
        w.key("log");
        w.bytes(&r.log.to_bytes());
        w.key("seq");
        w.uint(r.seq);
        w.key("body");
        w.bytes(&b.body);
        w.key("event");
        w.bytes(&b.event);
        w.key("header");
        w.bytes(&b.header);
        w.key("record");
        w.bytes(&b.record);
        w.key("thread");
        w.bytes(r.thread.as_bytes());
        w.key("counter");
        w.uint(r.counter);
        w.key("arrived_ms");
        w.int(r.arrived_ms);
    }
    w.into_bytes()
}

impl PulledRecord {
    /// The record's nodes, moved out.
    pub fn into_blocks(self) -> UnverifiedRecord {
        UnverifiedRecord {
            record: self.record,
            event: self.event,
            header: self.header,
            body: self.body,
        }
    }
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
        if url.starts_with('/') {
            let addr: threads_net::Multiaddr = url
                .parse()
                .map_err(|e| Error::BadUrl(format!("{url}: {e}")))?;
            if !matches!(addr.iter().last(), Some(threads_net::Protocol::P2p(_))) {
                return Err(Error::BadUrl(format!(
                    "{url}: a follower's multiaddr ends in /p2p/<peer id>"
                )));
            }
            return Ok(Self {
                url: addr.to_string(),
                transport: Transport::P2p(addr),
            });
        }
        let url = url.trim_end_matches('/').to_owned();
        reqwest::Url::parse(&url).map_err(|e| Error::BadUrl(format!("{url}: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| Error::Network(e.to_string()))?;
        Ok(Self {
            url,
            transport: Transport::Http(http),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the follower is reached over libp2p (it then pushes nothing live: tails listen
    /// to the thread's gossip, and pull).
    pub fn is_p2p(&self) -> bool {
        matches!(self.transport, Transport::P2p(_))
    }

    /// Over libp2p: waits until the follower gossips something of `thread` (a public thread's
    /// news) or `at_most` has passed. The first call subscribes; news heard between calls
    /// ends the next wait at once.
    pub async fn wait_for_news(
        &self,
        thread: &ThreadId,
        at_most: std::time::Duration,
    ) -> Result<()> {
        let Transport::P2p(addr) = &self.transport else {
            tokio::time::sleep(at_most).await;
            return Ok(());
        };
        let host = p2p_host().await?;
        let unreachable = |e: threads_net::Error| Error::Network(format!("{}: {e}", self.url));
        host.dial(addr.clone()).await.map_err(unreachable)?;
        let topic = thread.to_string();
        let wake = heard()
            .lock()
            .unwrap()
            .entry(topic.clone())
            .or_default()
            .clone();
        host.subscribe(&topic).await.map_err(unreachable)?;
        let _ = tokio::time::timeout(at_most, wake.notified()).await;
        Ok(())
    }

    /// Sends one API request over whichever transport reaches the follower.
    pub async fn send(&self, request: ApiRequest) -> Result<ApiResponse> {
        let unreachable = |e: &dyn std::fmt::Display| Error::Network(format!("{}: {e}", self.url));
        match &self.transport {
            Transport::P2p(addr) => {
                let host = p2p_host().await?;
                let peer = host.dial(addr.clone()).await.map_err(|e| unreachable(&e))?;
                host.request(peer, request)
                    .await
                    .map_err(|e| unreachable(&e))
            }
            Transport::Http(http) => {
                let url = format!("{}{}", self.url, request.path);
                let mut call = match request.method.as_str() {
                    "POST" => http.post(url).body(request.body),
                    _ => http.get(url),
                };
                if let Some(token) = &request.token {
                    call = call.bearer_auth(token);
                }
                if let Some(content_type) = &request.content_type {
                    call = call.header(reqwest::header::CONTENT_TYPE, content_type);
                }
                let response = call.send().await.map_err(|e| unreachable(&e))?;
                let status = response.status().as_u16();
                let headers = response
                    .headers()
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect();
                let body = response.bytes().await.map_err(|e| unreachable(&e))?;
                Ok(ApiResponse {
                    status,
                    headers,
                    body: body.to_vec(),
                })
            }
        }
    }

    /// Sends a request and returns its JSON body, or the server's refusal.
    async fn call(&self, request: ApiRequest) -> Result<(StatusCode, Value)> {
        let response = self.send(request).await?;
        let status = StatusCode::from_u16(response.status)
            .map_err(|_| Error::Protocol(format!("{}: a bad status", self.url)))?;
        let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
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
        let (status, body) = self.call(ApiRequest::get("/v1/server")).await?;
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
        let body = serde_json::to_vec(&request).expect("requests serialize");
        let call =
            ApiRequest::post("/v1/registrations", JSON, body).with_token(token.map(str::to_owned));
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
        let call = ApiRequest::get(format!("/v1/threads/{thread}/logs/{log}"))
            .with_token(Some(pull_token(follow, thread)));
        let (status, body) = self.call(call).await?;
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
        let body = serde_json::to_vec(&serde_json::json!({ "records": records }))
            .expect("records serialize");
        let (status, body) = self
            .call(ApiRequest::post("/v1/records", JSON, body))
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
        // Private threads need the pull token; public ones ignore it. Derived from the follow
        // key, so it reveals no key. Cursors are URL-safe already.
        let call = ApiRequest::get(format!(
            "/v1/threads/{thread}/records?after={cursor}&limit={limit}&format=dag-cbor"
        ))
        .with_token(Some(pull_token(follow, thread)));
        let response = self.send(call).await?;
        if !(200..300).contains(&response.status) {
            let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let body: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
            return Err(Self::refusal(status, &body));
        }
        serde_ipld_dagcbor::from_slice(&response.body)
            .map_err(|e| Error::Protocol(format!("a page from {}: {e}", self.url)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ipld_core::ipld::Ipld;
    use threads_core::{cid_of, Variant};
    use threads_store::{NodeCids, StoredRecord};

    use super::*;

    /// The page writer's bytes are `serde_ipld_dagcbor`'s for the same page, and read back.
    #[test]
    fn pages_are_canonical_dag_cbor() {
        let thread = ThreadId::random(Variant::AccessControlled, &mut OsRng);
        let log = LogId::from(Keypair::generate(&mut OsRng).public());
        let node = |n: usize| (0..n).map(|i| i as u8).collect::<Vec<u8>>();
        let records: Vec<StoredRecord> = [(1, 1, -5), (300, 70_000, 1_764_000_000_000)]
            .into_iter()
            .map(|(seq, counter, arrived_ms)| StoredRecord {
                thread: thread.clone(),
                log: log.clone(),
                seq,
                counter,
                cid: cid_of(&node(seq as usize)),
                node_cids: NodeCids {
                    event: cid_of(b"e"),
                    header: cid_of(b"h"),
                    body: cid_of(b"b"),
                },
                arrived_ms,
                blocks: UnverifiedRecord {
                    record: node(30),
                    event: node(0),
                    header: node(24),
                    body: node(70_000),
                },
            })
            .collect();
        let cursor = "AAAB".repeat(10);
        for more in [false, true] {
            let list = records
                .iter()
                .map(|r| {
                    let b = &r.blocks;
                    Ipld::Map(BTreeMap::from([
                        ("thread".into(), Ipld::Bytes(r.thread.as_bytes().to_vec())),
                        ("log".into(), Ipld::Bytes(r.log.to_bytes())),
                        ("seq".into(), Ipld::Integer(r.seq.into())),
                        ("counter".into(), Ipld::Integer(r.counter.into())),
                        ("cid".into(), Ipld::Link(r.cid)),
                        ("arrived_ms".into(), Ipld::Integer(r.arrived_ms.into())),
                        ("record".into(), Ipld::Bytes(b.record.clone())),
                        ("event".into(), Ipld::Bytes(b.event.clone())),
                        ("header".into(), Ipld::Bytes(b.header.clone())),
                        ("body".into(), Ipld::Bytes(b.body.clone())),
                    ]))
                })
                .collect();
            let page = Ipld::Map(BTreeMap::from([
                ("records".into(), Ipld::List(list)),
                ("cursor".into(), Ipld::String(cursor.clone())),
                ("more".into(), Ipld::Bool(more)),
            ]));
            let written = page_cbor(&records, &cursor, more);
            assert_eq!(written, serde_ipld_dagcbor::to_vec(&page).unwrap());
            let read: Page = serde_ipld_dagcbor::from_slice(&written).unwrap();
            assert_eq!((read.cursor.as_str(), read.more), (cursor.as_str(), more));
            assert_eq!(read.records[1].cid, records[1].cid);
            assert_eq!(read.records[1].log, log.to_bytes());
            let blocks = read.records.into_iter().nth(1).unwrap().into_blocks();
            assert_eq!(blocks, records[1].blocks);
        }
    }
}
