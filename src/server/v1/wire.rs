//! How records travel over HTTP: JSON (base64 node bytes) for people, and CAR for machines.
//!
//! A CAR of records has one *entry* block per record among its roots, followed by the record's
//! four node blocks. An entry is DAG-CBOR `{log, thread, record, event, header, body}` (IDs as
//! bytes, nodes as links); pulled entries add `seq` and `counter`. Entries say which log and
//! thread a record belongs to, which its encrypted nodes cannot.

use std::collections::{BTreeMap, HashMap};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ipld_core::ipld::Ipld;
use iroh_car::{CarHeader, CarReader, CarWriter};
use serde::{Deserialize, Serialize};
use threads_core::{cid_of, Cid, LogId, ThreadId, UnverifiedRecord};
use threads_store::StoredRecord;

use crate::server::error::ApiError;

pub const CAR: &str = "application/vnd.ipld.car";
pub const DAG_CBOR: &str = "application/vnd.ipld.dag-cbor";
pub const RAW: &str = "application/vnd.ipld.raw";

/// One record as JSON. Node bytes are standard base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordJson {
    pub thread: ThreadId,
    pub log: LogId,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub counter: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub arrived_ms: Option<i64>,
    pub record: String,
    pub event: String,
    pub header: String,
    pub body: String,
}

/// A stored record as JSON, the same shape as [`RecordJson`]; ID strings are borrowed so that a
/// page renders each distinct thread and log ID once (a log ID renders in base58, which is slow).
#[derive(Serialize)]
pub struct StoredJson<'a> {
    thread: &'a str,
    log: &'a str,
    cid: String,
    seq: u64,
    counter: u64,
    arrived_ms: i64,
    record: String,
    event: String,
    header: String,
    body: String,
}

/// Renders a page of stored records as [`StoredJson`].
pub fn stored_json<'a>(
    records: &[StoredRecord],
    names: &'a mut HashMap<Vec<u8>, String>,
) -> Vec<StoredJson<'a>> {
    for r in records {
        names
            .entry(r.thread.as_bytes().to_vec())
            .or_insert_with(|| r.thread.to_string());
        names
            .entry(r.log.to_bytes())
            .or_insert_with(|| r.log.to_string());
    }
    let names = &*names;
    records
        .iter()
        .map(|r| {
            let b = &r.blocks;
            StoredJson {
                thread: &names[r.thread.as_bytes()],
                log: &names[&r.log.to_bytes()],
                cid: r.cid.to_string(),
                seq: r.seq,
                counter: r.counter,
                arrived_ms: r.arrived_ms,
                record: B64.encode(&b.record),
                event: B64.encode(&b.event),
                header: B64.encode(&b.header),
                body: B64.encode(&b.body),
            }
        })
        .collect()
}

/// A record as pushed: where it goes and its four nodes, unverified.
pub struct PushItem {
    pub thread: ThreadId,
    pub log: LogId,
    pub blocks: UnverifiedRecord,
}

impl RecordJson {
    pub fn from_stored(r: &StoredRecord) -> Self {
        let b = &r.blocks;
        Self {
            thread: r.thread.clone(),
            log: r.log.clone(),
            cid: Some(r.cid.to_string()),
            seq: Some(r.seq),
            counter: Some(r.counter),
            arrived_ms: Some(r.arrived_ms),
            record: B64.encode(&b.record),
            event: B64.encode(&b.event),
            header: B64.encode(&b.header),
            body: B64.encode(&b.body),
        }
    }

    pub fn into_push(self) -> Result<PushItem, ApiError> {
        let decode = |field: &str, text: &str| {
            B64.decode(text).map_err(|_| {
                ApiError::bad_request("bad_request", format!("{field} is not standard base64"))
            })
        };
        Ok(PushItem {
            blocks: UnverifiedRecord {
                record: decode("record", &self.record)?,
                event: decode("event", &self.event)?,
                header: decode("header", &self.header)?,
                body: decode("body", &self.body)?,
            },
            thread: self.thread,
            log: self.log,
        })
    }
}

/// A record on its way into a CAR, with its nodes' CIDs.
pub struct CarItem<'a> {
    pub log: &'a LogId,
    pub thread: &'a ThreadId,
    pub blocks: &'a UnverifiedRecord,
    /// Record, event, header and body CIDs.
    pub cids: [Cid; 4],
    /// Sequence number and counter, for pulled records.
    pub position: Option<(u64, u64)>,
}

