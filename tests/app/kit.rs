//! The in-process test kit: the whole app (`rwsplit::app`) over a database of the test's own,
//! created on the test stack's primary and streamed to its replicas, driven with `oneshot`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use rwsplit::AppState;
use rwsplit::config::Config;
use sqlx::{Connection, PgConnection};
use tower::ServiceExt;

use crate::common::{Stack, eventually};

/// Databases older than this are a crashed run's leftovers, dropped by the next run.
const STALE_AFTER_SECS: u64 = 600;

pub struct TestApp {
    pub state: AppState,
    router: Router,
    /// The test's own database, on every node of the stack.
    pub database: String,
    pub stack: Stack,
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with(&[]).await
    }

    /// An app configured as the defaults say, but for `vars`, and pointing at the test's own
    /// database on the stack's primary and both replicas.
    pub async fn with(vars: &[(&str, &str)]) -> Self {
        let stack = Stack::get();
        let database = create_database(&stack).await;
        let url = |node: &str| stack.superuser_url(node, &database);
        let primary = url("primary");
        let replicas = (1..=stack.replicas)
            .map(|n| url(&format!("replica{n}")))
            .collect::<Vec<_>>()
            .join(",");
        let redis = stack.redis_url();
        let mut source = vec![
            ("DATABASE_URL", primary.as_str()),
            ("DATABASE_REPLICA_URLS", replicas.as_str()),
            ("REDIS_URL", redis.as_str()),
            ("INSTANCE_NAME", "in-process"),
            ("MIGRATE_ON_START", "false"),
        ];
        source.extend_from_slice(vars);
        // Later entries win, as `vars` should.
        source.reverse();
        let config = Config::from_source(source.as_slice()).expect("test configuration");
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let state = AppState::new(config, metrics).expect("state");
        state.db.check_replicas().await;
        let router = rwsplit::app(state.clone())
            .layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        Self {
            state,
            router,
            database,
            stack,
        }
    }

    pub async fn get(&self, uri: &str) -> Response {
        self.get_with(uri, &[]).await
    }

    pub async fn get_with(&self, uri: &str, headers: &[(&str, &str)]) -> Response {
        let mut request = Request::get(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Body::empty()).expect("request"))
            .await
    }

    pub async fn send(&self, request: Request<Body>) -> Response {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 24).await.expect("body");
        Response {
            status: parts.status,
            headers: parts.headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// A superuser connection to the test's database on the primary, for checks.
    pub async fn admin(&self) -> PgConnection {
        PgConnection::connect(&self.stack.superuser_url("primary", &self.database))
            .await
            .expect("admin connection")
    }
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Response {
    /// `name=value` of the session cookie this response set, to send back.
    pub fn session_cookie(&self) -> String {
        let set = self.headers["set-cookie"].to_str().expect("ascii");
        set.split(';').next().unwrap_or_default().to_owned()
    }
}

/// A fresh, migrated database, once the replicas have it too; drops stale ones first.
async fn create_database(stack: &Stack) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let name = format!("rwsplit_t_{now}_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&stack.superuser_url("primary", "postgres"))
        .await
        .expect("superuser connection");
    let existing: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'rwsplit\\_t\\_%'")
            .fetch_all(&mut admin)
            .await
            .expect("databases");
    for old in existing {
        let created = old.split('_').nth(2).and_then(|t| t.parse::<u64>().ok());
        if created.is_some_and(|t| t + STALE_AFTER_SECS < now) {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{old}\" WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await;
        }
    }
    // Both names are this kit's own: a timestamp and a UUID.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("create database");
    let mut conn = PgConnection::connect(&stack.superuser_url("primary", &name))
        .await
        .expect("test database");
    sqlx::migrate!("./migrations")
        .run(&mut conn)
        .await
        .expect("migrations");
    for n in 1..=stack.replicas {
        let url = stack.superuser_url(&format!("replica{n}"), &name);
        eventually(
            Duration::from_secs(10),
            "the replica has the database",
            || {
                let url = url.clone();
                async move {
                    // The migrations' last table, so the whole schema has replayed.
                    match PgConnection::connect(&url).await {
                        Ok(mut c) => sqlx::query("SELECT 1 FROM probe LIMIT 1")
                            .execute(&mut c)
                            .await
                            .is_ok(),
                        Err(_) => false,
                    }
                }
            },
        )
        .await;
    }
    name
}
