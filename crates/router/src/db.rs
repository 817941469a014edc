//! The router: pools for the primary and every replica, and the calls that name a route.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::PgConnection;

use crate::config::{Config, PoolConfig, RoutingConfig};
use crate::consistency::{Consistency, ReadContext, Reason};
use crate::error::DbError;
use crate::guard::{Reader, Writer};
use crate::lsn::Lsn;
use crate::monitor::History;
use crate::pool::{BoxFuture, Lease, Pool, discard_if_broken};
use crate::replica::{Replica, ReplicaStatus};
use crate::route::{self, Misses, ReplicaView, Route};

/// The primary's name in results, errors and metrics.
pub const PRIMARY: &str = "primary";

/// The read-only pool on the primary, as metrics name it.
pub(crate) const PRIMARY_READS: &str = "primary_reads";

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

/// A read's answer and, when the read selected it ([`node_position!`](crate::node_position)),
/// the answering node's WAL position.
#[derive(Clone, Debug)]
pub struct Positioned<T> {
    /// What the query returned.
    pub value: T,
    /// `None` when the statement returned no position (no rows, say): causal mode then asks
    /// the node after the read.
    pub position: Option<Lsn>,
}

impl<T> Positioned<T> {
    /// An answer without its node's position.
    pub fn unknown(value: T) -> Self {
        Self {
            value,
            position: None,
        }
    }
}

/// Routed access to one primary and its replicas. Share it (`Arc<Db>`) across requests.
#[derive(Debug)]
pub struct Db {
    primary: Pool,
    /// The primary again, but every transaction read-only: where reads fall back.
    primary_reads: Pool,
    replicas: Vec<Replica>,
    next_replica: AtomicUsize,
    fallback_reads: AtomicU64,
    pools: PoolConfig,
    routing: RoutingConfig,
    /// The primary's recent WAL positions, which replica lag is measured against.
    pub(crate) history: tokio::sync::Mutex<History>,
}

impl Db {
    /// Builds the pools without connecting: the caller starts, and can report, whatever is
    /// down. Replicas are trusted until the first check ([`Db::check_replicas`]).
    pub fn new(config: Config) -> Self {
        let Config {
            primary,
            replicas,
            pools,
            routing,
        } = config;
        let replicas = replicas
            .into_iter()
            .enumerate()
            .map(|(i, options)| {
                let name = format!("replica{}", i + 1);
                let pool = Pool::new(
                    &name,
                    options,
                    pools.replica_size,
                    pools.replica_acquire_timeout,
                    true,
                );
                Replica::new(name, pool)
            })
            .collect();
        Self {
            primary_reads: Pool::new(
                PRIMARY_READS,
                primary.clone(),
                pools.replica_size,
                pools.acquire_timeout,
                true,
            ),
            primary: Pool::new(
                PRIMARY,
                primary,
                pools.primary_size,
                pools.acquire_timeout,
                false,
            ),
            replicas,
            next_replica: AtomicUsize::new(0),
            fallback_reads: AtomicU64::new(0),
            history: tokio::sync::Mutex::new(History::new(routing.check_interval, routing.max_lag)),
            pools,
            routing,
        }
    }

    /// The routing limits this router was built with.
    pub fn routing(&self) -> &RoutingConfig {
        &self.routing
    }

