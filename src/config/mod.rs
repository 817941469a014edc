//! Typed configuration, read once from the environment at start-up.
//!
//! Every value has a default that matches the native stack (`scripts/stack up`), so
//! `rwsplit serve` with an empty environment talks to it. A bad value names its variable.

mod proxies;

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use rwsplit_router::{Consistency, Nodes, PoolConfig, RoutingConfig};
use sqlx::postgres::PgConnectOptions;

pub use proxies::TrustedProxies;

use crate::secret::SecretUrl;

#[derive(Debug, thiserror::Error)]
#[error("configuration variable {var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct DbConfig {
    /// What the router is given: connection options (with this instance's
    /// `application_name` and the statement timeout), pool bounds and routing limits.
    pub router: rwsplit_router::Config,
    /// The same URLs, kept to be logged (redacted): a fixed primary and its replicas, or a
    /// cluster's nodes (`DATABASE_NODE_URLS`) as `replica_urls` with no primary.
    pub primary_url: Option<SecretUrl>,
    pub replica_urls: Vec<SecretUrl>,
    /// Who runs migrations: a role that may change the schema, unlike the app's own. In a
    /// cluster, one URL per node: migrations run on whichever is out of recovery.
    pub migration_urls: Vec<SecretUrl>,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub redis_url: SecretUrl,
    pub cookie_secure: bool,
    pub idle_timeout: Duration,
    /// Lifetime of a session that has been seen once: clients that never send the cookie
    /// back (load generators, bots) would otherwise leave one full-length session per request.
    pub first_visit_ttl: Duration,
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    pub instance: String,
    pub db: DbConfig,
    /// The consistency mode of reads that do not choose one.
    pub consistency: Consistency,
    /// Most `GET /` requests one shared insert may write (group commit); 1 turns batching
    /// off, and each request writes and reads on its own.
    pub request_log_batch: usize,
    pub session: SessionConfig,
    pub trusted_proxies: TrustedProxies,
    pub request_timeout: Duration,
    pub migrate_on_start: bool,
    pub log_format: LogFormat,
    /// Threads that run requests: 1 is Tokio's single-threaded runtime (the web tier scales
    /// by instances, one per core); more is its work-stealing runtime with that many workers.
    pub worker_threads: usize,
}

/// Where values come from: the process environment in production, a map in tests.
pub trait Source {
    fn get(&self, var: &str) -> Option<String>;
}

struct Environment;

impl Source for Environment {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok()
    }
}

impl Source for [(&str, &str)] {
    fn get(&self, var: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| (*v).to_owned())
    }
}

