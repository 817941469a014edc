//! Routed database access: one primary for writes, replicas for reads.
//!
//! Call sites name the route: [`Db::write`] always reaches the primary; [`Db::read`] reaches
//! a usable replica when the session's [`Consistency`] allows, and otherwise the primary
//! through a read-only pool, so a write sent down the read route fails loudly everywhere.

mod consistency;
mod error;
mod lsn;
pub mod monitor;
mod replica;
pub mod replication;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

pub use consistency::{Consistency, ReadContext, Reason, WriteMark};
pub use error::DbError;
pub use lsn::Lsn;
pub use replica::{ReplicaState, ReplicaStatus};

use crate::config::{DbConfig, RoutingConfig};
use crate::secret::SecretUrl;
use replica::Replica;

/// The query a route runs, given the connection the router chose.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub const PRIMARY: &str = "primary";

/// The read-only pool on the primary, as metrics name it.
const PRIMARY_READS: &str = "primary_reads";

/// Pooled connections idle this long are pinged before use; busier ones are trusted.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A read result and the node that answered it.
#[derive(Clone, Debug)]
pub struct Routed<T> {
    pub value: T,
    pub node: String,
    pub reason: Reason,
}

#[derive(Debug)]
pub struct Db {
    primary: PgPool,
    /// The primary again, but every transaction read-only: where reads fall back.
    primary_reads: PgPool,
    replicas: Vec<Replica>,
    next_replica: AtomicUsize,
    fallback_reads: AtomicU64,
    routing: RoutingConfig,
    replica_read_timeout: Duration,
}

impl Db {
    /// Builds the pools without connecting: the app starts, and reports, whatever is down.
    pub fn new(config: &DbConfig, routing: RoutingConfig, instance: &str) -> Result<Self, DbError> {
        let app_name = format!("rwsplit {instance}");
        let pool = |url: &SecretUrl, size: u32, acquire: Duration, read_only: bool| {
            let mut options: PgConnectOptions =
                url.expose().parse().map_err(|source| DbError::Config {
                    url: url.redacted(),
                    source,
                })?;
            let statement_timeout = config.statement_timeout.as_millis().to_string();
            let mut settings = vec![("statement_timeout", statement_timeout.as_str())];
            if read_only {
                settings.push(("default_transaction_read_only", "on"));
            }
            options = options.application_name(&app_name).options(settings);
            Ok::<_, DbError>(
                PgPoolOptions::new()
                    .max_connections(size)
                    .acquire_timeout(acquire)
                    .idle_timeout(Duration::from_secs(60))
                    // sqlx pings on every acquire by default: a round trip per query. Only a
                    // connection that sat idle (through a restart, say) is worth checking.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for >= PING_IF_IDLE_FOR {
                                conn.ping().await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_lazy_with(options),
            )
        };
        let replicas = config
            .replica_urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let pool = pool(
                    url,
                    config.replica_pool_size,
                    config.replica_acquire_timeout,
                    true,
                )?;
                Ok(Replica::new(format!("replica{}", i + 1), pool))
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok(Self {
            primary: pool(
                &config.primary_url,
                config.primary_pool_size,
                config.acquire_timeout,
                false,
            )?,
            primary_reads: pool(
                &config.primary_url,
                config.replica_pool_size,
                config.acquire_timeout,
                true,
            )?,
            replicas,
            next_replica: AtomicUsize::new(0),
            fallback_reads: AtomicU64::new(0),
            routing,
            replica_read_timeout: config.replica_read_timeout,
        })
    }

    pub fn routing(&self) -> &RoutingConfig {
        &self.routing
    }

