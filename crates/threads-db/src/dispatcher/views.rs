//! The views a dispatcher reduces into: the stores and the ACLs, what they have applied, and
//! their snapshots (taken, restored, and rewound to when an event sorts earlier).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;
use threads_core::CborWriter;

use crate::acl::{self, Acls, Effect};
use crate::action::{Event, Position, KEY_LEN};
use crate::cbor;
use crate::journal::{self, SnapshotFiles, StoredSnapshot};
use crate::view::{Change, Context, View};
use crate::{Error, Result};

use super::REPLAY_PAGE;

/// The most a snapshot's buffer starts with. Actions journaled may far outweigh the views they
/// leave (a key written over again and again): past this the buffer grows as it fills.
const SNAPSHOT_HINT_MAX: usize = 256 << 20;

/// The stores, the ACLs, and what they have applied.
pub(super) struct Views {
    pub(super) stores: BTreeMap<String, Box<dyn View>>,
    pub(super) acls: Acls,
    /// While a delete's rewind reduces again up to the delete, the states passed through
    /// are not those of their own positions: no snapshot is taken until past this one.
    pub(super) quiet_until: Option<Position>,
    /// The last event reduced, and how many events of the order that makes.
    pub(super) last: Option<Position>,
    pub(super) applied: u64,
    /// Per log, the highest counter reduced.
    pub(super) heads: BTreeMap<[u8; 32], u64>,
    pub(super) snapshot_every: u64,
    /// Where the journal keeps snapshots.
    pub(super) files: SnapshotFiles,
    /// While events keep arriving late: the views as they were just before the first event
    /// of the last batch, in memory, so that a late event rewinds to here instead of to the
    /// journal's last snapshot (which, during a catch-up, is often the start). Dropped once
    /// an event sorts before it.
    pub(super) checkpoint: Option<StoredSnapshot>,
    /// Where the batch being applied starts: the checkpoint is taken before reducing the
    /// first event at or after it.
    pub(super) checkpoint_before: Option<Position>,
    /// What the next snapshot should take: the last one's size plus the bytes of the actions
    /// journaled since. Its buffer starts an eighth larger, where growing it by doubling
    /// copied every byte again and faulted in twice the memory (the first snapshot of a
    /// 100,000-document catch-up spent half its time so).
    pub(super) snapshot_hint: AtomicUsize,
}

/// The bytes of a snapshot: where it was taken, and every store's state (DAG-CBOR, so the
/// same views give the same bytes on every replica).
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotBody {
    #[serde(with = "serde_bytes")]
    pub(super) pos: Vec<u8>,
    pub(super) events: u64,
    pub(super) views: BTreeMap<String, serde_bytes::ByteBuf>,
    /// Per log, the highest counter reduced: what the snapshot stands for.
    pub(super) heads: Heads,
}

/// Per log key, a counter; as DAG-CBOR a list of `[key, counter]` (map keys must be text).
pub(super) type Heads = Vec<(serde_bytes::ByteBuf, u64)>;

pub(super) fn heads_to_map(heads: &Heads) -> Result<BTreeMap<[u8; 32], u64>> {
    heads
        .iter()
        .map(|(log, counter)| {
            let log = <[u8; 32]>::try_from(log.as_slice())
                .map_err(|_| Error::Corrupt("a log key in a snapshot's heads".into()))?;
            Ok((log, *counter))
        })
        .collect()
}

impl SnapshotBody {
    pub(super) fn decode(bytes: &[u8]) -> Result<Self> {
        serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| Error::Corrupt(format!("a snapshot: {e}")))
    }
}

impl Views {
    pub(super) fn clear(&mut self) {
        self.stores.values_mut().for_each(|v| v.clear());
        self.acls.clear();
        self.quiet_until = None;
        self.last = None;
        self.applied = 0;
        self.heads.clear();
    }

    /// Every store (and the ACLs) was reduced again.
    pub(super) fn rebuilt(&self) -> Vec<Change> {
        let names = self.stores.keys().map(String::as_str);
        std::iter::once(acl::STORE)
            .chain(names)
            .map(|store| Change {
                store: store.to_owned(),
                pos: self.last,
                change: serde_json::json!({"type": "rebuilt"}),
            })
            .collect()
    }

