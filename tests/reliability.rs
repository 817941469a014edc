//! Faults under load, load itself, bad input and floods: nothing lost, nothing doubled, every
//! failure a clear and fast answer. Figures are printed for RELIABILITY.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{
    ExtraInstance, LoadReport, client, eventually, get_page, load, request_rows, text_of,
};

fn report(case: &str, run: &LoadReport, rows: i64) {
    println!(
        "RELIABILITY | {case} | sent {} | ok {} | failed {} | statuses {:?} | rows added {rows}",
        run.sent, run.ok, run.failed, run.statuses
    );
}

/// Runs `fault` while a bounded load goes through nginx; returns the load and the rows added.
async fn under_load<F: FnOnce() + Send + 'static>(
    stack: &common::Stack,
    concurrency: usize,
    seconds: u64,
    fault: F,
) -> (LoadReport, i64) {
    let before = request_rows(stack).await;
    let url = stack.url.clone();
    let run = tokio::spawn(async move {
        load(&url, concurrency, Duration::from_secs(seconds), 100_000).await
    });
    tokio::task::spawn_blocking(fault).await.unwrap();
    let run = run.await.unwrap();
    (run, request_rows(stack).await - before)
}

#[tokio::test]
async fn a_killed_instance_loses_no_request_and_serves_again_when_back() {
    let (run, rows) = under_load(&common::Stack::get(), 16, 8, || {
        let stack = common::Stack::get();
        std::thread::sleep(Duration::from_secs(2));
        stack.run(&["stop", "web2", "--kill"]);
        std::thread::sleep(Duration::from_secs(2));
        stack.run(&["start", "web2"]);
    })
    .await;
    report("web2 SIGKILLed under load", &run, rows);
    assert_eq!(run.failed, 0, "{run:?}");
    assert!(run.ok > 100, "{run:?}");
    // nginx retried the killed instance's requests elsewhere; the request id kept each once.
    assert_eq!(rows, run.ok as i64, "{run:?}");
    let stack = common::Stack::get();
    let client = client();
    eventually(Duration::from_secs(10), "web2 serving again", || async {
        let (_, page) = get_page(&client, &stack.url).await;
        text_of(&page, "instance") == Some("web2")
    })
    .await;
}

/// How long one failure keeps nginx from an instance (`fail_timeout`, scripts/stack).
const NGINX_FAIL_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_rolling_restart_loses_no_request() {
    let (run, rows) = under_load(&common::Stack::get(), 16, 10, || {
        let stack = common::Stack::get();
        std::thread::sleep(Duration::from_secs(1));
        for web in 1..=stack.web {
            let name = format!("web{web}");
            stack.run(&["stop", &name]);
            stack.run(&["start", &name]);
            // As a real rolling restart must: nginx takes an instance back only after its
            // fail_timeout, however soon it answers; moving on sooner can leave nginx none
            // to try (502, "no live upstreams").
            std::thread::sleep(NGINX_FAIL_TIMEOUT + Duration::from_millis(500));
        }
    })
    .await;
    report("rolling restart (SIGTERM each web in turn)", &run, rows);
    assert_eq!(run.failed, 0, "{run:?}");
    assert_eq!(rows, run.ok as i64, "{run:?}");
}

#[tokio::test]
async fn replicas_dying_under_load_cause_no_errors() {
    let (run, rows) = under_load(&common::Stack::get(), 16, 8, || {
        let stack = common::Stack::get();
        std::thread::sleep(Duration::from_secs(1));
        stack.run(&["stop", "replica1", "--kill"]);
        std::thread::sleep(Duration::from_secs(1));
        stack.run(&["stop", "replica2"]);
        std::thread::sleep(Duration::from_secs(2));
        stack.run(&["start", "replica1"]);
        stack.run(&["start", "replica2"]);
    })
    .await;
    report("replicas stopped and started under load", &run, rows);
    assert_eq!(run.failed, 0, "{run:?}");
    assert_eq!(rows, run.ok as i64);
    let stack = common::Stack::get();
    let client = client();
    eventually(
        Duration::from_secs(10),
        "reads back on replicas",
        || async {
            let (_, page) = get_page(&client, &stack.url).await;
            text_of(&page, "read-node").is_some_and(|n| n.starts_with("replica"))
        },
    )
    .await;
}

#[tokio::test]
async fn two_hundred_connections_lose_nothing_and_double_nothing() {
    let (run, rows) = under_load(&common::Stack::get(), 200, 10, || {}).await;
    report("200 connections, 10 s", &run, rows);
    assert!(run.statuses.keys().all(|s| *s < 500), "{run:?}");
    assert_eq!(run.failed, 0, "{run:?}");
    assert_eq!(rows, run.ok as i64, "{run:?}");
}

