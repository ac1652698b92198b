//! What a group commit decides, the same on both backends: from the heads it read, which
//! records it stores, which are forks, and where logs' heads and threads' counters move.
//!
//! A backend reads in two steps ([`Group::pairs`] for the heads, then [`Group::suspects`] for
//! the few CIDs that may already be stored), and writes what [`Group::decide`] returns.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::model::{Ingest, Outcome, Quotas};
use crate::sql::rule::{decide, suspects, Decision, LogState};
use crate::{Change, Result};

/// A log's head as a group commit reads it, with its thread's row locked (or the database's
/// one write lock taken): `head_cid` is `None` for a log with no record yet.
pub(crate) struct HeadRow {
    pub thread: Vec<u8>,
    pub log: Vec<u8>,
    pub head_cid: Option<Vec<u8>>,
    pub counter: i64,
    pub bytes: i64,
}

/// A log whose head a group commit moves.
pub(crate) struct MovedHead {
    pub thread: Vec<u8>,
    pub log: Vec<u8>,
    pub cid: Vec<u8>,
    pub counter: i64,
    pub bytes: i64,
}

/// A thread a group commit grows: its ID, its sequence before and after, its bytes after.
pub(crate) type Grown<'a> = (&'a [u8], u64, u64, u64);

/// A batch being decided: its records by thread, and the state of the logs it touches.
pub(crate) struct Group<'a> {
    batch: &'a [Ingest],
    /// Indexes of the batch's records, by thread; threads in ID order, so that concurrent
    /// groups lock rows in one order.
    by_thread: BTreeMap<&'a [u8], Vec<usize>>,
    logs: HashMap<Vec<u8>, HashMap<Vec<u8>, LogState>>,
}

/// A record already stored that a group's record names (as itself, or as its predecessor):
/// its log, CID and counter.
pub(crate) type Stored = (Vec<u8>, Vec<u8>, i64);

/// What a group writes, and what each of its records became.
pub(crate) struct Decided<'a> {
    pub outcomes: Vec<Outcome>,
    /// Records to insert: index in the batch, sequence number, counter.
    pub records: Vec<(usize, u64, u64)>,
    /// Indexes of records kept as forks.
    pub forks: Vec<usize>,
    pub moved: Vec<MovedHead>,
    pub grown: Vec<Grown<'a>>,
    /// One per grown thread, to announce once committed.
    pub changes: Vec<Change>,
}

impl<'a> Group<'a> {
    pub fn new(batch: &'a [Ingest]) -> Self {
        let mut by_thread: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
        for (i, item) in batch.iter().enumerate() {
            by_thread.entry(item.thread.as_bytes()).or_default().push(i);
        }
        Self {
            batch,
            by_thread,
            logs: HashMap::new(),
        }
    }

