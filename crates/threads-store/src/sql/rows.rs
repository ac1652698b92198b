//! Rows as the database returns them, and their decoding into the model's values.

use std::collections::HashMap;
use std::sync::LazyLock;

use threads_core::{Cid, Head, LogId, ServiceKey, ThreadId, UnverifiedRecord};

use crate::model::*;
use crate::{Result, StoreError};

/// Declares a row and its `sqlx::FromRow`, each field read from the column of its name: what
/// sqlx's derive makes, without building sqlx's proc macros (and its drivers again) for the host.
macro_rules! row {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($fvis:vis $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        $vis struct $name { $($fvis $field: $ty,)* }

        impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for $name
        where
            &'r str: sqlx::ColumnIndex<R>,
            $($ty: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,)*
        {
            fn from_row(row: &'r R) -> sqlx::Result<Self> {
                Ok(Self { $($field: row.try_get(stringify!($field))?,)* })
            }
        }
    };
}

pub(crate) fn decode_err(what: &'static str) -> StoreError {
    StoreError::Other(sqlx::Error::Decode(
        format!("stored {what} does not parse").into(),
    ))
}

pub(crate) fn cid(bytes: &[u8]) -> Result<Cid> {
    Cid::try_from(bytes).map_err(|_| decode_err("CID"))
}

pub(crate) fn thread_id(bytes: &[u8]) -> Result<ThreadId> {
    ThreadId::from_bytes(bytes).map_err(|_| decode_err("thread ID"))
}

pub(crate) fn log_id(bytes: &[u8]) -> Result<LogId> {
    LogId::from_bytes(bytes).map_err(|_| decode_err("log ID"))
}

row! {
    pub(crate) struct ThreadRow {
        id: Vec<u8>,
        public: bool,
        follow_key: Vec<u8>,
        seq: i64,
        record_count: i64,
        byte_count: i64,
        created_at: i64,
    }
}

impl ThreadRow {
    pub(crate) fn into_info(self) -> Result<ThreadInfo> {
        Ok(ThreadInfo {
            id: thread_id(&self.id)?,
            public: self.public,
            follow_key: ServiceKey::from_slice(&self.follow_key)
                .map_err(|_| decode_err("follow key"))?,
            seq: self.seq as u64,
            records: self.record_count as u64,
            bytes: self.byte_count as u64,
            created_ms: self.created_at,
        })
    }
}

row! {
    pub(crate) struct LogRow {
        thread_id: Vec<u8>,
        log_id: Vec<u8>,
        addrs: String,
        head_cid: Option<Vec<u8>>,
        head_counter: i64,
        byte_count: i64,
        registered_at: i64,
        addrs_at: i64,
    }
}

impl LogRow {
    pub(crate) fn into_info(self) -> Result<LogInfo> {
        let head = match self.head_cid {
            Some(bytes) => Some(Head {
                cid: cid(&bytes)?,
                counter: self.head_counter as u64,
            }),
            None => None,
        };
        Ok(LogInfo {
            thread: thread_id(&self.thread_id)?,
            log: log_id(&self.log_id)?,
            head,
            bytes: self.byte_count as u64,
            addrs: serde_json::from_str(&self.addrs).map_err(|_| decode_err("addresses"))?,
            registered_ms: self.registered_at,
            addrs_ms: self.addrs_at,
        })
    }
}

row! {
    pub(crate) struct RecordRow {
        pub(crate) seq: i64,
        pub(crate) log_id: Vec<u8>,
        pub(crate) counter: i64,
        pub(crate) cid: Vec<u8>,
        pub(crate) event_cid: Vec<u8>,
        pub(crate) header_cid: Vec<u8>,
        pub(crate) body_cid: Vec<u8>,
        pub(crate) record: Vec<u8>,
        pub(crate) event: Vec<u8>,
        pub(crate) header: Vec<u8>,
        pub(crate) body: Vec<u8>,
        pub(crate) arrived_at: i64,
    }
}

/// Turns rows of one thread into stored records. Log IDs repeat across a page and parsing one
/// decompresses a curve point, so each distinct ID is parsed once per result set.
pub(crate) fn into_stored(thread: &ThreadId, rows: Vec<RecordRow>) -> Result<Vec<StoredRecord>> {
    let mut logs: HashMap<Vec<u8>, LogId> = HashMap::new();
    rows.into_iter()
        .map(|row| {
            let thread = thread.clone();
            let log = match logs.get(&row.log_id) {
                Some(l) => l.clone(),
                None => {
                    let l = log_id(&row.log_id)?;
                    logs.insert(row.log_id, l.clone());
                    l
                }
            };
            Ok(StoredRecord {
                thread,
                log,
                seq: row.seq as u64,
                counter: row.counter as u64,
                cid: cid(&row.cid)?,
                node_cids: NodeCids {
                    event: cid(&row.event_cid)?,
                    header: cid(&row.header_cid)?,
                    body: cid(&row.body_cid)?,
                },
                arrived_ms: row.arrived_at,
                blocks: UnverifiedRecord {
                    record: row.record,
                    event: row.event,
                    header: row.header,
                    body: row.body,
                },
            })
        })
        .collect()
}

