//! The bot: the trusted half of the server (paper 5.1.1). A separate process from the
//! follower, holding read keys a writer chose to hand it: it follows each granted thread from
//! a follower like any reader (every record verified before it is kept), runs the thread's
//! database, and answers queries on its views over HTTP to members and token holders.
//!
//! | module | what |
//! |---|---|
//! | this module | [`Bot`]: grants, following each thread, status |
//! | [`access`] | who may read: read tokens, requests signed by members, the thread's ACLs |
//! | [`api`] | the HTTP API |
//! | [`webhooks`] | decrypted webhooks, by the follower's delivery machinery |
//! | [`feeds`] | publishing a thread or a collection as a plaintext Atom and RSS feed |
//! | [`state`] | `bot.db`: grants, read tokens, published feeds, spent nonces |
//! | [`error`] | every refusal with its status and stable code |
//!
//! On disk, in the data directory: `identity.key` and `threads/` (the keystore, sealed under
//! the operator's main key unless told to keep it in clear), `local.db` (the records as
//! pulled: still encrypted), `bot.db`, and `views/` (each thread's journal and views, in
//! plaintext; absent when views are kept in memory).

pub mod access;
pub mod api;
pub mod error;
pub mod feeds;
pub mod state;
pub mod webhooks;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use threads_client::{Client, Keystore, MainKeys};
use threads_core::ThreadId;
use threads_db::{Config, Database};

pub use error::Error;
use state::{GrantRow, State};

/// Batches a pull stored that may wait for the reducer to take them (about 10,000 records
/// each); one more is dropped, and its records are read back from the local store.
const HANDED_BATCHES: usize = 2;

/// Longest pause between attempts to follow a thread again after an error.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// What the operator decided when starting the bot.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Seals the keystore; `None` keeps keys in clear (the operator said so explicitly).
    pub main_keys: Option<MainKeys>,
    /// Journals and views in memory only, rebuilt at each start from the stored records.
    pub views_in_memory: bool,
    /// Needed to grant (unless `open_grants`), revoke, issue tokens, and list grants.
    pub admin_token: Option<String>,
    /// Anyone holding an invite sealed to this bot's identity may grant.
    pub open_grants: bool,
    /// How decrypted webhooks are delivered.
    pub webhooks: crate::config::Webhooks,
}

/// The bot's core: cheap to clone.
#[derive(Clone)]
pub struct Bot(Arc<Inner>);

pub struct Inner {
    pub settings: Settings,
    pub client: Arc<Client>,
    pub state: State,
    /// The identity, as text: what invites are sealed to and signed requests name.
    pub id: String,
    grants: RwLock<HashMap<ThreadId, Arc<Grant>>>,
    /// Decrypted webhooks, kept with the records in `local.db`.
    pub hooks: crate::webhooks::Hooks,
    /// Rendered feed documents of published threads.
    pub feeds: crate::feeds::FeedCache,
}

