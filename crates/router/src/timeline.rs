//! The primary's recent WAL positions, each with the moment it was seen: from every replica
//! check, and from the positions writes and primary reads take after they commit or read.
//!
//! What a replica has replayed then says how far behind in *time* it runs: how long ago the
//! primary passed that position. Unlike the age of the replica's last replayed commit, that
//! does not grow while the primary is idle; unlike a byte count, it compares with a wait.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::lsn::Lsn;

/// Samples closer together than this add nothing a wait could use: the later is dropped.
const SPACING: Duration = Duration::from_millis(1);

/// Samples kept at the most, whatever the span asked for.
const MAX_SAMPLES: usize = 65_536;

#[derive(Debug)]
pub(crate) struct Timeline {
    /// Oldest first; positions and moments both only grow.
    samples: Mutex<VecDeque<(Instant, Lsn)>>,
    capacity: usize,
    /// After a new primary took over: the old one's newest position seen, and the new one's
    /// first. Positions between were written only on the old primary's timeline.
    abandoned: Mutex<Option<(Lsn, Lsn)>>,
}

impl Timeline {
    /// Keeps enough samples to span `span` at one per millisecond, so that a lag up to
    /// `span` can be measured.
    pub(crate) fn new(span: Duration) -> Self {
        let capacity = usize::try_from(span.as_millis() / SPACING.as_millis() + 2)
            .unwrap_or(MAX_SAMPLES)
            .clamp(2, MAX_SAMPLES);
        Self {
            samples: Mutex::new(VecDeque::new()),
            capacity,
            abandoned: Mutex::new(None),
        }
    }

    /// Another node leads from `start` on: positions are compared on its timeline from now.
    pub(crate) fn restart(&self, start: Option<Lsn>) {
        let mut samples = self.samples();
        let old_end = samples.back().map(|&(_, lsn)| lsn);
        samples.clear();
        let mut abandoned = self
            .abandoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *abandoned = match (old_end, start) {
            (Some(end), Some(start)) if end > start => Some((end, start)),
            _ => None,
        };
    }

    /// The position a causal read must find replayed for `token`. A token the old primary gave
    /// past where its successor took over, and which the new timeline has not reached yet, is
    /// a position that no longer exists: everything it covered that survived is at or before
    /// the takeover, so a replica that has replayed that far has it. Without this, such a
    /// session would read the primary until the new timeline grew past its token.
    pub(crate) fn surviving(&self, token: Lsn) -> Lsn {
        let abandoned = *self
            .abandoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some((old_end, start)) = abandoned else {
            return token;
        };
        let newest = self.samples().back().map(|&(_, lsn)| lsn);
        if token > start && token <= old_end && newest.is_none_or(|newest| newest < token) {
            start
        } else {
            token
        }
    }

    fn samples(&self) -> MutexGuard<'_, VecDeque<(Instant, Lsn)>> {
        // Each change is one push or pop: a panic elsewhere cannot leave it half-done.
        self.samples.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The primary was at `lsn` at `at`. A position not past the newest, or seen within
    /// [`SPACING`] of it, is not kept.
    pub(crate) fn record(&self, at: Instant, lsn: Lsn) {
        let mut samples = self.samples();
        if let Some(&(last_at, last)) = samples.back()
            && (lsn <= last || at < last_at + SPACING)
        {
            return;
        }
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back((at, lsn));
    }

    /// How far a replica that has replayed `replayed` trails the primary, as of `now`: bytes
    /// behind the newest position, and how long ago the primary was first seen past
    /// `replayed` (zero when it never was: caught up). Accurate to the spacing of the
    /// samples; past the oldest one kept, at least its age.
    pub(crate) fn behind(&self, replayed: Lsn, now: Instant) -> Option<(u64, Duration)> {
        let samples = self.samples();
        let &(_, newest) = samples.back()?;
        let i = samples.partition_point(|&(_, lsn)| lsn <= replayed);
        let since = samples
            .get(i)
            .map_or(Duration::ZERO, |&(at, _)| now.saturating_duration_since(at));
        Some((replayed.bytes_behind(newest), since))
    }

