//! The replica monitor: checks the replicas it is given on an interval and excludes those
//! that are down, not replicas, or lagging past the limit.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::config::RoutingConfig;
use crate::lsn::Lsn;
use crate::pool::Pool;
use crate::replica::{Observation, Replica};

/// The primary's WAL positions at recent checks, oldest first. A replica's lag is how long
/// ago the primary passed the replica's replay position: unlike the age of the replica's last
/// replayed commit, that does not grow while the primary is idle.
#[derive(Debug, Default)]
pub(crate) struct History {
    samples: VecDeque<(Instant, Lsn)>,
    capacity: usize,
}

impl History {
    /// Enough samples to span `max_lag` at one per `interval`, so any lag past the limit shows.
    pub(crate) fn new(interval: Duration, max_lag: Duration) -> Self {
        let needed = max_lag.as_millis() / interval.as_millis().max(1) + 2;
        Self {
            samples: VecDeque::new(),
            capacity: usize::try_from(needed).unwrap_or(usize::MAX).clamp(2, 4096),
        }
    }

    fn push(&mut self, at: Instant, lsn: Lsn) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back((at, lsn));
    }

    /// Bytes behind the newest sample and how long ago the primary first stood past `replayed`.
    fn behind(&self, replayed: Lsn, now: Instant) -> Option<(u64, Duration)> {
        let &(_, newest) = self.samples.back()?;
        let since = self
            .samples
            .iter()
            .find(|(_, lsn)| *lsn > replayed)
            .map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(*at));
        Some((replayed.bytes_behind(newest), since))
    }
}

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
/// position `primary` (a read-only pool on it) gives. Each check is bounded, so a node that
/// does not answer costs little.
pub(crate) async fn check(
    primary: &Pool,
    replicas: &[Replica],
    history: &Mutex<History>,
    routing: &RoutingConfig,
) {
    let limit = routing
        .check_interval
        .clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut history = history.lock().await;
    let sampled = Instant::now();
    let primary_lsn =
        tokio::time::timeout(limit, primary.run(|c| Box::pin(crate::lsn::current(c))))
            .await
            .ok()
            .and_then(Result::ok);
    if let Some(lsn) = primary_lsn {
        history.push(sampled, lsn);
    }
    let history = &*history;
    for replica in replicas {
        // Few replicas: checking in turn keeps this simple; each is already time-bounded.
        match tokio::time::timeout(limit, observe(replica)).await {
            Ok(Ok(seen)) => {
                let behind = primary_lsn
                    .zip(seen.replay_lsn)
                    .and_then(|(_, replayed)| history.behind(replayed, Instant::now()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_time_since_the_primary_passed_the_replica() {
        let t0 = Instant::now();
        let mut history = History::new(Duration::from_secs(1), Duration::from_secs(3));
        for (i, lsn) in [100, 100, 200, 300, 300, 300, 300].into_iter().enumerate() {
            history.push(t0 + Duration::from_secs(i as u64), Lsn(lsn));
        }
        let now = t0 + Duration::from_secs(6);
        // Idle primary, caught-up replica: no lag however old the last commit is.
        assert_eq!(history.behind(Lsn(300), now), Some((0, Duration::ZERO)));
        // The primary passed 150 at the sample taken at t0 + 2 s.
        assert_eq!(
            history.behind(Lsn(150), now),
            Some((150, Duration::from_secs(4)))
        );
        // Older than the history: at least as old as the oldest sample kept.
        assert!(history.samples.len() <= 5);
        assert!(
            history
                .behind(Lsn(50), now)
                .is_some_and(|(_, lag)| lag >= Duration::from_secs(4))
        );
    }
}
