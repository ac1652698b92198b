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

fn entry(
    log: &LogId,
    thread: &ThreadId,
    blocks: &UnverifiedRecord,
    stored: Option<&StoredRecord>,
) -> Ipld {
    let mut map = BTreeMap::from([
        ("log".to_owned(), Ipld::Bytes(log.to_bytes())),
        ("thread".to_owned(), Ipld::Bytes(thread.as_bytes().to_vec())),
        ("record".to_owned(), Ipld::Link(cid_of(&blocks.record))),
        ("event".to_owned(), Ipld::Link(cid_of(&blocks.event))),
        ("header".to_owned(), Ipld::Link(cid_of(&blocks.header))),
        ("body".to_owned(), Ipld::Link(cid_of(&blocks.body))),
    ]);
    if let Some(r) = stored {
        map.insert("seq".into(), Ipld::Integer(r.seq.into()));
        map.insert("counter".into(), Ipld::Integer(r.counter.into()));
    }
    Ipld::Map(map)
}

/// Writes records as a CAR: entries as roots, then entries and node blocks.
pub async fn write_car<'a>(
    records: impl IntoIterator<
        Item = (
            &'a LogId,
            &'a ThreadId,
            &'a UnverifiedRecord,
            Option<&'a StoredRecord>,
        ),
    >,
) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut blocks = Vec::new();
    for (log, thread, b, stored) in records {
        let bytes =
            serde_ipld_dagcbor::to_vec(&entry(log, thread, b, stored)).expect("IPLD encodes");
        entries.push(cid_of(&bytes));
        blocks.push(bytes);
        for node in [&b.record, &b.event, &b.header, &b.body] {
            blocks.push(node.clone());
        }
    }
    let mut out = Vec::new();
    let mut writer = CarWriter::new(CarHeader::new_v1(entries), &mut out);
    for block in &blocks {
        writer
            .write(cid_of(block), block)
            .await
            .expect("writing to memory");
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
