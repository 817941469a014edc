//! What the router counts, through the `metrics` facade: the application chooses the
//! exporter. Names are listed in the crate's documentation.

use std::time::Duration;

use metrics::{Gauge, counter, gauge, histogram};

use crate::consistency::{Consistency, Reason};

pub(crate) fn read(node: &str, mode: Consistency, reason: Reason) {
    counter!("db_reads_total", "node" => node.to_owned(), "mode" => mode.as_str(), "reason" => reason.kind())
        .increment(1);
}

/// A query causal mode added to a read: `wait` polls a replica's replay position before the
/// read, `observe` takes the answering node's position after it (for the session's token).
pub(crate) fn causal_query(node: &str, kind: &'static str) {
    counter!("causal_queries_total", "node" => node.to_owned(), "kind" => kind).increment(1);
}

/// A replica's last check: takes the state's figures rather than the state, so that this
/// module, which the pools use, imports nothing that uses them.
pub(crate) fn replica(name: &str, usable: bool, bytes_behind: Option<u64>, lag_ms: Option<u64>) {
    let name = name.to_owned();
    gauge!("replica_usable", "replica" => name.clone()).set(f64::from(u8::from(usable)));
    if let Some(bytes) = bytes_behind {
        gauge!("replica_lag_bytes", "replica" => name.clone()).set(bytes as f64);
    }
    if let Some(ms) = lag_ms {
        gauge!("replica_lag_seconds", "replica" => name).set(ms as f64 / 1000.0);
    }
}

pub(crate) fn pool(name: &str, open: u32, idle: usize) {
    let name = name.to_owned();
    gauge!("db_pool_connections", "pool" => name.clone(), "state" => "open").set(f64::from(open));
    gauge!("db_pool_connections", "pool" => name.clone(), "state" => "idle").set(idle as f64);
    gauge!("db_pool_connections", "pool" => name, "state" => "in_use")
        .set(f64::from(open) - idle as f64);
}

/// The gauge of callers waiting for a connection from the pool `pool`.
pub(crate) fn waiting(pool: &str) -> Gauge {
    gauge!("db_pool_waiting", "pool" => pool.to_owned())
}

/// A cluster's monitor found another node leading.
pub(crate) fn primary_changed() {
    counter!("db_primary_changes_total").increment(1);
}

/// A time without a primary ended, after `lasted`.
pub(crate) fn without_primary(lasted: Duration) {
    histogram!("db_primary_outage_seconds").record(lasted.as_secs_f64());
}

/// How long the current time without a primary has lasted: zero while there is one.
pub(crate) fn without_primary_now(lasted: Duration) {
    gauge!("db_without_primary_seconds").set(lasted.as_secs_f64());
}
