//! One database server: its pools and what the monitor, reads and writes last learned about it.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgConnection;

use crate::clock::millis;
use crate::lsn::Lsn;
use crate::pool::{Lease, Pool, discard_if_broken};
use crate::roles::Claim;
use crate::route::ReplicaView;
use crate::timeline::Timeline;

/// One node's pools and last known state.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) name: String,
    /// Writes, for a node that may lead; it connects only once a write comes.
    pub(crate) write: Option<Pool>,
    /// Reads, every transaction read-only: replica reads, or the primary's when it leads.
    pub(crate) read: Pool,
    state: Mutex<NodeStatus>,
}

/// What a node is, as the last check found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// It takes the writes.
    Primary,
    /// It streams from the primary and may serve reads.
    Replica,
    /// Not known: not reached yet, or out of recovery beside another primary.
    #[default]
    Unknown,
}

/// A node's last known state, as `/readyz` and `/test` show it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeStatus {
    /// `primary`, `replica1`... or, in a cluster, `node1`, `node2`...
    pub name: String,
    /// What it is now.
    pub role: Role,
    /// Whether replica reads may go to it.
    pub usable: bool,
    /// Whether the last check or read reached it.
    pub reachable: bool,
    /// Whether it is a replica at all (`pg_is_in_recovery()`).
    pub in_recovery: bool,
    /// A position it is known to have replayed (a replica), or its last seen WAL position (the
    /// primary).
    pub replay_lsn: Option<Lsn>,
    /// The primary's timeline, as its last check saw it.
    pub timeline: Option<u32>,
    /// How far its replay trails the primary's position, in bytes.
    pub bytes_behind: Option<u64>,
    /// How long ago the primary passed the position the replica has replayed to, as last
    /// seen by a check or a read: zero when it has replayed everything.
    pub lag_ms: Option<u64>,
    /// `now() - pg_last_xact_replay_timestamp()` on the replica, reported as is: it grows
    /// while the primary is idle even though nothing is missing.
    pub last_replay_age_ms: Option<u64>,
    /// Why a replica is not usable, when it is not.
    pub problem: Option<String>,
}

/// What one monitor check measured on the node itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Observation {
    pub(crate) in_recovery: bool,
    /// What it has replayed (a replica), or its current WAL position (a primary).
    pub(crate) position: Option<Lsn>,
    pub(crate) last_replay_age: Option<Duration>,
    /// Out of recovery: the timeline it writes on.
    pub(crate) timeline: Option<u32>,
}

impl Observation {
    pub(crate) fn claim(&self) -> Claim {
        match (self.in_recovery, self.timeline) {
            (false, Some(timeline)) => Claim::Primary { timeline },
            _ => Claim::Replica,
        }
    }
}

impl Node {
    /// A node that starts as a replica, trusted with reads until the first check: a failed
    /// read marks it at once.
    pub(crate) fn new(name: String, write: Option<Pool>, read: Pool) -> Self {
        Self {
            state: Mutex::new(NodeStatus {
                name: name.clone(),
                role: Role::Replica,
                usable: true,
                reachable: true,
                in_recovery: true,
                ..NodeStatus::default()
            }),
            name,
            write,
            read,
        }
    }

    /// A node that leads from the start: a fixed primary, or a cluster's node before the
    /// first check (then no reads go to it until a check finds it a replica).
    pub(crate) fn unchecked(name: String, write: Option<Pool>, read: Pool) -> Self {
        let node = Self::new(name, write, read);
        {
            let mut state = node.state();
            state.role = Role::Unknown;
            state.usable = false;
            state.in_recovery = false;
        }
        node
    }

    fn state(&self) -> MutexGuard<'_, NodeStatus> {
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
        let mut conn = self.read.acquire().await?;
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

    pub(crate) fn status(&self) -> NodeStatus {
        self.state().clone()
    }

    /// A read or a check could not reach the node: stop routing to it until a check passes.
    pub(crate) fn mark_unreachable(&self, error: &dyn std::fmt::Display) {
        let mut state = self.state();
        if state.usable {
            tracing::warn!(node = %self.name, %error, "replica unreachable; reads move elsewhere");
        }
        state.usable = false;
        state.reachable = false;
        state.problem = Some(format!("unreachable: {error}"));
        crate::metrics::replica(&self.name, state.usable, state.bytes_behind, state.lag_ms);
    }

    /// Records a check that found this node leading: it takes writes and no replica reads.
    pub(crate) fn record_primary(&self, seen: Observation) {
        let mut state = self.state();
        *state = NodeStatus {
            name: self.name.clone(),
            role: Role::Primary,
            reachable: true,
            replay_lsn: seen.position,
            timeline: seen.timeline,
            ..NodeStatus::default()
        };
        crate::metrics::replica(&self.name, false, None, None);
    }

    /// Records a successful check of a node that does not lead. `behind` is how far, in bytes
    /// and in time, its replay position trails the primary (zero when caught up); `None`
    /// (primary unknown) keeps the previous lag.
    pub(crate) fn record(
        &self,
        seen: Observation,
        behind: Option<(u64, Duration)>,
        max_lag: Duration,
    ) {
        let mut state = self.state();
        state.reachable = true;
        state.in_recovery = seen.in_recovery;
        state.replay_lsn = seen.position;
        state.timeline = seen.timeline;
        state.last_replay_age_ms = seen.last_replay_age.map(millis);
        if let Some((bytes, lag)) = behind {
            state.bytes_behind = Some(bytes);
            state.lag_ms = Some(millis(lag));
        }
        state.role = if seen.in_recovery {
            Role::Replica
        } else {
            Role::Unknown
        };
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
                    tracing::warn!(node = %self.name, %why, "replica excluded from reads")
                }
                None => tracing::info!(node = %self.name, "replica usable again"),
            }
        }
        state.usable = problem.is_none();
        state.problem = problem;
        crate::metrics::replica(&self.name, state.usable, state.bytes_behind, state.lag_ms);
    }
}
