//! rwsplit: a horizontally scaled axum web tier over a replicated PostgreSQL.
//!
//! The layout is the architecture: `db` routes reads and writes, `session` keeps sessions in
//! Redis, `routes` is the HTTP surface, `request_log` is the one table the demo is about.

pub mod chart;
pub mod config;
pub mod console;
pub mod db;
pub mod error;
pub mod healthcheck;
pub mod http;
pub mod observe;
pub mod params;
pub mod probe;
pub mod request_log;
pub mod routes;
pub mod secret;
pub mod server;
pub mod session;
pub mod state;
pub mod telemetry;

pub use routes::app;
pub use state::AppState;