    pub fn has_replicas(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// Applies `migrations/` on the primary as the migration role. sqlx holds an advisory lock
    /// while it runs, so instances that start together apply each migration once.
    pub async fn migrate(url: &SecretUrl) -> Result<(), sqlx::migrate::MigrateError> {
        let options: PgConnectOptions = url.expose().parse()?;
        let mut conn = PgConnection::connect_with(&options).await?;
        let result = sqlx::migrate!("./migrations").run(&mut conn).await;
        // The connection is dropped either way; a failed close changes nothing.
        let _ = conn.close().await;
        result
    }

    /// Runs `query` on the primary and records the write in `ctx`, so this session's later
    /// reads can be routed to see it.
    pub async fn write<T, F>(&self, ctx: &mut ReadContext, query: F) -> Result<T, DbError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let (value, lsn) = on_primary(PRIMARY, &self.primary, query, ctx.track_lsn).await?;
        ctx.last_write = Some(WriteMark {
            at_ms: unix_millis(),
            lsn,
        });
        if let Some(lsn) = lsn {
            ctx.observe(lsn);
        }
        Ok(value)
    }

    /// Runs `query` on the node the session's consistency mode allows, and says which. In
    /// causal mode the answering node's position advances the session's token in `ctx`.
    pub async fn read<T, F>(
        &self,
        ctx: &mut ReadContext,
        mut query: F,
    ) -> Result<Routed<T>, DbError>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let reason = match self.replica_read(ctx, &mut query).await? {
            Ok((routed, seen)) => {
                crate::observe::read(&routed.node, ctx.mode, routed.reason);
                if let Some(lsn) = seen {
                    ctx.observe(lsn);
                }
                return Ok(routed);
            }
            Err(reason) => reason,
        };
        crate::observe::read(PRIMARY, ctx.mode, reason);
        if reason.is_fallback() {
            self.fallback_reads.fetch_add(1, Ordering::Relaxed);
        }
        // Everything a primary read saw had committed by the primary's position after it.
        let observe = ctx.tracks_reads();
        if observe {
            crate::observe::causal_query(PRIMARY, "observe");
        }
        let (value, seen) =
            on_primary(PRIMARY_READS, &self.primary_reads, &mut query, observe).await?;
        if let Some(lsn) = seen {
            ctx.observe(lsn);
        }
        Ok(Routed {
            value,
            node: PRIMARY.to_owned(),
            reason,
        })
    }

    /// Tries the replicas the context allows, returning the read and, in causal mode, the
    /// replica's position after it; `Ok(Err(reason))` says why the primary must answer.
    async fn replica_read<T, F>(
        &self,
        ctx: &ReadContext,
        query: &mut F,
    ) -> Result<Result<(Routed<T>, Option<Lsn>), Reason>, DbError>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        if self.replicas.is_empty() {
            return Ok(Err(Reason::NoReplicas));
        }
        if ctx.mode != Consistency::Eventual && !ctx.known {
            return Ok(Err(Reason::SessionUnavailable));
        }
        let last_write = ctx.last_write.unwrap_or_default();
        if ctx.mode == Consistency::Sticky {
            let since = u64::try_from(unix_millis() - last_write.at_ms).unwrap_or(0);
            let window = u64::try_from(self.routing.sticky_window.as_millis()).unwrap_or(u64::MAX);
            if since < window {
                return Ok(Err(Reason::StickyWindow {
                    left_ms: window - since,
                }));
            }
        }
        let must_replay = match ctx.mode {
            Consistency::Causal => ctx.token,
            _ => None,
        };
        let observe = ctx.tracks_reads();
        let started = Instant::now();
        let deadline = started + self.routing.causal_wait;
        let mut timed_out = false;
        let mut busy = false;
        for replica in self.usable_replicas() {
            let result = async {
                let mut conn = acquire(&replica.name, &replica.pool).await?;
                let outcome = tokio::time::timeout(self.replica_read_timeout, async {
                    if let Some(lsn) = must_replay
                        && !wait_for_replay(replica, &mut conn, lsn, deadline).await?
                    {
                        return Ok(None);
                    }
                    let value = query(&mut conn).await?;
                    // The read's snapshot is at most what the replica had replayed after it:
                    // later reads must see at least that much, or rows it showed could vanish.
                    let seen = if observe {
                        crate::observe::causal_query(&replica.name, "observe");
                        replay_lsn(&mut conn).await?
                    } else {
                        None
                    };
                    Ok(Some((value, seen)))
                })
                .await
                .unwrap_or_else(|_| Err(no_answer(self.replica_read_timeout)));
                discard_if_broken(&mut conn, outcome)
            }
            .await;
            match result {
                Ok(Some((value, seen))) => {
                    let reason = match must_replay {
                        Some(_) => Reason::Replayed {
                            waited_ms: elapsed_ms(started),
                        },
                        None => Reason::AnyReplica,
                    };
                    if let Some(lsn) = seen {
                        replica.note_replayed(lsn);
                    }
                    let routed = Routed {
                        value,
                        node: replica.name.clone(),
                        reason,
                    };
                    return Ok(Ok((routed, seen)));
                }
                Ok(None) => timed_out = true,
                // A full pool means this instance is busy, not that the replica is down:
                // excluding it would push every read onto the primary at the worst moment.
                Err(sqlx::Error::PoolTimedOut) if is_full(&replica.pool) => busy = true,
                Err(e) => match DbError::from_sqlx(&replica.name, e) {
                    DbError::Unavailable { source, .. } => replica.mark_unreachable(&source),
                    other => return Err(other),
                },
            }
        }
        Ok(Err(if timed_out {
            Reason::CausalTimeout {
                waited_ms: elapsed_ms(started),
            }
        } else if busy {
            Reason::ReplicasBusy
        } else {
            Reason::NoUsableReplica
        }))
    }

    /// The usable replicas, starting from the next one in round-robin order.
    fn usable_replicas(&self) -> impl Iterator<Item = &Replica> {
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        let n = self.replicas.len();
        (0..n)
            .map(move |i| &self.replicas[(start + i) % n])
            .filter(|r| r.is_usable())
    }

    /// Runs `query` on the named node, whatever its health: for tools that inspect one node
    /// (the probe's visibility poll, the console). Read-only like every read.
    pub async fn read_from<T, F>(&self, node: &str, query: F) -> Result<T, DbError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let (pool_name, pool) = if node == PRIMARY {
            (PRIMARY_READS, &self.primary_reads)
        } else {
            self.replicas
                .iter()
                .find(|r| r.name == node)
                .map(|r| (r.name.as_str(), &r.pool))
                .ok_or_else(|| DbError::UnknownNode(node.to_owned()))?
        };
        run_on(pool_name, pool, query)
            .await
            .map_err(|e| DbError::from_sqlx(node, e))
    }

    /// The names of every node: `primary`, then `replica1`...
    pub fn node_names(&self) -> Vec<String> {
        std::iter::once(PRIMARY.to_owned())
            .chain(self.replicas.iter().map(|r| r.name.clone()))
            .collect()
    }

    /// (pool, open connections, idle connections) for every pool.
    pub fn pool_sizes(&self) -> Vec<(String, u32, usize)> {
        let pools = [
            ("primary", &self.primary),
            ("primary_reads", &self.primary_reads),
        ];
        pools
            .into_iter()
            .map(|(name, pool)| (name.to_owned(), pool))
            .chain(self.replicas.iter().map(|r| (r.name.clone(), &r.pool)))
            .map(|(name, pool)| (name, pool.size(), pool.num_idle()))
            .collect()
    }

    pub fn replica_statuses(&self) -> Vec<ReplicaStatus> {
        self.replicas.iter().map(Replica::status).collect()
    }

    /// Reads that wanted a replica but were served by the primary, since start-up.
    pub fn fallback_reads(&self) -> u64 {
        self.fallback_reads.load(Ordering::Relaxed)
    }

    /// Whether the primary answers a trivial query within the acquire timeout.
    pub async fn ping_primary(&self) -> Result<(), DbError> {
        run_on(PRIMARY, &self.primary, |c| {
            Box::pin(sqlx::query("SELECT 1").execute(c))
        })
        .await
        .map(drop)
        .map_err(|e| DbError::from_sqlx(PRIMARY, e))
    }

    pub(crate) fn primary_reads(&self) -> &PgPool {
        &self.primary_reads
    }

    pub(crate) fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    pub async fn close(&self) {
        self.primary.close().await;
        self.primary_reads.close().await;
        for replica in &self.replicas {
            replica.pool.close().await;
        }
    }
}

