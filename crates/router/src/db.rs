//! The router: every node's pools, the leader, and the calls that name a route.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgConnection;
use sqlx::postgres::PgConnectOptions;

use crate::clock::{millis, unix_millis};
use crate::config::{Config, Nodes, PoolConfig, RoutingConfig};
use crate::consistency::{ReadContext, Reason};
use crate::error::DbError;
use crate::guard::{PRIMARY, Reader, Routed, Writer};
use crate::leader::Leader;
use crate::monitor::Monitor;
use crate::node::{Node, NodeStatus};
use crate::pool::{BoxFuture, Pool};
use crate::route::{self, Misses, ReplicaView, Route};
use crate::timeline::Timeline;

/// Routed access to a primary and its replicas, fixed or found in a cluster. Share it
/// (`Arc<Db>`) across requests.
#[derive(Debug)]
pub struct Db {
    /// A fixed primary first, then its replicas; or a cluster's nodes in order.
    nodes: Vec<Node>,
    leader: Arc<Leader>,
    next_replica: AtomicUsize,
    fallback_reads: AtomicU64,
    pools: PoolConfig,
    routing: RoutingConfig,
    /// The primary's recent WAL positions, which replica lag is measured against.
    timeline: Timeline,
}

impl Db {
    /// Builds the pools without connecting: the caller starts, and can report, whatever is
    /// down. A fixed primary's replicas are trusted until the first check
    /// ([`Db::check_replicas`]); a cluster has no primary until then.
    pub fn new(config: Config) -> Self {
        let Config {
            nodes,
            pools,
            routing,
        } = config;
        let reads = |name: &str, options: PgConnectOptions| {
            Pool::new(
                name,
                options,
                pools.replica_size,
                pools.replica_acquire_timeout,
                true,
            )
        };
        let writes = |name: &str, options: PgConnectOptions| {
            Pool::new(
                name,
                options,
                pools.primary_size,
                pools.acquire_timeout,
                false,
            )
        };
        let (nodes, leader) = match nodes {
            Nodes::Fixed { primary, replicas } => {
                let primary_reads = Pool::new(
                    "primary_reads",
                    primary.clone(),
                    pools.replica_size,
                    pools.acquire_timeout,
                    true,
                );
                let primary = Node::unchecked(
                    PRIMARY.to_owned(),
                    Some(writes(PRIMARY, primary)),
                    primary_reads,
                );
                let replicas = replicas.into_iter().enumerate().map(|(i, options)| {
                    let name = format!("replica{}", i + 1);
                    let pool = reads(&name, options);
                    Node::new(name, None, pool)
                });
                let nodes = std::iter::once(primary).chain(replicas).collect();
                (nodes, Leader::fixed())
            }
            Nodes::Cluster(options) => {
                let nodes = options
                    .into_iter()
                    .enumerate()
                    .map(|(i, options)| {
                        let name = format!("node{}", i + 1);
                        // See [`Nodes::Cluster`]: a timeout must never end a commit's wait.
                        let write_options = options.clone().options([("statement_timeout", "0")]);
                        let write = writes(&name, write_options);
                        let read = reads(&format!("{name}_reads"), options);
                        Node::unchecked(name, Some(write), read)
                    })
                    .collect();
                (nodes, Leader::elected())
            }
        };
        Self {
            nodes,
            leader: Arc::new(leader),
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
    ///
    /// In a cluster without a primary (a failover under way), it waits up to
    /// [`RoutingConfig::failover_wait`] for one; a primary it cannot reach it drops, and waits
    /// for the next.
    pub async fn writer<'a>(&'a self, ctx: &'a mut ReadContext) -> Result<Writer<'a>, DbError> {
        let deadline = Instant::now() + self.routing.failover_wait;
        loop {
            let (index, node) = self.leader_until(deadline).await?;
            let Some(pool) = &node.write else {
                return Err(no_primary());
            };
            match pool.acquire().await {
                Ok(conn) => {
                    let leader = (index, node);
                    return Ok(Writer::new(ctx, conn, leader, &self.leader, &self.timeline));
                }
                Err(e) => {
                    let error = DbError::from_sqlx(&node.name, e);
                    let lost = error.is_unavailable()
                        && !error.is_pool_timeout()
                        && self.leader.lose(index);
                    if !lost {
                        return Err(error);
                    }
                    tracing::warn!(node = %node.name, %error, "the primary is unreachable; waiting for the next");
                }
            }
        }
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
                    let replica = &self.nodes[i];
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
                            let node = (replica, true);
                            return Ok(Reader::new(ctx, conn, node, reason, timeline));
                        }
                        Ok(None) => misses.timed_out = true,
                        // A full pool means this instance is busy, not that the replica is
                        // down: excluding it would push every read onto the primary at the
                        // worst moment.
                        Err(sqlx::Error::PoolTimedOut) if replica.read.is_full() => {
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
        for _ in 0..self.nodes.len() {
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

    /// Runs `query` on the named node (`primary`, `replica1`... or `node1`...), whatever its
    /// health: for tools that inspect one node (a staleness probe, a console, replication
    /// views). Read-only like every read. In a cluster, `primary` names whichever node leads.
    pub async fn read_from<T, F>(&self, node: &str, query: F) -> Result<T, DbError>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let found = match self.nodes.iter().find(|n| n.name == node) {
            Some(found) => found,
            None if node == PRIMARY => self.leader_until(Instant::now()).await?.1,
            None => return Err(DbError::UnknownNode(node.to_owned())),
        };
        found
            .read
            .run(query)
            .await
            .map_err(|e| DbError::from_sqlx(&found.name, e))
    }

    /// Checks every node once: reachable, in recovery, and how far behind the primary; in a
    /// cluster, which node leads; and sets the pools' `db_pool_connections` gauges. Each
    /// check is bounded, so a node that does not answer costs little. Returns whether a
    /// primary is known.
    pub async fn check_replicas(&self) -> bool {
        let led =
            crate::monitor::check(&self.nodes, &self.leader, &self.timeline, &self.routing).await;
        for node in &self.nodes {
            let read = (node.read.name(), &node.read);
            for (name, pool) in node.write.iter().map(|w| (w.name(), w)).chain([read]) {
                crate::metrics::pool(name, pool.size(), pool.idle());
            }
        }
        crate::metrics::without_primary_now(self.leader.lost_for().unwrap_or_default());
        led
    }

    /// Runs [`Db::check_replicas`] every [`RoutingConfig::check_interval`], from one interval
    /// from now until the returned [`Monitor`] is dropped; in a cluster without a primary,
    /// every 100 ms at most, and at once when a write finds none. Call
    /// [`Db::check_replicas`] first to start from a known state.
    pub fn spawn_monitor(self: &Arc<Self>) -> Monitor {
        let db = Arc::clone(self);
        Monitor::spawn(
            self.routing.check_interval,
            Arc::clone(&self.leader),
            move || {
                let db = Arc::clone(&db);
                async move { db.check_replicas().await }
            },
        )
    }

    /// The last known state of every node but the one that takes writes, in configuration
    /// order: a fixed primary's replicas, or a cluster's other nodes with their roles.
    pub fn replica_statuses(&self) -> Vec<NodeStatus> {
        let leader = self.leader.get();
        let others = self
            .nodes
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != leader);
        others.map(|(_, node)| node.status()).collect()
    }

    /// The node that takes writes now: `primary` when fixed, in a cluster the node found
    /// leading, or `None` while there is none.
    pub fn primary(&self) -> Option<&str> {
        self.leader.get().map(|i| self.nodes[i].name.as_str())
    }

    /// Reads that wanted a replica but were routed to the primary, since start-up.
    pub fn fallback_reads(&self) -> u64 {
        self.fallback_reads.load(Ordering::Relaxed)
    }

    /// Whether the primary answers a trivial query within the acquire timeout (a cluster with
    /// none is unavailable at once).
    pub async fn ping_primary(&self) -> Result<(), DbError> {
        let (_, node) = self.leader_until(Instant::now()).await?;
        let pool = node.write.as_ref().ok_or_else(no_primary)?;
        pool.run(|c| Box::pin(sqlx::query("SELECT 1").execute(c)))
            .await
            .map(drop)
            .map_err(|e| DbError::from_sqlx(&node.name, e))
    }

    /// Closes every pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        for node in &self.nodes {
            if let Some(write) = &node.write {
                write.close().await;
            }
            node.read.close().await;
        }
    }

