//! A database over one thread of a [`Client`]: dispatched actions become events in this
//! peer's log; every event of the thread held locally (own, pulled, tailed) is reduced.

use std::path::PathBuf;
use std::sync::Arc;

use threads_client::Client;
use threads_core::ThreadId;
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
}

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
        };
        db.sync().await?;
        Ok(db)
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
        let log = self
            .client
            .thread(&self.thread)?
            .log_id()
            .ok_or(threads_client::Error::NotAWriter)?;
        self.dispatcher
            .check(log.public_key().as_bytes(), &actions)
            .await?;
        let clock = self.dispatcher.next_clock().await;
        let envelope = Envelope::new(clock, now_ms(), actions);
        let (_, counter) = self.client.write(&self.thread, &envelope.to_body()).await?;
        self.sync_locked().await?;
        Ok(Position {
            clock,
            log: *log.public_key().as_bytes(),
            counter,
        })
    }

    /// Reduces the events of the thread that reached the local store since the last sync
    /// (after a pull, an import, or a tail). Returns how many were new.
    pub async fn sync(&self) -> Result<u64> {
        let _writing = self.writing.lock().await;
        self.sync_locked().await
    }

    async fn sync_locked(&self) -> Result<u64> {
        match self.read_new().await {
            // An event sorted before what compaction freed: refill the journal.
            Err(Error::NeedsRebuild) => {
                self.dispatcher.reset().await?;
                self.read_new().await
            }
            other => other,
        }
    }

    async fn read_new(&self) -> Result<u64> {
        let mut fresh = 0;
        let mut seen = self.dispatcher.seen_seq().await?;
        loop {
            let page = self.client.read(&self.thread, seen, SYNC_PAGE).await?;
            let Some(last) = page.last().map(|e| e.seq) else {
                return Ok(fresh);
            };
            let events = page
                .into_iter()
                .filter_map(|e| {
                    let envelope = Envelope::from_body(e.body)?;
                    Some(Event {
                        pos: Position {
                            clock: envelope.clock,
                            log: *e.log.public_key().as_bytes(),
                            counter: e.counter,
                        },
                        actions: envelope.actions,
                    })
                })
                .collect();
            fresh += self.dispatcher.apply(events, Some(last)).await?.fresh;
            seen = last;
        }
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
