//! The follower on libp2p. API requests that arrive over streams are answered by the same
//! router as HTTP (so the API, its limits and error codes are one); every record a writer
//! pushes to a public thread is gossiped on its topic ([`Node`] is the core's
//! [`Announce`]); gossip and replication hand what they receive to the core's push, with
//! their origin, and judge it by its verdicts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde_json::Value;
use threads_client::car::{write_car, CarItem};
use threads_core::addr::ThreadAddr;
use threads_core::auth::pull_token;
use threads_core::{ServiceKey, ThreadId, ThreadKey};
use threads_net::{ApiRequest, ApiResponse, Handle, Inbound, MessageId, PeerId, Verdict};
use threads_store::{Outcome, Registration};
use tokio::sync::{broadcast, mpsc, Notify, Semaphore};
use tower::ServiceExt;

use super::v1::wire::decode_pushed_car;
use super::AppState;
use crate::config::Config;
use crate::follower::reads::heads_digest;
use crate::follower::{Announce, Error, Follower, News, Origin, Verdict as RecordVerdict};

/// Inbound requests and gossip handled at once; the rest wait in the host's bounded queue.
const CONCURRENCY: usize = 64;
/// Logs of a replicated thread caught up at once.
const LOGS_AT_ONCE: usize = 4;
/// Headers an answer keeps (the rest mean nothing off HTTP).
const KEPT_HEADERS: [&str; 5] = [
    "content-type",
    "retry-after",
    "x-threads-cursor",
    "x-threads-more",
    "x-threads-count",
];

/// Most records in one gossip message: well under any follower's `limits.max_batch_records`,
/// since a receiver refuses a larger batch as malformed.
const MESSAGE_RECORDS: usize = 100;
/// Batches of pushed records waiting to be gossiped; beyond this, gossip is skipped (readers
/// that miss a record pull it).
const PUBLISH_QUEUE: usize = 1024;

/// The libp2p side of the server.
pub struct Node {
    pub host: Handle,
    inbound: Mutex<Option<mpsc::Receiver<Inbound>>>,
    news: mpsc::Sender<News>,
    /// Threads whose topic this server is subscribed to.
    gossiped: Mutex<HashSet<ThreadId>>,
    replicas: HashMap<ThreadId, Arc<Replica>>,
}

/// A thread followed from another follower.
struct Replica {
    thread: ThreadId,
    source: threads_net::Multiaddr,
    follow_key: ServiceKey,
    /// Woken when gossip shows a gap: something was missed, compare heads now.
    wake: Notify,
}

impl Node {
    /// Starts the host. Nothing is served until [`spawn`].
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        // With Postgres nothing else may have made the data directory yet.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let key = threads_net::load_or_create_key(&config.data_dir.join("p2p.key"))?;
        let host_config = config.p2p.host_config(config.limits.max_body_bytes);
        let (host, inbound) = threads_net::host::start(key, host_config)?;
        host.wait_listening().await?;
        let mut replicas = HashMap::new();
        for replica in &config.p2p.replicate {
            let addr: ThreadAddr = replica.from.parse().expect("validated");
            let key: ThreadKey = replica.follow_key.parse().expect("validated");
            replicas.insert(
                addr.thread().clone(),
                Arc::new(Replica {
                    thread: addr.thread().clone(),
                    source: addr.peer().clone(),
                    follow_key: key.service().clone(),
                    wake: Notify::new(),
                }),
            );
        }
        let (news, queue) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(publish_news(
            host.clone(),
            queue,
            config.p2p.max_message_bytes,
        ));
        Ok(Self {
            host,
            news,
            inbound: Mutex::new(Some(inbound)),
            gossiped: Default::default(),
            replicas,
        })
    }
}

