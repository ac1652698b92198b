//! The dispatcher: journals events and runs the stores' reducers over them in the thread's one
//! order, in one transaction, so views never run ahead of or behind the journal.
//!
//! Events usually arrive in order and are simply reduced. One that sorts before what is
//! already applied (a writer who was offline, a pull from a slower follower) rewinds the
//! views to the latest snapshot before it and reduces the journal again from there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;
use tokio::sync::{broadcast, RwLock};

use crate::acl::{self, Acls, Effect};
use crate::action::{Action, Event, Position, KEY_LEN};
use crate::journal::{self, Journal, StoredSnapshot};
use crate::view::{Change, Context, View};
use crate::{Error, Result};

/// Changes a subscriber may fall behind by before it is told it lagged (it never slows the
/// dispatcher: broadcasting drops the oldest for a slow subscriber).
const CHANGE_CHANNEL: usize = 4096;
/// Events read from the journal at a time when reducing again.
const REPLAY_PAGE: u32 = 10_000;

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

/// The stores, the ACLs, and what they have applied.
struct Views {
    stores: BTreeMap<String, Box<dyn View>>,
    acls: Acls,
    /// While a delete's rewind reduces again up to the delete, the states passed through
    /// are not those of their own positions: no snapshot is taken until past this one.
    quiet_until: Option<Position>,
    /// The last event reduced, and how many events of the order that makes.
    last: Option<Position>,
    applied: u64,
    /// Per log, the highest counter reduced.
    heads: BTreeMap<[u8; 32], u64>,
    snapshot_every: u64,
}

struct State {
    journal: Journal,
    views: Views,
    /// Events at or before this position with a counter at most their log's here are in the
    /// views but not in the journal (compacted, or started from a snapshot): skipped.
    covered: Option<(Position, BTreeMap<[u8; 32], u64>)>,
}

/// The bytes of a snapshot: where it was taken, and every store's state (DAG-CBOR, so the
/// same views give the same bytes on every replica).
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    #[serde(with = "serde_bytes")]
    pos: Vec<u8>,
    events: u64,
    views: BTreeMap<String, serde_bytes::ByteBuf>,
    /// Per log, the highest counter reduced: what the snapshot stands for.
    heads: Heads,
}

/// Per log key, a counter; as DAG-CBOR a list of `[key, counter]` (map keys must be text).
type Heads = Vec<(serde_bytes::ByteBuf, u64)>;