    /// How long ago the primary was first seen at or past `lsn`: zero when it has not been
    /// seen there yet (the position is newer than every sample).
    pub(crate) fn age(&self, lsn: Lsn, now: Instant) -> Duration {
        let samples = self.samples();
        let i = samples.partition_point(|&(_, seen)| seen < lsn);
        samples
            .get(i)
            .map_or(Duration::ZERO, |&(at, _)| now.saturating_duration_since(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn lag_is_the_time_since_the_primary_passed_the_replica() {
        let t0 = Instant::now();
        let timeline = Timeline::new(Duration::from_secs(3));
        for (ms, lsn) in [(0, 100), (1000, 100), (2000, 200), (3000, 300), (6000, 300)] {
            timeline.record(at(t0, ms), Lsn(lsn));
        }
        let now = at(t0, 6000);
        // Idle primary, caught-up replica: no lag however old the last commit is.
        assert_eq!(timeline.behind(Lsn(300), now), Some((0, Duration::ZERO)));
        // The primary was first seen past 150 at t0 + 2 s.
        assert_eq!(
            timeline.behind(Lsn(150), now),
            Some((150, Duration::from_secs(4)))
        );
        // Older than every sample: at least as old as the oldest.
        assert_eq!(
            timeline.behind(Lsn(50), now),
            Some((250, Duration::from_secs(6)))
        );
    }

    #[test]
    fn a_position_s_age_is_since_the_primary_first_reached_it() {
        let t0 = Instant::now();
        let timeline = Timeline::new(Duration::from_secs(1));
        timeline.record(at(t0, 0), Lsn(10));
        timeline.record(at(t0, 100), Lsn(20));
        let now = at(t0, 150);
        assert_eq!(timeline.age(Lsn(20), now), Duration::from_millis(50));
        assert_eq!(timeline.age(Lsn(15), now), Duration::from_millis(50));
        assert_eq!(timeline.age(Lsn(10), now), Duration::from_millis(150));
        // Not seen yet: as good as now.
        assert_eq!(timeline.age(Lsn(30), now), Duration::ZERO);
    }

    #[test]
    fn a_token_from_the_old_primary_s_lost_tail_needs_only_what_survived() {
        let t0 = Instant::now();
        let timeline = Timeline::new(Duration::from_secs(1));
        timeline.record(at(t0, 0), Lsn(100));
        timeline.record(at(t0, 10), Lsn(180));
        // The new primary took over at 150: 151..=180 existed only on the old one.
        timeline.restart(Some(Lsn(150)));
        assert_eq!(timeline.surviving(Lsn(170)), Lsn(150));
        assert_eq!(
            timeline.surviving(Lsn(120)),
            Lsn(120),
            "before the takeover"
        );
        assert_eq!(
            timeline.surviving(Lsn(200)),
            Lsn(200),
            "only the new timeline has it"
        );
        // Once the new timeline passes the token, the position exists again.
        timeline.record(at(t0, 20), Lsn(175));
        assert_eq!(timeline.surviving(Lsn(170)), Lsn(170));
        assert_eq!(timeline.surviving(Lsn(178)), Lsn(150));
        // The new timeline's own positions are measured alone.
        assert_eq!(
            timeline.behind(Lsn(175), at(t0, 30)),
            Some((0, Duration::ZERO))
        );
    }

    #[test]
    fn samples_are_bounded_ordered_and_spaced() {
        let t0 = Instant::now();
        let timeline = Timeline::new(Duration::ZERO);
        timeline.record(at(t0, 0), Lsn(10));
        // Backwards, or too soon after the last: not kept.
        timeline.record(at(t0, 5), Lsn(5));
        timeline.record(t0 + Duration::from_micros(100), Lsn(11));
        timeline.record(at(t0, 10), Lsn(12));
        timeline.record(at(t0, 20), Lsn(13));
        let samples = timeline.samples();
        assert_eq!(samples.len(), 2, "{samples:?}");
        assert_eq!(samples.back(), Some(&(at(t0, 20), Lsn(13))));
    }
}
