//! Start-up, serving and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use crate::config::Config;
use crate::db::{Db, DbError, monitor};
use crate::request_log::Batcher;
use crate::session::RedisStore;
use crate::state::AppState;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long start-up waits for the primary before giving up on migrations.
const MIGRATE_PATIENCE: Duration = Duration::from_secs(30);

pub fn state(config: Config) -> Result<AppState, BoxError> {
    let db = Arc::new(Db::new(
        &config.db,
        config.routing.clone(),
        &config.instance,
    )?);
    let sessions = RedisStore::new(&config.session)?;
    Ok(AppState {
        request_log: Batcher::spawn(
            db.clone(),
            config.db.log_batch_rows,
            config.db.acquire_timeout,
        ),
        config: Arc::new(config),
        db,
        sessions,
        metrics: crate::observe::install()?,
        probe_slots: Arc::new(tokio::sync::Semaphore::new(crate::state::PROBE_SLOTS)),
    })
}

/// Applies migrations, retrying while the primary is still starting.
pub async fn migrate(config: &Config) -> Result<(), BoxError> {
    let started = Instant::now();
    loop {
        match Db::migrate(&config.db.migration_url).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e))
                if DbError::is_unavailable_error(&e) && started.elapsed() < MIGRATE_PATIENCE =>
            {
                tracing::info!("primary not reachable yet; retrying migrations");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub async fn serve(config: Config) -> Result<(), BoxError> {
    let state = state(config)?;
    let config = state.config.clone();
    if config.db.replica_urls.is_empty() {
        tracing::warn!("DATABASE_REPLICA_URLS is empty: every read goes to the primary");
    }
    tracing::info!(
        instance = %config.instance,
        primary = %config.db.primary_url,
        replicas = ?config.db.replica_urls,
        redis = %config.session.redis_url,
        mode = %config.routing.consistency,
        "starting"
    );
    if config.migrate_on_start {
        migrate(&config).await?;
    }
    let routing = &config.routing;
    let mut history = monitor::History::new(routing.check_interval, routing.max_lag);
    monitor::check_all(&state.db, Duration::from_secs(2), &mut history).await;
    let monitor = monitor::spawn(state.db.clone());

    let listener = TcpListener::bind(config.bind).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let db = state.db.clone();
    axum::serve(
        listener,
        crate::app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;

    monitor.abort();
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM; in-flight requests then finish before `serve` returns.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining in-flight requests");
}
