//! A connection pool as the router uses it: built with the router's checks, every
//! connection taken from it counted in `db_pool_waiting` while it is awaited, a connection
//! that failed as unreachable kept out of it, and a spare slot in front of it.
//!
//! The slot: sqlx pings every connection it takes back into its pool, a round trip whatever
//! the pool's options say. A connection whose last use finished normally is instead kept in
//! the slot, and the next caller takes it from there without a round trip; one that sat
//! there [`PING_IF_IDLE_FOR`], or has stayed out of sqlx's pool for [`HELD_AT_MOST`], goes
//! back through sqlx's checks. A use that failed, or that was dropped unfinished (a timeout,
//! an error returned early), hands its connection to sqlx as before, and so does one that
//! finishes while another caller is asking for a connection: sqlx serves its queue. The next
//! query on a connection first sends what a dropped transaction left queued (its rollback)
//! and reads every answer still due, as sqlx does for any query, so the slot needs no round
//! trip of its own.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use metrics::Gauge;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use crate::error::DbError;

/// The future a query closure returns, given the connection the router chose.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Pooled connections idle this long are pinged before use; busier ones are trusted.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// How long a connection may go from one use to the next through the spare slot before it
/// goes back through sqlx's pool (its lifetime check and ping).
const HELD_AT_MOST: Duration = Duration::from_secs(60);

/// A pool and its `db_pool_waiting` gauge, registered with the recorder when the pool is
/// built. Derefs to [`PgPool`].
#[derive(Debug)]
pub(crate) struct Pool {
    /// What metrics call it.
    name: String,
    conns: PgPool,
    waiting: Gauge,
    spare: Arc<Spare>,
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
            name: name.to_owned(),
            conns,
            waiting: crate::metrics::waiting(name),
            spare: Arc::default(),
        }
    }

    /// A connection: the spare one if it is fresh, else one from sqlx's pool, counting the
    /// callers waiting for one.
    ///
    /// Boxed: sqlx's acquire future holds a whole connection attempt, which makes it large,
    /// and unboxed it would make every future that awaits a read or a write as large, up to
    /// the handler's; such a future is copied each time it moves (into a task, into axum's
    /// box).
    pub(crate) async fn acquire(&self) -> Result<Lease, sqlx::Error> {
        // Counted before the slot is looked at: a connection given back from then on goes to
        // sqlx's pool, whose queue this caller may be about to join.
        let _asking = Asking::new(&self.spare, &self.waiting);
        if let Some(lease) = self.spare.take() {
            return Ok(lease);
        }
        let conn = Box::pin(self.conns.acquire()).await?;
        Ok(Lease {
            conn,
            held_since: Instant::now(),
            spare: self.spare.clone(),
        })
    }

    /// Runs `query` on a connection from the pool; a connection it finds broken is not
    /// pooled again.
    pub(crate) async fn run<T, F>(&self, query: F) -> Result<T, sqlx::Error>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
    {
        let mut conn = self.acquire().await?;
        let result = query(&mut conn).await;
        let result = discard_if_broken(&mut conn, result);
        if result.is_ok() {
            conn.give_back();
        }
        result
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Connections open and idle in this pool, the spare one among them.
    pub(crate) fn idle(&self) -> usize {
        self.conns.num_idle() + usize::from(self.spare.holds())
    }

    /// Closes the pool, waiting for connections in use to come back. The spare goes back
    /// first, and none is kept from then on: sqlx's close waits for every connection.
    pub(crate) async fn close(&self) {
        drop(self.spare.close());
        self.conns.close().await;
    }

    /// Every connection the pool may open is open: a timeout then means they were all in
    /// use. (Idle ones are not excluded: one may come back between the timeout and this
    /// check.) A replica that froze with all connections open is caught by the monitor's own
    /// timed check.
    pub(crate) fn is_full(&self) -> bool {
        self.conns.size() >= self.conns.options().get_max_connections()
    }
}

