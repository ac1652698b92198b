//! What an operator's alerts watch that only storage knows (`deploy/prometheus/alerts.yaml`):
//! whether the database answers, and the webhook queue. Sampled when Prometheus scrapes, so
//! the figures are fresh and nobody's absence costs queries. Every process reports the whole
//! database's queue, so two processes on one Postgres report the same backlog (alerts take
//! the max).

use std::time::Duration;

use super::Follower;

/// A scrape waits at most this long for the database, then reports it down.
const WITHIN: Duration = Duration::from_secs(3);

impl Follower {
    /// Sets `threads_database_up`, `threads_webhook_backlog_records` and
    /// `threads_webhooks_disabled`.
    pub async fn sample_gauges(&self) {
        let store = &self.0.store;
        let sampled = tokio::time::timeout(WITHIN, async {
            store.ping().await?;
            store.webhook_gauges().await
        })
        .await;
        let gauges = match sampled {
            Ok(Ok(gauges)) => gauges,
            Ok(Err(error)) => {
                tracing::warn!(%error, "the database did not answer a metrics scrape");
                return metrics::gauge!("threads_database_up").set(0.0);
            }
            Err(_) => {
                tracing::warn!("the database did not answer a metrics scrape within {WITHIN:?}");
                return metrics::gauge!("threads_database_up").set(0.0);
            }
        };
        metrics::gauge!("threads_database_up").set(1.0);
        metrics::gauge!("threads_webhook_backlog_records").set(gauges.backlog_records as f64);
        metrics::gauge!("threads_webhooks_disabled").set(gauges.disabled as f64);
    }
}
