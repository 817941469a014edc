//! The staleness probe: write a row on the primary, read it straight back through the read
//! route, and time how long the answering replica took to show it. Beside the writer, a
//! reader session that never writes reads the rows written so far and counts the reads that
//! miss a row it had already seen: time travel, which causal mode rules out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgConnection;

use rwsplit_router::{Consistency, Db, DbError, Lsn, ReadContext, Reason, Routed};

pub const DEFAULT_PROBES: u32 = 10;
pub const MAX_PROBES: u32 = 200;
/// How long a stale row is watched for on its replica before it is reported as not visible.
pub const VISIBLE_WITHIN: Duration = Duration::from_secs(5);
const POLL_EVERY: Duration = Duration::from_millis(5);
/// Probe rows kept; older ones are deleted at the start of every run.
const KEEP_ROWS: i64 = 10_000;
/// The reader's reads after each write: two, so that consecutive reads can land on
/// different replicas, which is where time travel happens.
const READER_READS: u32 = 2;

#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub seq: u32,
    pub id: i64,
    pub node: String,
    pub reason: String,
    pub on_replica: bool,
    pub stale: bool,
    /// `pg_is_in_recovery()` on the connection that answered: proof of where the read ran.
    pub in_recovery: bool,
    pub commit_lsn: Option<Lsn>,
    /// How far the answering node had replayed when it answered; `None` on the primary.
    pub replay_lsn: Option<Lsn>,
    /// From the commit to the read-back's answer.
    pub read_ms: f64,
    /// From the commit until the row was visible on the replica that answered; `None` when
    /// the primary answered, or when the row did not show within [`VISIBLE_WITHIN`].
    pub visible_ms: Option<f64>,
    /// How long causal mode waited for a replica before the read-back.
    pub waited_ms: Option<u64>,
    /// The reader's reads after this write that missed a row it had seen before.
    pub time_travel: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub mode: Consistency,
    pub probes: usize,
    pub stale: usize,
    pub stale_share: f64,
    pub replica_reads: usize,
    pub replica_share: f64,
    pub visible_p50_ms: Option<f64>,
    pub visible_p95_ms: Option<f64>,
    pub visible_max_ms: Option<f64>,
    /// Stale reads whose row had not shown on the replica within the watch window.
    pub not_visible: usize,
    /// The median time one probe took: write, read back, and any causal wait.
    pub probe_p50_ms: f64,
    /// The reader session's reads, those a replica answered, and those that missed a row
    /// the reader had already seen.
    pub reader_reads: usize,
    pub reader_replica_reads: usize,
    pub time_travel: usize,
    /// Causal waits for a replica, over the writer's and the reader's reads that waited.
    pub wait_p50_ms: Option<f64>,
    pub wait_max_ms: Option<f64>,
    /// The writer's and the reader's reads that waited for a replica to replay, and those
    /// that went to the primary at once because no replica was expected in time.
    pub waited_reads: usize,
    pub primary_without_wait: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub summary: Summary,
    pub probes: Vec<Probe>,
}

/// What a read-back of one row found.
#[derive(Debug, sqlx::FromRow)]
pub struct ReadBack {
    pub found: bool,
    pub in_recovery: bool,
    pub replay_lsn: Option<String>,
}

/// Reads row `id` back and says where the read ran.
pub async fn read_back(conn: &mut PgConnection, id: i64) -> Result<ReadBack, sqlx::Error> {
    sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM probe WHERE id = $1) AS found, \
                pg_is_in_recovery() AS in_recovery, \
                pg_last_wal_replay_lsn()::text AS replay_lsn",
    )
    .bind(id)
    .fetch_one(conn)
    .await
}

