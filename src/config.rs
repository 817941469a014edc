//! Typed configuration, read once from the environment at start-up.
//!
//! Every value has a default that matches the native stack (`scripts/stack up`), so
//! `rwsplit serve` with an empty environment talks to it. A bad value names its variable.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use crate::db::Consistency;
use crate::http::client_ip::TrustedProxies;
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
    pub primary_url: SecretUrl,
    /// Who runs migrations: a role that may change the schema, unlike the app's own.
    pub migration_url: SecretUrl,
    pub replica_urls: Vec<SecretUrl>,
    pub primary_pool_size: u32,
    pub replica_pool_size: u32,
    pub acquire_timeout: Duration,
    /// Shorter than the primary's: a dead replica should cost a read little before the
    /// router moves on.
    pub replica_acquire_timeout: Duration,
    /// How long a replica may take to answer a read before it counts as unreachable and the
    /// read moves on: a partitioned replica never answers, and its server-side
    /// `statement_timeout` cannot fire where nothing reaches it.
    pub replica_read_timeout: Duration,
    pub statement_timeout: Duration,
    /// Most `GET /` requests one shared insert may write (group commit); 1 writes each alone.
    pub log_batch_rows: usize,
}

#[derive(Debug, Clone)]
pub struct RoutingConfig {
    pub consistency: Consistency,
    pub sticky_window: Duration,
    pub causal_wait: Duration,
    pub check_interval: Duration,
    pub max_lag: Duration,
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
    pub routing: RoutingConfig,
    pub session: SessionConfig,
    pub trusted_proxies: TrustedProxies,
    pub request_timeout: Duration,
    pub migrate_on_start: bool,
    pub log_format: LogFormat,
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

impl<const N: usize> Source for [(&str, &str); N] {
    fn get(&self, var: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| (*v).to_owned())
    }
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://rwsplit:rwsplit@127.0.0.1:54332/rwsplit";
pub const DEFAULT_REPLICA_URLS: &str = "postgres://rwsplit:rwsplit@127.0.0.1:54333/rwsplit";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:54379/";

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&Environment)
    }

    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        let r = Reader(src);
        let primary_url = r.string("DATABASE_URL", DEFAULT_DATABASE_URL);
        let db = DbConfig {
            migration_url: SecretUrl::new(r.string("DATABASE_MIGRATION_URL", &primary_url)),
            primary_url: SecretUrl::new(primary_url),
            // Set but empty means "no replicas"; only an unset variable takes the default.
            replica_urls: src
                .get("DATABASE_REPLICA_URLS")
                .unwrap_or_else(|| DEFAULT_REPLICA_URLS.to_owned())
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(SecretUrl::new)
                .collect(),
            primary_pool_size: r.ranged("PRIMARY_POOL_SIZE", 10, 1..=500)?,
            replica_pool_size: r.ranged("REPLICA_POOL_SIZE", 10, 1..=500)?,
            acquire_timeout: r.millis("DB_ACQUIRE_TIMEOUT_MS", 1500, 10..=60_000)?,
            replica_acquire_timeout: r.millis("REPLICA_ACQUIRE_TIMEOUT_MS", 250, 10..=60_000)?,
            replica_read_timeout: r.millis("REPLICA_READ_TIMEOUT_MS", 1000, 10..=600_000)?,
            statement_timeout: r.millis("DB_STATEMENT_TIMEOUT_MS", 5000, 10..=600_000)?,
            // Up to a page's worth, so every request of a batch finds its row on its page.
            log_batch_rows: r.ranged(
                "REQUEST_LOG_BATCH",
                16,
                1..=crate::request_log::SHOWN as usize,
            )?,
        };
        let urls = [
            ("DATABASE_URL", &db.primary_url),
            ("DATABASE_MIGRATION_URL", &db.migration_url),
        ]
        .into_iter()
        .chain(db.replica_urls.iter().map(|u| ("DATABASE_REPLICA_URLS", u)));
        for (var, url) in urls {
            if !url.expose().starts_with("postgres://")
                && !url.expose().starts_with("postgresql://")
            {
                return Err(ConfigError {
                    var,
                    reason: format!("{url} is not a postgres:// URL"),
                });
            }
        }
        let routing = RoutingConfig {
            consistency: r.parsed("READ_CONSISTENCY", Consistency::Causal)?,
            sticky_window: r.millis("STICKY_WINDOW_MS", 2000, 0..=600_000)?,
            causal_wait: r.millis("CAUSAL_WAIT_MS", 50, 0..=10_000)?,
            check_interval: r.millis("REPLICA_CHECK_INTERVAL_MS", 1000, 50..=60_000)?,
            max_lag: r.millis("REPLICA_MAX_LAG_MS", 5000, 1..=3_600_000)?,
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
            redis_timeout: r.millis("REDIS_TIMEOUT_MS", 250, 10..=10_000)?,
        };
        Ok(Self {
            bind: r.parsed("BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 3000)))?,
            instance: r.string("INSTANCE_NAME", &host_name()),
            db,
            routing,
            session,
            trusted_proxies: r.parsed("TRUSTED_PROXIES", TrustedProxies::loopback())?,
            request_timeout: r.millis("REQUEST_TIMEOUT_MS", 30_000, 100..=600_000)?,
            migrate_on_start: r.parsed("MIGRATE_ON_START", true)?,
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

struct Reader<'a, S: Source>(&'a S);

impl<S: Source> Reader<'_, S> {
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
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Duration, ConfigError> {
        self.ranged(var, default, range).map(Duration::from_millis)
    }
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
        assert_eq!(config.db.primary_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(config.db.replica_urls.len(), 1);
        assert_eq!(config.routing.consistency, Consistency::Causal);
        assert!(!config.instance.is_empty());
        Ok(())
    }

    #[test]
    fn empty_replica_list_means_no_replicas() -> Result<(), ConfigError> {
        for empty in ["", " , "] {
            let config = Config::from_source(&[("DATABASE_REPLICA_URLS", empty)])?;
            assert!(config.db.replica_urls.is_empty(), "{empty:?}");
        }
        Ok(())
    }

    #[test]
    fn a_bad_value_names_its_variable_without_leaking_secrets() {
        let cases: [(&str, &str); 5] = [
            ("PRIMARY_POOL_SIZE", "many"),
            ("PRIMARY_POOL_SIZE", "0"),
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
}
