//! Group commit of the request log: concurrent `GET /` requests share inserts and reads, and
//! each still gets its own row, read back fresh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{ExtraInstance, client, text_of};
use rwsplit::request_log::{self, Batcher, LogError, Logged, NewEntry};
use rwsplit_router::{Consistency, ReadContext};

/// `(batches, rows)` from an instance's `request_log_batch_rows` histogram.
async fn batches(url: &str) -> (u64, u64) {
    let (status, metrics) = common::get_page(&client(), &format!("{url}/metrics")).await;
    assert_eq!(status, 200, "{url}/metrics");
    let value = |name| common::metric_sum(&metrics, name, &[]) as u64;
    (
        value("request_log_batch_rows_count"),
        value("request_log_batch_rows_sum"),
    )
}

/// Sends `n` concurrent `GET /`, each from a new client; returns the row ids, asserting that
/// every request succeeded and its read saw its own row.
async fn concurrent_gets(url: &str, n: usize) -> BTreeSet<i64> {
    let requests: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let res = client().get(&url).send().await.unwrap();
                (res.status().as_u16(), res.text().await.unwrap())
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for request in requests {
        let (status, page) = request.await.unwrap();
        assert_eq!(status, 200, "{page}");
        assert_eq!(text_of(&page, "freshness"), Some("seen"), "{page}");
        let id = text_of(&page, "row-id").unwrap();
        // The batch's table is rendered once; each page marks its own row, and only that one.
        let marked: Vec<&str> = page
            .split(r#"<tr class="mine">"#)
            .skip(1)
            .map(|after| {
                after
                    .split("</td>")
                    .next()
                    .unwrap()
                    .trim_start()
                    .trim_start_matches("<td>")
            })
            .collect();
        assert_eq!(marked, [id], "{page}");
        ids.insert(id.parse().unwrap());
    }
    ids
}

#[tokio::test]
async fn concurrent_requests_share_batches_and_each_sees_its_own_row() {
    let stack = common::Stack::get();
    // Replicas 100 ms behind hold each batch at the database long enough for the requests
    // that arrive meanwhile to queue behind it.
    let _delay = stack.delayed(100);
    let extra = ExtraInstance::start(
        &stack,
        &[("REQUEST_LOG_BATCH", "16"), ("CAUSAL_WAIT_MS", "2000")],
    )
    .await;
    let rows_before = common::request_rows(&stack).await;
    let ids = concurrent_gets(&extra.url, 24).await;
    assert_eq!(ids.len(), 24, "every request has a row of its own");
    assert_eq!(common::request_rows(&stack).await - rows_before, 24);
    let (count, rows) = batches(&extra.url).await;
    println!("BATCH | 24 concurrent requests | {count} batches");
    assert_eq!(rows, 24);
    assert!(count <= 4, "24 requests took {count} batches");
}

#[tokio::test]
async fn a_batch_limit_of_one_turns_the_batcher_off_and_each_request_writes_alone() {
    let stack = common::Stack::get();
    let extra = ExtraInstance::start(&stack, &[("REQUEST_LOG_BATCH", "1")]).await;
    let ids = concurrent_gets(&extra.url, 12).await;
    assert_eq!(ids.len(), 12);
    assert_eq!(batches(&extra.url).await, (0, 0), "no batch ran");
}

fn entry(request_id: &str) -> NewEntry {
    NewEntry {
        method: "GET".into(),
        path: "/batch-test".into(),
        client_addr: "127.0.0.1".into(),
        user_agent: "tests/batch.rs".into(),
        instance: "test".into(),
        session_tag: None,
        request_id: request_id.into(),
    }
}

#[tokio::test]
async fn one_request_id_is_one_row_within_and_across_batches() {
    let stack = common::Stack::get();
    let db = stack.db(0);
    let id = |n| format!("batch-test-{}-{n}", uuid::Uuid::now_v7());
    let (a, b) = (id("a"), id("b"));
    let mut ctx = ReadContext::new(Consistency::Eventual, None);
    let entries = vec![entry(&a), entry(&b), entry(&a)];
    let mut primary = db.writer(&mut ctx).await.unwrap();
    let first = request_log::insert_all(&mut primary, &entries).await;
    let first = primary.finish(first).await.unwrap();
    let rows = &first;
    assert_eq!(rows.len(), 3, "one row per entry, in order");
    assert_eq!(rows[0].id, rows[2].id, "the repeated id shares its row");
    assert_ne!(rows[0].id, rows[1].id);
    // A retry in a later batch, next to a new request: the retry gets the first row.
    let c = id("c");
    let entries = vec![entry(&c), entry(&b)];
    let mut primary = db.writer(&mut ctx).await.unwrap();
    let retry = request_log::insert_all(&mut primary, &entries).await;
    let retry = primary.finish(retry).await.unwrap();
    assert_eq!(retry[1], rows[1]);
    assert!(retry[0].id > rows[1].id);
    // A batch of retries alone writes nothing and gets the first attempt's row.
    let mut primary = db.writer(&mut ctx).await.unwrap();
    let again = request_log::insert_all(&mut primary, &[entry(&a)]).await;
    let again = primary.finish(again).await.unwrap();
    assert_eq!(again, [rows[0].clone()]);
    let admin = stack.admin("primary").await;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM request_log WHERE request_id = ANY($1)")
            .bind(vec![a, b, c])
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(stored, 3);
}

/// A batcher of its own over the stack's primary and replicas.
fn batcher(stack: &common::Stack) -> Batcher {
    Batcher::spawn(Arc::new(stack.db(2)), 16, Duration::from_millis(1500))
}

/// `entry` logged through `batcher` by a new session in causal mode.
fn log(
    batcher: &Batcher,
    entry: NewEntry,
) -> impl Future<Output = Result<Logged, LogError>> + Send + 'static {
    let batcher = batcher.clone();
    async move {
        let mut ctx = ReadContext::new(Consistency::Causal, None);
        batcher.log(entry, &mut ctx).await
    }
}

