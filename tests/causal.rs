//! Causal mode is causal: a session's token (the highest WAL position it has observed) only
//! moves forward, and no read of the session is answered by a node behind it. So a session
//! never sees time go backwards, whichever instance and replica serve it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, get_json};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rwsplit::request_log::{self, Entry, NewEntry};
use rwsplit::session::{Record, RedisStore, SessionData};
use rwsplit_router::{Consistency, Db, Lsn, ReadContext, Reason};

/// One replica replays at once, the other a second late: consecutive reads that land on
/// different replicas disagree about what exists, which is where time travel happens.
const SLOW_REPLICA_MS: u32 = 1000;
const ROWS: usize = 5;
const REREADS: usize = 20;

/// For each of `ROWS` rows another session wrote: a session that never writes reads it
/// through nginx until it has seen it, then `REREADS` more times. Returns how many of those
/// later reads missed the row.
async fn rows_missing_after_seen(stack: &common::Stack, mode: &str) -> usize {
    let writer = client();
    let reader = client();
    let mut missing = 0;
    for _ in 0..ROWS {
        let (status, written) = get_json(&writer, &format!("{}/test/write.json", stack.url)).await;
        assert_eq!(status, 200, "{written}");
        let id = written["id"].as_i64().unwrap();
        let url = format!("{}/test/read.json?id={id}&mode={mode}", stack.url);
        let read = |client: &reqwest::Client| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let (status, body) = get_json(&client, &url).await;
                assert_eq!(status, 200, "{body}");
                body["found"].as_bool().unwrap()
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !read(&reader).await {
            assert!(Instant::now() < deadline, "row {id} never showed");
        }
        for _ in 0..REREADS {
            if !read(&reader).await {
                missing += 1;
            }
        }
    }
    missing
}

#[tokio::test]
async fn a_reader_that_saw_a_row_never_misses_it_again_in_causal_mode_but_does_in_eventual() {
    let stack = common::Stack::get();
    assert!(
        stack.replicas >= 2 && stack.web >= 2,
        "needs two replicas and two instances"
    );
    let _delay = stack.delayed_one("replica2", SLOW_REPLICA_MS);

    let eventual = rows_missing_after_seen(&stack, "eventual").await;
    let causal = rows_missing_after_seen(&stack, "causal").await;
    println!(
        "missing after seen, of {}: eventual {eventual}, causal {causal}",
        ROWS * REREADS
    );
    // Eventual shows the anomaly, so the check below could fail: causal rules it out.
    assert!(eventual > 0, "eventual mode never went back in time");
    assert_eq!(causal, 0, "causal mode went back in time");
}

#[tokio::test]
async fn the_staleness_probe_counts_time_travel_in_eventual_mode_and_none_in_causal() {
    let stack = common::Stack::get();
    let _delay = stack.delayed_one("replica2", SLOW_REPLICA_MS);
    let (status, report) =
        get_json(&client(), &format!("{}/test.json?mode=all&n=20", stack.url)).await;
    assert_eq!(status, 200, "{report}");
    let runs: HashMap<&str, &serde_json::Value> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["summary"]["mode"].as_str().unwrap(), &r["summary"]))
        .collect();
    let travel = |mode: &str| runs[mode]["time_travel"].as_u64().unwrap();
    assert_eq!(runs["causal"]["reader_reads"], 40);
    assert!(travel("eventual") > 0, "{}", runs["eventual"]);
    assert_eq!(travel("causal"), 0, "{}", runs["causal"]);
    assert!(
        runs["causal"]["reader_replica_reads"].as_u64().unwrap() > 0,
        "{}",
        runs["causal"]
    );
}

