//! The dispatcher: journals events and runs the stores' reducers over them in the thread's one
//! order, in one transaction, so views never run ahead of or behind the journal.
//!
//! Events usually arrive in order and are simply reduced. One that sorts before what is
//! already applied (a writer who was offline, a pull from a slower follower) rewinds the
//! views to the latest snapshot before it and reduces the journal again from there. While
//! events keep arriving late (writers who wrote apart, caught up together), the views are
//! also kept in memory as they were just before each batch's first event: the next late
//! event, which usually sorts only among that batch, rewinds there instead.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use tokio::sync::{broadcast, RwLock};

use crate::acl::{self, Acls};
use crate::action::{Action, Event, Position};
use crate::journal::{self, Journal, StoredSnapshot};
use crate::view::{Change, View};
use crate::{Error, Result};

/// Changes a subscriber may fall behind by before it is told it lagged (it never slows the
/// dispatcher: broadcasting drops the oldest for a slow subscriber).
const CHANGE_CHANNEL: usize = 4096;
/// Events read from the journal at a time when reducing again.
const REPLAY_PAGE: u32 = 10_000;
/// After a batch with a late event, the batches after it that keep a checkpoint of the views
/// (see `Views::checkpoint`) for the next late one.
const LATE_APPLIES: u8 = 4;

#[cfg(test)]
mod tests;
mod views;

use views::{heads_to_map, Heads, SnapshotBody, Views};

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A snapshot is taken after every this many events of the order (0: never). The
    /// positions depend only on the order, so replicas snapshot at the same events.
    pub snapshot_every: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            // A snapshot costs time in proportion to the views' size: 100,000 events
            // keep that small against reducing them, and bound a rebuild to 100,000 events.
            snapshot_every: 100_000,
        }
    }
}

struct State {
    journal: Journal,
    views: Views,
    /// Events at or before this position with a counter at most their log's here are in the
    /// views but not in the journal (compacted, or started from a snapshot): skipped.
    covered: Option<(Position, BTreeMap<[u8; 32], u64>)>,
    /// Applies left that keep a checkpoint: set by a late event, counted down by each batch
    /// without one.
    late_applies: u8,
}

pub struct Dispatcher {
    state: RwLock<State>,
    changes: broadcast::Sender<Change>,
}

/// What one call to [`Dispatcher::apply`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Events not held before.
    pub fresh: u64,
    /// Whether one of them sorted before what was applied, so the views were reduced again.
    pub rewound: bool,
}

impl Dispatcher {
    /// Opens over a journal with the given stores: restores the latest snapshot (unless a
    /// store is missing from it) and reduces the events after it. A journal that cannot be
    /// reduced again (compacted, and a store is new) is emptied, to be refilled.
    pub async fn open(
        journal: Journal,
        stores: Vec<(String, Box<dyn View>)>,
        options: Options,
    ) -> Result<Self> {
        if let Some((name, _)) = stores.iter().find(|(name, _)| name == acl::STORE) {
            return Err(Error::Refused {
                store: name.clone(),
                reason: "this store name is the ACLs'".into(),
            });
        }
        let views = Views {
            stores: stores.into_iter().collect(),
            acls: Acls::default(),
            quiet_until: None,
            last: None,
            applied: 0,
            heads: BTreeMap::new(),
            snapshot_every: options.snapshot_every,
            files: journal.files(),
            checkpoint: None,
            checkpoint_before: None,
            snapshot_hint: Default::default(),
        };
        let mut state = State {
            journal,
            views,
            covered: None,
            late_applies: 0,
        };
        if let Err(e) = state.reload().await {
            if !matches!(e, Error::NeedsRebuild) {
                return Err(e);
            }
            // Compacted past what a store registered since needs: empty the journal, which
            // its owner refills from the records (as `Database` does, from `seen_seq` 0).
            let mut tx = state.journal.begin().await?;
            journal::clear(&mut tx, &state.views.files).await?;
            tx.commit().await?;
            state.views.clear();
        }
        state.load_covered().await?;
        Ok(Self {
            state: RwLock::new(state),
            changes: broadcast::channel(CHANGE_CHANNEL).0,
        })
    }

    /// Refuses, before anything is written, actions of `log` for a store that is not
    /// registered, that their store would not apply now, or that the ACLs would ignore.
    pub async fn check(&self, log: &[u8; 32], actions: &[Action]) -> Result<()> {
        let state = self.state.read().await;
        let views = &state.views;
        // Where the event would sort: after everything applied.
        let at = Position {
            clock: views.last.map_or(1, |p| p.clock + 1),
            log: *log,
            counter: u64::MAX,
        };
        let refused = |action: &Action, reason: String| Error::Refused {
            store: action.store.clone(),
            reason,
        };
        for action in actions {
            if action.store == acl::STORE {
                views
                    .acls
                    .check(log, at, action)
                    .map_err(|reason| refused(action, reason))?;
                continue;
            }
            let view = state
                .views
                .stores
                .get(&action.store)
                .ok_or_else(|| Error::UnknownStore(action.store.clone()))?;
            view.check(action)
                .map_err(|reason| refused(action, reason))?;
            let entity = view.entity(action);
            if !views.acls.may_write(log, &action.store, entity.as_deref()) {
                let over =
                    entity.map_or("the thread".to_owned(), |e| format!("{}:{e}", action.store));
                return Err(refused(
                    action,
                    format!("this log lacks the write role over {over}"),
                ));
            }
        }
        Ok(())
    }

