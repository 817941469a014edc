//! High availability under a real HA engine: three PostgreSQL nodes under Patroni with a
//! three-member etcd, started by `scripts/test` through `scripts/stack up --ha`, and web
//! instances that are given every node. Load goes through nginx while the primary crashes,
//! hands over in a planned switchover, or is cut off from the other nodes and etcd; every
//! request carries its own tag (`/?t=...`), so each acknowledged one is looked for, as a row,
//! on the primary that leads at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// The HA stack `scripts/test` started.
struct Ha {
    dir: String,
    base: u16,
    url: String,
}

impl Ha {
    fn get() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the HA tests through scripts/test")
            })
        };
        Self {
            dir: var("RWSPLIT_HA_STACK_DIR"),
            base: var("RWSPLIT_HA_STACK_BASE").parse().expect("base"),
            url: var("RWSPLIT_HA_URL"),
        }
    }

    /// `scripts/stack ARGS` on the HA stack; its standard output, or a panic.
    fn stack(&self, args: &[&str]) -> String {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/stack"))
            .args(args)
            .env("STACK_DIR", &self.dir)
            .env("STACK_BASE", self.base.to_string())
            .output()
            .expect("scripts/stack runs");
        assert!(
            out.status.success(),
            "scripts/stack {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `scripts/stack roles`: (name, role, state) a node.
    fn roles(&self) -> Vec<(String, String, String)> {
        self.stack(&["roles"])
            .lines()
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                (f[0].to_owned(), f[1].to_owned(), f[2].to_owned())
            })
            .collect()
    }

    fn primary(&self) -> Option<String> {
        let roles = self.roles();
        let primaries: Vec<_> = roles.iter().filter(|r| r.1 == "primary").collect();
        match primaries[..] {
            [one] => Some(one.0.clone()),
            _ => None,
        }
    }

    /// Waits until exactly one node says it is the primary.
    async fn leader(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(leader) = self.primary() {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no one primary: {:?}",
                self.roles()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Starts any node found down (one an earlier test left crashed), then waits until one
    /// node leads and the others stream from it.
    async fn all_up(&self) -> String {
        for (name, role, _) in self.roles() {
            if role == "down" {
                self.stack(&["start", &name]);
            }
        }
        self.settled().await
    }

    /// Waits until one node leads and the others stream from it.
    async fn settled(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let roles = self.roles();
            let primaries = roles.iter().filter(|r| r.1 == "primary").count();
            let streaming = roles.iter().filter(|r| r.2 == "streaming").count();
            if primaries == 1 && streaming == roles.len() - 1 {
                return self.primary().unwrap();
            }
            assert!(Instant::now() < deadline, "cluster not settled: {roles:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn node_port(&self, node: &str) -> u16 {
        let n: u16 = node
            .trim_start_matches("node")
            .parse()
            .expect("node number");
        self.base + 40 + n
    }

    /// A superuser connection to `node`, with no statement timeout.
    async fn connect(&self, node: &str) -> Result<PgConnection, sqlx::Error> {
        let options = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.node_port(node))
            .username("postgres")
            .password("postgres")
            .database("rwsplit");
        PgConnection::connect_with(&options).await
    }

    async fn pool(&self, node: &str) -> PgPool {
        let url = format!(
            "postgres://postgres:postgres@127.0.0.1:{}/rwsplit",
            self.node_port(node)
        );
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("superuser connection to {node}: {e}"))
    }
}

/// A node cut off by `scripts/stack partition`, healed when dropped, even if a test panics.
struct Partition<'a>(&'a Ha, String);

impl Drop for Partition<'_> {
    fn drop(&mut self) {
        self.0.stack(&["heal", &self.1]);
    }
}

/// One request of a tagged load: when it was sent and answered, and how.
#[derive(Debug, Clone)]
struct Outcome {
    tag: String,
    sent: Instant,
    done: Instant,
    status: u16,
}

/// GETs `/?t=RUN-CLIENT-N` from `clients` tasks until `stop` is set, `limit` passes or
/// `budget` requests are sent. Loopback only; stops by itself.
async fn tagged_load(
    url: &str,
    run: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
    limit: Duration,
    budget: u64,
) -> Vec<Outcome> {
    assert!(url.starts_with("http://127.0.0.1:"), "loopback only");
    let budget = Arc::new(AtomicU64::new(budget));
    let deadline = Instant::now() + limit;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (url, run, stop, budget) =
                (url.to_owned(), run.to_owned(), stop.clone(), budget.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .cookie_store(true)
                    .timeout(Duration::from_secs(40))
                    .build()
                    .unwrap();
                let mut seen = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                        .is_ok()
                {
                    n += 1;
                    let tag = format!("{run}-{c}-{n}");
                    let sent = Instant::now();
                    let status = match client.get(format!("{url}/?t={tag}")).send().await {
                        Ok(res) => {
                            let status = res.status().as_u16();
                            if res.bytes().await.is_ok() { status } else { 0 }
                        }
                        Err(_) => 0,
                    };
                    seen.push(Outcome {
                        tag,
                        sent,
                        done: Instant::now(),
                        status,
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seen
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("load task"));
    }
    all
}

/// How many rows each tag of `run` has, on `node`.
async fn rows_by_tag(pool: &PgPool, run: &str) -> HashMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT substr(path, 5), count(*) FROM request_log WHERE path LIKE $1 GROUP BY path",
    )
    .bind(format!("/?t={run}-%"))
    .fetch_all(pool)
    .await
    .expect("rows by tag");
    rows.into_iter().collect()
}

