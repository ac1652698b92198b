//! Moving a thread between peers: CAR exports and imports, joining by link or invite, and
//! sharing (links carrying keys, invites sealed to an identity).

use rand_core::OsRng;
use threads_core::{cid_of, verify_chained, Keypair, LogId, PublicKey, ThreadId};
use threads_store::{Ingest, Store};

use crate::sync::store_pulled;
use crate::*;

impl Client {
    /// The thread's records held locally (or only one log's), as a CAR, in arrival order.
    pub async fn export(&self, thread: &ThreadId, log: Option<&LogId>) -> Result<Vec<u8>> {
        self.keys.thread(thread)?;
        let mut records = Vec::new();
        loop {
            let after = records
                .last()
                .map_or(0, |r: &threads_store::StoredRecord| match log {
                    Some(_) => r.counter,
                    None => r.seq,
                });
            let page = match log {
                Some(log) => self.store.records_by_log(thread, log, after, 1000).await?,
                None => self.store.records_by_thread(thread, after, 1000).await?,
            };
            if page.is_empty() {
                break;
            }
            records.extend(page);
        }
        if records.is_empty() {
            return Err(Error::NothingHeld);
        }
        Ok(car::write_car(records.iter().map(car::CarItem::stored)).await)
    }

    /// Imports records from a CAR into the local store, each verified with its thread's follow
    /// key first (the thread must be known here). Returns how many were new.
    pub async fn import(&self, bytes: &[u8], mut progress: impl FnMut(u64, u64)) -> Result<u64> {
        let records = car::read_car(bytes)
            .await
            .map_err(|e| Error::BadCar(e.to_string()))?;
        let total = records.len() as u64;
        let mut fresh = 0;
        let mut done = 0;
        for chunk in records.chunks(STORE_BATCH) {
            let mut by_thread: Vec<(ThreadEntry, Vec<&car::CarRecord>)> = Vec::new();
            for record in chunk {
                match by_thread
                    .iter_mut()
                    .find(|(e, _)| e.thread == record.thread)
                {
                    Some((_, list)) => list.push(record),
                    None => by_thread.push((self.keys.thread(&record.thread)?, vec![record])),
                }
            }
            for (entry, list) in by_thread {
                let mut known = self.known_logs(&entry.thread).await?;
                let service = entry.key.service();
                let checked = verify_chained(
                    list.iter().map(|r| (r.blocks.clone(), service, &r.log)),
                    entry.signature_policy(),
                );
                let mut batch = Vec::with_capacity(list.len());
                for (result, r) in checked.into_iter().zip(&list) {
                    let record = result.map_err(|error| Error::Rejected {
                        cid: cid_of(&r.blocks.record).to_string(),
                        source_url: "the CAR file".into(),
                        error,
                    })?;
                    if known.insert(r.log.clone()) {
                        self.register_locally(&entry, &r.log).await?;
                    }
                    batch.push(Ingest {
                        thread: entry.thread.clone(),
                        log: r.log.clone(),
                        record,
                    });
                }
                fresh += store_pulled(self.store.clone(), batch).await?.len() as u64;
            }
            done += chunk.len() as u64;
            progress(done, total);
        }
        Ok(fresh)
    }

    /// Joins a thread from a link or an invite sealed to this peer's identity. A writer gets
    /// its own log.
    pub async fn join(&self, text: &str) -> Result<ThreadEntry> {
        let invite = Invite::decode(text, &self.identity)?;
        let mut entry = match self.keys.thread(&invite.thread) {
            Ok(existing) => existing,
            Err(Error::UnknownThread(_)) => ThreadEntry {
                thread: invite.thread.clone(),
                key: invite.key.clone(),
                earlier_read_keys: Vec::new(),
                log: None,
                snapshot_log: None,
                snapshots_from: None,
                public: invite.public,
                followers: Vec::new(),
                allow_legacy_signatures: false,
            },
            Err(e) => return Err(e),
        };
        if invite.key.read().is_some() && invite.key.read() != entry.key.read() {
            if let Some(current) = entry.key.read() {
                entry.earlier_read_keys.insert(0, current.clone());
            }
            entry.key = invite.key.clone();
        }
        if invite.snapshots_from.is_some() {
            entry.snapshots_from = invite.snapshots_from.clone();
        }
        for key in &invite.earlier_read_keys {
            if !entry.read_keys().any(|k| k == key) {
                entry.earlier_read_keys.push(key.clone());
            }
        }
        if invite.role == Role::Writer && entry.log.is_none() {
            entry.log = Some(Keypair::generate(&mut OsRng));
        }
        for url in &invite.followers {
            if !entry.followers.iter().any(|f| &f.url == url) {
                entry.followers.push(Follower {
                    url: url.clone(),
                    cursor: String::new(),
                });
            }
        }
        self.adopt(&entry).await?;
        Ok(entry)
    }

    /// A link (or, with `to`, an invite sealed to that identity) that lets its holder join
    /// the thread in `role`. Carries keys: share it privately.
    pub fn share(&self, thread: &ThreadId, role: Role, to: Option<&PublicKey>) -> Result<String> {
        let entry = self.keys.thread(thread)?;
        if role != Role::Follower && entry.key.read().is_none() {
            return Err(Error::NoReadKey);
        }
        let invite = Invite {
            thread: entry.thread.clone(),
            key: match role {
                Role::Follower => entry.key.follow_only(),
                _ => entry.key.clone(),
            },
            earlier_read_keys: match role {
                Role::Follower => Vec::new(),
                _ => entry.earlier_read_keys.clone(),
            },
            role,
            snapshots_from: entry
                .snapshot_log
                .as_ref()
                .map(|pair| LogId::from(pair.public()))
                .or_else(|| entry.snapshots_from.clone()),
            public: entry.public,
            followers: entry.followers.iter().map(|f| f.url.clone()).collect(),
        };
        invite.encode(to)
    }
}