    /// Whether the ACLs in force let `log` write what `action` targets (of a registered
    /// store other than the ACLs'): what the views decide when they reduce it.
    pub async fn admits(&self, log: &[u8; 32], action: &Action) -> bool {
        let state = self.state.read().await;
        let views = &state.views;
        match views.stores.get(&action.store) {
            Some(view) => {
                let entity = view.entity(action);
                views.acls.may_write(log, &action.store, entity.as_deref())
            }
            None => false,
        }
    }

    /// Runs a query on the ACLs in force.
    pub async fn acls<R>(&self, f: impl FnOnce(&Acls) -> R) -> R {
        f(&self.state.read().await.views.acls)
    }

    /// The clock a new event needs to sort after everything applied here.
    pub async fn next_clock(&self) -> u64 {
        let state = self.state.read().await;
        state.views.last.map_or(1, |p| p.clock + 1)
    }

    /// Journals events (any order; those already held are skipped) and reduces them, in one
    /// transaction that also records `seen_seq`, how far the record store was read.
    pub async fn apply(&self, events: Vec<Event>, seen_seq: Option<u64>) -> Result<Applied> {
        let mut state = self.state.write().await;
        let mut changes = Vec::new();
        match state.apply(events, seen_seq, &mut changes).await {
            Ok(applied) => {
                for change in changes {
                    // No subscriber is not an error.
                    let _ = self.changes.send(change);
                }
                Ok(applied)
            }
            Err(e) => {
                // The transaction rolled back, but the views may have moved: put them back
                // where the journal is.
                state.reload().await?;
                Err(e)
            }
        }
    }

    /// Runs a query on a store's view.
    pub async fn query<V: View, R>(&self, store: &str, f: impl FnOnce(&V) -> R) -> Result<R> {
        let state = self.state.read().await;
        let view = state
            .views
            .stores
            .get(store)
            .ok_or_else(|| Error::UnknownStore(store.to_owned()))?;
        let view = view
            .as_any()
            .downcast_ref::<V>()
            .ok_or_else(|| Error::UnknownStore(format!("{store} (of another type)")))?;
        Ok(f(view))
    }

    /// Changes as they are committed. A subscriber that falls too far behind gets
    /// `RecvError::Lagged` and should query the views again.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The views' state as snapshot bytes, and the last event applied.
    pub async fn snapshot(&self) -> (Option<Position>, Vec<u8>) {
        let state = self.state.read().await;
        (state.views.last, state.views.snapshot().bytes)
    }

    /// How far the record store has been read into the journal.
    pub async fn seen_seq(&self) -> Result<u64> {
        let mut state = self.state.write().await;
        let mut tx = state.journal.begin().await?;
        journal::seen_seq(&mut tx).await
    }

    /// Events applied so far, and the last of them.
    pub async fn applied(&self) -> (u64, Option<Position>) {
        let state = self.state.read().await;
        (state.views.applied, state.views.last)
    }

    /// Frees the journal's events and snapshots older than the newest `keep` snapshots.
    pub async fn compact(&self, keep: u32) -> Result<u64> {
        let mut state = self.state.write().await;
        let state = &mut *state;
        let mut tx = state.journal.begin().await?;
        let Some((kept, removed)) = journal::compact(&mut tx, &state.views.files, keep).await?
        else {
            return Ok(0);
        };
        let body = SnapshotBody::decode(&kept.bytes)?;
        let heads = serde_ipld_dagcbor::to_vec(&body.heads).expect("heads encode");
        journal::set_covered(&mut tx, kept.pos, &heads).await?;
        tx.commit().await?;
        state.forget_checkpoint();
        state.load_covered().await?;
        Ok(removed)
    }

