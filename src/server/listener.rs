//! Accepting HTTP connections with the bounds axum's own `serve` does not set: how long a
//! client may take to send a request's headers, and how many connections one client address
//! may hold. Connections are served by hyper (HTTP/1 with upgrades for WebSocket, and HTTP/2)
//! and shut down gracefully.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::Layer;

use crate::config::Limits;

/// What a client over its connection limit is told before the connection is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nconnection: close\r\n\
content-type: application/json\r\ncontent-length: 87\r\n\r\n\
{\"code\":\"too_many_connections\",\"detail\":\"this address holds too many open connections\"}";

/// Open connections per client address.
#[derive(Default)]
struct Counts(Mutex<HashMap<IpAddr, usize>>);

/// One counted connection; uncounted when dropped.
struct Counted {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Counts {
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Counted> {
        let mut counts = self.0.lock().unwrap();
        let open = counts.entry(ip).or_default();
        if max > 0 && *open >= max {
            return None;
        }
        *open += 1;
        Some(Counted {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap();
        if let Some(open) = counts.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish within `grace`.
/// Each request sees its client's address as [`ConnectInfo`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let mut http = Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs));
    // WebSocket over HTTP/2 needs the CONNECT protocol.
    http.http2().enable_connect_protocol();
    let http = Arc::new(http);
    let graceful = GracefulShutdown::new();
    let counts = Arc::new(Counts::default());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors, or a connection reset before it was taken: go on.
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(counted) = counts.enter(peer.ip(), limits.max_connections_per_address) else {
            metrics::counter!("threads_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        // Each WebSocket message is its own small write: with Nagle's algorithm one sent
        // right after another waits for the peer's delayed ACK (up to 40 ms on Linux).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "setting TCP_NODELAY failed");
        }
        // Wrapping the router in the extension, not layering it: a layer would box each of
        // its routes again, on every connection.
        let service = TowerToHyperService::new(Extension(ConnectInfo(peer)).layer(app.clone()));
        let connection = http
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(counted);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
    Ok(())
}

/// Tells a client over its connection limit so, briefly, and closes.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(TOO_MANY)).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_says_its_length() {
        let text = std::str::from_utf8(super::TOO_MANY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