/// Runs `n` probes in a row in `ctx.mode`; returns the run and the context with this
/// session's last write, for the caller to keep in the session.
pub async fn run(
    db: &Db,
    instance: &str,
    mut ctx: ReadContext,
    n: u32,
) -> Result<(Run, ReadContext), DbError> {
    prune(db).await?;
    let mut probes = Vec::with_capacity(n as usize);
    let mut committed_at = Vec::with_capacity(n as usize);
    let mut durations = Vec::with_capacity(n as usize);
    let mut ids = Vec::with_capacity(n as usize);
    let mut reader = Reader::new(ctx.mode);
    let mut waits = Waits::default();
    for seq in 1..=n {
        let started = Instant::now();
        let id = write(db, instance, &mut ctx).await?;
        let committed = Instant::now();
        let Routed {
            value: seen,
            node,
            reason,
        } = db.read(&mut ctx, |c| Box::pin(read_back(c, id))).await?;
        let read_ms = ms(committed.elapsed());
        crate::metrics::probe_read(ctx.mode, !seen.found);
        durations.push(ms(started.elapsed()));
        committed_at.push(committed);
        ids.push(id);
        waits.count(reason);
        let time_travel = reader.read(db, &ids, &mut waits).await?;
        probes.push(Probe {
            seq,
            id,
            on_replica: reason.on_replica(),
            reason: reason.to_string(),
            node,
            stale: !seen.found,
            in_recovery: seen.in_recovery,
            commit_lsn: ctx.last_write.and_then(|w| w.lsn),
            replay_lsn: seen.replay_lsn.and_then(|t| t.parse().ok()),
            read_ms,
            visible_ms: None,
            waited_ms: reason.waited_ms(),
            time_travel,
        });
    }
    watch_until_visible(db, &mut probes, &committed_at).await;
    let summary = summarize(ctx.mode, &probes, &mut durations, reader, waits);
    Ok((Run { summary, probes }, ctx))
}

/// What the run's reads, the writer's and the reader's, cost in causal waits.
#[derive(Default)]
struct Waits {
    /// How long each read that could wait did (zero where the replica already had the token).
    times: Vec<u64>,
    waited: usize,
    skipped: usize,
}

impl Waits {
    fn count(&mut self, reason: Reason) {
        self.times.extend(reason.waited_ms());
        match reason {
            Reason::CausalTimeout { .. } => self.waited += 1,
            Reason::Replayed { waited_ms } if waited_ms > 0 => self.waited += 1,
            Reason::ReplicasBehind { .. } => self.skipped += 1,
            _ => {}
        }
    }
}

/// A session that never writes, reading what the writer wrote, with a context of its own.
struct Reader {
    ctx: ReadContext,
    seen: BTreeSet<i64>,
    reads: usize,
    replica_reads: usize,
}

impl Reader {
    fn new(mode: Consistency) -> Self {
        Self {
            ctx: ReadContext::new(mode, None),
            seen: BTreeSet::new(),
            reads: 0,
            replica_reads: 0,
        }
    }

    /// Reads which of `ids` exist, [`READER_READS`] times; returns how many of those reads
    /// missed a row an earlier read had shown.
    async fn read(&mut self, db: &Db, ids: &[i64], waits: &mut Waits) -> Result<u32, DbError> {
        let mut missed = 0;
        for _ in 0..READER_READS {
            let read = db
                .read(&mut self.ctx, |c| {
                    let ids = ids.to_vec();
                    Box::pin(async move {
                        sqlx::query_scalar::<_, i64>("SELECT id FROM probe WHERE id = ANY($1)")
                            .bind(ids)
                            .fetch_all(c)
                            .await
                    })
                })
                .await?;
            self.reads += 1;
            self.replica_reads += usize::from(read.reason.on_replica());
            waits.count(read.reason);
            let now: BTreeSet<i64> = read.value.into_iter().collect();
            if !self.seen.is_subset(&now) {
                missed += 1;
            }
            self.seen.extend(now);
        }
        Ok(missed)
    }
}

/// Writes one probe row on the primary; `ctx` records the write with its commit LSN.
pub async fn write(db: &Db, instance: &str, ctx: &mut ReadContext) -> Result<i64, DbError> {
    ctx.track_lsn = true;
    let mut primary = db.writer(ctx).await?;
    let id = sqlx::query_scalar("INSERT INTO probe (instance) VALUES ($1) RETURNING id")
        .bind(instance)
        .fetch_one(&mut *primary)
        .await;
    primary.finish(id).await
}

