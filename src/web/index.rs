//! `GET /`: log this request on the primary, show the last 25 rows read through the read route.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use rwsplit_router::{Consistency, NodeStatus};

use super::error::AppError;
use super::extract::Client;
use crate::params::whole_number;
use crate::request_log::{self, Entry, Logged, NewEntry, RowHtml};
use crate::session::{SessionData, Visit};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "index.html")]
pub struct IndexPage {
    instance: String,
    written: Entry,
    /// `None` when no node could serve the read in time after the write had committed.
    read: Option<ReadView>,
    mode: Consistency,
    session: Option<SessionData>,
    replicas_configured: bool,
    /// The node taking writes as this instance last found it; `None` mid-failover.
    primary: Option<String>,
    /// The other nodes, as the last check found them.
    others: Vec<NodeStatus>,
    refresh: Option<u32>,
}

pub struct ReadView {
    /// Rendered once per batch (`request_log::Table`); the page marks its own row.
    rows: Arc<[RowHtml]>,
    node: String,
    reason: String,
    on_replica: bool,
    saw_own_write: bool,
}

impl IntoResponse for IndexPage {
    fn into_response(self) -> Response {
        // The rows are most of the page, and askama's size hint knows only the template's own
        // text: room for them up front spares growing (and copying) the page as it renders.
        let rows = self.read.as_ref().map_or(0, |r| {
            r.rows.iter().map(|row| row.cells.len() + ROW_MARKUP).sum()
        });
        let mut page = String::with_capacity(Self::SIZE_HINT + rows);
        match self.render_into(&mut page) {
            Ok(()) => Html(page).into_response(),
            Err(e) => AppError::from(e).into_response(),
        }
    }
}

/// At most what the template writes around a row's cells: `<tr class="mine">`, `</tr>` and
/// the indentation.
const ROW_MARKUP: usize = 48;

/// `?refresh=N` reloads the page every N seconds, from 1 to this.
const MAX_REFRESH_SECS: u32 = 60;

pub async fn index(
    State(state): State<AppState>,
    client: Client,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
    mut visit: Visit,
) -> Result<IndexPage, AppError> {
    let refresh = whole_number(
        params.get("refresh").map(String::as_str),
        "refresh (seconds)",
        1..=MAX_REFRESH_SECS,
    )
    .map_err(AppError::BadRequest)?;
    let config = &state.config;
    let entry = NewEntry {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), ToString::to_string),
        client_addr: client.addr.to_string(),
        user_agent: headers
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default(),
        instance: config.instance.clone(),
        session_tag: visit.tag().map(str::to_owned),
        request_id: client.idempotency_key(&headers),
    }
    .truncated();

    // The session's consistency state decides where the read may go, and learns the write.
    let mut ctx = visit.read_context(config.consistency);
    let Logged { written, read } = match &state.batcher {
        None => request_log::log(&state.db, &mut ctx, &entry).await?,
        // Group commit: the same insert and read, each shared by the requests that arrive
        // while the previous batch is at the database (REQUEST_LOG_BATCH=1 turns it off).
        Some(batcher) => batcher.log(entry, &mut ctx).await?,
    };
    // The row is committed: from here on, a node that cannot serve the read in time costs the
    // table, not the request. A 503 now would report a failure for a request that was logged.
    let read = match read {
        Ok(read) => Some(ReadView {
            saw_own_write: read.value.rows().iter().any(|row| row.id == written.id),
            rows: read.value.html()?,
            on_replica: read.reason.on_replica(),
            reason: read.reason.to_string(),
            node: read.node,
        }),
        Err(e) if e.is_unavailable() => {
            tracing::warn!(error = %e, "read unavailable after the write; showing the write only");
            None
        }
        Err(e) => return Err(e.into()),
    };
    visit.record(&config.instance, &ctx);

    Ok(IndexPage {
        instance: config.instance.clone(),
        written,
        read,
        mode: ctx.mode,
        session: visit.data,
        replicas_configured: !config.db.replica_urls.is_empty(),
        primary: state.db.primary().map(str::to_owned),
        others: state.db.replica_statuses(),
        refresh,
    })
}
