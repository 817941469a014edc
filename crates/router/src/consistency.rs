//! Consistency modes: how far a read may trail this session's own writes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// How far a session's reads may trail what it has written and seen.
pub enum Consistency {
    /// Any usable replica, however far behind this session's writes.
    Eventual,
    /// The primary for a window after this session's last write (Rails' DatabaseSelector).
    Sticky,
    /// A replica only once it has replayed everything this session has seen (its causal
    /// token): read-your-writes and monotonic reads, across instances.
    Causal,
}

impl Consistency {
    /// Every mode, weakest first.
    pub const ALL: [Consistency; 3] = [Self::Eventual, Self::Sticky, Self::Causal];

    /// The mode's name: `eventual`, `sticky` or `causal`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eventual => "eventual",
            Self::Sticky => "sticky",
            Self::Causal => "causal",
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Consistency {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not one of eventual, sticky, causal"))
    }
}

/// What a session remembers of its last write. It lives in the session (Redis), so every
/// web instance routes the session's next read the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteMark {
    /// Milliseconds since the Unix epoch, by the writing instance's clock.
    pub at_ms: i64,
    /// The primary's WAL position after the commit; recorded in causal mode only.
    pub lsn: Option<Lsn>,
}

/// The routing context of one session: its mode, its last write and its causal token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadContext {
    /// How this session's reads are routed.
    pub mode: Consistency,
    /// This session's last write, if it wrote.
    pub last_write: Option<WriteMark>,
    /// The highest WAL position this session has observed: after its writes' commits, and
    /// what each node that answered its reads had reached. Causal reads go only to a replica
    /// that has replayed this far, so the session never sees time go backwards. It only
    /// moves forward ([`ReadContext::observe`]).
    pub token: Option<Lsn>,
    /// False when the session store could not be read: sticky and causal then cannot know
    /// the last write, and read the primary rather than risk a stale replica.
    pub known: bool,
    /// Whether writes record the primary's LSN after commit: causal mode needs it, and the
    /// staleness probe reports it in every mode. It costs one query per write.
    pub track_lsn: bool,
}

impl ReadContext {
    /// A known session's context: in causal mode, its token starts at its last write.
    pub fn new(mode: Consistency, last_write: Option<WriteMark>) -> Self {
        Self {
            mode,
            last_write,
            token: last_write.and_then(|w| w.lsn),
            known: true,
            track_lsn: mode == Consistency::Causal,
        }
    }

    /// The context of a session whose state could not be loaded.
    pub fn unknown(mode: Consistency) -> Self {
        Self {
            known: false,
            ..Self::new(mode, None)
        }
    }

    /// Advances the causal token to `lsn` if that is further; never moves it back.
    pub fn observe(&mut self, lsn: Lsn) {
        self.token = self.token.max(Some(lsn));
    }

    /// Whether reads in this context advance the token: only causal mode routes by it.
    pub fn tracks_reads(&self) -> bool {
        self.mode == Consistency::Causal
    }
}

/// Why a read went where it went, in words the page shows after the node's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Eventual mode, or no write of this session to respect.
    AnyReplica,
    /// Causal mode: the replica had replayed everything the session has seen.
    Replayed {
        /// How long the read waited for the replica to replay.
        waited_ms: u64,
    },
    /// Sticky mode: this session wrote recently.
    StickyWindow {
        /// How long the window has left.
        left_ms: u64,
    },
    /// Causal mode: no replica reached the session's token in time.
    CausalTimeout {
        /// How long the read waited before giving up on the replicas.
        waited_ms: u64,
    },
    /// Causal mode: no usable replica was predicted to reach the session's token within the
    /// wait, so the read did not wait.
    ReplicasBehind {
        /// How long the nearest replica was expected to take to get there.
        behind_ms: u64,
    },
    /// Sticky or causal, but the session store was unavailable.
    SessionUnavailable,
    /// Every replica is down, lagging or excluded.
    NoUsableReplica,
    /// Every usable replica's pool was fully in use for the whole acquire timeout.
    ReplicasBusy,
    /// The deployment has no replicas.
    NoReplicas,
}

