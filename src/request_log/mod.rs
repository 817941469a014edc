//! The request log: one row per `GET /`, written on the primary, read back from a replica.
//!
//! [`log`] is the whole of it: [`insert`] through `db.writer`, then [`latest`] through
//! `db.read`. The [`Batcher`] (`batch.rs`) runs the same two queries once for the requests
//! that arrive together.

mod batch;
mod table;

pub use batch::{Batcher, LogError};
pub use table::{RowHtml, Table};

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rwsplit_router::{Db, DbError, ReadContext, Routed};
use serde::Serialize;
use sqlx::PgConnection;
use time::OffsetDateTime;

/// Longest values stored; longer ones are cut at a character boundary, never rejected.
pub const MAX_PATH: usize = 2048;
pub const MAX_USER_AGENT: usize = 512;
pub const MAX_INSTANCE: usize = 64;
const MAX_METHOD: usize = 16;
const MAX_ADDR: usize = 64;
const MAX_TAG: usize = 16;
const MAX_REQUEST_ID: usize = 64;

/// Rows a page shows: the latest this many.
pub const SHOWN: i64 = 25;

/// The columns of an [`Entry`]: a macro, so queries stay `&'static str`.
macro_rules! entry_columns {
    () => {
        "id, at, method, path, client_addr, user_agent, instance, session_tag"
    };
}

/// One request's row, and the latest rows read after it.
#[derive(Debug)]
pub struct Logged {
    pub written: Entry,
    /// The latest rows, read after the write; an error here leaves the write standing.
    /// Shared: every request of a batch shows the same table.
    pub read: Result<Routed<Arc<Table>>, DbError>,
}

/// A row about to be written.
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub method: String,
    pub path: String,
    pub client_addr: String,
    pub user_agent: String,
    pub instance: String,
    pub session_tag: Option<String>,
    /// The idempotency key: one row per key, however often the request is retried.
    pub request_id: String,
}

impl NewEntry {
    /// Bounds every field to the column's limit.
    pub fn truncated(self) -> Self {
        Self {
            method: truncate(self.method, MAX_METHOD),
            path: truncate(self.path, MAX_PATH),
            client_addr: truncate(self.client_addr, MAX_ADDR),
            user_agent: truncate(self.user_agent, MAX_USER_AGENT),
            instance: truncate(self.instance, MAX_INSTANCE),
            session_tag: self.session_tag.map(|t| truncate(t, MAX_TAG)),
            request_id: truncate(self.request_id, MAX_REQUEST_ID),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Entry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub method: String,
    pub path: String,
    pub client_addr: String,
    pub user_agent: String,
    pub instance: String,
    pub session_tag: Option<String>,
}

impl Entry {
    /// `HH:MM:SS.mmm`, UTC: what the table shows, written without a `String` of its own.
    pub fn time(&self) -> impl fmt::Display {
        Clock(self.at.to_offset(time::UtcOffset::UTC))
    }

    /// `YYYY-MM-DD HH:MM:SS.mmm UTC`, like [`Entry::time`].
    pub fn timestamp(&self) -> impl fmt::Display {
        Stamp(self.at.to_offset(time::UtcOffset::UTC))
    }
}

struct Clock(OffsetDateTime);

impl fmt::Display for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.0;
        write!(
            f,
            "{:02}:{:02}:{:02}.{:03}",
            at.hour(),
            at.minute(),
            at.second(),
            at.millisecond()
        )
    }
}

struct Stamp(OffsetDateTime);

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} UTC", self.0.date(), Clock(self.0))
    }
}

/// A row as the insert returns it: with its idempotency key, to match it to its request.
#[derive(sqlx::FromRow)]
struct Written {
    request_id: String,
    #[sqlx(flatten)]
    entry: Entry,
}

