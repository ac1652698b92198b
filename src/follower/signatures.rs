//! The signature checks of small concurrent pushes, made together. A one-record push checked
//! alone pays a whole Ed25519 verification; checked in one batch with the pushes that arrived
//! alongside it, about a third less (`cargo bench -p threads-core --bench record`).
//!
//! A push queues its records and, when fewer than one verifier per worker thread are at work,
//! becomes one: while other pushes are under way it yields once, so that the requests the
//! runtime has ready queue theirs too; then it checks everything queued as one batch
//! ([`verify_batch`], which gives every record its own verdict even when the batch fails) and
//! answers each push, until the queue is empty.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use threads_core::{
    verify_batch, LogId, RecordError, ServiceKey, SignaturePolicy, UnverifiedRecord,
    VerifiedRecord,
};
use tokio::sync::oneshot;

/// Most records one batch checks: enough for every push in flight, few enough that a worker
/// thread is not held for long.
const MAX_BATCH: usize = 64;

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

    /// Checks `items` with whatever else is queued; the verdicts are in input order. `None`
    /// only if checking them panicked. `busy` says other pushes are under way, so that more
    /// may be about to queue: a lone push does not wait for them.
    pub async fn verify(&self, items: Vec<Item>, busy: bool) -> Option<Checked> {
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
            self.drain();
        }
        answer.await.ok()
    }

    /// Checks batches until the queue is empty, then stops being a verifier.
    fn drain(&self) {
        loop {
            let jobs = {
                let mut state = self.0.state.lock().expect("not poisoned");
                if state.queue.is_empty() {
                    state.verifiers -= 1;
                    return;
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
            self.check(jobs);
        }
    }

    /// One batch; a panic drops its replies (their pushes fail) and nothing else.
    fn check(&self, jobs: Vec<Job>) {
        metrics::histogram!("threads_signature_batch_pushes").record(jobs.len() as f64);
        let mut sizes = Vec::with_capacity(jobs.len());
        let mut replies = Vec::with_capacity(jobs.len());
        let (mut records, mut keys) = (Vec::new(), Vec::new());
        for job in jobs {
            sizes.push(job.items.len());
            replies.push(job.reply);
            for (record, key, log) in job.items {
                records.push(record);
                keys.push((key, log));
            }
        }
        let items = records.into_iter().zip(&keys).map(|(r, (key, log))| (r, key, log));
        let Ok(checked) =
            std::panic::catch_unwind(AssertUnwindSafe(|| verify_batch(items, self.0.policy)))
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

/// A verifier's duty, handed to a task of its own if the push holding it is dropped before it
/// drained the queue.
struct Verifying(Option<Signatures>);

impl Drop for Verifying {
    fn drop(&mut self) {
        if let Some(signatures) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || signatures.drain())),
                Err(_) => signatures.drain(),
            }
        }
    }
}