impl Reason {
    /// A stable label for metrics: the `kind` the JSON carries.
    pub fn kind(self) -> &'static str {
        match self {
            Self::AnyReplica => "any_replica",
            Self::Replayed { .. } => "replayed",
            Self::StickyWindow { .. } => "sticky_window",
            Self::CausalTimeout { .. } => "causal_timeout",
            Self::ReplicasBehind { .. } => "replicas_behind",
            Self::SessionUnavailable => "session_unavailable",
            Self::NoUsableReplica => "no_usable_replica",
            Self::ReplicasBusy => "replicas_busy",
            Self::NoReplicas => "no_replicas",
        }
    }

    /// How long causal mode waited for a replica, when it did.
    pub fn waited_ms(self) -> Option<u64> {
        match self {
            Self::Replayed { waited_ms } | Self::CausalTimeout { waited_ms } => Some(waited_ms),
            _ => None,
        }
    }

    /// Whether a replica answered.
    pub fn on_replica(self) -> bool {
        matches!(self, Self::AnyReplica | Self::Replayed { .. })
    }

    /// The primary served a read a replica should have: not a sticky window, which reads the
    /// primary by design, nor a deployment without replicas.
    pub fn is_fallback(self) -> bool {
        !self.on_replica() && !matches!(self, Self::StickyWindow { .. } | Self::NoReplicas)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |ms: u64| Duration::from_millis(ms).as_secs_f64();
        match *self {
            Self::AnyReplica => f.write_str("a usable replica, chosen round-robin"),
            Self::Replayed { waited_ms: 0 } => {
                f.write_str("it had replayed all your session has seen")
            }
            Self::Replayed { waited_ms } => {
                write!(
                    f,
                    "it had replayed all your session has seen after {waited_ms} ms"
                )
            }
            Self::StickyWindow { left_ms } => {
                write!(f, "sticky window, {:.1} s left", secs(left_ms))
            }
            Self::CausalTimeout { waited_ms } => {
                write!(f, "no replica had caught up within {waited_ms} ms")
            }
            Self::ReplicasBehind { behind_ms } => write!(
                f,
                "the nearest replica is about {behind_ms} ms behind your session, \
                 so the primary answered without waiting"
            ),
            Self::SessionUnavailable => {
                f.write_str("the session store is unavailable, so your last write is unknown")
            }
            Self::NoUsableReplica => f.write_str("no replica is usable right now"),
            Self::ReplicasBusy => f.write_str("every replica connection was in use"),
            Self::NoReplicas => f.write_str("no replicas are configured"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for mode in Consistency::ALL {
            assert_eq!(mode.as_str().parse::<Consistency>(), Ok(mode));
        }
        assert!(
            "bogus"
                .parse::<Consistency>()
                .is_err_and(|e| e.contains("eventual"))
        );
    }

    #[test]
    fn reasons_read_as_sentences() {
        assert_eq!(
            Reason::StickyWindow { left_ms: 1200 }.to_string(),
            "sticky window, 1.2 s left"
        );
        assert_eq!(
            Reason::CausalTimeout { waited_ms: 50 }.to_string(),
            "no replica had caught up within 50 ms"
        );
        assert_eq!(
            Reason::ReplicasBehind { behind_ms: 480 }.to_string(),
            "the nearest replica is about 480 ms behind your session, \
             so the primary answered without waiting"
        );
    }

    #[test]
    fn the_token_only_moves_forward() {
        let mut ctx = ReadContext::new(Consistency::Causal, None);
        assert_eq!(ctx.token, None);
        ctx.observe(Lsn(20));
        ctx.observe(Lsn(10));
        assert_eq!(ctx.token, Some(Lsn(20)));
        let from_write = ReadContext::new(
            Consistency::Causal,
            Some(WriteMark {
                at_ms: 1,
                lsn: Some(Lsn(7)),
            }),
        );
        assert_eq!(from_write.token, Some(Lsn(7)));
        assert!(!ReadContext::unknown(Consistency::Causal).known);
    }

    #[test]
    fn write_marks_survive_the_session_store() -> Result<(), serde_json::Error> {
        let mark = WriteMark {
            at_ms: 1,
            lsn: Some(Lsn(0x1_0000_0010)),
        };
        let json = serde_json::to_string(&mark)?;
        assert_eq!(json, r#"{"at_ms":1,"lsn":"1/10"}"#);
        assert_eq!(serde_json::from_str::<WriteMark>(&json)?, mark);
        Ok(())
    }
}
