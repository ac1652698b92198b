//! The follower's transports around its core ([`crate::follower`]): the HTTP API and
//! WebSocket push, and libp2p. Each decodes what arrives, calls the core, and encodes the
//! answer.
//!
//! | module | what |
//! |---|---|
//! | [`v1`] | the HTTP API, one module per area, under the `/v1` prefix |
//! | [`p2p`] | the same API over libp2p streams, gossip on each thread's topic, replication |
//! | [`ops`] | `/healthz`, `/readyz`, `/metrics` |
//! | `listener` | accepting HTTP connections: header-read timeout, connections per address, graceful shutdown |
//! | [`error`] | `ApiError`: status plus stable JSON error code, and the one mapping from the core's refusals |

pub mod error;
pub(crate) mod listener;
pub mod ops;
pub mod p2p;
pub mod telemetry;
pub mod v1;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::config::{Config, Role};
use crate::follower::{Announce, Follower};
use error::ApiError;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    /// The core every transport calls.
    pub follower: Follower,
    pub metrics: PrometheusHandle,
    /// One permit per open WebSocket connection.
    pub ws_slots: Arc<Semaphore>,
    pub limiter: Option<DefaultKeyedRateLimiter<std::net::IpAddr>>,
    /// Rendered feeds, until their records change.
    pub feeds: crate::feeds::FeedCache,
    /// The libp2p side, unless `p2p.listen` is empty.
    pub p2p: Option<Arc<p2p::Node>>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Starts the libp2p host (unless `p2p.listen` is empty), opens the follower's core and
    /// prepares the transports' shared state.
    pub async fn new(config: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let p2p = if config.p2p.listen.is_empty() || !config.runs(Role::P2p) {
            None
        } else {
            Some(Arc::new(p2p::Node::start(&config).await?))
        };
        let announce = p2p.clone().map(|node| node as Arc<dyn Announce>);
        let limiter = std::num::NonZeroU32::new(config.rate_limit.per_second).map(|rate| {
            let burst = std::num::NonZeroU32::new(config.rate_limit.burst).expect("validated");
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let ws_slots = Arc::new(Semaphore::new(config.websocket.max_connections));
        let follower = Follower::open(config, announce, shutdown).await?;
        Ok(Self(Arc::new(Inner {
            p2p,
            ws_slots,
            follower,
            metrics: telemetry::handle(),
            limiter,
            feeds: Default::default(),
        })))
    }

    pub fn config(&self) -> &Config {
        self.follower.config()
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let config = state.config();
    let cors = {
        let origins = &config.cors.allowed_origins;
        let layer = CorsLayer::new()
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers(Any)
            .expose_headers(Any);
        if origins.iter().any(|o| o == "*") {
            layer.allow_origin(Any)
        } else {
            let list = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok());
            layer.allow_origin(AllowOrigin::list(list))
        }
    };
    let trace = TraceLayer::new_for_http().make_span_with(|req: &Request| {
        // The matched route, not the raw path: paths carry IDs, routes do not.
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str)
            .unwrap_or("unmatched");
        tracing::info_span!("request", method = %req.method(), route)
    });
    // A process without the api role answers the operations endpoints only.
    let api = match config.runs(Role::Api) {
        true => Router::new()
            .merge(v1::router())
            .layer(middleware::from_fn_with_state(state.clone(), rate_limit))
            .merge(web::router()),
        false => Router::new(),
    }
    .merge(ops::router());
    let roles = config.roles.clone();
    let fallback = move || async move {
        match roles.contains(&Role::Api) {
            true => ApiError::not_found("route"),
            false => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_served_here",
                format!(
                    "this process runs {roles:?}, not the API: ask a process with the api role"
                ),
            ),
        }
    };
    // The trace is the routes' layer: its span names the route matched.
    let limits = config.limits.clone();
    let routed = api.fallback(fallback).layer(trace).with_state(state);
    bounded(routed, &limits).layer(cors)
}