    /// Runs each action of the event through the ACLs, then its store's reducer. Actions for
    /// a store not registered here, actions the ACLs do not allow at this point of the order,
    /// and actions a reducer refuses are ignored, alike on every replica. A deleted event
    /// does nothing, but still counts in the order.
    ///
    /// Returns an event this one deleted: the views must then be reduced again without it.
    pub(super) fn reduce(
        &mut self,
        event: &Event,
        mut changes: Option<&mut Vec<Change>>,
    ) -> Option<Position> {
        let mut deleted = None;
        if !self.acls.is_deleted(&event.pos) {
            let log = event.pos.log;
            for (index, action) in event.actions.iter().enumerate() {
                let change = if action.store == acl::STORE {
                    match self.acls.reduce(&log, event.pos, action) {
                        Ok(Effect::Done(change)) => change,
                        Ok(Effect::Deleted(target)) => {
                            deleted = Some(deleted.map_or(target, |d: Position| d.min(target)));
                            Some(
                                serde_json::json!({"type": "delete_event", "event": hex::encode(target.key())}),
                            )
                        }
                        Err(_) => None,
                    }
                } else {
                    let Some(view) = self.stores.get_mut(&action.store) else {
                        continue;
                    };
                    // With no ACL at all the thread is open, and nothing needs looking up.
                    if !self.acls.is_empty() {
                        let entity = view.entity(action);
                        if !self.acls.may_write(&log, &action.store, entity.as_deref()) {
                            continue;
                        }
                    }
                    let at = Context {
                        pos: event.pos,
                        index,
                    };
                    view.reduce(&at, action).ok().flatten()
                };
                if let (Some(change), Some(changes)) = (change, &mut changes) {
                    changes.push(Change {
                        store: action.store.clone(),
                        pos: Some(event.pos),
                        change,
                    });
                }
            }
        }
        self.last = Some(event.pos);
        self.applied += 1;
        let head = self.heads.entry(event.pos.log).or_insert(0);
        *head = (*head).max(event.pos.counter);
        deleted
    }

    /// After the event at `at` deleted `target`: back to the latest snapshot before the
    /// target, keeping every deletion made so far, so that reducing again up to `at` leaves
    /// the target (and everything deleted since) out.
    ///
    /// Snapshots (and the checkpoint) from the target on hold its effects, and those before
    /// `at` are not taken again on the way (see `quiet_until`): they are dropped. Kept, a
    /// later delete's rewind could restore one while carrying this deletion over, and the
    /// target's effects would stay for good.
    pub(super) async fn rewind_for_delete(
        &mut self,
        tx: &mut SqliteConnection,
        target: Position,
        at: Position,
    ) -> Result<()> {
        let deleted = self.acls.deleted();
        let quiet = self.quiet_until.map_or(at, |q| q.max(at));
        journal::drop_snapshots_from(tx, &self.files, target).await?;
        if self.checkpoint.as_ref().is_some_and(|c| c.pos >= target) {
            self.checkpoint = None;
        }
        self.rewind(tx, Some(target)).await?;
        self.acls.set_deleted(deleted);
        self.quiet_until = Some(quiet);
        Ok(())
    }

    /// Puts the views at the latest snapshot before `before` (before nothing: the latest)
    /// that holds every store, or empties them when there is none and the journal still has
    /// every event.
    pub(super) async fn rewind(
        &mut self,
        tx: &mut SqliteConnection,
        before: Option<Position>,
    ) -> Result<()> {
        self.clear();
        // The checkpoint, unless the journal has a snapshot between it and `before`.
        let checkpoint = match (&self.checkpoint, before) {
            (Some(c), Some(before)) if c.pos < before => {
                let newer = journal::snapshot_pos_before(tx, before).await?;
                newer.is_none_or(|p| p <= c.pos)
            }
            _ => false,
        };
        if checkpoint {
            let checkpoint = self.checkpoint.take().expect("checked above");
            let restored = self.restore(&checkpoint);
            self.checkpoint = Some(checkpoint);
            return restored;
        }
        if let Some(snapshot) = journal::snapshot_before(tx, &self.files, before).await? {
            if self.covers(&snapshot) {
                return self.restore(&snapshot);
            }
        }
        if journal::compacted(tx).await? {
            return Err(Error::NeedsRebuild);
        }
        Ok(())
    }

    /// Reduces the journal's events after the last applied one.
    pub(super) async fn replay(&mut self, tx: &mut SqliteConnection) -> Result<()> {
        loop {
            let page = journal::events_after(tx, self.last, REPLAY_PAGE).await?;
            if page.is_empty() {
                return Ok(());
            }
            for event in &page {
                self.checkpoint_if_due(event.pos);
                if let Some(deleted) = self.reduce(event, None) {
                    self.rewind_for_delete(tx, deleted, event.pos).await?;
                    break;
                }
                self.snapshot_if_due(tx).await?;
            }
        }
    }

