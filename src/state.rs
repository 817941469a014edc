//! What every handler shares.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::db::Db;
use crate::request_log::Batcher;
use crate::session::RedisStore;

#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Arc<Db>,
    /// Where `GET /` logs itself: batched writes and reads over `db`.
    pub request_log: Batcher,
    pub sessions: RedisStore,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Bounds how many `/test` runs write probe rows at once on this instance.
    pub probe_slots: Arc<Semaphore>,
}

/// Concurrent `/test` runs per instance.
pub const PROBE_SLOTS: usize = 2;
