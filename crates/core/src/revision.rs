//! Revisions (immutable deploys) and the function summary the API lists.

use serde::{Deserialize, Serialize};

use crate::manifest::{Manifest, RuntimeKind};

/// One deploy of a function: immutable, numbered from 1 per function for
/// people, and identified for the platform by `id`, which never repeats in
/// the life of a data dir (a function deleted and created again starts its
/// numbers at 1, never its ids).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// Unique in the data dir: pools, routes and activation records are
    /// keyed by it, never by `(function, number)`.
    pub id: u64,
    pub function: String,
    pub number: u32,
    /// `sha256:<hex>` of the unpacked content, so identical code deploys to
    /// the same hash whatever archive tool packed it.
    pub hash: String,
    pub manifest: Manifest,
    pub created_ms: i64,
    /// Bytes of code, after dependency installation.
    pub code_size: u64,
}

/// A function as the API lists it: its name and the revision it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionInfo {
    pub name: String,
    pub runtime: RuntimeKind,
    pub current_revision: u32,
    pub latest_revision: u32,
    pub hash: String,
    pub public: bool,
    pub created_ms: i64,
    pub updated_ms: i64,
}
