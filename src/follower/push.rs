//! Pushing records: the batch is checked against the limits, every record verified with its
//! thread's follow key (one Ed25519 batch), the valid ones stored in one transaction (with
//! whatever other pushes are queued: [`super::commit`]), and each record judged. Where the
//! batch came from decides what is told to the network.

use std::collections::HashMap;
use std::time::Instant;

pub use threads_client::car::CarRecord as PushItem;
use threads_core::{cid_of, Cid, RecordError, SignatureRule, ThreadId};
use threads_store::{Ingest, Outcome};

use super::keys::PushKey;
use super::{Error, Follower, Result};

/// Where a pushed batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A log's writer (over HTTP or the libp2p API): what it stores in public threads is
    /// gossiped.
    Writer,
    /// A peer on a thread's gossip topic: gossipsub passes the message on itself.
    Gossip,
    /// Another follower this one replicates: what it holds is not news.
    Replica,
}

/// What became of one pushed record.
#[derive(Debug)]
pub enum Verdict {
    /// In its log now (accepted, or already there).
    Stored(Outcome),
    /// Well formed and authentic, but not stored: a gap, a fork, an unknown log, a quota.
    Refused(Outcome),
    /// Not authentic, or malformed.
    Invalid(RecordError),
}

impl Verdict {
    /// Stable code of a record that was not stored.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Verdict::Stored(_) => None,
            Verdict::Refused(Outcome::Gap { .. }) => Some("gap"),
            Verdict::Refused(Outcome::Fork { .. }) => Some("fork"),
            Verdict::Refused(Outcome::UnknownLog) => Some("unknown_log"),
            Verdict::Refused(Outcome::QuotaExceeded(_)) => Some("quota_exceeded"),
            Verdict::Refused(_) => Some("refused"),
            Verdict::Invalid(e) => Some(e.code()),
        }
    }
}

/// One pushed record, judged.
#[derive(Debug)]
pub struct Judged {
    pub cid: Cid,
    pub verdict: Verdict,
    /// The signature rule it passed, when it was verified and passed.
    pub rule: Option<SignatureRule>,
}

/// Every pushed record's verdict, in the order pushed.
#[derive(Debug)]
pub struct Pushed {
    pub results: Vec<Judged>,
}

impl Pushed {
    /// The first record that was not stored, if any.
    pub fn first_failure(&self) -> Option<&Verdict> {
        self.results
            .iter()
            .map(|j| &j.verdict)
            .find(|v| v.code().is_some())
    }
}

impl Follower {
    /// Verifies and stores a batch, answering one verdict per record, in order. Refuses the
    /// whole batch only when it is empty or over `limits.max_batch_records`.
    pub async fn push(&self, items: Vec<PushItem>, origin: Origin) -> Result<Pushed> {
        let started = Instant::now();
        let max = self.config().limits.max_batch_records;
        if items.is_empty() {
            return Err(Error::EmptyBatch);
        }
        if items.len() > max {
            return Err(Error::BatchTooLarge {
                records: items.len(),
                max,
            });
        }
        let pushed = self.verify_and_store(items, origin, true).await?;
        metrics::histogram!("threads_push_seconds").record(started.elapsed().as_secs_f64());
        Ok(pushed)
    }

