//! Pushing records (JSON or CAR, one or many logs per batch) and pulling them (by log counter,
//! or by thread in arrival order with an opaque cursor).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use threads_store::{Outcome, Quota};

use super::wire::{
    decode_pushed_car, stored_json, write_car, CarItem, PushItem, RecordJson, StoredJson, CAR,
    DAG_CBOR,
};
use super::{parse_log, parse_thread, presented_token};
use crate::follower::reads::Page;
use crate::follower::{Origin, Verdict};
use crate::server::error::{verdict_status, ApiError, ApiResult};
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

/// A verdict as the API reports it.
fn verdict_json(verdict: &Verdict) -> Value {
    let head = |h: &Option<threads_core::Head>| {
        h.map(|h| json!({"cid": h.cid.to_string(), "counter": h.counter}))
    };
    match verdict {
        Verdict::Stored(Outcome::Accepted { seq, counter }) => {
            json!({"outcome": "accepted", "seq": seq, "counter": counter})
        }
        Verdict::Stored(Outcome::Duplicate { counter }) => {
            json!({"outcome": "duplicate", "counter": counter})
        }
        Verdict::Refused(Outcome::Gap { head: h }) => json!({"outcome": "gap", "head": head(h)}),
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

/// Decodes a batch (JSON, or a CAR by its content type) and pushes it as its writer's. 200
/// when every record is stored; otherwise the status and code of the first record that was
/// not, with one result per record either way.
async fn push(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let is_car = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with(CAR));
    let items: Vec<PushItem> = if is_car {
        decode_pushed_car(
            &body,
            Origin::Writer,
            state.config().limits.max_batch_records,
        )
        .await?
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
    let pushed = state.follower.push(items, Origin::Writer).await?;
    let results: Vec<Value> = pushed
        .results
        .iter()
        .map(|judged| {
            let mut v = verdict_json(&judged.verdict);
            v["cid"] = json!(judged.cid.to_string());
            if let Some(rule) = judged.rule {
                v["signature"] = json!(rule);
            }
            v
        })
        .collect();
    let failure = pushed
        .first_failure()
        .and_then(|v| Some((verdict_status(v)?, v.code()?)));
    let (status, body) = match failure {
        None => (StatusCode::OK, json!({"results": results})),
        Some((status, code)) => (
            status,
            json!({"code": code, "detail": "not every record was stored; see results", "results": results}),
        ),
    };
    Ok((status, Json(body)).into_response())
}

#[derive(Deserialize)]
struct PullQuery {
    after: Option<String>,
    limit: Option<u32>,
    format: Option<String>,
    token: Option<String>,
    /// Long-poll: seconds to wait for a record when there is nothing after the cursor.
    wait: Option<u64>,
}

/// The longest long-poll a client may ask for.
const MAX_WAIT_SECS: u64 = 60;

/// How long a thread pull may wait: what the client asked for, within [`MAX_WAIT_SECS`] and a
/// second short of the request timeout (so the answer is an empty page, not a 408).
fn wait(q: &PullQuery, config: &crate::config::Config) -> ApiResult<std::time::Duration> {
    let asked = q.wait.unwrap_or(0);
    if asked > MAX_WAIT_SECS {
        return Err(ApiError::bad_request(
            "bad_wait",
            format!("wait is at most {MAX_WAIT_SECS} seconds"),
        ));
    }
    let within = config.limits.request_timeout_secs.saturating_sub(1);
    Ok(std::time::Duration::from_secs(asked.min(within)))
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
async fn respond(format: Format, page: Page) -> Response {
    let Page {
        records,
        cursor,
        more,
    } = page;
    let records = &records[..];
    let mut response = match format {
        // Serialized straight from typed records: no intermediate JSON tree.
        Format::Json => Json(PageJson {
            records: stored_json(records, &mut HashMap::new()),
            cursor: &cursor,
            more,
        })
        .into_response(),
        Format::DagCbor => (
            [(header::CONTENT_TYPE, DAG_CBOR)],
            threads_client::follower::page_cbor(records, &cursor, more),
        )
            .into_response(),
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

/// Records of a thread in arrival order after an opaque cursor; with `wait`, a pull at the
/// head waits for the next record.
async fn pull_thread(
    State(state): State<AppState>,
    Path(thread): Path<String>,
    Query(q): Query<PullQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let thread = parse_thread(&thread)?;
    let format = format(&q, &headers)?;
    let token = presented_token(&headers, q.token.as_deref());
    let wait = wait(&q, state.config())?;
    let page = state
        .follower
        .pull_thread_waiting(&thread, q.after.as_deref(), q.limit, token, wait)
        .await?;
    Ok(respond(format, page).await)
}

/// Records of one log after a counter (the cursor is the counter itself).
async fn pull_log(
    State(state): State<AppState>,
    Path((thread, log)): Path<(String, String)>,
    Query(q): Query<PullQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let format = format(&q, &headers)?;
    if q.wait.is_some() {
        return Err(ApiError::bad_request(
            "bad_wait",
            "wait is for thread pulls (/v1/threads/{thread}/records)",
        ));
    }
    let token = presented_token(&headers, q.token.as_deref());
    let (thread, log) = (parse_thread(&thread)?, parse_log(&log)?);
    let page = state
        .follower
        .pull_log(&thread, &log, q.after.as_deref(), q.limit, token)
        .await?;
    Ok(respond(format, page).await)
}
