//! Prometheus metrics: the exporter, and what the app counts beside the router.
//!
//! The app's names: `http_requests_total` and `http_request_duration_seconds` {route,
//! status}; `probe_reads_total` {mode, result}; `redis_errors_total`;
//! `request_log_batch_rows` (requests per shared insert). The router's own (reads by node
//! and reason, replica lag, pools) are listed in `rwsplit-router`'s documentation.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use rwsplit_router::Consistency;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 25.0];

/// Installs the process-wide recorder; call once, at start-up.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("http_request_duration_seconds".into()),
            LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("request_log_batch_rows".into()),
            BATCH_BUCKETS,
        )?
        .install_recorder()?;
    let upkeep = handle.clone();
    // Histograms drain their buffers on upkeep; without it memory would grow between scrapes.
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        loop {
            ticker.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Middleware: counts and times every request by route pattern (not raw path, which would
/// give every query string its own series) and status.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(req).await;
    let labels = [
        (
            "route",
            route
                .as_ref()
                .map_or("unmatched", MatchedPath::as_str)
                .to_owned(),
        ),
        ("status", response.status().as_str().to_owned()),
    ];
    counter!("http_requests_total", &labels).increment(1);
    histogram!("http_request_duration_seconds", &labels).record(started.elapsed());
    response
}

pub fn probe_read(mode: Consistency, stale: bool) {
    let result = if stale { "stale" } else { "fresh" };
    counter!("probe_reads_total", "mode" => mode.as_str(), "result" => result).increment(1);
}

pub fn batch(rows: usize) {
    histogram!("request_log_batch_rows").record(rows as f64);
}

pub fn redis_error() {
    counter!("redis_errors_total").increment(1);
}
