//! The test stack: real PostgreSQL primary and replicas, Redis, web instances and nginx,
//! started by `scripts/test` (through `scripts/stack`) before `cargo test` runs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test binary uses a subset

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rwsplit::config::Config;
use rwsplit::db::Db;
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

    /// A superuser pool on `node`, for checks and for holding a replica back.
    pub async fn admin(&self, node: &str) -> PgPool {
        let url = format!(
            "postgres://postgres:postgres@127.0.0.1:{}/rwsplit",
            self.db_port(node)
        );
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("superuser connection to {node}: {e}"))
    }

    /// An in-process configuration pointing at this stack, with `replicas` of its replicas.
    pub fn config(&self, replicas: u16) -> Config {
        let urls: Vec<String> = (1..=replicas)
            .map(|n| self.app_url(&format!("replica{n}")))
            .collect();
        let primary = self.app_url("primary");
        let urls = urls.join(",");
        Config::from_source(&[
            ("DATABASE_URL", primary.as_str()),
            ("DATABASE_REPLICA_URLS", urls.as_str()),
            ("INSTANCE_NAME", "test"),
            ("MIGRATE_ON_START", "false"),
        ])
        .expect("test configuration")
    }

    pub fn db(&self, replicas: u16) -> Db {
        let config = self.config(replicas);
        Db::new(&config.db, config.routing.clone(), &config.instance).expect("pools")
    }

    /// Runs `scripts/stack ARGS` against this stack and insists it succeeds.
    pub fn run(&self, args: &[&str]) {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new(root.join("scripts/stack"))
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

    /// Sets every replica's apply delay until the guard drops.
    pub fn delayed(&self, ms: u32) -> Delay<'_> {
        self.run(&["delay", &ms.to_string()]);
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

pub struct Delay<'a> {
    stack: &'a Stack,
}

impl Drop for Delay<'_> {
    fn drop(&mut self) {
        self.stack.run(&["delay", "0"]);
    }
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
