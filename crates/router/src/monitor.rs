//! The monitor: checks every node on an interval, finds the primary in a cluster, and
//! excludes replicas that are down, not replicas, or lagging past the limit. While a cluster
//! has no primary it checks often, and at once when a write asks.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::config::RoutingConfig;
use crate::leader::Leader;
use crate::node::{Node, Observation};
use crate::roles::{self, Claim, Election};
use crate::timeline::Timeline;

/// How often a cluster without a primary is checked: a promotion is seen within this.
const FAILOVER_CHECK: Duration = Duration::from_millis(100);

/// The background check, from [`Db::spawn_monitor`](crate::Db::spawn_monitor); dropping it
/// stops the checks.
#[derive(Debug)]
#[must_use = "dropping the monitor stops it"]
pub struct Monitor(JoinHandle<()>);

impl Monitor {
    /// Runs `check` every `every`, from one interval from now, until dropped; more often
    /// while `check` says there is no leader, and at once when a write wakes `leader`.
    pub(crate) fn spawn<F, Fut>(every: Duration, leader: Arc<Leader>, mut check: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        Self(tokio::spawn(async move {
            let mut settled = true;
            loop {
                let pause = if settled {
                    every
                } else {
                    every.min(FAILOVER_CHECK)
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = leader.woken() => {}
                }
                settled = check().await;
            }
        }))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks every node once: reachable, in recovery, where its WAL is; in a cluster, elects the
/// leader from that ([`roles::elect`]); then measures each replica against the primary's
/// position, which `timeline` keeps. Each check is bounded, so a node that does not answer
/// costs little. Returns whether there is a leader.
pub(crate) async fn check(
    nodes: &[Node],
    leader: &Leader,
    timeline: &Timeline,
    routing: &RoutingConfig,
) -> bool {
    let limit = routing
        .check_interval
        .clamp(Duration::from_millis(100), Duration::from_secs(2));
    let sampled = Instant::now();
    let since = leader.checking();
    let mut seen = Vec::with_capacity(nodes.len());
    // Few nodes: checking in turn keeps this simple; each is already time-bounded.
    for node in nodes {
        seen.push(match tokio::time::timeout(limit, observe(node)).await {
            Ok(Ok(observation)) => Ok(observation),
            // Every connection is busy serving reads: the node answers; keep the last verdict.
            Ok(Err(sqlx::Error::PoolTimedOut)) if node.read.is_full() => Err(None),
            Ok(Err(e)) => Err(Some(e.to_string())),
            Err(_) => Err(Some(format!("no answer within {} ms", limit.as_millis()))),
        });
    }
    if !leader.is_fixed() {
        let claims: Vec<Claim> = seen
            .iter()
            .map(|s| s.as_ref().map_or(Claim::Unreachable, Observation::claim))
            .collect();
        let lead = match roles::elect(&claims) {
            Election::Leader(i) => Some(i),
            Election::NoPrimary => None,
            Election::Split(nodes_out) => {
                let names: Vec<&str> = nodes_out.iter().map(|&i| nodes[i].name.as_str()).collect();
                tracing::error!(nodes = ?names, "several nodes out of recovery on one timeline; no writes until one steps down");
                None
            }
        };
        let was = leader.get();
        if leader.set(since, lead)
            && let Some(i) = lead
        {
            // Positions on the new primary's timeline restart from where it took over.
            let start = seen[i].as_ref().ok().and_then(|s| s.position);
            timeline.restart(start);
            crate::metrics::primary_changed();
            tracing::warn!(primary = %nodes[i].name, "a new primary leads; writes follow it");
        } else if was.is_some() && lead.is_none() {
            tracing::warn!("no primary: writes wait for one");
        }
    }
    // The leader now: the verdict, unless a write dropped a leader while this check ran.
    let lead = leader.get();
    let primary_lsn = lead
        .and_then(|i| seen[i].as_ref().ok())
        .filter(|s| !s.in_recovery)
        .and_then(|s| s.position);
    if let Some(lsn) = primary_lsn {
        timeline.record(sampled, lsn);
    }
    for (i, (node, seen)) in nodes.iter().zip(seen).enumerate() {
        match seen {
            Ok(seen) if Some(i) == lead => node.record_primary(seen),
            Ok(seen) => {
                // Without the primary's position now, the lag is not known: keep the last.
                let behind = primary_lsn
                    .and(seen.position)
                    .and_then(|replayed| timeline.behind(replayed, Instant::now()));
                node.record(seen, behind, routing.max_lag);
            }
            Err(None) => {}
            Err(Some(e)) => node.mark_unreachable(&e),
        }
    }
    lead.is_some()
}

/// One query for everything a check needs from a node, whatever its role: the branches a
/// role does not take are not evaluated (`pg_current_wal_lsn()` fails in recovery).
async fn observe(node: &Node) -> Result<Observation, sqlx::Error> {
    let (in_recovery, position, age_ms, timeline): (bool, Option<String>, Option<f64>, Option<i32>) =
        node.read
            .run(|c| {
                Box::pin(
                    sqlx::query_as(
                        "SELECT pg_is_in_recovery(), \
                         (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                               ELSE pg_current_wal_lsn() END)::text, \
                         (EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) * 1000)::float8, \
                         CASE WHEN NOT pg_is_in_recovery() THEN \
                           ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::int END",
                    )
                    .fetch_one(c),
                )
            })
            .await?;
    Ok(Observation {
        in_recovery,
        position: position.and_then(|t| t.parse().ok()),
        last_replay_age: age_ms
            .filter(|ms| ms.is_finite())
            .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
        timeline: timeline.and_then(|t| u32::try_from(t).ok()),
    })
}
