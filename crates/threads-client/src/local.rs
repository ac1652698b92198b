//! Writing and reading on this machine: records are built, sealed, signed and stored in the
//! local store before any follower sees them, so writing works offline.

use rand_core::OsRng;
use serde_json::Value;
use threads_core::{Cid, Keypair, LogId, RecordError, ThreadId, VerifiedRecord};
use threads_store::{Ingest, Outcome, Quotas, Store};

use crate::*;

impl Client {
    /// Appends an event to this peer's own log, locally: no network needed.
    pub async fn write(&self, thread: &ThreadId, body: &Value) -> Result<(Cid, u64)> {
        let mut written = self.write_many(thread, std::slice::from_ref(body)).await?;
        Ok(written.remove(0))
    }

    /// Appends events in order, in one local transaction: all or none.
    pub async fn write_many(&self, thread: &ThreadId, bodies: &[Value]) -> Result<Vec<(Cid, u64)>> {
        let entry = self.keys.thread(thread)?;
        let pair = entry.log.as_ref().ok_or(Error::NotAWriter)?;
        self.append(&entry, pair, bodies).await
    }

    /// Appends an event to this peer's snapshot log (made on first use), which `push` sends
    /// to followers like its own log.
    pub async fn write_snapshot(&self, thread: &ThreadId, body: &Value) -> Result<(Cid, u64)> {
        let mut entry = self.keys.thread(thread)?;
        if entry.log.is_none() {
            return Err(Error::NotAWriter);
        }
        if entry.snapshot_log.is_none() {
            let pair = Keypair::generate(&mut OsRng);
            self.register_locally(&entry, &LogId::from(pair.public()))
                .await?;
            entry.snapshot_log = Some(pair);
            self.keys.save(&entry)?;
        }
        let pair = entry.snapshot_log.as_ref().expect("made above");
        let mut written = self
            .append(&entry, pair, std::slice::from_ref(body))
            .await?;
        Ok(written.remove(0))
    }

    /// The events of one log held locally, after counter `after`, decrypted.
    pub async fn read_log(
        &self,
        thread: &ThreadId,
        log: &LogId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let entry = self.keys.thread(thread)?;
        let stored = self.store.records_by_log(thread, log, after, limit).await?;
        Ok(stored
            .into_iter()
            .filter_map(|r| {
                let body = entry
                    .read_keys()
                    .find_map(|k| r.blocks.read_content(k).ok())?;
                Some(Event {
                    log: r.log,
                    counter: r.counter,
                    seq: r.seq,
                    cid: r.cid.to_string(),
                    body: decode_body(&body),
                })
            })
            .collect())
    }

    /// Appends events to one of this peer's logs, in one local transaction.
    async fn append(
        &self,
        entry: &ThreadEntry,
        pair: &Keypair,
        bodies: &[Value],
    ) -> Result<Vec<(Cid, u64)>> {
        let thread = &entry.thread;
        if entry.key.read().is_none() {
            return Err(Error::NoReadKey);
        }
        let log = LogId::from(pair.public());
        let mut prev = self
            .store
            .log(thread, &log)
            .await?
            .and_then(|l| l.head)
            .map(|h| h.cid);
        let mut batch = Vec::with_capacity(bodies.len());
        for body in bodies {
            let bytes = serde_ipld_dagcbor::to_vec(body).map_err(|e| Error::Body(e.to_string()))?;
            let record = VerifiedRecord::create(
                &bytes,
                &entry.key,
                pair,
                &self.identity.public(),
                prev,
                &mut OsRng,
            )
            .map_err(|e| Error::Body(e.to_string()))?;
            prev = Some(record.cid());
            batch.push(Ingest {
                thread: thread.clone(),
                log: log.clone(),
                record,
            });
        }
        let cids: Vec<Cid> = batch.iter().map(|i| i.record.cid()).collect();
        let outcomes = self
            .store
            .ingest(&batch, &Quotas::default(), now_ms())
            .await?;
        cids.into_iter()
            .zip(outcomes)
            .map(|(cid, outcome)| match outcome {
                Outcome::Accepted { counter, .. } => Ok((cid, counter)),
                // Another process appended meanwhile; nothing of this batch counts.
                other => Err(Error::LocalRefused {
                    log: log.to_string(),
                    outcome: format!("{other:?}"),
                }),
            })
            .collect()
    }

