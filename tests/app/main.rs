//! The fast tier: the whole app in process (`rwsplit::app` driven with `oneshot`), each test
//! over a database of its own on the test stack's real primary and streaming replicas, with
//! the stack's Redis. Tests run in parallel; what needs nginx, several processes or faults
//! stays in the full-stack tests beside this one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;
mod kit;

use common::text_of;
use kit::TestApp;

use metrics_exporter_prometheus::PrometheusBuilder;
use rwsplit::request_log::{self, NewEntry};

async fn rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM request_log")
        .fetch_one(&mut app.admin().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn n_successful_gets_add_exactly_n_rows() {
    let app = TestApp::new().await;
    for _ in 0..20 {
        assert_eq!(app.get("/").await.status, 200);
    }
    assert_eq!(rows(&app).await, 20);
}

#[tokio::test]
async fn a_row_comes_back_from_the_database_field_for_field() {
    // Every field a different value, so a column decoded into the wrong field shows.
    let app = TestApp::new().await;
    let mut db = app.admin().await;
    let new = NewEntry {
        method: "POST".into(),
        path: "/a/path".into(),
        client_addr: "192.0.2.7".into(),
        user_agent: "an agent".into(),
        instance: "an-instance".into(),
        session_tag: Some("a-tag".into()),
        request_id: "a-request-id".into(),
    };
    let written = request_log::insert(&mut db, &new).await.unwrap();
    let read = request_log::latest(&mut db, 1).await.unwrap();
    assert_eq!(read.len(), 1);
    for entry in [&written, &read[0]] {
        assert_eq!(
            (
                entry.method.as_str(),
                entry.path.as_str(),
                entry.client_addr.as_str(),
                entry.user_agent.as_str(),
                entry.instance.as_str(),
                entry.session_tag.as_deref(),
            ),
            (
                "POST",
                "/a/path",
                "192.0.2.7",
                "an agent",
                "an-instance",
                Some("a-tag")
            )
        );
    }
    assert_eq!((read[0].id, read[0].at), (written.id, written.at));
    // A retry reads the row its first attempt wrote with a query of its own, decoded the same way.
    let again = request_log::insert(&mut db, &new).await.unwrap();
    assert_eq!((again.id, again.path), (written.id, written.path));
}

#[tokio::test]
async fn a_column_of_another_type_fails_the_read_even_where_the_first_row_holds_null() {
    // A NULL has no type to check: the row after it must still be checked, or bytes that
    // happen to be UTF-8 would read as text.
    let app = TestApp::new().await;
    let mut db = app.admin().await;
    let entry = |tag: Option<&str>, id: &str| NewEntry {
        method: "GET".into(),
        path: "/".into(),
        client_addr: "192.0.2.7".into(),
        user_agent: "an agent".into(),
        instance: "an-instance".into(),
        session_tag: tag.map(str::to_owned),
        request_id: id.into(),
    };
    request_log::insert(&mut db, &entry(Some("a-tag"), "first"))
        .await
        .unwrap();
    request_log::insert(&mut db, &entry(None, "second"))
        .await
        .unwrap();
    sqlx::query(
        "ALTER TABLE request_log ALTER COLUMN session_tag TYPE bytea \
         USING convert_to(session_tag, 'UTF8')",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let err = request_log::latest(&mut db, 2).await.unwrap_err();
    assert!(err.to_string().contains("mismatched types"), "{err}");
}

#[tokio::test]
async fn with_batching_off_or_on_each_request_sees_its_own_row_on_a_replica() {
    for batch in ["1", "16"] {
        let app =
            TestApp::with(&[("REQUEST_LOG_BATCH", batch), ("READ_CONSISTENCY", "causal")]).await;
        assert_eq!(app.state.batcher.is_some(), batch != "1");
        let first = app.get("/").await;
        let cookie = first.session_cookie();
        for _ in 0..5 {
            let page = app.get_with("/", &[("cookie", &cookie)]).await;
            assert_eq!(page.status, 200, "{}", page.text);
            assert_eq!(
                text_of(&page.text, "freshness"),
                Some("seen"),
                "batch {batch}"
            );
            assert!(
                text_of(&page.text, "read-node").is_some_and(|n| n.starts_with("replica")),
                "batch {batch}: {:?}",
                text_of(&page.text, "read-node")
            );
        }
        assert_eq!(rows(&app).await, 6);
    }
}

#[tokio::test]
async fn a_session_counts_its_visits_across_instances_sharing_redis() {
    let (web1, web2) = (TestApp::new().await, TestApp::new().await);
    let cookie = web1.get("/").await.session_cookie();
    for (i, web) in [&web2, &web1, &web2].into_iter().enumerate() {
        let page = web.get_with("/", &[("cookie", &cookie)]).await;
        assert_eq!(
            text_of(&page.text, "visits"),
            Some((i + 2).to_string().as_str())
        );
    }
}

#[tokio::test]
async fn markup_in_the_path_and_user_agent_comes_back_escaped() {
    let app = TestApp::new().await;
    let evil = "<script>alert(1)</script>";
    let page = app
        .get_with(
            "/?q=%3Cscript%3Ealert(1)%3C/script%3E",
            &[("user-agent", evil)],
        )
        .await;
    assert_eq!(page.status, 200);
    assert!(
        !page.text.contains("<script>"),
        "raw markup reached the page"
    );
    assert!(
        page.text
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;")
    );
}

#[tokio::test]
async fn long_values_are_truncated_not_rejected() {
    let app = TestApp::new().await;
    let agent = "a".repeat(3000);
    let page = app
        .get_with(
            &format!("/?pad={}", "b".repeat(4000)),
            &[("user-agent", &agent)],
        )
        .await;
    assert_eq!(page.status, 200);
    let (path_len, agent_len): (i32, i32) =
        sqlx::query_as("SELECT length(path), length(user_agent) FROM request_log")
            .fetch_one(&mut app.admin().await)
            .await
            .unwrap();
    assert_eq!(path_len as usize, rwsplit::request_log::MAX_PATH);
    assert_eq!(agent_len as usize, rwsplit::request_log::MAX_USER_AGENT);
}

#[tokio::test]
async fn health_and_readiness_answer_json_without_secrets() {
    let app = TestApp::new().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert!(health.text.contains(r#""status":"ok""#), "{}", health.text);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    let ready: serde_json::Value = serde_json::from_str(&ready.text).unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(
        ready["replicas"].as_array().map(Vec::len),
        Some(app.stack.replicas.into())
    );
    assert!(!ready.to_string().contains("postgres:postgres"), "{ready}");
}

#[tokio::test]
async fn unknown_paths_get_a_404_page_and_a_request_id() {
    let app = TestApp::new().await;
    let page = app.get("/no/such/page").await;
    assert_eq!(page.status, 404);
    assert!(page.headers.contains_key("x-request-id"));
    assert!(page.text.contains("There is nothing at this address."));
}

/// A request that outlives `REQUEST_TIMEOUT_MS` is answered 503 at that bound, with its request
/// id. Here a Redis that takes connections and answers nothing holds the session's load for
/// longer than the request may take.
#[tokio::test]
async fn a_request_slower_than_its_timeout_is_answered_503_at_the_bound() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redis = format!("redis://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            connections.push(connection);
        }
    });
    let app = TestApp::with(&[
        ("REDIS_URL", &redis),
        ("REDIS_TIMEOUT_MS", "10000"),
        ("REQUEST_TIMEOUT_MS", "200"),
    ])
    .await;
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _counting = metrics::set_default_local_recorder(&recorder);
    let started = std::time::Instant::now();
    let page = app.get("/").await;
    let took = started.elapsed();
    let json = app.get("/test/read.json?id=1").await;
    held.abort();
    assert_eq!(page.status, 503, "{}", page.text);
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    // An error like any other: a page that says what happened, the headers every answer has,
    // and a count in the metrics.
    assert!(page.text.contains("took too long"), "{}", page.text);
    for header in ["x-request-id", "content-security-policy", "retry-after"] {
        assert!(page.headers.contains_key(header), "no {header}");
    }
    assert_eq!(json.status, 503, "{}", json.text);
    assert!(json.text.contains(r#""status":503"#), "{}", json.text);
    let counted = metrics.render();
    for route in ["/", "/test/read.json"] {
        let series = format!(r#"http_requests_total{{route="{route}",status="503"}} 1"#);
        assert!(counted.contains(&series), "{counted}");
    }
}

#[tokio::test]
async fn each_request_is_counted_and_timed_once_under_its_route_and_status() {
    let app = TestApp::new().await;
    let recorder = PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let _counting = metrics::set_default_local_recorder(&recorder);
    // Two routes with the same status, one route with two statuses, and a path no route has.
    for uri in [
        "/healthz",
        "/test/read.json?id=x",
        "/healthz",
        "/test/read.json?id=1",
        "/readyz",
        "/test/read.json?id=0",
        "/healthz",
        "/no/such/page",
    ] {
        app.get(uri).await;
    }
    let counted = metrics.render();
    for (route, status, times) in [
        ("/healthz", 200, 3),
        ("/readyz", 200, 1),
        ("/test/read.json", 400, 2),
        ("/test/read.json", 200, 1),
        ("unmatched", 404, 1),
    ] {
        let labels = format!(r#"{{route="{route}",status="{status}"}}"#);
        for series in [
            format!("http_requests_total{labels} {times}"),
            format!("http_request_duration_seconds_count{labels} {times}"),
        ] {
            assert!(counted.contains(&series), "no {series} in\n{counted}");
        }
    }
    assert_eq!(
        counted.matches("http_requests_total{").count(),
        5,
        "{counted}"
    );
}

#[tokio::test]
async fn a_forged_session_cookie_starts_a_new_session() {
    let app = TestApp::new().await;
    for forged in [
        "garbage",
        "AAAAAAAAAAAAAAAAAAAAAA",
        "%3Cscript%3E",
        &"x".repeat(4000),
        // Well-formed, but no session of Redis's: the client still does not get to choose.
        "0123456789abcdef0123456789abcdef",
    ] {
        let page = app
            .get_with("/", &[("cookie", &format!("rwsplit_session={forged}"))])
            .await;
        assert_eq!(page.status, 200, "{forged}");
        let cookie = page.session_cookie();
        assert!(cookie.starts_with("rwsplit_session="), "{forged}: {cookie}");
        assert!(!cookie.contains(forged), "{forged}");
        assert_eq!(text_of(&page.text, "visits"), Some("1"));
    }
}

#[tokio::test]
async fn a_session_record_it_cannot_read_starts_a_new_session() {
    let app = TestApp::new().await;
    let first = app.get("/").await;
    let cookie = first.session_cookie();
    // A record of another format, as an older build would have left it.
    let id = cookie.trim_start_matches("rwsplit_session=");
    let redis = redis::Client::open(app.stack.redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("rwsplit:session:{id}"))
        .arg(r#"{"id":1,"data":{"rwsplit":{}},"expiry_date":[2026,1,0,0,0,0,0,0,0]}"#)
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .unwrap();
    let page = app.get_with("/", &[("cookie", &cookie)]).await;
    assert_eq!(page.status, 200);
    assert_eq!(text_of(&page.text, "visits"), Some("1"));
    assert_ne!(page.session_cookie(), cookie, "a new session gets a new id");
}

#[tokio::test]
async fn a_router_without_the_session_middleware_fails_closed_and_says_nothing_of_why() {
    use axum::body::Body;
    use tower::ServiceExt;
    let app = TestApp::new().await;
    let router = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|_: rwsplit::session::Visit| async { "served" }),
        )
        .with_state(app.state.clone());
    let request = axum::http::Request::get("/").body(Body::empty()).unwrap();
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 500);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("It has been logged"), "{body}");
    assert!(!body.contains("session"), "{body}");
}

/// The `Max-Age` of a `Set-Cookie` header.
fn max_age(page: &kit::Response) -> Option<u64> {
    let cookie = page.headers["set-cookie"].to_str().ok()?;
    cookie
        .split("; ")
        .find_map(|attr| attr.strip_prefix("Max-Age="))?
        .parse()
        .ok()
}

#[tokio::test]
async fn a_first_visit_lives_briefly_a_returning_one_as_long_as_configured() {
    let app = TestApp::with(&[
        ("SESSION_FIRST_VISIT_SECS", "60"),
        ("SESSION_IDLE_SECS", "7200"),
        ("COOKIE_SECURE", "true"),
    ])
    .await;
    let first = app.get("/").await;
    let cookie = first.session_cookie();
    assert_eq!(max_age(&first), Some(60));
    assert!(
        first.headers["set-cookie"]
            .to_str()
            .unwrap()
            .ends_with("; Secure")
    );
    let second = app.get_with("/", &[("cookie", &cookie)]).await;
    assert_eq!(second.session_cookie(), cookie, "the same session");
    assert_eq!(max_age(&second), Some(7200));
    // Redis forgets the record when the cookie lapses, not later.
    let id = cookie.trim_start_matches("rwsplit_session=");
    let redis = redis::Client::open(app.stack.redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("rwsplit:session:{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((7190..=7200).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn cookies_and_headers_are_locked_down() {
    let app = TestApp::new().await;
    let page = app.get("/").await;
    let cookie = page.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    // 128 random bits, as 32 hex digits.
    let id = page.session_cookie();
    let hex = id.trim_start_matches("rwsplit_session=");
    assert!(
        hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe"),
        "{csp}"
    );
    assert!(
        !page.text.contains("<script") && !page.text.contains("style=\""),
        "the page breaks its CSP"
    );
}

#[tokio::test]
async fn the_page_can_refresh_itself_within_bounds() {
    let app = TestApp::new().await;
    let page = app.get("/?refresh=2").await;
    assert_eq!(page.status, 200);
    assert!(
        page.text
            .contains("<meta http-equiv=\"refresh\" content=\"2\">")
    );
    assert!(!app.get("/").await.text.contains("http-equiv=\"refresh\""));
    for bad in ["0", "61", "soon"] {
        let page = app.get(&format!("/?refresh={bad}")).await;
        assert_eq!(page.status, 400, "{bad}");
        assert!(page.text.contains("from 1 to 60"));
    }
}

#[tokio::test]
async fn the_test_pages_reject_bad_parameters_naming_what_is_allowed() {
    let app = TestApp::new().await;
    for (uri, says) in [
        ("/test.json?n=0", "1 to 200"),
        ("/test.json?n=many", "1 to 200"),
        ("/test.json?mode=strong", "eventual, sticky, causal or all"),
        ("/test/read.json?id=-1", "positive whole number"),
        (
            "/test/read.json?id=1&mode=all",
            "eventual, sticky or causal",
        ),
    ] {
        let res = app.get(uri).await;
        assert_eq!(res.status, 400, "{uri}");
        let body: serde_json::Value = serde_json::from_str(&res.text).unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(says)),
            "{uri}: {body}"
        );
    }
}

#[tokio::test]
async fn a_probe_run_in_process_reads_replicas_and_is_never_stale_in_causal_mode() {
    let app = TestApp::new().await;
    let res = app.get("/test.json?mode=causal&n=10").await;
    assert_eq!(res.status, 200, "{}", res.text);
    let report: serde_json::Value = serde_json::from_str(&res.text).unwrap();
    let summary = &report["runs"][0]["summary"];
    assert_eq!(summary["stale"], 0, "{summary}");
    assert_eq!(summary["time_travel"], 0, "{summary}");
}