/// Writes the rows in one statement, once per request id, and returns them in `entries`'
/// order: a retried request gets the row its first attempt wrote.
pub async fn insert_all(
    conn: &mut PgConnection,
    entries: &[NewEntry],
) -> Result<Vec<Entry>, sqlx::Error> {
    let values = |field: fn(&NewEntry) -> &str| entries.iter().map(field).collect::<Vec<_>>();
    let request_id = values(|e| &e.request_id);
    let inserted: Vec<Written> = sqlx::query_as(concat!(
        "INSERT INTO request_log \
             (method, path, client_addr, user_agent, instance, session_tag, request_id) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                              $6::text[], $7::text[]) \
         ON CONFLICT (request_id) DO NOTHING \
         RETURNING request_id, ",
        entry_columns!()
    ))
    .bind(values(|e| &e.method))
    .bind(values(|e| &e.path))
    .bind(values(|e| &e.client_addr))
    .bind(values(|e| &e.user_agent))
    .bind(values(|e| &e.instance))
    .bind(
        entries
            .iter()
            .map(|e| e.session_tag.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(&request_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_id: HashMap<String, Entry> = inserted
        .into_iter()
        .map(|w| (w.request_id, w.entry))
        .collect();
    let retried: Vec<&str> = request_id
        .iter()
        .copied()
        .filter(|id| !by_id.contains_key(*id))
        .collect();
    if !retried.is_empty() {
        // A new statement, so a new snapshot: it sees the first attempts' committed rows.
        let earlier: Vec<Written> = sqlx::query_as(concat!(
            "SELECT request_id, ",
            entry_columns!(),
            " FROM request_log WHERE request_id = ANY($1)"
        ))
        .bind(retried)
        .fetch_all(&mut *conn)
        .await?;
        by_id.extend(earlier.into_iter().map(|w| (w.request_id, w.entry)));
    }
    // The same id twice in one batch is one row, returned to both.
    request_id
        .iter()
        .map(|id| by_id.get(*id).cloned().ok_or(sqlx::Error::RowNotFound))
        .collect()
}

/// One row: [`insert_all`] with one entry.
pub async fn insert(conn: &mut PgConnection, entry: &NewEntry) -> Result<Entry, sqlx::Error> {
    insert_all(conn, std::slice::from_ref(entry))
        .await?
        .pop()
        .ok_or(sqlx::Error::RowNotFound)
}

/// The latest `limit` rows, newest first.
pub async fn latest(conn: &mut PgConnection, limit: i64) -> Result<Vec<Entry>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        entry_columns!(),
        " FROM request_log ORDER BY id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Writes `entry` on the primary, then reads the latest [`SHOWN`] rows where `ctx` allows:
/// `GET /` without the batcher. The write is recorded in `ctx`, so a causal read sees it.
pub async fn log(db: &Db, ctx: &mut ReadContext, entry: &NewEntry) -> Result<Logged, DbError> {
    let entries = std::slice::from_ref(entry);
    let mut written = write(db, ctx, entries).await?;
    let written = written
        .pop()
        .ok_or_else(|| DbError::from_sqlx(rwsplit_router::PRIMARY, sqlx::Error::RowNotFound))?;
    let read = latest_table(db, ctx).await;
    Ok(Logged { written, read })
}

/// Inserts `entries` on the primary, and records the write in `ctx`. A connection that broke
/// mid-write (a primary that restarted, or failed over, perhaps after its commit) gets one
/// more try: the router sends it to the primary it finds next, and the insert is idempotent
/// by request id, so every row exists once.
pub(crate) async fn write(
    db: &Db,
    ctx: &mut ReadContext,
    entries: &[NewEntry],
) -> Result<Vec<Entry>, DbError> {
    match write_once(db, ctx, entries).await {
        Err(e) if e.is_unavailable() && !e.is_pool_timeout() => {
            tracing::info!(error = %e, "insert failed on a broken connection; retrying once");
            write_once(db, ctx, entries).await
        }
        first => first,
    }
}

async fn write_once(
    db: &Db,
    ctx: &mut ReadContext,
    entries: &[NewEntry],
) -> Result<Vec<Entry>, DbError> {
    let mut primary = db.writer(ctx).await?;
    let rows = insert_all(&mut primary, entries).await;
    primary.finish(rows).await
}

/// The latest [`SHOWN`] rows through the read route, as a table every request that shows it
/// shares.
async fn latest_table(db: &Db, ctx: &mut ReadContext) -> Result<Routed<Arc<Table>>, DbError> {
    let read = db.read(ctx, |c| Box::pin(latest(c, SHOWN))).await?;
    Ok(read.map(|rows| Arc::new(Table::new(rows))))
}

/// Cuts `s` to at most `max` bytes without splitting a character.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let cut = (0..=max)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncates_on_a_character_boundary() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("héllo".into(), 3), "hé");
        assert_eq!(truncate("short".into(), 100), "short");
    }
}
