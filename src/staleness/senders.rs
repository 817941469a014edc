//! The primary's own view of its replicas, from `pg_stat_replication`.

use serde::Serialize;

use rwsplit_router::{Db, DbError, PRIMARY};

/// One WAL sender on the primary. Lag columns are NULL while the primary is idle: there is
/// nothing in flight to time.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct WalSender {
    /// The replica's `application_name` (its `primary_conninfo`'s, or its cluster name).
    pub application_name: String,
    /// `streaming`, `catchup`...
    pub state: Option<String>,
    /// Time for WAL to reach the replica.
    pub write_lag_ms: Option<f64>,
    /// Time for WAL to reach the replica's disk.
    pub flush_lag_ms: Option<f64>,
    /// Time for WAL to be applied, visible to the replica's queries.
    pub replay_lag_ms: Option<f64>,
    /// How far its replay trails the primary, in bytes.
    pub bytes_behind: Option<i64>,
}

/// The primary's replication senders. Their lag columns need the `pg_monitor` role.
pub async fn wal_senders(db: &Db) -> Result<Vec<WalSender>, DbError> {
    db.read_from(PRIMARY, |c| {
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
}
