//! Prometheus metrics: what rwsplit counts, and the text `/metrics` serves.
//!
//! Names: `http_requests_total` and `http_request_duration_seconds` {route, status};
//! `db_reads_total` {node, mode, reason}; `probe_reads_total` {mode, result};
//! `replica_lag_bytes`, `replica_lag_seconds`, `replica_usable` {replica};
//! `db_pool_connections` {pool, state}; `db_pool_waiting` {pool}; `redis_errors_total`;
//! `request_log_batch_rows` (requests per shared insert).

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::db::{Consistency, Db, Reason, ReplicaState};

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
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("status", status)];
    counter!("http_requests_total", &labels).increment(1);
    histogram!("http_request_duration_seconds", &labels).record(started.elapsed().as_secs_f64());
    response
}

pub fn read(node: &str, mode: Consistency, reason: Reason) {
    counter!("db_reads_total", "node" => node.to_owned(), "mode" => mode.as_str(), "reason" => reason.kind())
        .increment(1);
}

/// A query causal mode added to a read: `wait` polls a replica's replay position before the
/// read, `observe` takes the answering node's position after it (for the session's token).
pub fn causal_query(node: &str, kind: &'static str) {
    counter!("causal_queries_total", "node" => node.to_owned(), "kind" => kind).increment(1);
}

pub fn probe_read(mode: Consistency, stale: bool) {
    let result = if stale { "stale" } else { "fresh" };
    counter!("probe_reads_total", "mode" => mode.as_str(), "result" => result).increment(1);
}

pub fn replica(name: &str, state: &ReplicaState) {
    let name = name.to_owned();
    gauge!("replica_usable", "replica" => name.clone()).set(f64::from(u8::from(state.usable)));
    if let Some(bytes) = state.bytes_behind {
        gauge!("replica_lag_bytes", "replica" => name.clone()).set(bytes as f64);
    }
    if let Some(ms) = state.lag_ms {
        gauge!("replica_lag_seconds", "replica" => name).set(ms as f64 / 1000.0);
    }
}

/// Counts one caller waiting for a pooled connection while it lives. A guard, so a request
/// cancelled mid-wait (by the request timeout) still counts itself out.
#[derive(Debug)]
pub struct Waiting(String);

impl Waiting {
    pub fn new(pool: &str) -> Self {
        gauge!("db_pool_waiting", "pool" => pool.to_owned()).increment(1.0);
        Self(pool.to_owned())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        gauge!("db_pool_waiting", "pool" => self.0.clone()).decrement(1.0);
    }
}

pub fn batch(rows: usize) {
    histogram!("request_log_batch_rows").record(rows as f64);
}

pub fn redis_error() {
    counter!("redis_errors_total").increment(1);
}

/// Pool gauges are read at scrape time: they are cheap, and always current.
pub fn render(handle: &PrometheusHandle, db: &Db) -> String {
    for (pool, size, idle) in db.pool_sizes() {
        gauge!("db_pool_connections", "pool" => pool.clone(), "state" => "open")
            .set(f64::from(size));
        gauge!("db_pool_connections", "pool" => pool.clone(), "state" => "idle").set(idle as f64);
        gauge!("db_pool_connections", "pool" => pool, "state" => "in_use")
            .set(f64::from(size) - idle as f64);
    }
    handle.render()
}