impl<const N: usize> Source for [(&str, &str); N] {
    fn get(&self, var: &str) -> Option<String> {
        Source::get(self.as_slice(), var)
    }
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://rwsplit:rwsplit@127.0.0.1:54332/rwsplit";
pub const DEFAULT_REPLICA_URLS: &str = "postgres://rwsplit:rwsplit@127.0.0.1:54333/rwsplit";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:54379/";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Environment)
    }

    pub fn from_source(src: &(impl Source + ?Sized)) -> Result<Self, ConfigError> {
        let r = Reader(src);
        let instance = r.string("INSTANCE_NAME", &host_name());
        // Set but empty means "none"; only an unset variable takes the default.
        let url_list = |var: &str, default: &str| -> Vec<SecretUrl> {
            src.get(var)
                .unwrap_or_else(|| default.to_owned())
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(SecretUrl::new)
                .collect()
        };
        let node_urls = url_list("DATABASE_NODE_URLS", "");
        let cluster = !node_urls.is_empty();
        let (primary_url, replica_urls) = if cluster {
            (None, node_urls)
        } else {
            let primary = SecretUrl::new(r.string("DATABASE_URL", DEFAULT_DATABASE_URL));
            (
                Some(primary),
                url_list("DATABASE_REPLICA_URLS", DEFAULT_REPLICA_URLS),
            )
        };
        let migration_urls = match &primary_url {
            Some(primary) => vec![SecretUrl::new(
                r.string("DATABASE_MIGRATION_URL", primary.expose()),
            )],
            None if src.get("DATABASE_MIGRATION_URL").is_some() => {
                url_list("DATABASE_MIGRATION_URL", "")
            }
            None => replica_urls.clone(),
        };
        let pools = PoolConfig::default();
        let pools = PoolConfig {
            primary_size: r.ranged("PRIMARY_POOL_SIZE", pools.primary_size, 1..=500)?,
            replica_size: r.ranged("REPLICA_POOL_SIZE", pools.replica_size, 1..=500)?,
            acquire_timeout: r.millis(
                "DB_ACQUIRE_TIMEOUT_MS",
                pools.acquire_timeout,
                10..=60_000,
            )?,
            replica_acquire_timeout: r.millis(
                "REPLICA_ACQUIRE_TIMEOUT_MS",
                pools.replica_acquire_timeout,
                10..=60_000,
            )?,
            replica_read_timeout: r.millis(
                "REPLICA_READ_TIMEOUT_MS",
                pools.replica_read_timeout,
                10..=600_000,
            )?,
        };
        let routing = RoutingConfig::default();
        let routing = RoutingConfig {
            sticky_window: r.millis("STICKY_WINDOW_MS", routing.sticky_window, 0..=600_000)?,
            causal_wait: r.millis("CAUSAL_WAIT_MS", routing.causal_wait, 0..=10_000)?,
            check_interval: r.millis(
                "REPLICA_CHECK_INTERVAL_MS",
                routing.check_interval,
                50..=60_000,
            )?,
            max_lag: r.millis("REPLICA_MAX_LAG_MS", routing.max_lag, 1..=3_600_000)?,
            failover_wait: r.millis("FAILOVER_WAIT_MS", routing.failover_wait, 0..=600_000)?,
        };
        let statement_timeout = r.millis(
            "DB_STATEMENT_TIMEOUT_MS",
            Duration::from_millis(5000),
            10..=600_000,
        )?;
        let connect = |var, url: &SecretUrl| {
            let options = validate_url(var, url)?;
            let timeout = statement_timeout.as_millis().to_string();
            Ok::<_, ConfigError>(
                options
                    .application_name(&format!("rwsplit {instance}"))
                    .options([("statement_timeout", timeout.as_str())]),
            )
        };
        let nodes = match &primary_url {
            Some(primary) => Nodes::Fixed {
                primary: connect("DATABASE_URL", primary)?,
                replicas: replica_urls
                    .iter()
                    .map(|url| connect("DATABASE_REPLICA_URLS", url))
                    .collect::<Result<_, _>>()?,
            },
            None => Nodes::Cluster(
                replica_urls
                    .iter()
                    .map(|url| connect("DATABASE_NODE_URLS", url))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let router = rwsplit_router::Config {
            nodes,
            pools,
            routing,
        };
        for url in &migration_urls {
            validate_url("DATABASE_MIGRATION_URL", url)?;
        }
        if migration_urls.is_empty() {
            return Err(ConfigError {
                var: "DATABASE_MIGRATION_URL",
                reason: "is empty".to_owned(),
            });
        }
        let db = DbConfig {
            router,
            primary_url,
            replica_urls,
            migration_urls,
        };
        let session = SessionConfig {
            redis_url: SecretUrl::new(r.string("REDIS_URL", DEFAULT_REDIS_URL)),
            cookie_secure: r.parsed("COOKIE_SECURE", false)?,
            idle_timeout: Duration::from_secs(r.ranged(
                "SESSION_IDLE_SECS",
                1800,
                60..=2_592_000,
            )?),
            first_visit_ttl: Duration::from_secs(r.ranged(
                "SESSION_FIRST_VISIT_SECS",
                300,
                10..=2_592_000,
            )?),
            redis_timeout: r.millis("REDIS_TIMEOUT_MS", Duration::from_millis(250), 10..=10_000)?,
        };
        let request_timeout =
            r.millis("REQUEST_TIMEOUT_MS", Duration::from_secs(30), 100..=600_000)?;
        // A write that waited out the whole failover still needs time to run. Only a cluster
        // waits for a primary.
        if cluster && db.router.routing.failover_wait >= request_timeout {
            return Err(ConfigError {
                var: "FAILOVER_WAIT_MS",
                reason: format!(
                    "{} ms is not under REQUEST_TIMEOUT_MS ({} ms)",
                    db.router.routing.failover_wait.as_millis(),
                    request_timeout.as_millis()
                ),
            });
        }
        Ok(Self {
            bind: r.parsed("BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 3000)))?,
            instance,
            db,
            consistency: r.parsed("READ_CONSISTENCY", Consistency::Causal)?,
            // Up to a page's worth, so every request of a batch finds its row on its page.
            request_log_batch: r.ranged(
                "REQUEST_LOG_BATCH",
                16,
                1..=crate::request_log::SHOWN as usize,
            )?,
            session,
            trusted_proxies: r.parsed("TRUSTED_PROXIES", TrustedProxies::loopback())?,
            request_timeout,
            migrate_on_start: r.parsed("MIGRATE_ON_START", true)?,
            worker_threads: r.ranged("WORKER_THREADS", 1, 1..=256)?,
            log_format: match r.string("LOG_FORMAT", "text").as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError {
                        var: "LOG_FORMAT",
                        reason: format!("{other:?} is neither \"text\" nor \"json\""),
                    });
                }
            },
        })
    }
}

