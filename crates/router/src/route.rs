//! The routing decision, apart from any I/O: given a session's context and what is known of
//! the replicas, which nodes may answer its read, in which order.

use std::time::Duration;

use crate::consistency::{Consistency, ReadContext, Reason};
use crate::lsn::Lsn;

/// What the router knows of one replica when a read arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReplicaView {
    pub usable: bool,
    /// A position the replica is known to have replayed (never ahead of the truth).
    pub replayed: Option<Lsn>,
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
/// [`WriteMark::at_ms`](crate::WriteMark::at_ms)).
pub(crate) fn route(
    ctx: &ReadContext,
    replicas: &[ReplicaView],
    start: usize,
    sticky_window: Duration,
    now_ms: i64,
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
        let window = u64::try_from(sticky_window.as_millis()).unwrap_or(u64::MAX);
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
        // Replicas known to have replayed the token answer without a wait: try them first.
        order.sort_by_key(|&i| replicas[i].replayed < Some(token));
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

    fn up(replayed: u64) -> ReplicaView {
        ReplicaView {
            usable: true,
            replayed: Some(Lsn(replayed)),
        }
    }

    fn down() -> ReplicaView {
        ReplicaView {
            usable: false,
            replayed: None,
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
        assert_eq!(order(route(&ctx, &replicas, 0, WINDOW, 0)), [0, 2]);
        assert_eq!(order(route(&ctx, &replicas, 1, WINDOW, 0)), [2, 0]);
        assert_eq!(order(route(&ctx, &replicas, 2, WINDOW, 0)), [2, 0]);
    }

    #[test]
    fn without_usable_replicas_the_primary_answers_and_says_why() {
        let ctx = ReadContext::new(Consistency::Eventual, None);
        assert_eq!(
            route(&ctx, &[], 0, WINDOW, 0),
            Route::Primary(Reason::NoReplicas)
        );
        assert_eq!(
            route(&ctx, &[down(), down()], 0, WINDOW, 0),
            Route::Primary(Reason::NoUsableReplica)
        );
    }

    #[test]
    fn sticky_reads_the_primary_within_the_window_after_a_write_and_replicas_after() {
        let ctx = wrote(Consistency::Sticky, 10_000, 5);
        assert_eq!(
            route(&ctx, &[up(0)], 0, WINDOW, 10_500),
            Route::Primary(Reason::StickyWindow { left_ms: 1500 })
        );
        assert_eq!(order(route(&ctx, &[up(0)], 0, WINDOW, 12_000)), [0]);
        // Never wrote: nothing to stick to.
        let fresh = ReadContext::new(Consistency::Sticky, None);
        assert_eq!(order(route(&fresh, &[up(0)], 0, WINDOW, 500)), [0]);
    }

    #[test]
    fn an_unknown_session_reads_the_primary_unless_eventual() {
        for mode in [Consistency::Sticky, Consistency::Causal] {
            assert_eq!(
                route(&ReadContext::unknown(mode), &[up(9)], 0, WINDOW, 0),
                Route::Primary(Reason::SessionUnavailable)
            );
        }
        let eventual = ReadContext::unknown(Consistency::Eventual);
        assert_eq!(order(route(&eventual, &[up(0)], 0, WINDOW, 0)), [0]);
    }

    #[test]
    fn causal_reads_need_the_token_and_try_replicas_known_to_have_it_first() {
        let ctx = wrote(Consistency::Causal, 0, 50);
        let replicas = [up(10), up(60), up(50), down()];
        assert_eq!(
            route(&ctx, &replicas, 0, WINDOW, 0),
            Route::Replicas {
                order: vec![1, 2, 0],
                must_replay: Some(Lsn(50)),
            }
        );
        // Eventual mode ignores the token.
        let eventual = wrote(Consistency::Eventual, 0, 50);
        assert_eq!(
            route(&eventual, &replicas, 0, WINDOW, 0),
            Route::Replicas {
                order: vec![0, 1, 2],
                must_replay: None,
            }
        );
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