/// Serves the API and gossip, subscribes to every thread held, and starts replicas.
pub async fn spawn(state: AppState) -> anyhow::Result<()> {
    let Some(node) = &state.p2p else {
        return Ok(());
    };
    let inbound = node
        .inbound
        .lock()
        .unwrap()
        .take()
        .context("p2p already served")?;
    tokio::spawn(serve_inbound(state.clone(), inbound));
    let mut after = None;
    loop {
        let (threads, next) = state.follower.threads(after.as_ref(), Some(1000)).await?;
        for thread in &threads {
            node.topic(&thread.id, true).await;
        }
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    tokio::spawn(gossip_others(state.clone()));
    if !state.config().runs(crate::config::Role::Replication) {
        return Ok(());
    }
    for replica in node.replicas.values() {
        tokio::spawn(replicate(state.clone(), replica.clone()));
    }
    Ok(())
}

/// Most records of one change read to gossip them (a larger change is left to pulls, as a
/// full publish queue is).
const OTHERS_BATCH: u64 = 1000;

/// Records that other processes sharing the database stored: this host joins their public
/// threads' topics and gossips them too, so a peer connected to any one process hears every
/// public thread, wherever it was registered or pushed. (What this process stores from its
/// writers it announces itself; a peer that hears a record from both processes stores it
/// once.)
async fn gossip_others(state: AppState) {
    let mut changes = state.follower.changes();
    loop {
        let change = match changes.recv().await {
            Ok(change) => change,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if change.here || change.seq <= change.after {
            continue;
        }
        let Ok(info) = state.follower.known_thread(&change.thread).await else {
            continue;
        };
        if !info.public {
            continue;
        }
        let announce: &dyn Announce = state.p2p.as_deref().expect("p2p is on");
        announce.topic(&change.thread, true).await;
        let limit = (change.seq - change.after).min(OTHERS_BATCH) as u32;
        match state
            .follower
            .records(&change.thread, None, change.after, limit)
            .await
        {
            Ok(records) => announce.records(
                records
                    .into_iter()
                    .map(|r| (r.thread, r.log, r.blocks))
                    .collect(),
            ),
            Err(error) => {
                tracing::warn!(thread = %change.thread, %error, "reading records to gossip failed")
            }
        }
    }
}

impl Announce for Node {
    fn records(&self, news: News) {
        if self.news.try_send(news).is_err() {
            metrics::counter!("threads_gossip_skipped_total").increment(1);
        }
    }

    /// Subscribes to a public thread's topic, or leaves a private (or deleted) thread's. A
    /// private thread is never gossiped: anyone may subscribe to a topic, and its records are
    /// for holders of its pull token only.
    fn topic<'a>(&'a self, thread: &'a ThreadId, public: bool) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let changed = {
                let mut gossiped = self.gossiped.lock().unwrap();
                if public {
                    gossiped.insert(thread.clone())
                } else {
                    gossiped.remove(thread)
                }
            };
            match (changed, public) {
                (true, true) => {
                    let _ = self.host.subscribe(&thread.to_string()).await;
                }
                (true, false) => {
                    let _ = self.host.unsubscribe(&thread.to_string()).await;
                }
                _ => {}
            }
        })
    }
}

/// Publishes queued records on their threads' topics, as CARs of at most `max_bytes` and
/// [`MESSAGE_RECORDS`] records (a record too large for any message is left to pulls). The CARs
/// carry no seq or counter, which are this server's own: the same records make the same
/// message at every follower.
async fn publish_news(host: Handle, mut queue: mpsc::Receiver<News>, max_bytes: usize) {
    while let Some(news) = queue.recv().await {
        let mut start = 0;
        while start < news.len() {
            let thread = &news[start].0;
            let (mut end, mut size) = (start, 0);
            while end < news.len() && &news[end].0 == thread {
                // Node bytes, plus room for the entry block and CIDs.
                let more = news[end].2.byte_len() + 512;
                if end > start && (size + more > max_bytes || end - start == MESSAGE_RECORDS) {
                    break;
                }
                size += more;
                end += 1;
            }
            let items = news[start..end]
                .iter()
                .map(|(thread, log, blocks)| CarItem::new(log, thread, blocks));
            let car = write_car(items).await;
            if car.len() <= max_bytes {
                if let Err(error) = host.publish(&thread.to_string(), car).await {
                    tracing::warn!(%thread, %error, "gossip publish failed");
                }
            }
            start = end;
        }
    }
}

