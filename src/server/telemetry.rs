//! The process's Prometheus metrics: every name the follower records, with its help text, in
//! one catalog (`deploy/prometheus/alerts.yaml` and `deploy/grafana/threads.json` use only
//! these, as `scripts/check-deploy` checks).

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds of every `*_seconds` histogram: from a fast loopback push to a stalled one.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process-wide recorder (a recorder can be installed once per process). Latencies are
/// histograms, so alerts and dashboards can take quantiles across processes (summaries
/// cannot be added up).
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are not empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            describe();
            // At zero from the start: a rate needs an earlier sample.
            for name in [
                "threads_pushes_busy_total",
                "threads_records_ingested_total",
                "threads_ingested_bytes_total",
            ] {
                metrics::counter!(name).increment(0);
            }
            metrics::counter!("threads_server_errors_total", "code" => "internal").increment(0);
            handle
        })
        .clone()
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric: its kind, name, unit and help text.
#[rustfmt::skip]
const CATALOG: &[(Kind, &str, Unit, &str)] = {
    use Kind::{Counter, Gauge, Histogram};
    use Unit::{Bytes, Count, Seconds};
    &[
        (Counter, "threads_records_ingested_total", Count, "Records stored (new, not duplicates)."),
        (Counter, "threads_records_duplicate_total", Count, "Pushed records already stored."),
        (Counter, "threads_records_rejected_total", Count, "Pushed records refused, by reason (the push answer's code)."),
        (Counter, "threads_ingested_bytes_total", Bytes, "Bytes of the records stored."),
        (Counter, "threads_pushes_busy_total", Count, "Pushes answered 503 busy: the commit queue was full."),
        (Counter, "threads_cars_decoded_total", Count, "CARs decoded, by origin (writer, gossip, replica)."),
        (Counter, "threads_gossip_received_total", Count, "Gossip messages received, by verdict."),
        (Counter, "threads_gossip_skipped_total", Count, "Gossip messages not taken in (thread not held here)."),
        (Counter, "threads_connections_refused_total", Count, "Connections closed at once: a client address held too many."),
        (Counter, "threads_server_errors_total", Count, "Answers with a 5xx status, by error code."),
        (Counter, "threads_webhook_deliveries_total", Count, "Webhook delivery attempts, by outcome."),
        (Counter, "threads_replication_failures_total", Count, "Failed comparisons with a replicated thread's source, by thread."),
        (Gauge, "threads_ws_connections", Count, "Open WebSocket connections."),
        (Gauge, "threads_sse_connections", Count, "Open Server-Sent Events streams."),
        (Gauge, "threads_database_up", Count, "1 when the database answered at this scrape (within 3 s), else 0."),
        (Gauge, "threads_webhook_backlog_records", Count, "Records waiting for enabled webhooks, and deliveries waiting for a retry (the whole database)."),
        (Gauge, "threads_webhooks_disabled", Count, "Webhooks disabled after failing (the whole database)."),
        (Gauge, "threads_replication_held", Count, "1 on the process that replicates a thread (holding its lease), 0 on the others that would, by thread."),
        (Counter, "threads_standby_errors_total", Count, "Reads the hot standby failed, answered by the primary instead."),
        (Gauge, "threads_replication_last_success_timestamp_seconds", Seconds, "When a replicated thread last compared equal with, or caught up to, its source (the process's start before that), by thread."),
        (Histogram, "threads_push_seconds", Seconds, "Time to answer a push, from its request to its records durable."),
        (Histogram, "threads_push_lag_seconds", Seconds, "Time from a record's arrival to its sending to a live subscriber."),
        (Histogram, "threads_commit_group_pushes", Count, "Pushes committed together in one transaction."),
        (Histogram, "threads_signature_batch_pushes", Count, "Small pushes whose signatures were checked together in one batch."),
    ]
};

fn describe() {
    for &(kind, name, unit, help) in CATALOG {
        match kind {
            Kind::Counter => describe_counter!(name, unit, help),
            Kind::Gauge => describe_gauge!(name, unit, help),
            Kind::Histogram => describe_histogram!(name, unit, help),
        }
    }
}
