//! Errors of the store.

pub use flick_sqlite::is_disk_full;

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
}

impl StoreError {
    /// A failure of the moment rather than of the request: the database is
    /// locked by another process, the disk is full, or I/O failed. The same
    /// write can succeed later, so callers holding data retry instead of
    /// dropping it.
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode::*;
        match self {
            Self::Sqlite(e) | Self::Open { source: e, .. } => matches!(
                e.sqlite_error_code(),
                Some(DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure | CannotOpen | OutOfMemory)
            ),
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
            _ => false,
        }
    }

    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io { action, path: path.display().to_string(), source }
    }
}
