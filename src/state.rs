//! What every handler shares: one `AppState`, cheap to clone.

use std::sync::Arc;

use rwsplit_router::Db;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::request_log::Batcher;
use crate::session::RedisStore;

#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Arc<Db>,
    /// Group commit for `GET /`; `None` when `REQUEST_LOG_BATCH=1`, and each request writes
    /// and reads on its own.
    pub batcher: Option<Batcher>,
    pub sessions: RedisStore,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Bounds how many `/test` runs write probe rows at once on this instance.
    pub probe_slots: Arc<Semaphore>,
}

/// Concurrent `/test` runs per instance.
pub const PROBE_SLOTS: usize = 2;

impl AppState {
    /// Builds the pools, the Redis client and the batcher, without connecting to anything:
    /// an instance starts, and reports, whatever is down. `metrics` is the exporter's handle
    /// (`crate::metrics::install`, once per process).
    pub fn new(
        config: Config,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
    ) -> Result<Self, redis::RedisError> {
        let db = Arc::new(Db::new(config.db.router.clone()));
        let batcher = (config.request_log_batch > 1).then(|| {
            Batcher::spawn(
                db.clone(),
                config.request_log_batch,
                config.db.router.pools.acquire_timeout,
            )
        });
        Ok(Self {
            sessions: RedisStore::new(&config.session)?,
            config: Arc::new(config),
            db,
            batcher,
            metrics,
            probe_slots: Arc::new(Semaphore::new(PROBE_SLOTS)),
        })
    }
}