    /// The leader, waiting until `deadline` for one; unavailable after that.
    async fn leader_until(&self, deadline: Instant) -> Result<(usize, &Node), DbError> {
        let limit = deadline.saturating_duration_since(Instant::now());
        match self.leader.wait(limit).await {
            Some(i) => Ok((i, &self.nodes[i])),
            None => Err(no_primary()),
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
        let deadline = Instant::now() + self.routing.failover_wait;
        let (_, node) = self.leader_until(deadline).await?;
        let conn = node
            .read
            .acquire()
            .await
            .map_err(|e| DbError::from_sqlx(&node.name, e))?;
        Ok(Reader::new(
            ctx,
            conn,
            (node, false),
            reason,
            &self.timeline,
        ))
    }

    /// Where a read in `ctx` may go, from the replicas' last known states: every node but the
    /// leader (a fixed primary's replicas, a cluster's other nodes), each judged by its check.
    /// A causal token from an old primary's lost tail asks only for what survived.
    fn route(&self, ctx: &ReadContext) -> Route {
        let mut ctx = *ctx;
        ctx.token = ctx.token.map(|token| self.timeline.surviving(token));
        let leader = self.leader.get();
        let (index, views): (Vec<usize>, Vec<ReplicaView>) = self
            .nodes
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != leader)
            .map(|(i, node)| (i, node.view()))
            .unzip();
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        let token_age = match ctx.token {
            Some(token) if ctx.tracks_reads() => self.timeline.age(token, Instant::now()),
            _ => Duration::ZERO,
        };
        match route::route(&ctx, &views, start, &self.routing, unix_millis(), token_age) {
            Route::Replicas { order, must_replay } => Route::Replicas {
                order: order.into_iter().map(|i| index[i]).collect(),
                must_replay,
            },
            primary => primary,
        }
    }
}

/// No node takes writes: a cluster mid-failover, or down.
fn no_primary() -> DbError {
    DbError::from_sqlx(
        PRIMARY,
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            "no node is the primary",
        )),
    )
}

/// A node that did not answer in time: it counts as unreachable, like a refused connection.
fn no_answer(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {} ms", limit.as_millis()),
    ))
}