impl std::ops::Deref for Bot {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// A thread the bot was given to read, its database, and how following it goes.
pub struct Grant {
    pub row: GrantRow,
    pub db: Database,
    journal: Option<PathBuf>,
    last_error: Mutex<Option<String>>,
    following: Mutex<Option<tokio::task::AbortHandle>>,
    /// The local sequence number reduced so far, for event streams to wait on.
    pub reduced: tokio::sync::watch::Sender<u64>,
}

impl Grant {
    /// Reduces what reached the local store, and tells event streams how far that is.
    /// Records a pull `handed` over as it stored them are reduced without reading them back.
    async fn sync(&self, handed: Vec<threads_store::StoredRecord>) -> threads_db::Result<()> {
        if handed.is_empty() {
            self.db.sync().await?;
        } else {
            self.db.sync_stored(handed).await?;
        }
        let seen = self.db.dispatcher().seen_seq().await?;
        self.reduced.send_replace(seen);
        Ok(())
    }
}

/// Where one granted thread stands.
#[derive(Debug, Serialize)]
pub struct GrantStatus {
    pub thread: String,
    pub follower: String,
    pub granted_ms: i64,
    /// How far the views have read the thread's records (a local sequence number).
    pub held: u64,
    /// Events reduced into the views.
    pub applied: u64,
    /// The last event applied (its position key, hex).
    pub last: Option<String>,
    /// Set when the writers rotated the read key without this bot: the local sequence number
    /// after which it cannot read; the views stay as they were there.
    pub unreadable_after: Option<u64>,
    /// The thread's bridges to the web: its webhooks, where they deliver, and whether on;
    /// its feed, when it is published.
    pub webhooks: Vec<serde_json::Value>,
    pub feed: Option<state::Published>,
    /// Why following the thread failed last, while it keeps trying.
    pub error: Option<String>,
}

impl Bot {
    /// Opens the bot kept in the data directory: seals any key file left in clear (or under
    /// an earlier main key), and starts following every granted thread.
    pub async fn open(settings: Settings) -> anyhow::Result<Self> {
        let dir = &settings.data_dir;
        let keys = Keystore::open_with(dir, settings.main_keys.clone())?;
        let resealed = keys.seal_all()?;
        if resealed > 0 {
            tracing::info!(resealed, "key files sealed under the current main key");
        }
        let client = Arc::new(Client::open_with(dir, keys).await?);
        std::fs::create_dir_all(dir.join("views"))?;
        let state = State::open(&dir.join("bot.db")).await?;
        let secrets = webhooks::secrets(&client.keystore().identity()?);
        let store: Arc<dyn threads_store::Store> = client.store().clone();
        let bot = Self(Arc::new_cyclic(|inner| Inner {
            id: client.identity().to_string(),
            hooks: crate::webhooks::Hooks::new(
                store,
                settings.webhooks.clone(),
                secrets,
                Arc::new(webhooks::Decrypted(inner.clone())),
            ),
            settings,
            client,
            state,
            grants: RwLock::default(),
            feeds: Default::default(),
        }));
        for row in bot.state.grants().await? {
            let thread = row.thread.clone();
            match bot.open_grant(row).await {
                Ok(grant) => bot.start(grant),
                Err(error) => tracing::error!(%thread, %error, "a granted thread does not open"),
            }
        }
        Ok(bot)
    }

    /// Takes a grant: an invite (sealed to this bot, or a link) carrying the read key. The
    /// follower is asked for the thread's first page before the grant is kept, so a grant the
    /// bot cannot follow is refused and leaves nothing behind; the catch-up itself runs in the
    /// thread's own task (`GET /v1/threads/{id}` says how far it is). Granting a thread again
    /// takes the keys it carries (a rotated read key, say). Returns whether it was new.
    pub async fn grant(
        &self,
        invite: &str,
        follower: Option<&str>,
    ) -> Result<(bool, GrantStatus), Error> {
        let opened = threads_client::Invite::decode(invite, &self.client_identity()?)
            .map_err(|e| Error::BadInvite(strip_prefix(e.to_string())))?;
        if opened.key.read().is_none() {
            return Err(Error::FollowOnly);
        }
        let thread = opened.thread.clone();
        let follower = match (follower, opened.followers.first()) {
            (Some(url), _) => threads_client::FollowerClient::new(url)
                .map_err(|e| Error::BadFollowerUrl(e.to_string()))?,
            (None, Some(url)) => threads_client::FollowerClient::new(url)
                .map_err(|e| Error::BadInvite(e.to_string()))?,
            (None, None) => return Err(Error::NoFollower),
        };
        reach(&follower, &opened).await?;
        let follower = follower.url().to_owned();
        self.client
            .join(invite)
            .await
            .map_err(|e| Error::BadInvite(strip_prefix(e.to_string())))?;
        self.client
            .keystore()
            .update(&thread, |entry| {
                if !entry.followers.iter().any(|f| f.url == follower) {
                    entry.followers.insert(
                        0,
                        threads_client::Follower {
                            url: follower.clone(),
                            cursor: String::new(),
                        },
                    );
                }
            })
            .map_err(Error::internal)?;
        let existing = self.grants.read().unwrap().get(&thread).cloned();
        if let Some(grant) = existing {
            // New keys may open events that did not open before: reduced in the background.
            let again = grant.clone();
            tokio::spawn(async move {
                if let Err(error) = again.sync(Vec::new()).await {
                    tracing::warn!(%error, "reducing after a new grant failed");
                }
            });
            return Ok((false, self.status_of(&grant).await?));
        }
        let row = GrantRow {
            thread: thread.clone(),
            follower,
            granted_ms: now_ms(),
        };
        let grant = self
            .open_grant(row.clone())
            .await
            .map_err(Error::internal)?;
        self.state.put_grant(&row).await?;
        tracing::info!(%thread, follower = %row.follower, "thread granted");
        let status = self.status_of(&grant).await?;
        self.start(grant);
        Ok((true, status))
    }

