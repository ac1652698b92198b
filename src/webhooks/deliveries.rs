//! Webhook deliveries, as the Standard Webhooks specification describes them.
//!
//! Each webhook has a cursor in its thread's arrival order: the stored records past it are its
//! pending work, so storing a record writes nothing more and loses nothing. Each process with
//! the webhooks role (and each bot) runs one worker: it leases cursors (no other worker, in
//! any process, takes them meanwhile), sends the records after them with bounded concurrency,
//! and moves each cursor in the transaction that writes what was sent as delivery rows. A failure is retried from its
//! row after a doubling, jittered pause (or the receiver's longer `Retry-After`), leased the
//! same way; replays and test events are rows too. A webhook failing too often in a row is
//! disabled.
//!
//! Every request carries `webhook-id` (stable across retries), `webhook-timestamp` and
//! `webhook-signature: v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>`, so receivers verify
//! it with the Standard Webhooks libraries. Addresses on loopback, private and link-local
//! networks are refused unless the operator allows them.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde_json::json;
use sha2::Sha256;
use threads_core::ThreadId;
use threads_store::{
    Attempt, AttemptResult, CursorOutcome, Delivery, StoredRecord, Webhook, WebhookLease,
};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{now_ms, Hooks};

/// How often the worker looks for due deliveries when nothing wakes it sooner: soon while
/// there is work, rarely when idle.
const POLL_BUSY: Duration = Duration::from_millis(10);
const POLL_IDLE: Duration = Duration::from_millis(250);
/// Most webhook cursors claimed at once, most records sent from one cursor, and how many
/// delivery leases a cursor's lease lasts (its records share the delivery slots).
const CURSOR_CLAIM: u32 = 32;
const CURSOR_BATCH: u32 = 128;
const CURSOR_LEASES: i64 = 2;
/// Most deliveries claimed at once.
const CLAIM_BATCH: usize = 256;
/// Most delivery outcomes written in one transaction.
const RECORD_BATCH: usize = 500;

/// A new webhook secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    format!("whsec_{}", B64.encode(bytes))
}

/// `v1,<signature>` of a message, as Standard Webhooks defines it.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = B64
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap_or_else(|_| secret.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}

/// The pause before the next attempt after `attempts` failed ones: `base · 2^(attempts-1)`
/// capped at `max`, times `jitter` (0.8–1.2, so retries of many deliveries spread out); a
/// receiver's longer `Retry-After` wins, within `max`.
pub fn retry_delay_ms(
    attempts: u32,
    base_ms: u64,
    max_ms: u64,
    retry_after_ms: Option<u64>,
    jitter: f64,
) -> u64 {
    let doubled = base_ms.saturating_mul(1u64 << attempts.saturating_sub(1).min(32));
    let delay = (doubled.min(max_ms) as f64 * jitter) as u64;
    delay.max(retry_after_ms.unwrap_or(0).min(max_ms))
}

/// Whether a webhook may be sent to this address (any, when the operator allows private ones):
/// a unicast address of the public internet. IPv6 forms that carry an IPv4 address (mapped,
/// compatible, NAT64, 6to4) are judged by that address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (18..20).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // IPv4-compatible ::a.b.c.d (deprecated, but still routed by some stacks).
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return is_public(IpAddr::V4(embedded(s[6], s[7])));
            }
            // NAT64 64:ff9b::/96 and 64:ff9b:1::/48 translate to the IPv4 address inside.
            if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
                return is_public(IpAddr::V4(embedded(s[6], s[7])));
            }
            // 6to4 2002:AABB:CCDD::/48 reaches the IPv4 address AABB:CCDD.
            if s[0] == 0x2002 {
                return is_public(IpAddr::V4(embedded(s[1], s[2])));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || v6.is_multicast()
                // Site-local fec0::/10: deprecated, private where it is still used.
                || (s[0] & 0xffc0) == 0xfec0
                // Documentation 2001:db8::/32, and discard-only 100::/64.
                || (s[0] == 0x2001 && s[1] == 0xdb8)
                || (s[0] == 0x100 && s[1..4] == [0; 3]))
        }
    }
}

/// Checks a webhook URL as given: http(s), with a host; an address literal must be public
/// (names are checked when resolved, at every delivery).
pub fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{url:?}: only http and https URLs receive webhooks"
        ));
    }
    let ip = match parsed.host() {
        None => return Err(format!("{url:?} has no host")),
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(_)) => None,
    };
    if let Some(ip) = ip.filter(|ip| !allow_private && !is_public(*ip)) {
        return Err(format!(
            "{ip} is a loopback, private or link-local address; this server does not deliver there"
        ));
    }
    Ok(parsed)
}

