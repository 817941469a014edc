//! Group commit for the request log: the `GET /` requests that arrive on one instance while
//! earlier ones are still at the database share one insert on the primary and one read
//! through the read route. The database then sees a few round trips per batch instead of four
//! per request, which is what lets the app approach a limit that pgbench measures one row at
//! a time.
//!
//! Nothing waits on a timer: with a free slot, a lone request is written at once. Batches only
//! collect the requests that would otherwise have queued for a connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout_at};

use super::{Entry, NewEntry, SHOWN};
use crate::db::{Consistency, Db, DbError, PRIMARY, ReadContext, Routed, WriteMark};

/// Batches at the database at once, per instance. With 32 connections through nginx, one
/// gave 2,380 requests/s at 4.6 requests a batch; two, 1,690 at 2.5; four, 1,410 at 1.5.
/// More in flight split the same load into more round trips (see BENCHMARKS.md).
const IN_FLIGHT: usize = 1;

/// Requests that may wait for a batch; beyond this, callers wait for room, within the same
/// patience as for the batch itself.
const QUEUE: usize = 1024;

/// Collects requests into batches and runs them; cheap to clone, one per instance.
#[derive(Clone, Debug)]
pub struct Batcher {
    jobs: mpsc::Sender<Job>,
    /// How long a request may wait for its batch to start: waiting for a batch is waiting
    /// for the primary's connection, so it gets the same bound as a pool acquire.
    patience: Duration,
}

/// One request's share of a batch.
#[derive(Debug)]
pub struct Logged {
    pub written: Entry,
    /// The latest rows, read after the write; an error here leaves the write standing.
    pub read: Result<Routed<Vec<Entry>>, DbError>,
}

/// A request's share, and the batch's write for its session to remember.
type Reply = Result<(Logged, Option<WriteMark>), DbError>;

#[derive(Debug)]
struct Job {
    entry: NewEntry,
    ctx: ReadContext,
    reply: oneshot::Sender<Reply>,
    /// Set by whichever comes first: a batch taking the job, or its caller giving up. A job
    /// given up is never written; a job taken is always answered.
    claimed: Arc<AtomicBool>,
}

impl Job {
    fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }
}

impl Batcher {
    /// Starts the collector; it stops when the last `Batcher` clone is dropped. `max_rows`
    /// bounds a batch (at most [`SHOWN`], so every row of a batch is on its page).
    pub fn spawn(db: Arc<Db>, max_rows: usize, patience: Duration) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(collect(db, queue, max_rows.clamp(1, SHOWN as usize)));
        Self { jobs, patience }
    }

    /// Writes `entry` on the primary, then reads the latest rows as `ctx` allows, sharing both
    /// queries with the requests batched alongside. Records the write in `ctx`.
    pub async fn log(&self, entry: NewEntry, ctx: &mut ReadContext) -> Result<Logged, DbError> {
        let deadline = Instant::now() + self.patience;
        let busy = || DbError::from_sqlx(PRIMARY, sqlx::Error::PoolTimedOut);
        let (reply, mut answer) = oneshot::channel();
        let claimed = Arc::new(AtomicBool::new(false));
        let job = Job {
            entry,
            ctx: *ctx,
            reply,
            claimed: claimed.clone(),
        };
        match timeout_at(deadline, self.jobs.send(job)).await {
            Ok(sent) => sent.map_err(|_| DbError::BatchLost)?,
            Err(_) => return Err(busy()),
        }
        let answered = match timeout_at(deadline, &mut answer).await {
            Ok(answered) => answered,
            // Not taken yet: withdraw it, so it is never written.
            Err(_) if !claimed.swap(true, Ordering::AcqRel) => return Err(busy()),
            // Taken: its batch is at the database, bounded by the database's own timeouts.
            Err(_) => answer.await,
        };
        let (logged, write) = answered.map_err(|_| DbError::BatchLost)??;
        ctx.last_write = write;
        Ok(logged)
    }
}

async fn collect(db: Arc<Db>, mut queue: mpsc::Receiver<Job>, max_rows: usize) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // A slot first, then the requests: whatever arrives while both slots are busy joins the
    // next batch.
    while let Ok(slot) = slots.clone().acquire_owned().await {
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut jobs = Vec::with_capacity(max_rows);
        let mut next = Some(first);
        while let Some(job) = next {
            if job.claim() {
                jobs.push(job);
            }
            next = if jobs.len() < max_rows {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        if jobs.is_empty() {
            continue;
        }
        crate::observe::batch(jobs.len());
        let db = db.clone();
        tokio::spawn(async move {
            run(&db, jobs).await;
            drop(slot);
        });
    }
}

/// Requests route alike when their mode and session state match; after the shared write,
/// their last write is the same too, so one read answers them all.
fn route_key(ctx: &ReadContext) -> (Consistency, bool, bool) {
    (ctx.mode, ctx.known, ctx.track_lsn)
}

async fn run(db: &Db, mut jobs: Vec<Job>) {
    while let Some(first) = jobs.first() {
        let key = route_key(&first.ctx);
        let (group, rest) = jobs.into_iter().partition(|j| route_key(&j.ctx) == key);
        jobs = rest;
        run_group(db, group).await;
    }
}

async fn run_group(db: &Db, group: Vec<Job>) {
    let Some(first) = group.first() else {
        return;
    };
    let mut ctx = first.ctx;
    let (entries, replies): (Vec<_>, Vec<_>) =
        group.into_iter().map(|j| (j.entry, j.reply)).unzip();
    let written = match db
        .write(&mut ctx, move |c| Box::pin(super::insert_all(c, entries)))
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            let e = Arc::new(e);
            for reply in replies {
                // A caller that gave up (its request timed out) no longer listens; fine.
                let _ = reply.send(Err(DbError::Shared(e.clone())));
            }
            return;
        }
    };
    let read = db
        .read(&ctx, |c| Box::pin(super::latest(c, SHOWN)))
        .await
        .map_err(Arc::new);
    for (reply, written) in replies.into_iter().zip(written) {
        let logged = Logged {
            written,
            read: read.clone().map_err(DbError::Shared),
        };
        let _ = reply.send(Ok((logged, ctx.last_write)));
    }
}
