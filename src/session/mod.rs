//! Sessions: a cookie naming a record that lives only in Redis, so any instance can serve
//! any request.

mod store;

use serde::{Deserialize, Serialize};
use tower_sessions::cookie::SameSite;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

pub use store::RedisStore;
use store::TOKEN;

use crate::config::SessionConfig;
use rwsplit_router::{Consistency, Lsn, ReadContext, WriteMark};

const KEY: &str = "rwsplit";
/// Bounds the record: a session served by more instances than this keeps the most recent.
const MAX_INSTANCES: usize = 16;

pub fn layer(store: RedisStore, config: &SessionConfig) -> SessionManagerLayer<RedisStore> {
    SessionManagerLayer::new(store)
        .with_name("rwsplit_session")
        .with_http_only(true)
        .with_same_site(SameSite::Lax)
        .with_secure(config.cookie_secure)
        .with_expiry(Expiry::OnInactivity(to_time(config.idle_timeout)))
}

/// What rwsplit keeps in a session.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionData {
    /// A short random label for the request log; unrelated to the secret session id.
    pub tag: String,
    pub visits: u64,
    /// The instances that served this session, least recently first.
    pub instances: Vec<String>,
    pub last_write: Option<WriteMark>,
}

/// This request's view of its session: the data, or why there is none.
#[derive(Debug)]
pub struct Visit {
    session: Session,
    /// `None` when Redis could not be reached: the page goes on without a session.
    pub data: Option<SessionData>,
    /// The causal token as loaded: the store keeps it apart from `data`, forward only.
    token: Option<Lsn>,
}

impl Visit {
    /// Loads the session. Never fails: with Redis down, `data` is `None` and nothing is saved.
    pub async fn open(session: Session, store: &RedisStore) -> Self {
        // A new visitor costs Redis nothing until the end of the request. When Redis is known
        // to be down, check first, so the page says so rather than count a visit it cannot keep.
        if session.id().is_none() && !store.is_healthy() && store.ping().await.is_err() {
            return Self {
                session,
                data: None,
                token: None,
            };
        }
        let data = match session.get::<SessionData>(KEY).await {
            Ok(data) => Some(data.unwrap_or_else(|| SessionData {
                tag: new_tag(),
                ..SessionData::default()
            })),
            Err(e) => {
                tracing::warn!(error = %e, "session unavailable");
                None
            }
        };
        // The record is loaded by now: reading another entry costs no round trip. A token
        // that does not parse is dropped: the session then knows less, never something wrong.
        let token = match data {
            Some(_) => session.get::<Lsn>(TOKEN).await.ok().flatten(),
            None => None,
        };
        Self {
            session,
            data,
            token,
        }
    }

    pub fn tag(&self) -> Option<&str> {
        self.data.as_ref().map(|d| d.tag.as_str())
    }

    /// The routing context for this session's reads in `mode`.
    pub fn read_context(&self, mode: Consistency) -> ReadContext {
        match &self.data {
            Some(d) => {
                let mut ctx = ReadContext::new(mode, d.last_write);
                if let Some(token) = self.token {
                    ctx.observe(token);
                }
                ctx
            }
            None => ReadContext::unknown(mode),
        }
    }

    /// Stages the context's token for saving if it moved forward (without a session, there
    /// is nothing to keep it in).
    async fn keep_token(&mut self, ctx: &ReadContext) {
        if self.data.is_none() || ctx.token <= self.token {
            return;
        }
        self.token = ctx.token;
        if let Err(e) = self.session.insert(TOKEN, ctx.token).await {
            tracing::warn!(error = %e, "session token not updated");
        }
    }

    /// Counts a page view by `instance` and keeps the session's last write and token.
    pub async fn record(&mut self, instance: &str, ctx: &ReadContext, config: &SessionConfig) {
        self.keep_token(ctx).await;
        let Some(data) = self.data.as_mut() else {
            return;
        };
        data.visits += 1;
        data.instances.retain(|name| name != instance);
        if data.instances.len() >= MAX_INSTANCES {
            data.instances.remove(0);
        }
        data.instances.push(instance.to_owned());
        data.last_write = ctx.last_write.or(data.last_write);
        self.session
            .set_expiry(Some(Expiry::OnInactivity(to_time(if data.visits == 1 {
                config.first_visit_ttl
            } else {
                config.idle_timeout
            }))));
        if let Err(e) = self.session.insert(KEY, &*data).await {
            tracing::warn!(error = %e, "session not updated");
        }
    }

    /// Keeps the session's last write and token without counting a visit (the `/test`
    /// probes and reads).
    pub async fn remember(&mut self, ctx: &ReadContext) {
        self.keep_token(ctx).await;
        let Some(data) = self.data.as_mut() else {
            return;
        };
        if ctx.last_write.is_some() && data.last_write != ctx.last_write {
            data.last_write = ctx.last_write;
            if let Err(e) = self.session.insert(KEY, &*data).await {
                tracing::warn!(error = %e, "session not updated");
            }
        }
    }
}

fn new_tag() -> String {
    // tower-sessions ids are 128 random bits; a fresh one is a convenient random source.
    format!("{:08x}", tower_sessions::session::Id::default().0 as u32)
}

fn to_time(d: std::time::Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MAX)
}
