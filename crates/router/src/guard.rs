//! Routed connections: take one, run queries on it, hand the result to `finish`, which
//! records what the session must remember.

use std::ops::{Deref, DerefMut};
use std::time::Instant;

use sqlx::PgConnection;

use crate::consistency::{ReadContext, Reason, WriteMark};
use crate::error::DbError;
use crate::leader::Leader;
use crate::node::Node;
use crate::pool::{Lease, discard_if_broken};
use crate::timeline::Timeline;

/// The fixed primary's name in results, errors and metrics.
pub const PRIMARY: &str = "primary";

/// SQLSTATE read_only_sql_transaction: the node a write reached is a replica now.
const READ_ONLY: &str = "25006";

/// A read's result, the node that answered it and why that node.
#[derive(Clone, Debug)]
pub struct Routed<T> {
    /// What the query returned.
    pub value: T,
    /// `primary`, `replica1`...
    pub node: String,
    /// Why this node answered.
    pub reason: Reason,
}

impl<T> Routed<T> {
    /// The same read with its value converted (shared, say), keeping who answered and why.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Routed<U> {
        Routed {
            value: f(self.value),
            node: self.node,
            reason: self.reason,
        }
    }
}

/// A connection to the primary, from [`Db::writer`](crate::Db::writer). Derefs to
/// [`PgConnection`].
#[derive(Debug)]
#[must_use = "hand the write's result to `finish`, or the session forgets the write"]
pub struct Writer<'a> {
    ctx: &'a mut ReadContext,
    conn: Lease,
    /// The leader's index and node.
    node: (usize, &'a Node),
    leader: &'a Leader,
    timeline: &'a Timeline,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(
        ctx: &'a mut ReadContext,
        conn: Lease,
        node: (usize, &'a Node),
        leader: &'a Leader,
        timeline: &'a Timeline,
    ) -> Self {
        Self {
            ctx,
            conn,
            node,
            leader,
            timeline,
        }
    }

    /// Takes the write's result: on success, records the write in the session's context (and,
    /// when it tracks positions, the primary's WAL position after the commit, which advances
    /// its causal token). A connection that failed as unreachable is not pooled again.
    ///
    /// In a cluster, a node that failed so, or answered that it is read-only, takes no more
    /// writes until a check finds it leading: the error is [`DbError::Unavailable`], and the
    /// next write waits for the new primary. Nothing ran on a read-only node, so such a write
    /// is safe to retry; after a broken connection, only an idempotent one is.
    pub async fn finish<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, DbError> {
        let (index, node) = self.node;
        let leader = self.leader;
        let failed = |e: sqlx::Error| {
            let error = match DbError::from_sqlx(&node.name, e) {
                DbError::Query { node, source } if is_read_only(&source) => {
                    DbError::Unavailable { node, source }
                }
                other => other,
            };
            if error.is_unavailable() && !error.is_pool_timeout() && leader.lose(index) {
                tracing::warn!(node = %node.name, %error, "the primary stopped taking writes; waiting for the next");
            }
            error
        };
        let value = discard_if_broken(&mut self.conn, result).map_err(failed)?;
        let lsn = if self.ctx.track_lsn {
            let lsn = crate::lsn::current(&mut self.conn).await;
            Some(discard_if_broken(&mut self.conn, lsn).map_err(failed)?)
        } else {
            None
        };
        self.ctx.last_write = Some(WriteMark {
            at_ms: crate::clock::unix_millis(),
            lsn,
        });
        if let Some(lsn) = lsn {
            self.timeline.record(Instant::now(), lsn);
            self.ctx.observe(lsn);
        }
        self.conn.give_back();
        Ok(value)
    }
}

impl Deref for Writer<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for Writer<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// A connection to the node a read was routed to, from [`Db::reader`](crate::Db::reader).
/// Derefs to [`PgConnection`]; every transaction on it is read-only.
#[derive(Debug)]
#[must_use = "hand the read's result to `finish`, which says where it ran"]
pub struct Reader<'a> {
    ctx: &'a mut ReadContext,
    conn: Lease,
    node: &'a Node,
    /// Whether `node` answers as a replica, not as the primary.
    on_replica: bool,
    reason: Reason,
    timeline: &'a Timeline,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(
        ctx: &'a mut ReadContext,
        conn: Lease,
        (node, on_replica): (&'a Node, bool),
        reason: Reason,
        timeline: &'a Timeline,
    ) -> Self {
        Self {
            ctx,
            conn,
            node,
            on_replica,
            reason,
            timeline,
        }
    }

    /// `primary`, `replica1`... or, in a cluster, `node1`...
    pub fn node(&self) -> &str {
        &self.node.name
    }

    /// Why the read was routed here.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// The replica answering, or `None` on the primary.
    pub(crate) fn replica(&self) -> Option<&'a Node> {
        self.on_replica.then_some(self.node)
    }

    /// Takes the read's result and says where it ran. In causal mode it first takes the
    /// node's WAL position, which covers everything the read saw, into the session's token:
    /// later reads then never see less.
    pub async fn finish<T>(mut self, result: Result<T, sqlx::Error>) -> Result<Routed<T>, DbError> {
        let replica = self.replica();
        let node = self.node.name.as_str();
        let failed = |e| DbError::from_sqlx(node, e);
        let value = discard_if_broken(&mut self.conn, result).map_err(failed)?;
        if self.ctx.tracks_reads() {
            // Asked after the read, so the position is at or past the read's snapshot.
            crate::metrics::causal_query(node, "observe");
            let seen = match replica {
                Some(_) => crate::lsn::replayed(&mut self.conn).await,
                None => crate::lsn::current(&mut self.conn).await.map(Some),
            };
            if let Some(lsn) = discard_if_broken(&mut self.conn, seen).map_err(failed)? {
                match replica {
                    Some(replica) => replica.note_replayed(lsn, self.timeline),
                    None => self.timeline.record(Instant::now(), lsn),
                }
                self.ctx.observe(lsn);
            }
        }
        crate::metrics::read(node, self.ctx.mode, self.reason);
        self.conn.give_back();
        Ok(Routed {
            value,
            node: node.to_owned(),
            reason: self.reason,
        })
    }
}

fn is_read_only(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(READ_ONLY))
}

impl Deref for Reader<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for Reader<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}