impl<'a> CarItem<'a> {
    /// A record to push: CIDs are computed from the bytes.
    pub fn new(log: &'a LogId, thread: &'a ThreadId, blocks: &'a UnverifiedRecord) -> Self {
        let cids = [&blocks.record, &blocks.event, &blocks.header, &blocks.body].map(|b| cid_of(b));
        Self {
            log,
            thread,
            blocks,
            cids,
            position: None,
        }
    }

    /// A stored record: CIDs come from storage.
    pub fn stored(r: &'a StoredRecord) -> Self {
        let n = r.node_cids;
        Self {
            log: &r.log,
            thread: &r.thread,
            blocks: &r.blocks,
            cids: [r.cid, n.event, n.header, n.body],
            position: Some((r.seq, r.counter)),
        }
    }

    fn entry(&self) -> Ipld {
        let [record, event, header, body] = self.cids;
        let mut map = BTreeMap::from([
            ("log".to_owned(), Ipld::Bytes(self.log.to_bytes())),
            (
                "thread".to_owned(),
                Ipld::Bytes(self.thread.as_bytes().to_vec()),
            ),
            ("record".to_owned(), Ipld::Link(record)),
            ("event".to_owned(), Ipld::Link(event)),
            ("header".to_owned(), Ipld::Link(header)),
            ("body".to_owned(), Ipld::Link(body)),
        ]);
        if let Some((seq, counter)) = self.position {
            map.insert("seq".into(), Ipld::Integer(seq.into()));
            map.insert("counter".into(), Ipld::Integer(counter.into()));
        }
        Ipld::Map(map)
    }
}

/// Writes records as a CAR: entries as roots, then entries and node blocks. At least one record.
pub async fn write_car(items: impl IntoIterator<Item = CarItem<'_>>) -> Vec<u8> {
    let items: Vec<CarItem> = items.into_iter().collect();
    let entries: Vec<(Cid, Vec<u8>)> = items
        .iter()
        .map(|item| {
            let bytes = serde_ipld_dagcbor::to_vec(&item.entry()).expect("IPLD encodes");
            (cid_of(&bytes), bytes)
        })
        .collect();
    let size: usize = items
        .iter()
        .map(|i| i.blocks.record.len() + i.blocks.body.len() + 512)
        .sum();
    let mut out = Vec::with_capacity(size);
    let roots = entries.iter().map(|(cid, _)| *cid).collect();
    let mut writer = CarWriter::new(CarHeader::new_v1(roots), &mut out);
    for (item, (entry_cid, entry)) in items.iter().zip(&entries) {
        writer
            .write(*entry_cid, entry)
            .await
            .expect("writing to memory");
        let b = item.blocks;
        for (cid, node) in item
            .cids
            .iter()
            .zip([&b.record, &b.event, &b.header, &b.body])
        {
            writer.write(*cid, node).await.expect("writing to memory");
        }
    }
    writer.finish().await.expect("writing to memory");
    out
}

/// Reads pushed records from a CAR made like [`write_car`]'s output.
pub async fn read_car(bytes: &[u8]) -> Result<Vec<PushItem>, ApiError> {
    let bad = |detail: String| ApiError::bad_request("bad_car", detail);
    let mut reader = CarReader::new(bytes)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let roots = reader.header().roots().to_vec();
    let mut blocks: HashMap<Cid, Vec<u8>> = HashMap::new();
    while let Some((cid, data)) = reader.next_block().await.map_err(|e| bad(e.to_string()))? {
        blocks.insert(cid, data);
    }
    let take = |cid: &Cid| {
        blocks
            .get(cid)
            .cloned()
            .ok_or_else(|| bad(format!("block {cid} is missing")))
    };
    roots
        .iter()
        .map(|root| {
            let entry: Ipld = serde_ipld_dagcbor::from_slice(&take(root)?)
                .map_err(|_| bad(format!("entry {root} is not DAG-CBOR")))?;
            let field = |name: &str| entry.get(name).ok().flatten();
            let bytes = |name: &str| match field(name) {
                Some(Ipld::Bytes(b)) => Ok(b.clone()),
                _ => Err(bad(format!("entry {root} has no {name} bytes"))),
            };
            let link = |name: &str| match field(name) {
                Some(Ipld::Link(cid)) => take(cid),
                _ => Err(bad(format!("entry {root} has no {name} link"))),
            };
            Ok(PushItem {
                thread: ThreadId::from_bytes(&bytes("thread")?)
                    .map_err(|e| bad(format!("entry {root}: {e}")))?,
                log: LogId::from_bytes(&bytes("log")?)
                    .map_err(|e| bad(format!("entry {root}: {e}")))?,
                blocks: UnverifiedRecord {
                    record: link("record")?,
                    event: link("event")?,
                    header: link("header")?,
                    body: link("body")?,
                },
            })
        })
        .collect()
}
