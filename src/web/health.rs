//! `/healthz`: the process answers. `/readyz`: it can do its work (primary and Redis).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use crate::state::AppState;
use rwsplit_router::NodeStatus;

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
    instance: String,
}

pub async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        instance: state.config.instance.clone(),
    })
}

#[derive(Serialize)]
pub struct Readiness {
    ready: bool,
    instance: String,
    primary: Check,
    /// The node that takes writes, as this instance last found it: `primary` when fixed, a
    /// cluster's `node1`... or none mid-failover.
    primary_node: Option<String>,
    redis: Check,
    replicas: Vec<NodeStatus>,
    /// Reads that wanted a replica but went to the primary, since this instance started.
    fallback_reads: u64,
}

#[derive(Serialize)]
pub struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

impl Check {
    fn from<E: std::fmt::Display>(what: &str, result: Result<(), E>) -> Self {
        match result {
            Ok(()) => Self {
                ok: true,
                error: None,
            },
            Err(e) => {
                // The detail goes to the log; the probe only needs to know it failed.
                tracing::warn!(check = what, error = %e, "readiness check failed");
                Self {
                    ok: false,
                    error: Some("unreachable"),
                }
            }
        }
    }
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (primary, redis) = tokio::join!(state.db.ping_primary(), state.sessions.ping());
    let primary = Check::from("primary", primary);
    let redis = Check::from("redis", redis);
    let ready = primary.ok && redis.ok;
    let body = Readiness {
        ready,
        instance: state.config.instance.clone(),
        primary,
        primary_node: state.db.primary().map(str::to_owned),
        redis,
        replicas: state.db.replica_statuses(),
        fallback_reads: state.db.fallback_reads(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
