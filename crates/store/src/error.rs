//! Errors of the store.

pub use flick_sqlite::is_disk_full;
use tokio_postgres::error::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("function `{0}` not found")]
    FunctionNotFound(String),
    #[error("function `{function}` has no revision {number}")]
    RevisionNotFound { function: String, number: u32 },
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("open database {path}: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("stored record is corrupt ({what}): {detail}")]
    Corrupt { what: String, detail: String },
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: String, source: std::io::Error },
    #[error("store task failed: {0}")]
    Task(String),
    /// Refused before it could name a path: only `sha256:<64 lowercase hex>` is a hash.
    #[error("invalid content hash `{0}` (expected sha256:<64 hex digits>)")]
    InvalidHash(String),
    /// Written by a newer flick: opening it would risk misreading or damaging it.
    #[error("database {path} has schema version {found}, newer than the {supported} this flick understands")]
    SchemaTooNew { path: String, found: i64, supported: i64 },
    /// A PostgreSQL statement failed (or its connection did).
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The store's URL does not parse; the URL itself is not repeated, as
    /// it may hold a password.
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(String),
    /// No connection to PostgreSQL could be made (`target`: host:port/database).
    #[error("cannot reach PostgreSQL at {target}: {detail}")]
    Connect { target: String, detail: String },
    /// Every pooled connection stayed busy for the pool's wait timeout.
    #[error("no PostgreSQL connection to {target} came free within {waited_s} s")]
    PoolTimeout { target: String, waited_s: u64 },
}

impl StoreError {
    /// A failure of the moment rather than of the request: the database is
    /// locked by another process, the disk is full, or I/O failed; for
    /// PostgreSQL also a lost or refused connection, a server shutting down
    /// (`57P01`…), a serialization failure or deadlock (`40001`, `40P01`). The same
    /// write can succeed later, so callers holding data retry instead of
    /// dropping it.
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode::*;
        match self {
            Self::Sqlite(e) | Self::Open { source: e, .. } => matches!(
                e.sqlite_error_code(),
                Some(DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure | CannotOpen | OutOfMemory)
            ),
            Self::Postgres(e) => pg_transient(e),
            Self::Connect { .. } | Self::PoolTimeout { .. } => true,
            _ => false,
        }
    }

    /// The disk (or the file system holding the database) is full.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::Sqlite(e) | Self::Open { source: e, .. } => {
                e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            Self::Io { source, .. } => is_disk_full(source),
            Self::Postgres(e) => e.code() == Some(&SqlState::DISK_FULL),
            _ => false,
        }
    }

    /// Another connection (a backup, an `sqlite3` shell) held the database
    /// past the busy timeout: worth retrying later.
    pub fn is_busy(&self) -> bool {
        match self {
            Self::Sqlite(e) | Self::Open { source: e, .. } => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Self::Postgres(e) => {
                e.code().is_some_and(|c| *c == SqlState::LOCK_NOT_AVAILABLE || *c == SqlState::TOO_MANY_CONNECTIONS)
            }
            Self::PoolTimeout { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io { action, path: path.display().to_string(), source }
    }
}

/// PostgreSQL failures worth retrying: the connection (lost, or never
/// made), the server (shutting down, out of resources) or the moment (a
/// serialization failure, a deadlock, a lock not granted); not a statement
/// the server refuses for what it says.
fn pg_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            let c = code.code();
            // 08: connection exception; 53: insufficient resources (disk
            // full, out of memory, too many connections); 57P0x: admin or
            // crash shutdown, cannot connect now; 58: system/I/O error.
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || c.starts_with("58")
                || [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED, SqlState::LOCK_NOT_AVAILABLE]
                    .contains(code)
        }
        // No server error: the socket failed (reset, timed out).
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_postgres_connection_is_transient_and_a_bad_statement_is_not() {
        let loss = StoreError::Connect { target: "127.0.0.1:5432/flick".into(), detail: "refused".into() };
        assert!(loss.is_transient());
        let waited = StoreError::PoolTimeout { target: "x".into(), waited_s: 30 };
        assert!(waited.is_transient() && waited.is_busy());
        assert!(!StoreError::InvalidUrl("bad".into()).is_transient());
        assert!(!StoreError::FunctionNotFound("f".into()).is_transient());
    }
}
