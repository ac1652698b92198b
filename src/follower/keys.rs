//! Follow keys of the threads pushed to lately. Every push verifies its records with their
//! thread's follow key, and a live writer pushes to the same thread again and again: one
//! record per request would otherwise read the thread's row once per record.
//!
//! A key is kept for [`TTL`]: what another process sharing the database changes (a thread
//! made private, deleted, or taken back from a squatter under another key) is seen within it.
//! This process forgets a thread as it registers or deletes it. A record that fails with a
//! kept key is verified again with the stored one ([`super::push`]), so a stale key never
//! refuses a record.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use threads_core::{ServiceKey, ThreadId};

/// How long a thread's key and visibility are trusted without reading them again.
const TTL: Duration = Duration::from_secs(1);
/// Threads kept at most; past it, expired ones go, then all (it refills from the store).
const MAX_THREADS: usize = 16 * 1024;

/// What a push needs of its thread.
#[derive(Clone)]
pub struct PushKey {
    pub follow_key: ServiceKey,
    pub public: bool,
}

#[derive(Default)]
pub struct Keys(Mutex<HashMap<ThreadId, (PushKey, Instant)>>);

impl Keys {
    /// The thread's key, if read less than [`TTL`] ago.
    pub fn get(&self, thread: &ThreadId) -> Option<PushKey> {
        let kept = self.0.lock().expect("not poisoned");
        let (key, at) = kept.get(thread)?;
        (at.elapsed() < TTL).then(|| key.clone())
    }

    pub fn put(&self, thread: &ThreadId, key: PushKey) {
        let mut kept = self.0.lock().expect("not poisoned");
        if kept.len() >= MAX_THREADS && !kept.contains_key(thread) {
            kept.retain(|_, (_, at)| at.elapsed() < TTL);
            if kept.len() >= MAX_THREADS {
                kept.clear();
            }
        }
        kept.insert(thread.clone(), (key, Instant::now()));
    }

    pub fn forget(&self, thread: &ThreadId) {
        self.0.lock().expect("not poisoned").remove(thread);
    }
}