    fn client_identity(&self) -> Result<threads_core::Keypair, Error> {
        self.client.keystore().identity().map_err(Error::internal)
    }

    /// Opens a granted thread's database (reducing what is held already).
    async fn open_grant(&self, row: GrantRow) -> anyhow::Result<Arc<Grant>> {
        let journal = (!self.settings.views_in_memory).then(|| {
            self.settings
                .data_dir
                .join("views")
                .join(format!("{}.sqlite", row.thread))
        });
        let config = Config {
            path: journal.clone(),
            ..Config::default()
        };
        let db = Database::open(
            self.client.clone(),
            row.thread.clone(),
            threads_db::standard_stores(),
            config,
        )
        .await?;
        let seen = db.dispatcher().seen_seq().await?;
        Ok(Arc::new(Grant {
            row,
            db,
            journal,
            last_error: Mutex::default(),
            following: Mutex::default(),
            reduced: tokio::sync::watch::Sender::new(seen),
        }))
    }

    /// Follows the thread in a task of its own, and lists the grant.
    fn start(&self, grant: Arc<Grant>) {
        let task = tokio::spawn(follow(self.clone(), grant.clone()));
        *grant.following.lock().unwrap() = Some(task.abort_handle());
        self.grants
            .write()
            .unwrap()
            .insert(grant.row.thread.clone(), grant);
    }

    /// Deletes a grant: stops following the thread, and deletes its views, records and keys.
    pub async fn revoke(&self, thread: &ThreadId) -> Result<(), Error> {
        let grant = self
            .grants
            .write()
            .unwrap()
            .remove(thread)
            .ok_or(Error::NotFound("grant"))?;
        if let Some(task) = grant.following.lock().unwrap().take() {
            task.abort();
        }
        self.state.delete_grant(thread).await?;
        if let Some(journal) = &grant.journal {
            threads_db::journal::Journal::remove(journal).map_err(Error::internal)?;
        }
        self.client.forget(thread).await.map_err(Error::internal)?;
        tracing::info!(%thread, "grant deleted: keys, records and views wiped");
        Ok(())
    }

    pub fn grant_of(&self, thread: &ThreadId) -> Result<Arc<Grant>, Error> {
        self.grants
            .read()
            .unwrap()
            .get(thread)
            .cloned()
            .ok_or(Error::NotFound("grant"))
    }

    pub fn grant_count(&self) -> usize {
        self.grants.read().unwrap().len()
    }

    pub async fn statuses(&self) -> Result<Vec<GrantStatus>, Error> {
        let mut grants: Vec<_> = self.grants.read().unwrap().values().cloned().collect();
        grants.sort_by(|a, b| a.row.thread.as_bytes().cmp(b.row.thread.as_bytes()));
        let mut out = Vec::with_capacity(grants.len());
        for grant in grants {
            out.push(self.status_of(&grant).await?);
        }
        Ok(out)
    }

