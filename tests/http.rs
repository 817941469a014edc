//! The request-log app through nginx with a real HTTP client: what needs nginx and several
//! instances. The rest of the HTTP surface is tested in process (tests/app/).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{client, get_page, text_of};

#[tokio::test]
async fn one_session_is_shared_by_every_instance() {
    let stack = common::Stack::get();
    let client = client();
    let mut instances = BTreeSet::new();
    let mut last_visits = 0;
    for i in 0..30 {
        let (status, page) = get_page(&client, &stack.url).await;
        assert_eq!(status, 200, "{page}");
        instances.insert(text_of(&page, "instance").unwrap().to_owned());
        let visits: u64 = text_of(&page, "visits").unwrap().parse().unwrap();
        if i > 0 {
            assert_eq!(
                visits,
                last_visits + 1,
                "visit count must rise by exactly one"
            );
        }
        last_visits = visits;
    }
    assert!(
        instances.len() >= 2,
        "only {instances:?} served 30 requests"
    );
}

#[tokio::test]
async fn the_client_address_comes_from_the_trusted_proxy() {
    let stack = common::Stack::get();
    // nginx appends the peer it saw; what the client wrote before that is not believed.
    let res = client()
        .get(&stack.url)
        .header("x-forwarded-for", "203.0.113.66")
        .send()
        .await
        .unwrap();
    let page = res.text().await.unwrap();
    assert!(page.contains("<dt>Client</dt><dd>127.0.0.1</dd>"), "{page}");
}

#[tokio::test]
async fn metrics_are_served_by_instances_and_hidden_by_nginx() {
    let stack = common::Stack::get();
    let client = client();
    for _ in 0..3 {
        get_page(&client, &stack.web_url(1)).await;
    }
    let (status, text) = get_page(&client, &format!("{}/metrics", stack.web_url(1))).await;
    assert_eq!(status, 200);
    for series in [
        "http_requests_total{route=\"/\",status=\"200\"}",
        "http_request_duration_seconds_bucket{route=\"/\",status=\"200\",le=",
        "db_reads_total{node=\"replica",
        "replica_usable{replica=\"replica1\"} 1",
        "replica_lag_bytes{replica=\"replica1\"}",
        "db_pool_connections{pool=\"primary\",state=\"open\"}",
        "db_pool_waiting{pool=\"primary\"} 0",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    let (status, _) = get_page(&client, &format!("{}/metrics", stack.url)).await;
    assert_eq!(status, 404, "nginx must not publish /metrics");
}
