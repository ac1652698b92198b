//! The signature checks of pushed records, those of small concurrent pushes made together. A
//! one-record push checked alone pays a whole Ed25519 verification; checked in one batch with
//! the pushes that arrived alongside it, about a third less (`cargo bench -p threads-core
//! --bench record`). A push of more records is a batch by itself, checked on the blocking pool.
//!
//! A push queues its records and, when fewer than one verifier per worker thread are at work,
//! becomes one: while other pushes are under way it yields once, so that the requests the
//! runtime has ready queue theirs too; then it checks everything queued as one batch
//! ([`verify_batch`], which gives every record its own verdict even when the batch fails) and
//! answers each push, until the queue is empty or it has checked a few batches for others.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use threads_core::{
    verify_batch, LogId, RecordError, ServiceKey, SignaturePolicy, UnverifiedRecord, VerifiedRecord,
};
use tokio::sync::oneshot;

/// Most records of a push checked together with others; a larger push is a batch by itself.
const SMALL_PUSH: usize = 4;
/// Most records one batch checks: enough for every push in flight, few enough that a worker
/// thread is not held for long.
const MAX_BATCH: usize = 64;
/// Batches a push checks for others before it hands the rest on and goes on with its own.
const MAX_ROUNDS: usize = 4;

pub type Item = (UnverifiedRecord, ServiceKey, LogId);
type Checked = Vec<Result<VerifiedRecord, RecordError>>;

/// Cheap to clone.
#[derive(Clone)]
pub struct Signatures(Arc<Inner>);

struct Inner {
    policy: SignaturePolicy,
    most_verifiers: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: Vec<Job>,
    verifiers: usize,
}

struct Job {
    items: Vec<Item>,
    reply: oneshot::Sender<Checked>,
}

impl Signatures {
    pub fn new(policy: SignaturePolicy) -> Self {
        let most_verifiers = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1)
            .max(1);
        Self(Arc::new(Inner {
            policy,
            most_verifiers,
            state: Mutex::new(State::default()),
        }))
    }

    /// Checks a push's records; the verdicts are in input order. `None` only if checking them
    /// panicked. A small push is checked with whatever other small pushes are queued (`busy`
    /// says other pushes are under way, so that more may be about to queue: a lone push does
    /// not wait for them); a larger one alone, on the blocking pool.
    pub async fn verify(&self, items: Vec<Item>, busy: bool) -> Option<Checked> {
        if items.len() > SMALL_PUSH {
            let policy = self.0.policy;
            return tokio::task::spawn_blocking(move || verify_items(items, policy))
                .await
                .ok();
        }
        let (reply, answer) = oneshot::channel();
        let verifies = {
            let mut state = self.0.state.lock().expect("not poisoned");
            state.queue.push(Job { items, reply });
            let verifies = state.verifiers < self.0.most_verifiers;
            state.verifiers += usize::from(verifies);
            verifies
        };
        if verifies {
            if busy {
                // Should this push be dropped while it yields, the queue is drained without it.
                let mut duty = Verifying(Some(self.clone()));
                tokio::task::yield_now().await;
                duty.0 = None;
            }
            self.drain(MAX_ROUNDS);
        }
        answer.await.ok()
    }

    /// Checks batches until the queue is empty, then stops being a verifier. After `rounds`
    /// batches it hands what is left to a blocking thread, so that its own push is answered
    /// while pushes keep coming.
    fn drain(&self, mut rounds: usize) {
        loop {
            let jobs = {
                let mut state = self.0.state.lock().expect("not poisoned");
                if state.queue.is_empty() {
                    state.verifiers -= 1;
                    return;
                }
                if rounds == 0 {
                    drop(state);
                    return self.hand_off();
                }
                let (mut take, mut records) = (0, 0);
                for job in &state.queue {
                    if take > 0 && records + job.items.len() > MAX_BATCH {
                        break;
                    }
                    take += 1;
                    records += job.items.len();
                }
                state.queue.drain(..take).collect::<Vec<_>>()
            };
            rounds -= 1;
            self.check(jobs);
        }
    }

    /// The verifier's duty, taken over by a blocking thread that drains the queue.
    fn hand_off(&self) {
        let this = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || this.drain(usize::MAX))),
            Err(_) => this.drain(usize::MAX),
        }
    }

    /// One batch; a panic drops its replies (their pushes fail) and nothing else.
    fn check(&self, jobs: Vec<Job>) {
        metrics::histogram!("threads_signature_batch_pushes").record(jobs.len() as f64);
        let mut sizes = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let mut items = Vec::new();
        for job in jobs {
            sizes.push(job.items.len());
            replies.push(job.reply);
            items.extend(job.items);
        }
        let Ok(checked) =
            std::panic::catch_unwind(AssertUnwindSafe(|| verify_items(items, self.0.policy)))
        else {
            tracing::error!("checking a batch of signatures panicked; its pushes failed");
            return;
        };
        let mut checked = checked.into_iter();
        for (size, reply) in sizes.into_iter().zip(replies) {
            let _ = reply.send(checked.by_ref().take(size).collect());
        }
    }
}