#[tokio::test]
async fn an_exhausted_pool_answers_503_fast_with_retry_after() {
    let stack = common::Stack::get();
    let extra = ExtraInstance::start(
        &stack,
        &[("PRIMARY_POOL_SIZE", "1"), ("DB_ACQUIRE_TIMEOUT_MS", "200")],
    )
    .await;
    // Hold the table so the single connection's insert waits, and every other request must
    // wait for that connection.
    let admin = stack.admin("primary").await;
    let mut lock = admin.begin().await.unwrap();
    sqlx::query("LOCK TABLE request_log IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let get = || {
        let url = extra.url.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let res = reqwest::get(&url).await.unwrap();
            let retry_after = res.headers().get("retry-after").cloned();
            (res.status().as_u16(), retry_after, started.elapsed())
        })
    };
    // One request first: its batch takes the connection and waits on the lock. Sent together,
    // a batch could take them all at once (group commit), and none would wait for the pool.
    let mut requests = vec![get()];
    eventually(
        Duration::from_secs(5),
        "the first insert waiting for the table",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO request_log%'",
            )
            .fetch_one(&admin)
            .await
            .unwrap();
            waiting > 0
        },
    )
    .await;
    requests.extend((1..20).map(|_| get()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    lock.rollback().await.unwrap();
    let mut unavailable = 0;
    for request in requests {
        let (status, retry_after, took) = request.await.unwrap();
        if status == 503 {
            unavailable += 1;
            assert_eq!(
                retry_after.as_ref().and_then(|v| v.to_str().ok()),
                Some("2")
            );
            assert!(took < Duration::from_secs(1), "a 503 took {took:?}");
        } else {
            assert_eq!(status, 200);
        }
    }
    println!("RELIABILITY | pool of 1, table locked, 20 requests | 503s {unavailable}");
    assert!(
        unavailable >= 15,
        "only {unavailable} of 20 were turned away"
    );
}

#[tokio::test]
async fn staleness_test_floods_are_bounded() {
    let stack = common::Stack::get();
    let _delay = stack.delayed(500);
    let url = format!("{}/test.json?mode=causal&n=30", stack.web_url(1));
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let res = reqwest::get(&url).await.unwrap();
                (
                    res.status().as_u16(),
                    res.headers().contains_key("retry-after"),
                )
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for run in runs {
        let (status, retry_after) = run.await.unwrap();
        if status == 429 {
            assert!(retry_after);
        }
        statuses.push(status);
    }
    println!("RELIABILITY | 6 concurrent /test runs on one instance | {statuses:?}");
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    assert!((1..=2).contains(&accepted), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 6 - accepted);
}

#[tokio::test]
async fn oversized_requests_get_clear_answers_and_write_nothing() {
    let stack = common::Stack::get();
    let before = request_rows(&stack).await;
    let client = reqwest::Client::new();
    let long_uri = client
        .get(format!("{}/?q={}", stack.url, "a".repeat(10_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(long_uri.status(), 414);
    let long_header = client
        .get(&stack.url)
        .header("user-agent", "u".repeat(10_000))
        .send()
        .await
        .unwrap();
    // nginx answers an oversized header line with 400 "Request Header Or Cookie Too Large".
    assert_eq!(long_header.status(), 400);
    let long_cookie = client
        .get(&stack.url)
        .header("cookie", format!("x={}", "c".repeat(10_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(long_cookie.status(), 400);
    assert_eq!(
        request_rows(&stack).await,
        before,
        "a rejected request wrote a row"
    );
}

#[tokio::test]
async fn bytes_that_are_not_utf8_are_answered_and_stored_safely() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = common::Stack::get();
    let addr = stack.url.trim_start_matches("http://").to_owned();
    let send = |request: Vec<u8>| {
        let addr = addr.clone();
        async move {
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            conn.write_all(&request).await.unwrap();
            let mut answer = Vec::new();
            conn.read_to_end(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer[..12.min(answer.len())]).into_owned()
        }
    };
    let agent =
        b"GET /?agent HTTP/1.1\r\nHost: t\r\nUser-Agent: caf\xe9 \xff\r\nConnection: close\r\n\r\n";
    assert_eq!(send(agent.to_vec()).await, "HTTP/1.1 200");
    let admin = stack.admin("primary").await;
    let stored: String = sqlx::query_scalar(
        "SELECT user_agent FROM request_log WHERE path = '/?agent' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(stored, "caf\u{fffd} \u{fffd}");
    let path = b"GET /?q=\xff\xfe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let status = send(path.to_vec()).await;
    assert!(
        status == "HTTP/1.1 400" || status == "HTTP/1.1 200",
        "{status}"
    );
}

#[tokio::test]
async fn an_untrusted_peer_cannot_choose_its_logged_address_or_request_id() {
    let stack = common::Stack::get();
    let extra = ExtraInstance::start(&stack, &[("TRUSTED_PROXIES", "none")]).await;
    let client = client();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let res = client
            .get(&extra.url)
            .header("x-forwarded-for", "203.0.113.66")
            .header("x-request-id", "chosen-by-the-client")
            .send()
            .await
            .unwrap();
        let page = res.text().await.unwrap();
        assert!(page.contains("<dt>Client</dt><dd>127.0.0.1</dd>"), "{page}");
        ids.push(text_of(&page, "row-id").unwrap().to_owned());
    }
    assert_ne!(
        ids[0], ids[1],
        "an untrusted request id deduplicated two requests"
    );
}

#[tokio::test]
async fn a_retried_request_id_from_the_proxy_writes_one_row() {
    let stack = common::Stack::get();
    let before = request_rows(&stack).await;
    let id = format!("retry-{}", std::process::id());
    let mut rows = Vec::new();
    // web1 and web2 are behind the trusted proxy address (loopback), like nginx's retries.
    for web in [1, 2] {
        let res = client()
            .get(stack.web_url(web))
            .header("x-request-id", &id)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let page = res.text().await.unwrap();
        rows.push(text_of(&page, "row-id").unwrap().to_owned());
    }
    assert_eq!(rows[0], rows[1]);
    assert_eq!(request_rows(&stack).await - before, 1);
}

#[tokio::test]
async fn no_password_reaches_the_logs() {
    let stack_dir = std::env::var("STACK_DIR").expect("STACK_DIR: run through scripts/test");
    let mut checked = 0;
    for entry in std::fs::read_dir(&stack_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap();
            for secret in [":rwsplit@", ":postgres@", ":replicator@"] {
                assert!(!text.contains(secret), "{} holds {secret}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "no web logs found in {stack_dir}");
}

#[tokio::test]
async fn a_failed_request_is_logged_with_its_request_id_and_no_terminal_colours() {
    let stack = common::Stack::get();
    // A primary that refuses connections: a port that was free a moment ago.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let primary = format!(
        "postgres://rwsplit:rwsplit@{}/rwsplit",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let extra = ExtraInstance::start(&stack, &[("DATABASE_URL", primary.as_str())]).await;
    let res = client().get(&extra.url).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let mut log = String::new();
    eventually(Duration::from_secs(5), "the failure logged", || {
        log = extra.log();
        let logged = log
            .lines()
            .any(|line| line.contains("request failed") && line.contains(&id));
        async move { logged }
    })
    .await;
    // A file or a container's log is read by tools and people, not a terminal.
    assert!(!log.contains('\x1b'), "escape codes in the log:\n{log}");
}

#[tokio::test]
async fn a_busy_replica_pool_is_not_mistaken_for_a_dead_replica() {
    let stack = common::Stack::get();
    // Causal reads of a write the replicas replay 500 ms late hold each replica's single
    // connection for the 300 ms causal wait: the other reads find the pools full. The acquire
    // timeout is short against that wait, yet long enough for a connection to open or be
    // pinged on a loaded machine: one that does not counts as unreachable, which is not what
    // this test is about.
    let _delay = stack.delayed(500);
    let extra = ExtraInstance::start(
        &stack,
        &[
            ("REPLICA_POOL_SIZE", "1"),
            ("REPLICA_ACQUIRE_TIMEOUT_MS", "50"),
            ("READ_CONSISTENCY", "causal"),
            ("CAUSAL_WAIT_MS", "300"),
            // The monitor checks at least once while the pools are full.
            ("REPLICA_CHECK_INTERVAL_MS", "100"),
        ],
    )
    .await;
    // Reads start once the instance has seen every replica, so each pool holds its connection.
    common::every_replica_usable_on(&extra.url).await;
    // One session writes, then reads its write back 20 times at once. (`GET /` would not
    // do: its requests share one read per batch.)
    let session = client();
    let (status, write) =
        common::get_json(&session, &format!("{}/test/write.json", extra.url)).await;
    assert_eq!(status, 200, "{write}");
    let read = format!(
        "{}/test/read.json?mode=causal&id={}",
        extra.url, write["id"]
    );
    let reads: Vec<_> = (0..20)
        .map(|_| {
            let (session, read) = (session.clone(), read.clone());
            tokio::spawn(async move { common::get_json(&session, &read).await })
        })
        .collect();
    let mut busy = 0;
    for read in reads {
        let (status, report) = read.await.unwrap();
        assert_eq!(status, 200, "{report}");
        busy += usize::from(report["reason"] == "every replica connection was in use");
    }
    println!(
        "RELIABILITY | replica pools of 1, 20 concurrent requests | reads sent on as busy: {busy}"
    );
    assert!(
        busy >= 10,
        "only {busy} of 20 found the pools full: the test proved little"
    );
    let (_, ready) = common::get_json(&client(), &format!("{}/readyz", extra.url)).await;
    for replica in ready["replicas"].as_array().unwrap() {
        assert_eq!(replica["usable"], true, "a busy pool excluded {replica}");
    }
}
