//! The test stack: real PostgreSQL primary and replicas, Redis, web instances and nginx,
//! started by `scripts/test` (through `scripts/stack`) before `cargo test` runs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test binary uses a subset

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rwsplit::config::Config;
use rwsplit_router::Db;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub struct Stack {
    pub base: u16,
    /// nginx in front of every web instance.
    pub url: String,
    pub replicas: u16,
    pub web: u16,
}

impl Stack {
    /// The stack `scripts/test` started. Tests fail, never skip, without one.
    pub fn get() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run the integration tests through scripts/test")
            })
        };
        Self {
            base: var("STACK_BASE").parse().expect("STACK_BASE"),
            url: var("RWSPLIT_TEST_URL"),
            replicas: var("RWSPLIT_TEST_REPLICAS")
                .parse()
                .expect("RWSPLIT_TEST_REPLICAS"),
            web: var("RWSPLIT_TEST_WEB").parse().expect("RWSPLIT_TEST_WEB"),
        }
    }

    pub fn web_url(&self, n: u16) -> String {
        format!("http://127.0.0.1:{}", self.base + 80 + n)
    }

    fn db_port(&self, node: &str) -> u16 {
        match node.strip_prefix("replica") {
            Some(n) => self.base + 32 + n.parse::<u16>().expect("replica number"),
            None => self.base + 32,
        }
    }

    /// The app's own credentials on `node` (`primary`, `replica1`...).
    pub fn app_url(&self, node: &str) -> String {
        format!(
            "postgres://rwsplit:rwsplit@127.0.0.1:{}/rwsplit",
            self.db_port(node)
        )
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.base + 79)
    }

    /// The superuser's URL for `database` on `node`.
    pub fn superuser_url(&self, node: &str, database: &str) -> String {
        format!(
            "postgres://postgres:postgres@127.0.0.1:{}/{database}",
            self.db_port(node)
        )
    }

    /// A superuser pool on `node`, for checks and for holding a replica back.
    pub async fn admin(&self, node: &str) -> PgPool {
        let url = self.superuser_url(node, "rwsplit");
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("superuser connection to {node}: {e}"))
    }

    /// `DATABASE_REPLICA_URLS` for the first `replicas` of this stack's replicas.
    pub fn replica_urls(&self, replicas: u16) -> String {
        let urls: Vec<String> = (1..=replicas)
            .map(|n| self.app_url(&format!("replica{n}")))
            .collect();
        urls.join(",")
    }

    /// An in-process configuration pointing at this stack, with `replicas` of its replicas.
    pub fn config(&self, replicas: u16) -> Config {
        let primary = self.app_url("primary");
        let urls = self.replica_urls(replicas);
        let redis = self.redis_url();
        Config::from_source(&[
            ("DATABASE_URL", primary.as_str()),
            ("DATABASE_REPLICA_URLS", urls.as_str()),
            ("REDIS_URL", redis.as_str()),
            ("INSTANCE_NAME", "test"),
            ("MIGRATE_ON_START", "false"),
        ])
        .expect("test configuration")
    }

    pub fn db(&self, replicas: u16) -> Db {
        Db::new(self.config(replicas).db.router)
    }

    /// [`Stack::db`] after one check of every replica, as an instance starts.
    pub async fn checked_db(&self, replicas: u16) -> Db {
        let db = self.db(replicas);
        db.check_replicas().await;
        db
    }

    /// Runs `scripts/stack ARGS` against this stack and insists it succeeds.
    pub fn run(&self, args: &[&str]) {
        let status = stack_script()
            .args(args)
            .status()
            .expect("scripts/stack runs");
        assert!(status.success(), "scripts/stack {args:?} failed: {status}");
    }

    /// Stops `part` now and starts it again when the guard drops, even if the test panics.
    pub fn stopped(&self, part: &'static str) -> Stopped<'_> {
        self.run(&["stop", part]);
        Stopped { stack: self, part }
    }

    /// Freezes `part` with SIGSTOP until the guard drops (SIGCONT), even if the test panics:
    /// its sockets stay open and take what is sent, but nothing answers, as with a stalled
    /// server or a network cut that sends no reset.
    pub fn frozen(&self, part: &'static str) -> Frozen {
        let out = stack_script()
            .args(["pid", part])
            .output()
            .expect("scripts/stack runs");
        assert!(out.status.success(), "scripts/stack pid {part}: {out:?}");
        let pid = String::from_utf8(out.stdout)
            .expect("a pid")
            .trim()
            .to_owned();
        signal(&pid, "STOP");
        Frozen { pid }
    }

    /// Sets every replica's apply delay until the guard drops.
    pub fn delayed(&self, ms: u32) -> Delay<'_> {
        self.run(&["delay", &ms.to_string()]);
        Delay { stack: self }
    }

    /// Sets one replica's apply delay (the others keep theirs) until the guard drops, when
    /// every replica goes back to none.
    pub fn delayed_one(&self, replica: &str, ms: u32) -> Delay<'_> {
        self.run(&["delay", &ms.to_string(), replica]);
        Delay { stack: self }
    }
}

pub struct Stopped<'a> {
    stack: &'a Stack,
    part: &'static str,
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.stack.run(&["start", self.part]);
    }
}

pub struct Frozen {
    pid: String,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(&self.pid, "CONT");
    }
}

/// `scripts/stack`, which knows the test stack from the environment `scripts/test` sets.
fn stack_script() -> Command {
    Command::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/stack"))
}

fn signal(pid: &str, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

pub struct Delay<'a> {
    stack: &'a Stack,
}

impl Drop for Delay<'_> {
    fn drop(&mut self) {
        self.stack.run(&["delay", "0"]);
    }
}

