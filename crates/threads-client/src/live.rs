//! Following a thread live: WebSocket push from an HTTP follower, gossip from a libp2p one,
//! with pulls to fill what either misses.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use threads_core::{LogId, ThreadId};
use threads_store::{Outcome, Quotas, Store};

use crate::local::decode_body;
use crate::sync::verify_page;
use crate::*;

impl Client {
    /// Follows a thread live from a follower (the first one, unless `url` names another):
    /// catches up by pulling, then takes each record the follower pushes over WebSocket,
    /// verified and stored before `on_event` sees it (decrypted, when this peer can read).
    /// A lost connection is re-made with growing pauses, resuming from the saved cursor, so
    /// nothing is missed. Runs until an error the follower will not get over, or until dropped.
    ///
    /// Events held locally after the local sequence number `after` are shown first.
    pub async fn tail(
        &self,
        thread: &ThreadId,
        url: Option<&str>,
        mut after: u64,
        mut on_event: impl FnMut(Event),
    ) -> Result<()> {
        let mut entry = self.keys.thread(thread)?;
        let url = match url {
            Some(url) => FollowerClient::new(url)?.url().to_owned(),
            None => entry
                .followers
                .first()
                .map(|f| f.url.clone())
                .ok_or_else(|| Error::BadUrl("the thread has no follower: add one".into()))?,
        };
        if !entry.followers.iter().any(|f| f.url == url) {
            entry.followers.push(Follower {
                url: url.clone(),
                cursor: String::new(),
            });
            self.keys.save(&entry)?;
        }
        let mut known = self.known_logs(thread).await?;
        let mut pause = FIRST_BACKOFF;
        loop {
            self.pull(thread, |_, _| {}).await.or_else(|e| match e {
                Error::Network(_) => Ok(Default::default()),
                other => Err(other),
            })?;
            // What the catch-up brought (and anything held before), in local order.
            if entry.key.read().is_some() {
                loop {
                    let page = self.read(thread, after, 1000).await?;
                    let Some(last) = page.last() else { break };
                    after = last.seq;
                    page.into_iter().for_each(&mut on_event);
                }
            }
            entry = self.keys.thread(thread)?;
            let at = entry
                .followers
                .iter()
                .position(|f| f.url == url)
                .ok_or_else(|| {
                    Error::BadUrl(format!("{url} was removed from the thread's followers"))
                })?;
            let mut emit = |event: Event| {
                after = after.max(event.seq);
                on_event(event)
            };
            match self
                .follow_live(&mut entry, at, &mut known, &mut emit, &mut pause)
                .await
            {
                Err(Error::Network(_)) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
    }

    /// One WebSocket session of [`Client::tail`]; returns when the connection ends.
    async fn follow_live(
        &self,
        entry: &mut ThreadEntry,
        at: usize,
        known: &mut HashSet<LogId>,
        on_event: &mut impl FnMut(Event),
        pause: &mut Duration,
    ) -> Result<()> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;

        let thread = entry.thread.clone();
        let follower = &entry.followers[at];
        let server = FollowerClient::new(&follower.url)?;
        if server.is_p2p() {
            // Gossip says when there is news; the tail's next catch-up pull brings it.
            return server.wait_for_news(&thread, P2P_POLL).await;
        }
        let ws = format!(
            "{}/v1/ws?thread={thread}&cursor={}&token={}",
            follower.url.replacen("http", "ws", 1),
            follower.cursor,
            threads_core::auth::pull_token(entry.key.service(), &thread)
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(&ws)
            .await
            .map_err(|e| Error::Network(format!("{ws}: {e}")))?;
        while let Some(message) = socket.next().await {
            let text = match message.map_err(|e| Error::Network(e.to_string()))? {
                Message::Text(text) => text,
                Message::Close(_) => break,
                _ => continue,
            };
            let message: follower::PushedMessage = serde_json::from_str(&text)
                .map_err(|e| Error::Protocol(format!("a pushed message: {e}")))?;
            match message {
                follower::PushedMessage::Subscribed {} => *pause = FIRST_BACKOFF,
                follower::PushedMessage::Error { code, detail } => {
                    return Err(Error::Server {
                        status: 0,
                        code,
                        detail,
                    })
                }
                follower::PushedMessage::Record { record, cursor } => {
                    let url = entry.followers[at].url.clone();
                    let mut verified = verify_page(
                        &thread,
                        entry.key.service(),
                        &url,
                        vec![record.pulled()?],
                        entry.signature_policy(),
                    )?;
                    let item = verified.remove(0);
                    if known.insert(item.log.clone()) {
                        self.register_locally(entry, &item.log).await?;
                    }
                    let record = item.record.clone();
                    let log = item.log.clone();
                    let outcome = self
                        .store
                        .ingest(&[item], &Quotas::default(), now_ms())
                        .await?
                        .remove(0);
                    self.keys
                        .save_cursor(&thread, &entry.followers[at].url, &cursor)?;
                    entry.followers[at].cursor = cursor;
                    let Outcome::Accepted { seq, counter } = outcome else {
                        continue;
                    };
                    // Verified and stored; `null` when no read key held here opens it (none
                    // at all, or a rotated one not handed over yet).
                    let body = entry
                        .read_keys()
                        .find_map(|key| record.read(key).ok())
                        .map_or(Value::Null, |b| decode_body(&b));
                    on_event(Event {
                        log,
                        counter,
                        seq,
                        cid: record.cid().to_string(),
                        body,
                    });
                }
                follower::PushedMessage::Other => {}
            }
        }
        Err(Error::Network("the follower closed the connection".into()))
    }
}