row! {
    pub(crate) struct ForkRow {
        cid: Vec<u8>,
        prev: Option<Vec<u8>>,
        record: Vec<u8>,
        event: Vec<u8>,
        header: Vec<u8>,
        body: Vec<u8>,
        arrived_at: i64,
    }
}

impl ForkRow {
    pub(crate) fn into_evidence(self) -> Result<ForkEvidence> {
        Ok(ForkEvidence {
            cid: cid(&self.cid)?,
            prev: self.prev.as_deref().map(cid).transpose()?,
            arrived_ms: self.arrived_at,
            blocks: UnverifiedRecord {
                record: self.record,
                event: self.event,
                header: self.header,
                body: self.body,
            },
        })
    }
}

pub(crate) const WEBHOOK_COLUMNS: &str =
    "id, thread_id, log_id, url, secret, created_at, failures, disabled_at, disabled_reason, cursor_seq";

row! {
    pub(crate) struct WebhookRow {
        id: String,
        thread_id: Vec<u8>,
        log_id: Option<Vec<u8>>,
        url: String,
        secret: String,
        created_at: i64,
        failures: i64,
        disabled_at: Option<i64>,
        disabled_reason: Option<String>,
        cursor_seq: i64,
    }
}

impl WebhookRow {
    pub(crate) fn into_webhook(self) -> Result<Webhook> {
        Ok(Webhook {
            id: self.id,
            thread: thread_id(&self.thread_id)?,
            log: self.log_id.as_deref().map(log_id).transpose()?,
            url: self.url,
            secret: self.secret,
            created_ms: self.created_at,
            failures: self.failures as u64,
            disabled_ms: self.disabled_at,
            disabled_reason: self.disabled_reason,
            cursor: self.cursor_seq as u64,
        })
    }
}

pub(crate) const DELIVERY_COLUMNS: &str =
    "id, webhook_id, event, thread_id, log_id, seq, counter, cid, created_at, state, attempts, \
     next_at, last_status, last_error, delivered_at, message_id, duration_ms";

row! {
    pub(crate) struct DeliveryRow {
        pub(crate) id: i64,
        webhook_id: String,
        event: String,
        thread_id: Vec<u8>,
        log_id: Option<Vec<u8>>,
        seq: i64,
        counter: i64,
        cid: Option<Vec<u8>>,
        created_at: i64,
        state: String,
        attempts: i32,
        next_at: i64,
        last_status: Option<i32>,
        last_error: Option<String>,
        delivered_at: Option<i64>,
        message_id: Option<String>,
        duration_ms: Option<i64>,
    }
}

impl DeliveryRow {
    /// The successful attempt, kept in the delivery's own row (rows older than that keep it
    /// with the failed ones, and have no duration here).
    pub(crate) fn success(&self) -> Option<crate::model::Attempt> {
        Some(crate::model::Attempt {
            at_ms: self.delivered_at?,
            status: self.last_status.map(|s| s as u16),
            error: None,
            duration_ms: self.duration_ms?,
        })
    }

    pub(crate) fn into_delivery(self) -> Result<Delivery> {
        Ok(Delivery {
            id: self.id,
            webhook: self.webhook_id,
            event: self.event,
            thread: thread_id(&self.thread_id)?,
            log: self.log_id.as_deref().map(log_id).transpose()?,
            seq: self.seq as u64,
            counter: self.counter as u64,
            cid: self.cid.as_deref().map(cid).transpose()?,
            created_ms: self.created_at,
            state: self.state,
            attempts: self.attempts as u32,
            next_ms: self.next_at,
            last_status: self.last_status.map(|s| s as u16),
            last_error: self.last_error,
            delivered_ms: self.delivered_at,
            message_id: self
                .message_id
                .unwrap_or_else(|| format!("msg_{}", self.id)),
        })
    }
}

/// The columns every record query selects.
pub(crate) const RECORD_COLUMNS: &str = "seq, log_id, counter, cid, event_cid, header_cid, \
     body_cid, record, event, header, body, arrived_at";

/// A page of one thread's records: `$1` thread, `$2` after this sequence number, `$3` limit.
/// (SQLite takes `$N` parameters too, numbered as they first appear.)
pub(crate) static RECORDS_BY_THREAD: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE thread_id = $1 AND seq > $2 \
         ORDER BY seq LIMIT $3"
    )
});

/// A page of one log's records: `$1` thread, `$2` log, `$3` after this counter, `$4` limit.
pub(crate) static RECORDS_BY_LOG: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE thread_id = $1 AND log_id = $2 \
         AND counter > $3 ORDER BY counter LIMIT $4"
    )
});
