//! The session store: records in Redis, over redis-rs' `ConnectionManager`.
//!
//! A record is JSON under `rwsplit:session:<id>` and expires in Redis itself (`EX`), so no
//! sweeper is needed.
//!
//! A record's causal token only ever moves forward, even when two requests of one session run
//! at once on two instances and the one that saw less saves its whole record last: every save
//! also advances `rwsplit:causal:<id>` with an atomic compare-and-max, and every load takes the
//! larger of the two. Both travel in the same round trip as the record. If Redis loses that
//! key, the record's own copy still holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError};
use serde::{Deserialize, Serialize};

use super::{SessionData, SessionId};
use crate::config::SessionConfig;
use rwsplit_router::Lsn;

const PREFIX: &str = "rwsplit:session:";
const TOKEN_PREFIX: &str = "rwsplit:causal:";

/// Tries at a free id for a new session; a collision of 128 random bits is not expected once.
const NEW_ID_TRIES: u32 = 3;

/// What the store keeps of a session, as JSON: its data and its causal token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub data: SessionData,
    pub token: Option<Lsn>,
}

/// Why the store could not load or save a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("session record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no random source for a session id: {0}")]
    Random(#[from] getrandom::Error),
    #[error("no free session id after {NEW_ID_TRIES} tries")]
    NoFreeId,
}

/// Sets KEYS[1] to ARGV[1] unless it already holds a larger position, and renews its expiry
/// to ARGV[2] seconds. Positions are 16 hex digits, compared as two exact halves.
const ADVANCE: &str = r"
local function parse(v) return tonumber(string.sub(v, 1, 8), 16), tonumber(string.sub(v, 9, 16), 16) end
local new = ARGV[1]
local cur = redis.call('GET', KEYS[1])
if cur then
  local ch, cl = parse(cur)
  local nh, nl = parse(new)
  if ch > nh or (ch == nh and cl >= nl) then new = cur end
end
redis.call('SET', KEYS[1], new, 'EX', ARGV[2])
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
        // Calls are bounded by `guard`, whole (reconnection included); a response timeout of
        // redis-rs' own would arm a second timer per call for the same bound.
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis_timeout))
            .set_response_timeout(None)
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

    /// The session `id`, or `None` if Redis does not have it (never saved, or expired) or
    /// holds a record this build cannot read (an older format): that visitor starts afresh
    /// rather than go without a session until it expires. The token is the larger of the
    /// record's and its compare-and-max key's.
    pub async fn load(&self, id: SessionId) -> Result<Option<Record>, RedisError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(key(id)).cmd("GET").arg(token_key(id));
        let (json, kept): (Option<String>, Option<String>) = self.run_all(pipe).await?;
        let Some(json) = json else {
            return Ok(None);
        };
        let mut record: Record = match serde_json::from_str(&json) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable session record; starting a new session");
                return Ok(None);
            }
        };
        let kept = kept.and_then(|t| u64::from_str_radix(&t, 16).ok()).map(Lsn);
        record.token = record.token.max(kept);
        Ok(Some(record))
    }

    /// Saves `record` for `ttl` under `id`, or under a new id if `None`; returns the id.
    pub async fn save(
        &self,
        id: Option<SessionId>,
        record: &Record,
        ttl: Duration,
    ) -> Result<SessionId, SessionError> {
        let json = serde_json::to_string(record)?;
        let token = record.token;
        if let Some(id) = id {
            self.run_all::<()>(save_commands(id, &json, token, ttl, false))
                .await?;
            return Ok(id);
        }
        // NX: even a colliding id could never overwrite someone else's session. (Its token
        // would still be advanced by ours, which only makes that session's reads stricter.)
        for _ in 0..NEW_ID_TRIES {
            let id = SessionId::random()?;
            let pipe = save_commands(id, &json, token, ttl, true);
            if let (Some(_),) = self.run_all::<(Option<String>,)>(pipe).await? {
                return Ok(id);
            }
        }
        Err(SessionError::NoFreeId)
    }

    /// Deletes the session `id` and its token.
    pub async fn delete(&self, id: SessionId) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key(id)).arg(token_key(id));
        self.run::<()>(cmd).await
    }
}

/// The record's SET, and its token's compare-and-max when it has one, in one pipeline.
fn save_commands(
    id: SessionId,
    json: &str,
    token: Option<Lsn>,
    ttl: Duration,
    nx: bool,
) -> redis::Pipeline {
    // At least a second: Redis refuses an expiry of zero.
    let secs = ttl.as_secs().max(1);
    let mut pipe = redis::pipe();
    let set = pipe.cmd("SET").arg(key(id)).arg(json).arg("EX").arg(secs);
    if nx {
        set.arg("NX");
    }
    if let Some(token) = token {
        pipe.cmd("EVAL")
            .arg(ADVANCE)
            .arg(1)
            .arg(token_key(id))
            .arg(format!("{:016X}", token.0))
            .arg(secs)
            .ignore();
    }
    pipe
}

fn key(id: SessionId) -> String {
    [PREFIX, id.as_str()].concat()
}

fn token_key(id: SessionId) -> String {
    [TOKEN_PREFIX, id.as_str()].concat()
}