async fn serve_inbound(state: AppState, mut inbound: mpsc::Receiver<Inbound>) {
    let api = super::p2p_app(state.clone());
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    while let Some(item) = inbound.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (state, api) = (state.clone(), api.clone());
        tokio::spawn(async move {
            match item {
                Inbound::Request {
                    peer,
                    request,
                    reply,
                } => {
                    let response = answer(&api, request).await;
                    // Malformed or forged content counts against the peer that sent it.
                    if matches!(response.status, 400 | 422) {
                        let _ = node(&state).strike(peer).await;
                    }
                    reply.send(response);
                }
                Inbound::Gossip {
                    peer,
                    id,
                    topic,
                    data,
                } => take_gossip(&state, peer, id, &topic, data).await,
            }
            drop(slot);
        });
    }
}

/// The most records one message or page may carry: as many as one push.
fn max_batch(state: &AppState) -> usize {
    state.config().limits.max_batch_records
}

fn node(state: &AppState) -> &Handle {
    &state.p2p.as_ref().expect("a node").host
}

/// Answers one request with the router, as HTTP would.
pub async fn answer(api: &Router, request: ApiRequest) -> ApiResponse {
    let method = match request.method.as_str() {
        "GET" => Method::GET,
        "POST" => Method::POST,
        other => {
            return ApiResponse::error(
                405,
                "method_not_allowed",
                &format!("{other}: use GET or POST"),
            )
        }
    };
    if !request.path.starts_with("/v1/") {
        return ApiResponse::error(404, "not_found", "route not found");
    }
    let mut builder = Request::builder().method(method).uri(&request.path);
    if let Some(token) = &request.token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(content_type) = &request.content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    let Ok(http) = builder.body(Body::from(request.body)) else {
        return ApiResponse::error(400, "bad_request", "the path or a header is malformed");
    };
    let response = match api.clone().oneshot(http).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let headers = KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = parts.headers.get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_owned()))
        })
        .collect();
    match axum::body::to_bytes(body, threads_net::api::MAX_RESPONSE_BYTES as usize).await {
        Ok(body) => ApiResponse {
            status: parts.status.as_u16(),
            headers,
            body: body.to_vec(),
        },
        Err(_) => ApiResponse::error(
            500,
            "too_large",
            "the answer is too large for a stream; ask for a smaller page",
        ),
    }
}

