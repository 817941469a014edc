//! The router: pools for the primary and every replica, and the calls that name a route.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgConnection;

use crate::clock::{millis, unix_millis};
use crate::config::{Config, PoolConfig, RoutingConfig};
use crate::consistency::{ReadContext, Reason};
use crate::error::DbError;
use crate::guard::{PRIMARY, Reader, Routed, Writer};
use crate::monitor::Monitor;
use crate::pool::{BoxFuture, Pool};
use crate::replica::{Replica, ReplicaStatus};
use crate::route::{self, Misses, ReplicaView, Route};
use crate::timeline::Timeline;

/// The read-only pool on the primary, as metrics name it.
const PRIMARY_READS: &str = "primary_reads";

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
    timeline: Timeline,
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
            // Lags up to twice the limit measured: an excluded replica's lag is still shown.
            timeline: Timeline::new(routing.max_lag.saturating_mul(2)),
            pools,
            routing,
        }
    }

    /// A connection to the primary. Run the write on it, then hand its result to
    /// [`Writer::finish`], which records the write in `ctx` for this session's later reads.
    pub async fn writer<'a>(&'a self, ctx: &'a mut ReadContext) -> Result<Writer<'a>, DbError> {
        let conn = self
            .primary
            .acquire()
            .await
            .map_err(|e| DbError::from_sqlx(PRIMARY, e))?;
        Ok(Writer::new(ctx, conn, &self.timeline))
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
                    let ready = replica.ready(must_replay, deadline, &self.timeline);
                    let ready = tokio::time::timeout(limit, ready)
                        .await
                        .unwrap_or_else(|_| Err(no_answer(limit)));
                    match ready {
                        Ok(Some(conn)) => {
                            let reason = match must_replay {
                                Some(_) => Reason::Replayed {
                                    waited_ms: millis(started.elapsed()),
                                },
                                None => Reason::AnyReplica,
                            };
                            let timeline = &self.timeline;
                            return Ok(Reader::new(ctx, conn, Some(replica), reason, timeline));
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
                misses.reason(millis(started.elapsed()))
            }
        };
        self.primary_reader(ctx, reason).await
    }

    /// Runs `query` where [`Db::reader`] routes it, and says which node answered. A replica
    /// that fails or takes longer than [`PoolConfig::replica_read_timeout`] is marked
    /// unreachable and the query runs again on the next choice: `query` may run more than
    /// once, so it must only read.
    pub async fn read<T, F>(
        &self,
        ctx: &mut ReadContext,
        mut query: F,
    ) -> Result<Routed<T>, DbError>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        // Each failure marks its replica unusable, so every round routes around the last;
        // the rounds end at the primary, whose own failure is the caller's.
        for _ in 0..=self.replicas.len() {
            let mut reader = self.reader(ctx).await?;
            let Some(replica) = reader.replica() else {
                let result = query(&mut reader).await;
                return reader.finish(result).await;
            };
            let limit = self.pools.replica_read_timeout;
            let attempt = tokio::time::timeout(limit, async {
                let result = query(&mut reader).await;
                reader.finish(result).await
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
        let result = query(&mut reader).await;
        reader.finish(result).await
    }

    /// Runs `query` on the named node (`primary`, `replica1`...), whatever its health: for
    /// tools that inspect one node (a staleness probe, a console, replication views).
    /// Read-only like every read.
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

    /// Checks every replica once now: reachable, in recovery, and how far behind the
    /// primary; and sets the pools' `db_pool_connections` gauges. Each check is bounded, so
    /// a node that does not answer costs little.
    pub async fn check_replicas(&self) {
        crate::monitor::check(
            &self.primary_reads,
            &self.replicas,
            &self.timeline,
            &self.routing,
        )
        .await;
        let pools = [
            (PRIMARY, &self.primary),
            (PRIMARY_READS, &self.primary_reads),
        ];
        let replicas = self.replicas.iter().map(|r| (r.name.as_str(), &r.pool));
        for (name, pool) in pools.into_iter().chain(replicas) {
            crate::metrics::pool(name, pool.size(), pool.idle());
        }
    }

    /// Runs [`Db::check_replicas`] every [`RoutingConfig::check_interval`], from one interval
    /// from now until the returned [`Monitor`] is dropped. Call [`Db::check_replicas`] first
    /// to start from a known state.
    pub fn spawn_monitor(self: &Arc<Self>) -> Monitor {
        let db = Arc::clone(self);
        Monitor::spawn(self.routing.check_interval, move || {
            let db = Arc::clone(&db);
            async move { db.check_replicas().await }
        })
    }

    /// Every replica's last known state.
    pub fn replica_statuses(&self) -> Vec<ReplicaStatus> {
        self.replicas.iter().map(Replica::status).collect()
    }

    /// Reads that wanted a replica but were routed to the primary, since start-up.
    pub fn fallback_reads(&self) -> u64 {
        self.fallback_reads.load(Ordering::Relaxed)
    }

    /// Whether the primary answers a trivial query within the acquire timeout.
    pub async fn ping_primary(&self) -> Result<(), DbError> {
        self.primary
            .run(|c| Box::pin(sqlx::query("SELECT 1").execute(c)))
            .await
            .map(drop)
            .map_err(|e| DbError::from_sqlx(PRIMARY, e))
    }

    /// Closes every pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        self.primary.close().await;
        self.primary_reads.close().await;
        for replica in &self.replicas {
            replica.pool.close().await;
        }
    }

    /// A connection from the primary's read-only pool, for a read routed there for `reason`.
    async fn primary_reader<'a>(
        &'a self,
        ctx: &'a mut ReadContext,
        reason: Reason,
    ) -> Result<Reader<'a>, DbError> {
        if reason.is_fallback() {
            self.fallback_reads.fetch_add(1, Ordering::Relaxed);
        }
        let conn = self
            .primary_reads
            .acquire()
            .await
            .map_err(|e| DbError::from_sqlx(PRIMARY, e))?;
        Ok(Reader::new(ctx, conn, None, reason, &self.timeline))
    }

    /// Where a read in `ctx` may go, from the replicas' last known states.
    fn route(&self, ctx: &ReadContext) -> Route {
        let views: Vec<ReplicaView> = self.replicas.iter().map(Replica::view).collect();
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        let token_age = match ctx.token {
            Some(token) if ctx.tracks_reads() => self.timeline.age(token, Instant::now()),
            _ => Duration::ZERO,
        };
        route::route(ctx, &views, start, &self.routing, unix_millis(), token_age)
    }
}

/// A node that did not answer in time: it counts as unreachable, like a refused connection.
fn no_answer(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {} ms", limit.as_millis()),
    ))
}
