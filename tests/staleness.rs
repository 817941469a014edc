//! `/test` against replicas held 500 ms behind: eventual reads are stale, sticky and causal
//! never are, across instances too; lagging replicas are excluded and come back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{client, eventually, get_json};
use serde_json::Value;

async fn run(base: &str, mode: &str, n: u32) -> Value {
    let url = format!("{base}/test.json?mode={mode}&n={n}");
    let (status, report) = get_json(&client(), &url).await;
    assert_eq!(status, 200, "{report}");
    report["runs"][0].clone()
}

#[tokio::test]
async fn eventual_reads_are_mostly_stale_and_visible_after_about_the_delay() {
    let stack = common::Stack::get();
    let _delay = stack.delayed(500);
    let run = run(&stack.url, "eventual", 50).await;
    let summary = &run["summary"];
    let stale = summary["stale"].as_u64().unwrap();
    assert!(stale > 25, "only {stale} of 50 stale: {summary}");
    let p50 = summary["visible_p50_ms"].as_f64().unwrap();
    assert!(
        (450.0..900.0).contains(&p50),
        "time to visible p50 {p50} ms"
    );
    assert_eq!(summary["not_visible"], 0, "{summary}");
}

#[tokio::test]
async fn sticky_and_causal_are_never_stale() {
    let stack = common::Stack::get();
    let _delay = stack.delayed(500);
    for mode in ["sticky", "causal"] {
        let run = run(&stack.url, mode, 60).await;
        assert_eq!(run["summary"]["probes"], 60);
        assert_eq!(run["summary"]["stale"], 0, "{mode}: {}", run["summary"]);
    }
}

#[tokio::test]
async fn causal_reads_a_replica_once_it_has_replayed_the_write() {
    let stack = common::Stack::get();
    let run = run(&stack.url, "causal", 20).await;
    let probes = run["probes"].as_array().unwrap();
    let on_replica: Vec<&Value> = probes.iter().filter(|p| p["on_replica"] == true).collect();
    assert!(on_replica.len() >= 15, "{}", run["summary"]);
    for p in &on_replica {
        // Proof from the answering connection, not the router's label.
        assert_eq!(p["in_recovery"], true, "{p}");
        assert_eq!(p["stale"], false, "{p}");
        assert!(
            p["reason"]
                .as_str()
                .unwrap()
                .contains("replayed all your session has seen"),
            "{p}"
        );
    }
}

#[tokio::test]
async fn eventual_reads_spread_over_the_replicas() {
    let stack = common::Stack::get();
    let run = run(&stack.url, "eventual", 20).await;
    let nodes: BTreeSet<&str> = run["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap())
        .collect();
    let expected: BTreeSet<String> = (1..=stack.replicas)
        .map(|n| format!("replica{n}"))
        .collect();
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!(nodes, expected);
}

/// Writes a probe on web1, reads it back at once on web2 with the same session; returns how
/// many of `n` read-backs missed the row.
async fn cross_instance_misses(stack: &common::Stack, mode: &str, n: usize) -> usize {
    let client = client();
    let (web1, web2) = (stack.web_url(1), stack.web_url(2));
    let mut misses = 0;
    for _ in 0..n {
        let (status, written) = get_json(&client, &format!("{web1}/test/write.json")).await;
        assert_eq!(
            (status, written["instance"].as_str()),
            (200, Some("web1")),
            "{written}"
        );
        let id = written["id"].as_i64().unwrap();
        let (status, read) = get_json(
            &client,
            &format!("{web2}/test/read.json?mode={mode}&id={id}"),
        )
        .await;
        assert_eq!(status, 200, "{read}");
        misses += usize::from(read["found"] == false);
    }
    misses
}

#[tokio::test]
async fn sticky_and_causal_hold_across_instances_sharing_redis() {
    let stack = common::Stack::get();
    let _delay = stack.delayed(500);
    // The control: without a consistency mode, the second instance does read stale.
    assert!(cross_instance_misses(&stack, "eventual", 10).await > 5);
    for mode in ["sticky", "causal"] {
        assert_eq!(cross_instance_misses(&stack, mode, 50).await, 0, "{mode}");
    }
}

async fn replica_state(stack: &common::Stack, web: u16, replica: &str) -> Value {
    let (_, ready) = get_json(&client(), &format!("{}/readyz", stack.web_url(web))).await;
    ready["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == replica)
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn a_lagging_replica_is_excluded_until_it_catches_up() {
    let stack = common::Stack::get();
    let admin = stack.admin("replica1").await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&admin)
        .await
        .unwrap();
    let result = tokio::spawn({
        let stack = common::Stack::get();
        async move {
            let client = client();
            // Writes the paused replica cannot replay; the monitor excludes it past the limit.
            eventually(
                Duration::from_secs(15),
                "replica1 excluded everywhere",
                || async {
                    let _ = client.get(&stack.url).send().await;
                    let mut all = true;
                    for web in 1..=stack.web {
                        let state = replica_state(&stack, web, "replica1").await;
                        all &= state["usable"] == false
                            && state["problem"]
                                .as_str()
                                .is_some_and(|p| p.contains("lagging"));
                    }
                    all
                },
            )
            .await;
            let run = run(&stack.url, "eventual", 10).await;
            for probe in run["probes"].as_array().unwrap() {
                assert_ne!(probe["node"], "replica1", "{probe}");
            }
        }
    })
    .await;
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&admin)
        .await
        .unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
    eventually(Duration::from_secs(15), "replica1 usable again", || async {
        let mut all = true;
        for web in 1..=stack.web {
            all &= replica_state(&stack, web, "replica1").await["usable"] == true;
        }
        all
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "reads back on replica1",
        || async {
            let run = run(&stack.url, "eventual", 4).await;
            run["probes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["node"] == "replica1")
        },
    )
    .await;
}

#[tokio::test]
async fn the_html_page_shows_every_mode_side_by_side() {
    let stack = common::Stack::get();
    let res = client()
        .get(format!("{}/test?mode=all&n=5", stack.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    for needle in [
        "data-mode=\"eventual\"",
        "data-mode=\"sticky\"",
        "data-mode=\"causal\"",
        "pg_stat_replication",
        "replay_lag",
        "<svg class=\"chart\"",
    ] {
        assert!(page.contains(needle), "missing {needle}");
    }
}

#[tokio::test]
async fn the_chart_draws_one_mark_per_probe_and_shows_staleness() {
    let stack = common::Stack::get();
    let _delay = stack.delayed(500);
    let res = client()
        .get(format!("{}/test?mode=all&n=8", stack.url))
        .send()
        .await
        .unwrap();
    let page = res.text().await.unwrap();
    let svg = &page[page.find("<svg").unwrap()..page.find("</svg>").unwrap()];
    assert_eq!(svg.matches("<rect ").count(), 24, "3 modes x 8 probes");
    // Eventual reads were stale and became visible after about the delay: tall bars.
    assert!(svg.matches("class=\"stale\"").count() >= 4, "{svg}");
    // Sticky and causal were answered by the primary.
    assert!(svg.matches("class=\"primary\"").count() >= 16, "{svg}");
    assert!(!svg.contains("style="), "inline styles would break the CSP");
}
