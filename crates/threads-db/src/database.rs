//! A database over one thread of a [`Client`]: dispatched actions become events in this
//! peer's log; every event of the thread held locally (own, pulled, tailed) is reduced.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand_core::OsRng;
use threads_core::crypto::seal_to;
use threads_core::{PublicKey, ReadKey, RecordError};

use threads_client::Client;
use threads_core::ThreadId;
use threads_store::StoredRecord;
use tokio::sync::{broadcast, Mutex};

use crate::action::{Action, Envelope, Event, Position};
use crate::dispatcher::{Dispatcher, Options};
use crate::journal::Journal;
use crate::view::{Change, View};
use crate::{Error, Result};

/// Records read from the local store per journal transaction.
const SYNC_PAGE: u32 = 5000;

pub struct Database {
    dispatcher: Dispatcher,
    client: Arc<Client>,
    thread: ThreadId,
    /// One dispatch or sync at a time: a dispatch's clock must come from views that include
    /// every event read so far.
    writing: Mutex<()>,
    /// One more than [`Database::unreadable_after`]; 0 for none.
    unreadable: AtomicU64,
}

/// Marks a record body of a snapshot log.
const SNAPSHOT_TAG: &str = "threads-db-snapshot";

/// Whether a record body is a published snapshot (of a snapshot log), not an event.
pub fn is_snapshot(body: &serde_json::Value) -> bool {
    body.get(SNAPSHOT_TAG).is_some()
}

/// The snapshot bytes of a published-snapshot body.
fn published_snapshot(body: &serde_json::Value) -> Option<Vec<u8>> {
    (body.get(SNAPSHOT_TAG)? == 1)
        .then(|| body.get("snapshot")?.as_str())
        .flatten()
        .and_then(|h| hex::decode(h).ok())
}

/// Events of this pseudo-store hand over rotated read keys; no view reduces them.
pub const KEYS: &str = "keys";

/// Where a database keeps its journal, and how often it snapshots.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The journal file; `None` keeps it in memory (rebuilt from the records at each open).
    pub path: Option<PathBuf>,
    pub options: Options,
}

impl Database {
    /// Opens the database of `thread` with these stores, and reduces every event held
    /// locally that it has not seen yet.
    pub async fn open(
        client: Arc<Client>,
        thread: ThreadId,
        stores: Vec<(String, Box<dyn View>)>,
        config: Config,
    ) -> Result<Self> {
        client.thread(&thread)?;
        let journal = Journal::open(config.path.as_deref()).await?;
        let dispatcher = Dispatcher::open(journal, stores, config.options).await?;
        let db = Self {
            dispatcher,
            client,
            thread,
            writing: Mutex::new(()),
            unreadable: AtomicU64::new(0),
        };
        db.start_from_published().await?;
        db.sync().await?;
        Ok(db)
    }

