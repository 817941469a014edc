//! The primary's own view of its replicas, from `pg_stat_replication`.

use serde::Serialize;

use super::{Db, DbError, PRIMARY};

/// One WAL sender on the primary. Lag columns are NULL while the primary is idle: there is
/// nothing in flight to time.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct WalSender {
    pub application_name: String,
    pub state: Option<String>,
    pub write_lag_ms: Option<f64>,
    pub flush_lag_ms: Option<f64>,
    pub replay_lag_ms: Option<f64>,
    pub bytes_behind: Option<i64>,
}

impl Db {
    /// Reading the lag columns needs `pg_monitor` (granted to the app role by the stack).
    pub async fn wal_senders(&self) -> Result<Vec<WalSender>, DbError> {
        super::run_on(super::PRIMARY_READS, self.primary_reads(), |c| {
            Box::pin(
                sqlx::query_as(
                    "SELECT application_name, state, \
                        EXTRACT(EPOCH FROM write_lag)::float8 * 1000 AS write_lag_ms, \
                        EXTRACT(EPOCH FROM flush_lag)::float8 * 1000 AS flush_lag_ms, \
                        EXTRACT(EPOCH FROM replay_lag)::float8 * 1000 AS replay_lag_ms, \
                        pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::int8 AS bytes_behind \
                     FROM pg_stat_replication ORDER BY application_name",
                )
                .fetch_all(c),
            )
        })
        .await
        .map_err(|e| DbError::from_sqlx(PRIMARY, e))
    }
}
