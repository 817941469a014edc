//! `/test`: measure read-after-write staleness in one or every consistency mode.

use std::collections::HashMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::{Query, State};
use rwsplit_router::{Consistency, Lsn, NodeStatus};
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;

use super::error::{AppError, JsonError};
use crate::params::whole_number;
use crate::session::Visit;
use crate::staleness::chart::Chart;
use crate::staleness::parse_modes;
use crate::staleness::probe::{self, DEFAULT_PROBES, MAX_PROBES, Run};
use crate::staleness::senders::{self, WalSender};
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct Report {
    instance: String,
    probes_per_mode: u32,
    runs: Vec<Run>,
    replicas: Vec<NodeStatus>,
    /// `pg_stat_replication` on the primary; empty with `wal_senders_unavailable` set when
    /// it could not be read.
    wal_senders: Vec<WalSender>,
    wal_senders_unavailable: bool,
}

#[derive(Template, WebTemplate)]
#[template(path = "test.html")]
pub struct TestPage {
    chart: Chart,
    report: Report,
    modes: Vec<&'static str>,
    selected: String,
    visible_within_s: u64,
}

pub async fn page(
    State(state): State<AppState>,
    visit: Visit,
    Query(params): Query<HashMap<String, String>>,
) -> Result<TestPage, AppError> {
    let selected = params.get("mode").cloned().unwrap_or_default();
    let report = measure(&state, visit, &params).await?;
    Ok(TestPage {
        chart: Chart::new(&report.runs),
        report,
        modes: Consistency::ALL
            .iter()
            .map(|m| m.as_str())
            .chain(["all"])
            .collect(),
        selected,
        visible_within_s: probe::VISIBLE_WITHIN.as_secs(),
    })
}

pub async fn json(
    State(state): State<AppState>,
    visit: Visit,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Report>, JsonError> {
    Ok(Json(measure(&state, visit, &params).await?))
}

async fn measure(
    state: &AppState,
    mut visit: Visit,
    params: &HashMap<String, String>,
) -> Result<Report, AppError> {
    let n = parse_n(params.get("n"))?;
    let modes = modes(params, state.config.consistency)?;
    let _permit = probe_slot(state)?;
    let mut runs = Vec::with_capacity(modes.len());
    for mode in modes {
        let ctx = visit.read_context(mode);
        let (run, ctx) = probe::run(&state.db, &state.config.instance, ctx, n).await?;
        visit.remember(&ctx);
        runs.push(run);
    }
    let wal_senders = senders::wal_senders(&state.db).await;
    if let Err(e) = &wal_senders {
        tracing::warn!(error = %e, "pg_stat_replication unavailable");
    }
    Ok(Report {
        instance: state.config.instance.clone(),
        probes_per_mode: n,
        runs,
        replicas: state.db.replica_statuses(),
        wal_senders_unavailable: wal_senders.is_err(),
        wal_senders: wal_senders.unwrap_or_default(),
    })
}

/// `/test` writes up to 600 rows a call: a few may run at once per instance, the rest get 429.
fn probe_slot(state: &AppState) -> Result<OwnedSemaphorePermit, AppError> {
    state.probe_slots.clone().try_acquire_owned().map_err(|_| {
        AppError::TooManyRequests(
            "Staleness tests are already running on this instance; retry in a few seconds.".into(),
        )
    })
}

fn parse_n(raw: Option<&String>) -> Result<u32, AppError> {
    whole_number(
        raw.map(String::as_str),
        "n (probes per mode)",
        1..=MAX_PROBES,
    )
    .map(|n| n.unwrap_or(DEFAULT_PROBES))
    .map_err(AppError::BadRequest)
}

fn modes(
    params: &HashMap<String, String>,
    default: Consistency,
) -> Result<Vec<Consistency>, AppError> {
    parse_modes(params.get("mode").map_or("", String::as_str), default)
        .map_err(AppError::BadRequest)
}

#[derive(Debug, Serialize)]
pub struct WriteReport {
    id: i64,
    instance: String,
    commit_lsn: Option<Lsn>,
}

/// `GET /test/write.json`: writes one probe row and keeps the write in the session, without
/// waiting for replicas; `/test/read.json` on any instance then reads it back.
pub async fn write_json(
    State(state): State<AppState>,
    mut visit: Visit,
) -> Result<Json<WriteReport>, JsonError> {
    let _permit = probe_slot(&state)?;
    let mut ctx = visit.read_context(state.config.consistency);
    probe::prune(&state.db).await?;
    let id = probe::write(&state.db, &state.config.instance, &mut ctx).await?;
    visit.remember(&ctx);
    Ok(Json(WriteReport {
        id,
        instance: state.config.instance.clone(),
        commit_lsn: ctx.last_write.and_then(|w| w.lsn),
    }))
}

#[derive(Debug, Serialize)]
pub struct ReadBackReport {
    id: i64,
    found: bool,
    node: String,
    reason: String,
    in_recovery: bool,
    /// The session's causal token after this read (causal mode advances it).
    token: Option<Lsn>,
}

/// `GET /test/read.json?id=N&mode=M`: reads probe row N back through the read route with this
/// session's consistency state, which lives in Redis: written on one instance, read on another.
/// Reads only, so it needs no probe slot.
pub async fn read_json(
    State(state): State<AppState>,
    mut visit: Visit,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<ReadBackReport>, JsonError> {
    let id = params
        .get("id")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| AppError::BadRequest("id must be a positive whole number".into()))?;
    let mode = modes(&params, state.config.consistency)?;
    let [mode] = mode[..] else {
        return Err(
            AppError::BadRequest("mode must be one of eventual, sticky or causal".into()).into(),
        );
    };
    let mut ctx = visit.read_context(mode);
    let read = state
        .db
        .read(&mut ctx, |c| Box::pin(probe::read_back(c, id)))
        .await?;
    visit.remember(&ctx);
    Ok(Json(ReadBackReport {
        id,
        found: read.value.found,
        in_recovery: read.value.in_recovery,
        reason: read.reason.to_string(),
        node: read.node,
        token: ctx.token,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_is_bounded_with_a_message_naming_the_range() {
        for bad in ["0", "10000", "abc", "-1", ""] {
            let err = parse_n(Some(&bad.to_owned())).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains("1 to 200")),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(parse_n(None).ok(), Some(DEFAULT_PROBES));
        assert_eq!(parse_n(Some(&"200".to_owned())).ok(), Some(200));
    }
}
