//! The one error type of this crate. Every message names the file, entry or
//! limit it is about, so whoever reads it knows what to change.

use std::io;
use std::path::PathBuf;

use flick_core::units::format_size;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("no flick.toml in {}: is this a function directory? try `flick new NAME`", .dir.display())]
    NoManifest { dir: PathBuf },

    #[error("{} is not a regular file: flick.toml must be a plain file, not a directory or symlink", .path.display())]
    ManifestNotAFile { path: PathBuf },

    #[error("{}, line {line}: {reason}", .path.display())]
    IgnorePattern { path: PathBuf, line: usize, reason: String },

    /// Something in the function directory that the server would refuse.
    #[error("cannot pack {}: {reason} (fix it or list it in .flickignore)", .path.display())]
    Unpackable { path: PathBuf, reason: String },

    #[error("archive is {}, over the limit of {}", format_size(*.size), format_size(*.limit))]
    ArchiveTooLarge { size: u64, limit: u64 },

    #[error("archive unpacks to more than {} (limit reached at entry `{path}`)", format_size(*.limit))]
    UnpackedTooLarge { path: String, limit: u64 },

    #[error("archive has more than {limit} entries")]
    TooManyEntries { limit: u64 },

    /// An entry breaking one of the safety rules; `reason` says which.
    #[error("archive entry `{path}` rejected: {reason}")]
    UnsafeEntry { path: String, reason: String },

    #[error("archive is not a valid tar.gz: {reason}")]
    Corrupt { reason: String },

    /// An entry that inflates to far more than it takes in the archive.
    #[error("archive entry `{path}` inflates to over {ratio} times its compressed size: refused as a zip bomb")]
    CompressionRatio { path: String, ratio: u64 },

    #[error("not a valid zip file: {reason}")]
    CorruptZip { reason: String },

    #[error("archive has no flick.toml at its root")]
    MissingManifest,

    #[error("flick.toml in the archive is not valid utf-8 (invalid byte at offset {offset})")]
    ManifestNotUtf8 { offset: usize },

    #[error("unpack destination {} is not empty", .path.display())]
    DestNotEmpty { path: PathBuf },

    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl PackageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn unsafe_entry(path: &str, reason: impl Into<String>) -> Self {
        Self::UnsafeEntry { path: path.to_string(), reason: reason.into() }
    }

    pub(crate) fn corrupt(reason: impl Into<String>) -> Self {
        Self::Corrupt { reason: reason.into() }
    }
}
