//! A tower-sessions store over redis-rs' `ConnectionManager`.
//!
//! Every published Redis store for tower-sessions is built on another Redis client (fred);
//! this one keeps the project on a single client. Records are JSON under `rwsplit:session:<id>`
//! and expire in Redis itself (`EXAT`), so no sweeper is needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use crate::config::SessionConfig;

const PREFIX: &str = "rwsplit:session:";

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    timeout: Duration,
    /// The outcome of the last Redis call: lets a request skip starting a session that
    /// could not be saved, instead of failing after its page was rendered.
    healthy: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects lazily: the app starts while Redis is down and reconnects when it returns.
    pub fn new(config: &SessionConfig) -> Result<Self, RedisError> {
        let client = redis::Client::open(config.redis_url.expose())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis_timeout))
            .set_response_timeout(Some(config.redis_timeout))
            .set_number_of_retries(1)
            .set_max_delay(config.redis_timeout);
        Ok(Self {
            conn: ConnectionManager::new_lazy_with_config(client, manager)?,
            timeout: config.redis_timeout,
            healthy: Arc::new(AtomicBool::new(true)),
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub async fn ping(&self) -> Result<(), RedisError> {
        self.run::<String>(redis::cmd("PING")).await.map(drop)
    }

    async fn run<T: FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, RedisError> {
        let mut conn = self.conn.clone();
        let result = match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "Redis did not answer in time",
            ))),
        };
        let ok = result.is_ok();
        if !ok {
            crate::observe::redis_error();
        }
        if self.healthy.swap(ok, Ordering::Relaxed) != ok {
            match &result {
                Ok(_) => tracing::info!("Redis reachable again; sessions resume"),
                Err(e) => {
                    tracing::warn!(error = %e, "Redis unreachable; pages go on without sessions")
                }
            }
        }
        result
    }

    fn set(record: &Record) -> session_store::Result<redis::Cmd> {
        let json = serde_json::to_string(record)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(key(&record.id))
            .arg(json)
            .arg("EXAT")
            .arg(record.expiry_date.unix_timestamp());
        Ok(cmd)
    }
}

fn key(id: &Id) -> String {
    format!("{PREFIX}{id}")
}

/// tower-sessions saves after the handler has run, so by then the page is rendered and its
/// row written; an error here would replace that page with an empty 500. Redis failing in
/// between costs the visit its session instead: the next request starts a new one (or, with
/// Redis still down, goes on without). `run` has counted the error.
fn unsaved(e: &RedisError) {
    tracing::warn!(error = %e, "session not saved");
}

fn backend(e: RedisError) -> session_store::Error {
    session_store::Error::Backend(e.to_string())
}

#[async_trait::async_trait]
impl SessionStore for RedisStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // Ids are 128 random bits, so a collision is astronomically unlikely; NX makes it
        // impossible to overwrite someone else's session even then.
        for _ in 0..3 {
            let mut cmd = Self::set(record)?;
            cmd.arg("NX");
            match self.run::<Option<String>>(cmd).await {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => record.id = Id::default(),
                Err(e) => {
                    unsaved(&e);
                    return Ok(());
                }
            }
        }
        Err(session_store::Error::Backend(
            "no free session id after 3 tries".into(),
        ))
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        if let Err(e) = self.run::<()>(Self::set(record)?).await {
            unsaved(&e);
        }
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key(id));
        let json: Option<String> = self.run(cmd).await.map_err(backend)?;
        json.map(|j| serde_json::from_str(&j))
            .transpose()
            .map_err(|e| session_store::Error::Decode(e.to_string()))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key(id));
        self.run::<()>(cmd).await.map_err(backend)
    }
}
