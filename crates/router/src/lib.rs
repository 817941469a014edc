//! Read/write routing over one PostgreSQL primary and its streaming replicas, fixed or found
//! among a high-availability cluster's nodes.
//!
//! Every query names its route. [`Db::write`] and [`Db::writer`] always reach the primary;
//! [`Db::read`] and [`Db::reader`] reach a usable replica when the session's [`Consistency`]
//! allows, and otherwise the primary, through a read-only pool: a write sent down the read
//! route fails loudly on every node.
//!
//! - Replicas are checked in the background ([`Db::spawn_monitor`]): one that is down, is not
//!   in recovery, or lags past [`RoutingConfig::max_lag`] gets no reads until a check passes.
//! - A session's routing state lives in a [`ReadContext`] the caller keeps between requests
//!   (in its session store): its last write and its causal token, the highest WAL position
//!   it has observed. [`Consistency::Causal`] reads go only to a replica that has replayed
//!   that far: read-your-writes and monotonic reads, across any number of web instances.
//!   They wait only for a replica expected to get there within [`RoutingConfig::causal_wait`],
//!   judged by how far behind in time each replica was last seen; with none, the primary
//!   answers at once ([`Reason::ReplicasBehind`]).
//! - Every read says where it went and why ([`Routed`], [`Reason`]); operators see each
//!   replica's state ([`Db::replica_statuses`]).
//! - Given every node of a cluster whose roles an HA manager such as Patroni changes
//!   ([`Config::cluster`]), the monitor finds the primary at every check (the node out of
//!   recovery on the newest timeline; none while two share it) and writes follow it. A write
//!   that finds no primary, or finds its node gone or read-only, waits up to
//!   [`RoutingConfig::failover_wait`] for the next one.
//! - Errors say whether the node was unreachable (retry later) or the query failed
//!   ([`DbError`]).
//! - Metrics go through the [`metrics`](https://docs.rs/metrics) facade; install any
//!   exporter to see them: `db_reads_total` {node, mode, reason}, `causal_queries_total`
//!   {node, kind}, `replica_usable`, `replica_lag_bytes`, `replica_lag_seconds` {replica},
//!   `db_pool_waiting` {pool}, and `db_pool_connections` {pool, state}, set at every check; in
//!   a cluster, `db_primary_changes_total`, `db_without_primary_seconds` and the
//!   `db_primary_outage_seconds` histogram.
//!
//! ```no_run
//! use rwsplit_router::{Config, Consistency, Db, ReadContext};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::new("postgres://app:secret@primary/app".parse()?)
//!     .replica("postgres://app:secret@replica1/app".parse()?);
//! let db = std::sync::Arc::new(Db::new(config));
//! db.check_replicas().await;
//! let _monitor = db.spawn_monitor();
//!
//! // Kept in the session between requests; here, one request.
//! let mut ctx = ReadContext::new(Consistency::Causal, None);
//!
//! let mut primary = db.writer(&mut ctx).await?;
//! let done = sqlx::query("INSERT INTO notes (body) VALUES ('hi')")
//!     .execute(&mut *primary)
//!     .await;
//! primary.finish(done).await?;
//!
//! // Sees the insert: causal mode waits for a replica that has replayed it, or reads the primary.
//! let mut replica = db.reader(&mut ctx).await?;
//! let count = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notes")
//!     .fetch_one(&mut *replica)
//!     .await;
//! let read = replica.finish(count).await?;
//! println!("{} notes, read on {} because {}", read.value, read.node, read.reason);
//!
//! // The same read as a closure: a replica that fails mid-read is marked down and the
//! // closure runs again on the next choice.
//! let read = db
//!     .read(&mut ctx, |c| {
//!         Box::pin(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notes").fetch_one(c))
//!     })
//!     .await?;
//! # let _ = read;
//! # Ok(())
//! # }
//! ```
//!
//! `examples/notes.rs` runs the same against a live primary and replica.
//!
//! Inside, each pool keeps the connection whose use just finished in a spare slot, so the
//! next caller skips the round trip sqlx's pool spends checking every connection it takes
//! back; the crate's `pool` module says when a connection goes back through those checks.

#![warn(missing_docs)]

mod clock;
mod config;
mod consistency;
mod db;
mod error;
mod guard;
mod leader;
mod lsn;
mod metrics;
mod monitor;
mod node;
mod pool;
mod roles;
mod route;
mod timeline;

pub use config::{Config, Nodes, PoolConfig, RoutingConfig};
pub use consistency::{Consistency, ReadContext, Reason, WriteMark};
pub use db::Db;
pub use error::DbError;
pub use guard::{PRIMARY, Reader, Routed, Writer};
pub use lsn::Lsn;
pub use monitor::Monitor;
pub use node::{NodeStatus, Role};
pub use pool::BoxFuture;
