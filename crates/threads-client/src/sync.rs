//! Followers of a thread: adding and removing them, pushing every log to each, and pulling
//! (every record verified with the follow key before it is kept).

use std::collections::HashMap;
use std::sync::Arc;

use threads_core::auth::Action;
use threads_core::{
    verify_chained, Keypair, LogId, ServiceKey, SignaturePolicy, SignatureRule, ThreadId,
};
use threads_store::{Ingest, Outcome, Quotas, SqliteStore, Store, StoredRecord};

use crate::*;

/// What a pull brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pulled {
    /// Records stored that this peer did not have.
    pub new: u64,
    /// Records pulled that passed only under go-threads' legacy signature rule (accepted
    /// because the thread allows it).
    pub legacy: u64,
}

impl Client {
    /// Registers this peer's log at a follower (the follow key only) and remembers it.
    pub async fn add_follower(
        &self,
        thread: &ThreadId,
        url: &str,
        token: Option<&str>,
    ) -> Result<()> {
        let mut entry = self.keys.thread(thread)?;
        let server = FollowerClient::new(url)?;
        for pair in entry.own_logs() {
            register(&server, &entry, pair, token).await?;
        }
        if !entry.followers.iter().any(|f| f.url == server.url()) {
            entry.followers.push(Follower {
                url: server.url().to_owned(),
                cursor: String::new(),
            });
            self.keys.save(&entry)?;
        }
        Ok(())
    }

    /// Asks a follower to delete this peer's logs, and forgets the follower.
    pub async fn remove_follower(&self, thread: &ThreadId, url: &str) -> Result<()> {
        let mut entry = self.keys.thread(thread)?;
        let server = FollowerClient::new(url)?;
        for pair in entry.own_logs() {
            match retry(|| server.signed(thread, pair, Action::Unregister, None)).await {
                // Already gone is what was asked for.
                Err(Error::Server { status: 404, .. }) | Ok(()) => {}
                Err(e) => return Err(e),
            }
        }
        entry.followers.retain(|f| f.url != server.url());
        self.keys.save(&entry)?;
        Ok(())
    }

    /// Pushes this peer's logs to every follower, from where each one's head is; resumes after
    /// an interruption because the follower's head says what it has. `progress(done, total)`.
    pub async fn push(&self, thread: &ThreadId, mut progress: impl FnMut(u64, u64)) -> Result<u64> {
        let entry = self.keys.thread(thread)?;
        if entry.log.is_none() {
            return Err(Error::NotAWriter);
        }
        let mut pushed = 0;
        for pair in entry.own_logs() {
            pushed += self.push_log(&entry, pair, &mut progress).await?;
        }
        Ok(pushed)
    }

    /// Pushes one of this peer's logs to every follower.
    async fn push_log(
        &self,
        entry: &ThreadEntry,
        pair: &Keypair,
        progress: &mut impl FnMut(u64, u64),
    ) -> Result<u64> {
        let thread = &entry.thread;
        let log = LogId::from(pair.public());
        let local_head = self
            .store
            .log(thread, &log)
            .await?
            .and_then(|l| l.head)
            .map_or(0, |h| h.counter);
        let mut pushed = 0;
        for follower in &entry.followers {
            let server = FollowerClient::new(&follower.url)?;
            let follow = entry.key.service();
            let mut after = match retry(|| server.head(thread, &log, follow)).await {
                Ok(head) => head.map_or(0, |h| h.counter),
                Err(Error::Server { status: 404, .. }) => {
                    register(&server, entry, pair, None).await?;
                    0
                }
                Err(e) => return Err(e),
            };
            progress(after, local_head);
            while after < local_head {
                let mut records = self
                    .store
                    .records_by_log(thread, &log, after, PUSH_BATCH as u32)
                    .await?;
                // As many as fit in [`PUSH_BYTES`], and always one (a record is at most
                // 8 MiB of body, which fits in a follower's default 16 MiB request).
                let mut bytes = 0;
                let fit = records
                    .iter()
                    .take_while(|r| {
                        bytes += r.byte_len();
                        bytes <= PUSH_BYTES
                    })
                    .count();
                records.truncate(fit.max(1));
                let Some(last) = records.last().map(|r| r.counter) else {
                    break;
                };
                let wire: Vec<_> = records
                    .iter()
                    .map(|r| follower::WireRecord::new(thread, &log, &r.blocks))
                    .collect();
                let results = retry(|| server.push(&wire)).await?;
                for result in &results {
                    match result.outcome.as_str() {
                        "accepted" => pushed += 1,
                        "duplicate" => {}
                        // The follower lacks earlier records: go back to where it is.
                        "gap" => {
                            let head = result.head.as_ref().map_or(0, |h| h.counter);
                            if head >= after {
                                return Err(Error::Protocol(format!(
                                    "{} reports a gap at its head {head}, past what was sent",
                                    server.url()
                                )));
                            }
                            after = head;
                            break;
                        }
                        other => {
                            return Err(Error::Server {
                                status: 409,
                                code: result.code.clone().unwrap_or_else(|| other.to_owned()),
                                detail: result.detail.clone().unwrap_or_default(),
                            })
                        }
                    }
                }
                if results.iter().all(|r| r.outcome != "gap") {
                    after = last;
                }
                progress(after, local_head);
            }
        }
        Ok(pushed)
    }

