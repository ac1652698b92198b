//! The values the store keeps and returns.

use threads_core::{Cid, Head, LogId, ServiceKey, ThreadId, UnverifiedRecord, VerifiedRecord};

/// A writer's request to have a log followed. Its signature was checked before it got here.
#[derive(Debug, Clone)]
pub struct Registration {
    pub thread: ThreadId,
    pub log: LogId,
    /// The thread's follow key: every log of a thread must bring the same one.
    pub follow_key: ServiceKey,
    /// Multiaddrs where the writer can be reached.
    pub addrs: Vec<String>,
    /// Public threads can be pulled by anyone; private ones need a pull token.
    pub public: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    Created,
    Updated,
    /// The thread was held under another follow key, and its ID is bound to this
    /// registration's key: what was stored under the other key was a squatter's, and is gone.
    Replaced,
}

/// A registered thread. Holds the follow key: never serialize it to clients.
#[derive(Debug, Clone)]
pub struct ThreadInfo {
    pub id: ThreadId,
    pub public: bool,
    pub follow_key: ServiceKey,
    /// Newest arrival sequence number: the cursor of the newest record.
    pub seq: u64,
    pub records: u64,
    pub bytes: u64,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogInfo {
    pub thread: ThreadId,
    pub log: LogId,
    pub head: Option<Head>,
    pub bytes: u64,
    pub addrs: Vec<String>,
    pub registered_ms: i64,
    /// When the writer last gave its addresses (registering again renews them).
    pub addrs_ms: i64,
}

/// A verified record to be stored in a log of a thread.
#[derive(Debug, Clone)]
pub struct Ingest {
    pub thread: ThreadId,
    pub log: LogId,
    pub record: VerifiedRecord,
}

/// Limits on what one thread or log may hold; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    pub max_records_per_log: Option<u64>,
    pub max_bytes_per_thread: Option<u64>,
}

/// Which quota a record would have exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    RecordsPerLog,
    BytesPerThread,
}

/// What became of one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored: its arrival sequence number in the thread, and its counter in the log.
    Accepted {
        seq: u64,
        counter: u64,
    },
    /// Already stored (pushing twice is not an error).
    Duplicate {
        counter: u64,
    },
    /// Its predecessor is not stored yet: the writer should push from after `head`.
    Gap {
        head: Option<Head>,
    },
    /// A second record claiming a predecessor already taken: kept as evidence only.
    Fork {
        head: Head,
    },
    /// The log is not registered here.
    UnknownLog,
    QuotaExceeded(Quota),
}

impl Outcome {
    /// Whether the record is now in the log (newly or before).
    pub fn is_stored(&self) -> bool {
        matches!(self, Outcome::Accepted { .. } | Outcome::Duplicate { .. })
    }
}

/// A record as stored: where it sits in its log and thread, and its four nodes' bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub thread: ThreadId,
    pub log: LogId,
    pub seq: u64,
    pub counter: u64,
    pub cid: Cid,
    /// CIDs of the event, header and body nodes, as stored (no need to hash again).
    pub node_cids: NodeCids,
    pub arrived_ms: i64,
    pub blocks: UnverifiedRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCids {
    pub event: Cid,
    pub header: Cid,
    pub body: Cid,
}

impl Ingest {
    /// The record as the store now holds it, at the sequence number and counter its
    /// [`Outcome::Accepted`] gave: what reading it back would return, without the read.
    pub fn into_stored(self, seq: u64, counter: u64, arrived_ms: i64) -> StoredRecord {
        let (header, body) = self.record.content_cids();
        StoredRecord {
            thread: self.thread,
            log: self.log,
            seq,
            counter,
            cid: self.record.cid(),
            node_cids: NodeCids {
                event: self.record.event_cid(),
                header,
                body,
            },
            arrived_ms,
            blocks: self.record.into_blocks(),
        }
    }
}

impl StoredRecord {
    pub fn byte_len(&self) -> usize {
        self.blocks.byte_len()
    }
}

/// A rejected fork: the record, as received, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkEvidence {
    pub cid: Cid,
    pub prev: Option<Cid>,
    pub arrived_ms: i64,
    pub blocks: UnverifiedRecord,
}

/// A webhook subscription: records arriving in a thread (or one log of it) are posted to `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: String,
    pub thread: ThreadId,
    /// `None`: every log of the thread.
    pub log: Option<LogId>,
    pub url: String,
    /// Standard Webhooks secret (`whsec_…`): signs every delivery.
    pub secret: String,
    pub created_ms: i64,
    /// Failed attempts in a row; a success resets it.
    pub failures: u64,
    pub disabled_ms: Option<i64>,
    pub disabled_reason: Option<String>,
    /// The thread's records up to this sequence number have been sent to it (or given a
    /// delivery row to retry); the later ones are its pending work.
    pub cursor: u64,
}

/// The webhook queue at a glance, across every process sharing the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookGauges {
    /// Records past enabled webhooks' cursors, plus deliveries waiting for a retry (an upper
    /// bound: a webhook on one log counts the records of the thread's other logs too).
    pub backlog_records: u64,
    pub disabled: u64,
}

/// A webhook's cursor taken by a worker: the records after `webhook.cursor`, up to the
/// thread's `seq` when claimed, are this worker's to send until `leased_until`.
#[derive(Debug, Clone)]
pub struct WebhookLease {
    pub webhook: Webhook,
    pub seq: u64,
    pub leased_until: i64,
}

/// What a worker did with a leased cursor: what it sent, and where the cursor moves.
#[derive(Debug, Clone)]
pub struct CursorOutcome {
    pub thread: ThreadId,
    pub webhook: String,
    pub leased_until: i64,
    pub cursor: u64,
    pub sent: Vec<(Delivery, Attempt, AttemptResult)>,
}

/// One event to deliver to one webhook, and how far its delivery got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub webhook: String,
    /// `record.created` or `webhook.test`.
    pub event: String,
    pub thread: ThreadId,
    pub log: Option<LogId>,
    pub seq: u64,
    pub counter: u64,
    pub cid: Option<Cid>,
    pub created_ms: i64,
    /// `pending`, `delivered`, `failed`, or `paused` while its webhook is disabled.
    pub state: String,
    pub attempts: u32,
    pub next_ms: i64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub delivered_ms: Option<i64>,
    /// The `webhook-id` header: the same for every attempt.
    pub message_id: String,
}

/// One try at sending a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub at_ms: i64,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// What a worker reports after trying a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    Delivered,
    /// Try again at `retry_ms`, or give up (`None`: attempts exhausted).
    Failed {
        retry_ms: Option<i64>,
        /// Disable the webhook after this many failures in a row.
        disable_after: u64,
    },
}