    pub async fn status_of(&self, grant: &Grant) -> Result<GrantStatus, Error> {
        let (applied, last) = grant.db.dispatcher().applied().await;
        Ok(GrantStatus {
            thread: grant.row.thread.to_string(),
            follower: grant.row.follower.clone(),
            granted_ms: grant.row.granted_ms,
            held: grant.db.dispatcher().seen_seq().await?,
            applied,
            last: last.map(|p| hex::encode(p.key())),
            unreadable_after: grant.db.unreadable_after(),
            webhooks: self
                .hooks
                .of_thread(&grant.row.thread)
                .await?
                .iter()
                .map(crate::webhooks::routes::webhook_json)
                .collect(),
            feed: self.state.published(&grant.row.thread).await?,
            error: grant.last_error.lock().unwrap().clone(),
        })
    }
}

/// Follows one thread for as long as it is granted: pulls what is new in bulk, reduces it,
/// then tails the follower and reduces each event as it arrives. After an error it waits
/// (longer each time) and starts over from where it was.
async fn follow(bot: Bot, grant: Arc<Grant>) {
    let thread = grant.row.thread.clone();
    let mut pause = Duration::from_secs(1);
    loop {
        let ended = follow_once(&bot, &grant).await;
        let error = match ended {
            Ok(()) => "the follower ended the stream".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        tracing::warn!(%thread, %error, retry_in = ?pause, "following the thread stopped");
        *grant.last_error.lock().unwrap() = Some(error);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

async fn follow_once(bot: &Bot, grant: &Arc<Grant>) -> anyhow::Result<()> {
    let thread = &grant.row.thread;
    // Each batch the pull stores, and each event the tail stores, wakes the reducer: the views
    // are built while the rest is still being fetched and verified. The reducer has a task of
    // its own, so reducing a batch never holds up the pull's next page.
    let news = Arc::new(tokio::sync::Notify::new());
    let (hand, handed) = tokio::sync::mpsc::channel(HANDED_BATCHES);
    let mut reduce = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(reduce(
        grant.clone(),
        news.clone(),
        handed,
    )));
    let fetch = async {
        let pulled = bot.client.pull(thread, |_, stored| {
            // A batch that does not fit is read back from the store instead.
            if hand.try_send(stored).is_err() {
                news.notify_one();
            }
        });
        match pulled.await {
            // The tail below keeps trying to reach it.
            Ok(_) | Err(threads_client::Error::Network(_)) => {}
            Err(e) => return Err(e.into()),
        }
        news.notify_one();
        *grant.last_error.lock().unwrap() = None;
        let held = bot.client.held(thread).await?;
        // Events stored after what the pull brought (by the tail's own catch-up, or live).
        bot.client
            .tail(thread, Some(&grant.row.follower), held, |_| {
                news.notify_one()
            })
            .await?;
        Ok(())
    };
    tokio::select! {
        ended = fetch => ended,
        failed = &mut reduce => match failed {
            Ok(failed) => failed.map_err(anyhow::Error::from),
            Err(stopped) => Err(anyhow::anyhow!("reducing stopped: {stopped}")),
        },
    }
}

/// Reduces each batch the pull hands over as it arrives, and reads from the store on news of
/// records stored without being handed over (the tail stored an event, a batch was dropped,
/// the pull ended).
async fn reduce(
    grant: Arc<Grant>,
    news: Arc<tokio::sync::Notify>,
    mut handed: tokio::sync::mpsc::Receiver<Vec<threads_store::StoredRecord>>,
) -> threads_db::Result<()> {
    loop {
        tokio::select! {
            biased;
            Some(batch) = handed.recv() => grant.sync(batch).await?,
            () = news.notified() => grant.sync(Vec::new()).await?,
        }
    }
}

/// Asks the follower for the thread's first record, as a check that the bot can follow it.
async fn reach(
    follower: &threads_client::FollowerClient,
    invite: &threads_client::Invite,
) -> Result<(), Error> {
    match follower
        .page(&invite.thread, invite.key.service(), "", 1)
        .await
    {
        Ok(_) => Ok(()),
        Err(threads_client::Error::Network(e)) => Err(Error::Unreachable(e)),
        Err(threads_client::Error::Server { code, detail, .. }) => {
            Err(Error::FollowerRefused { code, detail })
        }
        Err(e) => Err(Error::FollowerRefused {
            code: "bad_answer".into(),
            detail: e.to_string(),
        }),
    }
}

/// A client error's text without its "bad invite: " prefix (the bot's error adds its own).
fn strip_prefix(text: String) -> String {
    text.strip_prefix("bad invite: ")
        .map(str::to_owned)
        .unwrap_or(text)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