/// Resolves names for deliveries, keeping only public addresses: a name cannot point a
/// delivery at this server's own network (checked at connection time, so rebinding the name
/// after the subscription was made does not help).
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!(
                    "{} has no public address; this server does not deliver to private networks",
                    name.as_str()
                )
                .into());
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// This process's delivery worker, until `shutdown`.
pub(super) async fn run(hooks: Hooks, shutdown: CancellationToken) {
    let config = &hooks.0.config;
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.timeout_secs))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("threads/", env!("CARGO_PKG_VERSION")));
    if !config.allow_private_addresses {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    let sender = Sender {
        hooks: hooks.clone(),
        http: builder.build().expect("an HTTP client builds"),
        slots: Arc::new(Semaphore::new(config.concurrency)),
        pace: Arc::new(Pace::new(config.max_per_second)),
        // Long enough for a send (bounded by the timeout) and its bookkeeping; a crashed
        // worker's deliveries are taken up again once it runs out.
        lease_ms: (config.timeout_secs as i64 + 5) * 1000,
    };
    let lease_ms = sender.lease_ms;
    // A cursor's records wait for slots and for their turn too; those that would start too
    // late to end within the lease are left for the next one.
    let cursor_lease_ms = lease_ms * CURSOR_LEASES;
    // Outcomes are written in batches: one transaction for many deliveries.
    let (done, outcomes) = mpsc::channel(config.concurrency.max(CLAIM_BATCH));
    // A cursor is free again once its outcome is written: the recorder says so.
    let released = Arc::new(Notify::new());
    let recorder = tokio::spawn(record(hooks.clone(), outcomes, released.clone()));
    let mut changes = hooks.0.store.changes();
    'work: loop {
        // Claim only what can be sent now: wait for a free slot first.
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = sender.slots.clone().acquire_owned() => permit.expect("never closed"),
        };
        let now = now_ms();
        // New records: each webhook's cursor, sent by its own task.
        let leases = match hooks
            .0
            .store
            .claim_webhooks(now, cursor_lease_ms, CURSOR_CLAIM)
            .await
        {
            Ok(leases) => leases,
            Err(error) => {
                tracing::warn!(%error, "claiming webhook cursors failed");
                Vec::new()
            }
        };
        let more_cursors = leases.len() == CURSOR_CLAIM as usize;
        for lease in leases {
            tokio::spawn(sender.clone().send_cursor(lease, done.clone()));
        }
        // Retries, replays and test events: delivery rows, as many as can start within half
        // their lease under the delivery cap.
        let free = (sender.slots.available_permits() + 1)
            .min(CLAIM_BATCH)
            .min(sender.pace.room(lease_ms / 2));
        let claimed = match free {
            0 => Ok(Vec::new()),
            _ => {
                hooks
                    .0
                    .store
                    .claim_deliveries(now, lease_ms, free as u32)
                    .await
            }
        };
        let claimed = claimed.unwrap_or_else(|error| {
            tracing::warn!(%error, "claiming webhook deliveries failed");
            Vec::new()
        });
        let full = (free > 0 && claimed.len() == free) || more_cursors;
        let poll = if claimed.is_empty() {
            POLL_IDLE
        } else {
            POLL_BUSY
        };
        let mut bodies = payloads(&hooks, &claimed).await;
        let mut first = Some(first);
        for (delivery, hook) in claimed {
            let body = bodies
                .remove(&delivery.id)
                .unwrap_or_else(|| Err("no payload".into()));
            let permit = match first.take() {
                Some(permit) => permit,
                None => sender
                    .slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed"),
            };
            sender.pace.wait().await;
            let (sender, done) = (sender.clone(), done.clone());
            tokio::spawn(async move {
                let outcome = deliver(&sender, &delivery, &hook, body).await;
                drop(permit);
                let _ = done.send(Done::Row(outcome)).await;
            });
        }
        drop(first);
        if full {
            continue;
        }
        // A record stored in a thread without webhooks is no work: only changes of threads
        // with one wake the worker. Webhooks made by other processes are seen at the next poll.
        let hooked: HashSet<ThreadId> = match hooks.0.store.webhook_threads().await {
            Ok(threads) => threads.into_iter().collect(),
            Err(error) => {
                tracing::warn!(%error, "listing webhooks' threads failed");
                Default::default()
            }
        };
        let pause = tokio::time::sleep(poll);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break 'work,
                change = changes.recv() => match change {
                    Ok(change) if !hooked.contains(&change.thread) => continue,
                    _ => break,
                },
                _ = released.notified() => break,
                _ = hooks.0.changed.notified() => break,
                _ = &mut pause => break,
            }
        }
    }
    drop(done);
    let _ = recorder.await;
}