/// Every connection the pool may open is open: a timeout then means they were all in use.
/// (Idle ones are not excluded: one may come back between the timeout and this check.) A
/// replica that froze with all connections open is caught by the monitor's own timed check.
pub(crate) fn is_full(pool: &PgPool) -> bool {
    pool.size() >= pool.options().get_max_connections()
}

/// Keeps a connection that failed as unreachable out of the pool. A server that shuts down
/// or restarts answers its idle connections' next query with an error (57P01) and closes
/// them, and sqlx would pool such a connection again: under load, where connections never
/// sit idle long enough to be pinged, request after request would fail on it.
fn discard_if_broken<T>(
    conn: &mut PoolConnection<Postgres>,
    result: Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    if let Err(e) = &result
        && DbError::is_unavailable_error(e)
    {
        conn.close_on_drop();
    }
    result
}

/// A node that did not answer in time: it counts as unreachable, like a refused connection.
fn no_answer(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {} ms", limit.as_millis()),
    ))
}

/// Runs `query` on the primary through `pool`, then, if `with_lsn`, reads the primary's WAL
/// position on the same connection: after a commit, or after a read, at or past all it saw.
async fn on_primary<T, F>(
    pool_name: &str,
    pool: &PgPool,
    query: F,
    with_lsn: bool,
) -> Result<(T, Option<Lsn>), DbError>
where
    F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
{
    let failed = |e| DbError::from_sqlx(PRIMARY, e);
    let mut conn = acquire(pool_name, pool).await.map_err(failed)?;
    let value = query(&mut conn).await;
    let value = discard_if_broken(&mut conn, value).map_err(failed)?;
    if !with_lsn {
        return Ok((value, None));
    }
    let lsn = lsn::current(&mut conn).await;
    Ok((
        value,
        Some(discard_if_broken(&mut conn, lsn).map_err(failed)?),
    ))
}

