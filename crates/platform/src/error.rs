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
    #[error("function `{function}` has no revision {number}")]
    RevisionNotFound { function: String, number: u32 },
    #[error("activation `{0}` not found")]
    ActivationNotFound(String),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("invalid package: {0}")]
    Package(#[from] PackageError),
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
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}
