//! Records as CAR files (the IPLD interchange format): pages pulled from a follower, batches
//! pushed to one, and a peer's exports.
//!
//! A CAR of records has one *entry* block per record among its roots, followed by the record's
//! four node blocks. An entry is DAG-CBOR `{log, thread, record, event, header, body}` (IDs as
//! bytes, nodes as links); entries of stored records add `seq` and `counter`. Entries say which
//! log and thread a record belongs to, which its encrypted nodes cannot.

use std::collections::{BTreeMap, HashMap};

use ipld_core::ipld::Ipld;
use iroh_car::{CarHeader, CarReader, CarWriter};
use threads_core::{cid_of, Cid, LogId, ThreadId, UnverifiedRecord};
use threads_store::StoredRecord;

pub const CAR: &str = "application/vnd.ipld.car";

/// A CAR that does not hold records made like [`write_car`]'s; says what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CarError(pub String);

/// A record read from a CAR: where it claims to belong, and its four nodes, unverified.
#[derive(Debug, Clone)]
pub struct CarRecord {
    pub thread: ThreadId,
    pub log: LogId,
    pub blocks: UnverifiedRecord,
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

/// Reads records from a CAR made like [`write_car`]'s output. Nothing is verified.
pub async fn read_car(bytes: &[u8]) -> Result<Vec<CarRecord>, CarError> {
    let bad = CarError;
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
    // A log ID is a public key, and parsing one is a point decompression: a CAR of one log
    // repeats the same bytes in every entry, so each is parsed once.
    let mut logs: HashMap<Vec<u8>, LogId> = HashMap::new();
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
            Ok(CarRecord {
                thread: ThreadId::from_bytes(&bytes("thread")?)
                    .map_err(|e| bad(format!("entry {root}: {e}")))?,
                log: {
                    let key = bytes("log")?;
                    match logs.get(&key) {
                        Some(log) => log.clone(),
                        None => {
                            let log = LogId::from_bytes(&key)
                                .map_err(|e| bad(format!("entry {root}: {e}")))?;
                            logs.insert(key, log.clone());
                            log
                        }
                    }
                },
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