    /// Pulls what every follower has of the thread that is new since the last pull: verifies
    /// each record with the follow key before anything is stored. Returns how many were new.
    ///
    /// The next page is fetched while the last one is verified and stored; pages are stored
    /// several at a time (one transaction, then the cursor is saved), so an interrupted pull
    /// resumes from the last stored page. After each batch is stored, `progress` is given the
    /// count of new records so far and the records that batch stored, as reading them back
    /// would return them.
    pub async fn pull(
        &self,
        thread: &ThreadId,
        mut progress: impl FnMut(u64, Vec<StoredRecord>),
    ) -> Result<Pulled> {
        let mut entry = self.keys.thread(thread)?;
        let policy = entry.signature_policy();
        let mut fresh = 0;
        let mut legacy = 0;
        let mut known = self.known_logs(thread).await?;
        for i in 0..entry.followers.len() {
            let server = FollowerClient::new(&entry.followers[i].url)?;
            let service = entry.key.service().clone();
            let start = entry.followers[i].cursor.clone();
            let mut next = Some(fetch_page(&server, thread, &service, start));
            let mut pending: Vec<Ingest> = Vec::new();
            // At most one batch is being stored while the next pages are verified.
            let mut storing: Option<(Storing, String)> = None;
            while let Some(fetching) = next.take() {
                let page = fetching
                    .await
                    .map_err(|e| Error::Protocol(format!("fetching stopped: {e}")))??;
                if page.more {
                    next = Some(fetch_page(&server, thread, &service, page.cursor.clone()));
                }
                let service = service.clone();
                let url = server.url().to_owned();
                let expected = thread.clone();
                let records = page.records;
                let verified = tokio::task::spawn_blocking(move || {
                    verify_page(&expected, &service, &url, records, policy)
                })
                .await
                .map_err(|e| Error::Protocol(format!("verification stopped: {e}")))??;
                legacy += verified
                    .iter()
                    .filter(|i| i.record.rule() == SignatureRule::Legacy)
                    .count() as u64;
                for item in &verified {
                    if known.insert(item.log.clone()) {
                        self.register_locally(&entry, &item.log).await?;
                    }
                }
                pending.extend(verified);
                let store_now = pending.len() >= STORE_BATCH || next.is_none();
                // A stored batch is handed over at once, not when the next one is full: the
                // caller's work on it (a bot reducing it) then runs beside the pull, and does
                // not pile up at the end. One still being stored is waited for only when the
                // next must go.
                if let Some(storing) = storing.take_if(|(task, _)| store_now || task.is_finished())
                {
                    let stored = self.stored(storing, &mut entry, i).await?;
                    fresh += stored.len() as u64;
                    progress(fresh, stored);
                }
                if store_now {
                    let store = self.store.clone();
                    let batch = std::mem::take(&mut pending);
                    storing = Some((tokio::spawn(store_pulled(store, batch)), page.cursor));
                }
            }
            if let Some(storing) = storing.take() {
                let stored = self.stored(storing, &mut entry, i).await?;
                fresh += stored.len() as u64;
                progress(fresh, stored);
            }
            entry = self.keys.thread(thread)?;
        }
        Ok(Pulled { new: fresh, legacy })
    }

    /// Whether this thread's records may pass under go-threads' weaker signature rule, from
    /// now on (remembered with the thread's keys).
    pub fn allow_legacy_signatures(&self, thread: &ThreadId, allow: bool) -> Result<()> {
        let mut entry = self.keys.thread(thread)?;
        if entry.allow_legacy_signatures != allow {
            entry.allow_legacy_signatures = allow;
            self.keys.save(&entry)?;
        }
        Ok(())
    }

