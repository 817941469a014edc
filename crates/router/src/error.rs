//! Database errors, sorted into "the node is down" and "the query is wrong".

use std::sync::Arc;

/// A failed query or an unreachable node. Cheap to clone, so one failure can answer every
/// caller that shared the query.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DbError {
    /// The node could not be reached in time: worth a 503 and a retry later.
    #[error("{node} is unavailable: {source}")]
    Unavailable {
        /// `primary`, `replica1`...
        node: String,
        /// What the driver said.
        source: Arc<sqlx::Error>,
    },
    /// The node answered with an error: a bug or a constraint, never retried elsewhere.
    #[error("query on {node} failed: {source}")]
    Query {
        /// `primary`, `replica1`...
        node: String,
        /// What the driver said.
        source: Arc<sqlx::Error>,
    },
    /// [`Db::read_from`](crate::Db::read_from) was given a name no node has.
    #[error("there is no database node called {0:?}")]
    UnknownNode(String),
}

impl DbError {
    /// Sorts a driver error from `node`.
    pub fn from_sqlx(node: &str, source: sqlx::Error) -> Self {
        let node = node.to_owned();
        if Self::is_unavailable_error(&source) {
            Self::Unavailable {
                node,
                source: Arc::new(source),
            }
        } else {
            Self::Query {
                node,
                source: Arc::new(source),
            }
        }
    }

    /// No connection came free (or could be opened) in time, as opposed to one that failed.
    pub fn is_pool_timeout(&self) -> bool {
        matches!(self, Self::Unavailable { source, .. } if matches!(**source, sqlx::Error::PoolTimedOut))
    }

    /// The node could not be reached: retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// Whether `e` means the node could not be reached, as opposed to a failed query.
    pub fn is_unavailable_error(e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // Class 08: connection exception; 57P01-03: the server is shutting down or starting.
                code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
            }),
            _ => false,
        }
    }
}
