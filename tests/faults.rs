//! Stopping parts of the stack: reads move, errors are fast and clear, and everything
//! recovers without restarting the web tier.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client, eventually, get_page, text_of};

#[tokio::test]
async fn with_every_replica_stopped_reads_use_the_primary_and_then_return() {
    let stack = common::Stack::get();
    let client = client();
    let names = ["replica1", "replica2", "replica3"];
    let stopped: Vec<_> = names[..stack.replicas as usize]
        .iter()
        .map(|name| stack.stopped(name))
        .collect();
    for _ in 0..6 {
        let (status, page) = get_page(&client, &stack.url).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(text_of(&page, "read-node"), Some("primary"));
    }
    drop(stopped);
    eventually(
        Duration::from_secs(15),
        "reads back on a replica",
        || async {
            let (_, page) = get_page(&client, &stack.url).await;
            text_of(&page, "read-node").is_some_and(|n| n.starts_with("replica"))
        },
    )
    .await;
    common::every_replica_usable(&stack).await;
}

#[tokio::test]
async fn with_one_replica_stopped_reads_use_the_other() {
    let stack = common::Stack::get();
    assert!(stack.replicas >= 2, "the test stack runs two replicas");
    common::every_replica_usable(&stack).await;
    let client = client();
    let _stopped = stack.stopped("replica1");
    let url = format!("{}/test.json?mode=eventual&n=10", stack.url);
    for _ in 0..3 {
        let (status, report) = common::get_json(&client, &url).await;
        assert_eq!(status, 200, "{report}");
        for probe in report["runs"][0]["probes"].as_array().unwrap() {
            assert_eq!(probe["node"], "replica2", "{probe}");
        }
    }
}

#[tokio::test]
async fn with_the_primary_stopped_pages_fail_fast_and_recover() {
    let stack = common::Stack::get();
    let client = client();
    let stopped = stack.stopped("primary");
    let started = Instant::now();
    let (status, page) = get_page(&client, &stack.url).await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{page}");
    assert!(took < Duration::from_secs(3), "503 took {took:?}");
    assert!(page.contains("The database is unavailable"), "{page}");
    let (status, _) = get_page(&client, &format!("{}/readyz", stack.url)).await;
    assert_eq!(status, 503);
    drop(stopped);
    eventually(
        Duration::from_secs(15),
        "200 after the primary returns",
        || async { get_page(&client, &stack.url).await.0 == 200 },
    )
    .await;
}

#[tokio::test]
async fn with_redis_stopped_pages_still_work_and_never_read_stale() {
    let stack = common::Stack::get();
    let client = client();
    let (status, _) = get_page(&client, &stack.url).await; // a session exists before Redis dies
    assert_eq!(status, 200);
    let stopped = stack.stopped("redis");
    let fresh = common::client(); // and a visitor without one
    for c in [&client, &fresh] {
        for _ in 0..3 {
            let (status, page) = get_page(c, &stack.url).await;
            assert_eq!(status, 200, "{page}");
            assert_eq!(text_of(&page, "visits"), Some("sessions unavailable"));
            assert!(page.contains("<table id=\"log\">"));
        }
    }
    // Sticky and causal cannot know the session's last write: they read the primary.
    for mode in ["sticky", "causal"] {
        let url = format!("{}/test.json?mode={mode}&n=5", stack.url);
        let (status, report) = common::get_json(&client, &url).await;
        assert_eq!(status, 200, "{report}");
        for probe in report["runs"][0]["probes"].as_array().unwrap() {
            assert_eq!(probe["node"], "primary", "{probe}");
            assert!(
                probe["reason"].as_str().unwrap().contains("session store"),
                "{probe}"
            );
        }
    }
    let (status, _) = get_page(&client, &format!("{}/readyz", stack.url)).await;
    assert_eq!(status, 503);
    drop(stopped);
    sessions_counted_again(&stack, &fresh).await;
}

/// A Redis that takes commands but answers none (stalled, or cut off without a reset) costs
/// a page at most `REDIS_TIMEOUT_MS` for each Redis call and its session, never a hang: the
/// session store bounds every call itself.
#[tokio::test]
async fn a_frozen_redis_costs_a_page_its_session_never_a_hang() {
    let stack = common::Stack::get();
    let returning = client();
    // Every instance connected first: connecting is bounded apart (the connect timeout).
    for n in 1..=stack.web {
        let (status, _) = get_page(&returning, &stack.web_url(n)).await;
        assert_eq!(status, 200, "web{n} reaches Redis first");
    }
    let frozen = stack.frozen("redis");
    let fresh = client();
    for n in 1..=stack.web {
        for (who, c) in [("a returning visitor", &returning), ("a new one", &fresh)] {
            let started = Instant::now();
            let (status, page) = get_page(c, &stack.web_url(n)).await;
            let took = started.elapsed();
            assert_eq!(status, 200, "web{n}, {who}: {page}");
            assert!(page.contains("<table id=\"log\">"), "web{n}, {who}: {page}");
            // The page says so rather than count a visit it cannot keep.
            assert_eq!(text_of(&page, "visits"), Some("sessions unavailable"));
            // One Redis call (the load, or a new visitor's check) waits out REDIS_TIMEOUT_MS.
            assert!(took < Duration::from_secs(2), "web{n}, {who}: {took:?}");
        }
    }
    drop(frozen);
    sessions_counted_again(&stack, &fresh).await;
}

/// Waits until Redis is back for the web tier: `client`'s visits are counted again.
async fn sessions_counted_again(stack: &common::Stack, client: &reqwest::Client) {
    eventually(
        Duration::from_secs(15),
        "sessions counted again",
        || async {
            let (_, page) = get_page(client, &stack.url).await;
            text_of(&page, "visits").is_some_and(|v| v.parse::<u64>().is_ok())
        },
    )
    .await;
}

/// Redis can go after an instance last reached it: a new visitor's first Redis call is then
/// the save, after the page was rendered and its row written. That costs the visit its
/// session, never the page.
#[tokio::test]
async fn redis_gone_before_the_session_is_saved_costs_the_session_not_the_page() {
    let stack = common::Stack::get();
    for n in 1..=stack.web {
        let (status, _) = get_page(&client(), &stack.web_url(n)).await;
        assert_eq!(status, 200, "web{n} reaches Redis first");
    }
    let rows = common::request_rows(&stack).await;
    let stopped = stack.stopped("redis");
    for n in 1..=stack.web {
        let (status, page) = get_page(&client(), &stack.web_url(n)).await;
        assert_eq!(status, 200, "web{n}: {page}");
        assert!(page.contains("<table id=\"log\">"), "web{n}: {page}");
    }
    assert_eq!(
        common::request_rows(&stack).await,
        rows + i64::from(stack.web)
    );
    drop(stopped);
}
