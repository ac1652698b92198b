//! Pushing records (JSON or CAR, one or many logs per batch) and pulling them (by log counter,
//! or by thread in arrival order with an opaque cursor).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use ipld_core::ipld::Ipld;
use serde::Deserialize;
use serde_json::{json, Value};
use threads_core::{cid_of, verify_batch, RecordError, SignaturePolicy, ThreadId};
use threads_store::{Ingest, LogInfo, Outcome, Quota, StoredRecord, ThreadInfo};

use super::wire::{
    read_car, stored_json, write_car, CarItem, PushItem, RecordJson, StoredJson, CAR, DAG_CBOR,
};
use super::{
    decode_cursor, encode_cursor, parse_thread, presented_token, readable_log, readable_thread,
};
use crate::server::error::{ApiError, ApiResult};
use crate::server::p2p::Quiet;
use crate::server::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/records", post(push))
        .route("/v1/threads/{thread}/records", get(pull_thread))
        .route("/v1/threads/{thread}/logs/{log}/records", get(pull_log))
}

#[derive(Deserialize)]
struct PushBatch {
    records: Vec<RecordJson>,
}

/// What became of one pushed record, as the API reports it.
enum Verdict {
    Stored(Outcome),
    Refused(Outcome),
    Invalid(RecordError),
}

