//! The request-log app through nginx with a real HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{client, get_json, get_page, text_of};

async fn row_count(stack: &common::Stack) -> i64 {
    let admin = stack.admin("primary").await;
    sqlx::query_scalar("SELECT count(*) FROM request_log")
        .fetch_one(&admin)
        .await
        .unwrap()
}

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
async fn n_successful_gets_add_exactly_n_rows() {
    let stack = common::Stack::get();
    let client = client();
    let before = row_count(&stack).await;
    let n = 40;
    let mut ok = 0;
    for _ in 0..n {
        let (status, _) = get_page(&client, &stack.url).await;
        ok += i64::from(status == 200);
    }
    assert_eq!(ok, n);
    assert_eq!(row_count(&stack).await - before, n);
}

#[tokio::test]
async fn markup_in_the_path_and_user_agent_comes_back_escaped() {
    let stack = common::Stack::get();
    let evil = "<script>alert(1)</script>";
    let res = client()
        .get(format!("{}/?q={evil}", stack.url))
        .header("user-agent", evil)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(!page.contains("<script>"), "raw markup reached the page");
    assert!(
        page.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || page.contains("&lt;script&gt;")
    );
}

#[tokio::test]
async fn long_values_are_truncated_not_rejected() {
    let stack = common::Stack::get();
    let long_agent = "a".repeat(3000);
    let res = client()
        .get(format!("{}/?pad={}", stack.url, "b".repeat(4000)))
        .header("user-agent", &long_agent)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let admin = stack.admin("primary").await;
    let (path_len, agent_len): (i32, i32) = sqlx::query_as(
        "SELECT length(path), length(user_agent) FROM request_log ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(path_len as usize, rwsplit::request_log::MAX_PATH);
    assert_eq!(agent_len as usize, rwsplit::request_log::MAX_USER_AGENT);
}

#[tokio::test]
async fn health_and_readiness_answer_json_without_secrets() {
    let stack = common::Stack::get();
    let client = client();
    let (status, health) = get_json(&client, &format!("{}/healthz", stack.url)).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, ready) = get_json(&client, &format!("{}/readyz", stack.url)).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(
        ready["replicas"].as_array().map(Vec::len),
        Some(stack.replicas.into())
    );
    assert!(
        !ready.to_string().contains("rwsplit:rwsplit"),
        "a password leaked: {ready}"
    );
}

#[tokio::test]
async fn unknown_paths_get_a_404_page_and_a_request_id() {
    let stack = common::Stack::get();
    let res = client()
        .get(format!("{}/no/such/page", stack.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert!(res.headers().contains_key("x-request-id"));
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("There is nothing at this address.")
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
async fn a_forged_session_cookie_starts_a_new_session() {
    let stack = common::Stack::get();
    for forged in [
        "garbage",
        "AAAAAAAAAAAAAAAAAAAAAA",
        "<script>",
        &"x".repeat(4000),
    ] {
        let res = reqwest::Client::new()
            .get(&stack.url)
            .header("cookie", format!("rwsplit_session={forged}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{forged}");
        let cookie = res
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(cookie.starts_with("rwsplit_session="), "{forged}: {cookie}");
        assert!(!cookie.contains(forged), "{forged}");
        let page = res.text().await.unwrap();
        assert_eq!(text_of(&page, "visits"), Some("1"));
    }
}

#[tokio::test]
async fn cookies_and_headers_are_locked_down() {
    let stack = common::Stack::get();
    let res = reqwest::Client::new().get(&stack.url).send().await.unwrap();
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    // 128 random bits: tower-sessions ids print as 22 base64url characters.
    let id = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("rwsplit_session=");
    assert!(id.len() >= 22, "{id}");
    let headers = res.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    let page = res.text().await.unwrap();
    assert!(
        !page.contains("<script") && !page.contains("style=\""),
        "the page breaks its CSP"
    );
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

#[tokio::test]
async fn the_page_can_refresh_itself() {
    let stack = common::Stack::get();
    let client = client();
    let (status, page) = get_page(&client, &format!("{}/?refresh=2", stack.url)).await;
    assert_eq!(status, 200);
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
    let (status, page) = get_page(&client, &stack.url).await;
    assert_eq!(status, 200);
    assert!(!page.contains("http-equiv=\"refresh\""));
    for bad in ["0", "61", "soon"] {
        let (status, page) = get_page(&client, &format!("{}/?refresh={bad}", stack.url)).await;
        assert_eq!(status, 400, "{bad}");
        assert!(page.contains("from 1 to 60"));
    }
}