/// A connection taken from a [`Pool`]. [`Lease::give_back`] keeps it in the pool's spare
/// slot; dropped instead, it goes back to sqlx's pool (or is closed, if it failed as
/// unreachable). Derefs to [`PgConnection`].
#[derive(Debug)]
pub(crate) struct Lease {
    conn: PoolConnection<Postgres>,
    /// When it left sqlx's pool.
    held_since: Instant,
    spare: Arc<Spare>,
}

impl Lease {
    /// Its use finished normally: keep it for the next caller, if the slot is free.
    pub(crate) fn give_back(self) {
        if self.held_since.elapsed() < HELD_AT_MOST {
            self.spare.keep(self.conn, self.held_since);
        }
    }
}

impl Deref for Lease {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// A pool's spare slot: at most one connection, kept only while no caller is asking for one.
/// A caller queued in sqlx's pool is served by connections given back to sqlx, never by the
/// slot: a connection kept there while someone waited would leave them waiting for nothing.
#[derive(Debug, Default)]
struct Spare {
    slot: Mutex<Slot>,
    asking: AtomicUsize,
}

/// Counts a caller asking for a connection, in [`Spare::asking`] and in `db_pool_waiting`,
/// while it lives. A guard, so a caller cancelled mid-wait (by a request timeout) still
/// counts itself out.
struct Asking<'a> {
    spare: &'a Spare,
    waiting: &'a Gauge,
}

impl<'a> Asking<'a> {
    fn new(spare: &'a Spare, waiting: &'a Gauge) -> Self {
        spare.asking.fetch_add(1, Ordering::SeqCst);
        waiting.increment(1.0);
        Self { spare, waiting }
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        self.spare.asking.fetch_sub(1, Ordering::SeqCst);
        self.waiting.decrement(1.0);
    }
}

#[derive(Debug, Default)]
struct Slot {
    kept: Option<Kept>,
    closed: bool,
}

#[derive(Debug)]
struct Kept {
    conn: PoolConnection<Postgres>,
    held_since: Instant,
    idle_since: Instant,
}

impl Spare {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        // Every change is one assignment: a panic elsewhere cannot leave the slot half-set.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The spare connection, if it was given back less than [`PING_IF_IDLE_FOR`] ago. One
    /// idle longer is dropped, after the lock, back to sqlx's pool, which pings it.
    fn take(self: &Arc<Self>) -> Option<Lease> {
        let kept = self.lock().kept.take()?;
        (kept.idle_since.elapsed() < PING_IF_IDLE_FOR).then(|| Lease {
            conn: kept.conn,
            held_since: kept.held_since,
            spare: self.clone(),
        })
    }

    /// Keeps `conn` unless the slot is taken, the pool closed or a caller is asking for a
    /// connection; otherwise it is dropped, after the lock, back to sqlx's pool. A caller
    /// counts itself before it looks at the slot, and this looks at the count under the
    /// slot's lock: either that caller finds `conn` in the slot, or sqlx hands it over.
    fn keep(&self, conn: PoolConnection<Postgres>, held_since: Instant) {
        let mut slot = self.lock();
        if slot.kept.is_none() && !slot.closed && self.asking.load(Ordering::SeqCst) == 0 {
            slot.kept = Some(Kept {
                conn,
                held_since,
                idle_since: Instant::now(),
            });
        }
    }

    fn holds(&self) -> bool {
        self.lock().kept.is_some()
    }

    /// Keeps nothing from now on; returns what it held, for the caller to drop.
    fn close(&self) -> Option<PoolConnection<Postgres>> {
        let mut slot = self.lock();
        slot.closed = true;
        slot.kept.take().map(|kept| kept.conn)
    }
}

/// Keeps a connection that failed as unreachable out of the pool. A server that shuts down
/// or restarts answers its idle connections' next query with an error (57P01) and closes
/// them, and sqlx would pool such a connection again: under load, where connections never
/// sit idle long enough to be pinged, request after request would fail on it.
pub(crate) fn discard_if_broken<T>(
    conn: &mut Lease,
    result: Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    if let Err(e) = &result
        && DbError::is_unavailable_error(e)
    {
        conn.conn.close_on_drop();
    }
    result
}

impl Deref for Pool {
    type Target = PgPool;

    fn deref(&self) -> &PgPool {
        &self.conns
    }
}
