//! Packing a function directory into a package, deterministically: the same
//! tree gives the same bytes on any machine, whatever the mtimes or owners.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use flick_core::MANIFEST_FILE;
use tar::{EntryType, Header};

use crate::error::PackageError;
use crate::ignore::IgnoreRules;
use crate::paths;

/// The ignore file read from the root of the function directory.
const IGNORE_FILE: &str = ".flickignore";

enum Item {
    Dir,
    File { exec: bool },
    Symlink { target: String },
}

/// Packs `dir` into a gzip'd tar in memory. Deterministic: entries sorted by
/// path, mtime 0, uid/gid 0, mode 0o644 or 0o755 (owner exec bit kept from
/// the file), dirs 0o755. Honours `<dir>/.flickignore` plus built-in ignores
/// (`.git/`, `__pycache__/`, `.flick/`, `*.pyc`, `node_modules/.cache/`);
/// `flick.toml` itself is always packed. Symlinks are stored as symlinks
/// (not followed) and must point inside the package; other file types
/// (sockets, fifos) are skipped. Fails if `dir/flick.toml` does not exist.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, PackageError> {
    check_manifest(dir)?;
    let rules = load_ignore_rules(dir)?;
    let items = collect(dir, &rules)?;
    write_archive(dir, &items)
}

fn check_manifest(dir: &Path) -> Result<(), PackageError> {
    let path = dir.join(MANIFEST_FILE);
    match fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(PackageError::ManifestNotAFile { path }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            Err(PackageError::NoManifest { dir: dir.to_path_buf() })
        }
        Err(e) => Err(PackageError::Io { path, source: e }),
    }
}

fn load_ignore_rules(dir: &Path) -> Result<IgnoreRules, PackageError> {
    let mut rules = IgnoreRules::builtin();
    let path = dir.join(IGNORE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => rules
            .add_lines(&text)
            .map_err(|(line, reason)| PackageError::IgnorePattern { path, line, reason })?,
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(PackageError::Io { path, source: e }),
    }
    Ok(rules)
}

/// Walks `dir` and returns what goes into the package, sorted component by
/// component so every directory comes right before its contents.
fn collect(dir: &Path, rules: &IgnoreRules) -> Result<Vec<(String, Item)>, PackageError> {
    let mut items = Vec::new();
    // An explicit stack: `node_modules` can nest deeply.
    let mut pending = vec![String::new()];
    while let Some(rel_dir) = pending.pop() {
        let abs_dir = dir.join(&rel_dir);
        let listing = fs::read_dir(&abs_dir).map_err(PackageError::io(&abs_dir))?;
        for entry in listing {
            let entry = entry.map_err(PackageError::io(&abs_dir))?;
            let abs = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                // Names are hashed and shown as text; a non-utf-8 one could
                // not be named in errors nor matched by `.flickignore`.
                return Err(PackageError::Unpackable { path: abs, reason: "the file name is not valid utf-8".into() });
            };
            let rel = if rel_dir.is_empty() { name } else { format!("{rel_dir}/{name}") };
            let kind = entry.file_type().map_err(PackageError::io(&abs))?;

            if kind.is_dir() {
                if !rules.is_ignored(&rel, true) {
                    pending.push(rel.clone());
                    items.push((rel, Item::Dir));
                }
            } else if kind.is_file() {
                // The manifest is never ignored: a package without it would
                // only be refused by the server.
                if rel == MANIFEST_FILE || !rules.is_ignored(&rel, false) {
                    let mode = entry.metadata().map_err(PackageError::io(&abs))?.permissions().mode();
                    items.push((rel, Item::File { exec: mode & 0o100 != 0 }));
                }
            } else if kind.is_symlink() {
                if !rules.is_ignored(&rel, false) {
                    let target = symlink_target(&abs, &rel)?;
                    items.push((rel, Item::Symlink { target }));
                }
            }
            // Sockets, fifos and devices are never code: skipped.
        }
    }
    items.sort_by(|(a, _), (b, _)| a.split('/').cmp(b.split('/')));
    Ok(items)
}

/// Reads and checks a symlink with the rules `unpack` applies, so a package
/// the server would refuse fails here, naming the link.
fn symlink_target(abs: &Path, rel: &str) -> Result<String, PackageError> {
    let target = fs::read_link(abs).map_err(PackageError::io(abs))?;
    let unpackable = |reason: String| PackageError::Unpackable { path: abs.to_path_buf(), reason };
    let Some(target) = target.to_str() else {
        return Err(unpackable(format!("the symlink target {target:?} is not valid utf-8")));
    };
    let components: Vec<&str> = rel.split('/').collect();
    let link_dir = &components[..components.len().saturating_sub(1)];
    paths::symlink_target(link_dir, target).map_err(unpackable)
}

fn write_archive(dir: &Path, items: &[(String, Item)]) -> Result<Vec<u8>, PackageError> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (rel, item) in items {
        let path = dir.join(rel);
        let mut header = Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        let appended = match item {
            Item::Dir => {
                header.set_entry_type(EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, format!("{rel}/"), io::empty())
            }
            Item::File { exec } => {
                // Read whole so the size in the header is the size written,
                // even if the file changes while we pack.
                let data = fs::read(&path).map_err(PackageError::io(&path))?;
                header.set_entry_type(EntryType::Regular);
                header.set_mode(if *exec { 0o755 } else { 0o644 });
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, rel, data.as_slice())
            }
            Item::Symlink { target } => {
                header.set_entry_type(EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, rel, target)
            }
        };
        appended.map_err(PackageError::io(&path))?;
    }
    // Only in-memory writes remain, which do not fail in practice.
    let finished = builder.into_inner().and_then(GzEncoder::finish);
    finished.map_err(PackageError::io(dir))
}