/// The limits every request meets, whatever its transport: a timeout, a body limit, and JSON
/// error bodies for what the framework refuses. `router` is complete (its fallback set).
///
/// They wrap the router once, not each of its routes as `Router::layer` does: a layer given
/// to a router boxes every route again, and each request then clones and polls one box per
/// layer. (With one-record pushes, the layers took about a tenth of the server's CPU; wrapped
/// once, about half as much.)
pub(crate) fn bounded(router: Router, limits: &crate::config::Limits) -> Router {
    let bounded = ServiceBuilder::new()
        .layer(middleware::map_response(json_errors))
        // The body limit answers in its own body type; the error bodies above take axum's.
        .map_response(IntoResponse::into_response)
        // The limit below is the one limit: axum's own (2 MiB) would refuse bodies under it.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(limits.request_timeout_secs),
        ))
        .service(router);
    Router::new().fallback_service(bounded)
}

/// The API as libp2p peers reach it: what writers and readers use (server info, registrations,
/// push, threads and logs, pulls, blocks), behind the same limits and error bodies as HTTP.
/// Per-peer rates are the host's.
pub fn p2p_app(state: AppState) -> Router {
    let routed = v1::p2p_router()
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state.clone());
    bounded(routed, &state.config().limits)
}

/// Errors produced by the framework's layers (a query that does not parse, a wrong method, a body
/// over the limit, a timeout, a plain GET on the WebSocket route) get the same JSON body as the
/// API's own errors: every error a client sees has a stable `code`.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        // A JSON body of the wrong shape.
        StatusCode::UNPROCESSABLE_ENTITY => "bad_request",
        StatusCode::UPGRADE_REQUIRED => "upgrade_required",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let detail = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_lowercase(),
        text if status.is_server_error() => {
            tracing::error!(%status, detail = text, "internal error from a layer");
            "internal error".to_owned()
        }
        text => text.to_owned(),
    };
    let mut error = ApiError::new(status, code, detail).into_response();
    // Keep headers such as Allow (405) and Retry-After.
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            error.headers_mut().insert(name.clone(), value.clone());
        }
    }
    error
}

/// Per-client token bucket; answers 429 with `Retry-After` when a client is too fast.
async fn rate_limit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(limiter) = &state.limiter {
        if let Err(not_until) = limiter.check_key(&peer.ip()) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests from this address",
            );
            error.retry_after = Some(wait.as_secs().max(1));
            return error.into_response();
        }
    }
    next.run(request).await
}

/// Serves until `shutdown` is cancelled, then lets in-flight requests finish (bounded by the
/// configured grace period). The listener is passed in so tests can bind port 0.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(config.limits.shutdown_grace_secs);
    let state = AppState::new(config, shutdown.clone()).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, server_id = %state.follower.server_id(), "threads follower serving");
    // One machine-readable line on stdout, so scripts and tests can start on port 0.
    println!("listening on http://{addr}");
    if let Some(node) = &state.p2p {
        for p2p in node.host.listen_addrs().await? {
            tracing::info!(%p2p, "libp2p address");
            println!("p2p {p2p}");
        }
    }
    p2p::spawn(state.clone()).await?;
    let _deliveries = state.config().runs(Role::Webhooks).then(|| {
        state
            .follower
            .hooks()
            .spawn(state.follower.shutdown().clone())
    });
    let deadline = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tokio::time::Instant::now() + grace
        }
    });
    let limits = state.config().limits.clone();
    listener::serve(
        listener,
        app(state.clone()),
        &limits,
        shutdown.clone(),
        grace,
    )
    .await?;
    // Upgraded connections are no longer the HTTP server's: wait (within the grace period)
    // for every WebSocket to have sent its 1001 close frame before the process ends.
    let deadline = deadline
        .await
        .unwrap_or_else(|_| tokio::time::Instant::now());
    let all = state.config().websocket.max_connections as u32;
    if tokio::time::timeout_at(deadline, state.ws_slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("WebSocket connections still open at the end of the grace period");
    }
    Ok(())
}