/// What a worker's tasks send with.
#[derive(Clone)]
struct Sender {
    hooks: Hooks,
    http: reqwest::Client,
    /// Deliveries in flight at once.
    slots: Arc<Semaphore>,
    pace: Arc<Pace>,
    /// How long one delivery may hold its lease.
    lease_ms: i64,
}

/// Spaces sends evenly to stay under `[webhooks] max_per_second` (0: no limit).
struct Pace {
    gap: Duration,
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new(per_second: u32) -> Self {
        let gap = match per_second {
            0 => Duration::ZERO,
            n => Duration::from_secs(1) / n,
        };
        Self {
            gap,
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// How many more sends may start within `ms` from now.
    fn room(&self, ms: i64) -> usize {
        if self.gap.is_zero() {
            return usize::MAX;
        }
        let now = tokio::time::Instant::now();
        let end = now + Duration::from_millis(ms.max(0) as u64);
        let next = (*self.next.lock().expect("never poisoned")).max(now);
        (end.saturating_duration_since(next).as_nanos() / self.gap.as_nanos()) as usize
    }

    /// Waits for this send's turn.
    async fn wait(&self) {
        if self.gap.is_zero() {
            return;
        }
        let turn = {
            let mut next = self.next.lock().expect("never poisoned");
            let turn = (*next).max(tokio::time::Instant::now());
            *next = turn + self.gap;
            turn
        };
        tokio::time::sleep_until(turn).await;
    }
}

impl Sender {
    /// Sends the records after a leased cursor, each in a slot of its own, and reports them
    /// all at once, with where the cursor moves: past the last one sent, so that a send that
    /// could not end within the lease is left for later. If the records cannot be read,
    /// nothing is reported: the lease runs out and the cursor is taken up again.
    async fn send_cursor(self, lease: WebhookLease, done: mpsc::Sender<Done>) {
        let hook = Arc::new(lease.webhook);
        let records = match self
            .hooks
            .0
            .store
            .records_by_thread(&hook.thread, hook.cursor, CURSOR_BATCH)
            .await
        {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, webhook = %hook.id, "reading records for a webhook failed");
                return;
            }
        };
        // Past what was read; when that was everything, past what the claim saw too (records
        // of a deleted log leave gaps).
        let last = records.last().map_or(0, |r| r.seq);
        let mut cursor = if records.len() == CURSOR_BATCH as usize {
            last
        } else {
            last.max(lease.seq)
        };
        let mut sends = Vec::new();
        for record in records {
            if hook.log.as_ref().is_some_and(|log| *log != record.log) {
                continue;
            }
            let body = match self.hooks.0.payloads.record(&record).await {
                Ok(None) => continue,
                Ok(Some(body)) => Ok(body),
                Err(error) => Err(error),
            };
            let permit = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .expect("never closed");
            self.pace.wait().await;
            if now_ms() + self.lease_ms > lease.leased_until {
                cursor = record.seq - 1;
                break;
            }
            let delivery = Delivery {
                id: 0,
                webhook: hook.id.clone(),
                event: "record.created".into(),
                thread: record.thread.clone(),
                log: Some(record.log.clone()),
                seq: record.seq,
                counter: record.counter,
                cid: Some(record.cid),
                created_ms: now_ms(),
                state: "pending".into(),
                attempts: 1,
                next_ms: now_ms(),
                last_status: None,
                last_error: None,
                delivered_ms: None,
                message_id: format!("msg_{}_{}", hook.id, record.seq),
            };
            let (sender, hook) = (self.clone(), hook.clone());
            sends.push(tokio::spawn(async move {
                let (_, _, attempt, result) = deliver(&sender, &delivery, &hook, body).await;
                drop(permit);
                (delivery, attempt, result)
            }));
        }
        let mut sent = Vec::with_capacity(sends.len());
        for send in sends {
            sent.push(send.await.expect("a send does not panic"));
        }
        let outcome = CursorOutcome {
            thread: hook.thread.clone(),
            webhook: hook.id.clone(),
            leased_until: lease.leased_until,
            cursor,
            sent,
        };
        let _ = done.send(Done::Cursor(outcome)).await;
    }
}

