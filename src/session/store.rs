//! A tower-sessions store over redis-rs' `ConnectionManager`.
//!
//! Every published Redis store for tower-sessions is built on another Redis client (fred);
//! this one keeps the project on a single client. Records are JSON under `rwsplit:session:<id>`
//! and expire in Redis itself (`EXAT`), so no sweeper is needed.
//!
//! A record's [`TOKEN`] entry (the session's causal token) only ever moves forward, even when
//! two requests of one session run at once on two instances and the one that saw less saves
//! its whole record last: every save also advances `rwsplit:causal:<id>` with an atomic
//! compare-and-max, and every load takes the larger of the two. Both travel in the same
//! round trip as the record. If Redis loses that key, the record's own copy still holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use crate::config::SessionConfig;
use rwsplit_router::Lsn;

const PREFIX: &str = "rwsplit:session:";
const TOKEN_PREFIX: &str = "rwsplit:causal:";

/// The record entry whose value (an [`Lsn`]) the store keeps from moving backwards.
pub(crate) const TOKEN: &str = "causal";

/// Sets KEYS[1] to ARGV[1] unless it already holds a larger position, and renews its expiry
/// to ARGV[2] (Unix seconds). Positions are 16 hex digits, compared as two exact halves.
const ADVANCE: &str = r"
local function parse(v) return tonumber(string.sub(v, 1, 8), 16), tonumber(string.sub(v, 9, 16), 16) end
local new = ARGV[1]
local cur = redis.call('GET', KEYS[1])
if cur then
  local ch, cl = parse(cur)
  local nh, nl = parse(new)
  if ch > nh or (ch == nh and cl >= nl) then new = cur end
end
redis.call('SET', KEYS[1], new, 'EXAT', ARGV[2])
return new
";

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
        self.guard(async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Several commands in one round trip.
    async fn run_all<T: FromRedisValue>(&self, pipe: redis::Pipeline) -> Result<T, RedisError> {
        let mut conn = self.conn.clone();
        self.guard(async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Bounds a Redis call by the timeout, counts its failures and tracks health.
    async fn guard<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisError> {
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "Redis did not answer in time",
            ))),
        };
        let ok = result.is_ok();
        if !ok {
            crate::metrics::redis_error();
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

    /// The record's SET, and its token's compare-and-max when it has one, in one pipeline.
    fn save_commands(record: &Record, nx: bool) -> session_store::Result<redis::Pipeline> {
        let mut set = Self::set(record)?;
        if nx {
            set.arg("NX");
        }
        let mut pipe = redis::pipe();
        pipe.add_command(set);
        if let Some(token) = token_of(record) {
            pipe.cmd("EVAL")
                .arg(ADVANCE)
                .arg(1)
                .arg(token_key(&record.id))
                .arg(format!("{:016X}", token.0))
                .arg(record.expiry_date.unix_timestamp())
                .ignore();
        }
        Ok(pipe)
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

fn token_key(id: &Id) -> String {
    format!("{TOKEN_PREFIX}{id}")
}

fn token_of(record: &Record) -> Option<Lsn> {
    record
        .data
        .get(TOKEN)
        .and_then(|v| serde_json::from_value(v.clone()).ok())
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
        // impossible to overwrite someone else's session even then. (Its token would still
        // be advanced by ours, which only makes that session's reads stricter.)
        for _ in 0..3 {
            let pipe = Self::save_commands(record, true)?;
            match self.run_all::<(Option<String>,)>(pipe).await {
                Ok((Some(_),)) => return Ok(()),
                Ok((None,)) => record.id = Id::default(),
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
        if let Err(e) = self
            .run_all::<()>(Self::save_commands(record, false)?)
            .await
        {
            unsaved(&e);
        }
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key(id)).cmd("GET").arg(token_key(id));
        let (json, kept): (Option<String>, Option<String>) =
            self.run_all(pipe).await.map_err(backend)?;
        let Some(json) = json else {
            return Ok(None);
        };
        let mut record: Record =
            serde_json::from_str(&json).map_err(|e| session_store::Error::Decode(e.to_string()))?;
        let kept = kept.and_then(|t| u64::from_str_radix(&t, 16).ok()).map(Lsn);
        if let Some(kept) = kept
            && token_of(&record) < Some(kept)
        {
            let value = serde_json::to_value(kept)
                .map_err(|e| session_store::Error::Encode(e.to_string()))?;
            record.data.insert(TOKEN.to_owned(), value);
        }
        Ok(Some(record))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key(id)).arg(token_key(id));
        self.run::<()>(cmd).await.map_err(backend)
    }
}