/// The stable error code of an API answer.
fn code(response: &ApiResponse) -> String {
    serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Takes in records heard on a topic through the core's push, and judges the message: valid
/// records are passed on; forged or malformed ones, or records of another thread, cost the
/// peer that sent them; records this server does not follow, or cannot place yet, are
/// dropped (and a gap wakes the thread's replica, if it has one).
async fn take_gossip(state: &AppState, peer: PeerId, id: MessageId, topic: &str, data: Vec<u8>) {
    let verdict = match decode_pushed_car(&data, Origin::Gossip, max_batch(state)).await {
        Err(_) => Verdict::Reject,
        Ok(records) if records.iter().any(|r| r.thread.to_string() != topic) => Verdict::Reject,
        Ok(records) => {
            let thread = records.first().map(|r| r.thread.clone());
            match state.follower.push(records, Origin::Gossip).await {
                Err(Error::EmptyBatch | Error::BatchTooLarge { .. }) => Verdict::Reject,
                Err(_) => Verdict::Ignore,
                Ok(pushed) => {
                    let verdicts = || pushed.results.iter().map(|j| &j.verdict);
                    if verdicts().any(|v| matches!(v, RecordVerdict::Invalid(_))) {
                        Verdict::Reject
                    } else if pushed.first_failure().is_none() {
                        Verdict::Accept
                    } else {
                        let gap = |v: &RecordVerdict| {
                            matches!(v, RecordVerdict::Refused(Outcome::Gap { .. }))
                        };
                        // Something was missed: replicas compare heads with their source now.
                        if let Some(replica) = thread
                            .filter(|_| verdicts().any(gap))
                            .and_then(|t| state.p2p.as_ref()?.replicas.get(&t))
                        {
                            replica.wake.notify_one();
                        }
                        Verdict::Ignore
                    }
                }
            }
        }
    };
    metrics::counter!("threads_gossip_received_total", "verdict" => match verdict {
        Verdict::Accept => "accept",
        Verdict::Reject => "reject",
        Verdict::Ignore => "ignore",
    })
    .increment(1);
    let _ = node(state).report(id, peer, verdict).await;
}

/// Keeps a replicated thread in step with its source: compares heads now, whenever gossip
/// shows a gap, and every `p2p.sync_interval_secs`. Between comparisons, a public thread's
/// gossip brings what is pushed to the source.
async fn replicate(state: AppState, replica: Arc<Replica>) {
    let interval = Duration::from_secs(state.config().p2p.sync_interval_secs);
    let shutdown = state.follower.shutdown().clone();
    // Nothing is owed from before this process started: a replica that never syncs raises
    // the alert as one that stopped would.
    let started = crate::follower::now_ms() as f64 / 1000.0;
    let thread = replica.thread.to_string();
    metrics::gauge!("threads_replication_last_success_timestamp_seconds", "thread" => thread.clone())
        .set(started);
    // Processes sharing the database take turns by lease: one replicates the thread, the
    // others take over when its lease runs out (it stopped renewing: it stopped).
    let lease = format!("replicate:{thread}");
    let lease_ms = (interval.as_millis() as i64 * 3).max(3_000);
    loop {
        let held = state.follower.lease(&lease, lease_ms).await;
        let holds = matches!(held, Ok(true));
        metrics::gauge!("threads_replication_held", "thread" => thread.clone()).set(if holds {
            1.0
        } else {
            0.0
        });
        let outcome = match held {
            Ok(true) => sync(&state, &replica).await,
            // Another process replicates it, and says how that goes in its own metrics.
            Ok(false) => Ok(0),
            Err(error) => Err(error.into()),
        };
        match outcome {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(%thread, records = n, "replicated");
                }
                let now = crate::follower::now_ms() as f64 / 1000.0;
                metrics::gauge!("threads_replication_last_success_timestamp_seconds", "thread" => thread.clone())
                    .set(now);
            }
            Err(error) => {
                tracing::warn!(%thread, error = format!("{error:#}"), "replication failed");
                metrics::counter!("threads_replication_failures_total", "thread" => thread.clone())
                    .increment(1);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = replica.wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One comparison with the source: nothing more than a digest when in step; otherwise each
/// log the source is ahead on is pulled from where this server is, and pushed as a replica's.
/// Returns the records taken in.
async fn sync(state: &AppState, replica: &Replica) -> anyhow::Result<u64> {
    let host = node(state);
    let follower = &state.follower;
    let thread = &replica.thread;
    let peer = host.dial(replica.source.clone()).await?;
    let token = Some(pull_token(&replica.follow_key, thread));
    let local = follower.heads(thread).await?;
    let ask = |path: String| host.request(peer, ApiRequest::get(path).with_token(token.clone()));
    let answer_of = ask(format!(
        "/v1/threads/{thread}?digest={}",
        heads_digest(&local)
    ))
    .await?;
    if !answer_of.is_success() {
        bail!(
            "the source answered {} {}",
            answer_of.status,
            code(&answer_of)
        );
    }
    let remote: Value = serde_json::from_slice(&answer_of.body)?;
    if remote["unchanged"] == true {
        return Ok(0);
    }
    let public = remote["public"].as_bool().unwrap_or(false);
    if let Some(node) = &state.p2p {
        node.topic(thread, public).await;
    }
    let mut behind = Vec::new();
    for log in remote["logs"].as_array().into_iter().flatten() {
        let id: threads_core::LogId = log["log"].as_str().unwrap_or("").parse()?;
        let theirs = log["head"]["counter"].as_u64().unwrap_or(0);
        let ours = match local.iter().find(|l| l.log == id) {
            Some(l) => l.head.map_or(0, |h| h.counter),
            None => {
                // The source vouches only for the log's existence; every record is still
                // verified against the log's key here.
                let addrs = log["addrs"].as_array().into_iter().flatten();
                let registration = Registration {
                    thread: thread.clone(),
                    log: id.clone(),
                    follow_key: replica.follow_key.clone(),
                    addrs: addrs
                        .filter_map(|a| a.as_str().map(str::to_owned))
                        .collect(),
                    public,
                };
                follower.adopt_log(&registration).await?;
                0
            }
        };
        if ours < theirs {
            behind.push((id, ours, theirs));
        }
    }
    // A few logs at once: one log's records are verified while another's are stored.
    let pulls = behind.into_iter().map(|(id, ours, theirs)| {
        let path = format!("/v1/threads/{thread}/logs/{id}/records");
        catch_up_log(host, follower, peer, token.clone(), path, ours, theirs)
    });
    let taken: Vec<anyhow::Result<u64>> = futures_util::stream::iter(pulls)
        .buffer_unordered(LOGS_AT_ONCE)
        .collect()
        .await;
    taken.into_iter().sum()
}

/// Takes a log from counter `ours` to `theirs`: the next page is on its way while one is
/// stored.
async fn catch_up_log(
    host: &Handle,
    follower: &Follower,
    peer: PeerId,
    token: Option<String>,
    path: String,
    mut ours: u64,
    theirs: u64,
) -> anyhow::Result<u64> {
    let start = ours;
    let (pages, mut arrived) = mpsc::channel(2);
    let fetcher = tokio::spawn(fetch_pages(
        host.clone(),
        peer,
        token,
        path,
        ours,
        theirs,
        pages,
    ));
    while let Some(page) = arrived.recv().await {
        let (next, car) = page?;
        let refused = match decode_pushed_car(
            &car,
            Origin::Replica,
            follower.config().limits.max_batch_records,
        )
        .await
        {
            Ok(records) => match follower.push(records, Origin::Replica).await {
                Ok(pushed) => pushed.first_failure().and_then(|v| v.code()),
                Err(e) => Some(e.code()),
            },
            Err(e) => Some(e.code),
        };
        if let Some(code) = refused {
            fetcher.abort();
            bail!("records from the source were refused: {code}");
        }
        ours = next;
    }
    Ok(ours - start)
}

/// Pulls a log's records after counter `after` up to `until`, page by page (CARs), into
/// `pages` with the counter each page ends at.
async fn fetch_pages(
    host: Handle,
    peer: PeerId,
    token: Option<String>,
    path: String,
    mut after: u64,
    until: u64,
    pages: mpsc::Sender<anyhow::Result<(u64, Vec<u8>)>>,
) {
    while after < until {
        let request = ApiRequest::get(format!("{path}?after={after}&format=car"));
        let page = match host.request(peer, request.with_token(token.clone())).await {
            Ok(page) if page.status == 204 => return,
            Ok(page) if page.is_success() => page,
            Ok(page) => {
                let refused =
                    anyhow::anyhow!("the source answered {} {}", page.status, code(&page));
                let _ = pages.send(Err(refused)).await;
                return;
            }
            Err(e) => {
                let _ = pages.send(Err(e.into())).await;
                return;
            }
        };
        let Some(next) = page
            .header("x-threads-cursor")
            .and_then(|c| c.parse::<u64>().ok())
            .filter(|next| *next > after)
        else {
            let _ = pages
                .send(Err(anyhow::anyhow!("a page without a cursor")))
                .await;
            return;
        };
        if pages.send(Ok((next, page.body))).await.is_err() {
            return;
        }
        after = next;
    }
}