    /// [`Follower::push`] once its batch is within the limits; `kept` allows follow keys kept
    /// from earlier pushes ([`super::keys`]).
    async fn verify_and_store(
        &self,
        items: Vec<PushItem>,
        origin: Origin,
        kept: bool,
    ) -> Result<Pushed> {
        let store = &self.0.store;
        let mut threads: HashMap<ThreadId, Option<PushKey>> = HashMap::new();
        let mut any_kept = false;
        for item in &items {
            if threads.contains_key(&item.thread) {
                continue;
            }
            let key = match kept.then(|| self.0.keys.get(&item.thread)).flatten() {
                Some(key) => {
                    any_kept = true;
                    Some(key)
                }
                None => {
                    let info = store.thread(&item.thread).await?;
                    let key = info.map(|info| PushKey {
                        follow_key: info.follow_key,
                        public: info.public,
                    });
                    if let Some(key) = &key {
                        self.0.keys.put(&item.thread, key.clone());
                    }
                    key
                }
            };
            threads.insert(item.thread.clone(), key);
        }
        // What to verify again, with the stored keys, should a kept one fail.
        let again = any_kept.then(|| items.clone());
        let cids: Vec<Cid> = items.iter().map(|i| cid_of(&i.blocks.record)).collect();
        let mut verdicts: Vec<Option<Verdict>> = (0..items.len()).map(|_| None).collect();
        let (mut meta, mut blocks) = (Vec::new(), Vec::new());
        for (i, item) in items.into_iter().enumerate() {
            match threads.get(&item.thread).and_then(Option::as_ref) {
                Some(info) => {
                    meta.push((i, item.thread, item.log, info.follow_key.clone()));
                    blocks.push(item.blocks);
                }
                None => verdicts[i] = Some(Verdict::Refused(Outcome::UnknownLog)),
            }
        }

        let items = blocks
            .into_iter()
            .zip(&meta)
            .map(|(b, (_, _, log, key))| (b, key.clone(), log.clone()))
            .collect();
        let busy = self.0.committer.queued() > 0;
        let checked = self
            .0
            .signatures
            .verify(items, busy)
            .await
            .ok_or_else(|| Error::Internal("checking a batch of signatures failed".into()))?;
        if let Some(items) = again.filter(|_| checked.iter().any(Result::is_err)) {
            for thread in threads.keys() {
                self.0.keys.forget(thread);
            }
            return Box::pin(self.verify_and_store(items, origin, false)).await;
        }

        let mut rules: Vec<Option<SignatureRule>> = vec![None; verdicts.len()];
        let mut batch = Vec::new();
        let mut positions = Vec::new();
        for ((i, thread, log, _), result) in meta.into_iter().zip(checked) {
            match result {
                Ok(record) => {
                    rules[i] = Some(record.rule());
                    positions.push(i);
                    batch.push(Ingest {
                        thread,
                        log,
                        record,
                    });
                }
                // A record of a log this server does not follow says so, whatever else is
                // wrong.
                Err(e) => {
                    verdicts[i] = Some(match store.log(&thread, &log).await? {
                        None => Verdict::Refused(Outcome::UnknownLog),
                        Some(_) => Verdict::Invalid(e),
                    })
                }
            }
        }
        let sizes: Vec<usize> = batch.iter().map(|b| b.record.blocks().byte_len()).collect();
        // What to gossip once stored: records pushed by their writers to public threads.
        let gossip: Vec<_> = match &self.0.announce {
            Some(_) if origin == Origin::Writer => batch
                .iter()
                .map(|b| {
                    let public = threads[&b.thread].as_ref().is_some_and(|t| t.public);
                    public.then(|| (b.thread.clone(), b.log.clone(), b.record.blocks().clone()))
                })
                .collect(),
            _ => Vec::new(),
        };
        let outcomes = if batch.is_empty() {
            Vec::new()
        } else {
            self.0.committer.commit(batch).await?
        };
        let (mut accepted, mut accepted_bytes) = (0u64, 0);
        let mut news = Vec::new();
        let mut gossip = gossip.into_iter();
        for ((i, outcome), size) in positions.into_iter().zip(outcomes).zip(sizes) {
            let item = gossip.next();
            if matches!(outcome, Outcome::Accepted { .. }) {
                accepted += 1;
                accepted_bytes += size;
                news.extend(item.flatten());
            }
            verdicts[i] = Some(if outcome.is_stored() {
                Verdict::Stored(outcome)
            } else {
                Verdict::Refused(outcome)
            });
        }
        let results: Vec<Judged> = cids
            .into_iter()
            .zip(verdicts)
            .zip(rules)
            .map(|((cid, v), rule)| Judged {
                cid,
                verdict: v.expect("every record judged"),
                rule,
            })
            .collect();
        for Judged { verdict, .. } in &results {
            match verdict.code() {
                None if matches!(verdict, Verdict::Stored(Outcome::Duplicate { .. })) => {
                    metrics::counter!("threads_records_duplicate_total").increment(1)
                }
                None => {}
                Some(code) => metrics::counter!("threads_records_rejected_total", "reason" => code)
                    .increment(1),
            }
        }
        if let (Some(announce), false) = (&self.0.announce, news.is_empty()) {
            announce.records(news);
        }
        metrics::counter!("threads_records_ingested_total").increment(accepted);
        metrics::counter!("threads_ingested_bytes_total").increment(accepted_bytes as u64);
        Ok(Pushed { results })
    }
}
