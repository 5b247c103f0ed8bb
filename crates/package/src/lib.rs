//! Function packages: the archive format that carries a function's code from
//! `flick deploy` to the server.
//!
//! A package is a gzip'd tar of a function directory with `flick.toml` at its
//! root. [`pack_dir`] builds one deterministically on the client;
//! [`unpack`] is run by the server on untrusted bytes, so it enforces limits
//! and refuses anything that could write outside its destination. Both sides
//! agree on one content hash ([`Unpacked::hash`]) that depends only on what
//! is in the package, never on how it was archived, so a redeploy of
//! unchanged code is recognised whatever tool built the archive.
//!
//! Code that arrives in another form (a Lambda zip, inline code) becomes a
//! package in memory: [`zip::read`] checks and reads a zip as untrusted
//! input, [`pack_files`] writes the same deterministic tar.gz as
//! [`pack_dir`].
//!
//! Unix only: the format carries exec bits and symlinks, which is what the
//! runtimes need.

mod error;
mod hash;
mod ignore;
mod pack;
mod paths;
#[cfg(test)]
mod testutil;
mod unpack;
pub mod zip;

use std::fs;
use std::path::Path;

pub use error::PackageError;
pub use pack::{PackedFile, pack_dir, pack_files, pack_installed};
pub use unpack::{UnpackLimits, Unpacked, unpack};

/// Size in bytes of all regular files under `dir` (after dependency install).
/// Not following symlinks.
pub fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    // An explicit stack rather than recursion: `node_modules` trees can be
    // deep enough to make the stack depth a concern.
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                total = total.saturating_add(entry.metadata()?.len());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_size_counts_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/b"), [0u8; 5]).unwrap();

        // A symlink to a big file outside must not be counted, nor followed.
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("big"), vec![0u8; 1000]).unwrap();
        std::os::unix::fs::symlink(outside.path().join("big"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("dirlink")).unwrap();

        assert_eq!(dir_size(dir.path()).unwrap(), 15);
    }

    #[test]
    fn dir_size_of_missing_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(dir_size(&dir.path().join("nope")).is_err());
    }
}