    /// A database that has applied nothing starts from the newest snapshot published in the
    /// snapshot log this peer trusts (its inviter's), if it holds one.
    async fn start_from_published(&self) -> Result<()> {
        let entry = self.client.thread(&self.thread)?;
        let Some(log) = entry.snapshots_from else {
            return Ok(());
        };
        if self.dispatcher.applied().await.1.is_some() || self.dispatcher.seen_seq().await? > 0 {
            return Ok(());
        }
        let mut newest = None;
        let mut after = 0;
        loop {
            let page = self.client.read_log(&self.thread, &log, after, 100).await?;
            let Some(last) = page.last() else { break };
            after = last.counter;
            newest = page
                .into_iter()
                .rev()
                .find_map(|e| published_snapshot(&e.body))
                .or(newest);
        }
        let Some(bytes) = newest else {
            return Ok(());
        };
        match self.dispatcher.start_from(&bytes).await {
            // A snapshot this database cannot take (damaged, or made with other stores) is
            // passed over: every event is reduced instead.
            Ok(_) | Err(Error::Corrupt(_) | Error::Refused { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Publishes the views' current state as a snapshot in this peer's snapshot log, which
    /// `push` sends to followers: peers this one invites start from it. Returns where the
    /// snapshot stands and its size.
    pub async fn publish_snapshot(&self) -> Result<(Position, usize)> {
        let _writing = self.writing.lock().await;
        let (last, bytes) = self.dispatcher.snapshot().await;
        let last = last.ok_or_else(|| Error::Refused {
            store: String::new(),
            reason: "nothing has been applied yet: there is nothing to snapshot".into(),
        })?;
        let body = serde_json::json!({SNAPSHOT_TAG: 1, "snapshot": hex::encode(&bytes)});
        self.client.write_snapshot(&self.thread, &body).await?;
        Ok((last, bytes.len()))
    }

    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// Checks the actions, appends them as one event to this peer's log, and reduces it.
    pub async fn dispatch(&self, actions: Vec<Action>) -> Result<Position> {
        if actions.is_empty() {
            return Err(Error::Refused {
                store: String::new(),
                reason: "nothing to dispatch".into(),
            });
        }
        let _writing = self.writing.lock().await;
        let log = self.own_log()?;
        self.dispatcher.check(&log, &actions).await?;
        let clock = self.dispatcher.next_clock().await;
        let envelope = Envelope::new(clock, now_ms(), actions);
        let (_, counter) = self.client.write(&self.thread, &envelope.to_body()).await?;
        self.sync_locked().await?;
        Ok(Position {
            clock,
            log,
            counter,
        })
    }

    /// The key of this peer's log in the thread (what positions and ACLs name).
    fn own_log(&self) -> Result<[u8; 32]> {
        let entry = self.client.thread(&self.thread)?;
        let log = entry.log_id().ok_or(threads_client::Error::NotAWriter)?;
        Ok(*log.public_key().as_bytes())
    }

    /// Reduces the events of the thread that reached the local store since the last sync
    /// (after a pull, an import, or a tail). Returns how many were new.
    pub async fn sync(&self) -> Result<u64> {
        let _writing = self.writing.lock().await;
        self.sync_locked().await
    }

    async fn sync_locked(&self) -> Result<u64> {
        let read = self.read_new().await;
        self.rebuilt_if_needed(read).await
    }

    /// A read that met an event sorting before what compaction freed refills the journal
    /// from the local store instead.
    async fn rebuilt_if_needed(&self, read: Result<u64>) -> Result<u64> {
        match read {
            Err(Error::NeedsRebuild) => {
                self.dispatcher.reset().await?;
                self.read_new().await
            }
            other => other,
        }
    }

    /// Reduces records a pull has just stored (see [`Client::pull`]), without reading them
    /// back from the local store when they are the next ones to read; otherwise (some were
    /// stored by others in between, or a batch was missed) reduces from the store as
    /// [`Database::sync`] does. Returns how many events were new.
    pub async fn sync_stored(&self, stored: Vec<StoredRecord>) -> Result<u64> {
        let _writing = self.writing.lock().await;
        let read = self.read_handed(stored).await;
        self.rebuilt_if_needed(read).await
    }

    async fn read_handed(&self, mut stored: Vec<StoredRecord>) -> Result<u64> {
        let seen = self.dispatcher.seen_seq().await?;
        stored.retain(|r| r.seq > seen);
        let follows = stored
            .iter()
            .enumerate()
            .all(|(i, r)| r.seq == seen + 1 + i as u64);
        if stored.is_empty() || !follows {
            return self.read_new().await;
        }
        let mut fresh = 0;
        for chunk in stored.chunks(SYNC_PAGE as usize) {
            let page = self.client.read_stored_cbor(&self.thread, chunk);
            let (applied, last) = self.apply_page(page).await?;
            fresh += applied;
            if last != chunk.last().map(|r| r.seq) {
                // A record did not open: reading from the store says from where.
                return Ok(fresh + self.read_new().await?);
            }
        }
        Ok(fresh)
    }

    async fn read_new(&self) -> Result<u64> {
        let mut fresh = 0;
        let mut seen = self.dispatcher.seen_seq().await?;
        loop {
            let page = self.client.read_cbor(&self.thread, seen, SYNC_PAGE).await;
            let (applied, last) = self.apply_page(page).await?;
            fresh += applied;
            match last {
                Some(last) => seen = last,
                None => return Ok(fresh),
            }
        }
    }

    /// Journals and reduces one page of opened records, and records how far the store was
    /// read. Returns how many events were new, and the sequence number of the page's last
    /// record (`None` for an empty page, or one whose first record does not open).
    async fn apply_page(
        &self,
        page: threads_client::Result<Vec<threads_client::Event<Vec<u8>>>>,
    ) -> Result<(u64, Option<u64>)> {
        let page = match page {
            Ok(page) => page,
            // Sealed with a read key this peer was not handed: the views stay where they
            // are, and the next sync tries again.
            Err(threads_client::Error::Rejected {
                error: RecordError::Decrypt { .. },
                ..
            }) => {
                let seen = self.dispatcher.seen_seq().await?;
                self.unreadable.store(seen + 1, Ordering::Relaxed);
                return Ok((0, None));
            }
            Err(e) => return Err(e.into()),
        };
        self.unreadable.store(0, Ordering::Relaxed);
        let Some(last) = page.last().map(|e| e.seq) else {
            return Ok((0, None));
        };
        let mut events = Vec::with_capacity(page.len());
        for e in page {
            let Some(envelope) = Envelope::from_cbor(&e.body) else {
                continue;
            };
            self.take_handed_keys(e.log.public_key().as_bytes(), &envelope)
                .await?;
            events.push(Event {
                pos: Position {
                    clock: envelope.clock,
                    log: *e.log.public_key().as_bytes(),
                    counter: e.counter,
                },
                actions: envelope.actions,
            });
        }
        let fresh = self.dispatcher.apply(events, Some(last)).await?.fresh;
        Ok((fresh, Some(last)))
    }

    /// Adopts a read key a rotation event sealed to this peer's identity, when its writer
    /// holds the write role over the thread (by the ACLs in force).
    async fn take_handed_keys(&self, log: &[u8; 32], envelope: &Envelope) -> Result<()> {
        let rotations = envelope
            .actions
            .iter()
            .filter(|a| a.store == KEYS && a.kind == "rotate");
        // Most events hand over nothing: the identity is only worked out when one does.
        let mut me = None;
        for action in rotations {
            if !self.dispatcher.acls(|a| a.may_write(log, KEYS, None)).await {
                continue;
            }
            let me = me.get_or_insert_with(|| self.client.identity().to_string());
            let Some(sealed) = action.payload["sealed"][me.as_str()].as_str() else {
                continue;
            };
            let opened = hex::decode(sealed)
                .ok()
                .and_then(|sealed| self.client.open_sealed(&sealed).ok())
                .and_then(|key| ReadKey::from_slice(&key).ok());
            // A key that does not open is ignored: the rotation was not for this peer after all.
            if let Some(key) = opened {
                self.client.adopt_read_key(&self.thread, key)?;
            }
        }
        Ok(())
    }

    /// Revokes read access for the future: writes an event (readable with the current key)
    /// that hands a fresh read key to `members`, sealed to each identity, then writes with
    /// the fresh key. Members adopt it as they sync; anyone else reads nothing written after.
    /// Needs the write role over the thread.
    pub async fn rotate_read_key(&self, members: &[PublicKey]) -> Result<Position> {
        let _writing = self.writing.lock().await;
        let key = self.own_log()?;
        if !self
            .dispatcher
            .acls(|a| a.may_write(&key, KEYS, None))
            .await
        {
            return Err(Error::Refused {
                store: KEYS.into(),
                reason: "this log lacks the write role over the thread".into(),
            });
        }
        let fresh = ReadKey::random(&mut OsRng);
        let mut sealed = serde_json::Map::new();
        for member in members {
            let boxed =
                seal_to(member, fresh.as_bytes(), &mut OsRng).map_err(|e| Error::Refused {
                    store: KEYS.into(),
                    reason: format!("cannot seal to {member}: {e}"),
                })?;
            sealed.insert(member.to_string(), hex::encode(boxed).into());
        }
        let clock = self.dispatcher.next_clock().await;
        let action = Action::new(KEYS, "rotate", serde_json::json!({"sealed": sealed}));
        let envelope = Envelope::new(clock, now_ms(), vec![action]);
        let (_, counter) = self.client.write(&self.thread, &envelope.to_body()).await?;
        self.client.adopt_read_key(&self.thread, fresh)?;
        self.sync_locked().await?;
        Ok(Position {
            clock,
            log: key,
            counter,
        })
    }

    /// When the last sync met an event this peer could not open (the read key was rotated
    /// without it): the local sequence number after which it stopped. The views stop there.
    pub fn unreadable_after(&self) -> Option<u64> {
        self.unreadable.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Runs a query on a store's view.
    pub async fn query<V: View, R>(&self, store: &str, f: impl FnOnce(&V) -> R) -> Result<R> {
        self.dispatcher.query(store, f).await
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.dispatcher.subscribe()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use threads_store::Store;

    use super::*;
    use crate::kv::{self, KvStore};

    /// A client with a new thread, and a database over it with a key/value store and its
    /// journal in memory (the home directory lives as long as the first value).
    async fn kv_database(options: Options) -> (tempfile::TempDir, Arc<Client>, ThreadId, Database) {
        let home = tempfile::tempdir().unwrap();
        let client = Arc::new(Client::open(home.path()).await.unwrap());
        let thread = client.create_thread(true).await.unwrap().thread;
        let stores: Vec<(String, Box<dyn View>)> =
            vec![(kv::STORE.into(), Box::new(KvStore::default()))];
        let config = Config {
            path: None,
            options,
        };
        let db = Database::open(client.clone(), thread.clone(), stores, config)
            .await
            .unwrap();
        (home, client, thread, db)
    }

    /// Records handed over as stored are reduced when they come next; a batch after a gap
    /// (one that was never handed over) reads the gap from the store first.
    #[tokio::test]
    async fn handed_records_are_reduced_and_a_gap_is_read_from_the_store() {
        let (_home, client, thread, db) = kv_database(Options::default()).await;
        let bodies: Vec<_> = (1..=6)
            .map(|i| Envelope::new(i, 0, vec![kv::put(&format!("k{i}"), json!(i))]).to_body())
            .collect();
        client.write_many(&thread, &bodies).await.unwrap();
        let stored = client
            .store()
            .records_by_thread(&thread, 0, 100)
            .await
            .unwrap();
        assert_eq!(stored.len(), 6);

        assert_eq!(db.sync_stored(stored[..3].to_vec()).await.unwrap(), 3);
        assert_eq!(db.dispatcher().seen_seq().await.unwrap(), stored[2].seq);
        // The fourth was never handed over.
        assert_eq!(db.sync_stored(stored[4..].to_vec()).await.unwrap(), 3);
        assert_eq!(db.dispatcher().applied().await.0, 6);
        let k4 = db
            .query(kv::STORE, |kv: &KvStore| kv.get("k4").cloned())
            .await
            .unwrap();
        assert_eq!(k4, Some(json!(4)));
        // Handed over again: nothing new.
        assert_eq!(db.sync_stored(stored).await.unwrap(), 0);
    }

    /// A handed event that sorts before what compaction freed refills the journal, as a
    /// sync that reads it from the store does.
    #[tokio::test]
    async fn a_handed_event_before_compaction_rebuilds() {
        let (_home, client, thread, db) = kv_database(Options { snapshot_every: 2 }).await;
        let put = |clock: u64| {
            Envelope::new(clock, 0, vec![kv::put(&format!("k{clock}"), json!(clock))]).to_body()
        };
        let bodies: Vec<_> = (10..16).map(put).collect();
        client.write_many(&thread, &bodies).await.unwrap();
        assert_eq!(db.sync().await.unwrap(), 6);
        assert!(db.dispatcher().compact(1).await.unwrap() > 0);

        client.write_many(&thread, &[put(1)]).await.unwrap();
        let late = client
            .store()
            .records_by_thread(&thread, 6, 100)
            .await
            .unwrap();
        db.sync_stored(late).await.unwrap();
        assert_eq!(db.dispatcher().applied().await.0, 7);
        let k1 = db
            .query(kv::STORE, |kv: &KvStore| kv.get("k1").cloned())
            .await
            .unwrap();
        assert_eq!(k1, Some(json!(1)));
    }
}