impl Verdict {
    fn status_and_code(&self) -> Option<(StatusCode, &'static str)> {
        match self {
            Verdict::Stored(_) => None,
            Verdict::Refused(Outcome::Gap { .. }) => Some((StatusCode::CONFLICT, "gap")),
            Verdict::Refused(Outcome::Fork { .. }) => Some((StatusCode::CONFLICT, "fork")),
            Verdict::Refused(Outcome::UnknownLog) => Some((StatusCode::NOT_FOUND, "unknown_log")),
            Verdict::Refused(Outcome::QuotaExceeded(_)) => {
                Some((StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded"))
            }
            Verdict::Refused(_) => Some((StatusCode::CONFLICT, "refused")),
            Verdict::Invalid(e) => Some((StatusCode::UNPROCESSABLE_ENTITY, e.code())),
        }
    }

    fn json(&self) -> Value {
        let head = |h: &Option<threads_core::Head>| {
            h.map(|h| json!({"cid": h.cid.to_string(), "counter": h.counter}))
        };
        match self {
            Verdict::Stored(Outcome::Accepted { seq, counter }) => {
                json!({"outcome": "accepted", "seq": seq, "counter": counter})
            }
            Verdict::Stored(Outcome::Duplicate { counter }) => {
                json!({"outcome": "duplicate", "counter": counter})
            }
            Verdict::Refused(Outcome::Gap { head: h }) => {
                json!({"outcome": "gap", "head": head(h)})
            }
            Verdict::Refused(Outcome::Fork { head: h }) => {
                json!({"outcome": "fork", "head": head(&Some(*h))})
            }
            Verdict::Refused(Outcome::UnknownLog) => json!({"outcome": "unknown_log"}),
            Verdict::Refused(Outcome::QuotaExceeded(q)) => json!({
                "outcome": "quota_exceeded",
                "quota": match q { Quota::RecordsPerLog => "records_per_log", Quota::BytesPerThread => "bytes_per_thread" },
            }),
            Verdict::Stored(other) | Verdict::Refused(other) => {
                json!({"outcome": format!("{other:?}")})
            }
            Verdict::Invalid(e) => {
                json!({"outcome": "rejected", "code": e.code(), "detail": e.to_string()})
            }
        }
    }
}

/// Verifies every record (one Ed25519 batch), stores the valid ones in one transaction, and
/// answers with one result per record, in order. 200 when every record is stored; otherwise the
/// status and code of the first record that was not.
async fn push(
    State(state): State<AppState>,
    quiet: Option<Extension<Quiet>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let started = Instant::now();
    let is_car = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with(CAR));
    let items: Vec<PushItem> = if is_car {
        read_car(&body).await?
    } else {
        let batch: PushBatch = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_request",
                format!("expected {{\"records\": [...]}}: {e}"),
            )
        })?;
        batch
            .records
            .into_iter()
            .map(RecordJson::into_push)
            .collect::<ApiResult<_>>()?
    };
    if items.is_empty() {
        return Err(ApiError::bad_request("empty_batch", "no records to push"));
    }
    let max = state.config.limits.max_batch_records;
    if items.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("{} records in one batch; the limit is {max}", items.len()),
        ));
    }

    let mut threads: HashMap<ThreadId, Option<ThreadInfo>> = HashMap::new();
    for item in &items {
        if !threads.contains_key(&item.thread) {
            let info = state.store.thread(&item.thread).await?;
            threads.insert(item.thread.clone(), info);
        }
    }
    let cids: Vec<_> = items.iter().map(|i| cid_of(&i.blocks.record)).collect();
    let mut verdicts: Vec<Option<Verdict>> = (0..items.len()).map(|_| None).collect();
    let (mut meta, mut blocks) = (Vec::new(), Vec::new());
    for (i, item) in items.into_iter().enumerate() {
        match threads.get(&item.thread).and_then(Option::as_ref) {
            Some(info) => {
                meta.push((i, item.thread, item.log, info.follow_key.clone()));
                blocks.push(item.blocks);
            }
            None => verdicts[i] = Some(Verdict::Refused(Outcome::UnknownLog)),
        }
    }

    let policy = if state.config.allow_legacy_signatures {
        SignaturePolicy::AllowLegacy
    } else {
        SignaturePolicy::CurrentOnly
    };
    // Signature checks are CPU work: keep them off the async workers.
    let (meta, checked) = tokio::task::spawn_blocking(move || {
        let items = blocks
            .into_iter()
            .zip(&meta)
            .map(|(b, (_, _, log, key))| (b, key, log));
        let checked = verify_batch(items, policy);
        (meta, checked)
    })
    .await
    .map_err(ApiError::internal)?;

    let mut batch = Vec::new();
    let mut positions = Vec::new();
    for ((i, thread, log, _), result) in meta.into_iter().zip(checked) {
        match result {
            Ok(record) => {
                positions.push(i);
                batch.push(Ingest {
                    thread,
                    log,
                    record,
                });
            }
            // A record of a log this server does not follow says so, whatever else is wrong.
            Err(e) => {
                verdicts[i] = Some(match state.store.log(&thread, &log).await? {
                    None => Verdict::Refused(Outcome::UnknownLog),
                    Some(_) => Verdict::Invalid(e),
                })
            }
        }
    }
    let sizes: Vec<usize> = batch
        .iter()
        .map(|b| record_size(b.record.blocks()))
        .collect();
    // What to gossip once stored: records pushed by their writers to public threads (gossip
    // passes on what it carries itself, and records pulled from another follower are not news).
    let gossip: Vec<_> = match &state.p2p {
        Some(_) if quiet.is_none() => batch
            .iter()
            .map(|b| {
                let public = threads[&b.thread].as_ref().is_some_and(|t| t.public);
                public.then(|| (b.thread.clone(), b.log.clone(), b.record.blocks().clone()))
            })
            .collect(),
        _ => Vec::new(),
    };
    let outcomes = if batch.is_empty() {
        Vec::new()
    } else {
        state
            .store
            .ingest(batch, &state.quotas, crate::server::now_ms())
            .await?
    };
    let mut accepted_bytes = 0;
    let mut news = Vec::new();
    let mut gossip = gossip.into_iter();
    for ((i, outcome), size) in positions.into_iter().zip(outcomes).zip(sizes) {
        let item = gossip.next();
        if matches!(outcome, Outcome::Accepted { .. }) {
            accepted_bytes += size;
            news.extend(item.flatten());
        }
        verdicts[i] = Some(if outcome.is_stored() {
            Verdict::Stored(outcome)
        } else {
            Verdict::Refused(outcome)
        });
    }

    let verdicts: Vec<Verdict> = verdicts
        .into_iter()
        .map(|v| v.expect("every record judged"))
        .collect();
    let mut accepted = 0u64;
    for verdict in &verdicts {
        match verdict {
            Verdict::Stored(Outcome::Accepted { .. }) => accepted += 1,
            Verdict::Stored(_) => metrics::counter!("threads_records_duplicate_total").increment(1),
            other => {
                let (_, code) = other.status_and_code().expect("not stored");
                metrics::counter!("threads_records_rejected_total", "reason" => code).increment(1);
            }
        }
    }
    crate::server::p2p::publish(&state, news);
    metrics::counter!("threads_records_ingested_total").increment(accepted);
    metrics::counter!("threads_ingested_bytes_total").increment(accepted_bytes as u64);
    metrics::histogram!("threads_push_seconds").record(started.elapsed().as_secs_f64());

    let results: Vec<Value> = verdicts
        .iter()
        .zip(&cids)
        .map(|(verdict, cid)| {
            let mut v = verdict.json();
            v["cid"] = json!(cid.to_string());
            v
        })
        .collect();
    let failure = verdicts.iter().find_map(Verdict::status_and_code);
    let (status, body) = match failure {
        None => (StatusCode::OK, json!({"results": results})),
        Some((status, code)) => (
            status,
            json!({"code": code, "detail": "not every record was stored; see results", "results": results}),
        ),
    };
    Ok((status, Json(body)).into_response())
}

fn record_size(b: &threads_core::UnverifiedRecord) -> usize {
    b.record.len() + b.event.len() + b.header.len() + b.body.len()
}

#[derive(Deserialize)]
struct PullQuery {
    after: Option<String>,
    limit: Option<u32>,
    format: Option<String>,
    token: Option<String>,
}

#[derive(serde::Serialize)]
struct PageJson<'a> {
    records: Vec<StoredJson<'a>>,
    cursor: &'a str,
    more: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    DagCbor,
    Car,
}