fn heads_to_map(heads: &Heads) -> Result<BTreeMap<[u8; 32], u64>> {
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
    fn decode(bytes: &[u8]) -> Result<Self> {
        serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| Error::Corrupt(format!("a snapshot: {e}")))
    }
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
        };
        let mut state = State {
            journal,
            views,
            covered: None,
        };
        if let Err(e) = state.reload().await {
            if !matches!(e, Error::NeedsRebuild) {
                return Err(e);
            }
            // Compacted past what a store registered since needs: empty the journal, which
            // its owner refills from the records (as `Database` does, from `seen_seq` 0).
            let mut tx = state.journal.begin().await?;
            journal::clear(&mut tx).await?;
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
        let mut tx = state.journal.begin().await?;
        let Some((kept, removed)) = journal::compact(&mut tx, keep).await? else {
            return Ok(0);
        };
        let body = SnapshotBody::decode(&kept.bytes)?;
        let heads = serde_ipld_dagcbor::to_vec(&body.heads).expect("heads encode");
        journal::set_covered(&mut tx, kept.pos, &heads).await?;
        tx.commit().await?;
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
        let stored = async {
            let mut tx = state.journal.begin().await?;
            journal::save_snapshot(&mut tx, &snapshot).await?;
            journal::set_covered(&mut tx, snapshot.pos, &heads).await?;
            tx.commit().await?;
            Ok::<_, Error>(())
        }
        .await;
        if let Err(e) = stored {
            state.views.clear();
            return Err(e);
        }
        state.load_covered().await?;
        Ok(snapshot.pos)
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
        let mut tx = state.journal.begin().await?;
        journal::clear(&mut tx).await?;
        tx.commit().await?;
        state.views.clear();
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
        let events = journal::insert(&mut tx, events).await?;
        if let Some(seq) = seen_seq {
            journal::set_seen_seq(&mut tx, seq).await?;
        }
        let Some(first) = events.first().map(|e| e.pos) else {
            tx.commit().await?;
            return Ok(Applied::default());
        };
        let rewound = self.views.last.is_some_and(|last| first < last);
        if rewound {
            journal::drop_snapshots_from(&mut tx, first).await?;
            self.views.rewind(&mut tx, Some(first)).await?;
            self.views.replay(&mut tx).await?;
            changes.extend(self.views.rebuilt());
        } else {
            for event in &events {
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
        tx.commit().await?;
        Ok(Applied {
            fresh: events.len() as u64,
            rewound,
        })
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
        let mut tx = self.journal.begin().await?;
        self.views.rewind(&mut tx, None).await?;
        self.views.replay(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Views {
    fn clear(&mut self) {
        self.stores.values_mut().for_each(|v| v.clear());
        self.acls.clear();
        self.quiet_until = None;
        self.last = None;
        self.applied = 0;
        self.heads.clear();
    }

    /// Every store (and the ACLs) was reduced again.
    fn rebuilt(&self) -> Vec<Change> {
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
    fn reduce(&mut self, event: &Event, mut changes: Option<&mut Vec<Change>>) -> Option<Position> {
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
    async fn rewind_for_delete(
        &mut self,
        tx: &mut SqliteConnection,
        target: Position,
        at: Position,
    ) -> Result<()> {
        let deleted = self.acls.deleted();
        let quiet = self.quiet_until.map_or(at, |q| q.max(at));
        self.rewind(tx, Some(target)).await?;
        self.acls.set_deleted(deleted);
        self.quiet_until = Some(quiet);
        Ok(())
    }

    /// Puts the views at the latest snapshot before `before` (before nothing: the latest)
    /// that holds every store, or empties them when there is none and the journal still has
    /// every event.
    async fn rewind(&mut self, tx: &mut SqliteConnection, before: Option<Position>) -> Result<()> {
        self.clear();
        if let Some(snapshot) = journal::snapshot_before(tx, before).await? {
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
    async fn replay(&mut self, tx: &mut SqliteConnection) -> Result<()> {
        loop {
            let page = journal::events_after(tx, self.last, REPLAY_PAGE).await?;
            if page.is_empty() {
                return Ok(());
            }
            for event in &page {
                if let Some(deleted) = self.reduce(event, None) {
                    self.rewind_for_delete(tx, deleted, event.pos).await?;
                    break;
                }
                self.snapshot_if_due(tx).await?;
            }
        }
    }

    async fn snapshot_if_due(&mut self, tx: &mut SqliteConnection) -> Result<()> {
        if let (Some(quiet), Some(last)) = (self.quiet_until, self.last) {
            if last <= quiet {
                return Ok(());
            }
            self.quiet_until = None;
        }
        if self.snapshot_every > 0 && self.applied % self.snapshot_every == 0 {
            journal::save_snapshot(tx, &self.snapshot()).await?;
        }
        Ok(())
    }

    fn snapshot(&self) -> StoredSnapshot {
        let pos = self.last.unwrap_or(Position {
            clock: 0,
            log: [0; 32],
            counter: 0,
        });
        let body = SnapshotBody {
            pos: pos.key().to_vec(),
            events: self.applied,
            views: self
                .stores
                .iter()
                .map(|(name, view)| (name.clone(), serde_bytes::ByteBuf::from(view.snapshot())))
                .chain([(
                    acl::STORE.to_owned(),
                    serde_bytes::ByteBuf::from(self.acls.snapshot()),
                )])
                .collect(),
            heads: self
                .heads
                .iter()
                .map(|(log, counter)| (serde_bytes::ByteBuf::from(log.to_vec()), *counter))
                .collect(),
        };
        StoredSnapshot {
            pos,
            events: self.applied,
            bytes: serde_ipld_dagcbor::to_vec(&body).expect("a snapshot is plain data"),
        }
    }

    /// Whether a snapshot holds every registered store (one registered since must start over).
    fn covers(&self, snapshot: &StoredSnapshot) -> bool {
        serde_ipld_dagcbor::from_slice::<SnapshotBody>(&snapshot.bytes).is_ok_and(|body| {
            let mut names = self.stores.keys().map(String::as_str);
            names.all(|name| body.views.contains_key(name)) && body.views.contains_key(acl::STORE)
        })
    }

    fn restore(&mut self, snapshot: &StoredSnapshot) -> Result<()> {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use std::collections::BTreeMap;

    use threads_core::{Keypair, LogId};

    use super::*;
    use crate::acl::{AclDoc, Role};
    use crate::docs::{self, DocStore};
    use crate::kv::{self, KvStore};

    async fn dispatcher(snapshot_every: u64) -> Dispatcher {
        let journal = Journal::open(None).await.unwrap();
        let stores: Vec<(String, Box<dyn View>)> = vec![
            (kv::STORE.into(), Box::new(KvStore::default())),
            (docs::STORE.into(), Box::new(DocStore::default())),
        ];
        Dispatcher::open(journal, stores, Options { snapshot_every })
            .await
            .unwrap()
    }

    /// The key of test log `n` (a real Ed25519 key: ACLs name logs by their IDs).
    fn log(n: u8) -> [u8; 32] {
        *Keypair::from_seed(&[n; 32]).public().as_bytes()
    }

    fn log_id(n: u8) -> String {
        LogId::from(Keypair::from_seed(&[n; 32]).public()).to_string()
    }

    fn event(clock: u64, n: u8, counter: u64, actions: Vec<Action>) -> Event {
        Event {
            pos: Position {
                clock,
                log: log(n),
                counter,
            },
            actions,
        }
    }

    async fn get(d: &Dispatcher, key: &str) -> Option<Value> {
        d.query(kv::STORE, |kv: &KvStore| kv.get(key).cloned())
            .await
            .unwrap()
    }

    use serde_json::Value;

    #[tokio::test]
    async fn a_late_event_that_sorts_earlier_is_reduced_in_its_place() {
        let d = dispatcher(2).await;
        let mut changes = d.subscribe();
        d.apply(vec![event(1, 1, 1, vec![kv::put("a", json!(1))])], None)
            .await
            .unwrap();
        d.apply(vec![event(3, 1, 2, vec![kv::put("a", json!(3))])], None)
            .await
            .unwrap();
        assert_eq!(changes.recv().await.unwrap().change["type"], "put");
        // Written at clock 2 by an offline writer: it sorts between the two, so the later
        // put still wins.
        let applied = d
            .apply(vec![event(2, 2, 1, vec![kv::put("a", json!(2))])], None)
            .await
            .unwrap();
        assert_eq!(
            applied,
            Applied {
                fresh: 1,
                rewound: true
            }
        );
        assert_eq!(get(&d, "a").await, Some(json!(3)));
        assert_eq!(d.applied().await.0, 3);
        // Held already: nothing happens.
        let again = d
            .apply(vec![event(2, 2, 1, vec![kv::put("a", json!(2))])], None)
            .await
            .unwrap();
        assert_eq!(again, Applied::default());
    }

    #[tokio::test]
    async fn unknown_stores_and_malformed_actions_are_ignored_alike() {
        let d = dispatcher(0).await;
        let events = vec![event(
            1,
            1,
            1,
            vec![
                Action::new("elsewhere", "put", json!({})),
                Action::new(kv::STORE, "put", json!({"no key": 1})),
                kv::put("b", json!("kept")),
            ],
        )];
        d.apply(events, None).await.unwrap();
        assert_eq!(get(&d, "b").await, Some(json!("kept")));
        assert!(matches!(
            d.check(&[1; 32], &[Action::new("elsewhere", "put", json!({}))])
                .await,
            Err(Error::UnknownStore(_))
        ));
        assert!(matches!(
            d.check(
                &[1; 32],
                &[Action::new(kv::STORE, "put", json!({"key": "k"}))]
            )
            .await,
            Err(Error::Refused { .. })
        ));
    }

    #[tokio::test]
    async fn compaction_frees_old_events_and_a_late_event_before_them_asks_for_a_rebuild() {
        let d = dispatcher(10).await;
        let events: Vec<Event> = (1..=35)
            .map(|i| event(i * 2, 1, i, vec![kv::put(&format!("k{i}"), json!(i))]))
            .collect();
        d.apply(events, None).await.unwrap();
        assert_eq!(d.compact(1).await.unwrap(), 30);
        let before = d.snapshot().await;
        // Sorts after the kept snapshot: reduced from it.
        d.apply(vec![event(65, 2, 1, vec![kv::put("late", json!(1))])], None)
            .await
            .unwrap();
        assert_eq!(get(&d, "late").await, Some(json!(1)));
        // Sorts before it: the freed events are needed.
        let err = d
            .apply(vec![event(3, 2, 2, vec![kv::put("early", json!(1))])], None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NeedsRebuild), "{err}");
        assert_eq!(get(&d, "early").await, None, "nothing of it was applied");
        assert_ne!(d.snapshot().await, before);
    }

    async fn stored_snapshots(d: &Dispatcher) -> Vec<(Vec<u8>, i64, Vec<u8>)> {
        let mut state = d.state.write().await;
        let mut tx = state.journal.begin().await.unwrap();
        sqlx::query_as("SELECT pos, events, bytes FROM snapshots ORDER BY pos")
            .fetch_all(&mut *tx)
            .await
            .unwrap()
    }

    fn acl_doc() -> impl Strategy<Value = AclDoc> {
        let role =
            prop::sample::select(vec![Role::NoAccess, Role::Read, Role::Write, Role::Delete]);
        let roles = prop::sample::select(vec![
            vec![Role::Write],
            vec![Role::Write, Role::Delete],
            vec![Role::Read],
            vec![Role::Delete],
        ]);
        (role, prop::collection::btree_map(1..4u8, roles, 0..3)).prop_map(|(default, peers)| {
            AclDoc {
                default,
                peers: peers.into_iter().map(|(n, r)| (log_id(n), r)).collect(),
            }
        })
    }

    /// The paper's Table 1: Jane reads; John creates, edits, deletes; Mary edits and reads.
    #[tokio::test]
    async fn table_one_is_enforced_at_each_point_of_the_order() {
        let (john, mary, jane) = (1, 2, 3);
        let d = dispatcher(0).await;
        let mut clock = 0;
        let mut counters = BTreeMap::new();
        let mut next = |n: u8| {
            clock += 1;
            let counter = counters.entry(n).or_insert(0u64);
            *counter += 1;
            (clock, n, *counter)
        };
        let thread_acl = AclDoc {
            default: Role::NoAccess,
            peers: BTreeMap::from([
                (log_id(john), vec![Role::Write, Role::Delete]),
                (log_id(mary), vec![Role::Read]),
                (log_id(jane), vec![Role::Read]),
            ]),
        };
        // Mary may edit the document "plan" but create nothing.
        let plan_acl = AclDoc {
            default: Role::Read,
            peers: BTreeMap::from([
                (log_id(john), vec![Role::Write]),
                (log_id(mary), vec![Role::Write]),
            ]),
        };
        let script: Vec<(u8, Action)> = vec![
            (
                mary,
                kv::put("early", json!("before any ACL, the thread is open")),
            ),
            (john, acl::set(acl::THREAD, &thread_acl)),
            (john, kv::put("plan", json!("v1"))),
            (jane, kv::put("plan", json!("jane edits"))),
            (mary, kv::put("plan", json!("mary edits"))),
            (john, acl::set("kv:plan", &plan_acl)),
            (mary, kv::put("plan", json!("v2 by mary"))),
            (mary, kv::put("new", json!("mary creates"))),
            (
                jane,
                acl::set(
                    acl::THREAD,
                    &AclDoc {
                        default: Role::Write,
                        peers: BTreeMap::new(),
                    },
                ),
            ),
            (john, kv::put("doomed", json!(1))),
        ];
        let mut positions = Vec::new();
        for (who, action) in script {
            let (clock, n, counter) = next(who);
            let e = event(clock, n, counter, vec![action]);
            positions.push(e.pos);
            d.apply(vec![e], None).await.unwrap();
        }
        let doomed = positions[9];
        let early = positions[0];
        let (clock, n, counter) = next(mary);
        d.apply(
            vec![event(clock, n, counter, vec![acl::delete_event(early)])],
            None,
        )
        .await
        .unwrap();
        let (clock, n, counter) = next(john);
        d.apply(
            vec![event(clock, n, counter, vec![acl::delete_event(doomed)])],
            None,
        )
        .await
        .unwrap();

        assert_eq!(
            get(&d, "early").await,
            Some(json!("before any ACL, the thread is open"))
        );
        assert_eq!(get(&d, "plan").await, Some(json!("v2 by mary")));
        assert_eq!(get(&d, "new").await, None, "Mary may not create");
        assert_eq!(get(&d, "doomed").await, None, "John deleted it");
        let acl = d.acls(|a| a.get(acl::THREAD).cloned()).await;
        assert_eq!(acl, Some(thread_acl), "Jane may not change the ACL");

        // The same, refused up front when dispatched locally.
        assert!(matches!(
            d.check(&log(jane), &[kv::put("plan", json!(0))]).await,
            Err(Error::Refused { reason, .. }) if reason.contains("write role over kv:plan")
        ));
        assert!(d
            .check(&log(mary), &[kv::put("plan", json!(0))])
            .await
            .is_ok());
        assert!(d
            .check(&log(mary), &[acl::delete_event(early)])
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_store_added_after_compaction_gets_an_empty_journal_to_refill() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sqlite");
        let open = |with_docs: bool| {
            let path = path.clone();
            async move {
                let mut stores: Vec<(String, Box<dyn View>)> =
                    vec![(kv::STORE.into(), Box::new(KvStore::default()))];
                if with_docs {
                    stores.push((
                        crate::docs::STORE.into(),
                        Box::new(crate::DocStore::default()),
                    ));
                }
                let journal = Journal::open(Some(&path)).await.unwrap();
                Dispatcher::open(journal, stores, Options { snapshot_every: 5 })
                    .await
                    .unwrap()
            }
        };
        let d = open(false).await;
        let events = (1..=12)
            .map(|i| event(i, 1, i, vec![kv::put("k", json!(i))]))
            .collect();
        d.apply(events, Some(12)).await.unwrap();
        d.compact(1).await.unwrap();
        drop(d);
        assert_eq!(
            open(false).await.applied().await.0,
            12,
            "reopened from its snapshot"
        );
        let d = open(true).await;
        assert_eq!(d.applied().await, (0, None));
        assert_eq!(
            d.seen_seq().await.unwrap(),
            0,
            "to be read again from the start"
        );
    }

    #[tokio::test]
    async fn starting_from_a_snapshot_skips_what_it_stands_for() {
        let a = dispatcher(0).await;
        let events: Vec<Event> = (1..=10)
            .map(|i| {
                event(
                    i * 2,
                    (i % 2) as u8 + 1,
                    i.div_ceil(2),
                    vec![kv::put(&format!("k{i}"), json!(i))],
                )
            })
            .collect();
        a.apply(events[..8].to_vec(), None).await.unwrap();
        let (at, bytes) = a.snapshot().await;
        a.apply(events[8..].to_vec(), None).await.unwrap();

        let b = dispatcher(0).await;
        assert!(matches!(
            b.start_from(b"damaged").await,
            Err(Error::Corrupt(_))
        ));
        assert_eq!(
            b.journaled().await.unwrap(),
            0,
            "a refused snapshot leaves nothing"
        );
        assert_eq!(b.start_from(&bytes).await.unwrap(), at.unwrap());
        let mut all = events.clone();
        all.reverse();
        assert!(
            !b.apply(all, None).await.unwrap().rewound,
            "covered events are skipped"
        );
        assert_eq!(b.snapshot().await, a.snapshot().await);
        assert_eq!(b.journaled().await.unwrap(), 2);
        assert!(
            b.start_from(&bytes).await.is_err(),
            "only an empty database starts over"
        );
        // An event the snapshot did not stand for, sorting before it: only a rebuild helps.
        let late = event(3, 3, 1, vec![kv::put("late", json!(1))]);
        assert!(matches!(
            b.apply(vec![late], None).await,
            Err(Error::NeedsRebuild)
        ));
    }

    /// An event per (clock, log, counter); each log's clocks increase with its counter.
    /// Actions: puts and deletes, ACLs set on the thread, its admin ACL and one key, and
    /// deletions of other events (resolved once every event's position is known).
    fn history() -> impl Strategy<Value = Vec<Event>> {
        let id = prop::sample::select(vec![acl::THREAD, acl::ADMIN, "kv:k0", "docs:c/d0"]);
        let action = prop_oneof![
            6 => (0..4u8, 0..3u8, any::<i16>()).prop_map(|(key, kind, value)| {
                let key = format!("k{key}");
                if kind == 0 {
                    kv::delete(&key)
                } else {
                    kv::put(&key, json!(value))
                }
            }),
            3 => (0..6u8, 0..3u8, any::<i8>()).prop_map(|(kind, doc, n)| {
                let id = format!("d{doc}");
                match kind {
                    0 => docs::create_collection(
                        "c",
                        (n % 2 == 0).then(|| json!({"properties": {"n": {"maximum": 100}}})),
                        &["n"],
                    ),
                    1 => docs::create_index("c", "m"),
                    2 => docs::delete("c", &id),
                    3 => docs::save("c", json!({"_id": id, "n": n, "m": -i16::from(n)})),
                    _ => docs::insert("c", json!({"_id": id, "n": n})),
                }
            }),
            1 => (id, acl_doc()).prop_map(|(id, doc)| acl::set(id, &doc)),
            1 => any::<prop::sample::Index>()
                .prop_map(|i| Action::new(acl::STORE, "pick", json!(i.index(1 << 20)))),
        ];
        let log = prop::collection::vec((1..4u64, prop::collection::vec(action, 1..3)), 0..12);
        prop::collection::vec(log, 1..4).prop_map(|logs| {
            let mut events = Vec::new();
            for (l, steps) in logs.into_iter().enumerate() {
                let mut clock = 0;
                for (counter, (step, actions)) in steps.into_iter().enumerate() {
                    clock += step;
                    events.push(event(clock, l as u8 + 1, counter as u64 + 1, actions));
                }
            }
            let positions: Vec<Position> = events.iter().map(|e| e.pos).collect();
            for e in &mut events {
                for a in &mut e.actions {
                    if a.kind == "pick" {
                        let i = a.payload.as_u64().unwrap() as usize % positions.len();
                        *a = acl::delete_event(positions[i]);
                    }
                }
            }
            events
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Replicas fed the same events in any order, in any batches, hold byte-identical
        /// views; so does one that opens over the journal from its latest snapshot.
        #[test]
        fn replicas_converge_whatever_the_arrival_order(
            (events, shuffled) in history().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let reference = dispatcher(3).await;
                reference.apply(events.clone(), None).await.unwrap();
                let expected = reference.snapshot().await;

                let n = shuffled.len();
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(n + 1)).collect();
                cuts.push(n);
                cuts.sort();
                let replica = dispatcher(3).await;
                let mut start = 0;
                for cut in cuts {
                    replica.apply(shuffled[start..cut].to_vec(), None).await.unwrap();
                    start = cut;
                }
                prop_assert_eq!(replica.snapshot().await, expected.clone());
                // Snapshots taken at the same event hold the same bytes; both hold the newest.
                // (Which older ones are kept depends on what was pruned when.)
                let ours = stored_snapshots(&replica).await;
                let theirs = stored_snapshots(&reference).await;
                prop_assert_eq!(ours.last(), theirs.last());
                for snapshot in &ours {
                    if let Some(same) = theirs.iter().find(|t| t.0 == snapshot.0) {
                        prop_assert_eq!(same, snapshot);
                    }
                }

                let mut state = replica.state.write().await;
                state.reload().await.unwrap();
                drop(state);
                prop_assert_eq!(replica.snapshot().await, expected);
                Ok(())
            })?;
        }
    }
}
