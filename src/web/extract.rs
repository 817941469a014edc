//! Per-request context as extractors: the session's [`Visit`], the client's address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use super::error::AppError;
use crate::session::{Pending, Visit};
use crate::state::AppState;

/// Loads the request's session from Redis; never fails for Redis being down (see
/// [`Visit::open`]).
impl FromRequestParts<AppState> for Visit {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Only a router built without `session::save` lacks it.
        let pending = parts
            .extensions
            .get::<Pending>()
            .cloned()
            .ok_or(AppError::Bug(
                "the session middleware (session::save) is not installed",
            ))?;
        let config = &state.config.session;
        Ok(Visit::open(&parts.headers, &state.sessions, config, pending).await)
    }
}

/// Who sent the request: the TCP peer, or the client a trusted proxy names.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub addr: IpAddr,
    /// The peer is a trusted proxy, so its headers (`X-Request-Id` too) are believed.
    pub via_proxy: bool,
}

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Served without connection info (a test calling the router directly): loopback.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
        let proxies = &state.config.trusted_proxies;
        Ok(Self {
            addr: proxies.client_addr(peer, &parts.headers),
            via_proxy: proxies.trusts(peer),
        })
    }
}

impl Client {
    /// nginx's `X-Request-Id` is the same on every retry of one client request, so it makes
    /// the insert idempotent. Anyone else's is not trusted: a made-up id could collide on
    /// purpose. A key made here is time-ordered (UUIDv7), like nginx's: the unique index then
    /// grows at one end.
    pub fn idempotency_key(&self, headers: &HeaderMap) -> String {
        headers
            .get("x-request-id")
            .filter(|_| self.via_proxy)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
    }
}
