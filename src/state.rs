//! What every handler shares: one `AppState`, cheap to clone.

use std::sync::Arc;

use rwsplit_router::{Db, Nodes};
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
        // A request waits for its batch as long as a write may wait for a connection: in a
        // cluster, for a primary to be elected first.
        let router = &config.db.router;
        let patience = match router.nodes {
            Nodes::Fixed { .. } => router.pools.acquire_timeout,
            Nodes::Cluster(_) => router.pools.acquire_timeout + router.routing.failover_wait,
        };
        let batcher = (config.request_log_batch > 1)
            .then(|| Batcher::spawn(db.clone(), config.request_log_batch, patience));
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