    /// Keeps the views as they stand as the checkpoint when `next`, the event about to be
    /// reduced, is where the batch starts.
    pub(super) fn checkpoint_if_due(&mut self, next: Position) {
        if self.checkpoint_before.is_none_or(|at| next < at) {
            return;
        }
        self.checkpoint_before = None;
        // Not while a delete's rewind is under way (its states are not those of their
        // positions), not for nothing applied, not again for the same place.
        let kept = self.checkpoint.as_ref().map(|c| c.pos);
        if self.quiet_until.is_none() && self.last.is_some() && self.last != kept {
            self.checkpoint = Some(self.snapshot());
        }
    }

    pub(super) async fn snapshot_if_due(&mut self, tx: &mut SqliteConnection) -> Result<()> {
        if let (Some(quiet), Some(last)) = (self.quiet_until, self.last) {
            if last <= quiet {
                return Ok(());
            }
            self.quiet_until = None;
        }
        if self.snapshot_every > 0 && self.applied % self.snapshot_every == 0 {
            journal::save_snapshot(tx, &self.files, self.snapshot()).await?;
        }
        Ok(())
    }

    /// The views as a [`SnapshotBody`] encodes, written straight into the buffer.
    pub(super) fn snapshot(&self) -> StoredSnapshot {
        let pos = self.last.unwrap_or(Position {
            clock: 0,
            log: [0; 32],
            counter: 0,
        });
        // Each view writes its state into this buffer (`None`: the ACLs).
        let views = self
            .stores
            .iter()
            .map(|(name, view)| (name.as_str(), Some(view)))
            .chain([(acl::STORE, None)]);
        let hint = self
            .snapshot_hint
            .load(Ordering::Relaxed)
            .min(SNAPSHOT_HINT_MAX);
        let mut w = CborWriter::with_capacity(hint + hint / 8);
        // The body's fields, in DAG-CBOR's key order.
        w.map(4);
        w.key("pos");
        w.bytes(&pos.key());
        w.key("heads");
        w.list(self.heads.len() as u64);
        for (log, counter) in &self.heads {
            w.list(2);
            w.bytes(log);
            w.uint(*counter);
        }
        w.key("views");
        cbor::map(&mut w, views, |w, view| match view {
            Some(view) => w.bytes_with(|w| view.write_snapshot(w)),
            None => w.bytes(&self.acls.snapshot()),
        });
        w.key("events");
        w.uint(self.applied);
        let bytes = w.into_bytes();
        self.snapshot_hint.store(bytes.len(), Ordering::Relaxed);
        StoredSnapshot {
            pos,
            events: self.applied,
            bytes,
        }
    }

    /// Whether a snapshot holds every registered store (one registered since must start over).
    pub(super) fn covers(&self, snapshot: &StoredSnapshot) -> bool {
        serde_ipld_dagcbor::from_slice::<SnapshotBody>(&snapshot.bytes).is_ok_and(|body| {
            let mut names = self.stores.keys().map(String::as_str);
            names.all(|name| body.views.contains_key(name)) && body.views.contains_key(acl::STORE)
        })
    }

    pub(super) fn restore(&mut self, snapshot: &StoredSnapshot) -> Result<()> {
        let body = SnapshotBody::decode(&snapshot.bytes)?;
        if body.pos.len() != KEY_LEN || body.pos != snapshot.pos.key() {
            return Err(Error::Corrupt("a snapshot's position".into()));
        }
        let acls = body
            .views
            .get(acl::STORE)
            .ok_or_else(|| Error::Corrupt("the snapshot has no ACLs".into()))?;
        self.acls
            .restore(acls)
            .map_err(|e| Error::Corrupt(format!("the snapshot of the ACLs: {e}")))?;
        for (name, view) in &mut self.stores {
            let bytes = body
                .views
                .get(name)
                .ok_or_else(|| Error::Corrupt(format!("the snapshot has no store {name}")))?;
            view.restore(bytes)
                .map_err(|e| Error::Corrupt(format!("the snapshot of store {name}: {e}")))?;
        }
        self.last = Some(snapshot.pos);
        self.applied = snapshot.events;
        self.heads = heads_to_map(&body.heads)?;
        self.snapshot_hint
            .fetch_max(snapshot.bytes.len(), Ordering::Relaxed);
        Ok(())
    }
}