    /// Starts an empty database from a snapshot (one a trusted peer published): the views
    /// take its state, and the events it stands for are skipped when they arrive. Refused
    /// unless nothing was applied yet, or when the snapshot lacks a registered store.
    pub async fn start_from(&self, bytes: &[u8]) -> Result<Position> {
        let mut state = self.state.write().await;
        let refused = |reason: &str| Error::Refused {
            store: String::new(),
            reason: reason.into(),
        };
        if state.views.last.is_some() {
            return Err(refused(
                "a database that applied events does not start over",
            ));
        }
        let body = SnapshotBody::decode(bytes)?;
        let snapshot = StoredSnapshot {
            pos: Position::from_key(&body.pos)?,
            events: body.events,
            bytes: bytes.to_vec(),
        };
        if !state.views.covers(&snapshot) {
            return Err(refused("the snapshot lacks a store registered here"));
        }
        // The views take it first: a snapshot they cannot take leaves the journal untouched.
        if let Err(e) = state.views.restore(&snapshot) {
            state.views.clear();
            return Err(e);
        }
        let heads = serde_ipld_dagcbor::to_vec(&body.heads).expect("heads encode");
        let pos = snapshot.pos;
        let state = &mut *state;
        let stored = async {
            let mut tx = state.journal.begin().await?;
            journal::set_covered(&mut tx, snapshot.pos, &heads).await?;
            journal::save_snapshot(&mut tx, &state.views.files, snapshot).await?;
            tx.commit().await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = stored {
            state.views.clear();
            return Err(e);
        }
        state.load_covered().await?;
        Ok(pos)
    }

    /// Events the journal holds (fewer than applied after compaction or a snapshot start).
    pub async fn journaled(&self) -> Result<u64> {
        let mut state = self.state.write().await;
        let mut tx = state.journal.begin().await?;
        journal::len(&mut tx).await
    }

    /// Empties the journal and the views, to be refilled from the record store.
    pub async fn reset(&self) -> Result<()> {
        let mut state = self.state.write().await;
        let state = &mut *state;
        let mut tx = state.journal.begin().await?;
        journal::clear(&mut tx, &state.views.files).await?;
        tx.commit().await?;
        state.views.clear();
        state.forget_checkpoint();
        state.covered = None;
        let _ = self.changes.send(Change {
            store: String::new(),
            pos: None,
            change: serde_json::json!({"type": "rebuilt"}),
        });
        Ok(())
    }
}

impl State {
    async fn apply(
        &mut self,
        mut events: Vec<Event>,
        seen_seq: Option<u64>,
        changes: &mut Vec<Change>,
    ) -> Result<Applied> {
        events.sort_by_key(|e| e.pos);
        events.dedup_by_key(|e| e.pos);
        if let Some((through, heads)) = &self.covered {
            events.retain(|e| {
                let head = heads.get(&e.pos.log).copied().unwrap_or(0);
                !(e.pos <= *through && e.pos.counter <= head)
            });
        }
        let mut tx = self.journal.begin().await?;
        let (events, bytes) = journal::insert(&mut tx, events).await?;
        self.views.snapshot_hint.fetch_add(bytes, Ordering::Relaxed);
        if let Some(seq) = seen_seq {
            journal::set_seen_seq(&mut tx, seq).await?;
        }
        let Some(first) = events.first().map(|e| e.pos) else {
            tx.commit().await?;
            return Ok(Applied::default());
        };
        let rewound = self.views.last.is_some_and(|last| first < last);
        if rewound {
            self.late_applies = LATE_APPLIES;
        } else {
            self.late_applies = self.late_applies.saturating_sub(1);
        }
        // While events arrive late, the next late one most likely sorts only among this
        // batch: the views as they stand just before its first event are kept for it.
        if self.late_applies == 0 {
            self.views.checkpoint = None;
        }
        let checkpoint_before = (self.late_applies > 0).then_some(first);
        if rewound {
            if (self.views.checkpoint.as_ref()).is_some_and(|c| c.pos >= first) {
                self.views.checkpoint = None;
            }
            journal::drop_snapshots_from(&mut tx, &self.views.files, first).await?;
            self.views.rewind(&mut tx, Some(first)).await?;
            self.views.checkpoint_before = checkpoint_before;
            self.views.replay(&mut tx).await?;
            changes.extend(self.views.rebuilt());
        } else {
            self.views.checkpoint_before = checkpoint_before;
            for event in &events {
                self.views.checkpoint_if_due(event.pos);
                if let Some(deleted) = self.views.reduce(event, Some(changes)) {
                    // The rest of the batch is in the journal: reduce it from there.
                    self.views
                        .rewind_for_delete(&mut tx, deleted, event.pos)
                        .await?;
                    self.views.replay(&mut tx).await?;
                    changes.extend(self.views.rebuilt());
                    break;
                }
                self.views.snapshot_if_due(&mut tx).await?;
            }
        }
        self.views.checkpoint_before = None;
        tx.commit().await?;
        Ok(Applied {
            fresh: events.len() as u64,
            rewound,
        })
    }

    /// Drops the in-memory checkpoint: what it stands for was freed, or may not be committed.
    fn forget_checkpoint(&mut self) {
        self.views.checkpoint = None;
        self.views.checkpoint_before = None;
        self.late_applies = 0;
    }

    async fn load_covered(&mut self) -> Result<()> {
        let mut tx = self.journal.begin().await?;
        self.covered = match journal::covered(&mut tx).await? {
            Some((through, heads)) if !heads.is_empty() => {
                let heads: Heads = serde_ipld_dagcbor::from_slice(&heads)
                    .map_err(|e| Error::Corrupt(format!("covered heads: {e}")))?;
                Some((through, heads_to_map(&heads)?))
            }
            _ => None,
        };
        Ok(())
    }

    /// Puts the views where the journal is: the latest usable snapshot, then the events after.
    async fn reload(&mut self) -> Result<()> {
        // A checkpoint may hold events whose transaction did not commit.
        self.forget_checkpoint();
        let mut tx = self.journal.begin().await?;
        self.views.rewind(&mut tx, None).await?;
        self.views.replay(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}
