//! The routing decision, apart from any I/O: given a session's context and what is known of
//! the replicas, which nodes may answer its read, in which order.
//!
//! A causal read waits only where the wait can pay off. A replica that runs `lag` behind the
//! primary in time replays a position the primary reached `age` ago in about `lag - age`;
//! one not expected within the causal wait is not waited for, and with none expected the
//! primary answers at once. The lag is the one last measured, by a check or a read, so an
//! estimate is never older than a monitor interval, and one too hopeful costs one wait:
//! that wait measures the lag again.

use std::time::Duration;

use crate::clock::millis;
use crate::config::RoutingConfig;
use crate::consistency::{Consistency, ReadContext, Reason};
use crate::lsn::Lsn;

/// What the router knows of one replica when a read arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplicaView {
    pub usable: bool,
    /// A position the replica is known to have replayed (never ahead of the truth).
    pub replayed: Option<Lsn>,
    /// How far behind the primary, in time, it was last seen running; unknown before the
    /// first measure, when a wait is tried.
    pub lag: Option<Duration>,
}

impl ReplicaView {
    /// How long until it has replayed `token`, which the primary reached `age` ago: zero
    /// when it is known to have it already, or is expected to any moment.
    fn eta(&self, token: Lsn, age: Duration) -> Duration {
        if self.replayed >= Some(token) {
            return Duration::ZERO;
        }
        self.lag.unwrap_or_default().saturating_sub(age)
    }
}

/// Where a read may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Only the primary may answer, for this reason.
    Primary(Reason),
    /// These replicas (indexes), tried in order; each must first have replayed
    /// `must_replay`, when set. The primary answers if none does.
    Replicas {
        order: Vec<usize>,
        must_replay: Option<Lsn>,
    },
}

/// Decides where a read in `ctx` may go. `start` rotates the round-robin order; `now_ms` is
/// the wall clock the sticky window is measured by (milliseconds since the Unix epoch, as
/// [`WriteMark::at_ms`](crate::WriteMark::at_ms)); `token_age` is how long ago the primary
/// reached the session's causal token.
pub(crate) fn route(
    ctx: &ReadContext,
    replicas: &[ReplicaView],
    start: usize,
    limits: &RoutingConfig,
    now_ms: i64,
    token_age: Duration,
) -> Route {
    if replicas.is_empty() {
        return Route::Primary(Reason::NoReplicas);
    }
    if ctx.mode != Consistency::Eventual && !ctx.known {
        return Route::Primary(Reason::SessionUnavailable);
    }
    if ctx.mode == Consistency::Sticky
        && let Some(write) = ctx.last_write
    {
        let since = u64::try_from(now_ms.saturating_sub(write.at_ms)).unwrap_or(0);
        let window = millis(limits.sticky_window);
        if since < window {
            return Route::Primary(Reason::StickyWindow {
                left_ms: window - since,
            });
        }
    }
    let must_replay = match ctx.mode {
        Consistency::Causal => ctx.token,
        _ => None,
    };
    let n = replicas.len();
    let mut order: Vec<usize> = (0..n)
        .map(|i| (start + i) % n)
        .filter(|&i| replicas[i].usable)
        .collect();
    if order.is_empty() {
        return Route::Primary(Reason::NoUsableReplica);
    }
    if let Some(token) = must_replay {
        let has_token = |i: usize| replicas[i].replayed >= Some(token);
        let eta = |i: usize| replicas[i].eta(token, token_age);
        // Replicas known to have the token answer without a wait, then the soonest to get it.
        order.sort_by_key(|&i| (!has_token(i), eta(i)));
        let nearest = eta(order[0]);
        order.retain(|&i| has_token(i) || eta(i) < limits.causal_wait);
        if order.is_empty() {
            return Route::Primary(Reason::ReplicasBehind {
                behind_ms: millis(nearest),
            });
        }
    }
    Route::Replicas { order, must_replay }
}

