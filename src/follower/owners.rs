//! What writers and the operator decide: a writer's signed requests register a log,
//! unregister it (deleting its records) or delete the whole thread; a replica takes in the
//! logs its source holds; the operator issues registration tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use threads_core::auth::{Action, RequestPayload, SignedRequest, REQUEST_WINDOW_MS};
use threads_core::{LogId, ServiceKey, ThreadId, ThreadKey};
use threads_store::{Registered, Registration, StoreError};

use super::{now_ms, Error, Follower, Result};
use crate::config::RegistrationMode;

/// Addresses a writer may give for one log.
const MAX_ADDRS: usize = 32;

/// What a writer's signed request did.
#[derive(Debug)]
pub enum OwnerAnswer {
    Registered {
        thread: ThreadId,
        log: LogId,
        created: bool,
    },
    Unregistered {
        thread: ThreadId,
        log: LogId,
    },
    ThreadDeleted {
        thread: ThreadId,
    },
}

impl Follower {
    /// Carries out a writer's signed request (register, unregister, delete thread), after
    /// checking its signature, window, audience and, to register on a `registration = "token"`
    /// server, the operator's `registration_token`. The nonce is spent last, so a refused
    /// request can be corrected and sent again.
    pub async fn owner_request(
        &self,
        request: &SignedRequest,
        registration_token: Option<&str>,
    ) -> Result<OwnerAnswer> {
        let now = now_ms();
        let payload = request.verify(self.server_id(), now)?;
        let (thread, log) = (payload.thread.clone(), payload.log.clone());
        if matches!(payload.action, Action::Subscribe { .. }) {
            return Err(Error::BadAction("send subscribe requests to /v1/webhooks"));
        }
        if matches!(payload.action, Action::Read { .. }) {
            return Err(Error::BadAction(
                "read requests are for a bot: a follower holds no read key",
            ));
        }
        if matches!(payload.action, Action::Register { .. })
            && self.config().registration == RegistrationMode::Token
        {
            let token = registration_token.ok_or(Error::RegistrationTokenRequired)?;
            if !self
                .0
                .store
                .registration_token_exists(&Sha256::digest(token))
                .await?
            {
                return Err(Error::BadRegistrationToken);
            }
        }
        match &payload.action {
            Action::Register {
                follow_key,
                addrs,
                public,
            } => {
                let registration = Registration {
                    thread: thread.clone(),
                    log: log.clone(),
                    follow_key: follow_only_key(follow_key)?,
                    addrs: checked_addrs(addrs)?,
                    public: *public,
                };
                // Anyone with the follow key can register a log: a thread's visibility is
                // changed only by its sole writer. (Under another key, storage decides: a
                // squatter's thread gives way to the key its ID is bound to.)
                if let Some(info) = self.0.store.thread(&thread).await? {
                    if info.follow_key == registration.follow_key
                        && info.public != *public
                        && self.others_hold_records(&thread, &log).await?
                    {
                        return Err(Error::OtherWriters("change its visibility"));
                    }
                }
                self.spend_nonce(&payload, now).await?;
                let registered = self.adopt_log(&registration).await?;
                if registered == Registered::Replaced {
                    tracing::warn!(%thread, "thread held under another follow key than the one its ID is bound to: that copy was dropped");
                }
                let created = registered != Registered::Updated;
                tracing::info!(%thread, %log, created, "log registered");
                Ok(OwnerAnswer::Registered {
                    thread,
                    log,
                    created,
                })
            }
            Action::Unregister => {
                self.spend_nonce(&payload, now).await?;
                self.0
                    .store
                    .unregister_log(&thread, &log)
                    .await
                    .map_err(|e| match e {
                        StoreError::NotFound => Error::NotFound("log"),
                        other => other.into(),
                    })?;
                tracing::info!(%thread, %log, "log unregistered and deleted");
                Ok(OwnerAnswer::Unregistered { thread, log })
            }
            Action::DeleteThread => {
                if self.0.store.log(&thread, &log).await?.is_none() {
                    return Err(Error::NotAWriter("delete it"));
                }
                // A log can be registered by anyone with the follow key: it must not take
                // other writers' records with it.
                if self.others_hold_records(&thread, &log).await? {
                    return Err(Error::OtherWriters("delete it"));
                }
                self.spend_nonce(&payload, now).await?;
                self.0.store.delete_thread(&thread).await?;
                self.0.keys.forget(&thread);
                self.topic(&thread, false).await;
                tracing::info!(%thread, "thread deleted");
                Ok(OwnerAnswer::ThreadDeleted { thread })
            }
            Action::Subscribe { .. } | Action::Read { .. } => unreachable!("refused above"),
        }
    }

