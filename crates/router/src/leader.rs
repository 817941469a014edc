//! Which node takes writes now, and waiting for one while a cluster has none.
//!
//! The monitor sets the leader after each check; a write that finds its node read-only or
//! gone drops it at once, so no later write goes there before a check says it leads again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

#[derive(Debug)]
pub(crate) struct Leader {
    /// Index of the node that takes writes.
    current: watch::Sender<Option<usize>>,
    /// A fixed topology: node 0 leads, whatever checks or writes see.
    fixed: bool,
    /// Wakes the monitor for a check now.
    wake: Notify,
    history: Mutex<History>,
    /// Counts the leaders writes dropped: a check that began before one formed its verdict
    /// from a node that has failed since, and is not taken.
    losses: AtomicU64,
}

#[derive(Debug, Default)]
struct History {
    /// The last node elected, even if it has been lost since.
    last: Option<usize>,
    /// Since when there has been no leader.
    lost_at: Option<Instant>,
}

impl Leader {
    pub(crate) fn fixed() -> Self {
        Self::new(Some(0), true)
    }

    /// A cluster's leader, unknown until the first check.
    pub(crate) fn elected() -> Self {
        Self::new(None, false)
    }

    fn new(current: Option<usize>, fixed: bool) -> Self {
        Self {
            current: watch::Sender::new(current),
            fixed,
            wake: Notify::new(),
            history: Mutex::new(History {
                last: current,
                lost_at: current.is_none().then(Instant::now),
            }),
            losses: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_fixed(&self) -> bool {
        self.fixed
    }

    pub(crate) fn get(&self) -> Option<usize> {
        *self.current.borrow()
    }

    /// The leader, waiting up to `limit` for one (and asking the monitor to look).
    pub(crate) async fn wait(&self, limit: Duration) -> Option<usize> {
        if let Some(i) = self.get() {
            return Some(i);
        }
        self.wake.notify_one();
        let mut seen = self.current.subscribe();
        let found = tokio::time::timeout(limit, seen.wait_for(Option::is_some)).await;
        match found {
            Ok(Ok(leader)) => *leader,
            _ => None,
        }
    }

    /// A write found node `i` read-only or unreachable: no write goes there until a check
    /// finds it leading again. Returns whether this dropped it (it still led).
    pub(crate) fn lose(&self, i: usize) -> bool {
        if self.fixed {
            return false;
        }
        let dropped = self.current.send_if_modified(|current| {
            let leads = *current == Some(i);
            if leads {
                *current = None;
            }
            leads
        });
        if dropped {
            self.losses.fetch_add(1, Ordering::SeqCst);
            self.mark_lost(true);
            self.wake.notify_one();
        }
        dropped
    }

    /// Where a check starts: hand it back to [`Leader::set`] with the check's verdict.
    pub(crate) fn checking(&self) -> u64 {
        self.losses.load(Ordering::SeqCst)
    }

    /// A check's verdict, from a check that began at `since` ([`Leader::checking`]); ignored
    /// if a write dropped a leader meanwhile (the woken monitor checks again at once). Returns
    /// whether another node than the last one elected leads now, which restarts what WAL
    /// positions mean.
    pub(crate) fn set(&self, since: u64, elected: Option<usize>) -> bool {
        if self.fixed || self.losses.load(Ordering::SeqCst) != since {
            return false;
        }
        self.current.send_if_modified(|current| {
            let changed = *current != elected;
            *current = elected;
            changed
        });
        self.mark_lost(elected.is_none());
        let mut history = self.history();
        let moved = elected.is_some() && history.last.is_some() && history.last != elected;
        if elected.is_some() {
            history.last = elected;
        }
        moved
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        // Plain fields, each set in one assignment: a poisoned lock is still consistent.
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts or ends a time without a leader; an outage that ends is measured, though not
    /// the wait for the first election at start-up.
    fn mark_lost(&self, lost: bool) {
        let mut history = self.history();
        match (lost, history.lost_at) {
            (true, None) => history.lost_at = Some(Instant::now()),
            (false, Some(since)) => {
                if history.last.is_some() {
                    crate::metrics::without_primary(since.elapsed());
                }
                history.lost_at = None;
            }
            _ => {}
        }
    }

    /// How long there has been no leader, if there is none.
    pub(crate) fn lost_for(&self) -> Option<Duration> {
        self.history().lost_at.map(|since| since.elapsed())
    }

    /// Resolves when a write asks for a check now.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_that_finds_no_leader_waits_for_the_next_election() {
        let leader = Leader::elected();
        assert_eq!(leader.wait(Duration::from_millis(10)).await, None);
        let waiting = leader.wait(Duration::from_secs(5));
        let elect = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            leader.set(leader.checking(), Some(2))
        };
        let (found, changed) = tokio::join!(waiting, elect);
        assert_eq!(found, Some(2));
        assert!(!changed, "a first election is not a change");
    }

    #[test]
    fn a_lost_leader_takes_no_writes_until_a_check_elects_it_again() {
        let leader = Leader::elected();
        assert!(
            !leader.set(leader.checking(), Some(1)),
            "a first election is not a change"
        );
        assert!(!leader.lose(0), "another node's failure changes nothing");
        let stale = leader.checking();
        assert!(leader.lose(1));
        assert_eq!(leader.get(), None);
        assert!(leader.lost_for().is_some());
        // A check that saw node 1 leading before the write saw it fail does not count.
        leader.set(stale, Some(1));
        assert_eq!(leader.get(), None);
        // The same node again is no change of leader: its positions still hold.
        assert!(!leader.set(leader.checking(), Some(1)));
        assert_eq!(leader.lost_for(), None);
        assert!(leader.set(leader.checking(), Some(0)));
    }

    #[test]
    fn a_fixed_primary_leads_whatever_happens() {
        let leader = Leader::fixed();
        assert!(!leader.lose(0));
        assert!(!leader.set(leader.checking(), None));
        assert_eq!(leader.get(), Some(0));
    }
}