/// Why tried replicas did not answer, for the primary's [`Reason`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Misses {
    /// A replica had not replayed the causal token by the deadline.
    pub timed_out: bool,
    /// A replica's pool was fully in use for its whole acquire timeout.
    pub busy: bool,
}

impl Misses {
    pub(crate) fn reason(self, waited_ms: u64) -> Reason {
        if self.timed_out {
            Reason::CausalTimeout { waited_ms }
        } else if self.busy {
            Reason::ReplicasBusy
        } else {
            Reason::NoUsableReplica
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consistency::WriteMark;

    const WINDOW: Duration = Duration::from_secs(2);
    const WAIT: Duration = Duration::from_millis(50);

    fn limits(sticky_window: Duration) -> RoutingConfig {
        RoutingConfig {
            sticky_window,
            causal_wait: WAIT,
            ..RoutingConfig::default()
        }
    }

    /// [`route`] with a token the primary reached just now.
    fn at(ctx: &ReadContext, replicas: &[ReplicaView], start: usize, now_ms: i64) -> Route {
        route(
            ctx,
            replicas,
            start,
            &limits(WINDOW),
            now_ms,
            Duration::ZERO,
        )
    }

    fn up(replayed: u64) -> ReplicaView {
        ReplicaView {
            usable: true,
            replayed: Some(Lsn(replayed)),
            lag: Some(Duration::ZERO),
        }
    }

    /// A usable replica at `replayed`, running `lag_ms` behind the primary.
    fn lagging(replayed: u64, lag_ms: u64) -> ReplicaView {
        ReplicaView {
            lag: Some(Duration::from_millis(lag_ms)),
            ..up(replayed)
        }
    }

    fn down() -> ReplicaView {
        ReplicaView {
            usable: false,
            replayed: None,
            lag: None,
        }
    }

    fn wrote(mode: Consistency, at_ms: i64, lsn: u64) -> ReadContext {
        ReadContext::new(
            mode,
            Some(WriteMark {
                at_ms,
                lsn: Some(Lsn(lsn)),
            }),
        )
    }

    fn order(route: Route) -> Vec<usize> {
        match route {
            Route::Replicas { order, .. } => order,
            Route::Primary(reason) => panic!("primary: {reason}"),
        }
    }

    #[test]
    fn eventual_reads_rotate_over_usable_replicas_only() {
        let ctx = ReadContext::new(Consistency::Eventual, None);
        let replicas = [up(0), down(), up(0)];
        assert_eq!(order(at(&ctx, &replicas, 0, 0)), [0, 2]);
        assert_eq!(order(at(&ctx, &replicas, 1, 0)), [2, 0]);
        assert_eq!(order(at(&ctx, &replicas, 2, 0)), [2, 0]);
    }

    #[test]
    fn without_usable_replicas_the_primary_answers_and_says_why() {
        let ctx = ReadContext::new(Consistency::Eventual, None);
        assert_eq!(at(&ctx, &[], 0, 0), Route::Primary(Reason::NoReplicas));
        assert_eq!(
            at(&ctx, &[down(), down()], 0, 0),
            Route::Primary(Reason::NoUsableReplica)
        );
    }

    #[test]
    fn sticky_reads_the_primary_within_the_window_after_a_write_and_replicas_after() {
        let ctx = wrote(Consistency::Sticky, 10_000, 5);
        assert_eq!(
            at(&ctx, &[up(0)], 0, 10_500),
            Route::Primary(Reason::StickyWindow { left_ms: 1500 })
        );
        assert_eq!(order(at(&ctx, &[up(0)], 0, 12_000)), [0]);
        // Never wrote: nothing to stick to.
        let fresh = ReadContext::new(Consistency::Sticky, None);
        assert_eq!(order(at(&fresh, &[up(0)], 0, 500)), [0]);
    }

    #[test]
    fn an_unknown_session_reads_the_primary_unless_eventual() {
        for mode in [Consistency::Sticky, Consistency::Causal] {
            assert_eq!(
                at(&ReadContext::unknown(mode), &[up(9)], 0, 0),
                Route::Primary(Reason::SessionUnavailable)
            );
        }
        let eventual = ReadContext::unknown(Consistency::Eventual);
        assert_eq!(order(at(&eventual, &[up(0)], 0, 0)), [0]);
    }

    #[test]
    fn causal_reads_need_the_token_and_try_replicas_known_to_have_it_first() {
        let ctx = wrote(Consistency::Causal, 0, 50);
        let replicas = [up(10), up(60), up(50), down()];
        assert_eq!(
            at(&ctx, &replicas, 0, 0),
            Route::Replicas {
                order: vec![1, 2, 0],
                must_replay: Some(Lsn(50)),
            }
        );
        // Eventual mode ignores the token.
        let eventual = wrote(Consistency::Eventual, 0, 50);
        assert_eq!(
            at(&eventual, &replicas, 0, 0),
            Route::Replicas {
                order: vec![0, 1, 2],
                must_replay: None,
            }
        );
    }

    #[test]
    fn a_causal_read_does_not_wait_for_a_replica_that_will_not_replay_the_token_in_time() {
        let ctx = wrote(Consistency::Causal, 0, 50);
        // 500 ms behind: the token the primary reached just now is about 500 ms away.
        assert_eq!(
            at(&ctx, &[lagging(10, 500)], 0, 0),
            Route::Primary(Reason::ReplicasBehind { behind_ms: 500 })
        );
        // The same replica for a token the primary reached 480 ms ago: 20 ms away, worth it.
        let older = route(
            &ctx,
            &[lagging(10, 500)],
            0,
            &limits(WINDOW),
            0,
            Duration::from_millis(480),
        );
        assert_eq!(order(older), [0]);
        // Exactly the wait away: it would arrive as the wait ends, too late to read.
        assert_eq!(
            at(&ctx, &[lagging(10, 50)], 0, 0),
            Route::Primary(Reason::ReplicasBehind { behind_ms: 50 })
        );
        // A replica known to have the token answers however slow it runs, even with no wait.
        assert_eq!(order(at(&ctx, &[lagging(50, 500)], 0, 0)), [0]);
        let no_wait = RoutingConfig {
            causal_wait: Duration::ZERO,
            ..limits(WINDOW)
        };
        let replicas = [lagging(60, 900), up(10)];
        assert_eq!(
            order(route(&ctx, &replicas, 1, &no_wait, 0, Duration::ZERO)),
            [0]
        );
    }

    #[test]
    fn a_causal_read_tries_the_replica_closest_to_the_token_first() {
        let ctx = wrote(Consistency::Causal, 0, 50);
        // Round-robin would start at 0; the replica 5 ms behind goes first, the one 1,500 ms
        // behind not at all.
        let replicas = [lagging(10, 1500), lagging(10, 30), lagging(10, 5), down()];
        assert_eq!(order(at(&ctx, &replicas, 0, 0)), [2, 1]);
        // One never measured is expected at once: its wait measures it.
        let unmeasured = ReplicaView {
            lag: None,
            ..up(10)
        };
        assert_eq!(
            order(at(&ctx, &[lagging(10, 20), unmeasured], 0, 0)),
            [1, 0]
        );
        // Eventual mode has no token to wait for: every usable replica, round-robin.
        let eventual = wrote(Consistency::Eventual, 0, 50);
        assert_eq!(order(at(&eventual, &replicas, 0, 0)), [0, 1, 2]);
    }

    #[test]
    fn misses_name_the_primary_s_reason() {
        let timed_out = Misses {
            timed_out: true,
            busy: true,
        };
        assert_eq!(
            timed_out.reason(50),
            Reason::CausalTimeout { waited_ms: 50 }
        );
        let busy = Misses {
            busy: true,
            ..Misses::default()
        };
        assert_eq!(busy.reason(0), Reason::ReplicasBusy);
        assert_eq!(Misses::default().reason(0), Reason::NoUsableReplica);
    }
}
