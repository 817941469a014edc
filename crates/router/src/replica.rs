//! One read replica: its pool and what the monitor and reads last learned about it.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgConnection;

use crate::clock::millis;
use crate::lsn::Lsn;
use crate::pool::{Lease, Pool, discard_if_broken};
use crate::route::ReplicaView;
use crate::timeline::Timeline;

/// One replica's pool and last known state.
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) name: String,
    pub(crate) pool: Pool,
    state: Mutex<ReplicaStatus>,
}

/// A replica's last known state, as `/readyz` and `/test` show it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplicaStatus {
    /// `replica1`, `replica2`...
    pub name: String,
    /// Whether reads may go to it.
    pub usable: bool,
    /// Whether the last check or read reached it.
    pub reachable: bool,
    /// Whether it is a replica at all (`pg_is_in_recovery()`).
    pub in_recovery: bool,
    /// A position it is known to have replayed.
    pub replay_lsn: Option<Lsn>,
    /// How far its replay trails the primary's position, in bytes.
    pub bytes_behind: Option<u64>,
    /// How long ago the primary passed the position the replica has replayed to, as last
    /// seen by a check or a read: zero when it has replayed everything.
    pub lag_ms: Option<u64>,
    /// `now() - pg_last_xact_replay_timestamp()` on the replica, reported as is: it grows
    /// while the primary is idle even though nothing is missing.
    pub last_replay_age_ms: Option<u64>,
    /// Why the replica is not usable, when it is not.
    pub problem: Option<String>,
}

/// What one monitor check measured on the replica itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Observation {
    pub(crate) in_recovery: bool,
    pub(crate) replay_lsn: Option<Lsn>,
    pub(crate) last_replay_age: Option<Duration>,
}

impl Replica {
    pub(crate) fn new(name: String, pool: Pool) -> Self {
        Self {
            // Optimistic until the first check: a failed read marks it at once.
            state: Mutex::new(ReplicaStatus {
                name: name.clone(),
                usable: true,
                reachable: true,
                in_recovery: true,
                ..ReplicaStatus::default()
            }),
            name,
            pool,
        }
    }

    fn state(&self) -> MutexGuard<'_, ReplicaStatus> {
        // The state is plain data rewritten whole by each check: a panic elsewhere cannot
        // leave it half-updated, so a poisoned lock is still safe to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What a read routing decision needs to know.
    pub(crate) fn view(&self) -> ReplicaView {
        let state = self.state();
        ReplicaView {
            usable: state.usable,
            replayed: state.replay_lsn,
            lag: state.lag_ms.map(Duration::from_millis),
        }
    }

    pub(crate) fn replay_lsn(&self) -> Option<Lsn> {
        self.state().replay_lsn
    }

    /// A read or a replay wait saw the replica at `lsn`, just now: a fresher lower bound than
    /// the last check's, so later causal reads up to it need no replay query, and a fresh
    /// measure of its lag. An observation older than what is known changes nothing.
    pub(crate) fn note_replayed(&self, lsn: Lsn, timeline: &Timeline) {
        let behind = timeline.behind(lsn, Instant::now());
        let mut state = self.state();
        if state.replay_lsn > Some(lsn) {
            return;
        }
        state.replay_lsn = Some(lsn);
        if let Some((bytes, lag)) = behind {
            state.bytes_behind = Some(bytes);
            state.lag_ms = Some(millis(lag));
        }
    }

    /// A connection to this replica once it has replayed `must_replay` (when set); `None`
    /// when `deadline` passes first. What each poll sees goes into the replica's state.
    pub(crate) async fn ready(
        &self,
        must_replay: Option<Lsn>,
        deadline: Instant,
        timeline: &Timeline,
    ) -> Result<Option<Lease>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let Some(lsn) = must_replay else {
            return Ok(Some(conn));
        };
        let replayed = self
            .wait_for_replay(&mut conn, lsn, deadline, timeline)
            .await;
        if discard_if_broken(&mut conn, replayed)? {
            return Ok(Some(conn));
        }
        conn.give_back();
        Ok(None)
    }

    /// Polls the replica until it has replayed `lsn`; false when `deadline` passes first.
    async fn wait_for_replay(
        &self,
        conn: &mut PgConnection,
        lsn: Lsn,
        deadline: Instant,
        timeline: &Timeline,
    ) -> Result<bool, sqlx::Error> {
        // The known figure only ever trails the real one, so if it suffices, no query is
        // needed.
        if self.replay_lsn().is_some_and(|seen| seen >= lsn) {
            return Ok(true);
        }
        // Poll soon, then back off: a replica that keeps up is seen at once, one that lags
        // costs few queries.
        let mut poll = Duration::from_millis(1);
        const MAX_POLL: Duration = Duration::from_millis(8);
        loop {
            crate::metrics::causal_query(&self.name, "wait");
            if let Some(seen) = crate::lsn::replayed(&mut *conn).await? {
                self.note_replayed(seen, timeline);
                if seen >= lsn {
                    return Ok(true);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(poll.min(deadline - now)).await;
            poll = (poll * 2).min(MAX_POLL);
        }
    }

    pub(crate) fn status(&self) -> ReplicaStatus {
        self.state().clone()
    }

    /// A read or a check could not reach the replica: stop routing to it until a check passes.
    pub(crate) fn mark_unreachable(&self, error: &dyn std::fmt::Display) {
        let mut state = self.state();
        if state.usable {
            tracing::warn!(replica = %self.name, %error, "replica unreachable; reads move elsewhere");
        }
        state.usable = false;
        state.reachable = false;
        state.problem = Some(format!("unreachable: {error}"));
        crate::metrics::replica(&self.name, state.usable, state.bytes_behind, state.lag_ms);
    }

    /// Records a successful check. `behind` is how far, in bytes and in time, the replica's
    /// replay position trails the primary (zero when caught up); `None` (primary down) keeps
    /// the previous lag.
    pub(crate) fn record(
        &self,
        seen: Observation,
        behind: Option<(u64, Duration)>,
        max_lag: Duration,
    ) {
        let mut state = self.state();
        state.reachable = true;
        state.in_recovery = seen.in_recovery;
        state.replay_lsn = seen.replay_lsn;
        state.last_replay_age_ms = seen.last_replay_age.map(millis);
        if let Some((bytes, lag)) = behind {
            state.bytes_behind = Some(bytes);
            state.lag_ms = Some(millis(lag));
        }
        let problem = if !seen.in_recovery {
            Some("not in recovery: this node is not a replica".to_owned())
        } else {
            match state.lag_ms {
                None => Some("lag unknown: the primary has not been reached yet".to_owned()),
                Some(lag) if lag > millis(max_lag) => Some(format!(
                    "lagging {lag} ms, over the {} ms limit",
                    millis(max_lag)
                )),
                Some(_) => None,
            }
        };
        if state.usable != problem.is_none() {
            match &problem {
                Some(why) => {
                    tracing::warn!(replica = %self.name, %why, "replica excluded from reads")
                }
                None => tracing::info!(replica = %self.name, "replica usable again"),
            }
        }
        state.usable = problem.is_none();
        state.problem = problem;
        crate::metrics::replica(&self.name, state.usable, state.bytes_behind, state.lag_ms);
    }
}
