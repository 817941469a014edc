//! Group commit for the request log, an optimisation on top of [`log`](super::log): the
//! `GET /` requests that arrive on one instance while earlier ones are still at the database
//! share one insert on the primary and one read through the read route. The database then
//! sees a few round trips per batch instead of four per request, which is what lets the app
//! approach a limit that pgbench measures one row at a time.
//!
//! One batch at a time per instance, and no timer: an idle instance writes a lone request at
//! once, and a batch collects what arrived while the previous one was at the database, and
//! what the runtime's next poll of its sockets lets through. More batches in flight only split
//! the same load into more round trips, and the web tier's cost per request falls as batches
//! grow (BENCHMARKS.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout_at};

use rwsplit_router::{Consistency, Db, DbError, Lsn, PRIMARY, ReadContext, WriteMark};

use super::{Logged, NewEntry, SHOWN};

/// Why a batched request got no answer from its batch.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The batch that held this request ended without answering it: a bug, never expected.
    #[error("the request log batch ended without an answer")]
    BatchLost,
}

impl LogError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Db(e) if e.is_unavailable())
    }
}

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

/// A request's share, and what its session is to remember of the batch.
type Reply = Result<(Logged, Seen), DbError>;

/// The batch's write, and the causal token after its read. Every session's own token was
/// observed before the batch committed, so it is at most the batch's commit position: the
/// batch's token covers each of them.
#[derive(Clone, Copy, Debug)]
struct Seen {
    write: Option<WriteMark>,
    token: Option<Lsn>,
}

impl From<&ReadContext> for Seen {
    fn from(ctx: &ReadContext) -> Self {
        Self {
            write: ctx.last_write,
            token: ctx.token,
        }
    }
}

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
        claim(&self.claimed)
    }
}

/// True for whoever sets the flag first.
fn claim(flag: &AtomicBool) -> bool {
    !flag.swap(true, Ordering::AcqRel)
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
    pub async fn log(&self, entry: NewEntry, ctx: &mut ReadContext) -> Result<Logged, LogError> {
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
            Ok(sent) => sent.map_err(|_| LogError::BatchLost)?,
            Err(_) => return Err(busy().into()),
        }
        let answered = match timeout_at(deadline, &mut answer).await {
            Ok(answered) => answered,
            // Not taken yet: withdraw it, so it is never written.
            Err(_) if claim(&claimed) => return Err(busy().into()),
            // Taken: its batch is at the database, bounded by the database's own timeouts.
            Err(_) => answer.await,
        };
        let (logged, seen) = answered.map_err(|_| LogError::BatchLost)??;
        ctx.last_write = seen.write;
        if let Some(token) = seen.token {
            ctx.observe(token);
        }
        Ok(logged)
    }
}

async fn collect(db: Arc<Db>, mut queue: mpsc::Receiver<Job>, max_rows: usize) {
    while let Some(first) = queue.recv().await {
        // Let the runtime poll its sockets and run what they woke before the batch is cut:
        // requests whose session just loaded join this batch rather than wait for the next.
        // Tokio resumes a yielded task after its next driver poll (tokio-rs/tokio#5223); its
        // docs do not promise that order, and only batch sizes depend on it (tests/batch.rs
        // notices if an upgrade changes it).
        tokio::task::yield_now().await;
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
        crate::metrics::batch(jobs.len());
        if let Err(unreachable) = run(&db, jobs).await {
            // The requests that queued meanwhile wait for the same primary that just failed
            // to answer: tell them now, rather than each waiting out one more attempt.
            while let Ok(job) = queue.try_recv() {
                if job.claim() {
                    let _ = job.reply.send(Err(unreachable.clone()));
                }
            }
        }
    }
}

/// Requests route alike when their mode and session state match; after the shared write,
/// their last write is the same too, so one read answers them all.
fn route_key(ctx: &ReadContext) -> (Consistency, bool, bool) {
    (ctx.mode, ctx.known, ctx.track_lsn)
}

/// Runs a batch, one group of like-routed requests at a time. `Err` when the primary could
/// not be reached.
async fn run(db: &Db, mut jobs: Vec<Job>) -> Result<(), DbError> {
    while let Some(first) = jobs.first() {
        let key = route_key(&first.ctx);
        let (group, rest): (Vec<_>, Vec<_>) =
            jobs.into_iter().partition(|j| route_key(&j.ctx) == key);
        jobs = rest;
        let ctx = group[0].ctx;
        let (entries, replies) = group.into_iter().map(|j| (j.entry, j.reply)).unzip();
        if let Err(unreachable) = write_and_read(db, ctx, entries, replies).await {
            for job in jobs {
                let _ = job.reply.send(Err(unreachable.clone()));
            }
            return Err(unreachable);
        }
    }
    Ok(())
}

/// One insert and one read for `entries`, answering each through its reply. A caller that
/// gave up (its request timed out) no longer listens; that is fine.
async fn write_and_read(
    db: &Db,
    mut ctx: ReadContext,
    entries: Vec<NewEntry>,
    replies: Vec<oneshot::Sender<Reply>>,
) -> Result<(), DbError> {
    let written = match super::write(db, &mut ctx, &entries).await {
        Ok(inserted) => inserted,
        Err(e) if !e.is_unavailable() && entries.len() > 1 => {
            // One row the database refuses must not fail the rows beside it.
            tracing::warn!(error = %e, rows = entries.len(), "batch insert failed; writing its rows one at a time");
            for (entry, reply) in entries.into_iter().zip(replies) {
                Box::pin(write_and_read(db, ctx, vec![entry], vec![reply])).await?;
            }
            return Ok(());
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
            return if e.is_unavailable() { Err(e) } else { Ok(()) };
        }
    };
    let read = super::latest_table(db, &mut ctx).await;
    for (reply, written) in replies.into_iter().zip(written) {
        let logged = Logged {
            written,
            read: read.clone(),
        };
        let _ = reply.send(Ok((logged, Seen::from(&ctx))));
    }
    Ok(())
}