/// [`verify_batch`] over records that come with their own keys.
fn verify_items(items: Vec<Item>, policy: SignaturePolicy) -> Checked {
    let (records, keys): (Vec<_>, Vec<_>) = items
        .into_iter()
        .map(|(record, key, log)| (record, (key, log)))
        .unzip();
    verify_batch(
        records
            .into_iter()
            .zip(&keys)
            .map(|(r, (key, log))| (r, key, log)),
        policy,
    )
}

/// A verifier's duty, handed off if the push holding it is dropped before it drained the
/// queue.
struct Verifying(Option<Signatures>);

impl Drop for Verifying {
    fn drop(&mut self) {
        if let Some(signatures) = self.0.take() {
            signatures.hand_off();
        }
    }
}

#[cfg(test)]
mod tests {
    use threads_core::{Keypair, RecordError};
    use threads_store::testing::TestLog;

    use super::*;

    /// A one-record push of a new log: its record, and whether it is forged.
    fn push(forged: bool) -> Vec<Item> {
        let mut log = TestLog::new();
        if forged {
            log.pair = Keypair::generate(&mut rand_core::OsRng);
        }
        let record = log.next(100).into_blocks();
        vec![(record, log.keys.service().clone(), log.id.clone())]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pushes_checked_together_each_get_their_own_verdicts() {
        let signatures = Signatures::new(SignaturePolicy::CurrentOnly);
        let checks = (0..40).map(|i| {
            let (signatures, items) = (signatures.clone(), push(i % 7 == 3));
            tokio::spawn(async move { signatures.verify(items, true).await })
        });
        let verdicts = futures_util::future::join_all(checks).await;
        for (i, verdict) in verdicts.into_iter().enumerate() {
            let verdict = verdict.unwrap().expect("answered");
            assert_eq!(verdict.len(), 1);
            if i % 7 == 3 {
                assert_eq!(verdict[0].as_ref().err(), Some(&RecordError::BadSignature));
            } else {
                assert!(
                    verdict[0].is_ok(),
                    "push {i}: {:?}",
                    verdict[0].as_ref().err()
                );
            }
        }
        // Every verifier has stopped; a push checked now is checked at once.
        assert_eq!(signatures.0.state.lock().unwrap().verifiers, 0);
        assert!(signatures.verify(push(false), false).await.unwrap()[0].is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_push_dropped_while_it_yields_leaves_no_push_unanswered() {
        // One verifier at most: the push that becomes it is dropped before it checks anything.
        let signatures = Signatures(Arc::new(Inner {
            policy: SignaturePolicy::CurrentOnly,
            most_verifiers: 1,
            state: Mutex::new(State::default()),
        }));
        let mut dropped = Box::pin(signatures.verify(push(false), true));
        assert!(futures_util::poll!(dropped.as_mut()).is_pending());
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let (signatures, items) = (signatures.clone(), push(false));
                tokio::spawn(async move { signatures.verify(items, true).await })
            })
            .collect();
        tokio::task::yield_now().await;
        drop(dropped);
        for push in waiting {
            assert!(push.await.unwrap().expect("answered")[0].is_ok());
        }
    }
}
