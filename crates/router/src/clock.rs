//! Time as the router reports it: whole milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Whole milliseconds, saturating: for reports, where a `u128` is no use.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub(crate) fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
