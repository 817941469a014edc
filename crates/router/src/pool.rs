//! A connection pool as the router uses it: built with the router's checks, every
//! connection taken from it counted in `db_pool_waiting` while it is awaited, and a
//! connection that failed as unreachable kept out of it.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::time::Duration;

use metrics::Gauge;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use crate::error::DbError;
use crate::metrics::Waiting;

/// The future a query closure returns, given the connection the router chose.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Pooled connections idle this long are pinged before use; busier ones are trusted.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A pool and its `db_pool_waiting` gauge, registered once with the recorder: finding a
/// labelled gauge in the recorder cost more than counting on it (BENCHMARKS.md, thirteenth
/// cut). Derefs to [`PgPool`].
#[derive(Debug)]
pub(crate) struct Pool {
    conns: PgPool,
    waiting: Gauge,
}

impl Pool {
    /// Builds the pool without connecting. `name` labels its metrics.
    pub(crate) fn new(
        name: &str,
        options: PgConnectOptions,
        size: u32,
        acquire: Duration,
        read_only: bool,
    ) -> Self {
        let options = if read_only {
            options.options([("default_transaction_read_only", "on")])
        } else {
            options
        };
        let conns = PgPoolOptions::new()
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
            .connect_lazy_with(options);
        Self {
            conns,
            waiting: crate::metrics::waiting(name),
        }
    }

    /// A connection, counting the callers waiting for one.
    ///
    /// Boxed: sqlx's acquire future holds a whole connection attempt, which makes it large,
    /// and unboxed it would make every future that awaits a read or a write as large, up to
    /// the handler's; such a future is copied each time it moves (into a task, into axum's
    /// box). The box is allocated first so that the optimiser builds the future in it:
    /// `Box::pin` builds it on the stack and copies it in, once an acquire.
    pub(crate) async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let _waiting = Waiting::new(&self.waiting);
        let slot = Box::new_uninit();
        Box::into_pin(Box::write(slot, self.conns.acquire())).await
    }

    /// Runs `query` on a connection from the pool; a connection it finds broken is not
    /// pooled again.
    pub(crate) async fn run<T, F>(&self, query: F) -> Result<T, sqlx::Error>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let mut conn = self.acquire().await?;
        let result = query(&mut conn).await;
        discard_if_broken(&mut conn, result)
    }

    /// Every connection the pool may open is open: a timeout then means they were all in
    /// use. (Idle ones are not excluded: one may come back between the timeout and this
    /// check.) A replica that froze with all connections open is caught by the monitor's own
    /// timed check.
    pub(crate) fn is_full(&self) -> bool {
        self.conns.size() >= self.conns.options().get_max_connections()
    }
}

/// Keeps a connection that failed as unreachable out of the pool. A server that shuts down
/// or restarts answers its idle connections' next query with an error (57P01) and closes
/// them, and sqlx would pool such a connection again: under load, where connections never
/// sit idle long enough to be pinged, request after request would fail on it.
pub(crate) fn discard_if_broken<T>(
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

impl Deref for Pool {
    type Target = PgPool;

    fn deref(&self) -> &PgPool {
        &self.conns
    }
}