/// Waits until every web instance reports every replica usable: after a test that stopped
/// replicas, each instance's monitor must have seen them back, not just one.
pub async fn every_replica_usable(stack: &Stack) {
    for web in 1..=stack.web {
        every_replica_usable_on(&stack.web_url(web)).await;
    }
}

/// Waits, at most 20 s, until the instance at `url` reports every replica usable.
pub async fn every_replica_usable_on(url: &str) {
    let client = client();
    let readyz = format!("{url}/readyz");
    eventually(
        Duration::from_secs(20),
        &format!("every replica usable on {url}"),
        || async {
            let (_, ready) = get_json(&client, &readyz).await;
            ready["replicas"]
                .as_array()
                .is_some_and(|rs| rs.iter().all(|r| r["usable"] == true))
        },
    )
    .await;
}

/// A browser-like client: keeps cookies, bounded in time.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The text of the element with `id` in a page, e.g. `text_of(page, "read-node")`.
pub fn text_of<'a>(page: &'a str, id: &str) -> Option<&'a str> {
    let marker = format!("id=\"{id}\">");
    let start = page.find(&marker)? + marker.len();
    let len = page[start..].find('<')?;
    Some(page[start..start + len].trim())
}

/// Polls `check` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn get_page(client: &reqwest::Client, url: &str) -> (u16, String) {
    let res = client.get(url).send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.text().await.expect("body"))
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let res = client.get(url).send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.expect("JSON body"))
}

/// The sum of every series of `name` in Prometheus text whose labels include all of
/// `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (series, value) = rest.rsplit_once(' ')?;
            let matches = (series.is_empty() || series.starts_with('{'))
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// [`metric_sum`] over every web instance's `/metrics`.
pub async fn stack_metric(stack: &Stack, name: &str, labels: &[(&str, &str)]) -> f64 {
    let client = client();
    let mut sum = 0.0;
    for web in 1..=stack.web {
        let (status, text) = get_page(&client, &format!("{}/metrics", stack.web_url(web))).await;
        assert_eq!(status, 200, "web{web} /metrics");
        sum += metric_sum(&text, name, labels);
    }
    sum
}

/// What a bounded load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub sent: u64,
    pub ok: u64,
    /// Responses that were not 200, and requests that got no response at all.
    pub failed: u64,
    pub statuses: std::collections::BTreeMap<u16, u64>,
    pub transport_errors: u64,
}

/// GETs `url` from `concurrency` tasks, each with its own cookie jar, until `limit` passes or
/// `max_requests` have been sent. Loopback only; stops by itself.
pub async fn load(url: &str, concurrency: usize, limit: Duration, max_requests: u64) -> LoadReport {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "load tests target loopback only"
    );
    let budget = Arc::new(AtomicU64::new(max_requests));
    let deadline = Instant::now() + limit;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (url, budget) = (url.to_owned(), budget.clone());
            tokio::spawn(async move {
                let client = client();
                let mut report = LoadReport::default();
                while Instant::now() < deadline
                    && budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                        .is_ok()
                {
                    report.sent += 1;
                    match client.get(&url).send().await {
                        Ok(res) => {
                            let status = res.status().as_u16();
                            // Read the body: a response cut short is a failure too.
                            let complete = res.bytes().await.is_ok();
                            *report.statuses.entry(status).or_default() += 1;
                            if status == 200 && complete {
                                report.ok += 1;
                            } else {
                                report.failed += 1;
                            }
                        }
                        Err(_) => {
                            report.transport_errors += 1;
                            report.failed += 1;
                        }
                    }
                }
                report
            })
        })
        .collect();
    let mut total = LoadReport::default();
    for task in tasks {
        let part = task.await.expect("load task");
        total.sent += part.sent;
        total.ok += part.ok;
        total.failed += part.failed;
        total.transport_errors += part.transport_errors;
        for (status, n) in part.statuses {
            *total.statuses.entry(status).or_default() += n;
        }
    }
    total
}

/// Rows in the request log, counted on the primary.
pub async fn request_rows(stack: &Stack) -> i64 {
    let admin = stack.admin("primary").await;
    sqlx::query_scalar("SELECT count(*) FROM request_log")
        .fetch_one(&admin)
        .await
        .expect("count")
}

/// One more web instance beside the stack's, with `overrides` in its environment; killed
/// (it is our own child) when dropped. Its standard error goes to a file, as a deployment's does.
pub struct ExtraInstance {
    child: tokio::process::Child,
    pub url: String,
    log: PathBuf,
}

impl ExtraInstance {
    pub async fn start(stack: &Stack, overrides: &[(&str, &str)]) -> Self {
        let port = stack.base + 99;
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("extra-instance-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("create the extra instance's log");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rwsplit"))
            .arg("serve")
            .env("DATABASE_URL", stack.app_url("primary"))
            .env("DATABASE_REPLICA_URLS", stack.replica_urls(stack.replicas))
            .env(
                "REDIS_URL",
                format!("redis://127.0.0.1:{}/", stack.base + 79),
            )
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("INSTANCE_NAME", "extra")
            // The stack has migrated; this instance's role may not change the schema anyway.
            .env("MIGRATE_ON_START", "false")
            .envs(overrides.iter().copied())
            // Whatever the test runner's environment says about colours.
            .env_remove("NO_COLOR")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn an extra instance");
        let url = format!("http://127.0.0.1:{port}");
        let health = format!("{url}/healthz");
        let probe = client();
        eventually(Duration::from_secs(15), "extra instance up", || {
            let probe = probe.clone();
            let health = health.clone();
            async move { probe.get(&health).send().await.is_ok() }
        })
        .await;
        Self { child, url, log }
    }

    /// What the instance has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).expect("read the extra instance's log")
    }
}

impl Drop for ExtraInstance {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_file(&self.log);
    }
}