/// Runs `query` on a connection from `pool`; a connection it finds broken is not pooled again.
pub(crate) async fn run_on<T, F>(pool_name: &str, pool: &PgPool, query: F) -> Result<T, sqlx::Error>
where
    F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
{
    let mut conn = acquire(pool_name, pool).await?;
    let result = query(&mut conn).await;
    discard_if_broken(&mut conn, result)
}

/// Acquires a connection, counting the callers waiting for one in `db_pool_waiting`.
async fn acquire(pool_name: &str, pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    let _waiting = crate::observe::Waiting::new(pool_name);
    pool.acquire().await
}

/// Polls the replica until it has replayed `lsn`; false when `deadline` passes first.
async fn wait_for_replay(
    replica: &Replica,
    conn: &mut PgConnection,
    lsn: Lsn,
    deadline: Instant,
) -> Result<bool, sqlx::Error> {
    // The monitor's figure only ever trails the real one, so if it suffices, no query is needed.
    if replica.replay_lsn().is_some_and(|seen| seen >= lsn) {
        return Ok(true);
    }
    // Poll soon, then back off: a replica that keeps up is seen at once, one that lags costs
    // few queries.
    let mut poll = Duration::from_millis(1);
    const MAX_POLL: Duration = Duration::from_millis(8);
    loop {
        crate::observe::causal_query(&replica.name, "wait");
        if let Some(seen) = replay_lsn(&mut *conn).await? {
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

/// How far a replica has replayed; `None` on a node that is not in recovery.
async fn replay_lsn(conn: &mut PgConnection) -> Result<Option<Lsn>, sqlx::Error> {
    let text: Option<String> = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text")
        .fetch_one(conn)
        .await?;
    text.map(|t| t.parse())
        .transpose()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
