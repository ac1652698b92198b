//! The ingest rule, decided for each record of a batch before any row is written.

use std::collections::HashMap;

use threads_core::Head;

use crate::model::*;

/// A log's state while a batch is decided.
pub(crate) struct LogState {
    pub head: Option<Head>,
    pub bytes: i64,
    pub changed: bool,
}

/// What the ingest rule decided for one record, before any row is written.
pub(crate) enum Decision {
    Store { seq: u64, counter: u64 },
    Fork { head: Head },
    Final(Outcome),
}

/// Decides one record against the log's state. `stored_in_log(prev)` answers whether `prev` is
/// a record of this log already in the database (a fork) or not (a gap).
pub(crate) fn decide(
    item: &Ingest,
    state: Option<&mut LogState>,
    known: &HashMap<Vec<u8>, u64>,
    prev_stored: bool,
    thread_seq: &mut u64,
    thread_bytes: &mut u64,
    quotas: &Quotas,
) -> Decision {
    let Some(state) = state else {
        return Decision::Final(Outcome::UnknownLog);
    };
    if let Some(&counter) = known.get(&item.record.cid().to_bytes()) {
        return Decision::Final(Outcome::Duplicate { counter });
    }
    match Head::advance(state.head.as_ref(), &item.record) {
        Ok(head) => {
            let len = item.record.blocks().byte_len() as u64;
            if quotas
                .max_records_per_log
                .is_some_and(|max| head.counter > max)
            {
                return Decision::Final(Outcome::QuotaExceeded(Quota::RecordsPerLog));
            }
            if quotas
                .max_bytes_per_thread
                .is_some_and(|max| *thread_bytes + len > max)
            {
                return Decision::Final(Outcome::QuotaExceeded(Quota::BytesPerThread));
            }
            *thread_seq += 1;
            *thread_bytes += len;
            state.head = Some(head);
            state.bytes += len as i64;
            state.changed = true;
            Decision::Store {
                seq: *thread_seq,
                counter: head.counter,
            }
        }
        Err(threads_core::ChainError::MissingPrev { .. }) => Decision::Fork {
            head: state.head.expect("MissingPrev means the log has a head"),
        },
        Err(threads_core::ChainError::WrongPrev { .. }) if prev_stored => Decision::Fork {
            head: state.head.expect("WrongPrev means the log has a head"),
        },
        Err(_) => Decision::Final(Outcome::Gap { head: state.head }),
    }
}

/// The indexed part of a CID: 8 bytes of its digest (bytes 5-12, 1-based, as SQL's `substr`).
pub(crate) fn cid_prefix(cid: &[u8]) -> Vec<u8> {
    cid.iter().skip(4).take(8).copied().collect()
}

/// CIDs worth looking up before a thread's part of a batch is decided: each record that does
/// not extend its log's head (as the batch would move it), and its predecessor. A record that
/// extends the head cannot be stored already: its counter is past every stored one.
pub(crate) fn suspects(
    thread: &[u8],
    indexes: &[usize],
    batch: &[Ingest],
    logs: &HashMap<Vec<u8>, LogState>,
) -> Vec<Vec<u8>> {
    let mut heads: HashMap<Vec<u8>, Option<Head>> =
        logs.iter().map(|(log, s)| (log.clone(), s.head)).collect();
    let mut out = Vec::new();
    for &i in indexes {
        let item = &batch[i];
        debug_assert_eq!(item.thread.as_bytes(), thread);
        let Some(head) = heads.get_mut(&item.log.to_bytes()) else {
            continue;
        };
        match Head::advance(head.as_ref(), &item.record) {
            Ok(next) => *head = Some(next),
            Err(_) => {
                out.push(item.record.cid().to_bytes());
                out.extend(item.record.prev().map(|p| p.to_bytes()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