/// Keeps the probe table small whatever the traffic: only the newest rows survive.
pub async fn prune(db: &Db) -> Result<(), DbError> {
    let mut scratch = ReadContext::new(Consistency::Eventual, None);
    let mut primary = db.writer(&mut scratch).await?;
    let pruned = sqlx::query("DELETE FROM probe WHERE id < (SELECT max(id) FROM probe) - $1")
        .bind(KEEP_ROWS)
        .execute(&mut *primary)
        .await;
    primary.finish(pruned).await.map(drop)
}

/// Polls each replica that answered stale for the rows it had not shown yet, and records
/// when each appeared. Fresh replica reads were visible by the time they answered.
async fn watch_until_visible(db: &Db, probes: &mut [Probe], committed_at: &[Instant]) {
    let mut waiting: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, probe) in probes.iter_mut().enumerate() {
        if !probe.on_replica {
            continue;
        }
        if probe.stale {
            waiting.entry(probe.node.clone()).or_default().push(i);
        } else {
            probe.visible_ms = Some(probe.read_ms);
        }
    }
    while !waiting.is_empty() {
        for (node, pending) in &mut waiting {
            let ids: Vec<i64> = pending.iter().map(|&i| probes[i].id).collect();
            let seen = db
                .read_from(node, move |c| {
                    Box::pin(
                        sqlx::query_scalar::<_, i64>("SELECT id FROM probe WHERE id = ANY($1)")
                            .bind(ids)
                            .fetch_all(c),
                    )
                })
                .await;
            let seen = match seen {
                Ok(seen) => seen,
                Err(e) => {
                    tracing::warn!(%node, error = %e, "probe visibility poll failed");
                    Vec::new()
                }
            };
            pending.retain(|&i| {
                if seen.contains(&probes[i].id) {
                    probes[i].visible_ms = Some(ms(committed_at[i].elapsed()));
                    false
                } else {
                    committed_at[i].elapsed() < VISIBLE_WITHIN
                }
            });
        }
        waiting.retain(|_, pending| !pending.is_empty());
        if !waiting.is_empty() {
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

fn summarize(
    mode: Consistency,
    probes: &[Probe],
    durations: &mut [f64],
    reader: Reader,
    waits: Waits,
) -> Summary {
    let count = probes.len();
    let stale = probes.iter().filter(|p| p.stale).count();
    let replica_reads = probes.iter().filter(|p| p.on_replica).count();
    let mut visible: Vec<f64> = probes.iter().filter_map(|p| p.visible_ms).collect();
    visible.sort_by(f64::total_cmp);
    durations.sort_by(f64::total_cmp);
    let mut times: Vec<f64> = waits.times.iter().map(|&w| w as f64).collect();
    times.sort_by(f64::total_cmp);
    Summary {
        mode,
        probes: count,
        stale,
        stale_share: share(stale, count),
        replica_reads,
        replica_share: share(replica_reads, count),
        visible_p50_ms: percentile(&visible, 50),
        visible_p95_ms: percentile(&visible, 95),
        visible_max_ms: visible.last().copied(),
        not_visible: probes
            .iter()
            .filter(|p| p.stale && p.visible_ms.is_none())
            .count(),
        probe_p50_ms: percentile(durations, 50).unwrap_or(0.0),
        reader_reads: reader.reads,
        reader_replica_reads: reader.replica_reads,
        time_travel: probes.iter().map(|p| p.time_travel as usize).sum(),
        wait_p50_ms: percentile(&times, 50),
        wait_max_ms: times.last().copied(),
        waited_reads: waits.waited,
        primary_without_wait: waits.skipped,
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], pct: usize) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (pct * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

fn share(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50), Some(50.0));
        assert_eq!(percentile(&v, 95), Some(95.0));
        assert_eq!(percentile(&[7.0], 95), Some(7.0));
        assert_eq!(percentile(&[], 50), None);
    }
}