/// A tag prefix no earlier run on this stack used.
fn run_name(case: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{case}{}", now.as_millis())
}

/// Every acknowledged request's row exists once on the leader; no request's row twice.
async fn assert_each_acknowledged_row_once(ha: &Ha, run: &str, outcomes: &[Outcome]) {
    let leader = ha.leader().await;
    let pool = ha.pool(&leader).await;
    let rows = rows_by_tag(&pool, run).await;
    let acked: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 200).collect();
    let lost: Vec<&str> = acked
        .iter()
        .filter(|o| !rows.contains_key(&o.tag))
        .map(|o| o.tag.as_str())
        .collect();
    let doubled: Vec<(&String, &i64)> = rows.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{run}: {} acknowledged, {} rows on {leader}, {} lost, {} doubled",
        acked.len(),
        rows.len(),
        lost.len(),
        doubled.len()
    );
    let some = |n: usize| n.min(10);
    assert!(
        lost.is_empty(),
        "acknowledged rows missing on {leader}, for example {:?}",
        &lost[..some(lost.len())]
    );
    assert!(
        doubled.is_empty(),
        "rows written twice, for example {:?}",
        &doubled[..some(doubled.len())]
    );
    pool.close().await;
}

/// The requests that were not acknowledged: tag and status (0: no response).
fn failed(outcomes: &[Outcome]) -> Vec<(String, u16)> {
    outcomes
        .iter()
        .filter(|o| o.status != 200)
        .map(|o| (o.tag.clone(), o.status))
        .collect()
}

/// The first request sent after `at` that was acknowledged: how long after `at` it was.
fn first_write_after(outcomes: &[Outcome], at: Instant) -> Option<Duration> {
    outcomes
        .iter()
        .filter(|o| o.status == 200 && o.sent >= at)
        .map(|o| o.done - at)
        .min()
}

/// The longest any acknowledged request took: the pause a client saw.
fn longest(outcomes: &[Outcome]) -> Duration {
    outcomes
        .iter()
        .filter(|o| o.status == 200)
        .map(|o| o.done - o.sent)
        .max()
        .unwrap_or_default()
}