    /// Waits for a batch to be stored, then saves the cursor after it: the cursor moves only
    /// once its records are stored.
    async fn stored(
        &self,
        (task, cursor): (Storing, String),
        entry: &mut ThreadEntry,
        follower: usize,
    ) -> Result<Vec<StoredRecord>> {
        let fresh = task
            .await
            .map_err(|e| Error::Protocol(format!("storing stopped: {e}")))??;
        entry.followers[follower].cursor = cursor;
        let f = &entry.followers[follower];
        self.keys.save_cursor(&entry.thread, &f.url, &f.cursor)?;
        Ok(fresh)
    }
}

/// A batch of pulled records being stored.
type Storing = tokio::task::JoinHandle<Result<Vec<StoredRecord>>>;

/// Stores verified records in one transaction; returns the new ones, as stored.
pub(crate) async fn store_pulled(
    store: Arc<SqliteStore>,
    batch: Vec<Ingest>,
) -> Result<Vec<StoredRecord>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let arrived_ms = now_ms();
    let (outcomes, batch) = store
        .ingest_owned(batch, &Quotas::default(), arrived_ms)
        .await?;
    let mut fresh = Vec::with_capacity(batch.len());
    for (outcome, item) in outcomes.into_iter().zip(batch) {
        match outcome {
            Outcome::Accepted { seq, counter } => {
                fresh.push(item.into_stored(seq, counter, arrived_ms))
            }
            Outcome::Duplicate { .. } => {}
            other => {
                return Err(Error::LocalRefused {
                    log: item.log.to_string(),
                    outcome: format!("{other:?}"),
                })
            }
        }
    }
    Ok(fresh)
}

/// Starts fetching a page (with retries) in the background.
fn fetch_page(
    server: &FollowerClient,
    thread: &ThreadId,
    service: &ServiceKey,
    cursor: String,
) -> tokio::task::JoinHandle<Result<follower::Page>> {
    let (server, thread, service) = (server.clone(), thread.clone(), service.clone());
    tokio::spawn(async move { retry(|| server.page(&thread, &service, &cursor, PULL_PAGE)).await })
}

/// Checks a page: every record of `thread`, each verified with the follow key, the signatures
/// of each log's linked run by its last ([`verify_chained`]). One record that fails refuses the
/// whole page.
pub(crate) fn verify_page(
    thread: &ThreadId,
    service: &ServiceKey,
    url: &str,
    records: Vec<follower::PulledRecord>,
    policy: SignaturePolicy,
) -> Result<Vec<Ingest>> {
    let mut logs_in_order = Vec::with_capacity(records.len());
    let mut cids = Vec::with_capacity(records.len());
    let mut blocks = Vec::with_capacity(records.len());
    // Parsing a log ID decompresses a curve point: once per distinct log in the page.
    let mut logs: HashMap<Vec<u8>, LogId> = HashMap::new();
    for pulled in records {
        if pulled.thread != thread.as_bytes() {
            return Err(Error::Protocol(format!(
                "{url} answered with a record of another thread"
            )));
        }
        let log = match logs.get(&pulled.log) {
            Some(log) => log.clone(),
            None => {
                let log = LogId::from_bytes(&pulled.log)
                    .map_err(|_| Error::Protocol(format!("{url} sent a bad log ID")))?;
                logs.insert(pulled.log.clone(), log.clone());
                log
            }
        };
        logs_in_order.push(log);
        cids.push(pulled.cid);
        blocks.push(pulled.into_blocks());
    }
    let checked = verify_chained(
        blocks
            .into_iter()
            .zip(&logs_in_order)
            .map(|(b, log)| (b, service, log)),
        policy,
    );
    checked
        .into_iter()
        .zip(logs_in_order)
        .zip(cids)
        .map(|((result, log), cid)| {
            let record = result.map_err(|error| Error::Rejected {
                cid: cid.to_string(),
                source_url: url.to_owned(),
                error,
            })?;
            Ok(Ingest {
                thread: thread.clone(),
                log,
                record,
            })
        })
        .collect()
}

async fn register(
    server: &FollowerClient,
    entry: &ThreadEntry,
    pair: &Keypair,
    token: Option<&str>,
) -> Result<()> {
    let action = Action::Register {
        follow_key: entry.key.follow_only().to_multibase().to_string(),
        addrs: Vec::new(),
        public: entry.public,
    };
    retry(|| server.signed(&entry.thread, pair, action.clone(), token)).await
}

/// Retries what failed to reach the server, with doubling pauses; refusals are final.
async fn retry<T, F, Fut>(mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut pause = FIRST_BACKOFF;
    for attempt in 1.. {
        match call().await {
            Err(Error::Network(_)) if attempt < ATTEMPTS => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(Error::Server { status, .. }) if status >= 500 && attempt < ATTEMPTS => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}