/// A finished send of a delivery row, or of a cursor's records.
enum Done {
    Row(Outcome),
    Cursor(CursorOutcome),
}

/// Writes delivery outcomes as they come, many per transaction. What is not written (the
/// process dies first) is sent again when its lease runs out: at least once, never lost.
async fn record(hooks: Hooks, mut outcomes: mpsc::Receiver<Done>, released: Arc<Notify>) {
    let (mut rows, mut cursors) = (Vec::new(), Vec::new());
    while let Some(first) = outcomes.recv().await {
        let mut next = Some(first);
        let mut size = 0;
        while let Some(done) = next.take() {
            match done {
                Done::Row(outcome) => {
                    size += 1;
                    rows.push(outcome);
                }
                Done::Cursor(outcome) => {
                    size += outcome.sent.len().max(1);
                    cursors.push(outcome);
                }
            }
            if size < RECORD_BATCH {
                next = outcomes.try_recv().ok();
            }
        }
        if let Err(error) = hooks.0.store.finish_deliveries(&rows, &cursors).await {
            tracing::warn!(%error, deliveries = size, "recording webhook attempts failed");
        }
        if !cursors.is_empty() {
            released.notify_one();
        }
        rows.clear();
        cursors.clear();
    }
}

/// A delivery row's attempt: its thread and ID, what happened, what comes next.
type Outcome = (ThreadId, i64, Attempt, AttemptResult);

/// The JSON bodies of claimed deliveries, by delivery ID; records are read one query per
/// thread.
async fn payloads(
    hooks: &Hooks,
    claimed: &[(Delivery, Webhook)],
) -> HashMap<i64, Result<Vec<u8>, String>> {
    let mut by_thread: HashMap<&ThreadId, Vec<u64>> = HashMap::new();
    for (d, _) in claimed.iter().filter(|(d, _)| d.event == "record.created") {
        by_thread.entry(&d.thread).or_default().push(d.seq);
    }
    let mut records: HashMap<(&ThreadId, u64), StoredRecord> = HashMap::new();
    let mut failed: HashMap<&ThreadId, String> = HashMap::new();
    for (thread, seqs) in by_thread {
        match hooks.0.store.records_at(thread, &seqs).await {
            Ok(found) => records.extend(found.into_iter().map(|r| ((thread, r.seq), r))),
            Err(e) => {
                failed.insert(thread, format!("reading the record: {e}"));
            }
        }
    }
    let mut bodies = HashMap::with_capacity(claimed.len());
    for (d, _) in claimed {
        let body = if d.event == "webhook.test" {
            Ok(test_payload(d))
        } else if let Some(error) = failed.get(&d.thread) {
            Err(error.clone())
        } else {
            match records.get(&(&d.thread, d.seq)) {
                None => Err("the record was deleted by its owner".to_owned()),
                Some(r) => match hooks.0.payloads.record(r).await {
                    Ok(Some(body)) => Ok(body),
                    Ok(None) => Err("the record has nothing to deliver".to_owned()),
                    Err(error) => Err(error),
                },
            }
        };
        bodies.insert(d.id, body);
    }
    bodies
}