struct Reader<'a, S: Source + ?Sized>(&'a S);

impl<S: Source + ?Sized> Reader<'_, S> {
    fn string(&self, var: &'static str, default: &str) -> String {
        self.0
            .get(var)
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| default.to_owned())
    }

    fn parsed<T: FromStr>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(var).filter(|v| !v.trim().is_empty()) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e| ConfigError {
                var,
                reason: format!("{v:?}: {e}"),
            }),
        }
    }

    fn ranged<T>(
        &self,
        var: &'static str,
        default: T,
        range: std::ops::RangeInclusive<T>,
    ) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
        T::Err: std::fmt::Display,
    {
        let value = self.parsed(var, default)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError {
                var,
                reason: format!("{value} is outside {}..={}", range.start(), range.end()),
            })
        }
    }

    fn millis(
        &self,
        var: &'static str,
        default: Duration,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
        self.ranged(var, default, range).map(Duration::from_millis)
    }
}

/// A `postgres://` URL the driver accepts; the error shows it without its password.
fn validate_url(var: &'static str, url: &SecretUrl) -> Result<PgConnectOptions, ConfigError> {
    let fail = |why: String| ConfigError {
        var,
        reason: format!("{url} {why}"),
    };
    if !url.expose().starts_with("postgres://") && !url.expose().starts_with("postgresql://") {
        return Err(fail("is not a postgres:// URL".into()));
    }
    url.expose()
        .parse()
        .map_err(|e| fail(format!("is not a valid PostgreSQL URL: {e}")))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rwsplit".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_native_stack() -> Result<(), ConfigError> {
        let config = Config::from_source(&[])?;
        let primary = config.db.primary_url.as_ref().map(SecretUrl::expose);
        assert_eq!(primary, Some(DEFAULT_DATABASE_URL));
        assert_eq!(config.db.replica_urls.len(), 1);
        assert!(
            matches!(&config.db.router.nodes, Nodes::Fixed { replicas, .. } if replicas.len() == 1)
        );
        assert_eq!(config.consistency, Consistency::Causal);
        assert!(!config.instance.is_empty());
        Ok(())
    }

    #[test]
    fn empty_replica_list_means_no_replicas() -> Result<(), ConfigError> {
        for empty in ["", " , "] {
            let config = Config::from_source(&[("DATABASE_REPLICA_URLS", empty)])?;
            let replicas = match &config.db.router.nodes {
                Nodes::Fixed { replicas, .. } => replicas.len(),
                Nodes::Cluster(_) => usize::MAX,
            };
            assert_eq!(replicas, 0, "{empty:?}");
        }
        Ok(())
    }

    #[test]
    fn node_urls_make_a_cluster_whose_migrations_find_the_primary() -> Result<(), ConfigError> {
        let nodes = "postgres://u:p@h1/db, postgres://u:p@h2/db";
        let config = Config::from_source(&[("DATABASE_NODE_URLS", nodes)])?;
        assert!(matches!(&config.db.router.nodes, Nodes::Cluster(n) if n.len() == 2));
        assert!(config.db.primary_url.is_none());
        assert_eq!(config.db.migration_urls.len(), 2);
        Ok(())
    }

    #[test]
    fn a_failover_wait_must_leave_the_request_time_to_run() {
        let err = Config::from_source(&[
            ("DATABASE_NODE_URLS", "postgres://u:p@h1/db"),
            ("FAILOVER_WAIT_MS", "30000"),
            ("REQUEST_TIMEOUT_MS", "30000"),
        ])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("FAILOVER_WAIT_MS"), "{err:?}");
    }

    #[test]
    fn a_bad_value_names_its_variable_without_leaking_secrets() {
        let cases: [(&str, &str); 6] = [
            ("PRIMARY_POOL_SIZE", "many"),
            ("PRIMARY_POOL_SIZE", "0"),
            ("WORKER_THREADS", "0"),
            ("BIND_ADDR", "localhost"),
            ("READ_CONSISTENCY", "strong"),
            ("DATABASE_URL", "mysql://u:secretpw@h/db"),
        ];
        for (var, value) in cases {
            let err = Config::from_source(&[(var, value)]).err();
            let text = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(text.contains(var), "{var}={value} gave {text:?}");
            assert!(!text.contains("secretpw"), "{text}");
        }
    }

    /// Records which variables `Config` asks for.
    #[derive(Default)]
    struct Recording(std::cell::RefCell<std::collections::BTreeSet<String>>);

    impl Source for Recording {
        fn get(&self, var: &str) -> Option<String> {
            self.0.borrow_mut().insert(var.to_owned());
            None
        }
    }

    /// A documented default is the default if setting it changes nothing.
    fn is_default(var: &str, value: &str) -> bool {
        let with = Config::from_source(&[(var, value)]).map(|c| format!("{c:?}"));
        let without = Config::from_source(&[]).map(|c| format!("{c:?}"));
        with.is_ok() && with.ok() == without.ok()
    }

    #[test]
    fn every_variable_is_documented_and_in_env_example_with_its_default() {
        let docs = include_str!("../../docs/configuration.md");
        let example = include_str!("../../.env.example");
        let read = Recording::default();
        assert!(Config::from_source(&read).is_ok());
        let read = read.0.into_inner();
        for var in &read {
            let row = docs
                .lines()
                .find(|l| l.starts_with(&format!("| `{var}` |")));
            let Some(row) = row else {
                panic!("{var} is not in docs/configuration.md's table");
            };
            let cell = row.split('|').nth(2).unwrap_or_default().trim();
            if let Some(literal) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) {
                assert!(
                    is_default(var, literal),
                    "docs give {var} the default {literal:?}"
                );
            }
            let line = example
                .lines()
                .find(|l| l.trim_start_matches("# ").starts_with(&format!("{var}=")));
            let Some(line) = line else {
                panic!("{var} is not in .env.example");
            };
            if let Some(value) = line.strip_prefix(&format!("{var}=")) {
                assert!(is_default(var, value), ".env.example sets {var}={value:?}");
            }
        }
        for row in docs.lines().filter(|l| l.starts_with("| `")) {
            let var = row.split('`').nth(1).unwrap_or_default();
            assert!(
                read.contains(var),
                "docs list {var}, which Config does not read"
            );
        }
    }
}
