//! The request log: one row per `GET /`, written on the primary, read back from a replica.

mod batch;
mod table;

pub use batch::{Batcher, LogError};
pub use table::{RowHtml, Table};

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rwsplit_router::{BoxFuture, Db, DbError, Positioned, ReadContext, Routed};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{Column, Decode, PgConnection, Postgres, Row, Type, ValueRef};
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

/// The columns of an [`Entry`], in its field order: a macro, so queries stay `&'static str`.
/// [`Entry::from_columns`] reads them by position, in this order.
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

/// `Eq` too: two `Arc<Entry>` of one allocation are then equal without comparing their fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    /// The entry in `row`'s columns from `first` on, in [`entry_columns!`]'s order. By
    /// position: a lookup by name hashes the name, for every column of every row. The
    /// columns' types are checked when `check` is set ([`decode_rows`]).
    fn from_columns(row: &PgRow, first: usize, check: bool) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: column(row, first, check)?,
            at: column(row, first + 1, check)?,
            method: column(row, first + 2, check)?,
            path: column(row, first + 3, check)?,
            client_addr: column(row, first + 4, check)?,
            user_agent: column(row, first + 5, check)?,
            instance: column(row, first + 6, check)?,
            session_tag: column(row, first + 7, check)?,
        })
    }

    /// Whether `row`, whose id (column `first`) is this entry's, holds this entry in the
    /// columns after it, in [`entry_columns!`]'s order: the strings compared as the bytes that
    /// came, without decoding or allocating. The columns' types are not checked: call it for
    /// rows after the first, which [`decode_rows`] checks.
    fn is_in(&self, row: &PgRow, first: usize) -> Result<bool, sqlx::Error> {
        let text = |i, value: Option<&str>| -> Result<bool, sqlx::Error> {
            let raw = row.try_get_raw(first + i)?;
            Ok(match value {
                Some(value) => raw.as_bytes().is_ok_and(|b| b == value.as_bytes()),
                None => raw.is_null(),
            })
        };
        Ok(column::<OffsetDateTime>(row, first + 1, false)? == self.at
            && text(2, Some(&self.method))?
            && text(3, Some(&self.path))?
            && text(4, Some(&self.client_addr))?
            && text(5, Some(&self.user_agent))?
            && text(6, Some(&self.instance))?
            && text(7, self.session_tag.as_deref())?)
    }

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

/// Column `index` of `row` as a `T`; when `check` is set, first that the column's type is
/// one a `T` decodes from, as sqlx's `try_get` checks (by the column, so a NULL is checked
/// too).
fn column<'r, T>(row: &'r PgRow, index: usize, check: bool) -> Result<T, sqlx::Error>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    if check {
        let ty = row.try_column(index)?.type_info();
        if !T::compatible(ty) {
            return Err(sqlx::Error::ColumnDecode {
                index: index.to_string(),
                source: sqlx::error::mismatched_types::<Postgres, T>(ty),
            });
        }
    }
    row.try_get_unchecked(index)
}

