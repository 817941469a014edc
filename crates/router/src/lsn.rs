//! PostgreSQL write-ahead-log positions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::{PgConnection, Postgres};

/// A WAL position (`pg_lsn`), ordered, so "has this replica replayed my write" is a comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Lsn(
    /// The position as one number: `hi/lo` in PostgreSQL's text form is `hi << 32 | lo`.
    pub u64,
);

impl Lsn {
    /// Bytes between two positions, zero when `self` is not behind.
    pub fn bytes_behind(self, ahead: Lsn) -> u64 {
        ahead.0.saturating_sub(self.0)
    }
}

/// Parses PostgreSQL's text form, `16/B374D848`.
impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an LSN"))?;
        let part = |p: &str| u32::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not an LSN"));
        Ok(Self((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl From<Lsn> for String {
    fn from(lsn: Lsn) -> Self {
        lsn.to_string()
    }
}

impl TryFrom<String> for Lsn {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// Decodes the text form, as the queries below select it (`pg_lsn::text`).
impl sqlx::Type<Postgres> for Lsn {
    fn type_info() -> PgTypeInfo {
        <str as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Lsn {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(<&str as sqlx::Decode<Postgres>>::decode(value)?.parse()?)
    }
}

/// How far a replica has replayed; `None` on a node that is not in recovery.
pub(crate) async fn replayed(conn: &mut PgConnection) -> Result<Option<Lsn>, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text")
        .fetch_one(conn)
        .await
}

/// The primary's current WAL position: after a commit, at or past that commit's record.
pub(crate) async fn current(conn: &mut PgConnection) -> Result<Lsn, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::Lsn;

    #[test]
    fn round_trips_and_orders() -> Result<(), String> {
        let a: Lsn = "0/16B3748".parse()?;
        let b: Lsn = "1/0".parse()?;
        assert_eq!(a.to_string(), "0/16B3748");
        assert!(a < b);
        assert_eq!(a.bytes_behind(b), (1 << 32) - 0x16B_3748);
        assert_eq!(b.bytes_behind(a), 0);
        assert!("16B3748".parse::<Lsn>().is_err());
        assert!("0/xyz".parse::<Lsn>().is_err());
        Ok(())
    }
}