    /// Registers a log whose request was checked already, or that a replica found at its
    /// source (which vouches only for the log's existence: every record is still verified
    /// against the log's key). Re-registering updates the addresses.
    pub async fn adopt_log(&self, registration: &Registration) -> Result<Registered> {
        let registered = self.0.store.register(registration, now_ms()).await?;
        self.0.keys.forget(&registration.thread);
        self.topic(&registration.thread, registration.public).await;
        Ok(registered)
    }

    /// Whether a log of the thread other than `log` holds records.
    async fn others_hold_records(&self, thread: &ThreadId, log: &LogId) -> Result<bool> {
        let logs = self.0.store.logs(thread).await?;
        Ok(logs.iter().any(|l| &l.log != log && l.head.is_some()))
    }

    /// Spends a signed request's nonce: a request is honoured once.
    pub(super) async fn spend_nonce(&self, payload: &RequestPayload, now: i64) -> Result<()> {
        let expires = payload.timestamp_ms + REQUEST_WINDOW_MS;
        if !self
            .0
            .store
            .use_nonce(payload.nonce.as_bytes(), expires, now)
            .await?
        {
            return Err(Error::Replayed);
        }
        Ok(())
    }

    /// Whether `token` is the operator's `admin_token` (never, when none is configured).
    pub fn is_admin(&self, token: Option<&str>) -> bool {
        let expected = &self.config().admin_token;
        // Compare digests so the comparison takes the same time whatever the token.
        !expected.is_empty() && token.is_some_and(|t| Sha256::digest(t) == Sha256::digest(expected))
    }

    /// The operator's API answers only the admin token (and is not there when none is set).
    pub fn check_admin(&self, token: Option<&str>) -> Result<()> {
        if self.config().admin_token.is_empty() {
            return Err(Error::NotFound("route"));
        }
        if !self.is_admin(token) {
            return Err(Error::AdminTokenRequired);
        }
        Ok(())
    }

    /// A new registration token, for the operator (`registration = "token"` servers).
    pub async fn issue_registration_token(
        &self,
        admin_token: Option<&str>,
        note: &str,
    ) -> Result<String> {
        self.check_admin(admin_token)?;
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let token = URL_SAFE_NO_PAD.encode(secret);
        self.0
            .store
            .add_registration_token(&Sha256::digest(&token), note, now_ms())
            .await?;
        Ok(token)
    }
}

/// The follow key of a registration; a key that carries the read half is refused.
fn follow_only_key(text: &str) -> Result<ServiceKey> {
    let key: ThreadKey = text
        .parse()
        .map_err(|e| Error::BadFollowKey(format!("{e}")))?;
    if key.read().is_some() {
        return Err(Error::ReadKeyRefused);
    }
    Ok(key.service().clone())
}

/// A writer's addresses: multiaddrs, at most [`MAX_ADDRS`], kept in their canonical text.
fn checked_addrs(addrs: &[String]) -> Result<Vec<String>> {
    if addrs.len() > MAX_ADDRS {
        return Err(Error::BadAddrs(format!(
            "{} addresses; at most {MAX_ADDRS} are kept",
            addrs.len()
        )));
    }
    addrs
        .iter()
        .map(|a| {
            a.parse::<threads_core::addr::Multiaddr>()
                .map(|m| m.to_string())
                .map_err(|e| Error::BadAddrs(format!("{a:?} is not a multiaddr: {e}")))
        })
        .collect()
}
