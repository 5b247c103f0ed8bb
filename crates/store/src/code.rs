//! Code on disk, addressed by content: uploaded archives, the unpacked code
//! directories instances run from, and a staging area deploys unpack into.
//!
//! Layout under the data directory:
//!
//! ```text
//! archives/<hex>.tar.gz   uploads, named by the sha256 of the archive bytes
//! code/<hex>/             unpacked code, named by the revision's content hash
//! staging/                work in progress; emptied at open
//! ```
//!
//! Everything reaches `archives/` and `code/` by a rename from `staging/`, so
//! a reader never sees a half-written archive or a half-unpacked directory,
//! and whatever a crash leaves behind is in `staging/`, which [`CodeStore::open`]
//! clears.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::StoreError;

const HASH_PREFIX: &str = "sha256:";

/// Where a malformed hash points: a name [`CodeStore::commit_code`] never
/// creates (it rejects such hashes), so nothing is ever found there.
const INVALID_HASH_DIR: &str = ".invalid-hash";

/// Makes staging names unique among all `CodeStore`s of this process; the
/// pid separates processes.
static NEXT_STAGING: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Debug)]
pub struct CodeStore {
    root: PathBuf,
}

impl CodeStore {
    /// Opens (creating as needed) the code directories under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let store = Self { root: data_dir.to_path_buf() };
        // Owner-only: uploads hold the functions' code and environment.
        // Instances never reach code/<hex> through these directories (it is
        // bind-mounted into their root), so 0700 here costs them nothing;
        // what is inside code/<hex> stays readable for their uid.
        for dir in [store.archives(), store.code(), store.staging()] {
            fs::create_dir_all(&dir).map_err(|e| StoreError::io("create", &dir, e))?;
            private(&dir, 0o700)?;
        }
        // Archives stored before they were written 0600.
        let archives = store.archives();
        for entry in fs::read_dir(&archives).map_err(|e| StoreError::io("read", &archives, e))? {
            let entry = entry.map_err(|e| StoreError::io("read", &archives, e))?;
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                private(&entry.path(), 0o600)?;
            }
        }
        // Nothing in staging/ can still be wanted: it belonged to deploys or
        // removals of a process that is gone.
        let staging = store.staging();
        let mut cleared = 0u64;
        for entry in fs::read_dir(&staging).map_err(|e| StoreError::io("read", &staging, e))? {
            let entry = entry.map_err(|e| StoreError::io("read", &staging, e))?;
            remove_any(&entry.path())?;
            cleared += 1;
        }
        if cleared > 0 {
            tracing::info!(count = cleared, dir = %staging.display(), "removed leftovers of an interrupted deploy");
        }
        Ok(store)
    }

    /// A new, empty directory under `staging/` to unpack a deploy into.
    pub fn staging_dir(&self) -> Result<PathBuf, StoreError> {
        self.new_staging_path("", |path| fs::create_dir(path))
    }

    /// Stores an uploaded archive as `archives/<hex>.tar.gz` and returns the
    /// hex sha256 of its bytes. Storing the same bytes again is a no-op.
    pub fn save_archive(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let hex = hex::encode(Sha256::digest(bytes));
        let dest = self.archives().join(format!("{hex}.tar.gz"));
        if dest.is_file() {
            return Ok(hex);
        }
        let temp = self.new_staging_path(".tar.gz.part", |path| {
            let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            file.write_all(bytes)?;
            // Durable before it becomes visible under its final name, so a
            // crash cannot leave a truncated file that looks complete.
            file.sync_all()
        })?;
        if let Err(e) = fs::rename(&temp, &dest) {
            let _ = fs::remove_file(&temp);
            return Err(StoreError::io("move archive to", &dest, e));
        }
        Ok(hex)
    }

    /// The bytes of a stored archive (`hex` as [`CodeStore::save_archive`]
    /// returned it); `None` when it is not there (or `hex` is malformed).
    pub fn read_archive(&self, hex: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let path = self.archives().join(format!("{hex}.tar.gz"));
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read archive", &path, e)),
        }
    }

    /// Where the code of `hash` (`sha256:<hex>`) lives. A malformed hash gets
    /// a path inside `code/` that never exists, never one outside it; use
    /// [`CodeStore::has_code`] or [`CodeStore::commit_code`] for a checked answer.
    pub fn code_dir(&self, hash: &str) -> PathBuf {
        match parse_hash(hash) {
            Some(hex) => self.code().join(hex),
            None => {
                tracing::warn!(hash, "code directory asked for a malformed hash");
                self.code().join(INVALID_HASH_DIR)
            }
        }
    }

    pub fn has_code(&self, hash: &str) -> bool {
        parse_hash(hash).is_some_and(|hex| self.code().join(hex).is_dir())
    }

    /// Moves a staged directory to `code/<hex>` and returns its new path. If
    /// that content is already there (an earlier or concurrent deploy of the
    /// same code), the staged copy is dropped and the existing one kept:
    /// both are the same bytes, and the existing one may be in use.
    pub fn commit_code(&self, staged: &Path, hash: &str) -> Result<PathBuf, StoreError> {
        let hex = parse_hash(hash).ok_or_else(|| StoreError::InvalidHash(hash.to_string()))?;
        let dest = self.code().join(hex);
        if !dest.is_dir() {
            match fs::rename(staged, &dest) {
                Ok(()) => return Ok(dest),
                // Lost a race against a deploy of the same content.
                Err(_) if dest.is_dir() => {}
                Err(e) => return Err(StoreError::io("move code to", &dest, e)),
            }
        }
        remove_any(staged)?;
        Ok(dest)
    }

    /// Removes every code directory whose hash is not in `keep` and returns
    /// how many went. Code committed for a revision that is not recorded yet
    /// looks unreferenced, so callers must not sweep while a deploy is
    /// between `commit_code` and `put_revision`.
    pub fn sweep(&self, keep: &[String]) -> Result<u64, StoreError> {
        let keep: HashSet<&str> = keep.iter().filter_map(|h| parse_hash(h)).collect();
        let code = self.code();
        let mut removed = 0;
        for entry in fs::read_dir(&code).map_err(|e| StoreError::io("read", &code, e))? {
            let entry = entry.map_err(|e| StoreError::io("read", &code, e))?;
            let name = entry.file_name();
            // Only names this store could have created; anything else is
            // not ours to judge.
            let Some(name) = name.to_str().filter(|n| is_hex64(n)) else { continue };
            if keep.contains(name) {
                continue;
            }
            // Out of code/ in one atomic step first: a removal cut short
            // must not leave a partial directory that `has_code` accepts.
            let doomed = self.new_staging_path("", |path| fs::rename(entry.path(), path))?;
            remove_any(&doomed)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes every archive whose name (hex sha256) is not in `keep` and
    /// returns how many went. Like [`CodeStore::sweep`], not while a deploy
    /// is between saving its archive and recording its revision.
    pub fn sweep_archives(&self, keep: &[String]) -> Result<u64, StoreError> {
        let keep: HashSet<&str> = keep.iter().map(String::as_str).collect();
        let dir = self.archives();
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("read", &dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("read", &dir, e))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".tar.gz")).filter(|n| is_hex64(n)) else {
                continue;
            };
            if !keep.contains(hex) {
                remove_any(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The content hash a code directory of this store stands for.
    pub fn hash_of_dir(&self, dir: &Path) -> Option<String> {
        let hex = dir.strip_prefix(self.code()).ok()?.to_str().filter(|n| is_hex64(n))?;
        Some(format!("{HASH_PREFIX}{hex}"))
    }

    fn archives(&self) -> PathBuf {
        self.root.join("archives")
    }

    fn code(&self) -> PathBuf {
        self.root.join("code")
    }

    fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// Runs `create` on fresh names under `staging/` until one does not
    /// collide with an existing entry, and returns that name.
    fn new_staging_path(&self, suffix: &str, create: impl Fn(&Path) -> io::Result<()>) -> Result<PathBuf, StoreError> {
        loop {
            let n = NEXT_STAGING.fetch_add(1, Ordering::Relaxed);
            let path = self.staging().join(format!("{}-{n}{suffix}", std::process::id()));
            match create(&path) {
                Ok(()) => return Ok(path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StoreError::io("create", &path, e)),
            }
        }
    }
}

/// The hex of `sha256:<64 lowercase hex>`, or `None`: this check is what keeps
/// a hash from naming anything outside `code/`.
fn parse_hash(hash: &str) -> Option<&str> {
    hash.strip_prefix(HASH_PREFIX).filter(|hex| is_hex64(hex))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Sets `path`'s permission bits to `mode`.
fn private(path: &Path, mode: u32) -> Result<(), StoreError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| StoreError::io("restrict permissions of", path, e))
}

/// Removes a file or a directory tree; a path that is already gone is fine.
fn remove_any(path: &Path) -> Result<(), StoreError> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::io("remove", path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn stage(store: &CodeStore, file: &str, text: &str) -> PathBuf {
        let dir = store.staging_dir().unwrap();
        fs::write(dir.join(file), text).unwrap();
        dir
    }

    #[test]
    fn open_creates_layout_and_clears_staging() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CodeStore::open(tmp.path()).unwrap();
        let leftover = stage(&store, "half.py", "x");
        fs::write(tmp.path().join("staging/partial.tar.gz.part"), b"x").unwrap();
        drop(store);

        CodeStore::open(tmp.path()).unwrap();
        for dir in ["archives", "code", "staging"] {
            assert!(tmp.path().join(dir).is_dir(), "{dir}");
        }
        assert!(!leftover.exists());
        assert_eq!(fs::read_dir(tmp.path().join("staging")).unwrap().count(), 0);
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn archives_and_store_dirs_are_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("archives")).unwrap();
        let old = tmp.path().join("archives").join(format!("{}.tar.gz", "c".repeat(64)));
        fs::write(&old, b"from an older flick").unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o644)).unwrap();

        let store = CodeStore::open(tmp.path()).unwrap();
        let hex = store.save_archive(b"abc").unwrap();
        assert_eq!(mode(&tmp.path().join("archives").join(format!("{hex}.tar.gz"))), 0o600);
        assert_eq!(mode(&old), 0o600, "archives stored before are restricted at open");
        for dir in ["archives", "code", "staging"] {
            assert_eq!(mode(&tmp.path().join(dir)), 0o700, "{dir}");
        }
    }

    #[test]
    fn staging_dirs_are_unique_and_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CodeStore::open(tmp.path()).unwrap();
        let a = store.staging_dir().unwrap();
        let b = store.staging_dir().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(tmp.path().join("staging")));
        assert_eq!(fs::read_dir(&a).unwrap().count(), 0);
    }

    #[test]
    fn save_archive_is_content_addressed_and_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CodeStore::open(tmp.path()).unwrap();
        let hex = store.save_archive(b"abc").unwrap();
        // sha256("abc"), the FIPS 180-2 test vector.
        assert_eq!(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(store.save_archive(b"abc").unwrap(), hex);
        let path = tmp.path().join("archives").join(format!("{hex}.tar.gz"));
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        assert_eq!(fs::read_dir(tmp.path().join("archives")).unwrap().count(), 1);
        assert_eq!(fs::read_dir(tmp.path().join("staging")).unwrap().count(), 0);

        let other = store.save_archive(b"def").unwrap();
        fs::write(tmp.path().join("archives/notes.txt"), b"not ours").unwrap();
        assert_eq!(store.sweep_archives(std::slice::from_ref(&other)).unwrap(), 1);
        assert!(!path.exists());
        assert!(tmp.path().join("archives").join(format!("{other}.tar.gz")).is_file());
        assert!(tmp.path().join("archives/notes.txt").is_file(), "unknown entries are left alone");
    }

    #[test]
    fn commit_has_and_sweep() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CodeStore::open(tmp.path()).unwrap();
        let (a, b) = (hash_of('a'), hash_of('b'));
        assert!(!store.has_code(&a));

        let staged = stage(&store, "main.py", "first");
        let dir = store.commit_code(&staged, &a).unwrap();
        assert_eq!(dir, store.code_dir(&a));
        assert_eq!(dir, tmp.path().join("code").join("a".repeat(64)));
        assert_eq!(store.hash_of_dir(&dir), Some(a.clone()));
        assert_eq!(store.hash_of_dir(&tmp.path().join("code/x")), None);
        assert!(store.has_code(&a));
        assert!(!staged.exists());

        // Same content again: the existing directory stays, the copy goes.
        let again = stage(&store, "main.py", "second");
        assert_eq!(store.commit_code(&again, &a).unwrap(), dir);
        assert_eq!(fs::read_to_string(dir.join("main.py")).unwrap(), "first");
        assert!(!again.exists());

        let staged = stage(&store, "main.py", "other");
        store.commit_code(&staged, &b).unwrap();
        fs::create_dir(tmp.path().join("code/not-a-hash")).unwrap();

        assert_eq!(store.sweep(std::slice::from_ref(&a)).unwrap(), 1);
        assert!(store.has_code(&a));
        assert!(!store.has_code(&b));
        assert!(tmp.path().join("code/not-a-hash").is_dir(), "unknown entries are left alone");
        assert_eq!(store.sweep(std::slice::from_ref(&a)).unwrap(), 0);
        assert_eq!(store.sweep(&[]).unwrap(), 1);
        assert!(!store.has_code(&a));
        assert_eq!(fs::read_dir(tmp.path().join("staging")).unwrap().count(), 0);
    }

    #[test]
    fn malformed_hashes_never_leave_code_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CodeStore::open(tmp.path()).unwrap();
        let bad = [
            "sha256:../../x".to_string(),
            "sha256:".to_string(),
            "a".repeat(64),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:{}/..", "a".repeat(61)),
            format!("md5:{}", "a".repeat(64)),
        ];
        for hash in &bad {
            let staged = stage(&store, "main.py", "x");
            let err = store.commit_code(&staged, hash).unwrap_err();
            assert!(matches!(err, StoreError::InvalidHash(ref h) if h == hash), "{hash}: {err}");
            assert!(staged.is_dir(), "{hash}: staged dir must be untouched");
            assert!(!store.has_code(hash), "{hash}");
            let dir = store.code_dir(hash);
            assert_eq!(dir.parent(), Some(tmp.path().join("code").as_path()), "{hash}");
            assert!(!dir.exists(), "{hash}");
        }
        assert_eq!(fs::read_dir(tmp.path().join("code")).unwrap().count(), 0);
    }
}
