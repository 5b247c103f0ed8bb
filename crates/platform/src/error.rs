//! Errors of the platform's actions. Each variant says what the caller did
//! wrong or what broke, with the name or path it is about; the API maps
//! them to HTTP statuses in one place.

use flick_core::{ManifestError, NameError};
use flick_package::PackageError;
use flick_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("function `{0}` not found")]
    FunctionNotFound(String),
    /// A call without the key reached a function that is not (or no
    /// longer) public.
    #[error("missing or invalid API key")]
    NotPublic(String),
    #[error("function `{function}` has no revision {number}")]
    RevisionNotFound { function: String, number: u32 },
    #[error("activation `{0}` not found")]
    ActivationNotFound(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("invalid package: {0}")]
    Package(PackageError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{file} line {line}: {reason}; dependencies may only refer to paths inside the package")]
    DependencyRefused { file: String, line: usize, reason: String },
    #[error("installing dependencies with {tool} failed (exit: {status}):\n{output}")]
    Dependencies { tool: String, status: String, output: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("function `{function}` is at capacity: {reason} (retry later)")]
    Overloaded { function: String, reason: String },
    #[error("the host is at its instance budget; `{function}` could not start an instance in time (retry later)")]
    HostFull { function: String },
    #[error("store: {0}")]
    Store(StoreError),
    /// A write failed for want of disk space: the server's fault, not the
    /// request's, and worth retrying once space is freed.
    #[error("no space left on device: {0}")]
    StorageFull(String),
    /// The database was held by another process past the busy timeout.
    #[error("the database is busy (held by another process): {0}; retry later")]
    Busy(String),
    /// The function's async backlog is at its `max_queued`: nothing was stored.
    #[error("function `{function}` has {queued} calls waiting, its limit (max_queued) is {limit}; retry later")]
    QueueFull { function: String, queued: u64, limit: u64 },
    /// A repeated `Idempotency-Key` whose first call has not finished yet.
    #[error("a call with this Idempotency-Key is still running: activation {0}; retry later for its result")]
    InProgress(flick_core::ActivationId),
    /// A rule trigger or rule (`what`) of that name does not exist.
    #[error("{what} `{name}` not found")]
    NotFound { what: &'static str, name: String },
    #[error("dead letter `{0}` not found")]
    DeadLetterNotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<flick_queue::QueueError> for PlatformError {
    fn from(e: flick_queue::QueueError) -> Self {
        use flick_queue::QueueError as Q;
        match e {
            Q::Full { function, queued, limit } => Self::QueueFull { function, queued, limit },
            e if e.is_disk_full() => Self::StorageFull(e.to_string()),
            e @ (Q::Busy { .. } | Q::Closed { .. } | Q::Unavailable { .. }) => Self::Busy(e.to_string()),
            Q::Invalid { what, detail } => Self::BadRequest(format!("invalid {what}: {detail}")),
            e => Self::Internal(format!("queue: {e}")),
        }
    }
}

impl From<StoreError> for PlatformError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            Self::StorageFull(e.to_string())
        } else if e.is_busy() {
            Self::Busy(e.to_string())
        } else {
            Self::Store(e)
        }
    }
}

impl From<PackageError> for PlatformError {
    fn from(e: PackageError) -> Self {
        match &e {
            // Unpacking into staging ran out of disk: not a bad package.
            PackageError::Io { source, .. } if flick_store::is_disk_full(source) => Self::StorageFull(e.to_string()),
            _ => Self::Package(e),
        }
    }
}