/// Sends one delivery; says what to record of the attempt.
async fn deliver(
    sender: &Sender,
    delivery: &Delivery,
    hook: &Webhook,
    body: Result<Vec<u8>, String>,
) -> Outcome {
    let (hooks, http) = (&sender.hooks, &sender.http);
    let config = &hooks.0.config;
    let started = Instant::now();
    let at_ms = now_ms();
    let outcome = match (body, hooks.0.secrets.open(&hook.secret)) {
        (Ok(body), Ok(secret)) => {
            let allow_private = config.allow_private_addresses;
            send(http, hook, &secret, delivery, &body, allow_private).await
        }
        (Err(error), _) | (_, Err(error)) => Err((None, error, None)),
    };
    let duration_ms = started.elapsed().as_millis() as i64;
    let (attempt, result) = match outcome {
        Ok(status) => {
            metrics::counter!("threads_webhook_deliveries_total", "outcome" => "delivered")
                .increment(1);
            (
                Attempt {
                    at_ms,
                    status: Some(status),
                    error: None,
                    duration_ms,
                },
                AttemptResult::Delivered,
            )
        }
        Err((status, error, retry_after_ms)) => {
            metrics::counter!("threads_webhook_deliveries_total", "outcome" => "failed")
                .increment(1);
            let jitter = 0.8 + (OsRng.next_u32() as f64 / u32::MAX as f64) * 0.4;
            let retry_ms = (delivery.attempts < config.max_attempts).then(|| {
                at_ms
                    + retry_delay_ms(
                        delivery.attempts,
                        config.retry_base_ms,
                        config.retry_max_ms,
                        retry_after_ms,
                        jitter,
                    ) as i64
            });
            tracing::info!(webhook = %hook.id, delivery = delivery.id, ?status, %error, "webhook delivery failed");
            (
                Attempt {
                    at_ms,
                    status,
                    error: Some(error),
                    duration_ms,
                },
                AttemptResult::Failed {
                    retry_ms,
                    disable_after: config.disable_after_failures,
                },
            )
        }
    };
    (delivery.thread.clone(), delivery.id, attempt, result)
}

/// A time as Standard Webhooks' `timestamp` gives it.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn test_payload(d: &Delivery) -> Vec<u8> {
    let body = json!({
        "type": "webhook.test",
        "timestamp": rfc3339(d.created_ms),
        "data": {"webhook": d.webhook, "thread": d.thread.to_string()},
    });
    serde_json::to_vec(&body).expect("JSON serializes")
}

type SendError = (Option<u16>, String, Option<u64>);

/// Posts a signed delivery: the receiver's status on success (2xx), or why not, with its
/// `Retry-After` in milliseconds.
async fn send(
    http: &reqwest::Client,
    hook: &Webhook,
    secret: &str,
    d: &Delivery,
    body: &[u8],
    allow_private: bool,
) -> Result<u16, SendError> {
    check_url(&hook.url, allow_private).map_err(|e| (None, e, None))?;
    let id = &d.message_id;
    let timestamp = now_ms() / 1000;
    let response = http
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", sign(secret, id, timestamp, body))
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| (None, describe(&e), None))?;
    let status = response.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| secs * 1000);
    Err((
        Some(status.as_u16()),
        format!("the receiver answered {status}"),
        retry_after,
    ))
}

/// A transport error with its causes, on one line.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_cap_and_honour_retry_after() {
        let delay = |n, ra| retry_delay_ms(n, 5_000, 3_600_000, ra, 1.0);
        assert_eq!(delay(1, None), 5_000);
        assert_eq!(delay(2, None), 10_000);
        assert_eq!(delay(5, None), 80_000);
        assert_eq!(delay(40, None), 3_600_000);
        assert_eq!(delay(1, Some(60_000)), 60_000);
        assert_eq!(delay(1, Some(10_000_000)), 3_600_000);
        assert_eq!(retry_delay_ms(1, 5_000, 3_600_000, None, 0.8), 4_000);
        assert_eq!(retry_delay_ms(1, 5_000, 3_600_000, None, 1.2), 6_000);
    }

    #[tokio::test(start_paused = true)]
    async fn sends_are_spaced_to_the_limit() {
        let pace = Pace::new(10);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            pace.wait().await;
        }
        // The first goes at once, each next one 100 ms later.
        assert_eq!(start.elapsed(), Duration::from_millis(400));
        // Ten turns fit in a second; each one taken leaves one less.
        let pace = Pace::new(10);
        assert_eq!(pace.room(1000), 10);
        pace.wait().await;
        assert_eq!(pace.room(1000), 9);
        assert_eq!(pace.room(50), 0);
        let unlimited = Pace::new(0);
        let start = tokio::time::Instant::now();
        for _ in 0..1000 {
            unlimited.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(unlimited.room(1), usize::MAX);
    }

    #[test]
    fn private_networks_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "224.0.0.1",
            "239.255.255.250",
            "ff02::1",
            "ff05::2",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.8",
            "fec0::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "::ffff:93.184.216.34",
            "198.20.0.1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        assert!(check_url("http://127.0.0.1:9/hook", false).is_err());
        assert!(check_url("http://127.0.0.1:9/hook", true).is_ok());
        assert!(check_url("ftp://example.com/", true).is_err());
        assert!(check_url("https://example.com/hook", false).is_ok());
    }

    /// The signature of the Standard Webhooks specification's own example.
    #[test]
    fn signatures_match_the_specification() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
