//! Sessions: a cookie naming a record that lives only in Redis, so any instance can serve
//! any request.
//!
//! A request's [`Visit`] loads the record its cookie names; the handler counts the visit or
//! keeps a write, and [`save`], the middleware, saves the record once the handler is done and
//! hands the browser its cookie. The record is rwsplit's own struct in JSON: a general session
//! layer's map of `serde_json::Value`s cost measurably more CPU
//! (BENCHMARKS.md, "Design choices").

mod id;
mod store;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::{Deserialize, Serialize};

pub use id::SessionId;
pub use store::{Record, RedisStore, SessionError};

use crate::config::SessionConfig;
use rwsplit_router::{Consistency, Lsn, ReadContext, WriteMark};

/// The cookie that carries a session's id.
const COOKIE: &str = "rwsplit_session";
/// Bounds the record: a session served by more instances than this keeps the most recent.
const MAX_INSTANCES: usize = 16;

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
    /// `None` when Redis could not be reached: the page goes on without a session.
    pub data: Option<SessionData>,
    /// The record's id in Redis; `None` for a session not saved yet.
    id: Option<SessionId>,
    /// The causal token: the store keeps it apart from `data`, forward only.
    token: Option<Lsn>,
    idle_timeout: Duration,
    first_visit_ttl: Duration,
    /// What [`save`] is to save when the handler is done.
    pending: Pending,
}

/// A record a handler changed, for [`save`] to write after it.
#[derive(Debug)]
struct Change {
    id: Option<SessionId>,
    record: Record,
    ttl: Duration,
}

/// What the [`save`] middleware needs: where records go, and whether cookies are HTTPS only.
#[derive(Clone, Debug)]
pub(crate) struct Saver {
    store: RedisStore,
    secure: bool,
}

impl Saver {
    pub(crate) fn new(store: RedisStore, config: &SessionConfig) -> Self {
        Self {
            store,
            secure: config.cookie_secure,
        }
    }
}

/// Shared by a request's [`Visit`] and the [`save`] middleware around its handler.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pending(Arc<Mutex<Option<Change>>>);

impl Pending {
    fn put(&self, change: Change) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(change);
    }

    fn take(&self) -> Option<Change> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Middleware: saves what the handler changed in its session and sets the session's cookie
/// (with its renewed lifetime). A server error's session is left as it was. A save that fails
/// costs the visit its session, never its page: the page is already rendered, and the next
/// request starts a new session (or, with Redis still down, goes on without).
pub(crate) async fn save(State(saver): State<Saver>, mut req: Request, next: Next) -> Response {
    let pending = Pending::default();
    req.extensions_mut().insert(pending.clone());
    let mut res = next.run(req).await;
    let Some(change) = pending.take() else {
        return res;
    };
    if res.status().is_server_error() {
        return res;
    }
    match saver
        .store
        .save(change.id, &change.record, change.ttl)
        .await
    {
        Ok(id) => {
            let cookie = id::cookie(id, change.ttl, saver.secure);
            res.headers_mut().append(header::SET_COOKIE, cookie);
        }
        Err(e) => tracing::warn!(error = %e, "session not saved"),
    }
    res
}

impl Visit {
    /// Loads the session named by the request's cookie. Never fails: with Redis down, `data`
    /// is `None` and nothing is saved. An id Redis does not know starts a new session, which
    /// gets a new id: a client never chooses its session's id.
    pub(crate) async fn open(
        headers: &HeaderMap,
        store: &RedisStore,
        config: &SessionConfig,
        pending: Pending,
    ) -> Self {
        let mut visit = Self {
            data: None,
            id: None,
            token: None,
            idle_timeout: config.idle_timeout,
            first_visit_ttl: config.first_visit_ttl,
            pending,
        };
        let loaded = match id::from_cookies(headers) {
            Some(id) => store
                .load(id)
                .await
                .map(|r| r.map(|r| (id, r)))
                .map_err(Into::into),
            // A new visitor costs Redis nothing until the end of the request. When Redis is
            // known to be down, check first, so the page says so rather than count a visit
            // it cannot keep.
            None if !store.is_healthy() => store.ping().await.map(|()| None).map_err(Into::into),
            None => Ok(None),
        };
        let tag = match loaded {
            Ok(Some((id, record))) => {
                visit.id = Some(id);
                visit.data = Some(record.data);
                visit.token = record.token;
                return visit;
            }
            Ok(None) => id::tag().map_err(SessionError::from),
            Err(e) => Err(e),
        };
        match tag {
            Ok(tag) => {
                visit.data = Some(SessionData {
                    tag,
                    ..SessionData::default()
                });
            }
            Err(e) => tracing::warn!(error = %e, "session unavailable"),
        }
        visit
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

    /// Counts a page view by `instance` and keeps the session's last write and token.
    pub fn record(&mut self, instance: &str, ctx: &ReadContext) {
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
        self.token = self.token.max(ctx.token);
        // A client that never sends the cookie back leaves a short-lived session behind.
        let ttl = if data.visits == 1 {
            self.first_visit_ttl
        } else {
            self.idle_timeout
        };
        self.stage(ttl);
    }

    /// Keeps the session's last write and token without counting a visit (the `/test`
    /// probes and reads); changes the record only if either moved.
    pub fn remember(&mut self, ctx: &ReadContext) {
        let Some(data) = self.data.as_mut() else {
            return;
        };
        let wrote = ctx.last_write.is_some() && data.last_write != ctx.last_write;
        if !wrote && ctx.token <= self.token {
            return;
        }
        if wrote {
            data.last_write = ctx.last_write;
        }
        self.token = self.token.max(ctx.token);
        self.stage(self.idle_timeout);
    }

    /// Leaves the record as it is now for [`save`], to live `ttl` from the end of the request.
    /// A copy: the page takes `data` before the record is saved.
    fn stage(&self, ttl: Duration) {
        let Some(data) = &self.data else {
            return;
        };
        self.pending.put(Change {
            id: self.id,
            record: Record {
                data: data.clone(),
                token: self.token,
            },
            ttl,
        });
    }
}
