//! Raw blocks by CID, in the style of the IPFS trustless gateway: immutable, cacheable forever.
//! `/v1/blocks/{cid}` finds a record in any thread; `/v1/threads/{id}/blocks/{cid}` any of a
//! record's four nodes in one thread.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use threads_core::Cid;

use super::presented_token;
use super::wire::{CAR, RAW};
use crate::follower::reads::Block;
use crate::server::error::{ApiError, ApiResult};
use crate::server::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/blocks/{cid}", get(block))
        .route("/v1/threads/{thread}/blocks/{cid}", get(thread_block))
}

async fn thread_block(
    State(state): State<AppState>,
    Path((thread, cid)): Path<(String, String)>,
    Query(q): Query<BlockQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let thread = super::parse_thread(&thread)?;
    let cid = parse(&cid)?;
    let token = presented_token(&headers, q.token.as_deref());
    let found = state.follower.thread_block(&thread, &cid, token).await?;
    answer(cid, found, &q, &headers).await
}

fn parse(cid: &str) -> ApiResult<Cid> {
    threads_core::parse_cid(cid).map_err(|_| ApiError::bad_request("bad_cid", "not a CID"))
}

#[derive(Deserialize)]
struct BlockQuery {
    format: Option<String>,
    token: Option<String>,
}

async fn block(
    State(state): State<AppState>,
    Path(cid): Path<String>,
    Query(q): Query<BlockQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let cid = parse(&cid)?;
    let token = presented_token(&headers, q.token.as_deref());
    let found = state.follower.block(&cid, token).await?;
    answer(cid, found, &q, &headers).await
}

/// A block as raw bytes or a one-block CAR, as the request asks.
async fn answer(
    cid: Cid,
    Block { bytes, public }: Block,
    q: &BlockQuery,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let cache = if public {
        "public, max-age=31536000, immutable"
    } else {
        "private, max-age=31536000, immutable"
    };
    let wants_car = q.format.as_deref() == Some("car")
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains(CAR));
    // The two forms are different bytes: each has its own tag, and caches key on Accept.
    let etag = if wants_car {
        format!("\"{cid}.car\"")
    } else {
        format!("\"{cid}\"")
    };
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else if wants_car {
        let mut out = Vec::new();
        let mut writer = iroh_car::CarWriter::new(iroh_car::CarHeader::new_v1(vec![cid]), &mut out);
        writer
            .write(cid, &bytes)
            .await
            .map_err(ApiError::internal)?;
        writer.finish().await.map_err(ApiError::internal)?;
        ([(header::CONTENT_TYPE, CAR)], out).into_response()
    } else {
        ([(header::CONTENT_TYPE, RAW)], bytes).into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("CIDs are ASCII"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("accept"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}
