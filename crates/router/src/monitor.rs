//! The replica monitor: checks the replicas it is given on an interval and excludes those
//! that are down, not replicas, or lagging past the limit.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::config::RoutingConfig;
use crate::pool::Pool;
use crate::replica::{Observation, Replica};
use crate::timeline::Timeline;

/// The background check, from [`Db::spawn_monitor`](crate::Db::spawn_monitor); dropping it
/// stops the checks.
#[derive(Debug)]
#[must_use = "dropping the monitor stops it"]
pub struct Monitor(JoinHandle<()>);

impl Monitor {
    /// Runs `check` every `every`, from one interval from now, until dropped.
    pub(crate) fn spawn<F, Fut>(every: Duration, mut check: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        Self(tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                check().await;
            }
        }))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks every replica once: reachable, in recovery, and how far behind the primary, whose
/// position `primary` (a read-only pool on it) gives and `timeline` keeps. Each check is
/// bounded, so a node that does not answer costs little.
pub(crate) async fn check(
    primary: &Pool,
    replicas: &[Replica],
    timeline: &Timeline,
    routing: &RoutingConfig,
) {
    let limit = routing
        .check_interval
        .clamp(Duration::from_millis(100), Duration::from_secs(2));
    let sampled = Instant::now();
    let primary_lsn =
        tokio::time::timeout(limit, primary.run(|c| Box::pin(crate::lsn::current(c))))
            .await
            .ok()
            .and_then(Result::ok);
    if let Some(lsn) = primary_lsn {
        timeline.record(sampled, lsn);
    }
    for replica in replicas {
        // Few replicas: checking in turn keeps this simple; each is already time-bounded.
        match tokio::time::timeout(limit, observe(replica)).await {
            Ok(Ok(seen)) => {
                // Without the primary's position now, the lag is not known: keep the last.
                let behind = primary_lsn
                    .and(seen.replay_lsn)
                    .and_then(|replayed| timeline.behind(replayed, Instant::now()));
                replica.record(seen, behind, routing.max_lag);
            }
            // Every connection is busy serving reads: the replica answers; keep the last
            // verdict.
            Ok(Err(sqlx::Error::PoolTimedOut)) if replica.pool.is_full() => {}
            Ok(Err(e)) => replica.mark_unreachable(&e),
            Err(_) => {
                replica.mark_unreachable(&format!("no answer within {} ms", limit.as_millis()))
            }
        }
    }
}

async fn observe(replica: &Replica) -> Result<Observation, sqlx::Error> {
    let (in_recovery, replay, age_ms): (bool, Option<String>, Option<f64>) = replica
        .pool
        .run(|c| {
            Box::pin(
                sqlx::query_as(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, \
                     (EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) * 1000)::float8",
                )
                .fetch_one(c),
            )
        })
        .await?;
    Ok(Observation {
        in_recovery,
        replay_lsn: replay.and_then(|t| t.parse().ok()),
        last_replay_age: age_ms
            .filter(|ms| ms.is_finite())
            .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
    })
}
