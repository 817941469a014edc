//! rwsplit: a horizontally scaled axum web tier over a replicated PostgreSQL.
//!
//! The routing itself is the `rwsplit-router` crate (`crates/router/`). This crate is the
//! app around it, layered so each module imports only those listed before it:
//!
//! - `config`, `secret`, `telemetry`, `params`, `metrics`: values and plumbing;
//! - `session`: sessions in Redis; `request_log`: the table `GET /` writes and reads, and
//!   its group commit; `staleness`: the probe `/test` runs, and its chart;
//! - `state`: what every handler shares; `web`: the HTTP surface (routes, errors,
//!   extractors); `server`: start-up and shutdown; `cli`: the commands `main` dispatches.

pub mod cli;
pub mod config;
pub mod metrics;
pub mod params;
pub mod request_log;
pub mod secret;
pub mod server;
pub mod session;
pub mod staleness;
pub mod state;
pub mod telemetry;
pub mod web;

pub use state::AppState;
pub use web::app;
