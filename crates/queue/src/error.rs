//! Errors of the queue. Each says what to do about it: the API maps
//! `Full` to 429, `DiskFull` to 507, `Busy`/`Closed`/`Unavailable` to 503.

use std::sync::Arc;

use flick_core::ActivationId;
use flick_sqlite::is_disk_full;
use rusqlite::ErrorCode;

#[derive(Clone, Debug, thiserror::Error)]
pub enum QueueError {
    /// The function's backlog is at its `max_queued`: nothing was stored.
    #[error("function `{function}` has {queued} queued invocations, its limit (max_queued) is {limit}")]
    Full { function: String, queued: u64, limit: u64 },
    /// No room on the queue's disk: nothing was stored.
    #[error("the disk holding the queue {path} is full: nothing was stored")]
    DiskFull { path: String },
    /// Another process held the queue database past the busy timeout.
    #[error("the queue {path} is busy (locked by another connection): try again")]
    Busy { path: String },
    /// Another process has this queue open (leases would be handed out twice).
    #[error("the queue {path} is in use by another process")]
    Locked { path: String },
    /// An item with this id is already queued.
    #[error("activation {id} is already queued")]
    Duplicate { id: ActivationId },
    /// The caller passed something the queue cannot store.
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    /// A stored item or key could not be read back.
    #[error("queued item is corrupt ({what}): {detail}")]
    Corrupt { what: String, detail: String },
    /// Any other database failure (`code` says which, for `is_transient`).
    #[error("queue database {path}: {detail}")]
    Database { path: String, code: Option<ErrorCode>, detail: String },
    #[error("open queue {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: String, source: Arc<std::io::Error> },
    /// Written by a newer flick: opening it would risk misreading it.
    #[error("queue {path} has schema version {found}, newer than the {supported} this flick understands")]
    SchemaTooNew { path: String, found: i64, supported: i64 },
    /// The writer thread is gone (the queue is shutting down, or it panicked).
    #[error("the queue {path} is closed")]
    Closed { path: String },
    /// The NATS server did not answer in time, or the connection is down
    /// (async-nats reconnects by itself). A write that failed this way may
    /// or may not have been stored (its answer was lost): retrying it is
    /// safe, an id already queued is refused as `Duplicate`.
    #[error(
        "NATS at {url} is not answering ({action}: {detail}): check that nats-server is running with JetStream enabled, then try again"
    )]
    Unavailable { url: String, action: &'static str, detail: String },
    /// JetStream refused a request (a stream missing or misconfigured, a
    /// permission, a limit of the server).
    #[error("NATS JetStream at {url} refused {action}: {detail}")]
    Nats { url: String, action: &'static str, detail: String },
}

impl QueueError {
    /// No room to write: answer 507, keep nothing acknowledged.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Self::DiskFull { .. } => true,
            Self::Io { source, .. } => is_disk_full(source),
            _ => false,
        }
    }

    /// A failure of the moment, not of the request: the same call may
    /// succeed later (a trigger should not ack its message; a caller may
    /// retry). `Full` is not transient in this sense: it clears only as
    /// the backlog drains, and callers answer it with 429.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::DiskFull { .. } | Self::Busy { .. } | Self::Closed { .. } | Self::Unavailable { .. } => true,
            Self::Io { .. } => true,
            Self::Database { code, .. } => matches!(
                code,
                Some(
                    ErrorCode::DatabaseBusy
                        | ErrorCode::DatabaseLocked
                        | ErrorCode::DiskFull
                        | ErrorCode::SystemIoFailure
                        | ErrorCode::OutOfMemory
                )
            ),
            _ => false,
        }
    }

    /// Turns a SQLite error into the variant a caller acts on.
    pub(crate) fn sqlite(path: &str, e: &rusqlite::Error) -> Self {
        let code = e.sqlite_error_code();
        match code {
            Some(ErrorCode::DiskFull) => Self::DiskFull { path: path.into() },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Self::Busy { path: path.into() },
            _ => Self::Database { path: path.into(), code, detail: e.to_string() },
        }
    }

    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        if is_disk_full(&source) {
            return Self::DiskFull { path: path.display().to_string() };
        }
        Self::Io { action, path: path.display().to_string(), source: Arc::new(source) }
    }
}
