//! The replica monitor: a background task that checks every replica on an interval and
//! excludes those that are down, not replicas, or lagging past the limit.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::replica::{Observation, Replica};
use super::{Db, Lsn};

/// Checks all replicas once, concurrently, each bounded by `limit`.
pub async fn check_all(db: &Db, limit: Duration) {
    let primary_lsn = tokio::time::timeout(limit, primary_lsn(db))
        .await
        .ok()
        .and_then(Result::ok);
    let checks = db.replicas().iter().map(|replica| async move {
        match tokio::time::timeout(limit, observe(replica)).await {
            Ok(Ok(seen)) => replica.record(seen, primary_lsn, db.routing().max_lag),
            Ok(Err(e)) => replica.mark_unreachable(&e),
            Err(_) => {
                replica.mark_unreachable(&format!("no answer within {} ms", limit.as_millis()))
            }
        }
    });
    for check in checks {
        // Few replicas: awaiting in turn keeps this simple; each is already time-bounded.
        check.await;
    }
}

/// Runs [`check_all`] every `interval` until the task is aborted.
pub fn spawn(db: Arc<Db>) -> JoinHandle<()> {
    let interval = db.routing().check_interval;
    let limit = interval.clamp(Duration::from_millis(100), Duration::from_secs(2));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            check_all(&db, limit).await;
        }
    })
}

async fn primary_lsn(db: &Db) -> Result<Lsn, sqlx::Error> {
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(db.primary_reads())
        .await?;
    text.parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))
}

async fn observe(replica: &Replica) -> Result<Observation, sqlx::Error> {
    let (in_recovery, replay, age_ms): (bool, Option<String>, Option<f64>) = sqlx::query_as(
        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
                (EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) * 1000)::float8",
    )
    .fetch_one(&replica.pool)
    .await?;
    Ok(Observation {
        in_recovery,
        replay_lsn: replay.and_then(|t| t.parse().ok()),
        last_replay_age: age_ms
            .filter(|ms| ms.is_finite())
            .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
    })
}