/// Every row of a result, decoded by `decode`. The rows of one result share their columns,
/// so their types are checked once, on the first row; sqlx's `try_get` would check them
/// again for every value of every row.
fn decode_rows<T>(
    rows: &[PgRow],
    decode: impl Fn(&PgRow, bool) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, sqlx::Error> {
    rows.iter()
        .enumerate()
        .map(|(i, row)| decode(row, i == 0))
        .collect()
}

/// A row as the insert returns it: with its idempotency key, to match it to its request.
/// Its columns: `request_id`, then [`entry_columns!`].
struct Written {
    request_id: String,
    entry: Entry,
}

impl Written {
    fn from_columns(row: &PgRow, check: bool) -> Result<Self, sqlx::Error> {
        Ok(Self {
            request_id: column(row, 0, check)?,
            entry: Entry::from_columns(row, 1, check)?,
        })
    }
}

/// What [`insert_all`] wrote.
#[derive(Debug)]
pub struct Inserted {
    /// One row per entry, in the entries' order: a retried request's is its first attempt's.
    pub rows: Vec<Entry>,
    /// A row this statement created, `None` when every entry was a retry: a read that shows
    /// it saw this write ([`latest_shared`]).
    pub fresh: Option<Entry>,
}

/// Writes the rows in one statement, once per request id, and returns them in `entries`'
/// order: a retried request gets the row its first attempt wrote.
pub async fn insert_all(
    conn: &mut PgConnection,
    entries: &[NewEntry],
) -> Result<Inserted, sqlx::Error> {
    let values = |field: fn(&NewEntry) -> &str| entries.iter().map(field).collect::<Vec<_>>();
    let request_id = values(|e| &e.request_id);
    let inserted = sqlx::query(concat!(
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
    let inserted = decode_rows(&inserted, Written::from_columns)?;
    let fresh = inserted.first().map(|w| w.entry.clone());
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
        let earlier = sqlx::query(concat!(
            "SELECT request_id, ",
            entry_columns!(),
            " FROM request_log WHERE request_id = ANY($1)"
        ))
        .bind(retried)
        .fetch_all(&mut *conn)
        .await?;
        let earlier = decode_rows(&earlier, Written::from_columns)?;
        by_id.extend(earlier.into_iter().map(|w| (w.request_id, w.entry)));
    }
    // The same id twice in one batch is one row, returned to both.
    let rows = request_id
        .iter()
        .map(|id| by_id.get(*id).cloned().ok_or(sqlx::Error::RowNotFound))
        .collect::<Result<_, _>>()?;
    Ok(Inserted { rows, fresh })
}

/// One row: [`insert_all`] with one entry.
pub async fn insert(conn: &mut PgConnection, entry: &NewEntry) -> Result<Entry, sqlx::Error> {
    insert_all(conn, std::slice::from_ref(entry))
        .await?
        .rows
        .pop()
        .ok_or(sqlx::Error::RowNotFound)
}

/// The latest `limit` rows, newest first, and the answering node's WAL position, read in the
/// same statement (for a causal session's token). A row `earlier` holds, equal in every
/// column, is that table's entry, not decoded again: most rows of a table were in the last.
pub async fn latest(
    conn: &mut PgConnection,
    limit: i64,
    earlier: Option<&Table>,
) -> Result<Positioned<Vec<Arc<Entry>>>, sqlx::Error> {
    // The position first, as `Written` puts its key first: the entry's columns follow.
    let rows = sqlx::query(concat!(
        "SELECT ",
        rwsplit_router::node_position!(),
        ", ",
        entry_columns!(),
        " FROM request_log ORDER BY id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    let position = match rows.first() {
        Some(row) => column(row, 0, true)?,
        None => None,
    };
    let decode = |row: &PgRow, check: bool| {
        // Once the first row has checked the columns' types, the rest may be compared raw.
        if !check && let Some(table) = earlier {
            let id = column(row, 1, false)?;
            if let Some(entry) = table.find(id)
                && entry.is_in(row, 1)?
            {
                return Ok(entry.clone());
            }
        }
        Entry::from_columns(row, 1, check).map(Arc::new)
    };
    Ok(Positioned {
        value: decode_rows(&rows, decode)?,
        position,
    })
}

/// The latest [`SHOWN`] rows through the read route, once, for every request that shows them;
/// the rows also in `earlier` keep the HTML it rendered for them. `wrote` is a row this
/// session's last write created: a read that shows it needs no replay check first.
pub async fn latest_shared(
    db: &Db,
    ctx: &mut ReadContext,
    earlier: Option<Arc<Table>>,
    wrote: Option<&Entry>,
) -> Result<Routed<Arc<Table>>, DbError> {
    let query = latest_shown(earlier.clone());
    let read = match wrote {
        Some(row) => {
            db.read_after_write(ctx, query, |rows: &Vec<Arc<Entry>>| {
                rows.iter().any(|r| **r == *row)
            })
            .await?
        }
        None => db.read_positioned(ctx, query).await?,
    };
    Ok(read.map(|rows| Arc::new(Table::new(rows, earlier.as_deref()))))
}

/// What [`latest`] returns.
type LatestRows = Result<Positioned<Vec<Arc<Entry>>>, sqlx::Error>;

/// [`latest_shared`]'s query, made by a function: as a closure written where it is used, its
/// type would not carry the lifetime-generic signature the router asks for. Each run owns
/// the earlier table, as its future may outlive the call that made it.
fn latest_shown(
    earlier: Option<Arc<Table>>,
) -> impl for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, LatestRows> {
    move |conn| {
        let earlier = earlier.clone();
        Box::pin(async move { latest(conn, SHOWN, earlier.as_deref()).await })
    }
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