    /// The batch's threads, in ID order.
    pub fn threads(&self) -> Vec<&'a [u8]> {
        self.by_thread.keys().copied().collect()
    }

    /// The batch's (thread, log) pairs, each once, in order: the heads to read (not every log
    /// of its threads).
    pub fn pairs(&self) -> Vec<(&'a [u8], Vec<u8>)> {
        let pairs: BTreeSet<_> = self
            .batch
            .iter()
            .map(|b| (b.thread.as_bytes(), b.log.to_bytes()))
            .collect();
        pairs.into_iter().collect()
    }

    /// Takes the heads read for [`Self::pairs`] (a log not registered has no row).
    pub fn set_heads(&mut self, heads: Vec<HeadRow>) -> Result<()> {
        for HeadRow {
            thread,
            log,
            head_cid,
            counter,
            bytes,
        } in heads
        {
            let head = match head_cid {
                Some(c) => Some(threads_core::Head {
                    cid: crate::sql::rows::cid(&c)?,
                    counter: counter as u64,
                }),
                None => None,
            };
            let state = LogState {
                head,
                bytes,
                changed: false,
            };
            self.logs.entry(thread).or_default().insert(log, state);
        }
        Ok(())
    }

    /// Per thread, the CIDs to look up before deciding: only a record that does not extend
    /// its log's head can already be stored (a duplicate) or name a stored predecessor (a
    /// fork). The common group, every record chaining, has none.
    pub fn suspects(&self) -> Vec<(&'a [u8], Vec<Vec<u8>>)> {
        let no_logs = HashMap::new();
        self.by_thread
            .iter()
            .map(|(&thread, indexes)| {
                let logs = self.logs.get(thread).unwrap_or(&no_logs);
                (thread, suspects(thread, indexes, self.batch, logs))
            })
            .filter(|(_, cids)| !cids.is_empty())
            .collect()
    }

    /// Decides every record, given each thread's counters (sequence, bytes; a thread not
    /// registered has none) and the stored records found among [`Self::suspects`] (whole
    /// CIDs: a backend that looks up by prefix keeps only the exact matches).
    pub fn decide(
        mut self,
        counters: &HashMap<Vec<u8>, (i64, i64)>,
        mut stored: HashMap<&[u8], Vec<Stored>>,
        quotas: &Quotas,
    ) -> Result<Decided<'a>> {
        let batch = self.batch;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        let (mut records, mut forks, mut grown) = (Vec::new(), Vec::new(), Vec::new());
        let mut no_logs = HashMap::new();
        for (thread, indexes) in std::mem::take(&mut self.by_thread) {
            let Some(&(seq, bytes)) = counters.get(thread) else {
                for i in indexes {
                    outcomes[i] = Some(Outcome::UnknownLog);
                }
                continue;
            };
            let (first_seq, mut thread_seq, mut thread_bytes) =
                (seq as u64, seq as u64, bytes as u64);
            let logs = self.logs.get_mut(thread).unwrap_or(&mut no_logs);
            let mut known: HashMap<Vec<u8>, u64> = HashMap::new();
            let mut stored_in_log: HashSet<(Vec<u8>, Vec<u8>)> = HashSet::new();
            for (log, cid, counter) in stored.remove(thread).unwrap_or_default() {
                stored_in_log.insert((log, cid.clone()));
                known.insert(cid, counter as u64);
            }
            for &i in &indexes {
                let item = &batch[i];
                let log_key = item.log.to_bytes();
                // A prev that is not the head but is stored in this log makes a fork.
                let prev_stored = item.record.prev().is_some_and(|prev| {
                    stored_in_log.contains(&(log_key.clone(), prev.to_bytes()))
                });
                let state = logs.get_mut(&log_key);
                let decision = decide(
                    item,
                    state,
                    &known,
                    prev_stored,
                    &mut thread_seq,
                    &mut thread_bytes,
                    quotas,
                );
                outcomes[i] = Some(match decision {
                    Decision::Store { seq, counter } => {
                        known.insert(item.record.cid().to_bytes(), counter);
                        records.push((i, seq, counter));
                        Outcome::Accepted { seq, counter }
                    }
                    Decision::Fork { head } => {
                        forks.push(i);
                        Outcome::Fork { head }
                    }
                    Decision::Final(outcome) => outcome,
                });
            }
            if thread_seq > first_seq {
                grown.push((thread, first_seq, thread_seq, thread_bytes));
            }
        }
        let moved = self
            .logs
            .into_iter()
            .flat_map(|(thread, logs)| {
                logs.into_iter()
                    .map(move |(log, s)| (thread.clone(), log, s))
            })
            .filter(|(_, _, s)| s.changed)
            .map(|(thread, log, state)| {
                let head = state.head.expect("a changed log has a head");
                MovedHead {
                    thread,
                    log,
                    cid: head.cid.to_bytes(),
                    counter: head.counter as i64,
                    bytes: state.bytes,
                }
            })
            .collect();
        let changes = grown
            .iter()
            .map(|&(thread, after, seq, _)| {
                Ok(Change {
                    thread: crate::sql::rows::thread_id(thread)?,
                    seq,
                    after,
                    here: true,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Decided {
            outcomes: outcomes
                .into_iter()
                .map(|o| o.expect("every record decided"))
                .collect(),
            records,
            forks,
            moved,
            grown,
            changes,
        })
    }
}