    /// Whether any replica is configured (usable or not).
    pub fn has_replicas(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// A connection to the primary. Run the write on it, then hand its result to
    /// [`Writer::finish`], which records the write in `ctx` for this session's later reads.
    pub async fn writer<'a>(&self, ctx: &'a mut ReadContext) -> Result<Writer<'a>, DbError> {
        let conn = self
            .primary
            .acquire()
            .await
            .map_err(|e| DbError::from_sqlx(PRIMARY, e))?;
        Ok(Writer::new(ctx, conn))
    }

    /// Runs `query` on the primary and records the write in `ctx`, like [`Db::writer`].
    pub async fn write<T, F>(&self, ctx: &mut ReadContext, query: F) -> Result<T, DbError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let mut writer = self.writer(ctx).await?;
        let result = query(&mut writer).await;
        writer.finish(result).await
    }

    /// A connection to the node `ctx`'s consistency mode allows: a usable replica (in causal
    /// mode, one that has replayed the session's token, waiting up to
    /// [`RoutingConfig::causal_wait`]), or else the primary's read-only pool. Run the read on
    /// it, then hand its result to [`Reader::finish`].
    ///
    /// The query itself is bounded only by the server's `statement_timeout`: a replica cut off
    /// mid-query is noticed when the connection fails. [`Db::read`] bounds the query too and
    /// moves on to the next replica.
    pub async fn reader<'a>(&'a self, ctx: &'a mut ReadContext) -> Result<Reader<'a>, DbError> {
        let reason = match self.route(ctx) {
            Route::Primary(reason) => reason,
            Route::Replicas { order, must_replay } => {
                let started = Instant::now();
                let deadline = started + self.routing.causal_wait;
                let mut misses = Misses::default();
                for i in order {
                    let replica = &self.replicas[i];
                    let limit = self.pools.replica_read_timeout;
                    let ready = tokio::time::timeout(limit, ready(replica, must_replay, deadline))
                        .await
                        .unwrap_or_else(|_| Err(no_answer(limit)));
                    match ready {
                        Ok(Some(conn)) => {
                            let reason = match must_replay {
                                Some(_) => Reason::Replayed {
                                    waited_ms: elapsed_ms(started),
                                },
                                None => Reason::AnyReplica,
                            };
                            return Ok(Reader::new(self, ctx, conn, Some(replica), reason));
                        }
                        Ok(None) => misses.timed_out = true,
                        // A full pool means this instance is busy, not that the replica is
                        // down: excluding it would push every read onto the primary at the
                        // worst moment.
                        Err(sqlx::Error::PoolTimedOut) if replica.pool.is_full() => {
                            misses.busy = true;
                        }
                        Err(e) => match DbError::from_sqlx(&replica.name, e) {
                            DbError::Unavailable { source, .. } => {
                                replica.mark_unreachable(&source)
                            }
                            other => return Err(other),
                        },
                    }
                }
                misses.reason(elapsed_ms(started))
            }
        };
        self.primary_reader(ctx, reason).await
    }

    /// Runs `query` where [`Db::reader`] routes it, and says which node answered. A replica
    /// that fails or takes longer than [`PoolConfig::replica_read_timeout`] is marked
    /// unreachable and the query runs again on the next choice: `query` may run more than
    /// once, so it must only read.
    pub async fn read<T, F>(&self, ctx: &mut ReadContext, query: F) -> Result<Routed<T>, DbError>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        self.read_as(ctx, query, Positioned::unknown).await
    }

    /// [`Db::read`] for a query that selects its node's position
    /// ([`node_position!`](crate::node_position)), which spares causal mode its query after
    /// the read.
    pub async fn read_positioned<T, F>(
        &self,
        ctx: &mut ReadContext,
        query: F,
    ) -> Result<Routed<T>, DbError>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<Positioned<T>, sqlx::Error>>,
    {
        self.read_as(ctx, query, |answer| answer).await
    }

    /// [`Db::read_positioned`] for a read that follows the session's own write, in `ctx`, and
    /// can tell from its answer whether it saw that write (the write's rows are in it, say):
    /// `saw_write` says so.
    ///
    /// In causal mode, when the session's token is that write's own position, the read goes
    /// to a replica at once, without first asking whether the replica has replayed the
    /// token. An answer that shows the write was read from a snapshot taken after the
    /// write's commit was replayed, and so after everything the session had seen before it
    /// wrote (all of it earlier in the primary's WAL): the read is as causal as one that
    /// waited, for one round trip. An answer that does not show it is dropped, and the read
    /// is routed as [`Db::read_positioned`] routes it. Every other mode reads as that does.
    ///
    /// A write's rows prove it only if no other transaction could have written the same
    /// rows: compare every column, not only an id a sequence may hand out again.
    pub async fn read_after_write<T, F, S>(
        &self,
        ctx: &mut ReadContext,
        mut query: F,
        saw_write: S,
    ) -> Result<Routed<T>, DbError>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<Positioned<T>, sqlx::Error>>,
        S: Fn(&T) -> bool,
    {
        if let Some(replica) = self.unchecked_replica(ctx) {
            let limit = self.pools.replica_read_timeout;
            let attempt = tokio::time::timeout(limit, async {
                let mut conn = replica.pool.acquire().await?;
                let answer = query(&mut conn).await;
                let answer = discard_if_broken(&mut conn, answer)?;
                Ok((conn, answer))
            })
            .await
            .unwrap_or_else(|_| Err(no_answer(limit)));
            match attempt {
                Ok((conn, answer)) if saw_write(&answer.value) => {
                    let reason = Reason::Replayed { waited_ms: 0 };
                    let reader = Reader::new(self, ctx, conn, Some(replica), reason);
                    return reader.finish_positioned(Ok(answer)).await;
                }
                // The replica had not replayed the write yet: the usual route waits for one.
                Ok((conn, _)) => {
                    conn.give_back();
                    crate::metrics::causal_query(&replica.name, "unseen");
                }
                // Busy, not down: the usual route says so if it lasts.
                Err(sqlx::Error::PoolTimedOut) => {}
                Err(e) => match DbError::from_sqlx(&replica.name, e) {
                    DbError::Unavailable { source, .. } => replica.mark_unreachable(&source),
                    other => return Err(other),
                },
            }
        }
        self.read_positioned(ctx, query).await
    }

    /// The replica a [`Db::read_after_write`] may read without a replay check: in causal
    /// mode, when the session's token is its last write's position, the first replica its
    /// route would try, unless that one is already known to have replayed the token (then
    /// the usual route needs no check either).
    fn unchecked_replica(&self, ctx: &ReadContext) -> Option<&Replica> {
        let wrote = ctx.last_write?.lsn?;
        if ctx.mode != Consistency::Causal || ctx.token != Some(wrote) {
            return None;
        }
        match self.route(ctx) {
            Route::Replicas { order, .. } => order
                .first()
                .map(|&i| &self.replicas[i])
                .filter(|replica| replica.replay_lsn() < Some(wrote)),
            Route::Primary(_) => None,
        }
    }

    /// The read loop of [`Db::read`] and [`Db::read_positioned`]; `split` turns what `query`
    /// returns into the answer and its position.
    async fn read_as<A, T, F>(
        &self,
        ctx: &mut ReadContext,
        mut query: F,
        split: fn(A) -> Positioned<T>,
    ) -> Result<Routed<T>, DbError>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<A, sqlx::Error>>,
    {
        // Each failure marks its replica unusable, so every round routes around the last;
        // the rounds end at the primary, whose own failure is the caller's.
        for _ in 0..=self.replicas.len() {
            let mut reader = self.reader(ctx).await?;
            let Some(replica) = reader.replica() else {
                let result = query(&mut reader).await.map(split);
                return reader.finish_positioned(result).await;
            };
            let limit = self.pools.replica_read_timeout;
            let attempt = tokio::time::timeout(limit, async {
                let result = query(&mut reader).await.map(split);
                reader.finish_positioned(result).await
            })
            .await;
            match attempt {
                Ok(Err(DbError::Unavailable { source, .. })) => replica.mark_unreachable(&source),
                Err(_) => replica.mark_unreachable(&no_answer(limit)),
                Ok(done) => return done,
            }
        }
        // Only if checks kept marking failed replicas usable again meanwhile.
        let mut reader = self.primary_reader(ctx, Reason::NoUsableReplica).await?;
        let result = query(&mut reader).await.map(split);
        reader.finish_positioned(result).await
    }

    /// A connection from the primary's read-only pool, for a read routed there for `reason`.
    async fn primary_reader<'a>(
        &'a self,
        ctx: &'a mut ReadContext,
        reason: Reason,
    ) -> Result<Reader<'a>, DbError> {
        let conn = self
            .primary_reads
            .acquire()
            .await
            .map_err(|e| DbError::from_sqlx(PRIMARY, e))?;
        Ok(Reader::new(self, ctx, conn, None, reason))
    }

    /// Where a read in `ctx` may go, from the replicas' last known states.
    fn route(&self, ctx: &ReadContext) -> Route {
        let views: Vec<ReplicaView> = self.replicas.iter().map(Replica::view).collect();
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        route::route(
            ctx,
            &views,
            start,
            self.routing.sticky_window,
            unix_millis(),
        )
    }

    /// Runs `query` on the named node, whatever its health: for tools that inspect one node
    /// (a staleness probe, a console). Read-only like every read.
    pub async fn read_from<T, F>(&self, node: &str, query: F) -> Result<T, DbError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let pool = if node == PRIMARY {
            &self.primary_reads
        } else {
            self.replicas
                .iter()
                .find(|r| r.name == node)
                .map(|r| &r.pool)
                .ok_or_else(|| DbError::UnknownNode(node.to_owned()))?
        };
        pool.run(query)
            .await
            .map_err(|e| DbError::from_sqlx(node, e))
    }

    /// The names of every node: `primary`, then `replica1`...
    pub fn node_names(&self) -> Vec<String> {
        std::iter::once(PRIMARY.to_owned())
            .chain(self.replicas.iter().map(|r| r.name.clone()))
            .collect()
    }

    /// Every replica's last known state.
    pub fn replica_statuses(&self) -> Vec<ReplicaStatus> {
        self.replicas.iter().map(Replica::status).collect()
    }

    /// Reads that wanted a replica but were served by the primary, since start-up.
    pub fn fallback_reads(&self) -> u64 {
        self.fallback_reads.load(Ordering::Relaxed)
    }

    pub(crate) fn count_fallback(&self) {
        self.fallback_reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the primary answers a trivial query within the acquire timeout.
    pub async fn ping_primary(&self) -> Result<(), DbError> {
        self.primary
            .run(|c| Box::pin(sqlx::query("SELECT 1").execute(c)))
            .await
            .map(drop)
            .map_err(|e| DbError::from_sqlx(PRIMARY, e))
    }

    /// Sets `db_pool_connections` {pool, state} for every pool: cheap, so call it at scrape
    /// time and the figures are always current.
    pub fn record_pool_metrics(&self) {
        let pools = [
            (PRIMARY, &self.primary),
            (PRIMARY_READS, &self.primary_reads),
        ];
        let replicas = self.replicas.iter().map(|r| (r.name.as_str(), &r.pool));
        for (name, pool) in pools.into_iter().chain(replicas) {
            crate::metrics::pool(name, pool.size(), pool.idle());
        }
    }

    pub(crate) fn primary_reads(&self) -> &Pool {
        &self.primary_reads
    }

    pub(crate) fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Closes every pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.primary.close().await;
        self.primary_reads.close().await;
        for replica in &self.replicas {
            replica.pool.close().await;
        }
    }
}