    /// Events of a thread held locally, in arrival order after `after` (a local sequence
    /// number), decrypted. Every record was verified before the local store took it.
    ///
    /// Each event is opened with the current read key or an earlier one. The page stops
    /// before an event none of them opens; when that is the first, the error says so (the
    /// thread's read key was rotated without this peer, or the record is damaged).
    pub async fn read(&self, thread: &ThreadId, after: u64, limit: u32) -> Result<Vec<Event>> {
        Ok(json_bodies(self.read_cbor(thread, after, limit).await?))
    }

    /// [`Client::read`] with each body left as its DAG-CBOR bytes.
    pub async fn read_cbor(
        &self,
        thread: &ThreadId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Event<Vec<u8>>>> {
        let entry = self.keys.thread(thread)?;
        if entry.key.read().is_none() {
            return Err(Error::NoReadKey);
        }
        let stored = self.store.records_by_thread(thread, after, limit).await?;
        open_page(&entry, &stored)
    }

    /// Records of a thread as [`Client::read`] would return them once stored: what a pull
    /// hands over as it stores (see [`Client::pull`]) is opened without reading it back.
    pub fn read_stored(
        &self,
        thread: &ThreadId,
        stored: &[threads_store::StoredRecord],
    ) -> Result<Vec<Event>> {
        Ok(json_bodies(self.read_stored_cbor(thread, stored)?))
    }

    /// [`Client::read_stored`] with each body left as its DAG-CBOR bytes.
    pub fn read_stored_cbor(
        &self,
        thread: &ThreadId,
        stored: &[threads_store::StoredRecord],
    ) -> Result<Vec<Event<Vec<u8>>>> {
        let entry = self.keys.thread(thread)?;
        if entry.key.read().is_none() {
            return Err(Error::NoReadKey);
        }
        open_page(&entry, stored)
    }

    /// The local sequence number of the newest record held of a thread (0: none yet).
    pub async fn held(&self, thread: &ThreadId) -> Result<u64> {
        Ok(self.store.thread(thread).await?.map_or(0, |t| t.seq))
    }

    /// Stored records of one thread, decrypted with the current read key or an earlier one
    /// (the thread's keys read once): `None` for a record none of them opens.
    pub fn open_records(
        &self,
        thread: &ThreadId,
        records: &[threads_store::StoredRecord],
    ) -> Result<Vec<Option<Event>>> {
        let entry = self.keys.thread(thread)?;
        Ok(records
            .iter()
            .map(|r| open_with(&entry, r).ok().map(json_body))
            .collect())
    }
}

/// Opens records in order, stopping before the first none of the keys opens; when that is
/// the first record, its error is the answer.
fn open_page(
    entry: &ThreadEntry,
    stored: &[threads_store::StoredRecord],
) -> Result<Vec<Event<Vec<u8>>>> {
    let mut events = Vec::with_capacity(stored.len());
    for r in stored {
        match open_with(entry, r) {
            Ok(event) => events.push(event),
            Err(_) if !events.is_empty() => break,
            Err(error) => return Err(error),
        }
    }
    Ok(events)
}

fn open_with(entry: &ThreadEntry, r: &threads_store::StoredRecord) -> Result<Event<Vec<u8>>> {
    let mut opened = Err(RecordError::NoReadKey);
    for key in entry.read_keys() {
        opened = r.blocks.read_content(key);
        if opened.is_ok() {
            break;
        }
    }
    match opened {
        Ok(body) => Ok(Event {
            log: r.log.clone(),
            counter: r.counter,
            seq: r.seq,
            cid: r.cid.to_string(),
            body,
        }),
        Err(error) => Err(Error::Rejected {
            cid: r.cid.to_string(),
            source_url: "the local store".into(),
            error,
        }),
    }
}

fn json_bodies(events: Vec<Event<Vec<u8>>>) -> Vec<Event> {
    events.into_iter().map(json_body).collect()
}

fn json_body(e: Event<Vec<u8>>) -> Event {
    Event {
        body: decode_body(&e.body),
        log: e.log,
        counter: e.counter,
        seq: e.seq,
        cid: e.cid,
    }
}

/// A body written as JSON comes back as JSON; other DAG-CBOR is shown as its IPLD debug text.
pub(crate) fn decode_body(bytes: &[u8]) -> Value {
    serde_ipld_dagcbor::from_slice::<Value>(bytes).unwrap_or_else(|_| {
        match serde_ipld_dagcbor::from_slice::<ipld_core::ipld::Ipld>(bytes) {
            Ok(ipld) => Value::String(format!("{ipld:?}")),
            Err(_) => Value::Null,
        }
    })
}
