//! Start-up, serving and graceful shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rwsplit_router::DbError;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::AppState;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long start-up waits for the primary before giving up on migrations.
const MIGRATE_PATIENCE: Duration = Duration::from_secs(30);

/// Applies migrations, retrying while the primary is still starting.
pub async fn migrate(config: &Config) -> Result<(), BoxError> {
    let started = Instant::now();
    loop {
        match apply_migrations(&config.db.migration_urls).await {
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

/// Applies `migrations/` on the primary as the migration role: in a cluster, on the first of
/// `urls` out of recovery. sqlx holds an advisory lock while it runs, so instances that start
/// together apply each migration once.
async fn apply_migrations(
    urls: &[crate::secret::SecretUrl],
) -> Result<(), sqlx::migrate::MigrateError> {
    let mut last = None;
    for url in urls {
        let options: PgConnectOptions = url.expose().parse()?;
        let mut conn = match PgConnection::connect_with(&options).await {
            Ok(conn) => conn,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let result = if urls.len() > 1 {
            sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
                .fetch_one(&mut conn)
                .await
        } else {
            Ok(false)
        };
        let result = match result {
            Ok(false) => sqlx::migrate!("./migrations").run(&mut conn).await,
            // A replica, or a node that failed to say: try the next.
            Ok(true) => Err(sqlx::migrate::MigrateError::Execute(no_primary())),
            Err(e) => Err(sqlx::migrate::MigrateError::Execute(e)),
        };
        // The connection is dropped either way; a failed close changes nothing.
        let _ = conn.close().await;
        match result {
            Err(sqlx::migrate::MigrateError::Execute(e)) if DbError::is_unavailable_error(&e) => {
                last = Some(e);
            }
            done => return done,
        }
    }
    Err(sqlx::migrate::MigrateError::Execute(
        last.unwrap_or_else(no_primary),
    ))
}

/// No node out of recovery: a cluster mid-failover counts as not reachable yet.
fn no_primary() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "no node is out of recovery",
    ))
}

pub async fn serve(config: Config) -> Result<(), BoxError> {
    let state = AppState::new(config, crate::metrics::install()?)?;
    let config = state.config.clone();
    if config.db.primary_url.is_some() && config.db.replica_urls.is_empty() {
        tracing::warn!("DATABASE_REPLICA_URLS is empty: every read goes to the primary");
    }
    tracing::info!(
        instance = %config.instance,
        primary = ?config.db.primary_url,
        replicas = ?config.db.replica_urls,
        redis = %config.session.redis_url,
        mode = %config.consistency,
        "starting"
    );
    if config.migrate_on_start {
        migrate(&config).await?;
    }
    // Start from a known state: a replica that is down gets no reads from the first request.
    state.db.check_replicas().await;
    let monitor = state.db.spawn_monitor();

    let listener = TcpListener::bind(config.bind).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let db = state.db.clone();
    axum::serve(
        listener,
        crate::app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;

    drop(monitor);
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