fn format(q: &PullQuery, headers: &HeaderMap) -> ApiResult<Format> {
    match q.format.as_deref() {
        Some("json") => return Ok(Format::Json),
        Some("dag-cbor") => return Ok(Format::DagCbor),
        Some("car") => return Ok(Format::Car),
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_format",
                format!("format {other:?}: use json, dag-cbor or car"),
            ))
        }
        None => {}
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Ok(if accept.contains(CAR) {
        Format::Car
    } else if accept.contains(DAG_CBOR) {
        Format::DagCbor
    } else {
        Format::Json
    })
}

/// One page of records in the chosen format. Every page also carries its cursor and `more` in
/// the `x-threads-cursor`, `x-threads-more` and `x-threads-count` headers.
async fn page(format: Format, records: &[StoredRecord], cursor: String, more: bool) -> Response {
    let mut response = match format {
        // Serialized straight from typed records: no intermediate JSON tree.
        Format::Json => Json(PageJson {
            records: stored_json(records, &mut HashMap::new()),
            cursor: &cursor,
            more,
        })
        .into_response(),
        Format::DagCbor => {
            let list = records
                .iter()
                .map(|r| {
                    Ipld::Map(BTreeMap::from([
                        (
                            "thread".to_owned(),
                            Ipld::Bytes(r.thread.as_bytes().to_vec()),
                        ),
                        ("log".to_owned(), Ipld::Bytes(r.log.to_bytes())),
                        ("seq".to_owned(), Ipld::Integer(r.seq.into())),
                        ("counter".to_owned(), Ipld::Integer(r.counter.into())),
                        ("cid".to_owned(), Ipld::Link(r.cid)),
                        ("arrived_ms".to_owned(), Ipld::Integer(r.arrived_ms.into())),
                        ("record".to_owned(), Ipld::Bytes(r.blocks.record.clone())),
                        ("event".to_owned(), Ipld::Bytes(r.blocks.event.clone())),
                        ("header".to_owned(), Ipld::Bytes(r.blocks.header.clone())),
                        ("body".to_owned(), Ipld::Bytes(r.blocks.body.clone())),
                    ]))
                })
                .collect();
            let doc = Ipld::Map(BTreeMap::from([
                ("records".to_owned(), Ipld::List(list)),
                ("cursor".to_owned(), Ipld::String(cursor.clone())),
                ("more".to_owned(), Ipld::Bool(more)),
            ]));
            let bytes = serde_ipld_dagcbor::to_vec(&doc).expect("IPLD encodes");
            ([(header::CONTENT_TYPE, DAG_CBOR)], bytes).into_response()
        }
        // A CAR must name at least one root, so an empty page is "204 No Content".
        Format::Car if records.is_empty() => StatusCode::NO_CONTENT.into_response(),
        Format::Car => {
            let bytes = write_car(records.iter().map(CarItem::stored)).await;
            ([(header::CONTENT_TYPE, CAR)], bytes).into_response()
        }
    };
    let h = response.headers_mut();
    h.insert(
        "x-threads-cursor",
        HeaderValue::from_str(&cursor).expect("cursors are ASCII"),
    );
    h.insert(
        "x-threads-more",
        HeaderValue::from_static(if more { "true" } else { "false" }),
    );
    h.insert("x-threads-count", HeaderValue::from(records.len()));
    response
}

/// Records of a thread in arrival order after an opaque cursor. Following `cursor` until
/// `more` is false never misses a record, whatever the concurrency of writers and servers.
async fn pull_thread(
    State(state): State<AppState>,
    Path(thread): Path<String>,
    Query(q): Query<PullQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let thread = parse_thread(&thread)?;
    let format = format(&q, &headers)?;
    let info = readable_thread(
        &state,
        &thread,
        presented_token(&headers, q.token.as_deref()),
    )
    .await?;
    let after = decode_cursor(&info, q.after.as_deref())?;
    let max = state.config.limits.max_page_records;
    let limit = q.limit.unwrap_or(max).clamp(1, max);
    let records = state.store.records_by_thread(&thread, after, limit).await?;
    let last = records.last().map_or(after, |r| r.seq);
    let more = records.len() == limit as usize;
    Ok(page(format, &records, encode_cursor(&info, last), more).await)
}

/// Records of one log after a counter (the cursor is the counter itself).
async fn pull_log(
    State(state): State<AppState>,
    Path((thread, log)): Path<(String, String)>,
    Query(q): Query<PullQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let format = format(&q, &headers)?;
    let token = presented_token(&headers, q.token.as_deref());
    let LogInfo { thread, log, .. } = readable_log(&state, &thread, &log, token).await?;
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        None => 0,
        Some(a) => a
            .parse()
            .map_err(|_| ApiError::bad_request("bad_cursor", "a log cursor is a record counter"))?,
    };
    let max = state.config.limits.max_page_records;
    let limit = q.limit.unwrap_or(max).clamp(1, max);
    let records = state
        .store
        .records_by_log(&thread, &log, after, limit)
        .await?;
    let last = records.last().map_or(after, |r| r.counter);
    let more = records.len() == limit as usize;
    Ok(page(format, &records, last.to_string(), more).await)
}