#[tokio::test]
async fn a_token_ahead_of_every_replica_waits_no_longer_than_the_causal_wait_then_reads_the_primary()
 {
    let stack = common::Stack::get();
    let db = stack.checked_db(stack.replicas).await;
    let admin = stack.admin("primary").await;
    let now: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&admin)
        .await
        .unwrap();
    // As after a replica was rebuilt from an older backup: nobody has replayed this far.
    let ahead = Lsn(now.parse::<Lsn>().unwrap().0 + (1 << 30));
    let mut ctx = ReadContext::new(Consistency::Causal, None);
    ctx.observe(ahead);

    let started = Instant::now();
    let read = db
        .read(&mut ctx, |c| {
            Box::pin(sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(c))
        })
        .await
        .unwrap();
    let took = started.elapsed();
    let wait = stack.config(0).db.router.routing.causal_wait;
    assert_eq!(read.node, "primary");
    assert!(!read.value, "the primary answered");
    let Reason::CausalTimeout { waited_ms } = read.reason else {
        panic!("{:?}", read.reason)
    };
    assert!(
        u128::from(waited_ms) < wait.as_millis() + 50,
        "waited {waited_ms} ms"
    );
    // Not a hang: one causal wait, then one read on the primary.
    assert!(took < wait + Duration::from_secs(1), "{took:?}");
    assert_eq!(ctx.token, Some(ahead), "the token moved back");
}

/// A record whose token is `token`.
fn record(token: Lsn) -> Record {
    let data = SessionData {
        tag: "t".into(),
        visits: 1,
        ..SessionData::default()
    };
    Record {
        data,
        token: Some(token),
    }
}