#[tokio::test]
async fn a_row_the_database_refuses_fails_alone_not_its_batch() {
    let stack = common::Stack::get();
    let batcher = batcher(&stack);
    let id = |n| format!("batch-refused-{}-{n}", uuid::Uuid::now_v7());
    // Untruncated, so the column's CHECK refuses it (the handler always truncates).
    let mut refused = entry(&id("bad"));
    refused.method = "M".repeat(100);
    // This test's runtime has one thread: all three are queued before the batcher runs, so
    // they form one batch.
    let (good1, bad, good2) = tokio::join!(
        log(&batcher, entry(&id("good1"))),
        log(&batcher, refused),
        log(&batcher, entry(&id("good2")))
    );
    for good in [good1, good2] {
        let logged = good.expect("a good row beside a refused one is written");
        let read = logged.read.expect("and read back");
        assert!(
            read.value
                .rows()
                .iter()
                .any(|row| row.id == logged.written.id)
        );
    }
    let err = bad.expect_err("the refused row fails");
    assert!(
        !err.is_unavailable(),
        "{err}: a refused row is not an outage"
    );
}

/// Holds the batcher's one yield to what Tokio does with it (not a promise of its docs): a
/// failure after a Tokio upgrade means batches no longer wait for the sockets' poll.
#[tokio::test]
async fn requests_woken_by_the_same_socket_poll_join_the_batch_being_cut() {
    let stack = common::Stack::get();
    let batcher = batcher(&stack);
    let id = |n| format!("batch-poll-{}-{n}", uuid::Uuid::now_v7());
    // Four requests wait on sockets whose data has arrived, as a request waits for its
    // session from Redis; the runtime learns of it only when it next polls its sockets.
    let mut waiting = Vec::new();
    for n in 0..4 {
        let (mut tx, mut rx) = tokio::net::UnixStream::pair().unwrap();
        tx.write_all(b"x").await.unwrap();
        let log = log(&batcher, entry(&id(n)));
        waiting.push(tokio::spawn(async move {
            rx.read_exact(&mut [0]).await.unwrap();
            drop(tx);
            log.await.unwrap()
        }));
    }
    // A fifth needs nothing and is queued at once. This test's runtime has one thread.
    let first = tokio::spawn(log(&batcher, entry(&id(4))))
        .await
        .unwrap()
        .unwrap();
    let mut logged = vec![first];
    for request in waiting {
        logged.push(request.await.unwrap());
    }
    let ids: BTreeSet<i64> = logged.iter().map(|l| l.written.id).collect();
    for l in &logged {
        let read = l.read.as_ref().unwrap();
        let seen: BTreeSet<i64> = read.value.rows().iter().map(|row| row.id).collect();
        assert!(
            ids.is_subset(&seen),
            "one batch: every read sees all five rows {ids:?}; this one saw {seen:?}"
        );
    }
}

#[tokio::test]
async fn with_the_primary_down_queued_requests_fail_with_the_batch_ahead() {
    let stack = common::Stack::get();
    let batcher = batcher(&stack);
    let _down = stack.stopped("primary");
    let timed = |name: &'static str| {
        let log = log(&batcher, entry(name));
        tokio::spawn(async move {
            let started = Instant::now();
            let result = log.await;
            (result, started.elapsed())
        })
    };
    let first = timed("never-written-1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Queued while the first batch waits for the primary: answered when it fails, rather
    // than after an attempt of its own (which would take until about 3 s).
    let second = timed("never-written-2");
    for (request, limit) in [(first, 2000), (second, 1900)] {
        let (result, took) = request.await.unwrap();
        let err = result.expect_err("no primary, no row");
        assert!(err.is_unavailable(), "{err}");
        assert!(
            took < Duration::from_millis(limit),
            "answered after {took:?}"
        );
    }
}
