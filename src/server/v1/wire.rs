//! How records travel over HTTP: JSON (base64 node bytes) for people, and CAR for machines
//! (the format is [`threads_client::car`]'s, shared with peers' exports).

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use threads_client::car::CarError;
pub use threads_client::car::{write_car, CarItem, CarRecord as PushItem, CAR};
use threads_core::{LogId, ThreadId, UnverifiedRecord};
use threads_store::StoredRecord;

use crate::follower::{Error, Origin};
use crate::server::error::ApiError;

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

/// Reads records from a CAR; a malformed one is a `bad_car` refusal.
pub async fn read_car(bytes: &[u8]) -> Result<Vec<PushItem>, ApiError> {
    read_car_at_most(bytes, usize::MAX).await
}

async fn read_car_at_most(bytes: &[u8], max: usize) -> Result<Vec<PushItem>, ApiError> {
    threads_client::car::read_car_at_most(bytes, max)
        .await
        .map_err(|e| match e {
            CarError::Malformed(detail) => ApiError::bad_request("bad_car", detail),
            CarError::TooManyRecords { records, max } => {
                Error::BatchTooLarge { records, max }.into()
            }
        })
}

/// A CAR on its way to the core's push: refused before its blocks are read when it names more
/// than `max_records` records, and counted by origin in `threads_cars_decoded_total` (each CAR
/// that arrives is decoded once, whatever its path).
pub async fn decode_pushed_car(
    bytes: &[u8],
    origin: Origin,
    max_records: usize,
) -> Result<Vec<PushItem>, ApiError> {
    let origin = match origin {
        Origin::Writer => "writer",
        Origin::Gossip => "gossip",
        Origin::Replica => "replica",
    };
    metrics::counter!("threads_cars_decoded_total", "origin" => origin).increment(1);
    read_car_at_most(bytes, max_records).await
}

/// A live record as WebSocket and SSE subscribers get it: the JSON record plus
/// `"type": "record"` and the thread `cursor` after it. Made once per record for all of them.
pub fn live_message<'a>(
    info: &threads_store::ThreadInfo,
    record: &'a crate::follower::live::LiveRecord,
) -> &'a str {
    record.wire(|r| {
        let mut message = serde_json::to_value(RecordJson::from_stored(r)).expect("JSON");
        message["type"] = "record".into();
        message["cursor"] = crate::follower::encode_cursor(info, r.seq).into();
        message.to_string()
    })
}