/// A connection to `replica` once it has replayed `must_replay` (when set); `None` when
/// `deadline` passes first.
async fn ready(
    replica: &Replica,
    must_replay: Option<Lsn>,
    deadline: Instant,
) -> Result<Option<Lease>, sqlx::Error> {
    let mut conn = replica.pool.acquire().await?;
    let Some(lsn) = must_replay else {
        return Ok(Some(conn));
    };
    let replayed = wait_for_replay(replica, &mut conn, lsn, deadline).await;
    if discard_if_broken(&mut conn, replayed)? {
        return Ok(Some(conn));
    }
    conn.give_back();
    Ok(None)
}

/// A node that did not answer in time: it counts as unreachable, like a refused connection.
fn no_answer(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {} ms", limit.as_millis()),
    ))
}

/// Polls the replica until it has replayed `lsn`; false when `deadline` passes first.
async fn wait_for_replay(
    replica: &Replica,
    conn: &mut PgConnection,
    lsn: Lsn,
    deadline: Instant,
) -> Result<bool, sqlx::Error> {
    // The known figure only ever trails the real one, so if it suffices, no query is needed.
    if replica.replay_lsn().is_some_and(|seen| seen >= lsn) {
        return Ok(true);
    }
    // Poll soon, then back off: a replica that keeps up is seen at once, one that lags costs
    // few queries.
    let mut poll = Duration::from_millis(1);
    const MAX_POLL: Duration = Duration::from_millis(8);
    loop {
        crate::metrics::causal_query(&replica.name, "wait");
        if let Some(seen) = crate::lsn::replayed(&mut *conn).await? {
            replica.note_replayed(seen);
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

/// Whole milliseconds, saturating: for reports, where a `u128` is no use.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn elapsed_ms(since: Instant) -> u64 {
    millis(since.elapsed())
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub(crate) fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