#[tokio::test]
async fn two_requests_of_one_session_on_two_instances_keep_the_larger_token() {
    let stack = common::Stack::get();
    let config = stack.config(stack.replicas);
    let ttl = Duration::from_secs(300);
    // Two instances: each its own store and Redis connection, as two web processes have.
    let web1 = Arc::new(RedisStore::new(&config.session).unwrap());
    let web2 = Arc::new(RedisStore::new(&config.session).unwrap());
    let id = web1.save(None, &record(Lsn(0x10)), ttl).await.unwrap();

    // Both requests load the session before either saves: the barrier.
    let on_web1 = web1.load(id).await.unwrap().unwrap();
    let on_web2 = web2.load(id).await.unwrap().unwrap();
    assert_eq!(
        (on_web1.token, on_web2.token),
        (Some(Lsn(0x10)), Some(Lsn(0x10)))
    );
    // web1's request wrote and saves first; web2's request, which saw less, saves its whole
    // record last.
    web1.save(Some(id), &record(Lsn(0x30)), ttl).await.unwrap();
    web2.save(Some(id), &record(Lsn(0x20)), ttl).await.unwrap();

    let after = web1.load(id).await.unwrap().unwrap();
    assert_eq!(after.token, Some(Lsn(0x30)), "the token went backwards");

    // Redis losing the token's own key degrades to what the record still knows.
    let redis = redis::Client::open(stack.redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("rwsplit:causal:{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let degraded = web2.load(id).await.unwrap().unwrap();
    assert_eq!(degraded.token, Some(Lsn(0x20)));
    web1.delete(id).await.unwrap();
}

/// The queries causal mode added to reads of `kind` (`wait`, `observe`), as the router
/// counted them into `metrics`.
fn causal_queries(metrics: &PrometheusHandle, kind: &str) -> f64 {
    common::metric_sum(&metrics.render(), "causal_queries_total", &[("kind", kind)])
}

/// Writes one row on the primary in `ctx`.
async fn write_row(db: &Db, ctx: &mut ReadContext) -> Entry {
    let entry = NewEntry {
        method: "GET".into(),
        path: "/causal-test".into(),
        client_addr: "192.0.2.1".into(),
        user_agent: "causal test".into(),
        instance: "test".into(),
        session_tag: None,
        request_id: uuid::Uuid::now_v7().to_string(),
    };
    let mut primary = db.writer(ctx).await.unwrap();
    let written = request_log::insert(&mut primary, &entry).await;
    primary.finish(written).await.unwrap()
}

/// Waits, on a connection of its own (the router learns nothing from it), until `replica`
/// has replayed `lsn`; returns the position it saw.
async fn replayed(stack: &common::Stack, replica: &str, lsn: Lsn) -> Lsn {
    let admin = stack.admin(replica).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen: Lsn = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text")
            .fetch_one(&admin)
            .await
            .unwrap();
        if seen >= lsn {
            return seen;
        }
        assert!(Instant::now() < deadline, "{replica} never replayed {lsn}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The latest rows through the read route, as `GET /` reads them.
async fn read_latest(db: &Db, ctx: &mut ReadContext) -> rwsplit_router::Routed<Vec<Entry>> {
    db.read(ctx, |c| Box::pin(request_log::latest(c, 25)))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_read_after_the_session_s_own_write_goes_to_a_replica_that_has_it_and_takes_its_position()
{
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _counting = metrics::set_default_local_recorder(&recorder);
    let stack = common::Stack::get();
    let db = stack.checked_db(1).await;
    let mut ctx = ReadContext::new(Consistency::Causal, None);
    let row = write_row(&db, &mut ctx).await;
    let token = ctx.token.unwrap();

    let read = read_latest(&db, &mut ctx).await;

    assert_eq!(read.node, "replica1");
    assert!(
        matches!(read.reason, Reason::Replayed { .. }),
        "{:?}",
        read.reason
    );
    assert!(
        read.value.contains(&row),
        "the session missed its own write"
    );
    // The replica's position, asked after the read, covers all the read saw: the router and
    // the session know the replica at least as far as the write.
    assert_eq!(causal_queries(&metrics, "observe"), 1.0);
    let known = db.replica_statuses()[0].replay_lsn;
    assert!(known >= Some(token), "{known:?} < {token}");
    assert!(
        ctx.token >= known,
        "the token does not cover what the read saw"
    );
}

#[tokio::test]
async fn a_read_after_the_session_s_own_write_on_a_slow_replica_waits_then_reads_the_primary() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _counting = metrics::set_default_local_recorder(&recorder);
    let stack = common::Stack::get();
    let db = stack.checked_db(1).await;
    // replica1 shows the write a second after it commits: longer than the causal wait.
    let _delay = stack.delayed_one("replica1", SLOW_REPLICA_MS);
    let mut ctx = ReadContext::new(Consistency::Causal, None);
    let row = write_row(&db, &mut ctx).await;

    let read = read_latest(&db, &mut ctx).await;

    assert!(
        read.value.contains(&row),
        "the session missed its own write"
    );
    assert_eq!(read.node, "primary");
    assert!(
        matches!(read.reason, Reason::CausalTimeout { .. }),
        "{:?}",
        read.reason
    );
    assert!(causal_queries(&metrics, "wait") >= 1.0);
}

#[tokio::test]
async fn a_token_beyond_the_session_s_own_write_keeps_reads_off_a_replica_that_only_has_the_write()
{
    let stack = common::Stack::get();
    let db = stack.checked_db(1).await;
    let admin = stack.admin("primary").await;
    let now: Lsn = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&admin)
        .await
        .unwrap();
    // The session has seen more than its write will reach (a node no replica has caught up
    // with): a replica that shows the write may still miss the rest.
    let ahead = Lsn(now.0 + (1 << 30));
    let mut ctx = ReadContext::new(Consistency::Causal, None);
    ctx.observe(ahead);
    let row = write_row(&db, &mut ctx).await;
    replayed(&stack, "replica1", ctx.last_write.unwrap().lsn.unwrap()).await;

    let read = read_latest(&db, &mut ctx).await;

    assert!(read.value.contains(&row));
    assert_eq!(read.node, "primary", "a replica behind the token answered");
    assert!(
        matches!(read.reason, Reason::CausalTimeout { .. }),
        "{:?}",
        read.reason
    );
    assert_eq!(ctx.token, Some(ahead));
}

/// Replay checks (`wait` queries) every instance made on `node`, or on any node.
async fn waits(stack: &common::Stack, node: Option<&str>) -> f64 {
    let mut labels = vec![("kind", "wait")];
    labels.extend(node.map(|n| ("node", n)));
    common::stack_metric(stack, "causal_queries_total", &labels).await
}

/// `n` causal `GET /` in a row through nginx, one session: each page's reading node and
/// the reason it gives.
async fn causal_pages(stack: &common::Stack, n: usize) -> Vec<(String, String)> {
    let client = client();
    let mut pages = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, page) = common::get_page(&client, &format!("{}/", stack.url)).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(common::text_of(&page, "freshness"), Some("seen"));
        let text = |id| common::text_of(&page, id).unwrap_or_default().to_owned();
        pages.push((text("read-node"), text("read-reason")));
    }
    pages
}

/// Long enough under traffic for every instance to have measured a changed lag, by a
/// monitor check or by one wait.
const LEARN: Duration = Duration::from_secs(1);

/// Traffic for [`LEARN`]: how many pages that took.
async fn learn(stack: &common::Stack) -> usize {
    let started = Instant::now();
    let mut pages = 0;
    while started.elapsed() < LEARN {
        pages += causal_pages(stack, 3).await.len();
    }
    pages
}

#[tokio::test]
async fn with_every_replica_500_ms_behind_causal_pages_read_the_primary_without_waiting() {
    let stack = common::Stack::get();
    common::every_replica_usable(&stack).await;
    let _delay = stack.delayed(500);
    let before = waits(&stack, None).await;
    let pages = learn(&stack).await;
    let learning = waits(&stack, None).await - before;
    println!("{learning} replay checks over the first {pages} pages");

    let before = waits(&stack, None).await;
    let read = causal_pages(&stack, 50).await;
    let waited = waits(&stack, None).await - before;

    assert_eq!(waited, 0.0, "reads waited for replicas 500 ms behind");
    for (node, reason) in &read {
        assert_eq!(node, "primary", "{reason}");
        assert!(reason.contains("without waiting"), "{reason}");
    }
    // Learning took a few futile waits at most: polls back off to 8 ms, so a 50 ms wait
    // polls about ten times; two such waits per instance, and the rest never waited.
    assert!(
        learning <= f64::from(stack.web) * 2.0 * 12.0,
        "{learning} replay checks while learning"
    );
    // /test counts them: each probe's read after its write went to the primary at once.
    let url = format!("{}/test.json?mode=causal&n=10", stack.url);
    let (status, report) = get_json(&client(), &url).await;
    assert_eq!(status, 200, "{report}");
    let summary = &report["runs"][0]["summary"];
    assert!(
        summary["primary_without_wait"].as_u64().unwrap() >= 10,
        "{summary}"
    );
}

#[tokio::test]
async fn when_the_replicas_catch_up_causal_reads_return_to_them_within_a_few_checks() {
    let stack = common::Stack::get();
    common::every_replica_usable(&stack).await;
    let delay = stack.delayed(500);
    learn(&stack).await;
    assert!(
        causal_pages(&stack, 9)
            .await
            .iter()
            .all(|(node, _)| node == "primary"),
        "a replica 500 ms behind answered"
    );
    drop(delay);
    // The monitor checks every 200 ms on the test stack: ten checks at the most.
    let caught_up = Instant::now();
    common::eventually(
        Duration::from_secs(2),
        "causal reads back on the replicas",
        || async {
            causal_pages(&stack, 9)
                .await
                .iter()
                .all(|(node, _)| node.starts_with("replica"))
        },
    )
    .await;
    println!(
        "back on the replicas {:?} after the delay went",
        caught_up.elapsed()
    );
}

#[tokio::test]
async fn with_replicas_0_and_1500_ms_behind_causal_reads_go_to_the_fresh_one_and_never_wait_on_the_slow_one()
 {
    let stack = common::Stack::get();
    assert!(stack.replicas >= 2, "needs two replicas");
    common::every_replica_usable(&stack).await;
    let _delay = stack.delayed_one("replica2", 1500);
    learn(&stack).await;

    let before = waits(&stack, Some("replica2")).await;
    let read = causal_pages(&stack, 50).await;
    let waited = waits(&stack, Some("replica2")).await - before;

    assert_eq!(waited, 0.0, "reads waited on the replica 1,500 ms behind");
    assert!(read.iter().all(|(node, _)| node != "replica2"), "{read:?}");
    let fresh = read.iter().filter(|(node, _)| node == "replica1").count();
    assert!(fresh >= 45, "{fresh} of 50 on replica1: {read:?}");
}
