//! Database errors, sorted into "the node is down" and "the query is wrong".

use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The node could not be reached in time: worth a 503 and a retry later.
    #[error("{node} is unavailable: {source}")]
    Unavailable { node: String, source: sqlx::Error },
    /// The node answered with an error: a bug or a constraint, never retried elsewhere.
    #[error("query on {node} failed: {source}")]
    Query { node: String, source: sqlx::Error },
    #[error("there is no database node called {0:?}")]
    UnknownNode(String),
    #[error("bad database URL {url}: {source}")]
    Config { url: String, source: sqlx::Error },
    /// One failure of a query that several requests shared (a request log batch).
    #[error(transparent)]
    Shared(Arc<DbError>),
    /// The batch that held this request ended without answering it: a bug, never expected.
    #[error("the request log batch ended without an answer")]
    BatchLost,
}

impl DbError {
    pub fn from_sqlx(node: &str, source: sqlx::Error) -> Self {
        let node = node.to_owned();
        if Self::is_unavailable_error(&source) {
            Self::Unavailable { node, source }
        } else {
            Self::Query { node, source }
        }
    }

    /// No connection came free (or could be opened) in time, as opposed to one that failed.
    pub fn is_pool_timeout(&self) -> bool {
        match self {
            Self::Unavailable { source, .. } => matches!(source, sqlx::Error::PoolTimedOut),
            Self::Shared(e) => e.is_pool_timeout(),
            _ => false,
        }
    }

    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            Self::Shared(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

impl DbError {
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