/// Tagged load from 2 s before `event` runs to 4 s after it has finished; returns every
/// request's outcome and when the event began.
async fn load_through(
    ha: &Ha,
    run: &str,
    event: impl std::future::Future<Output = ()>,
) -> (Vec<Outcome>, Instant) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn({
        let (url, run, stop) = (ha.url.clone(), run.to_owned(), stop.clone());
        async move { tagged_load(&url, &run, 6, stop, Duration::from_secs(90), 20_000).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at = Instant::now();
    event.await;
    // Long enough after the event for every node's monitor to have settled.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    (load.await.expect("load"), at)
}

#[tokio::test]
async fn a_crashed_primary_is_replaced_within_ten_seconds_and_every_acknowledged_row_exists_once() {
    let ha = Ha::get();
    let old = ha.all_up().await;
    let run = run_name("crash");
    let mut reads = Vec::new();
    let (outcomes, crashed) = load_through(&ha, &run, async {
        ha.stack(&["crash", &old]);
        // With no primary (Patroni promotes one only once the leader key expires), reads still
        // flow from the replicas.
        let client = reqwest::Client::new();
        for _ in 0..3 {
            let sent = Instant::now();
            let url = format!("{}/test/read.json?id=1&mode=eventual", ha.url);
            let read = match client.get(url).timeout(Duration::from_secs(5)).send().await {
                Ok(res) => (
                    res.status().as_u16(),
                    res.json::<serde_json::Value>().await.ok(),
                ),
                Err(_) => (0, None),
            };
            let in_recovery = read.1.and_then(|r| r["in_recovery"].as_bool());
            reads.push((read.0, in_recovery, sent.elapsed(), Instant::now()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Until another node leads, then a little longer (the load stops 4 s after that).
        let deadline = Instant::now() + Duration::from_secs(60);
        while ha.primary().is_none_or(|p| p == old) {
            assert!(Instant::now() < deadline, "no new primary after 60 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let first = first_write_after(&outcomes, crashed).expect("a write after the crash");
    let failed = failed(&outcomes);
    println!(
        "crash of {old}: {} requests, first acknowledged write {:.1} s after the crash, {} failed {:?}, longest {:.1} s",
        outcomes.len(),
        first.as_secs_f64(),
        failed.len(),
        &failed[..failed.len().min(10)],
        longest(&outcomes).as_secs_f64()
    );
    // Answered while writes were still waiting for a primary: before the first write sent
    // after the crash was acknowledged.
    let reads: Vec<_> = reads
        .into_iter()
        .map(|(status, in_recovery, took, done)| {
            (status, in_recovery, took, done < crashed + first)
        })
        .collect();
    println!(
        "crash: reads just after it (status, on a replica, time, before writes resumed): {reads:?}"
    );
    for read in &reads {
        assert_eq!(
            (read.0, read.1, read.3),
            (200, Some(true), true),
            "{reads:?}"
        );
        assert!(read.2 < Duration::from_secs(2), "{reads:?}");
    }
    assert!(
        first <= Duration::from_secs(10),
        "writes resumed after {first:?}"
    );
    assert!(
        failed.is_empty(),
        "{} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert_each_acknowledged_row_once(&ha, &run, &outcomes).await;

    // The old primary comes back as a replica of the new one, and streams.
    ha.stack(&["start", &old]);
    let leader = ha.settled().await;
    assert_ne!(leader, old);
    let role = ha.roles().into_iter().find(|r| r.0 == old).unwrap();
    assert_eq!((role.1.as_str(), role.2.as_str()), ("replica", "streaming"));
}

#[tokio::test]
async fn a_planned_switchover_fails_no_request() {
    let ha = Ha::get();
    let old = ha.all_up().await;
    let run = run_name("switchover");
    let (outcomes, _) = load_through(&ha, &run, async {
        ha.stack(&["switchover"]);
    })
    .await;
    let failed = failed(&outcomes);
    println!(
        "switchover from {old}: {} requests, {} failed {:?}, longest {:.2} s",
        outcomes.len(),
        failed.len(),
        &failed[..failed.len().min(10)],
        longest(&outcomes).as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert_each_acknowledged_row_once(&ha, &run, &outcomes).await;
    assert_ne!(ha.settled().await, old);
}

#[tokio::test]
async fn a_primary_cut_off_from_the_cluster_loses_no_acknowledged_row_and_takes_no_write_after_the_election()
 {
    let ha = Ha::get();
    let old = ha.all_up().await;
    let run = run_name("partition");
    let stray_tag = format!("{run}-stray");
    let mut stray: Option<Result<(), String>> = None;
    let mut cut_off = None;
    let (outcomes, cut) = load_through(&ha, &run, async {
        ha.stack(&["partition", &old]);
        cut_off = Some(Partition(&ha, old.clone()));
        let deadline = Instant::now() + Duration::from_secs(60);
        // A new primary among the others (the cut-off node's own Patroni may still say it leads).
        let new = loop {
            let roles = ha.roles();
            if let Some(new) = roles.iter().find(|r| r.0 != old && r.1 == "primary") {
                break new.0.clone();
            }
            assert!(Instant::now() < deadline, "no new primary after 60 s: {roles:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!("partition: {new} leads in place of {old}");
        // A write straight to the cut-off node, as a client still reaching it would send it: it
        // must not be acknowledged. The client gives up after 5 s by dropping the connection,
        // which cancels nothing on the server.
        let attempt = async {
            let mut conn = ha.connect(&old).await?;
            sqlx::query("INSERT INTO request_log (method, path, client_addr, user_agent, instance) VALUES ('GET', $1, '-', '-', 'test')")
                .bind(format!("/?t={stray_tag}"))
                .execute(&mut conn)
                .await
                .map(drop)
        };
        stray = Some(match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5 s".to_owned()),
        });
    })
    .await;
    let stray = stray.expect("the stray write ran");
    println!("partition: the write straight to {old} after the election: {stray:?}");
    assert!(stray.is_err(), "the cut-off node acknowledged a write");
    let failed = failed(&outcomes);
    println!(
        "partition of {old}: {} requests, first acknowledged write {:.1} s after the cut, {} failed {:?}, longest {:.1} s",
        outcomes.len(),
        first_write_after(&outcomes, cut)
            .unwrap_or_default()
            .as_secs_f64(),
        failed.len(),
        &failed[..failed.len().min(10)],
        longest(&outcomes).as_secs_f64()
    );
    assert_each_acknowledged_row_once(&ha, &run, &outcomes).await;

    // Healed, the old primary rewinds and follows; the stray row is nowhere.
    drop(cut_off);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let roles = ha.roles();
        let back = roles
            .iter()
            .any(|r| r.0 == old && r.1 == "replica" && r.2 == "streaming");
        if back && roles.iter().filter(|r| r.1 == "primary").count() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{old} did not rejoin: {roles:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let leader = ha.settled().await;
    let pool = ha.pool(&leader).await;
    let stray_rows = rows_by_tag(&pool, &run).await.remove(&stray_tag);
    assert_eq!(stray_rows, None, "the stray write survived on {leader}");
    assert!(
        failed.len() <= outcomes.len() / 10,
        "too many failures: {failed:?}"
    );
}
