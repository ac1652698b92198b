//! Records as CAR files (the IPLD interchange format): pages pulled from a follower, batches
//! pushed to one, and a peer's exports.
//!
//! A CAR of records has one *entry* block per record among its roots, followed by the record's
//! four node blocks. An entry is DAG-CBOR `{log, thread, record, event, header, body}` (IDs as
//! bytes, nodes as links); entries of stored records add `seq` and `counter`. Entries say which
//! log and thread a record belongs to, which its encrypted nodes cannot.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};

use ipld_core::ipld::Ipld;
use iroh_car::{CarHeader, CarReader, CarWriter};
use threads_core::{cid_of, Cid, LogId, ThreadId, UnverifiedRecord};
use threads_store::StoredRecord;

pub const CAR: &str = "application/vnd.ipld.car";

/// A CAR that cannot be read as records.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CarError {
    /// It does not hold records made like [`write_car`]'s; says what is wrong.
    #[error("{0}")]
    Malformed(String),
    /// It names more records than the reader takes at once (seen in its header, before any
    /// block is read).
    #[error("{records} records in one batch; the limit is {max}")]
    TooManyRecords { records: usize, max: usize },
}

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

    /// The entry as IPLD: what [`Self::entry_bytes`] encodes, and the tests check it against.
    #[cfg(test)]
    fn entry(&self) -> Ipld {
        let [record, event, header, body] = self.cids;
        let mut map = std::collections::BTreeMap::from([
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

    /// [`Self::entry`] as canonical DAG-CBOR, written directly: a map of fixed keys in DAG-CBOR's
    /// order (shorter keys first, then bytewise). A page writes one entry per record, and the
    /// generic encoder's maps and strings cost more than the rest of the page's CAR.
    fn entry_bytes(&self) -> Vec<u8> {
        let [record, event, header, body] = self.cids;
        let mut out = Vec::with_capacity(64 + 4 * record.encoded_len());
        head(&mut out, MAP, if self.position.is_some() { 8 } else { 6 });
        text(&mut out, "log");
        bytes(&mut out, &self.log.to_bytes());
        if let Some((seq, _)) = self.position {
            text(&mut out, "seq");
            head(&mut out, UINT, seq);
        }
        for (key, cid) in [
            ("body", body),
            ("event", event),
            ("header", header),
            ("record", record),
        ] {
            text(&mut out, key);
            link(&mut out, &cid);
        }
        text(&mut out, "thread");
        bytes(&mut out, self.thread.as_bytes());
        if let Some((_, counter)) = self.position {
            text(&mut out, "counter");
            head(&mut out, UINT, counter);
        }
        out
    }
}

/// CBOR major types (RFC 8949, section 3.1).
const UINT: u8 = 0;
const BYTES: u8 = 2;
const TEXT: u8 = 3;
const MAP: u8 = 5;

/// A CBOR head in its shortest form, as DAG-CBOR requires.
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let major = major << 5;
    match n {
        0..=23 => out.push(major | n as u8),
        24..=0xff => out.extend([major | 24, n as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, BYTES, b.len() as u64);
    out.extend_from_slice(b);
}

/// A link: tag 42 over the CID's bytes after a zero byte (the identity multibase prefix).
fn link(out: &mut Vec<u8>, cid: &Cid) {
    out.extend([0xd8, 0x2a]);
    head(out, BYTES, cid.encoded_len() as u64 + 1);
    out.push(0);
    cid.write_bytes(&mut *out).expect("writing to memory");
}

/// Writes records as a CAR: entries as roots, then entries and node blocks. At least one record.
pub async fn write_car(items: impl IntoIterator<Item = CarItem<'_>>) -> Vec<u8> {
    let items: Vec<CarItem> = items.into_iter().collect();
    let entries: Vec<(Cid, Vec<u8>)> = items
        .iter()
        .map(|item| {
            let bytes = item.entry_bytes();
            (cid_of(&bytes), bytes)
        })
        .collect();
    // Room for every block (a length prefix and a CID of at most 64 bytes each) and the header
    // (a CID per root), so that the page is written into one allocation.
    let size: usize = items
        .iter()
        .zip(&entries)
        .map(|(i, (_, entry))| {
            let b = i.blocks;
            entry.len()
                + b.record.len()
                + b.event.len()
                + b.header.len()
                + b.body.len()
                + 5 * 64
                + 64
        })
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
    read_car_at_most(bytes, usize::MAX).await
}

/// [`read_car`], refusing a CAR that names more than `max_records` records before reading any
/// of its blocks. A root named twice is one record, and the records never hold more node
/// bytes than the CAR itself: blocks named again and again cannot multiply memory.
pub async fn read_car_at_most(
    bytes: &[u8],
    max_records: usize,
) -> Result<Vec<CarRecord>, CarError> {
    let bad = CarError::Malformed;
    let mut reader = CarReader::new(bytes)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let mut seen = HashSet::new();
    let roots: Vec<Cid> = reader
        .header()
        .roots()
        .iter()
        .filter(|root| seen.insert(**root))
        .copied()
        .collect();
    if roots.len() > max_records {
        return Err(CarError::TooManyRecords {
            records: roots.len(),
            max: max_records,
        });
    }
    let mut blocks: HashMap<Cid, Vec<u8>> = HashMap::new();
    while let Some((cid, data)) = reader.next_block().await.map_err(|e| bad(e.to_string()))? {
        blocks.insert(cid, data);
    }
    let budget = Cell::new(bytes.len());
    let take = |cid: &Cid| {
        let block = blocks
            .get(cid)
            .ok_or_else(|| bad(format!("block {cid} is missing")))?;
        let left = budget.get().checked_sub(block.len()).ok_or_else(|| {
            bad(format!(
                "block {cid} is named by more records than the CAR can hold"
            ))
        })?;
        budget.set(left);
        Ok(block.clone())
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

#[cfg(test)]
mod tests {
    use rand_core::OsRng;
    use threads_core::{Keypair, Variant};

    use super::*;

    /// A new thread and log, and a record's blocks with a body of `body` bytes.
    fn one_record(body: usize) -> (ThreadId, LogId, UnverifiedRecord) {
        let blocks = UnverifiedRecord {
            record: vec![1],
            event: vec![2],
            header: vec![3],
            body: vec![4; body],
        };
        (
            ThreadId::random(Variant::Raw, &mut OsRng),
            LogId::from(Keypair::generate(&mut OsRng).public()),
            blocks,
        )
    }

    /// A CAR of one record whose header names its entry `times` times.
    async fn named_again(times: usize) -> (Vec<u8>, Vec<u8>) {
        let (thread, log, blocks) = one_record(1024);
        let once = write_car([CarItem::new(&log, &thread, &blocks)]).await;
        let entry = serde_ipld_dagcbor::to_vec(&CarItem::new(&log, &thread, &blocks).entry())
            .expect("IPLD encodes");
        let root = cid_of(&entry);
        let mut out = Vec::new();
        let mut writer = CarWriter::new(CarHeader::new_v1(vec![root; times]), &mut out);
        writer.write(root, &entry).await.unwrap();
        for node in [&blocks.record, &blocks.event, &blocks.header, &blocks.body] {
            writer.write(cid_of(node), node).await.unwrap();
        }
        writer.finish().await.unwrap();
        (once, out)
    }

    /// The direct encoding is byte for byte the generic encoder's, with and without positions,
    /// and across every width of a CBOR integer.
    #[test]
    fn entries_are_the_dag_cbor_encoders_bytes() {
        let (thread, log, blocks) = one_record(1);
        let mut item = CarItem::new(&log, &thread, &blocks);
        let generic = |item: &CarItem| serde_ipld_dagcbor::to_vec(&item.entry()).unwrap();
        assert_eq!(item.entry_bytes(), generic(&item));
        for n in [
            0,
            1,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            u64::MAX,
        ] {
            item.position = Some((n, n / 2 + 1));
            assert_eq!(item.entry_bytes(), generic(&item), "position {n}");
        }
    }

    #[tokio::test]
    async fn a_root_named_many_times_is_one_record() {
        let (once, many) = named_again(5000).await;
        let records = read_car(&many).await.unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].blocks.body,
            read_car(&once).await.unwrap()[0].blocks.body
        );
    }

    #[tokio::test]
    async fn records_over_the_limit_are_refused_before_their_blocks_are_read() {
        let (once, _) = named_again(1).await;
        let (thread, log) = (
            ThreadId::random(Variant::Raw, &mut OsRng),
            LogId::from(Keypair::generate(&mut OsRng).public()),
        );
        let blocks: Vec<UnverifiedRecord> = (0..3u8)
            .map(|i| UnverifiedRecord {
                record: vec![i],
                event: vec![i, 1],
                header: vec![i, 2],
                body: vec![i, 3],
            })
            .collect();
        let three = write_car(blocks.iter().map(|b| CarItem::new(&log, &thread, b))).await;
        assert!(matches!(
            read_car_at_most(&three, 2).await,
            Err(CarError::TooManyRecords { records: 3, max: 2 })
        ));
        assert_eq!(read_car_at_most(&three, 3).await.unwrap().len(), 3);
        assert_eq!(read_car_at_most(&once, 1).await.unwrap().len(), 1);
    }

    /// Entries that all name one large body would otherwise each get a copy of it.
    #[tokio::test]
    async fn blocks_named_by_many_records_cannot_multiply_memory() {
        let thread = ThreadId::random(Variant::Raw, &mut OsRng);
        let body = vec![7u8; 64 * 1024];
        let logs: Vec<LogId> = (0..100)
            .map(|_| LogId::from(Keypair::generate(&mut OsRng).public()))
            .collect();
        let shared = UnverifiedRecord {
            record: vec![1],
            event: vec![2],
            header: vec![3],
            body,
        };
        let entries: Vec<(Cid, Vec<u8>)> = logs
            .iter()
            .map(|log| {
                let bytes =
                    serde_ipld_dagcbor::to_vec(&CarItem::new(log, &thread, &shared).entry())
                        .unwrap();
                (cid_of(&bytes), bytes)
            })
            .collect();
        let mut out = Vec::new();
        let roots = entries.iter().map(|(cid, _)| *cid).collect();
        let mut writer = CarWriter::new(CarHeader::new_v1(roots), &mut out);
        for (cid, bytes) in &entries {
            writer.write(*cid, bytes).await.unwrap();
        }
        for node in [&shared.record, &shared.event, &shared.header, &shared.body] {
            writer.write(cid_of(node), node).await.unwrap();
        }
        writer.finish().await.unwrap();
        let refused = read_car(&out).await.unwrap_err();
        assert!(
            matches!(&refused, CarError::Malformed(m) if m.contains("named by more records")),
            "{refused}"
        );
    }
}
